"""The state database: what each destination has acknowledged, runs, and the audit log.

SQLite by default (one file, zero set-up), Postgres for teams. The schema is versioned in
``syncer_meta``; ``open_state`` upgrades an older database in place, step by step, and refuses
one written by a newer syncer rather than guess.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
    make_url,
    select,
)
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
)

from syncer.dist import missing_driver
from syncer.engines import track
from syncer.errors import ConfigError, SyncerError, TransientError

SCHEMA_VERSION = 8

metadata = MetaData()

meta_table = Table(
    "syncer_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

runs_table = Table(
    "syncer_runs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("sync", String(200), nullable=False),
    Column("status", String(20), nullable=False),
    Column("trigger", String(20), nullable=False),
    Column("mode", String(20), nullable=False),
    Column("full_resync", Integer, nullable=False, default=0),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("host", String(255)),
    Column("pid", Integer),
    Column("source_rows", Integer, nullable=False, default=0),
    Column("added", Integer, nullable=False, default=0),
    Column("removed", Integer, nullable=False, default=0),
    Column("updated", Integer, nullable=False, default=0),
    Column("unchanged", Integer, nullable=False, default=0),
    Column("rejected", Integer, nullable=False, default=0),
    Column("invalid", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),
    Column("message", Text),
    # Version 4: records taken into a vendor job not yet confirmed, and the vendor's own
    # counts for the run (JSON: num_received, match stats...).
    Column("pending", Integer, nullable=False, default=0),
    Column("stats", Text),
    Index("ix_syncer_runs_sync_started", "sync", "started_at"),
)

records_table = Table(
    "syncer_records",
    metadata,
    Column("sync", String(200), primary_key=True),
    Column("key", Text, primary_key=True),
    Column("hash", BigInteger, nullable=False),
    Column("destination_id", Text),
    Column("synced_at", DateTime(timezone=True), nullable=False),
    # Version 6: whether the destination is known to hold exactly ``hash`` (see CONFIRMED).
    Column("unsure", Integer, nullable=False, default=0, server_default="0"),
    # SQLite: cluster rows on (sync, key) so a diff probe is one B-tree descent, in key order.
    sqlite_with_rowid=False,
)

#: ``syncer_records.unsure``: the destination acknowledged ``hash``: it holds this member
#: with exactly those fields.
CONFIRMED = 0
#: A send that may or may not have been applied, and the member may be absent: an add or a
#: removal whose answer never arrived, or an add the destination refused during a full
#: resync. The diff sends such a member again as an add while it is in the segment, and a
#: removal once it is not.
MAYBE_ABSENT = 1
#: The member is at the destination, but an update whose answer never arrived may or may not
#: have changed its fields: sent again as an update while in the segment, removed once not.
MAYBE_STALE = 2

events_table = Table(
    "syncer_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(32), nullable=False),
    Column("key", Text),
    Column("operation", String(16), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("reason", Text),
    Column("at", DateTime(timezone=True), nullable=False),
)


leases_table = Table(
    "syncer_leases",
    metadata,
    Column("sync", String(200), primary_key=True),
    Column("holder", String(32), nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    # Epoch seconds: compared across processes and dialects without timezone surprises.
    Column("acquired_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)


jobs_table = Table(
    "syncer_jobs",
    metadata,
    Column("sync", String(200), primary_key=True),
    Column("job", String(500), primary_key=True),
    Column("run_id", String(32), nullable=False),
    # Set once the connector's close() returned: the vendor was told to run the job. A job
    # never sealed belongs to a run that died first; its records are simply sent again.
    Column("sealed", Integer, nullable=False, default=0),
    Column("status", String(20), nullable=False, default="open"),
    Column("message", Text),
    Column("stats", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("settled_at", DateTime(timezone=True)),
)

pending_table = Table(
    "syncer_pending",
    metadata,
    Column("sync", String(200), primary_key=True),
    Column("key", Text, primary_key=True),
    Column("operation", String(16), nullable=False),
    Column("hash", BigInteger),
    Column("destination_id", Text),
    Column("job", String(500), nullable=False),
    Column("run_id", String(32), nullable=False),
)


# Version 5 (the daemon): one row per sync and scheduled tick, so each tick runs once across
# replicas (syncer.claims), and the alert state per sync, so replicas alert once per incident.
ticks_table = Table(
    "syncer_ticks",
    metadata,
    Column("sync", String(200), primary_key=True),
    Column("tick", BigInteger, primary_key=True),  # epoch seconds of the scheduled moment
    Column("holder", String(300), nullable=False),  # host:pid of the replica that claimed it
    Column("claimed_at", Float, nullable=False),
    Column("run_id", String(32)),
    Column("status", String(20)),
)

alerts_table = Table(
    "syncer_alerts",
    metadata,
    Column("sync", String(200), primary_key=True),
    Column("state", String(20), nullable=False),  # ok | failing
    Column("since", Float, nullable=False),
    Column("run_id", String(32)),
    Column("reason", String(40)),
)


# Version 7 (issue 15): the reject policy and lists created at the vendor.
rejects_table = Table(
    "syncer_rejects",
    metadata,
    # One row per member the destination (or the normaliser) keeps refusing. ``hash`` is the
    # member's payload hash when last refused: a parked member whose source row changes (a
    # new hash) is tried again.
    Column("sync", String(200), primary_key=True),
    Column("key", Text, primary_key=True),
    Column("hash", BigInteger),
    Column("operation", String(16), nullable=False),
    Column("outcome", String(16), nullable=False),  # rejected | invalid
    Column("reason", Text),
    Column("attempts", Integer, nullable=False, default=1),
    Column("first_at", DateTime(timezone=True), nullable=False),
    Column("last_at", DateTime(timezone=True), nullable=False),
    Column("first_run_id", String(32)),
    Column("last_run_id", String(32)),
    # Set when the policy stops retrying it; NULL while it is still retried.
    Column("parked_at", DateTime(timezone=True)),
    sqlite_with_rowid=False,
)

destinations_table = Table(
    "syncer_destinations",
    metadata,
    # A list, tag, segment or audience syncer created at the vendor, by a scope the connector
    # builds (connector, account, kind and name). The row is written (``creating``) before the
    # vendor is asked, and its id right after, so a crash in between is found next time (the
    # connector looks the name up instead of creating it twice) and a second replica waits.
    Column("scope", String(500), primary_key=True),
    Column("connector", String(100), nullable=False),
    Column("name", Text, nullable=False),
    Column("destination_id", Text),
    Column("status", String(20), nullable=False),  # creating | created
    Column("sync", String(200)),
    Column("run_id", String(32)),
    Column("holder", String(300)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


# Version 8 (issue 16): experiments, membership history and write-back to the warehouse.
experiments_table = Table(
    "syncer_experiments",
    metadata,
    # One row per phase of a sync's experiment (and per phase of the global holdout, under
    # sync ``*global*``), written by the run that starts it. A phase's split is frozen: a run
    # refuses a changed percent or salt under the same phase (syncer.holdout).
    Column("sync", String(200), primary_key=True),
    Column("phase", Integer, primary_key=True),
    Column("holdout_percent", Float, nullable=False),
    Column("salt", Text, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("started_run", String(32)),
)

membership_table = Table(
    "syncer_membership",
    metadata,
    # Who was in a sync's segment, when, in which group and phase: one row per stay, open
    # (exited_at NULL) while the member is in, closed by the run that saw them leave.
    # ``member_key`` is the key as staged (normalised; the SHA-256 for hashed-key
    # destinations), which joins outcomes; ``key`` is the key as the audit log stores it.
    Column(
        "id",
        Integer().with_variant(BigInteger(), "postgresql"),
        primary_key=True,
        autoincrement=True,
    ),
    Column("sync", String(200), nullable=False),
    Column("member_key", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("phase", Integer, nullable=False),
    Column("grp", String(20), nullable=False),  # treated | holdout | global_holdout
    Column("entered_at", DateTime(timezone=True), nullable=False),
    Column("entered_run", String(32)),
    Column("exited_at", DateTime(timezone=True)),
    Column("exited_run", String(32)),
)
# Open stays by group and key: the history's diff against staging walks it in key order.
Index(
    "syncer_membership_open",
    membership_table.c.sync,
    membership_table.c.grp,
    membership_table.c.member_key,
    sqlite_where=membership_table.c.exited_at.is_(None),
    postgresql_where=membership_table.c.exited_at.is_(None),
)
# No other index: each would be written for every member a first run records (a run's
# entries and exits, forget and write-back read by scanning the sync's rows instead).

writeback_table = Table(
    "syncer_writeback",
    metadata,
    # One row per run written back to the warehouse (syncer.writeback); a run without one
    # (its write-back failed, or had not happened yet) is written by the next run.
    Column("sync", String(200), primary_key=True),
    Column("run_id", String(32), primary_key=True),
    Column("written_at", DateTime(timezone=True), nullable=False),
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def as_utc(value: dt.datetime | str) -> dt.datetime:
    """A stored timestamp (a datetime, or ISO text) as an aware UTC datetime: state stores
    UTC, and SQLite hands it back without its offset."""
    moment = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


class BulkWriter:
    """Driver-level ``executemany`` of state rows and audit events.

    These writes happen for every record of every batch; building SQLAlchemy parameter
    dicts cost more than the inserts themselves (measured: 0.29 s of 0.69 s of commits in a
    1M-member churn run). The SQL is the same on SQLite and PostgreSQL; timestamps are bound
    exactly as SQLAlchemy's own ``DateTime`` would store them.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        m = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        # The dialect's own processor (SQLite: text), applied once per batch: left to the
        # driver, every row's timestamp was converted again (600,000 conversions for a
        # 200,000-member first run, 10% of its time).
        at_type = records_table.c.synced_at.type
        self._at = at_type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
        self._upsert = (
            "INSERT INTO syncer_records (sync, key, hash, destination_id, synced_at, unsure)"
            f" VALUES ({m}, {m}, {m}, {m}, {m}, {m}) ON CONFLICT (sync, key) DO UPDATE SET"
            " hash = excluded.hash,"
            " destination_id = COALESCE(excluded.destination_id, syncer_records.destination_id),"
            " synced_at = excluded.synced_at, unsure = excluded.unsure"
        )
        self._restore = (
            f"UPDATE syncer_records SET hash = {m}, destination_id = {m}, unsure = {m}"
            f" WHERE sync = {m} AND key = {m}"
        )
        self._mark = f"UPDATE syncer_records SET unsure = {m} WHERE sync = {m} AND key = {m}"
        self._ids = (
            f"UPDATE syncer_records SET destination_id = COALESCE(destination_id, {m})"
            f" WHERE sync = {m} AND key = {m}"
        )
        self._delete = f"DELETE FROM syncer_records WHERE sync = {m} AND key = {m}"
        self._events = (
            "INSERT INTO syncer_events (run_id, key, operation, outcome, reason, at)"
            f" VALUES ({m}, {m}, {m}, {m}, {m}, {m})"
        )

    def stamp(self, at: dt.datetime) -> Any:
        return self._at(at) if self._at is not None else at

    def upsert_records(
        self,
        sync: str,
        rows: list[tuple[str, int | None, str | None]],
        at: dt.datetime,
        unsure: int = CONFIRMED,
    ) -> None:
        """(key, hash, destination id) rows, all ``unsure`` (see CONFIRMED); a destination id
        once known is kept when a row brings none."""
        if rows:
            stamp = self.stamp(at)
            self.conn.exec_driver_sql(
                self._upsert, [(sync, key, h, dest, stamp, unsure) for key, h, dest in rows]
            )

    def restore_records(
        self, sync: str, rows: list[tuple[str, int | None, str | None, int]]
    ) -> None:
        """Put (key, hash, destination id, unsure) back exactly as they were."""
        if rows:
            self.conn.exec_driver_sql(
                self._restore, [(h, dest, unsure, sync, key) for key, h, dest, unsure in rows]
            )

    def mark_records(self, sync: str, keys: list[str], unsure: int) -> None:
        """Set ``unsure`` on existing rows, leaving their hash and destination id."""
        if keys:
            self.conn.exec_driver_sql(self._mark, [(unsure, sync, key) for key in keys])

    def fill_destination_ids(self, sync: str, rows: list[tuple[str, str]]) -> None:
        """(key, destination id) for existing rows that have none yet (one a connector told
        before sending is kept: it may name more than this one)."""
        if rows:
            self.conn.exec_driver_sql(self._ids, [(dest, sync, key) for key, dest in rows])

    def delete_records(self, sync: str, keys: list[str]) -> None:
        if keys:
            self.conn.exec_driver_sql(self._delete, [(sync, key) for key in keys])

    def add_events(
        self,
        run_id: str,
        rows: Sequence[tuple[str | None, str, str, str | None]],
        at: dt.datetime,
    ) -> None:
        """(key, operation, outcome, reason) rows of one run."""
        if rows:
            stamp = self.stamp(at)
            self.conn.exec_driver_sql(
                self._events,
                [(run_id, key, op, outcome, why, stamp) for key, op, outcome, why in rows],
            )


def _migrate_1(conn: Connection) -> None:
    """Version 1: runs, acknowledged records and per-record events."""
    # Later versions' tables come in their own steps; runs_table already has version 4's
    # columns, which _migrate_4 then finds present.
    for table in (runs_table, records_table, events_table):
        table.create(conn, checkfirst=True)


def _migrate_2(conn: Connection) -> None:
    """Version 2: look up a run's events without scanning the whole audit log."""
    # Built on a throwaway Table: an Index on ``events_table`` would attach itself to the shared
    # metadata, so version 1 would create it too and a second call would add a duplicate.
    events = Table(
        "syncer_events", MetaData(), Column("run_id", String(32)), Column("outcome", String(16))
    )
    Index("ix_syncer_events_run", events.c.run_id, events.c.outcome).create(conn, checkfirst=True)


def _migrate_3(conn: Connection) -> None:
    """Version 3: one lease row per running sync, so runs never overlap across processes."""
    leases_table.create(conn, checkfirst=True)


def _migrate_4(conn: Connection) -> None:
    """Version 4: vendor jobs (records pending until a later run confirms them) and the
    vendor's counts per run."""
    present = {c["name"] for c in inspect(conn).get_columns("syncer_runs")}
    if "pending" not in present:
        conn.exec_driver_sql(
            "ALTER TABLE syncer_runs ADD COLUMN pending INTEGER NOT NULL DEFAULT 0"
        )
    if "stats" not in present:
        conn.exec_driver_sql("ALTER TABLE syncer_runs ADD COLUMN stats TEXT")
    jobs_table.create(conn, checkfirst=True)
    pending_table.create(conn, checkfirst=True)


def _migrate_5(conn: Connection) -> None:
    """Version 5: scheduled-tick claims and alert state for the daemon (new tables only)."""
    ticks_table.create(conn, checkfirst=True)
    alerts_table.create(conn, checkfirst=True)


def _migrate_6(conn: Connection) -> None:
    """Version 6: records whose last send was never confirmed (crash, timeout) are marked, so
    recovery treats them as possibly applied instead of trusting the last acknowledgement."""
    present = {c["name"] for c in inspect(conn).get_columns("syncer_records")}
    if "unsure" not in present:
        conn.exec_driver_sql(
            "ALTER TABLE syncer_records ADD COLUMN unsure INTEGER NOT NULL DEFAULT 0"
        )


def _migrate_7(conn: Connection) -> None:
    """Version 7: the reject policy's per-member history and lists created at the vendor."""
    rejects_table.create(conn, checkfirst=True)
    destinations_table.create(conn, checkfirst=True)


def _migrate_8(conn: Connection) -> None:
    """Version 8: experiments, membership history and the write-back ledger."""
    for table in (experiments_table, membership_table, writeback_table):
        table.create(conn, checkfirst=True)


MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: _migrate_1,
    2: _migrate_2,
    3: _migrate_3,
    4: _migrate_4,
    5: _migrate_5,
    6: _migrate_6,
    7: _migrate_7,
    8: _migrate_8,
}


def schema_version(conn: Connection) -> int:
    if not inspect(conn).has_table("syncer_meta"):
        return 0
    value = conn.execute(
        select(meta_table.c.value).where(meta_table.c.key == "schema_version")
    ).scalar()
    return int(value) if value is not None else 0


#: Key of the PostgreSQL advisory lock that serialises schema upgrades between processes.
_UPGRADE_LOCK = 0x5E7C_0001
_SQLITE_RACE_TRIES = 20


def upgrade(engine: Engine, target: int = SCHEMA_VERSION) -> int:
    """Bring the schema to ``target``, one committed step at a time; returns the old version.

    Several processes may start on a fresh database at once (daemon replicas, parallel
    ``sync now``): on PostgreSQL each step holds an advisory lock and re-reads the version
    inside it; on SQLite a step that loses the race (``table already exists``) re-reads the
    version and goes on from there.
    """
    current = _step(engine, None)
    if current > SCHEMA_VERSION:
        raise ConfigError(
            f"the state database has schema version {current}, newer than this syncer"
            f" understands ({SCHEMA_VERSION}); upgrade syncer"
        )
    for version in range(current + 1, target + 1):
        _step(engine, version)
    return current


def _step(engine: Engine, version: int | None) -> int:
    """Apply migration ``version`` unless another process already did (None: only make sure
    the meta table exists); returns the version found before the step."""
    for attempt in range(_SQLITE_RACE_TRIES):
        try:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_UPGRADE_LOCK})")
                meta_table.create(conn, checkfirst=True)
                found = schema_version(conn)
                if version is not None and found < version:
                    MIGRATIONS[version](conn)
                    _set_version(conn, version)
                return found
        except (OperationalError, IntegrityError) as exc:
            # SQLite: another process created the same table between our check and our
            # CREATE. Its step commits; read the version again and carry on from there.
            if engine.dialect.name != "sqlite" or attempt == _SQLITE_RACE_TRIES - 1:
                raise
            if "already exists" not in str(exc.orig) and "locked" not in str(exc.orig):
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def _set_version(conn: Connection, version: int) -> None:
    updated = conn.execute(
        meta_table.update().where(meta_table.c.key == "schema_version").values(value=str(version))
    ).rowcount
    if not updated:
        conn.execute(meta_table.insert().values(key="schema_version", value=str(version)))


#: How long a SQLite statement waits for another connection's write lock, in milliseconds.
SQLITE_BUSY_TIMEOUT_MS = 30_000


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # syncer issues BEGIN itself (see _sqlite_begin): the driver's own implicit BEGIN is
    # deferred and comes just before the first write, too late to wait for the lock.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    # The busy timeout first: switching a new database to WAL takes a lock other processes
    # starting at the same moment may hold.
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    """Every transaction says at its start whether it will write (see :func:`writing`).

    In WAL mode a transaction that began as a read and then writes gets SQLITE_BUSY at once,
    without waiting, when another connection committed since it began: the busy timeout
    cannot help, because waiting would not make its snapshot current again. A transaction
    that takes the write lock at BEGIN (IMMEDIATE) waits for it instead. So transactions are
    IMMEDIATE unless the connection was opened for reading (:func:`reading`), and a reading
    connection writes only inside :func:`writing`, which ends its read first.
    """
    mode = conn.get_execution_options().get(_BEGIN, "IMMEDIATE")
    conn.exec_driver_sql(f"BEGIN {mode}")


_BEGIN = "syncer_sqlite_begin"


def reading(conn: Connection) -> Connection:
    """Make ``conn``'s transactions plain reads (SQLite: BEGIN DEFERRED): long reads such as
    staging and the diff must not hold the write lock other runs need. Write on it only
    inside :func:`writing`. No effect on PostgreSQL."""
    return conn.execution_options(**{_BEGIN: "DEFERRED"})


@contextmanager
def writing(conn: Connection) -> Iterator[Connection]:
    """One write transaction on ``conn``, committed at the end, rolled back on an error.

    Whatever ``conn`` had open is committed first (on a :func:`reading` connection, a read),
    and on SQLite the new transaction takes the write lock at its start, waiting up to the
    busy timeout for it, so a run never fails because another one was writing.
    """
    if conn.in_transaction():
        conn.commit()
    previous = conn.get_execution_options().get(_BEGIN)
    conn.execution_options(**{_BEGIN: "IMMEDIATE"})
    try:
        with conn.begin():
            yield conn
    finally:
        if previous is not None:
            conn.execution_options(**{_BEGIN: previous})


@functools.cache
def state_engine(url: str) -> Engine:
    """Engine for the state database, created (file, schema) and upgraded on first use."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError("SYNCER_STATE_URL is not a valid SQLAlchemy URL") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"SYNCER_STATE_URL: state store {backend!r} is not supported (use sqlite or postgresql)"
        )
    if backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
        # It holds keys and the audit log: a new directory and file are the owner's only
        # (SQLite gives -wal/-shm the file's mode). Existing ones keep their mode.
        database = Path(parsed.database or "")
        database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not parsed.query.get("uri"):
            with contextlib.suppress(OSError):  # exists already, or SQLite reports the problem
                os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        engine = track(create_engine(parsed, pool_pre_ping=True))
    except (NoSuchModuleError, ImportError) as exc:
        raise missing_driver(parsed, exc, "SYNCER_STATE_URL") from None
    if backend == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
    try:
        upgrade(engine)
    except DBAPIError as exc:
        engine.dispose()
        raise state_failure(exc, url) from None
    return engine


# -- what a state database error means ---------------------------------------------------

#: SQLite result codes (the low byte of ``sqlite_errorcode``) that running again cannot fix.
_SQLITE_DAMAGED = {11: "its file is damaged", 26: "it is not a SQLite database"}
_SQLITE_REFUSED = {
    3: "permission denied",
    8: "it is read-only for this process",
    14: "it cannot be opened (a missing directory, or no permission)",
}
#: PostgreSQL SQLSTATEs of damaged data (class XX: internal error).
_POSTGRES_DAMAGED = {"XX001": "a data page is damaged", "XX002": "an index is damaged"}


class StateDamaged(ConfigError):
    """The state database is damaged: running again will not help (exit 78)."""


def is_state_error(exc: BaseException) -> bool:
    """Whether ``exc`` came from the state database's driver (directly or via SQLAlchemy)."""
    if isinstance(exc, DBAPIError):
        return True
    module = type(exc).__module__
    return module.startswith(("sqlite3", "psycopg")) and isinstance(exc, Exception)


def state_failure(exc: BaseException, url: str | None = None) -> SyncerError:
    """What a state database error means for the user, as the error to report.

    Damage (a corrupt SQLite file or PostgreSQL page) and refusals (permissions, read-only)
    are exit 78 with what to do, since running again changes nothing; anything else (busy,
    disk full, I/O, a lost connection) is exit 75, run again later. The message never
    quotes the driver's text, which can carry SQL and data.
    """
    orig = getattr(exc, "orig", None) or exc
    where = _describe(url)
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        damage = _SQLITE_DAMAGED.get(code & 0xFF)
        if damage is not None:
            return StateDamaged(
                f"the state database {where} cannot be used: {damage}. Running again will not"
                " help: restore it from a backup, or move it aside (with its -wal and -shm"
                " files) to start afresh; see docs/concepts/state-database.md"
            )
        refused = _SQLITE_REFUSED.get(code & 0xFF)
        if refused is not None:
            return ConfigError(f"the state database {where} cannot be written: {refused}")
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate in _POSTGRES_DAMAGED:
        return StateDamaged(
            f"the state database {where} reports damage: {_POSTGRES_DAMAGED[sqlstate]}"
            f" (SQLSTATE {sqlstate}). Running again will not help: repair or restore it;"
            " see docs/concepts/state-database.md"
        )
    return TransientError(f"state database error ({type(orig).__name__}); run again later")


def _describe(url: str | None) -> str:
    """The SQLite file's path, or just the kind of database (a URL may carry a password)."""
    if url is None:
        return "(SYNCER_STATE_URL)"
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "(SYNCER_STATE_URL)"
    if parsed.get_backend_name() == "sqlite":
        return str(parsed.database or ":memory:")
    return f"({parsed.get_backend_name()}, SYNCER_STATE_URL)"


@contextmanager
def state_errors(url: str) -> Iterator[None]:
    """State database errors raised inside as the SyncerError they mean (see state_failure)."""
    try:
        yield
    except Exception as exc:
        if is_state_error(exc):
            raise state_failure(exc, url) from None
        raise
