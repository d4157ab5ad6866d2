"""Forgetting a person (``syncer forget``): a privacy request, sync by sync.

For each sync the key the user typed is normalised exactly as the sync's key column is (and
hashed when its connector keeps only SHA-256 keys), then looked up in state. A member held
there is removed through the engine's own machinery: the sync's lease, a run recorded with
trigger ``forget``, the in-flight mark before the request leaves, the connector on the
engine's HTTP client (account limiter, retries, Retry-After, auth) and the ledger's settle.
Only once the destination acknowledged the removal is the member's trace erased, in the very
transaction that records the acknowledgement: the state row, its reject-policy and
vendor-job rows, and the key of every audit event of the sync (the events stay, with their
operation, outcome and time, so the counts of every run are unchanged; the key becomes NULL
and the reason ``forgotten``). A refused or failed removal keeps everything, so running
``forget`` again retries it. See docs/operations/privacy.md.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, select, update

from syncer import recorder
from syncer.connector import Outcome, Record
from syncer.diff import ChangeBatch
from syncer.engine import SyncEngine
from syncer.enums import RunStatus, SyncMode
from syncer.errors import ExitCode, SyncerError, where
from syncer.jobs import Waiting, settle_jobs
from syncer.lease import Lease
from syncer.ledger import mark_sent, settle
from syncer.log import get_logger
from syncer.mapping import LoadedSync
from syncer.normalize import InvalidValue, key_converter
from syncer.recorder import hold_pending, save_counts
from syncer.results import mask_key
from syncer.retry import guarded
from syncer.runcontext import RunContext
from syncer.sender import deliver
from syncer.state import (
    events_table,
    is_state_error,
    membership_table,
    pending_table,
    reading,
    records_table,
    rejects_table,
    runs_table,
    state_errors,
    state_failure,
    utcnow,
    writing,
)

log = get_logger("syncer.forget")

#: The ``trigger`` of the run a removal is recorded under (``syncer runs`` shows it).
TRIGGER = "forget"
#: What a forgotten audit event's reason becomes (its key becomes NULL).
TOMBSTONE = "forgotten"

#: What happened at one sync's destination.
REMOVED = "removed"  # the destination acknowledged the removal; syncer's traces are erased
NOT_HELD = "not held"  # syncer never sent them there (or forgot them before)
KEPT_AT_VENDOR = "kept at vendor"  # the sync's mode never removes: syncer's traces erased only
PENDING = "pending"  # the vendor took the removal into a job; run forget again to confirm
FAILED = "failed"  # refused or not delivered: everything kept, run forget again
#: Outcomes of a sync whose destination had the person (what its source may send again).
WAS_HELD = (REMOVED, KEPT_AT_VENDOR, PENDING)

#: Modes that never remove a member at the destination: there is no removal to send.
_NEVER_REMOVE = frozenset({SyncMode.UPSERT, SyncMode.UPDATE_ONLY})


def state_key(sync: LoadedSync, raw: str) -> str:
    """``raw`` as the sync's state keeps its key: normalised as its ``source.key_type``
    says, and SHA-256 hex when the connector keeps hashed keys. InvalidValue when ``raw``
    cannot be this sync's key (then the sync cannot hold it)."""
    key = key_converter(sync.definition)(raw)
    if not key:
        raise InvalidValue("empty key")
    if sync.connector_cls.capabilities.hashed_keys:
        key = _sha256(key)
    return key


def audit_forms(key: str) -> list[str]:
    """Every way the audit log may spell ``key``: as it is (``SYNCER_AUDIT_PLAIN_KEYS``)
    and as its SHA-256 (the default); both, since the setting may have changed since."""
    return [key, _sha256(key)]


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(slots=True)
class Holding:
    """What syncer holds of the person in one sync (read without changing anything)."""

    sync: LoadedSync
    key: str | None  # the state key; None when the input cannot be this sync's key
    why_not: str | None  # why it cannot be
    held: bool = False  # a state row: syncer sent them to the destination
    pending: bool = False  # in a vendor job not settled yet
    events: int = 0  # audit events naming them
    rejects: int = 0  # reject-policy rows
    stays: int = 0  # membership history rows (held-out members have them too)

    @property
    def found(self) -> bool:
        return self.held or self.pending or bool(self.events or self.rejects or self.stays)


@dataclass(slots=True)
class Forgotten:
    """What ``forget`` did in one sync; ``exit_code`` as documented in docs/cli.md."""

    sync: str
    connector: str
    status: str
    reason: str | None = None
    exit_code: int = int(ExitCode.OK)
    run_id: str | None = None
    events: int = 0  # audit events whose key was erased

    def as_dict(self) -> dict[str, Any]:
        return {
            "sync": self.sync,
            "connector": self.connector,
            "status": self.status,
            "reason": self.reason,
            "exit_code": self.exit_code,
            "run_id": self.run_id,
            "events_forgotten": self.events,
        }


def look_up(engine: SyncEngine, sync: LoadedSync, raw: str) -> Holding:
    """What ``sync`` holds of ``raw``, read only."""
    try:
        key = state_key(sync, raw)
    except InvalidValue as exc:
        kind = sync.definition.source.key_type
        return Holding(sync, None, f"not a valid {kind} key for this sync ({exc})")
    url = engine.settings.state_url.get_secret_value()
    name = sync.definition.name
    with state_errors(url), engine.state.connect() as conn:
        reading(conn)
        held = _state_row(conn, name, key) is not None
        pending = _is_pending(conn, name, key)
        events = conn.execute(
            select(func.count()).select_from(events_table).where(_events_of(name, key))
        ).scalar_one()
        rejects = conn.execute(
            select(func.count())
            .select_from(rejects_table)
            .where(rejects_table.c.sync == name, rejects_table.c.key == key)
        ).scalar_one()
        stays = conn.execute(
            select(func.count())
            .select_from(membership_table)
            .where(membership_table.c.sync == name, membership_table.c.member_key == key)
        ).scalar_one()
    return Holding(sync, key, None, held, pending, int(events), int(rejects), int(stays))


def unmapped_syncs(engine: SyncEngine, mapped: Sequence[str]) -> list[str]:
    """Syncs the state database has runs of but no mapping file defines any more: forget
    cannot look there (it needs the sync's key type and connector), so the CLI names them."""
    url = engine.settings.state_url.get_secret_value()
    with state_errors(url), engine.state.connect() as conn:
        reading(conn)
        names = conn.execute(select(runs_table.c.sync).distinct()).scalars().all()
    return sorted(set(names) - set(mapped))


def forget(engine: SyncEngine, holding: Holding) -> Forgotten:
    """Remove the person from ``holding``'s destination and erase syncer's traces of them
    there, holding the sync's lease; never raises for a failure at the destination."""
    sync = holding.sync
    name, connector = sync.definition.name, sync.connector_cls.name
    if holding.key is None:
        return Forgotten(name, connector, NOT_HELD, holding.why_not)
    key = holding.key
    url = engine.settings.state_url.get_secret_value()
    lease = Lease(engine.state, name, ttl=engine.settings.lease_ttl)
    try:
        with state_errors(url):
            lease.__enter__()
    except SyncerError as exc:  # LeaseHeld (a run of the sync is under way: 75), or the state
        return Forgotten(name, connector, FAILED, str(exc), int(exc.exit_code))
    try:
        with state_errors(url), engine.state.connect() as conn:
            _scrubbing(reading(conn))
            if _state_row(conn, name, key) is None and not _is_pending(conn, name, key):
                with writing(conn):
                    erased = erase(conn, name, key)
                return Forgotten(name, connector, NOT_HELD, None, events=erased)
            return _forget_held(engine, sync, conn, lease, key)
    except SyncerError as exc:  # the state database failed (see state_failure)
        return Forgotten(name, connector, FAILED, str(exc), int(exc.exit_code))
    finally:
        try:
            lease.__exit__(None, None, None)
        except Exception:  # it expires by itself
            log.warning("lease.release_failed", sync=name)


def _forget_held(
    engine: SyncEngine, sync: LoadedSync, conn: Connection, lease: Lease, key: str
) -> Forgotten:
    """A run of ``sync`` that removes the member ``key`` and nothing else, recorded as any
    run is (``syncer runs``, ``syncer run show``)."""
    name, connector = sync.definition.name, sync.connector_cls.name
    run_id = uuid.uuid4().hex[:16]
    bound = log.bind(run_id=run_id, sync=name, connector=connector)
    run = RunContext(
        run_id,
        sync,
        engine.settings,
        bound,
        engine.retry,
        engine.connector_session,
        engine.stop,
        TRIGGER,
        False,
        False,
        None,
        started=time.monotonic(),
    )
    run.conn, run.lease = conn, lease
    recorder.start_run(run)
    bound.info("forget.started")
    try:
        result = _remove(run, key)
        status = {
            REMOVED: RunStatus.SUCCEEDED,
            KEPT_AT_VENDOR: RunStatus.SUCCEEDED,
            PENDING: RunStatus.SUBMITTED,
        }.get(result.status, RunStatus.PARTIAL)
        message = result.reason
    except BaseException as exc:
        result, status = _stopped(run, exc, key)
        message = result.reason
    recorder.finish_run(run, status, message)
    bound.info("forget.finished", status=result.status)
    result.run_id = run_id
    return result


def _stopped(run: RunContext, exc: BaseException, key: str) -> tuple[Forgotten, RunStatus]:
    """What a removal that raised ``exc`` reports; nothing it had not committed is kept. A
    signal (not an Exception) is recorded as an interrupted run and raised again. The
    vendor's text in a refusal may quote the person: masked, as ``_remove`` masks it."""
    name, connector = run.name, run.sync.connector_cls.name
    if isinstance(exc, Waiting):
        run.conn.commit()  # what settling the earlier jobs wrote
        why = f"{exc}; run forget again once it finished"
        return Forgotten(name, connector, FAILED, why, int(ExitCode.TEMPFAIL)), RunStatus.WAITING
    if is_state_error(exc):  # busy, full, damaged...: see state_failure
        failure = state_failure(exc, run.settings.state_url.get_secret_value())
        return Forgotten(name, connector, FAILED, str(failure), int(failure.exit_code)), (
            RunStatus.FAILED
        )
    run.conn.rollback()
    if isinstance(exc, SyncerError):
        why = str(exc).replace(key, mask_key(key, run.definition.source.key_type))
        return Forgotten(name, connector, FAILED, why, int(exc.exit_code)), RunStatus.FAILED
    if not isinstance(exc, Exception):
        recorder.finish_run(run, RunStatus.INTERRUPTED, "stopped by signal or error")
        raise exc
    run.log.error("forget.crashed", where=where(exc))
    why = f"internal error ({where(exc)})"
    return Forgotten(name, connector, FAILED, why, int(ExitCode.PROBLEMS)), RunStatus.FAILED


def _remove(run: RunContext, key: str) -> Forgotten:
    """Settle earlier vendor jobs holding the member, then send its removal and commit the
    answer with the erasure (on acknowledgement) in one transaction."""
    conn, name = run.conn, run.name
    connector_name = run.sync.connector_cls.name
    was_pending = _pending_operation(conn, name, key)
    if was_pending is not None:
        settle_jobs(run)  # a job still running raises Waiting: nothing is sent
    row = _state_row(conn, name, key)
    if row is None:  # the settled job removed it, or its add never happened
        with writing(conn):
            erased = erase(conn, name, key)
        status = REMOVED if was_pending == "remove" else NOT_HELD
        return Forgotten(name, connector_name, status, None, events=erased)
    mode = run.definition.mode
    if mode in _NEVER_REMOVE:
        with writing(conn):
            erased = erase(conn, name, key)
        why = (
            f"mode {mode} never removes at the destination: syncer forgot them, the record"
            f" {connector_name} holds stays (delete it with the vendor's own tools)"
        )
        return Forgotten(name, connector_name, KEPT_AT_VENDOR, why, events=erased)
    batch = _removal(key, row)
    with writing(conn):
        mark_sent(conn, name, batch, {}, utcnow())  # in flight before it leaves
    with run.connector() as connector:
        guarded(connector, "open", connector.open)
        try:
            outcomes = deliver(run.retry, connector, "remove", batch.records)
        except BaseException:
            guarded(connector, "close", lambda: connector.close(False))
            raise
        outcome, erased = _commit(run, batch, outcomes)
        guarded(connector, "close", lambda: connector.close(True))
        recorder.seal_jobs(run, connector.stats)
    if outcome.status == "accepted":
        return Forgotten(name, connector_name, REMOVED, None, events=erased)
    if outcome.status == "pending":
        why = (
            f"the vendor took the removal into job {outcome.job}; run forget again once it"
            " finished, to confirm it and erase syncer's traces"
        )
        return Forgotten(name, connector_name, PENDING, why, int(ExitCode.TEMPFAIL))
    # The vendor's text may quote the person it refused: it goes to the run's message and
    # stderr, which forget never erases, so the key is masked as plan masks it.
    masked = mask_key(key, run.definition.source.key_type)
    reason = (outcome.reason or "no reason given").replace(key, masked)
    why = f"{outcome.status}: {reason}; run forget again to retry"
    return Forgotten(name, connector_name, FAILED, why, int(ExitCode.PROBLEMS))


def _commit(
    run: RunContext, batch: ChangeBatch, outcomes: Sequence[Outcome]
) -> tuple[Outcome, int]:
    """State and the audit event for the answer, the run's counters, and (once accepted)
    the erasure, in one transaction; returns the outcome and how many events were erased."""
    conn, name = run.conn, run.name
    (outcome,) = list(outcomes)
    erased = 0
    with writing(conn):
        now = utcnow()
        if outcome.status == "pending":
            hold_pending(conn, run.id, name, batch, [outcome], now)
        delta = settle(conn, run.id, name, batch, outcomes, now, plain_keys=run.plain_keys)
        values = run.tally.plus(delta)
        save_counts(conn, run.id, values)
        if outcome.status == "accepted":
            erased = erase(conn, name, batch.records[0].key)
    run.tally.values.update(values)
    return outcome, erased


def _removal(key: str, row: Any) -> ChangeBatch:
    """The member as a one-record removal batch, as the diff reads one (key, destination
    id, hash, unsure)."""
    rows = [[key, row.destination_id, row.hash, row.unsure]]
    return ChangeBatch("remove", rows, _records)


def _records(rows: list[Any]) -> list[Record]:
    return [Record(key, {}, destination_id) for key, destination_id, _, _ in rows]


def erase(conn: Connection, sync: str, key: str) -> int:
    """Every trace of ``key`` in ``sync`` (in the caller's transaction): its state row,
    reject-policy and vendor-job rows, its membership history, and the key of its audit
    events, which stay as tombstones so every run's counts are unchanged. Returns how many
    events were erased."""
    forms = audit_forms(key)
    conn.execute(
        delete(records_table).where(records_table.c.sync == sync, records_table.c.key == key)
    )
    conn.execute(
        delete(rejects_table).where(rejects_table.c.sync == sync, rejects_table.c.key.in_(forms))
    )
    conn.execute(
        delete(pending_table).where(pending_table.c.sync == sync, pending_table.c.key == key)
    )
    # Their stays in the segment's history (syncer.membership), held out or not.
    conn.execute(
        delete(membership_table).where(
            membership_table.c.sync == sync, membership_table.c.member_key == key
        )
    )
    result = conn.execute(
        update(events_table).where(_events_of(sync, key)).values(key=None, reason=TOMBSTONE)
    )
    return int(result.rowcount or 0)


def _events_of(sync: str, key: str) -> Any:
    """The audit events of ``sync``'s runs that name ``key`` (either spelling)."""
    runs = select(runs_table.c.id).where(runs_table.c.sync == sync)
    return events_table.c.key.in_(audit_forms(key)) & events_table.c.run_id.in_(runs)


def _scrubbing(conn: Connection) -> Connection:
    """On SQLite, make what this connection deletes or overwrites zeroed in the file
    rather than left in free space (``secure_delete``), so an erased key is not still in
    the database's bytes."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("PRAGMA secure_delete = ON")
        conn.commit()
    return conn


def truncate_log(engine: SyncEngine) -> None:
    """On SQLite, copy the write-ahead log into the database and empty it: older page
    images there still hold erased keys. Best effort: a reader still inside it (a daemon
    mid-run) leaves it as it is, to be overwritten as SQLite reuses it."""
    state = engine.state
    if state.dialect.name != "sqlite":
        return
    try:
        with state.connect() as conn:
            # On the driver's connection: SQLAlchemy would BEGIN first, and a checkpoint
            # inside a transaction does nothing.
            raw: Any = conn.connection.driver_connection
            busy, _, _ = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except Exception as exc:
        if not is_state_error(exc):
            raise
        busy = 1
    if busy:
        log.warning("forget.log_not_emptied", why="another connection is reading the database")


def _state_row(conn: Connection, sync: str, key: str) -> Any:
    return conn.execute(
        select(records_table).where(records_table.c.sync == sync, records_table.c.key == key)
    ).first()


def _pending_operation(conn: Connection, sync: str, key: str) -> str | None:
    """The operation of the vendor job holding the member, if one does."""
    return conn.execute(
        select(pending_table.c.operation).where(
            pending_table.c.sync == sync, pending_table.c.key == key
        )
    ).scalar()


def _is_pending(conn: Connection, sync: str, key: str) -> bool:
    return _pending_operation(conn, sync, key) is not None
