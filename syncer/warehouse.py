"""Streaming reads from the warehouse: never the whole result in memory.

Errors are sorted by what the user should do: a query the database refuses, or that fails on
a value while it is read (a cast), is a configuration error (fix the mapping); a database that
cannot be reached or drops mid-stream is transient. The database's message is passed on
without the values it quotes (see ``_db_text``): a failing cast must not put a customer's
e-mail address on stderr or into the runs table.

The connection only reads where the database allows it: SQLite connections are
``query_only`` and PostgreSQL transactions ``READ ONLY``. Together with the mapping's own
check (``syncer.mapping.normalize_query``), a source query cannot change the warehouse.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    NoSuchModuleError,
    ResourceClosedError,
    SQLAlchemyError,
)

from syncer.dist import missing_driver
from syncer.engines import track
from syncer.errors import ConfigError, TransientError
from syncer.http import scrub
from syncer.normalize import Infinite

# Dialects whose streamed result is the driver's plain cursor with nothing read ahead (SQLite
# steps lazily; duckdb hands out its own chunks). PostgreSQL's server-side cursor is buffered
# by SQLAlchemy, so it is read through ``Result.partitions``.
_PLAIN_CURSOR_DIALECTS = frozenset({"sqlite", "duckdb"})


@functools.cache
def warehouse_engine(url: str) -> Engine:
    """One engine per URL and process; SQLite files must exist (no silent empty database)."""
    return new_warehouse_engine(url)


def new_warehouse_engine(url: str) -> Engine:
    """A new engine for ``url`` (a forked reader must not share its parent's pool)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError("warehouse URL is not a valid SQLAlchemy URL") from None
    if parsed.get_backend_name() in ("sqlite", "duckdb") and parsed.database not in (
        None,
        "",
        ":memory:",
    ):
        path = Path(parsed.database or "")
        if not path.exists():
            raise ConfigError(f"warehouse database file {path} does not exist")
    try:
        engine = track(create_engine(parsed, pool_pre_ping=True))
    except (NoSuchModuleError, ImportError) as exc:
        raise missing_driver(parsed, exc, "warehouse URL") from None
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_query_only)
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() == "psycopg":
        event.listen(engine, "connect", _postgres_infinite_times)
    return engine


def _postgres_infinite_times(dbapi_connection: Any, _record: Any) -> None:
    """Read ``'infinity'`` and ``'-infinity'`` dates and timestamps as
    :class:`~syncer.normalize.Infinite`: psycopg's own loaders raise "date too large" for them,
    which would fail the whole read for one row. The normaliser makes such a row invalid with
    a reason (or sends the text, in a text field)."""
    from psycopg.types.datetime import DateLoader, TimestampLoader, TimestamptzLoader

    for name, base in (
        ("date", DateLoader),
        ("timestamp", TimestampLoader),
        ("timestamptz", TimestamptzLoader),
    ):
        dbapi_connection.adapters.register_loader(name, _infinity_aware(base))


@functools.cache
def _infinity_aware(base: type[Any]) -> type[Any]:
    class Loader(base):  # type: ignore[misc]
        def load(self, data: Any) -> Any:
            raw = bytes(data)
            if raw in (b"infinity", b"-infinity"):
                return Infinite(raw.startswith(b"-"))
            return super().load(data)

    Loader.__name__ = f"Infinite{base.__name__}"
    return Loader


def _sqlite_query_only(dbapi_connection: Any, _record: Any) -> None:
    """Refuse every write on this connection (Python's sqlite3 runs DDL outside a transaction,
    so closing without a commit would not undo a DROP TABLE)."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA query_only = ON")
    finally:
        cursor.close()


def _clean(query: str) -> str:
    return query.strip().rstrip(";").strip()


def _short(exc: BaseException, query: str | None = None) -> str:
    """The driver's own message, without SQLAlchemy's echo of the statement and parameters
    and without the values it quotes (see ``_db_text``)."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if orig is None:
        return type(exc).__name__
    return _db_text(str(orig), query) or type(orig).__name__


# A quoted span ends at a quote followed by the end or by a delimiter, so a value holding a
# quote (O'Brien) is still taken as one span.
_QUOTE_END = frozenset(" \t,.;:)]}!?")
_CLOSED = re.compile(r"[^\w\s]{0,3}")


def _db_text(message: str, query: str | None) -> str:
    """The first line of a database message, fit for stderr and the runs table.

    Databases quote the value a cast failed on (PostgreSQL ``invalid input syntax for type
    integer: "ann@example.com"``, DuckDB ``Could not convert string 'ann@example.com'``,
    SQLite ``JSON path error near '...'``), and also identifiers and tokens of the query
    (``column "emial" does not exist``). With the query known, a quoted span is kept only if
    the query contains it (an identifier, a token near a syntax error) or it is a bit of
    punctuation; any other becomes ``<value>``. Then e-mail addresses and phone numbers left
    unquoted are masked as in HTTP error bodies (``syncer.http.scrub``).
    """
    lines = message.strip().splitlines()
    text = lines[0] if lines else ""
    if query is not None:
        text = _unquote(text, query.lower())
    return scrub(text, limit=300)


def _unquote(text: str, query: str) -> str:
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char not in "'\"":
            out.append(char)
            i += 1
            continue
        close = i + 1
        while (close := text.find(char, close)) >= 0:
            if close + 1 == n or text[close + 1] in _QUOTE_END:
                break
            close += 1
        if close < 0:  # no end: what follows may be (part of) a value
            out.append("<value>")
            break
        inner = text[i + 1 : close]
        shown = inner.lower() in query or _CLOSED.fullmatch(inner) is not None
        out.append(text[i : close + 1] if shown else "<value>")
        i = close + 1
    return "".join(out)


def _query_at_fault(exc: BaseException, dbapi: Any) -> bool:
    """Whether an error raised while rows are read is the query's (a cast failing on a value)
    rather than the connection's: retrying the run would only fail the same way."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return False
    faults = tuple(
        cls
        for cls in (getattr(dbapi, "DataError", None), getattr(dbapi, "ProgrammingError", None))
        if isinstance(cls, type)
    )
    if faults and isinstance(orig, faults):
        return True
    # sqlite3 raises OperationalError for nearly everything; SQLITE_ERROR (1) is the SQL's.
    code = getattr(orig, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF == 1


@contextmanager
def stream(
    url: str,
    query: str,
    batch_size: int,
    origin: str,
    limit: int | None = None,
    *,
    fresh: bool = False,
    on_connect: Callable[[], object] | None = None,
) -> Iterator[tuple[list[str], Iterator[Sequence[Sequence[Any]]]]]:
    """Run ``query`` and yield (column names, iterator of row partitions).

    ``origin`` (the mapping file) prefixes error messages so users know which query failed.
    ``limit`` stops after that many rows (``syncer check``): the query itself is run exactly
    as ``sync now`` runs it, never wrapped, so both accept and refuse the same queries.
    ``fresh`` uses an engine of its own instead of the process's shared one; ``on_connect``
    is called once the connection is open, before the query runs.
    """
    try:
        engine = new_warehouse_engine(url) if fresh else warehouse_engine(url)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: source.warehouse: {exc}") from None
    sql = _clean(query)
    if limit is not None:
        batch_size = max(1, min(batch_size, limit))
    try:
        conn = engine.connect()
    except DBAPIError as exc:
        raise TransientError(f"{origin}: cannot connect to the warehouse: {_short(exc)}") from None
    try:
        if on_connect is not None:
            on_connect()
        try:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SET TRANSACTION READ ONLY"))
            # stream_results + Result.yield_per: buffered in fixed partitions on every dialect
            # (execution_options(yield_per=) alone hands SQLite rows back one at a time).
            result = conn.execution_options(stream_results=True).execute(text(sql))
            result = result.yield_per(batch_size)
            columns = list(result.keys())
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise TransientError(
                    f"{origin}: warehouse connection lost: {_short(exc)}"
                ) from None
            raise ConfigError(f"{origin}: source.query failed: {_short(exc, sql)}") from None
        except ResourceClosedError:
            raise ConfigError(f"{origin}: source.query failed: it returns no rows") from None
        dbapi: Any = getattr(conn.dialect, "loaded_dbapi", None)
        dbapi_error = getattr(dbapi, "Error", None) or DBAPIError

        def partitions() -> Iterator[Sequence[Sequence[Any]]]:
            left = limit
            try:
                if conn.dialect.name in _PLAIN_CURSOR_DIALECTS:
                    # The driver's own tuples, without a SQLAlchemy Row per row: half the cost
                    # of reading. Safe only where SQLAlchemy buffers nothing ahead of us.
                    cursor = result.cursor
                    parts: Iterator[Sequence[Sequence[Any]]] = iter(
                        lambda: cursor.fetchmany(batch_size), []
                    )
                else:
                    parts = result.partitions()
                for part in parts:
                    if left is not None:
                        part = part[:left]
                        left -= len(part)
                    if part:
                        yield part
                    if left == 0:
                        return
            except (SQLAlchemyError, dbapi_error) as exc:
                if isinstance(exc, DBAPIError) or not isinstance(exc, SQLAlchemyError):
                    detail = _short(exc, sql)
                else:
                    detail = _db_text(str(exc), sql)
                if _query_at_fault(exc, dbapi):
                    raise ConfigError(
                        f"{origin}: source.query failed while reading rows: {detail}"
                    ) from None
                raise TransientError(
                    f"{origin}: reading from the warehouse failed mid-stream: {detail}"
                ) from None

        with result:
            yield columns, partitions()
    finally:
        conn.close()
