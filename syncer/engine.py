"""One sync run, from warehouse rows to acknowledged state.

The engine owns everything but payload shapes: it stages and diffs the snapshot, applies the
guards, sends batches through the connector, and commits state for acknowledged records only,
in the same transaction as their audit events. Anything not acknowledged is simply still in the
diff next time, so a crash or a failed batch loses nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from sqlalchemy import Connection, Engine, delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential_jitter

from syncer.connector import (
    BatchResult,
    Connector,
    JobStatus,
    Operation,
    Outcome,
    Record,
    SyncContext,
    effective_limits,
)
from syncer.diff import ChangeBatch, DiffCounts, Staging
from syncer.errors import (
    BatchRejected,
    ConnectorCrashed,
    ExitCode,
    Interrupted,
    LeaseHeld,
    RateLimited,
    SyncerError,
    TransientError,
    where,
)
from syncer.forking import run_in_progress
from syncer.http import make_client, time_limit
from syncer.lease import Lease
from syncer.ledger import COUNTER, audit_key, mark_sent, settle
from syncer.log import get_logger
from syncer.mapping import LoadedSync
from syncer.ratelimit import AccountLimiter, RateLimit, limiter_for
from syncer.reader import ReadJob, encoded_chunks
from syncer.settings import Settings
from syncer.state import (
    BulkWriter,
    events_table,
    is_state_error,
    jobs_table,
    pending_table,
    reading,
    records_table,
    runs_table,
    state_engine,
    state_failure,
    utcnow,
    writing,
)

log = get_logger("syncer.engine")

ProgressFn = Callable[[str, int, int], None]
"""Called as (operation, records done, records planned) while a run sends batches."""

OPERATIONS: tuple[Operation, ...] = ("add", "update", "remove")


def mask_key(key: str, key_type: str) -> str:
    """A sample key safe to print: emails and phones are masked, ids shown as they are."""
    if key_type == "email" or (key_type == "string" and "@" in key):
        local, _, domain = key.partition("@")
        name, _, tld = domain.rpartition(".")
        return f"{local[:1]}***@{name[:1]}***.{tld}" if name else f"{local[:1]}***@***"
    if key_type == "phone":
        return f"{key[:2]}{'*' * max(len(key) - 4, 0)}{key[-2:]}"
    return key


@dataclass(slots=True)
class Guard:
    """Why a run was blocked, if it was."""

    blocked: bool
    reason: str | None = None


def check_guards(definition_guards: Any, counts: DiffCounts) -> Guard:
    """Invariant 4: an empty source or a mass removal is blocked unless forced."""
    valid = counts.source_rows - counts.invalid
    if counts.members_before and valid == 0 and counts.remove:
        return Guard(
            True,
            f"the query returned no valid rows while {counts.members_before} members are synced;"
            " refusing to remove them all (use --force if this is intended)",
        )
    limit = float(definition_guards.max_remove_pct)
    if counts.members_before and counts.remove:
        pct = 100.0 * counts.remove / counts.members_before
        if pct > limit:
            return Guard(
                True,
                f"would remove {counts.remove} of {counts.members_before} members ({pct:.1f}%),"
                f" more than guards.max_remove_pct={limit:g} (use --force if this is intended)",
            )
    return Guard(False)


@dataclass(slots=True)
class RunResult:
    """What one run did; ``exit_code`` follows the documented table."""

    run_id: str | None
    sync: str
    status: str
    counts: dict[str, int] = field(default_factory=dict)
    message: str | None = None
    exit_code: int = 0
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "sync": self.sync,
            "status": self.status,
            "exit_code": self.exit_code,
            "duration_s": round(self.duration_s, 3),
            "message": self.message,
            **self.counts,
        }


@dataclass(slots=True)
class PlanResult:
    """What ``sync now`` would send, computed without sending or writing anything."""

    sync: str
    mode: str
    counts: DiffCounts
    samples: dict[Operation, list[str]]
    invalid_samples: list[str]
    guard: Guard

    def as_dict(self) -> dict[str, Any]:
        return {
            "sync": self.sync,
            "mode": self.mode,
            **self.counts.as_dict(),
            "samples": self.samples,
            "invalid_samples": self.invalid_samples,
            "blocked": self.guard.blocked,
            "blocked_reason": self.guard.reason,
        }


class _Tally:
    """Running counters of a run, mirrored into its ``syncer_runs`` row after each batch."""

    def __init__(self) -> None:
        self.values = dict.fromkeys(
            (
                "source_rows",
                "added",
                "removed",
                "updated",
                "unchanged",
                "rejected",
                "invalid",
                "failed",
                "pending",
            ),
            0,
        )

    def __getitem__(self, name: str) -> int:
        return self.values[name]

    def plus(self, delta: dict[str, int]) -> dict[str, int]:
        """The counters with ``delta`` added: written in the transaction that commits what
        ``delta`` counts, and kept (``values.update``) only once that commit succeeded."""
        return _add(self.values, delta)


def _add(values: dict[str, int], delta: dict[str, int]) -> dict[str, int]:
    return {name: n + delta.get(name, 0) for name, n in values.items()}


class SyncEngine:
    """Runs and plans syncs against one state database.

    ``transport`` replaces the network for every connector (tests pass a respx router here).
    """

    def __init__(
        self,
        settings: Settings,
        transport: httpx.BaseTransport | None = None,
        *,
        sleep: Callable[[float], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        fork_reader: bool | None = None,
    ) -> None:
        self.settings = settings
        # A forked warehouse reader (syncer.reader) unless told otherwise; the daemon says no:
        # its other threads (schedules, probes, other syncs) may be inside SQLite at a fork.
        self.fork_reader = settings.read_process if fork_reader is None else fork_reader
        self.transport = transport
        self.stop = threading.Event()
        # Set (the CLI does on SIGTERM/SIGINT) to stop starting batches; in-flight ones finish.
        self.clock = clock
        # Retry waits end early when a stop is asked for, so shutdown is never held up by a backoff.
        self.sleep: Callable[[float], Any] = sleep or self.stop.wait
        # One limiter per destination account for every sync this engine runs (the daemon runs
        # them all in one engine), on the engine's clock so tests can drive time.
        self._limiters: dict[str, AccountLimiter] = {}

    def _limiter(self, account: str, rates: list[RateLimit], concurrency: int) -> AccountLimiter:
        return limiter_for(
            account, rates, concurrency, registry=self._limiters, clock=self.clock, sleep=self.sleep
        )

    def _pause(self, seconds: float) -> bool:
        """A connector's wait between job polls, on the engine's clock; False once stopping."""
        if self.stop.is_set():
            return False
        self.sleep(max(0.0, seconds))
        return not self.stop.is_set()

    def _state_failure(self, exc: BaseException) -> SyncerError:
        return state_failure(exc, self.settings.state_url.get_secret_value())

    @contextmanager
    def _state_errors(self) -> Iterator[None]:
        """State database errors as the SyncerError they mean (see state_failure)."""
        try:
            yield
        except Exception as exc:
            if is_state_error(exc):
                raise self._state_failure(exc) from None
            raise

    @property
    def state(self) -> Engine:
        return state_engine(self.settings.state_url.get_secret_value())

    # -- staging -----------------------------------------------------------------------------

    def _stage(self, conn: Connection, sync: LoadedSync, full_resync: bool) -> Staging:
        definition = sync.definition
        staging = Staging(
            conn, definition.name, definition.mode, tuple(sorted(definition.fields)), full_resync
        )
        staging.create()
        url = self.settings.warehouse(definition.source.warehouse)
        try:
            job = ReadJob(
                url,
                definition,
                str(sync.path),
                self.settings.read_batch_size,
                hash_keys=sync.connector_cls.capabilities.hashed_keys,
            )
            with encoded_chunks(job, staging.spill, fork=self.fork_reader) as chunks:
                staging.load(chunks)
        except BaseException:
            staging.close()
            raise
        try:
            staging.finalize(definition.source.key)
        except BaseException:
            staging.close()
            raise
        return staging

    # -- plan --------------------------------------------------------------------------------

    def plan(self, sync: LoadedSync, full_resync: bool = False, samples: int = 5) -> PlanResult:
        """Exactly what ``run`` would send now; nothing is sent and no state changes."""
        definition = sync.definition
        with self._state_errors(), self.state.connect() as conn:
            reading(conn)
            staging: Staging | None = None
            try:
                staging = self._stage(conn, sync, full_resync)
                counts = staging.counts()
                key_type = definition.source.key_type
                sample = {
                    op: [mask_key(k, key_type) for k in staging.sample_keys(op, samples)]
                    for op in OPERATIONS
                }
                invalid = [reason for _, reason in next(staging.invalid_rows(samples), [])]
                guard = check_guards(definition.guards, counts)
            finally:
                if staging is not None:
                    staging.close()
                conn.invalidate()  # discards the staging table and the open transaction
        return PlanResult(
            definition.name, definition.mode, counts, sample, invalid[:samples], guard
        )

    # -- run ---------------------------------------------------------------------------------

    def run(
        self,
        sync: LoadedSync,
        *,
        trigger: str = "manual",
        full_resync: bool = False,
        force: bool = False,
        progress: ProgressFn | None = None,
    ) -> RunResult:
        """Run one sync to completion and record it; never raises for a run-level failure."""
        definition = sync.definition
        started = time.monotonic()
        run_id = uuid.uuid4().hex[:16]
        tally = _Tally()
        bound = log.bind(run_id=run_id, sync=definition.name, connector=sync.connector_cls.name)
        try:
            engine = self.state
            lease = Lease(engine, definition.name, ttl=self.settings.lease_ttl)
            lease.__enter__()
        except SyncerError as exc:
            status = "locked" if isinstance(exc, LeaseHeld) else "failed"
            return RunResult(None, definition.name, status, {}, str(exc), int(exc.exit_code))
        except SQLAlchemyError as exc:
            failure = self._state_failure(exc)
            return RunResult(
                None, definition.name, "failed", {}, str(failure), int(failure.exit_code)
            )
        try:
            with run_in_progress():
                return self._run_leased(
                    engine,
                    lease,
                    sync,
                    run_id,
                    tally,
                    bound,
                    started,
                    trigger=trigger,
                    full_resync=full_resync,
                    force=force,
                    progress=progress,
                )
        except SQLAlchemyError as exc:
            # The state database went away mid-run: nothing unacknowledged was committed, and
            # the run row may still say running; the next run marks it interrupted.
            failure = self._state_failure(exc)
            bound.error("run.state_db_failed", error=type(exc).__name__)
            counts = dict(tally.values)
            return RunResult(
                run_id, definition.name, "failed", counts, str(failure), int(failure.exit_code)
            )
        finally:
            try:
                lease.__exit__(None, None, None)
            except SQLAlchemyError:  # it expires by itself
                bound.warning("lease.release_failed")

    def _run_leased(
        self,
        engine: Engine,
        lease: Lease,
        sync: LoadedSync,
        run_id: str,
        tally: _Tally,
        bound: Any,
        started: float,
        *,
        trigger: str,
        full_resync: bool,
        force: bool,
        progress: ProgressFn | None,
    ) -> RunResult:
        definition = sync.definition
        with engine.connect() as conn:
            self._start_run(reading(conn), definition, run_id, trigger, full_resync)
            bound.info("run.started", trigger=trigger, full_resync=full_resync)
            status, message, exit_code = "failed", None, ExitCode.PROBLEMS
            staging: Staging | None = None
            try:
                waiting = self._settle_jobs(conn, sync, run_id, tally, bound)
                if waiting is not None:
                    raise _Waiting(waiting)
                staging = self._stage(conn, sync, full_resync)
                counts = staging.counts()
                self._record_invalid(conn, run_id, staging, tally, counts)
                guard = check_guards(definition.guards, counts)
                if guard.blocked and not force:
                    status, message = "blocked", guard.reason
                else:
                    self._send_all(conn, run_id, sync, staging, counts, tally, progress, lease)
                    status = "submitted" if tally["pending"] else "succeeded"
                    if tally["rejected"] or tally["invalid"] or tally["failed"]:
                        status = "partial"
                exit_code = self._exit_code(status, tally)
            except _Waiting as exc:
                conn.commit()
                status, message, exit_code = "waiting", str(exc), ExitCode.OK
            except Interrupted as exc:
                conn.rollback()
                status, message, exit_code = "interrupted", str(exc), exc.exit_code
            except SyncerError as exc:
                conn.rollback()
                message, exit_code = str(exc), exc.exit_code
            except Exception as exc:
                conn.rollback()
                if is_state_error(exc):  # busy, full, damaged...: see state_failure
                    failure = self._state_failure(exc)
                    message, exit_code = str(failure), failure.exit_code
                else:  # a bug: record it, keep other syncs of --all running
                    message, exit_code = f"internal error ({where(exc)})", ExitCode.PROBLEMS
                    bound.error("run.crashed", where=where(exc))
            except BaseException:
                conn.rollback()
                self._finish(conn, run_id, "interrupted", tally, "stopped by signal or error")
                raise
            self._finish(conn, run_id, status, tally, message)
            if staging is not None:
                staging.close()
                conn.invalidate()  # closing the connection drops staging in one go
        duration = time.monotonic() - started
        bound.info("run.finished", status=status, duration_s=round(duration, 3), **tally.values)
        return RunResult(
            run_id, definition.name, status, dict(tally.values), message, int(exit_code), duration
        )

    @staticmethod
    def _start_run(
        conn: Connection, definition: Any, run_id: str, trigger: str, full_resync: bool
    ) -> None:
        """Record the run as running; we hold the lease, so any run of this sync still marked
        running belongs to a process that died."""
        with writing(conn):
            conn.execute(
                update(runs_table)
                .where(runs_table.c.sync == definition.name, runs_table.c.status == "running")
                .values(
                    status="interrupted",
                    finished_at=utcnow(),
                    message="its process stopped before finishing (killed or crashed)",
                )
            )
            conn.execute(
                runs_table.insert().values(
                    id=run_id,
                    sync=definition.name,
                    status="running",
                    trigger=trigger,
                    mode=definition.mode,
                    full_resync=int(full_resync),
                    started_at=utcnow(),
                    host=socket.gethostname(),
                    pid=os.getpid(),
                )
            )

    @staticmethod
    def _exit_code(status: str, tally: _Tally) -> ExitCode:
        if status in ("succeeded", "submitted"):
            return ExitCode.OK
        only_failures = not (tally["rejected"] or tally["invalid"])
        if status == "partial" and tally["failed"] and only_failures:
            return ExitCode.TEMPFAIL  # nothing wrong with the data: worth retrying later
        return ExitCode.PROBLEMS

    def _record_invalid(
        self, conn: Connection, run_id: str, staging: Staging, tally: _Tally, counts: DiffCounts
    ) -> None:
        plain = self.settings.audit_plain_keys
        values = dict(
            tally.values,
            source_rows=counts.source_rows,
            invalid=counts.invalid,
            unchanged=counts.unchanged,
        )
        with writing(conn):  # the events and the counter that counts them, together
            writer = BulkWriter(conn)
            for page in staging.invalid_rows() if counts.invalid else ():
                rows = [(audit_key(key, plain), "validate", "invalid", why) for key, why in page]
                writer.add_events(run_id, rows, utcnow())
            self._save_counts(conn, run_id, values)
        tally.values.update(values)

    def _send_all(
        self,
        conn: Connection,
        run_id: str,
        sync: LoadedSync,
        staging: Staging,
        counts: DiffCounts,
        tally: _Tally,
        progress: ProgressFn | None,
        lease: Lease,
    ) -> None:
        """Send every change, several batches in flight, committing each as it is answered.

        Pages are read and state is committed on this thread (one database connection);
        worker threads only talk to the destination, paced by the account's rate limiter.
        """
        definition = sync.definition
        planned = {"add": counts.add, "update": counts.update, "remove": counts.remove}
        context = SyncContext(
            sync_name=definition.name,
            mode=definition.mode,
            field_names=tuple(sorted(definition.fields)),
            run_id=run_id,
        )
        with self.connector_session(sync, context) as connector:
            _, concurrency = effective_limits(connector)
            _guarded(connector, "open", connector.open)
            finished = False
            pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="syncer-send")
            inflight: dict[Future[list[Outcome]], ChangeBatch] = {}
            done = dict.fromkeys(OPERATIONS, 0)
            failure: BaseException | None = None
            Answered = list[tuple[ChangeBatch, list[Outcome]]]

            def collect(timeout: float) -> Answered:
                """Batches answered within ``timeout`` (0: those already answered)."""
                nonlocal failure
                ready, _ = wait(list(inflight), timeout=timeout, return_when=FIRST_COMPLETED)
                answered: Answered = []
                for future in ready:
                    batch = inflight.pop(future)
                    try:
                        answered.append((batch, future.result()))
                    except SyncerError as exc:  # auth/config/crash: no more batches after this
                        failure = failure or exc
                return answered

            def record(answered: Answered, sending: ChangeBatch | None = None) -> None:
                """Commit answered batches and mark the next one as in flight, together:
                one transaction per batch sent, not two."""
                self._commit(conn, run_id, definition.name, answered, sending, connector, tally)
                for batch, _ in answered:
                    done[batch.operation] += len(batch.records)
                    if progress is not None:
                        progress(batch.operation, done[batch.operation], planned[batch.operation])

            try:
                for operation in OPERATIONS:
                    pages = staging.batches(operation, connector.batch_size, planned[operation])
                    for batch in pages:
                        if self.stop.is_set() or lease.lost.is_set() or failure is not None:
                            break
                        answered = collect(0)
                        while len(inflight) >= concurrency:
                            answered += collect(0.25)
                        if failure is not None:
                            record(answered)
                            break
                        record(answered, batch)  # committed before the request leaves
                        submitted = pool.submit(
                            self._deliver, connector, batch.operation, batch.records
                        )
                        inflight[submitted] = batch
                    while inflight:
                        record(collect(0.25))
                    if self.stop.is_set() or lease.lost.is_set() or failure is not None:
                        break
                else:
                    finished = True
            except BaseException:
                # A second signal: leave now, without waiting for requests in flight or closing
                # the connector. Batches in flight stay marked as sent but unconfirmed, so the
                # next run treats them as possibly applied (see syncer.ledger).
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown(wait=True)
            _guarded(connector, "close", lambda: connector.close(finished))
            with writing(conn):
                # close() returned: every job it handed out has been started at the vendor.
                conn.execute(
                    update(jobs_table)
                    .where(jobs_table.c.run_id == run_id, jobs_table.c.sealed == 0)
                    .values(sealed=1, status="submitted")
                )
                self._save_stats(conn, run_id, connector.stats)
            if failure is not None:
                raise failure
            if lease.lost.is_set():
                raise Interrupted("another process took over this sync's lease; stopped early")
            if not finished:
                raise Interrupted("stopped on request; acknowledged changes are saved")

    @contextmanager
    def connector_session(self, sync: LoadedSync, context: SyncContext) -> Iterator[Connector]:
        """A connector on the engine's HTTP client: account limiter, classification, secrets
        kept out of messages, stop event, and the engine's clock for job polls. Runs, job
        polls and ``syncer check`` all wire connectors through here."""
        with make_client(
            self.settings.http_timeout, self.transport, max_wait=self.settings.max_retry_after
        ) as http:
            connector = sync.connector_cls(sync.connector_config, context, http)
            connector.pause = self._pause
            http.classifier = connector.classify
            rates, concurrency = effective_limits(connector)
            http.limiter = self._limiter(connector.account_key(), rates, concurrency)
            http.secrets = connector.secret_values()
            http.stop = self.stop
            yield connector

    @staticmethod
    def _save_stats(conn: Connection, run_id: str, stats: dict[str, int]) -> None:
        if stats:
            conn.execute(
                update(runs_table)
                .where(runs_table.c.id == run_id)
                .values(stats=json.dumps(stats, sort_keys=True))
            )

    # -- vendor jobs ---------------------------------------------------------------------

    def _settle_jobs(
        self, conn: Connection, sync: LoadedSync, run_id: str, tally: _Tally, bound: Any
    ) -> str | None:
        """Poll the jobs earlier runs left at the vendor, before anything else is sent.

        A succeeded job's records become synced (in this run's transaction, with their
        events); a failed one's are dropped, so the diff sends them again; a job that was
        never started (its run died before close()) is dropped the same way. Jobs are
        serialised per sync, as vendors ask (Google: CONCURRENT_MODIFICATION): while one
        still runs, this returns why the run must wait, and nothing new is sent.
        """
        name = sync.definition.name
        jobs = conn.execute(
            select(jobs_table)
            .where(jobs_table.c.sync == name, jobs_table.c.settled_at.is_(None))
            .order_by(jobs_table.c.created_at)
        ).all()
        if not jobs:
            return None
        context = SyncContext(name, sync.definition.mode, tuple(sorted(sync.definition.fields)))
        waiting: str | None = None
        with self.connector_session(sync, context) as connector:
            for job in jobs:
                if not job.sealed:
                    status = JobStatus("failed", "its run stopped before the job was started")
                else:
                    status = self._retrying_poll(connector, job.job)
                if status.state == "running":
                    waiting = (
                        f"waiting for vendor job {job.job} (submitted by run {job.run_id});"
                        " nothing new is sent until it finishes"
                    )
                    continue
                with writing(conn):
                    values = tally.plus(self._apply_job(conn, name, run_id, job, status))
                    self._save_counts(conn, run_id, values)
                tally.values.update(values)
                bound.info("job.settled", job=job.job, state=status.state)
        return waiting

    def _retrying_poll(self, connector: Connector, job: str) -> JobStatus:
        """``poll_job`` with the same retries, Retry-After and budget as a batch."""
        return self._retrying(
            lambda: _guarded(connector, "poll_job", lambda: connector.poll_job(job))
        )

    def _apply_job(
        self,
        conn: Connection,
        sync_name: str,
        run_id: str,
        job: Any,
        status: JobStatus,
    ) -> dict[str, int]:
        """Make a finished job's records synced (or leave them unconfirmed), with their audit
        events; returns the counters it adds to the run.

        A failed or never started job leaves its records marked as sent but unconfirmed (see
        syncer.ledger): the diff then sends each again while it is in the segment, and
        removes it once it has left, since the vendor may have applied part of the job.
        Read in keyset pages, so a job of a million members never sits in memory at once.
        """
        delta = dict.fromkeys(("added", "updated", "removed", "failed"), 0)
        now = utcnow()
        plain = self.settings.audit_plain_keys
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
            .limit(_JOB_PAGE)
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

    def _deliver(
        self, connector: Connector, operation: Operation, records: list[Record]
    ) -> list[Outcome]:
        """One batch to the destination with retries; a refused batch is halved to find the bad
        records, so the good ones still land. Runs on a worker thread."""
        call: Callable[[list[Record]], BatchResult] = getattr(connector, operation)
        try:
            return self._retrying(
                lambda: _guarded(connector, operation, lambda: call(records).outcomes())
            )
        except BatchRejected as exc:
            if len(records) == 1:
                return [Outcome(records[0].key, "rejected", f"refused: {exc}")]
            middle = len(records) // 2
            return self._deliver(connector, operation, records[:middle]) + self._deliver(
                connector, operation, records[middle:]
            )
        except TransientError as exc:
            return [Outcome(r.key, "failed", f"not delivered: {exc}") for r in records]
        except httpx.HTTPError as exc:
            return [
                Outcome(r.key, "failed", f"request failed: {type(exc).__name__}") for r in records
            ]

    def _retrying(self, attempt: Callable[[], T]) -> T:
        """Retry transient failures with backoff or Retry-After within the batch's time budget.

        Waiting out a 429 does not use up an attempt; the budget bounds the total either way.
        """
        settings = self.settings
        begun = self.clock()
        failures = 0
        backoff = wait_exponential_jitter(initial=1, max=60)

        def pause(state: RetryCallState) -> float:
            """Retry-After when the destination gave one (clamped), else jittered backoff."""
            exc = state.outcome.exception() if state.outcome else None
            asked = getattr(exc, "retry_after", None)
            if asked is not None:
                return min(float(asked), settings.max_retry_after)
            return float(backoff(state))

        def give_up(state: RetryCallState) -> bool:
            """Stop on request, when attempts run out, or when the next wait would overrun.

            tenacity computes the wait first, so ``upcoming_sleep`` is the wait ahead.
            """
            nonlocal failures
            if self.stop.is_set():
                return True
            exc = state.outcome.exception() if state.outcome else None
            if not isinstance(exc, RateLimited):
                failures += 1
            spent = self.clock() - begun
            return (
                failures >= settings.retry_attempts
                or spent + state.upcoming_sleep > settings.batch_time_budget
            )

        retrying = Retrying(
            retry=retry_if_exception_type(TransientError),
            stop=give_up,
            wait=pause,
            sleep=self.sleep,
            reraise=True,
        )
        # The budget also bounds each request (and a wait for the rate limiter) in real time,
        # so a destination that trickles its answer cannot hold a batch past it.
        with time_limit(settings.batch_time_budget):
            return retrying(attempt)

    def _commit(
        self,
        conn: Connection,
        run_id: str,
        sync_name: str,
        answered: list[tuple[ChangeBatch, list[Outcome]]],
        sending: ChangeBatch | None,
        connector: Connector,
        tally: _Tally,
    ) -> None:
        """One transaction: state and every outcome's audit event for the answered batches,
        the run's counters, and the in-flight mark of the batch about to be sent (see
        syncer.ledger). The counters in memory follow only once it committed, so the run
        never claims more than state and the audit log hold."""
        if not answered and sending is None:
            return
        expected: dict[str, str | None] = {}
        overridden = (
            type(connector).expected_destination_id is not Connector.expected_destination_id
        )
        if sending is not None and sending.operation != "remove" and overridden:
            operation = sending.operation

            def expect() -> None:
                for record in sending.records:
                    expected[record.key] = connector.expected_destination_id(operation, record)

            _guarded(connector, "expected_destination_id", expect)
        now = utcnow()
        plain = self.settings.audit_plain_keys
        values = tally.values
        with writing(conn):
            for batch, outcomes in answered:
                pending = [o for o in outcomes if o.status == "pending"]
                if pending:
                    self._hold_pending(conn, run_id, sync_name, batch, pending, now)
                delta = settle(conn, run_id, sync_name, batch, outcomes, now, plain_keys=plain)
                values = _add(values, delta)
            if answered:
                self._save_counts(conn, run_id, values)
            if sending is not None:
                mark_sent(conn, sync_name, sending, expected, now)
        tally.values.update(values)

    @staticmethod
    def _hold_pending(
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
                select(jobs_table.c.job).where(
                    jobs_table.c.sync == sync_name, jobs_table.c.job == job
                )
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

    @staticmethod
    def _save_counts(conn: Connection, run_id: str, values: dict[str, int]) -> None:
        conn.execute(update(runs_table).where(runs_table.c.id == run_id).values(**values))

    def _finish(
        self, conn: Connection, run_id: str, status: str, tally: _Tally, message: str | None
    ) -> None:
        with writing(conn):
            conn.execute(
                update(runs_table)
                .where(runs_table.c.id == run_id)
                .values(status=status, finished_at=utcnow(), message=message, **tally.values)
            )

    # -- reading the audit log ---------------------------------------------------------------

    def runs(self, sync: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        query = select(runs_table).order_by(runs_table.c.started_at.desc()).limit(limit)
        if sync is not None:
            query = query.where(runs_table.c.sync == sync)
        with self._state_errors(), self.state.connect() as conn:
            return [_row_dict(row._mapping) for row in reading(conn).execute(query)]

    def run_detail(self, run_id: str, limit: int = 100) -> dict[str, Any] | None:
        with self._state_errors(), self.state.connect() as conn:
            reading(conn)
            row = conn.execute(select(runs_table).where(runs_table.c.id == run_id)).first()
            if row is None:
                matches = conn.execute(
                    select(runs_table).where(runs_table.c.id.startswith(run_id)).limit(2)
                ).all()
                if len(matches) != 1:
                    return None
                row = matches[0]
            detail = _row_dict(row._mapping)
            totals = conn.execute(
                select(events_table.c.operation, events_table.c.outcome, func.count())
                .where(events_table.c.run_id == detail["id"])
                .group_by(events_table.c.operation, events_table.c.outcome)
            ).all()
            detail["outcomes"] = [
                {"operation": op, "outcome": outcome, "count": n} for op, outcome, n in totals
            ]
            problems = conn.execute(
                select(events_table)
                .where(
                    events_table.c.run_id == detail["id"],
                    events_table.c.outcome.not_in(("accepted", "pending")),
                )
                .order_by(events_table.c.id)
                .limit(limit)
            ).all()
            detail["problems"] = [
                {k: v for k, v in _row_dict(p._mapping).items() if k not in ("id", "run_id")}
                for p in problems
            ]
            detail["stats"] = json.loads(detail["stats"]) if detail.get("stats") else {}
            jobs = conn.execute(
                select(jobs_table)
                .where(jobs_table.c.run_id == detail["id"])
                .order_by(jobs_table.c.created_at)
            ).all()
            detail["jobs"] = [
                {
                    "job": j.job,
                    "status": j.status,
                    "message": j.message,
                    "stats": json.loads(j.stats) if j.stats else {},
                    "settled_at": _row_dict({"t": j.settled_at})["t"],
                }
                for j in jobs
            ]
        return detail


T = TypeVar("T")


#: Pending records of a finished job handled per page (bounded memory, bounded IN lists).
_JOB_PAGE = 500


class _Waiting(Exception):
    """A vendor job of an earlier run is still running: this run sends nothing."""


def _guarded(connector: Connector, step: str, call: Callable[[], T]) -> T:
    """Run a connector call; anything outside the error contract becomes ConnectorCrashed."""
    try:
        return call()
    except (SyncerError, httpx.HTTPError):
        raise
    except Exception as exc:
        raise ConnectorCrashed(
            f"connector {connector.name!r} crashed in {step} ({where(exc)})"
        ) from exc


def _row_dict(mapping: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dt.datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)  # SQLite drops the offset; we store UTC
        out[key] = value.isoformat() if hasattr(value, "isoformat") else value
    return out
