"""One sync run, from warehouse rows to acknowledged state, as its steps in order.

The engine owns everything but payload shapes. A run takes the sync's lease, records itself
as running, settles the vendor jobs earlier runs left (syncer.jobs), stages and diffs the
snapshot, records the invalid rows, applies the guards (syncer.results), sends the changes
(syncer.sender, with syncer.retry's retries) and records how it ended (syncer.recorder). State
is committed for acknowledged records only, in the same transaction as their audit events, so
anything not acknowledged is still in the diff next time: a crash or a failed batch loses
nothing. See docs/engine.md.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from syncer import audit, experiments, recorder, rejects, writeback
from syncer.connector import Connector, SyncContext, effective_limits
from syncer.destinations import preview as preview_named_list
from syncer.destinations import resent as resent_counts
from syncer.destinations import resolve as resolve_named_list
from syncer.diff import Staging
from syncer.enums import RunStatus
from syncer.errors import ExitCode, Interrupted, LeaseHeld, SyncerError, where
from syncer.forking import run_in_progress
from syncer.http import make_client
from syncer.jobs import Waiting, settle_jobs
from syncer.lease import Lease
from syncer.log import get_logger
from syncer.mapping import LoadedSync
from syncer.ratelimit import AccountLimiter, limiter_for
from syncer.results import (
    Guard,
    PlanResult,
    RunResult,
    check_guards,
    exit_code,
    mask_key,
    sent_status,
)
from syncer.retry import RetryPolicy
from syncer.runcontext import ProgressFn, RunContext
from syncer.sender import OPERATIONS, send_all
from syncer.settings import Settings
from syncer.snapshot import stage
from syncer.state import (
    is_state_error,
    reading,
    state_engine,
    state_errors,
    state_failure,
    writing,
)

__all__ = ["Guard", "PlanResult", "ProgressFn", "RunResult", "SyncEngine", "check_guards"]

log = get_logger("syncer.engine")


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
        # Set (the CLI does on SIGTERM/SIGINT) to stop starting batches; in-flight ones finish.
        self.stop = threading.Event()
        self.clock = clock
        # Retry waits end early when a stop is asked for, so shutdown is never held up by a backoff.
        self.sleep: Callable[[float], Any] = sleep or self.stop.wait
        self.retry = RetryPolicy(settings, clock, self.sleep, self.stop)
        # One limiter per destination account for every sync this engine runs (the daemon runs
        # them all in one engine), on the engine's clock so tests can drive time.
        self._limiters: dict[str, AccountLimiter] = {}

    @property
    def state(self) -> Engine:
        return state_engine(self.settings.state_url.get_secret_value())

    def plan(self, sync: LoadedSync, full_resync: bool = False, samples: int = 5) -> PlanResult:
        """Exactly what ``run`` would send now; nothing is sent and no state changes."""
        definition = sync.definition
        with state_errors(self.settings.state_url.get_secret_value()), self.state.connect() as conn:
            reading(conn)
            staging: Staging | None = None
            try:
                lists = preview_named_list(self, sync, conn)
                prepared = experiments.prepare(conn, sync, self.settings)
                staging = stage(
                    self.settings,
                    conn,
                    sync,
                    full_resync,
                    fork=self.fork_reader,
                    assignment=prepared.assignment,
                )
                counts = staging.counts()
                experiment = experiments.preview(conn, staging, prepared, sync)
                if counts.members_before and any(item.looked_up for item in lists):
                    counts = resent_counts(counts, definition.mode)  # as _store will make it
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
            definition.name,
            definition.mode,
            counts,
            sample,
            invalid[:samples],
            guard,
            [item.as_dict() for item in lists],
            experiment,
        )

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
        name = sync.definition.name
        run_id = uuid.uuid4().hex[:16]
        bound = log.bind(run_id=run_id, sync=name, connector=sync.connector_cls.name)
        run = RunContext(
            run_id,
            sync,
            self.settings,
            bound,
            self.retry,
            self.connector_session,
            self.stop,
            trigger,
            full_resync,
            force,
            progress,
            started=time.monotonic(),
        )
        try:
            engine = self.state
            run.lease = Lease(engine, name, ttl=self.settings.lease_ttl)
            run.lease.__enter__()
        except SyncerError as exc:
            status = RunStatus.LOCKED if isinstance(exc, LeaseHeld) else RunStatus.FAILED
            return RunResult(None, name, status, {}, str(exc), int(exc.exit_code))
        except SQLAlchemyError as exc:
            failure = self._state_failure(exc)
            return RunResult(None, name, RunStatus.FAILED, {}, str(failure), int(failure.exit_code))
        try:
            with run_in_progress():
                result = self._run_leased(engine, run)
            # Still holding the lease; a failure is a warning, never the run's (issue 16).
            writeback.after_run(
                self.settings, engine, sync.definition, result.warnings, stop=self.stop.is_set
            )
            return result
        except SQLAlchemyError as exc:
            # The state database went away mid-run: nothing unacknowledged was committed, and
            # the run row may still say running; the next run marks it interrupted.
            failure = self._state_failure(exc)
            bound.error("run.state_db_failed", error=type(exc).__name__)
            counts = dict(run.tally.values)
            return RunResult(
                run_id, name, RunStatus.FAILED, counts, str(failure), int(failure.exit_code)
            )
        finally:
            try:
                run.lease.__exit__(None, None, None)
            except SQLAlchemyError:  # it expires by itself
                bound.warning("lease.release_failed")

    def _run_leased(self, engine: Engine, run: RunContext) -> RunResult:
        """Holding the lease: record the run, take its steps, record how it ended."""
        with engine.connect() as conn:
            run.conn = reading(conn)
            recorder.start_run(run)
            run.log.info("run.started", trigger=run.trigger, full_resync=run.full_resync)
            try:
                status, message = self._steps(run)
                code = exit_code(status, run.tally)
            except BaseException as exc:
                status, message, code = self._stopped(run, exc)
            recorder.finish_run(run, status, message)
            if run.staging is not None:
                run.staging.close()
                conn.invalidate()  # closing the connection drops staging in one go
        duration = time.monotonic() - run.started
        values = dict(run.tally.values, parked=run.parked)
        if run.held_out:
            values["held_out"] = run.held_out
        run.log.info("run.finished", status=status, duration_s=round(duration, 3), **values)
        return RunResult(run.id, run.name, status, values, message, int(code), duration)

    def _steps(self, run: RunContext) -> tuple[RunStatus, str | None]:
        """The run's steps in order; each commits what it did (see syncer.recorder)."""
        # The list the sync names (not its id): found, or created exactly once, and its id
        # stored before anything is sent (syncer.destinations).
        resolve_named_list(run)
        settle_jobs(run)  # raises Waiting while an earlier run's vendor job still runs
        run.had_rejects = rejects.has_rows(run.conn, run.name)
        # Holdout splits and history (syncer.experiments): refused here if a split changed
        # mid-phase, before anything is staged or sent.
        prepared = experiments.prepare(run.conn, run.sync, self.settings)
        staging = run.staging = stage(
            self.settings,
            run.conn,
            run.sync,
            run.full_resync,
            fork=self.fork_reader,
            assignment=prepared.assignment,
            full_check=prepared.full_check,
        )
        counts = staging.counts()
        recorder.record_invalid(run, staging, counts)
        guard = check_guards(run.definition.guards, counts)
        if guard.blocked and not run.force:
            return RunStatus.BLOCKED, guard.reason
        history = experiments.record(run.conn, staging, prepared, run.id, run.plain_keys)
        run.log.info(
            "run.membership", entered=history.entered, exited=history.exited, held=counts.held
        )
        send_all(run, staging, counts)
        if run.had_rejects:  # forget members accepted since, or gone (syncer.rejects)
            with writing(run.conn) as conn:
                rejects.reconcile(conn, staging)
        status = sent_status(run.tally, run.definition.guards)
        return status, rejects.parked_message(run.parked, run.name) if run.parked else None

    def _stopped(
        self, run: RunContext, exc: BaseException
    ) -> tuple[RunStatus, str | None, ExitCode]:
        """How a run whose steps raised ``exc`` ended; what it had not committed is rolled
        back. A signal (not an Exception) is recorded as interrupted and raised again."""
        if isinstance(exc, Waiting):
            run.conn.commit()
            return RunStatus.WAITING, str(exc), ExitCode.OK
        run.conn.rollback()
        if isinstance(exc, Interrupted):
            return RunStatus.INTERRUPTED, str(exc), exc.exit_code
        if isinstance(exc, SyncerError):
            return RunStatus.FAILED, str(exc), exc.exit_code
        if not isinstance(exc, Exception):
            recorder.finish_run(run, RunStatus.INTERRUPTED, "stopped by signal or error")
            raise exc
        if is_state_error(exc):  # busy, full, damaged...: see state_failure
            failure = self._state_failure(exc)
            return RunStatus.FAILED, str(failure), failure.exit_code
        run.log.error("run.crashed", where=where(exc))  # a bug: keep other syncs of --all going
        return RunStatus.FAILED, f"internal error ({where(exc)})", ExitCode.PROBLEMS

    @contextmanager
    def connector_session(self, sync: LoadedSync, context: SyncContext) -> Iterator[Connector]:
        """A connector on the engine's HTTP client: account limiter, classification, secrets
        kept out of messages, stop event, and the engine's clock for job polls. Runs, job
        polls and ``syncer check`` all wire connectors through here."""
        with make_client(
            self.settings.http_timeout, self.transport, max_wait=self.settings.max_retry_after
        ) as http:
            connector = sync.connector_cls(sync.connector_config, context, http)
            connector.pause = self.retry.pause
            http.classifier = connector.classify
            rates, concurrency = effective_limits(connector)
            http.limiter = limiter_for(
                connector.account_key(),
                rates,
                concurrency,
                registry=self._limiters,
                clock=self.clock,
                sleep=self.sleep,
            )
            http.secrets = connector.secret_values()
            http.stop = self.stop
            yield connector

    def _state_failure(self, exc: BaseException) -> SyncerError:
        return state_failure(exc, self.settings.state_url.get_secret_value())

    # The audit readers live in syncer.audit (the CLI calls them without an engine).

    def runs(self, sync: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        return audit.runs(self.settings, sync, limit)

    def run_detail(self, run_id: str, limit: int = 100) -> dict[str, Any] | None:
        return audit.run_detail(self.settings, run_id, limit)
