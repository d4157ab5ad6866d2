"""Write-back: every finished run of a sync, its membership changes and its audit outcomes,
appended to tables in the sync's own warehouse, so analysts join them to outcomes there.

Four tables in the sync's ``writeback.schema`` (default SYNCER_WRITEBACK_SCHEMA; on SQLite,
which has no schemas, in the warehouse file itself), created on first use:

- ``syncer_runs``: one row per run, as the state database's ``syncer_runs`` has it.
- ``syncer_membership``: the slowly-changing membership table mirrored, one row per stay;
  the rows a run touched (entered or exited by it) replace their earlier version, by id.
- ``syncer_membership_events``: one row per entry (``enter``) or exit (``exit``) of a run.
- ``syncer_audit``: the run's audit events (one per record sent, with its outcome).

Idempotent: everything for one run is written in one warehouse transaction (small runs
share one, see ``_groups``) that first deletes what that run wrote before (by run id;
membership rows by id), so a run written twice is there once. A run's ``syncer_runs`` row
is in that transaction too, so when it is absent nothing else of the run is there and the
deletes are skipped. Only after the commit does the state database note the run in
``syncer_writeback``: a crash in between writes it again next time, which changes nothing.

Pending = the sync's finished runs without a ``syncer_writeback`` row, oldest first; each
call writes them all, so a failed write-back (warehouse down, a grant missing) is retried by
the next run, and turning write-back on for a sync with a history writes that history.
A failure never touches the sync's state or its run: it comes back as ``Report.error``.

Rows are read from the state database in pages and loaded in bulk: COPY on PostgreSQL,
newline-delimited JSON files read by ``read_json`` on DuckDB (its ``executemany`` is a
round trip per row), ``executemany`` on SQLite. See docs/operations/writeback.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, exists, make_url, select, text
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.pool import NullPool

from syncer.dist import missing_driver
from syncer.enums import RunStatus
from syncer.errors import ConfigError, where
from syncer.log import get_logger
from syncer.mapping import SyncDefinition
from syncer.settings import Settings
from syncer.state import runs_table, utcnow, writeback_table, writing

log = get_logger("syncer.writeback")

#: State rows read, and rows loaded, per round trip.
PAGE = 10_000

RUNS, MEMBERSHIP, EVENTS, AUDIT = (
    "syncer_runs",
    "syncer_membership",
    "syncer_membership_events",
    "syncer_audit",
)
TABLES = (RUNS, MEMBERSHIP, EVENTS, AUDIT)

Columns = tuple[tuple[str, str], ...]
#: (name, kind) per table; kinds map to each dialect's types in ``_TYPES``.
COLUMNS: dict[str, Columns] = {
    RUNS: (
        ("run_id", "text"),
        ("sync", "text"),
        ("status", "text"),
        ("trigger", "text"),
        ("mode", "text"),
        ("full_resync", "int"),
        ("started_at", "ts"),
        ("finished_at", "ts"),
        ("source_rows", "int"),
        ("added", "int"),
        ("removed", "int"),
        ("updated", "int"),
        ("unchanged", "int"),
        ("rejected", "int"),
        ("invalid", "int"),
        ("failed", "int"),
        ("pending", "int"),
        ("message", "text"),
        ("stats", "text"),
        ("written_at", "ts"),
    ),
    MEMBERSHIP: (
        ("id", "int"),
        ("sync", "text"),
        ("member_key", "text"),
        ("key", "text"),
        ("phase", "int"),
        ("grp", "text"),
        ("entered_at", "ts"),
        ("entered_run", "text"),
        ("exited_at", "ts"),
        ("exited_run", "text"),
    ),
    EVENTS: (
        ("run_id", "text"),
        ("sync", "text"),
        ("membership_id", "int"),
        ("member_key", "text"),
        ("key", "text"),
        ("phase", "int"),
        ("grp", "text"),
        ("event", "text"),
        ("occurred_at", "ts"),
    ),
    AUDIT: (
        ("run_id", "text"),
        ("sync", "text"),
        ("event_id", "int"),
        ("key", "text"),
        ("operation", "text"),
        ("outcome", "text"),
        ("reason", "text"),
        ("occurred_at", "ts"),
    ),
}
#: Primary keys (SQLite and PostgreSQL; DuckDB gets none: its constraints make bulk loads
#: slow, and every write deletes before it inserts anyway).
_KEYS = {RUNS: "run_id", MEMBERSHIP: "id"}
_RUN_INDEXED = (EVENTS, AUDIT)

_TYPES = {
    "sqlite": {"text": "TEXT", "int": "INTEGER", "ts": "TIMESTAMP"},
    "duckdb": {"text": "VARCHAR", "int": "BIGINT", "ts": "TIMESTAMPTZ"},
    "postgresql": {"text": "TEXT", "int": "BIGINT", "ts": "TIMESTAMPTZ"},
}

_RUN_FIELDS = tuple(name for name, _ in COLUMNS[RUNS] if name not in ("run_id", "written_at"))


def enabled(settings: Settings, definition: SyncDefinition) -> bool:
    """On when the sync's ``writeback:`` block says so, else when SYNCER_WRITEBACK is true."""
    block = definition.writeback
    return block.enabled if block is not None else settings.writeback


def schema_of(settings: Settings, definition: SyncDefinition) -> str:
    block = definition.writeback
    return (block.schema_ if block is not None else None) or settings.writeback_schema


@dataclass(slots=True)
class Report:
    """What one write-back did; ``error`` says why it stopped (nothing is raised)."""

    sync: str
    runs: int = 0
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    left: int = 0  # pending runs not written (a failure or a stop came first)
    seconds: float = 0.0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "sync": self.sync,
            "status": "failed" if self.error else "ok",
            "runs_written": self.runs,
            "runs_left": self.left,
            "rows": dict(self.rows),
            "duration_s": round(self.seconds, 3),
            "error": self.error,
        }


class WritebackError(Exception):
    """A write-back that cannot go on; the message is fit for users (no keys, no URLs)."""


def after_run(
    settings: Settings,
    state: Engine,
    definition: SyncDefinition,
    warnings: list[str],
    stop: Callable[[], bool] = lambda: False,
) -> Report | None:
    """The engine's hook, still holding the sync's lease: write pending runs back if the
    sync asks for it; a failure becomes one line in ``warnings``, never an exception."""
    if not enabled(settings, definition):
        return None
    report = write_pending(settings, state, definition, stop=stop)
    if report.error is not None:
        warnings.append(
            f"write-back to the warehouse failed: {report.error}; the run itself is recorded,"
            " and write-back is tried again after the next run (or `syncer writeback`)"
        )
    return report


def write_pending(
    settings: Settings,
    state: Engine,
    definition: SyncDefinition,
    *,
    stop: Callable[[], bool] = lambda: False,
) -> Report:
    """Write every pending run of the sync, oldest first: each run in one transaction,
    small runs several to a transaction (see ``_groups``)."""
    name = definition.name
    report = Report(name)
    started = time.monotonic()
    step = "read the state database"
    schema = schema_of(settings, definition)
    url: str | None = None
    try:
        pending = _pending_runs(state, name)
        report.left = len(pending)
        if pending and not stop():
            step = "connect"
            url = settings.warehouse(definition.source.warehouse)
            with _open(url, schema) as target:
                step = "prepare"
                target.prepare()
                for group in _groups(pending):
                    if stop():
                        break
                    step = "write"
                    counts = target.write_runs(group, state)
                    step = "mark as written in the state database"
                    _mark_written(state, name, [run["id"] for run in group])
                    report.runs += len(group)
                    report.left -= len(group)
                    for table, n in counts.items():
                        report.rows[table] += n
    except Exception as exc:  # never the run's problem: reported, retried next run
        report.error = _reason(exc, step, schema, url)
        log.warning(
            "writeback.failed",
            sync=name,
            step=step,
            error=type(exc).__name__,
            reason=report.error,
            runs_written=report.runs,
            runs_left=report.left,
        )
    report.seconds = time.monotonic() - started
    if report.runs:
        log.info(
            "writeback.written",
            sync=name,
            runs=report.runs,
            duration_s=round(report.seconds, 3),
            **report.rows,
        )
    return report


# -- the state database side ---------------------------------------------------------------


def _pending_runs(state: Engine, sync: str) -> list[dict[str, Any]]:
    r, w = runs_table, writeback_table
    columns = [r.c.id, *(r.c[name] for name in _RUN_FIELDS)]
    query = (
        select(*columns)
        .where(
            r.c.sync == sync,
            r.c.status != RunStatus.RUNNING,
            ~exists().where(w.c.sync == r.c.sync, w.c.run_id == r.c.id),
        )
        .order_by(r.c.started_at, r.c.id)
    )
    with state.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


#: Most runs, and most of their recorded changes, written in one warehouse transaction: a
#: commit costs a flush to disk, which dominated the catch-up of many small runs (turning
#: write-back on for a sync with a history); a big run still has a transaction of its own.
GROUP_RUNS = 100
GROUP_CHANGES = 50_000
_CHANGES = ("added", "removed", "updated", "rejected", "invalid", "failed", "pending")


def _groups(runs: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Consecutive runs, oldest first, in groups of at most GROUP_RUNS runs and (unless one
    run alone is bigger) GROUP_CHANGES changes by their counters."""
    group: list[dict[str, Any]] = []
    changes = 0
    for run in runs:
        size = sum(int(run.get(name) or 0) for name in _CHANGES)
        if group and (len(group) >= GROUP_RUNS or changes + size > GROUP_CHANGES):
            yield group
            group, changes = [], 0
        group.append(run)
        changes += size
    if group:
        yield group


def _mark_written(state: Engine, sync: str, run_ids: list[str]) -> None:
    w = writeback_table
    now = utcnow()
    with state.connect() as conn, writing(conn):
        conn.execute(w.delete().where(w.c.sync == sync, w.c.run_id.in_(run_ids)))
        conn.execute(w.insert(), [{"sync": sync, "run_id": r, "written_at": now} for r in run_ids])


_MEMBERSHIP_SQL = (
    "SELECT id, sync, member_key, key, phase, grp, {entered_at}, entered_run, {exited_at},"
    " exited_run FROM syncer_membership WHERE sync = :sync AND {where}"
)
_TOUCHED = (
    "entered_run = :run",
    # A stay entered and left by the same run is read once, with the first.
    "exited_run = :run AND (entered_run IS NULL OR entered_run <> :run)",
)
_AUDIT_SQL = (
    "SELECT :run, :sync, id, key, operation, outcome, reason, {at} FROM syncer_events"
    " WHERE run_id = :run"
)


def _text_stamp(column: str, dialect: str) -> str:
    """SQL for a stored timestamp as ``YYYY-MM-DD HH:MM:SS.ffffff`` UTC text: what SQLite
    state holds already (SQLAlchemy's format), and PostgreSQL formats, so rows go on to the
    warehouse as the driver returns them, with no Python work per row."""
    if dialect == "postgresql":
        return f"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"
    return column


def _pages(state: Engine, sql: str, params: dict[str, Any]) -> Iterator[list[tuple[Any, ...]]]:
    """Rows of ``sql`` in pages of PAGE, streamed: memory stays flat whatever the run's size."""
    with state.connect() as conn:
        result = conn.execution_options(stream_results=True).execute(text(sql), params)
        if conn.dialect.name == "sqlite":
            # The driver's own tuples: SQLite steps lazily, nothing is buffered ahead (as in
            # syncer.warehouse.stream), and a SQLAlchemy Row per row was a third of the time.
            cursor = result.cursor
            for page in iter(lambda: cursor.fetchmany(PAGE), []):
                yield list(page)
            return
        # Result.yield_per, not the execution option alone (one row a partition on SQLite).
        for part in result.yield_per(PAGE).partitions():
            yield [tuple(row) for row in part]


def _membership_pages(state: Engine, sync: str, run_id: str) -> Iterator[list[tuple[Any, ...]]]:
    dialect = state.dialect.name
    for touched in _TOUCHED:
        sql = _MEMBERSHIP_SQL.format(
            where=touched,
            entered_at=_text_stamp("entered_at", dialect),
            exited_at=_text_stamp("exited_at", dialect),
        )
        yield from _pages(state, sql, {"sync": sync, "run": run_id})


def _events_of(run_id: str, page: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The entries and exits a run made, from the membership rows it touched."""
    events = []
    for (
        mid,
        sync,
        member_key,
        key,
        phase,
        grp,
        entered_at,
        entered_run,
        exited_at,
        exited_run,
    ) in page:
        if entered_run == run_id:
            events.append((run_id, sync, mid, member_key, key, phase, grp, "enter", entered_at))
        if exited_run == run_id:
            events.append((run_id, sync, mid, member_key, key, phase, grp, "exit", exited_at))
    return events


def _audit_pages(state: Engine, sync: str, run_id: str) -> Iterator[list[tuple[Any, ...]]]:
    sql = _AUDIT_SQL.format(at=_text_stamp("at", state.dialect.name))
    yield from _pages(state, sql, {"run": run_id, "sync": sync})


def _utc(value: Any) -> str | None:
    """A stored timestamp as ``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC. SQLite state already
    holds that text (SQLAlchemy's format, UTC), passed on as it is; PostgreSQL gives aware
    datetimes."""
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    return str(value.strftime("%Y-%m-%d %H:%M:%S.%f"))


def _run_row(run: dict[str, Any]) -> tuple[Any, ...]:
    values = [run["id"]]
    for name, kind in COLUMNS[RUNS][1:-1]:
        value = run[name]
        values.append(_utc(value) if kind == "ts" else value)
    values.append(_utc(utcnow()))
    return tuple(values)


# -- the warehouse side ----------------------------------------------------------------------


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _Target:
    """One warehouse connection (the driver's own: bulk loads need it), per dialect."""

    dialect = ""
    mark = "?"

    def __init__(self, raw: Any, schema: str | None, url: str) -> None:
        self.raw = raw
        self.db = raw.driver_connection
        self.schema = schema
        self.url = url

    # helpers

    def name(self, table: str) -> str:
        return f"{_quote(self.schema)}.{_quote(table)}" if self.schema else _quote(table)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        cursor = self.db.cursor()
        try:
            cursor.execute(sql, tuple(params))
            return cursor.fetchall() if cursor.description else None
        finally:
            cursor.close()

    def columns(self, table: str) -> str:
        return ", ".join(_quote(name) for name, _ in COLUMNS[table])

    def placeholders(self, table: str) -> str:
        return ", ".join([self.mark] * len(COLUMNS[table]))

    def ddl(self, table: str) -> list[str]:
        types = _TYPES[self.dialect]
        key = _KEYS.get(table) if self.dialect != "duckdb" else None
        body = ", ".join(
            f"{_quote(n)} {types[k]}" + (" NOT NULL PRIMARY KEY" if n == key else "")
            for n, k in COLUMNS[table]
        )
        statements = [f"CREATE TABLE IF NOT EXISTS {self.name(table)} ({body})"]
        if table in _RUN_INDEXED and self.dialect != "duckdb":
            index = _quote(f"{table}_run")
            on = f"{self.name(table)} ({_quote('run_id')})"
            statements.append(f"CREATE INDEX IF NOT EXISTS {index} ON {on}")
        return statements

    # steps

    def begin(self) -> None:
        pass

    def close(self) -> None:
        pass

    def commit(self) -> None:
        self.db.commit()

    def rollback(self) -> None:
        self.db.rollback()

    def has_table(self, table: str) -> bool:
        raise NotImplementedError

    def has_schema(self) -> bool:
        return True

    def create_schema(self) -> None:
        raise NotImplementedError

    def prepare(self) -> None:
        """The schema and the tables, created where missing (each only when missing, so a
        user granted INSERT/DELETE/SELECT on tables an admin created needs nothing more)."""
        self.begin()
        creating = "tables"
        try:
            if self.has_table("syncer_meta"):
                where = f"schema {self.schema!r}" if self.schema else "the warehouse file"
                raise WritebackError(
                    f"{where} holds a syncer state database (syncer_meta): the write-back"
                    " tables would collide with its own; point writeback.schema elsewhere"
                )
            if self.schema and not self.has_schema():
                creating = "schema"
                self.create_schema()
                creating = "tables"
            for table in TABLES:
                if not self.has_table(table):
                    for statement in self.ddl(table):
                        self.execute(statement)
            self.commit()
        except BaseException as exc:
            self.rollback()
            if _refused(exc):
                raise WritebackError(self.grant_needed(creating)) from None
            raise

    def grant_needed(self, creating: str) -> str:
        """Which grant creating the schema or the tables needs (PostgreSQL's words)."""
        user, database = _who(self.url)
        schema = self.schema
        if creating == "schema":
            return (
                f"no right to create schema {schema!r}: GRANT CREATE ON DATABASE {database}"
                f" TO {user}, or create the schema yourself and GRANT USAGE, CREATE ON SCHEMA"
                f" {schema} TO {user}"
            )
        return (
            f"no right to create the write-back tables in schema {schema!r}: GRANT USAGE,"
            f" CREATE ON SCHEMA {schema} TO {user} (or create them: docs/operations/writeback.md)"
        )

    def row(self, table: str, row: tuple[Any, ...]) -> tuple[Any, ...]:
        """A row as bound: timestamps are UTC text without an offset (see ``_text_stamp``),
        which SQLite keeps as it is and PostgreSQL reads in the session's TimeZone, UTC."""
        return row

    def write_runs(self, runs: list[dict[str, Any]], state: Engine) -> dict[str, int]:
        """Runs in one transaction: each run's earlier rows out, its rows in."""
        counts = dict.fromkeys(TABLES, 0)
        self.begin()
        try:
            for run in runs:
                self.write_run(run, state, counts)
            self.commit()
        except BaseException:
            self.rollback()
            raise
        return counts

    def write_run(self, run: dict[str, Any], state: Engine, counts: dict[str, int]) -> None:
        """One run, inside the caller's transaction; adds what it wrote to ``counts``."""
        run_id, sync = run["id"], run["sync"]
        seen = self.execute(
            f"SELECT count(*) FROM {self.name(RUNS)} WHERE run_id = {self.mark}", [run_id]
        )[0][0]
        if seen:
            for table in (RUNS, EVENTS, AUDIT):
                self.execute(f"DELETE FROM {self.name(table)} WHERE run_id = {self.mark}", [run_id])
        # The run's row first: on PostgreSQL its primary key makes a second writer of
        # the same run wait, then fail, instead of writing it twice.
        self.execute(
            f"INSERT INTO {self.name(RUNS)} ({self.columns(RUNS)})"
            f" VALUES ({self.placeholders(RUNS)})",
            self.row(RUNS, _run_row(run)),
        )
        members, events = self.load_membership(run_id, sync, _membership_pages(state, sync, run_id))
        counts[RUNS] += 1
        counts[MEMBERSHIP] += members
        counts[EVENTS] += events
        counts[AUDIT] += self.load(AUDIT, _audit_pages(state, sync, run_id))

    def load_membership(
        self, run_id: str, sync: str, pages: Iterator[list[tuple[Any, ...]]]
    ) -> tuple[int, int]:
        """Replace the touched membership rows by id, and add the run's events."""
        rows = events = 0
        for page in pages:
            self.delete_ids([row[0] for row in page])
            rows += self.load(MEMBERSHIP, iter([page]))
            events += self.load(EVENTS, iter([_events_of(run_id, page)]))
        return rows, events

    def delete_ids(self, ids: list[int]) -> None:
        raise NotImplementedError

    def load(self, table: str, pages: Iterator[list[tuple[Any, ...]]]) -> int:
        raise NotImplementedError


class _SQLite(_Target):
    dialect = "sqlite"

    def __init__(self, raw: Any, schema: str | None, url: str) -> None:
        super().__init__(raw, None, url)  # no schemas: the tables go in the file itself
        self.db.isolation_level = None  # transactions are ours (BEGIN IMMEDIATE)
        self.execute("PRAGMA busy_timeout = 10000")

    def begin(self) -> None:
        self.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        if self.db.in_transaction:
            self.execute("ROLLBACK")

    def has_table(self, table: str) -> bool:
        found = self.execute(
            "SELECT 1 FROM sqlite_master WHERE type IN ('table', 'view') AND name = ?", [table]
        )
        return bool(found)

    def delete_ids(self, ids: list[int]) -> None:
        if ids:
            self.execute(
                f"DELETE FROM {self.name(MEMBERSHIP)} WHERE id IN (SELECT value FROM json_each(?))",
                [orjson.dumps(ids).decode()],
            )

    def load(self, table: str, pages: Iterator[list[tuple[Any, ...]]]) -> int:
        sql = (
            f"INSERT INTO {self.name(table)} ({self.columns(table)})"
            f" VALUES ({self.placeholders(table)})"
        )
        n = 0
        for page in pages:
            if page:
                self.db.executemany(sql, page)
                n += len(page)
        return n


class _Postgres(_Target):
    dialect = "postgresql"
    mark = "%s"

    def __init__(self, raw: Any, schema: str | None, url: str) -> None:
        super().__init__(raw, schema, url)
        # Timestamps come as UTC text: read them as UTC. This connection is ours alone.
        self.execute("SET TIME ZONE 'UTC'")
        self.db.commit()

    def has_schema(self) -> bool:
        return bool(self.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [self.schema]))

    def create_schema(self) -> None:
        self.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(self.schema or '')}")

    def has_table(self, table: str) -> bool:
        found = self.execute(
            "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = %s",
            [self.schema, table],
        )
        return bool(found)

    def delete_ids(self, ids: list[int]) -> None:
        if ids:
            self.execute(f"DELETE FROM {self.name(MEMBERSHIP)} WHERE id = ANY(%s)", [ids])

    def load(self, table: str, pages: Iterator[list[tuple[Any, ...]]]) -> int:
        n = 0
        cursor = self.db.cursor()
        try:
            for page in pages:
                if not page:
                    continue
                with cursor.copy(
                    f"COPY {self.name(table)} ({self.columns(table)}) FROM STDIN"
                ) as copy:
                    for row in page:
                        copy.write_row(row)
                n += len(page)
        finally:
            cursor.close()
        return n


class _DuckDB(_Target):
    dialect = "duckdb"
    _tmp: str | None = None

    @contextmanager
    def scratch(self, table: str) -> Iterator[Path]:
        """A file for ``table``'s rows, removed once loaded, in a directory only this user
        can enter (they hold keys), made once per write-back: creating and removing one per
        run cost more than the run's statements."""
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="syncer-writeback-")
        path = Path(self._tmp) / f"{table}.jsonl"
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def row(self, table: str, row: tuple[Any, ...]) -> tuple[Any, ...]:
        # As UTC whatever the TimeZone: SET would change it for every connection of the
        # process to this database (the sync's own warehouse reads among them).
        values = list(row)
        for i, (_, kind) in enumerate(COLUMNS[table]):
            if kind == "ts" and values[i] is not None:
                values[i] += "+00:00"
        return tuple(values)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        result = self.db.execute(sql, list(params))
        return result.fetchall() if result.description else None

    def begin(self) -> None:
        self.db.begin()

    def has_schema(self) -> bool:
        found = self.execute(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = ?"
            " AND catalog_name = current_database()",
            [self.schema],
        )
        return bool(found)

    def create_schema(self) -> None:
        self.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(self.schema or '')}")

    def has_table(self, table: str) -> bool:
        found = self.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = ?"
            " AND table_catalog = current_database()",
            [self.schema or "main", table],
        )
        return bool(found)

    def load_membership(
        self, run_id: str, sync: str, pages: Iterator[list[tuple[Any, ...]]]
    ) -> tuple[int, int]:
        """The touched rows to a file, then three statements: their old versions out, the
        new ones in, and the run's entries and exits derived from them in the table (no
        temporary table: DuckDB would hold it all in memory)."""
        target = self.name(MEMBERSHIP)
        with self.scratch("membership") as scratch:
            path = str(scratch)
            rows = _write_jsonl(scratch, MEMBERSHIP, pages)
            if not rows:
                return 0, 0
            source = _read(MEMBERSHIP)
            self.execute(f"DELETE FROM {target} WHERE id IN (SELECT id FROM {source})", [path])
            self.execute(
                f"INSERT INTO {target} ({self.columns(MEMBERSHIP)}) SELECT * FROM {source}",
                [path],
            )
            # From the file, not the table: DuckDB's tables have no index, and a scan of the
            # whole history per run would grow with it.
            common = "?, sync, id, member_key, key, phase, grp"
            inserted = self.execute(
                f"INSERT INTO {self.name(EVENTS)} ({self.columns(EVENTS)})"
                f" SELECT {common}, 'enter', entered_at FROM {source} WHERE entered_run = ?"
                f" UNION ALL SELECT {common}, 'exit', exited_at FROM {source}"
                " WHERE exited_run = ?",
                [run_id, path, run_id, run_id, path, run_id],
            )
        return rows, int(inserted[0][0]) if inserted else 0

    def load(self, table: str, pages: Iterator[list[tuple[Any, ...]]]) -> int:
        with self.scratch(table) as path:
            n = _write_jsonl(path, table, pages)
            if n:
                self.execute(
                    f"INSERT INTO {self.name(table)} ({self.columns(table)})"
                    f" SELECT * FROM {_read(table)}",
                    [str(path)],
                )
        return n


def _read(table: str) -> str:
    """DuckDB's reader of a JSONL file of ``table``'s rows (the path is parameter 1), as a
    subquery: timestamps are read as UTC text and made TIMESTAMPTZ by ``timezone('UTC')``,
    whatever the session's TimeZone."""
    types = dict(_TYPES["duckdb"], ts="TIMESTAMP")
    columns = ", ".join(f"'{n}': '{types[k]}'" for n, k in COLUMNS[table])
    select = ", ".join(
        f"timezone('UTC', {_quote(n)}) AS {_quote(n)}" if k == "ts" else _quote(n)
        for n, k in COLUMNS[table]
    )
    return (
        f"(SELECT {select} FROM read_json(?, format = 'newline_delimited',"
        f" columns = {{{columns}}}))"
    )


def _write_jsonl(path: Path, table: str, pages: Iterator[list[tuple[Any, ...]]]) -> int:
    """Rows as JSON objects, one a line, in a file only this process can read (they hold
    keys)."""
    names = [n for n, _ in COLUMNS[table]]
    n = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        for page in pages:
            out.write(
                b"".join(orjson.dumps(dict(zip(names, row, strict=True))) + b"\n" for row in page)
            )
            n += len(page)
    return n


_TARGETS: dict[str, type[_Target]] = {"sqlite": _SQLite, "postgresql": _Postgres, "duckdb": _DuckDB}


@contextmanager
def _open(url: str, schema: str) -> Iterator[_Target]:
    """A connection of its own to the warehouse (not the read-only one syncs read with)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError("warehouse URL is not a valid SQLAlchemy URL") from None
    backend = parsed.get_backend_name()
    cls = _TARGETS.get(backend)
    if cls is None:
        raise WritebackError(
            f"write-back supports SQLite, DuckDB and PostgreSQL warehouses, not {backend}"
        )
    database = parsed.database or ""
    local = backend in ("sqlite", "duckdb") and database not in ("", ":memory:")
    if local and not Path(database).exists():
        raise ConfigError(f"warehouse database file {database} does not exist")
    try:
        engine = create_engine(parsed, poolclass=NullPool)
    except (NoSuchModuleError, ImportError) as exc:
        raise missing_driver(parsed, exc, "warehouse URL") from None
    try:
        raw = engine.raw_connection()
        target = cls(raw, schema, url)
        try:
            yield target
        finally:
            target.close()
            with contextlib.suppress(Exception):  # closing a broken connection
                raw.close()
    finally:
        engine.dispose()


# -- what a failure means --------------------------------------------------------------------


def _refused(exc: BaseException) -> bool:
    """PostgreSQL's insufficient_privilege (SQLSTATE 42501)."""
    orig = getattr(exc, "orig", None) or exc
    return getattr(orig, "sqlstate", None) == "42501"


def _reason(exc: BaseException, step: str, schema: str, url: str | None) -> str:
    """Why a write-back stopped, for a warning line and the log: the missing grant when the
    warehouse refused one, else the driver's first line without the values it quotes."""
    from syncer.warehouse import _db_text

    if isinstance(exc, (WritebackError, ConfigError)):
        return str(exc)
    orig = getattr(exc, "orig", None) or exc
    if _refused(exc):
        user, _ = _who(url)
        return (
            f"no right to write the write-back tables in schema {schema!r}: GRANT USAGE ON"
            f" SCHEMA {schema} TO {user}; GRANT SELECT, INSERT, DELETE ON ALL TABLES IN"
            f" SCHEMA {schema} TO {user}"
        )
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF == 8:
        return "the warehouse file is read-only for this process (write-back needs to write it)"
    if type(orig).__module__.startswith(("sqlite3", "psycopg", "_duckdb", "duckdb")) or hasattr(
        exc, "orig"
    ):
        known = " ".join([schema, *TABLES])
        detail = _db_text(str(orig), known) or type(orig).__name__
        if step == "connect":
            return f"cannot connect to the warehouse: {detail}"
        return f"{step} failed: {detail}"
    if isinstance(exc, OSError):  # a temporary file (DuckDB's bulk load): disk full...
        return f"{step} failed: {exc.strerror or type(exc).__name__}"
    return f"internal error ({where(exc)})"


def _who(url: str | None) -> tuple[str, str]:
    """The warehouse user and database, for a GRANT to copy (never the password)."""
    try:
        parsed = make_url(url or "")
    except ArgumentError:
        return "<user>", "<database>"
    return parsed.username or "<user>", parsed.database or "<database>"
