"""Streaming reads from the warehouse: never the whole result in memory.

Errors are sorted by what the user should do: a query the database refuses is a configuration
error (fix the mapping); a database that cannot be reached or drops mid-stream is transient.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from syncer.errors import ConfigError, TransientError

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
        return create_engine(parsed, pool_pre_ping=True)
    except (NoSuchModuleError, ImportError) as exc:
        raise ConfigError(f"warehouse driver not installed: {exc}") from None


def _clean(query: str) -> str:
    return query.strip().rstrip(";").strip()


def _short(exc: DBAPIError) -> str:
    # The driver's own message, without SQLAlchemy's echo of the statement and parameters.
    return str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__


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
    ``fresh`` uses an engine of its own instead of the process's shared one; ``on_connect``
    is called once the connection is open, before the query runs.
    """
    try:
        engine = new_warehouse_engine(url) if fresh else warehouse_engine(url)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: source.warehouse: {exc}") from None
    sql = _clean(query)
    if limit is not None:
        sql = f"SELECT * FROM ({sql}) AS syncer_probe LIMIT {int(limit)}"
    try:
        conn = engine.connect()
    except DBAPIError as exc:
        raise TransientError(f"{origin}: cannot connect to the warehouse: {_short(exc)}") from None
    try:
        if on_connect is not None:
            on_connect()
        try:
            # stream_results + Result.yield_per: buffered in fixed partitions on every dialect
            # (execution_options(yield_per=) alone hands SQLite rows back one at a time).
            result = conn.execution_options(stream_results=True).execute(text(sql))
            result = result.yield_per(batch_size)
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise TransientError(
                    f"{origin}: warehouse connection lost: {_short(exc)}"
                ) from None
            raise ConfigError(f"{origin}: source.query failed: {_short(exc)}") from None
        columns = list(result.keys())
        dbapi_error: Any = getattr(conn.dialect, "loaded_dbapi", None)
        dbapi_error = getattr(dbapi_error, "Error", None) or DBAPIError

        def partitions() -> Iterator[Sequence[Sequence[Any]]]:
            try:
                if conn.dialect.name in _PLAIN_CURSOR_DIALECTS:
                    # The driver's own tuples, without a SQLAlchemy Row per row: half the cost
                    # of reading. Safe only where SQLAlchemy buffers nothing ahead of us.
                    cursor = result.cursor
                    while part := cursor.fetchmany(batch_size):
                        yield part
                else:
                    yield from result.partitions()
            except (SQLAlchemyError, dbapi_error) as exc:
                if isinstance(exc, DBAPIError):
                    detail = _short(exc)
                elif isinstance(exc, SQLAlchemyError):
                    detail = str(exc)
                else:
                    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise TransientError(
                    f"{origin}: reading from the warehouse failed mid-stream: {detail}"
                ) from None

        with result:
            yield columns, partitions()
    finally:
        conn.close()
