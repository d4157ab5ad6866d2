"""One sync run, from warehouse rows to acknowledged state.

The engine owns everything but payload shapes: it stages and diffs the snapshot, applies the
guards, sends batches through the connector, and commits state for acknowledged records only,
in the same transaction as their audit events. Anything not acknowledged is simply still in the
diff next time, so a crash or a failed batch loses nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from sqlalchemy import Connection, Engine, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from syncer.connector import BatchResult, Connector, Operation, Outcome, SyncContext
from syncer.diff import ChangeBatch, DiffCounts, Staging
from syncer.errors import (
    AuthError,
    BatchRejected,
    ConfigError,
    ConnectorCrashed,
    ExitCode,
    SyncerError,
    TransientError,
    where,
)
from syncer.http import make_client
from syncer.log import get_logger
from syncer.mapping import LoadedSync
from syncer.normalize import RowEncoder, StagedRow
from syncer.settings import Settings
from syncer.state import events_table, records_table, runs_table, state_engine, utcnow
from syncer.warehouse import stream

log = get_logger("syncer.engine")

ProgressFn = Callable[[str, int, int], None]
"""Called as (operation, records done, records planned) while a run sends batches."""

OPERATIONS: tuple[Operation, ...] = ("add", "update", "remove")
_COUNTER = {"add": "added", "update": "updated", "remove": "removed"}


def mask_key(key: str, key_type: str) -> str:
    """A sample key safe to print: emails and phones are masked, ids shown as they are."""
    if key_type == "email" or (key_type == "string" and "@" in key):
        local, _, domain = key.partition("@")
        name, _, tld = domain.rpartition(".")
        return f"{local[:1]}***@{name[:1]}***.{tld}" if name else f"{local[:1]}***@***"
    if key_type == "phone":
        return f"{key[:2]}{'*' * max(len(key) - 4, 0)}{key[-2:]}"
    return key


def audit_key(key: str | None, plain: bool) -> str | None:
    if key is None or plain:
        return key
    return hashlib.sha256(key.encode()).hexdigest()


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
            ),
            0,
        )

    def __getitem__(self, name: str) -> int:
        return self.values[name]


class SyncEngine:
    """Runs and plans syncs against one state database.

    ``transport`` replaces the network for every connector (tests pass a respx router here).
    """

    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        self.transport = transport

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
        with stream(
            url, definition.source.query, self.settings.read_batch_size, str(sync.path)
        ) as (columns, partitions):
            encoder = RowEncoder(definition, columns, str(sync.path))

            def encoded() -> Iterator[list[StagedRow]]:
                start = 0
                for part in partitions:
                    yield encoder.encode(part, start)
                    start += len(part)

            staging.load(encoded())
        staging.finalize(definition.source.key)
        return staging

    # -- plan --------------------------------------------------------------------------------

    def plan(self, sync: LoadedSync, full_resync: bool = False, samples: int = 5) -> PlanResult:
        """Exactly what ``run`` would send now; nothing is sent and no state changes."""
        definition = sync.definition
        with self.state.connect() as conn:
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
        except SyncerError as exc:
            return RunResult(None, definition.name, "failed", {}, str(exc), int(exc.exit_code))
        with engine.connect() as conn:
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
            conn.commit()
            bound.info("run.started", trigger=trigger, full_resync=full_resync)
            status, message, exit_code = "failed", None, ExitCode.PROBLEMS
            staging: Staging | None = None
            try:
                staging = self._stage(conn, sync, full_resync)
                counts = staging.counts()
                self._record_invalid(conn, run_id, staging, tally, counts)
                guard = check_guards(definition.guards, counts)
                if guard.blocked and not force:
                    status, message = "blocked", guard.reason
                else:
                    self._send_all(conn, run_id, sync, staging, counts, tally, progress)
                    status = "succeeded"
                    if tally["rejected"] or tally["invalid"] or tally["failed"]:
                        status = "partial"
                exit_code = self._exit_code(status, tally)
            except SyncerError as exc:
                conn.rollback()
                message, exit_code = str(exc), exc.exit_code
            except Exception as exc:  # a bug: record it, keep other syncs of --all running
                conn.rollback()
                message, exit_code = f"internal error ({where(exc)})", ExitCode.PROBLEMS
                bound.error("run.crashed", where=where(exc))
            except BaseException:
                conn.rollback()
                self._finish(conn, run_id, "interrupted", tally, "stopped by signal or error")
                raise
            self._finish(conn, run_id, status, tally, message)
            if staging is not None:
                conn.invalidate()  # closing the connection drops staging in one go
        duration = time.monotonic() - started
        bound.info("run.finished", status=status, duration_s=round(duration, 3), **tally.values)
        return RunResult(
            run_id, definition.name, status, dict(tally.values), message, int(exit_code), duration
        )

    @staticmethod
    def _exit_code(status: str, tally: _Tally) -> ExitCode:
        if status == "succeeded":
            return ExitCode.OK
        only_failures = not (tally["rejected"] or tally["invalid"])
        if status == "partial" and tally["failed"] and only_failures:
            return ExitCode.TEMPFAIL  # nothing wrong with the data: worth retrying later
        return ExitCode.PROBLEMS

    def _record_invalid(
        self, conn: Connection, run_id: str, staging: Staging, tally: _Tally, counts: DiffCounts
    ) -> None:
        plain = self.settings.audit_plain_keys
        for page in staging.invalid_rows() if counts.invalid else ():
            now = utcnow()
            conn.execute(
                events_table.insert(),
                [
                    {
                        "run_id": run_id,
                        "key": audit_key(key, plain),
                        "operation": "validate",
                        "outcome": "invalid",
                        "reason": reason,
                        "at": now,
                    }
                    for key, reason in page
                ],
            )
        tally.values.update(
            source_rows=counts.source_rows, invalid=counts.invalid, unchanged=counts.unchanged
        )
        self._save_tally(conn, run_id, tally)
        conn.commit()

    def _send_all(
        self,
        conn: Connection,
        run_id: str,
        sync: LoadedSync,
        staging: Staging,
        counts: DiffCounts,
        tally: _Tally,
        progress: ProgressFn | None,
    ) -> None:
        definition = sync.definition
        planned = {"add": counts.add, "update": counts.update, "remove": counts.remove}
        context = SyncContext(
            sync_name=definition.name,
            mode=definition.mode,
            field_names=tuple(sorted(definition.fields)),
            run_id=run_id,
        )
        with make_client(self.settings.http_timeout, self.transport) as http:
            connector = sync.connector_cls(sync.connector_config, context, http)
            _guarded(connector, "open", connector.open)
            finished = False
            try:
                for operation in OPERATIONS:
                    done = 0
                    expected = planned[operation]
                    for batch in staging.batches(operation, connector.batch_size, expected):
                        outcomes = self._send(connector, batch)
                        self._commit(conn, run_id, definition.name, batch, outcomes, tally)
                        done += len(batch.records)
                        if progress is not None:
                            progress(operation, done, planned[operation])
                finished = True
            finally:
                _guarded(connector, "close", lambda: connector.close(finished))

    @staticmethod
    def _send(connector: Connector, batch: ChangeBatch) -> list[Outcome]:
        method: Callable[[Any], BatchResult] = getattr(connector, batch.operation)
        keys = [r.key for r in batch.records]
        try:
            return _guarded(connector, batch.operation, lambda: method(batch.records).outcomes())
        except AuthError:
            raise
        except TransientError as exc:
            reason = f"destination unavailable: {exc}"
        except BatchRejected as exc:
            return [Outcome(k, "rejected", f"batch refused: {exc}") for k in keys]
        except ConfigError:
            raise
        except httpx.HTTPError as exc:
            reason = f"request failed: {type(exc).__name__}"
        return [Outcome(k, "failed", reason) for k in keys]

    def _commit(
        self,
        conn: Connection,
        run_id: str,
        sync_name: str,
        batch: ChangeBatch,
        outcomes: list[Outcome],
        tally: _Tally,
    ) -> None:
        """State for acknowledged records and every outcome's audit event: one transaction."""
        now = utcnow()
        plain = self.settings.audit_plain_keys
        by_key = {r.key: r for r in batch.records}
        accepted = [o for o in outcomes if o.status == "accepted"]
        if accepted and batch.operation == "remove":
            conn.execute(
                delete(records_table).where(
                    records_table.c.sync == sync_name,
                    records_table.c.key.in_([o.key for o in accepted]),
                )
            )
        elif accepted:
            rows = [
                {
                    "sync": sync_name,
                    "key": o.key,
                    "hash": batch.hashes[o.key],
                    "destination_id": o.destination_id or by_key[o.key].destination_id,
                    "synced_at": now,
                }
                for o in accepted
            ]
            insert = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert
            stmt = insert(records_table)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[records_table.c.sync, records_table.c.key],
                    set_={
                        "hash": stmt.excluded.hash,
                        "destination_id": func.coalesce(
                            stmt.excluded.destination_id, records_table.c.destination_id
                        ),
                        "synced_at": stmt.excluded.synced_at,
                    },
                ),
                rows,
            )
        conn.execute(
            events_table.insert(),
            [
                {
                    "run_id": run_id,
                    "key": audit_key(o.key, plain),
                    "operation": batch.operation,
                    "outcome": o.status,
                    "reason": o.reason,
                    "at": now,
                }
                for o in outcomes
            ],
        )
        tally.values[_COUNTER[batch.operation]] += len(accepted)
        tally.values["rejected"] += sum(o.status == "rejected" for o in outcomes)
        tally.values["failed"] += sum(o.status == "failed" for o in outcomes)
        self._save_tally(conn, run_id, tally)
        conn.commit()

    @staticmethod
    def _save_tally(conn: Connection, run_id: str, tally: _Tally) -> None:
        conn.execute(update(runs_table).where(runs_table.c.id == run_id).values(**tally.values))

    def _finish(
        self, conn: Connection, run_id: str, status: str, tally: _Tally, message: str | None
    ) -> None:
        conn.execute(
            update(runs_table)
            .where(runs_table.c.id == run_id)
            .values(status=status, finished_at=utcnow(), message=message, **tally.values)
        )
        conn.commit()

    # -- reading the audit log ---------------------------------------------------------------

    def runs(self, sync: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        query = select(runs_table).order_by(runs_table.c.started_at.desc()).limit(limit)
        if sync is not None:
            query = query.where(runs_table.c.sync == sync)
        with self.state.connect() as conn:
            return [_row_dict(row._mapping) for row in conn.execute(query)]

    def run_detail(self, run_id: str, limit: int = 100) -> dict[str, Any] | None:
        with self.state.connect() as conn:
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
                .where(events_table.c.run_id == detail["id"], events_table.c.outcome != "accepted")
                .order_by(events_table.c.id)
                .limit(limit)
            ).all()
            detail["problems"] = [
                {k: v for k, v in _row_dict(p._mapping).items() if k not in ("id", "run_id")}
                for p in problems
            ]
        return detail


T = TypeVar("T")


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
