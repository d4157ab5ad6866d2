"""Vendor-job settlement: the jobs earlier runs left at the vendor, polled and applied.

Some destinations take a batch as a job and apply it later (Google Ads offline user-data
jobs). The records a job took are held aside at commit (syncer.recorder.hold_pending), sealed
once the connector's close() has started the job, and settled here at the start of a later run,
before anything new is sent.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, delete, select, update

from syncer.connector import Connector, JobStatus
from syncer.ledger import COUNTER, audit_key
from syncer.recorder import save_counts
from syncer.retry import guarded
from syncer.runcontext import RunContext
from syncer.state import BulkWriter, jobs_table, pending_table, records_table, utcnow, writing

#: Pending records of a finished job handled per page (bounded memory, bounded IN lists).
JOB_PAGE = 500


class Waiting(Exception):
    """A vendor job of an earlier run is still running: this run sends nothing."""


def settle_jobs(run: RunContext) -> None:
    """Poll the jobs earlier runs left at the vendor, before anything else is sent.

    A succeeded job's records become synced (in this run's transaction, with their
    events); a failed one's are dropped, so the diff sends them again; a job that was
    never started (its run died before close()) is dropped the same way. Jobs are
    serialised per sync, as vendors ask (Google: CONCURRENT_MODIFICATION): while one
    still runs, this raises Waiting with why the run must wait, and nothing new is sent.
    """
    conn, name = run.conn, run.name
    jobs = conn.execute(
        select(jobs_table)
        .where(jobs_table.c.sync == name, jobs_table.c.settled_at.is_(None))
        .order_by(jobs_table.c.created_at)
    ).all()
    if not jobs:
        return
    waiting: str | None = None
    with run.connector(with_run_id=False) as connector:
        for job in jobs:
            if not job.sealed:
                status = JobStatus("failed", "its run stopped before the job was started")
            else:
                status = poll(run, connector, job.job)
            if status.state == "running":
                waiting = (
                    f"waiting for vendor job {job.job} (submitted by run {job.run_id});"
                    " nothing new is sent until it finishes"
                )
                continue
            with writing(conn):
                values = run.tally.plus(apply_job(run, job, status))
                save_counts(conn, run.id, values)
            run.tally.values.update(values)
            run.log.info("job.settled", job=job.job, state=status.state)
    if waiting is not None:
        raise Waiting(waiting)


def poll(run: RunContext, connector: Connector, job: str) -> JobStatus:
    """``poll_job`` with the same retries, Retry-After and budget as a batch."""
    return run.retry(lambda: guarded(connector, "poll_job", lambda: connector.poll_job(job)))


def apply_job(run: RunContext, job: Any, status: JobStatus) -> dict[str, int]:
    """Make a finished job's records synced (or leave them unconfirmed), with their audit
    events; returns the counters it adds to the run.

    A failed or never started job leaves its records marked as sent but unconfirmed (see
    syncer.ledger): the diff then sends each again while it is in the segment, and
    removes it once it has left, since the vendor may have applied part of the job.
    Read in keyset pages, so a job of a million members never sits in memory at once.
    """
    conn: Connection = run.conn
    sync_name, run_id = run.name, run.id
    delta = dict.fromkeys(("added", "updated", "removed", "failed"), 0)
    now = utcnow()
    plain = run.plain_keys
    writer = BulkWriter(conn)
    succeeded = status.state == "succeeded"
    reason = None if succeeded else f"vendor job failed: {status.reason or 'no reason given'}"
    if not job.sealed:
        reason = f"not confirmed: {status.reason}; sent again"
    outcome = "accepted" if succeeded else "failed"
    after = ""
    while rows := conn.execute(
        select(pending_table)
        .where(
            pending_table.c.sync == sync_name,
            pending_table.c.job == job.job,
            pending_table.c.key > after,
        )
        .order_by(pending_table.c.key)
        .limit(JOB_PAGE)
    ).all():
        after = rows[-1].key
        if succeeded:
            gone = [r.key for r in rows if r.operation == "remove"]
            if gone:
                conn.execute(
                    delete(records_table).where(
                        records_table.c.sync == sync_name, records_table.c.key.in_(gone)
                    )
                )
            writer.upsert_records(
                sync_name,
                [(r.key, r.hash, r.destination_id) for r in rows if r.operation != "remove"],
                now,
            )
            for r in rows:
                delta[COUNTER[r.operation]] += 1
        elif job.sealed:
            # A vendor failure is reported; a job our own run never started is resent.
            delta["failed"] += len(rows)
        writer.add_events(
            run_id, [(audit_key(r.key, plain), r.operation, outcome, reason) for r in rows], now
        )
    conn.execute(
        delete(pending_table).where(
            pending_table.c.sync == sync_name, pending_table.c.job == job.job
        )
    )
    conn.execute(
        update(jobs_table)
        .where(jobs_table.c.sync == sync_name, jobs_table.c.job == job.job)
        .values(
            status=status.state if job.sealed else "abandoned",
            message=status.reason,
            stats=json.dumps(dict(status.stats), sort_keys=True) if status.stats else None,
            settled_at=now,
        )
    )
    return delta
