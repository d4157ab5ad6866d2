"""Looking after one sync's state: ``syncer state show``, ``state reset`` and ``state move``.

Apart from the engine, like syncer.audit: no connector, no warehouse, no HTTP. A reset or a
move takes the sync's lease (the same row a run takes, syncer.lease) for its one transaction,
so a run can neither be under way nor start in between, and either every row changes or none.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Table, delete, func, select, union, update

from syncer.audit import row_dict
from syncer.errors import ExitCode, Interrupted, LeaseHeld, SyncerError, TransientError
from syncer.lease import Lease, process_gone
from syncer.log import get_logger
from syncer.selection import near
from syncer.state import (
    CONFIRMED,
    MAYBE_ABSENT,
    MAYBE_STALE,
    alerts_table,
    jobs_table,
    leases_table,
    metadata,
    pending_table,
    reading,
    records_table,
    rejects_table,
    runs_table,
    utcnow,
)

log = get_logger("syncer.stateadmin")

#: Every table keyed by sync name but the lease (which a move holds under both names and
#: releases): what ``state move`` renames. Found from the schema, so a table added later is
#: moved too. ``syncer_events`` has no sync column: its rows follow their runs' ids.
SYNC_TABLES: tuple[Table, ...] = tuple(
    t for t in metadata.sorted_tables if "sync" in t.c and t is not leases_table
)

#: Where the names a state database knows come from (records last: the widest scan).
_NAME_SOURCES = (runs_table, jobs_table, rejects_table, alerts_table, records_table)


class UnknownSync(SyncerError):
    """No state and no mapping under this name: a typo, most likely (exit 2)."""

    exit_code = ExitCode.USAGE


class NameTaken(SyncerError):
    """``state move`` onto a name that has state of its own (exit 2): nothing changed."""

    exit_code = ExitCode.USAGE


class JobsUnsettled(TransientError):
    """A vendor job submitted by a run is not settled yet; a later run settles it (exit 75)."""


@dataclass(frozen=True)
class Holder:
    """Who holds a sync's lease, and whether that run is alive."""

    host: str
    pid: int
    since: float
    expires_at: float
    live: bool

    def describe(self) -> str:
        return f"{self.host} (pid {self.pid}) since {_iso(self.since)}"


def _iso(epoch: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


def holder(conn: Connection, name: str, now: float | None = None) -> Holder | None:
    """The lease row of ``name``; ``live`` is False for one the next run would take over
    (expired, or its process is gone from this host), as syncer.lease judges it."""
    row = conn.execute(select(leases_table).where(leases_table.c.sync == name)).first()
    if row is None:
        return None
    now = time.time() if now is None else now
    dead = process_gone(row.host, row.pid)
    live = not (row.expires_at < now or dead)
    return Holder(row.host, row.pid, row.acquired_at, row.expires_at, live)


def known_names(conn: Connection) -> set[str]:
    """Every sync name with rows in the state database."""
    query = union(*(select(t.c.sync).distinct() for t in _NAME_SOURCES))
    return {name for (name,) in conn.execute(query) if name is not None}


def unknown(name: str, candidates: set[str], where: str) -> UnknownSync:
    """The error for a name with no state and no mapping, with the names it may have meant."""
    close = near(name, candidates, n=5)
    if close:
        hint = "did you mean " + ", ".join(repr(n) for n in close) + "?"
    elif candidates:
        shown = sorted(candidates)
        hint = "known syncs: " + ", ".join(shown[:10]) + (", ..." if len(shown) > 10 else "")
    else:
        hint = "no sync has state yet"
    return UnknownSync(f"no sync named {name!r} has state or a mapping in {where}; {hint}")


def _count(conn: Connection, table: Table, name: str, *where: Any) -> int:
    query = select(func.count()).select_from(table).where(table.c.sync == name, *where)
    return int(conn.execute(query).scalar() or 0)


def members(conn: Connection, name: str) -> dict[str, Any]:
    """Acknowledged members by how sure state is of them (see syncer.state.CONFIRMED)."""
    rows = conn.execute(
        select(records_table.c.unsure, func.count(), func.max(records_table.c.synced_at))
        .where(records_table.c.sync == name)
        .group_by(records_table.c.unsure)
    ).all()
    by = {int(unsure): int(n) for unsure, n, _ in rows}
    last = max((at for _, _, at in rows if at is not None), default=None)
    return {
        "total": sum(by.values()),
        "confirmed": by.get(CONFIRMED, 0),
        "maybe_absent": by.get(MAYBE_ABSENT, 0),
        "maybe_stale": by.get(MAYBE_STALE, 0),
        "last_synced_at": row_dict({"t": last})["t"],
    }


def unsettled_jobs(conn: Connection, name: str) -> list[dict[str, Any]]:
    """Vendor jobs no run has settled yet, oldest first, with how many records each holds."""
    held = (
        select(pending_table.c.job, func.count().label("records"))
        .where(pending_table.c.sync == name)
        .group_by(pending_table.c.job)
        .subquery()
    )
    rows = conn.execute(
        select(jobs_table, held.c.records)
        .outerjoin(held, held.c.job == jobs_table.c.job)
        .where(jobs_table.c.sync == name, jobs_table.c.settled_at.is_(None))
        .order_by(jobs_table.c.created_at)
    ).all()
    return [
        {
            "job": r.job,
            "run_id": r.run_id,
            "status": r.status,
            "sealed": bool(r.sealed),
            "records": int(r.records or 0),
            "created_at": row_dict({"t": r.created_at})["t"],
        }
        for r in rows
    ]


def has_state(conn: Connection, name: str) -> bool:
    return any(
        conn.execute(select(t.c.sync).where(t.c.sync == name).limit(1)).first() is not None
        for t in SYNC_TABLES
    )


def describe(engine: Engine, name: str) -> dict[str, Any]:
    """What the state database holds for ``name`` (``has_state`` false: nothing at all)."""
    with engine.connect() as conn:
        reading(conn)
        lease = holder(conn, name)
        runs = _count(conn, runs_table, name)
        last = conn.execute(
            select(runs_table)
            .where(runs_table.c.sync == name)
            .order_by(runs_table.c.started_at.desc())
            .limit(1)
        ).first()
        alert = conn.execute(select(alerts_table).where(alerts_table.c.sync == name)).first()
        return {
            "sync": name,
            "has_state": has_state(conn, name),
            "members": members(conn, name),
            "runs": runs,
            "last_run": row_dict(last._mapping) if last is not None else None,
            "jobs": unsettled_jobs(conn, name),
            "pending": _count(conn, pending_table, name),
            "rejects": {
                "total": _count(conn, rejects_table, name),
                "parked": _count(conn, rejects_table, name, rejects_table.c.parked_at.isnot(None)),
            },
            "alert": (
                {"state": alert.state, "since": _iso(alert.since), "reason": alert.reason}
                if alert is not None
                else None
            ),
            "lease": (
                {
                    "host": lease.host,
                    "pid": lease.pid,
                    "since": _iso(lease.since),
                    "expires_at": _iso(lease.expires_at),
                    "live": lease.live,
                }
                if lease is not None
                else None
            ),
        }


def refuse_if_running(engine: Engine, name: str, doing: str) -> None:
    """LeaseHeld (exit 75) naming the holder when a live run holds ``name``'s lease."""
    with engine.connect() as conn:
        lease = holder(reading(conn), name)
    if lease is not None and lease.live:
        raise LeaseHeld(
            f"sync {name!r} is running on {lease.describe()}: {doing} refused, nothing"
            " changed; try again when it finishes"
        )


def refuse_if_jobs(jobs: list[dict[str, Any]], name: str) -> None:
    """JobsUnsettled when a vendor may still be applying a job of ``name`` (a job never
    started at the vendor, ``sealed`` false, is no obstacle: reset drops it)."""
    started = [j["job"] for j in jobs if j["sealed"]]
    if started:
        raise JobsUnsettled(
            f"sync {name!r} has {len(started)} vendor job(s) not settled yet"
            f" ({', '.join(started[:3])}{', ...' if len(started) > 3 else ''}): the vendor may"
            f" still apply them. Run `syncer sync now {name}` until they settle (see"
            " `syncer state show`), then reset; nothing changed"
        )


@contextmanager
def _leased(engine: Engine, names: list[str], ttl: float) -> Iterator[list[Lease]]:
    """Hold each name's lease, with its heartbeat (a move of a million members may outlast
    the lease's time to live), or raise LeaseHeld (exit 75) naming the holder."""
    with ExitStack() as stack:
        yield [stack.enter_context(Lease(engine, name, ttl=ttl)) for name in names]


def _still_held(leases: list[Lease]) -> None:
    """Before committing: a lease taken from us means a run may have started (rolled back)."""
    for lease in leases:
        if lease.lost.is_set():
            raise Interrupted(f"lost the lease of sync {lease.sync!r} meanwhile; nothing changed")


def reset(engine: Engine, name: str, ttl: float) -> dict[str, int]:
    """Forget what the destination acknowledged for ``name`` (and vendor jobs never started),
    in one transaction under the sync's lease; returns how many rows were forgotten."""
    with _leased(engine, [name], ttl) as leases, engine.begin() as conn:
        refuse_if_jobs(unsettled_jobs(conn, name), name)
        unsure = _count(conn, records_table, name, records_table.c.unsure != CONFIRMED)
        records = conn.execute(delete(records_table).where(records_table.c.sync == name))
        pending = conn.execute(delete(pending_table).where(pending_table.c.sync == name))
        jobs = conn.execute(
            update(jobs_table)
            .where(jobs_table.c.sync == name, jobs_table.c.settled_at.is_(None))
            .values(
                status="abandoned",
                message="never started; dropped by `syncer state reset`",
                settled_at=utcnow(),
            )
        )
        forgot = {
            "records": int(records.rowcount),
            "unconfirmed": unsure,
            "pending": int(pending.rowcount),
            "jobs": int(jobs.rowcount),
        }
        _still_held(leases)
    log.info("state.reset", sync=name, **forgot)
    return forgot


def move(engine: Engine, old: str, new: str, ttl: float) -> dict[str, int]:
    """Rename ``old`` to ``new`` in every table keyed by sync, in one transaction under both
    names' leases; NameTaken if ``new`` has state. Returns the rows moved per table."""
    with _leased(engine, [old, new], ttl) as leases, engine.begin() as conn:
        if has_state(conn, new):
            raise taken(conn, new, old)
        moved = {
            t.name: int(conn.execute(update(t).where(t.c.sync == old).values(sync=new)).rowcount)
            for t in SYNC_TABLES
        }
        _still_held(leases)
    log.info("state.moved", sync=old, to=new, rows=sum(moved.values()))
    return moved


def refuse_if_taken(engine: Engine, new: str, old: str) -> None:
    """NameTaken before asking anything; :func:`move` checks again inside its transaction."""
    with engine.connect() as conn:
        if has_state(reading(conn), new):
            raise taken(conn, new, old)


def taken(conn: Connection, new: str, old: str) -> NameTaken:
    held = _count(conn, records_table, new)
    runs = _count(conn, runs_table, new)
    return NameTaken(
        f"sync {new!r} already has state ({held} acknowledged members, {runs} runs): moving"
        f" {old!r} onto it would mix the two, so nothing changed. Choose another name, or"
        f" keep {new!r} as it is"
    )
