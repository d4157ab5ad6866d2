"""Retention: delete old runs, their audit events and settled vendor jobs, in short batches.

The audit log grows by one row per record outcome, for ever: a daemon syncing a million
members with 1% churn every 15 minutes writes about a million events a day. ``syncer prune
--older-than 90d`` (and the daemon, once a day, with ``SYNCER_PRUNE_OLDER_THAN``) removes
what is older than that.

What goes: runs that started before the cutoff, with their audit events and their settled
vendor jobs, and tick claims older than the cutoff (and than a week, see syncer.claims).
What stays, whatever its age: acknowledged state (``syncer_records``), records held in vendor
jobs (``syncer_pending``) and the runs whose jobs are not settled yet, running runs, each
sync's latest finished run (so ``syncer runs`` and alerts still know how it last ended, and
``run show`` still shows it), leases, alert state, and the tables other features own
(``syncer_rejects``, ``syncer_destinations``).

Why in batches: on SQLite one writer at a time holds the database. Each batch (at most
``batch_size`` events, by default 10,000) is its own short write transaction taken through
:func:`syncer.state.writing`, so a running sync's commits wait at most one batch (tens of
milliseconds) and interleave with the prune. A run's row goes last, after its events, so a
prune stopped half way (SIGTERM, a crash) leaves nothing inconsistent: the next one finishes it.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Delete, Engine, Select, delete, func, select, tuple_

from syncer.ages import parse_age
from syncer.claims import KEEP_SECONDS
from syncer.enums import RunStatus
from syncer.state import (
    events_table,
    jobs_table,
    pending_table,
    reading,
    runs_table,
    ticks_table,
    utcnow,
    writing,
)

#: Audit events deleted per write transaction.
BATCH_SIZE = 10_000
#: Seconds idle after each batch per second the batch took: the write lock is then free most
#: of the time, so a running sync's commits find it free instead of waiting behind batch after
#: batch (SQLite's busy handler polls, it does not queue: a prune that takes the lock again at
#: once starves the waiter). 0 deletes as fast as possible.
PACE = 3.0
#: Runs looked at per page (their events are then deleted ``BATCH_SIZE`` at a time).
RUN_PAGE = 200

#: Tables a prune deletes from, in the order they are reported.
TABLES = ("syncer_runs", "syncer_events", "syncer_jobs", "syncer_ticks")


@dataclass
class PruneReport:
    """What one prune removed (or, with ``dry_run``, would remove), per table."""

    older_than: str
    cutoff: dt.datetime
    dry_run: bool
    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    #: True when a stop request ended it between batches; the rest goes next time.
    stopped: bool = False
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "older_than": self.older_than,
            "cutoff": self.cutoff.isoformat(),
            "dry_run": self.dry_run,
            "removed": dict(self.removed),
            "stopped": self.stopped,
            "duration_s": round(self.duration_s, 3),
        }


def prune(
    engine: Engine,
    older_than: str,
    *,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    pace: float = PACE,
    stop: threading.Event | None = None,
    now: dt.datetime | None = None,
) -> PruneReport:
    """Remove runs older than ``older_than`` (see the module) and say what went."""
    started = time.monotonic()
    now = now or utcnow()
    report = PruneReport(older_than, now - parse_age(older_than), dry_run)
    # Ticks only deduplicate scheduled runs; the claims of the last week are kept (the
    # daemon's daily prune claims its day there too).
    tick_cutoff = int(min(report.cutoff.timestamp(), now.timestamp() - KEEP_SECONDS))
    with engine.connect() as conn:
        reading(conn)
        if dry_run:
            _count(conn, report, tick_cutoff)
        else:
            _delete(conn, report, tick_cutoff, batch_size, pace, stop)
        if conn.in_transaction():
            conn.commit()
    report.duration_s = time.monotonic() - started
    return report


def _old_runs(cutoff: dt.datetime) -> Select[Any]:
    """Runs that may go: started before ``cutoff``, finished, older than their sync's latest
    finished run, and holding no vendor job that is still to settle."""
    runs = runs_table
    latest = runs.alias("latest")
    newest_finished = (
        select(func.max(latest.c.started_at))
        .where(latest.c.sync == runs.c.sync, latest.c.status != RunStatus.RUNNING)
        .scalar_subquery()
    )
    return select(runs.c.id, runs.c.started_at).where(
        runs.c.started_at < cutoff,
        runs.c.status != RunStatus.RUNNING,
        runs.c.started_at < newest_finished,
        runs.c.id.not_in(select(jobs_table.c.run_id).where(jobs_table.c.settled_at.is_(None))),
        runs.c.id.not_in(select(pending_table.c.run_id)),
    )


def _count(conn: Connection, report: PruneReport, tick_cutoff: int) -> None:
    old = _old_runs(report.cutoff).subquery()
    ids = select(old.c.id)
    removed = report.removed
    removed["syncer_runs"] = conn.execute(select(func.count()).select_from(old)).scalar_one()
    removed["syncer_events"] = conn.execute(
        select(func.count()).where(events_table.c.run_id.in_(ids))
    ).scalar_one()
    removed["syncer_jobs"] = conn.execute(
        select(func.count()).where(
            jobs_table.c.run_id.in_(ids), jobs_table.c.settled_at.is_not(None)
        )
    ).scalar_one()
    removed["syncer_ticks"] = conn.execute(
        select(func.count()).where(ticks_table.c.tick < tick_cutoff)
    ).scalar_one()


def _delete(
    conn: Connection,
    report: PruneReport,
    tick_cutoff: int,
    batch_size: int,
    pace: float,
    stop: threading.Event | None,
) -> None:
    """Page through the old runs: each page's events a batch per transaction, then its runs
    and their settled jobs (so a run whose row is still there is found again next time)."""
    pacer = _Pacer(conn, pace, stop if stop is not None else threading.Event())
    removed = report.removed
    after: tuple[Any, str] | None = None
    while not pacer.stop.is_set():
        query = _old_runs(report.cutoff)
        if after is not None:
            query = query.where(tuple_(runs_table.c.started_at, runs_table.c.id) > after)
        page = conn.execute(
            query.order_by(runs_table.c.started_at, runs_table.c.id).limit(RUN_PAGE)
        ).all()
        if not page:
            break
        after = (page[-1].started_at, page[-1].id)
        ids = [row.id for row in page]
        batch = (
            select(events_table.c.id)
            .where(events_table.c.run_id.in_(ids))
            .limit(batch_size)
            .scalar_subquery()
        )
        gone = batch_size
        while gone >= batch_size and not pacer.stop.is_set():
            (gone,) = pacer.write(delete(events_table).where(events_table.c.id.in_(batch)))
            removed["syncer_events"] += gone
        if pacer.stop.is_set():
            break
        jobs, runs = pacer.write(
            delete(jobs_table).where(
                jobs_table.c.run_id.in_(ids), jobs_table.c.settled_at.is_not(None)
            ),
            delete(runs_table).where(
                runs_table.c.id.in_(ids), runs_table.c.status != RunStatus.RUNNING
            ),
        )
        removed["syncer_jobs"] += jobs
        removed["syncer_runs"] += runs
    if pacer.stop.is_set():
        report.stopped = True
        return
    (ticks,) = pacer.write(delete(ticks_table).where(ticks_table.c.tick < tick_cutoff))
    removed["syncer_ticks"] += ticks


class _Pacer:
    """Write transactions, each followed by ``pace`` times its own duration of idling (cut
    short by ``stop``), so other writers find the lock free between them."""

    def __init__(self, conn: Connection, pace: float, stop: threading.Event) -> None:
        self.conn, self.pace, self.stop = conn, pace, stop

    def write(self, *statements: Delete) -> tuple[int, ...]:
        """Run the statements in one transaction; the rows each deleted."""
        began = time.monotonic()
        with writing(self.conn):
            counts = tuple(max(self.conn.execute(s).rowcount, 0) for s in statements)
        if self.conn.dialect.name == "sqlite":
            # Copy the batch's pages from the WAL into the database here, outside the write
            # lock, rather than leave them to the auto-checkpoint of whichever commit comes
            # next, which is most often a running sync's (measured beside a sync: 1.13 times
            # its time without this, 1.02 with it). PASSIVE never waits for anyone.
            driver = self.conn.connection.driver_connection
            if driver is not None:
                driver.execute("PRAGMA wal_checkpoint(PASSIVE)")
        if self.pace:
            self.stop.wait(self.pace * (time.monotonic() - began))
        return counts
