"""Everything a run writes to the state database, beside its schema (syncer.state) and the
ledger of in-flight marks (syncer.ledger).

The invariants live here: state advances only on acknowledgement; the acknowledgements of the
answered batches, their audit events, the run's counters and the in-flight mark of the next
batch commit in one transaction; and the counters in memory follow only once it committed,
so a run never claims more than state and the audit log hold.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from collections.abc import Callable, Sequence

from sqlalchemy import Connection, delete, select, update

from syncer import rejects
from syncer.connector import Outcome, accepted_whole, join_outcomes
from syncer.diff import ChangeBatch, DiffCounts, Staging
from syncer.enums import RunStatus
from syncer.ledger import audit_key, mark_sent, settle
from syncer.runcontext import RunContext, add_counts
from syncer.state import BulkWriter, jobs_table, pending_table, runs_table, utcnow, writing

Answered = list[tuple[ChangeBatch, Sequence[Outcome]]]
"""Batches the destination answered, each with one outcome per record."""


def start_run(run: RunContext) -> None:
    """Record the run as running; we hold the lease, so any run of this sync still marked
    running belongs to a process that died."""
    definition = run.definition
    with writing(run.conn) as conn:
        conn.execute(
            update(runs_table)
            .where(runs_table.c.sync == definition.name, runs_table.c.status == RunStatus.RUNNING)
            .values(
                status=RunStatus.INTERRUPTED,
                finished_at=utcnow(),
                message="its process stopped before finishing (killed or crashed)",
            )
        )
        conn.execute(
            runs_table.insert().values(
                id=run.id,
                sync=definition.name,
                status=RunStatus.RUNNING,
                trigger=run.trigger,
                mode=definition.mode,
                full_resync=int(run.full_resync),
                started_at=utcnow(),
                host=socket.gethostname(),
                pid=os.getpid(),
            )
        )


def finish_run(run: RunContext, status: RunStatus, message: str | None) -> None:
    """The run's row: how it ended, when, why, and its final counters (members the reject
    policy parked and those an experiment held out go in its ``stats``, beside the
    destination's own counts)."""
    with writing(run.conn) as conn:
        extra: dict[str, object] = {}
        ours = {k: v for k, v in (("parked", run.parked), ("held_out", run.held_out)) if v}
        if ours:
            stats = conn.execute(
                select(runs_table.c.stats).where(runs_table.c.id == run.id)
            ).scalar_one_or_none()
            merged = dict(json.loads(stats) if stats else {}, **ours)
            extra["stats"] = json.dumps(merged, sort_keys=True)
        conn.execute(
            update(runs_table)
            .where(runs_table.c.id == run.id)
            .values(
                status=status, finished_at=utcnow(), message=message, **run.tally.values, **extra
            )
        )


def save_counts(conn: Connection, run_id: str, values: dict[str, int]) -> None:
    """The run's counters, in the caller's transaction (with what they count)."""
    conn.execute(update(runs_table).where(runs_table.c.id == run_id).values(**values))


def record_invalid(run: RunContext, staging: Staging, counts: DiffCounts) -> None:
    """The snapshot's counts, an audit event for each row that failed validation (but those
    the reject policy parked), and each keyed one counted in ``syncer_rejects``. Parked
    members whose source row changed are unparked first (see syncer.rejects)."""
    plain = run.plain_keys
    values = dict(
        run.tally.values,
        source_rows=counts.source_rows,
        invalid=counts.invalid,
        unchanged=counts.unchanged,
    )
    with writing(run.conn) as conn:  # the events and the counter that counts them, together
        if run.had_rejects and not staging.unchanged:
            rejects.unpark_changed(conn, staging)
        writer = BulkWriter(conn)
        policy = run.definition.rejects
        for page in staging.invalid_rows() if counts.invalid else ():
            now = utcnow()
            rows = [(audit_key(key, plain), "validate", "invalid", why) for key, why in page]
            writer.add_events(run.id, rows, now)
            refused = [
                rejects.Refusal(key, None, "validate", "invalid", why)
                for key, why in page
                if key is not None
            ]
            rejects.record(conn, run.name, run.id, policy, refused, now)
        save_counts(conn, run.id, values)
    run.tally.values.update(values)
    run.parked = counts.parked
    run.held_out = counts.held


def commit(
    run: RunContext,
    answered: Answered,
    sending: Callable[[], ChangeBatch | None] | None,
    expected: Callable[[ChangeBatch], dict[str, str | None]],
) -> ChangeBatch | None:
    """One transaction: state and every outcome's audit event for the answered batches,
    the run's counters, and the in-flight mark of the page about to be sent (see
    syncer.ledger), which ``sending`` reads in that same transaction, with the destination
    ids ``expected`` for it. Returns that page (None once the change set is exhausted). The
    counters in memory follow only once it committed."""
    conn, run_id, sync_name = run.conn, run.id, run.name
    now = utcnow()
    plain = run.plain_keys
    values = run.tally.values
    page: ChangeBatch | None = None
    with writing(conn):
        page = sending() if sending is not None else None
        for batch, outcomes in coalesce(answered, plain):
            if not accepted_whole(outcomes):
                pending = [o for o in outcomes if o.status == "pending"]
                if pending:
                    hold_pending(conn, run_id, sync_name, batch, pending, now)
            delta = settle(conn, run_id, sync_name, batch, outcomes, now, plain_keys=plain)
            if delta["rejected"]:
                _count_refusals(run, batch, outcomes, now)
            values = add_counts(values, delta)
        if answered:
            save_counts(conn, run_id, values)
        if page is not None:
            mark_sent(conn, sync_name, page, expected(page), now)
    run.tally.values.update(values)
    return page


def _count_refusals(
    run: RunContext, batch: ChangeBatch, outcomes: Sequence[Outcome], now: dt.datetime
) -> None:
    """The batch's rejected records, counted by the reject policy (syncer.rejects)."""
    hashes = batch.hashes
    refused = [
        rejects.Refusal(o.key, hashes.get(o.key), batch.operation, "rejected", o.reason)
        for o in outcomes
        if o.status == "rejected"
    ]
    rejects.record(run.conn, run.name, run.id, run.definition.rejects, refused, now)


def coalesce(answered: Answered, plain_keys: bool) -> Answered:
    """``answered`` with neighbouring batches that the destination accepted whole joined into
    one (same operation, spans that meet, marked by span): their state and audit events are
    then written by one statement each for the lot (see ledger.settle)."""
    whole: Answered = []
    rest: Answered = []
    for batch, outcomes in answered:
        fits = batch.span is not None and batch.span_marked
        if fits and accepted_whole(outcomes):
            whole.append((batch, outcomes))
        else:
            rest.append((batch, outcomes))
    whole.sort(key=lambda item: (item[0].operation, _start(item[0])))
    joined: Answered = []
    for batch, outcomes in whole:
        if joined:
            last, last_outcomes = joined[-1]
            assert last.span is not None and batch.span is not None
            if last.operation == batch.operation and last.span[1] == batch.span[0]:
                joined[-1] = (last.join(batch, plain_keys), join_outcomes(last_outcomes, outcomes))
                continue
        joined.append((batch, outcomes))
    return joined + rest


def _start(batch: ChangeBatch) -> tuple[bool, str]:
    after = batch.span[0] if batch.span is not None else None
    return (after is not None, after or "")


def hold_pending(
    conn: Connection,
    run_id: str,
    sync_name: str,
    batch: ChangeBatch,
    pending: list[Outcome],
    now: dt.datetime,
) -> None:
    """Records a vendor job took: kept aside (not synced) until a later run polls it."""
    by_key = {r.key: r for r in batch.records}
    for job in sorted({o.job for o in pending if o.job}):
        exists = conn.execute(
            select(jobs_table.c.job).where(jobs_table.c.sync == sync_name, jobs_table.c.job == job)
        ).first()
        if exists is None:
            conn.execute(
                jobs_table.insert().values(
                    sync=sync_name, job=job, run_id=run_id, sealed=0, created_at=now
                )
            )
    keys = [o.key for o in pending]
    conn.execute(
        delete(pending_table).where(
            pending_table.c.sync == sync_name, pending_table.c.key.in_(keys)
        )
    )
    conn.execute(
        pending_table.insert(),
        [
            {
                "sync": sync_name,
                "key": o.key,
                "operation": batch.operation,
                "hash": batch.hashes.get(o.key),
                "destination_id": o.destination_id or by_key[o.key].destination_id,
                "job": o.job or "",
                "run_id": run_id,
            }
            for o in pending
        ],
    )


def seal_jobs(run: RunContext, stats: dict[str, int]) -> None:
    """After the connector's close() returned: every job it handed out has been started at
    the vendor (a later run polls it), and the connector's stats go on the run's row."""
    with writing(run.conn) as conn:
        conn.execute(
            update(jobs_table)
            .where(jobs_table.c.run_id == run.id, jobs_table.c.sealed == 0)
            .values(sealed=1, status="submitted")
        )
        if stats:
            conn.execute(
                update(runs_table)
                .where(runs_table.c.id == run.id)
                .values(stats=json.dumps(stats, sort_keys=True))
            )
