"""The lift report's data: a phase's members from the state database, their outcomes totalled
in the warehouse.

Members of phase P (intention to treat) are the distinct ``member_key`` of the sync's
``syncer_membership`` rows with ``grp`` treated or holdout and ``phase = P``, each with the
group and ``entered_at`` of their FIRST entry in the phase. They are uploaded, a page at a
time, into a temporary table on a connection to the sync's warehouse (``member_key, grp,
entered_at, window_end``; ``window_end = min(entered_at + window_days, as_of)``), and two
statements run there with the sync's ``measurement.outcomes`` query as a CTE:

- the totals per group: members, conversions (members with at least one outcome row with
  ``entered_at <= event_at < window_end``), the sum of member revenue and of its square;
- the daily curve per group and day since entry: first conversions and revenue that day.

Only those few numbers come back; outcome rows never leave the warehouse.

Matching keys. ``member_key`` in the history is the key as the run staged it: normalised
by ``source.key_type`` and, for destinations that take hashed keys (Meta, Google Ads,
TikTok, LinkedIn), its SHA-256 hex. The outcomes' ``member_key`` must be the same
identifier before normalisation; the SQL trims it, lower-cases it for ``key_type: email``
and hashes it for hashed-key destinations, so an outcomes query returns the plain e-mail
address (or id) as the warehouse stores it. Phone keys are compared as given (trimmed):
return them in E.164 (``+4915112345678``). ``event_at`` is a DATE (midnight UTC), a
TIMESTAMP (UTC when it has no zone) or, on SQLite, ISO 8601 text; ``revenue`` NULL counts 0.

Dialect differences (temporary table types, timestamps, day offsets, SHA-256, bulk upload)
live in ``_Dialect`` and its three instances below.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, and_, select, text
from sqlalchemy.exc import DBAPIError

from syncer.errors import ConfigError, TransientError
from syncer.holdout import HOLDOUT, TREATED
from syncer.lift import GroupTotals
from syncer.state import as_utc, experiments_table, membership_table
from syncer.warehouse import _clean, _short

if TYPE_CHECKING:
    from syncer.mapping import LoadedSync
    from syncer.settings import Settings

#: The columns ``measurement.outcomes`` must return.
OUTCOME_COLUMNS = ("member_key", "event_at", "revenue")
GROUPS = (TREATED, HOLDOUT)
TEMP_TABLE = "syncer_lift_members"
PAGE_SIZE = 50_000
_UNIX_EPOCH_JD = 2440587.5


@dataclass(frozen=True, slots=True)
class Phase:
    """A phase with membership history, and its experiments row when there is one."""

    phase: int
    holdout_percent: float | None
    salt: str | None
    started_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class PhaseData:
    """What the warehouse said about one phase."""

    phase: int
    treated: GroupTotals
    holdout: GroupTotals
    #: Day 0 .. window_days-1: cumulative conversion rate and revenue per member per group.
    curve: list[dict[str, float | None]] = field(default_factory=list)


# -- the state database ------------------------------------------------------------------


def history_phases(state: Connection, sync: str) -> list[Phase]:
    """The phases of ``sync`` that have treated or holdout members, newest first."""
    m = membership_table.c
    phases = state.execute(
        select(m.phase)
        .where(m.sync == sync, m.grp.in_(GROUPS))
        .group_by(m.phase)
        .order_by(m.phase.desc())
    ).scalars()
    e = experiments_table.c
    rows = {
        int(r.phase): r
        for r in state.execute(
            select(e.phase, e.holdout_percent, e.salt, e.started_at).where(e.sync == sync)
        )
    }
    out = []
    for phase in phases:
        row = rows.get(int(phase))
        out.append(
            Phase(
                int(phase),
                float(row.holdout_percent) if row is not None else None,
                row.salt if row is not None else None,
                as_utc(row.started_at) if row is not None and row.started_at is not None else None,
            )
        )
    return out


Member = tuple[str, str, dt.datetime, dt.datetime]


def members(
    state: Engine,
    sync: str,
    phase: int,
    window_days: int,
    as_of: dt.datetime,
    page_size: int = PAGE_SIZE,
) -> Iterator[list[Member]]:
    """Pages of (member_key, grp, entered_at, window_end): each member once, with the group
    and time of their first entry in ``phase`` before ``as_of``; streamed, never all at once."""
    m = membership_table.c
    query = (
        select(m.member_key, m.grp, m.entered_at)
        .where(and_(m.sync == sync, m.phase == phase, m.grp.in_(GROUPS), m.entered_at < as_of))
        .order_by(m.member_key, m.entered_at, m.id)
    )
    window = dt.timedelta(days=window_days)
    last: str | None = None
    page: list[Member] = []
    with state.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=page_size).execute(query)
        for key, grp, entered in result:
            if key == last:
                continue  # a later stay of the same member: the first one counts
            last = key
            start = as_utc(entered)
            page.append((key, grp, start, min(start + window, as_of)))
            if len(page) >= page_size:
                yield page
                page = []
    if page:
        yield page


# -- the warehouse -----------------------------------------------------------------------


def _sha256_hex(value: Any) -> str | None:
    return None if value is None else hashlib.sha256(str(value).encode("utf-8")).hexdigest()


def _julian(moment: dt.datetime) -> float:
    return moment.timestamp() / 86400 + _UNIX_EPOCH_JD


@dataclass(frozen=True, slots=True)
class _Dialect:
    """The few bits of SQL and upload that differ between warehouses."""

    name: str
    temp_columns: str
    #: ``{x}`` is the outcome's event_at; returns a value comparable with the temp table's.
    moment: str
    #: Whole days from ``{start}`` (temp table) to ``{t}`` (a ``moment``).
    day: str
    real: str
    sha256: str
    setup: tuple[str, ...]
    upload: Callable[[Connection, Sequence[Member]], None]


def _insert_sql() -> str:
    return f"INSERT INTO {TEMP_TABLE} (member_key, grp, entered_at, window_end) VALUES"


def _upload_sqlite(conn: Connection, rows: Sequence[Member]) -> None:
    raw: Any = conn.connection.driver_connection
    raw.executemany(
        f"{_insert_sql()} (?, ?, ?, ?)",
        [(k, g, _julian(s), _julian(e)) for k, g, s, e in rows],
    )


def _upload_duckdb(conn: Connection, rows: Sequence[Member]) -> None:
    """Registered numpy columns (times as epoch microseconds): about 2 s per million rows,
    where executemany takes minutes."""
    import numpy as np

    raw: Any = conn.connection.driver_connection
    n = len(rows)
    view = {
        "member_key": np.array([r[0] for r in rows], dtype=object),
        "grp": np.array([r[1] for r in rows], dtype=object),
        "entered_us": np.fromiter((_micros(r[2]) for r in rows), dtype=np.int64, count=n),
        "end_us": np.fromiter((_micros(r[3]) for r in rows), dtype=np.int64, count=n),
    }
    raw.register("syncer_lift_upload", view)
    try:
        raw.execute(
            f"INSERT INTO {TEMP_TABLE} SELECT member_key, grp, make_timestamp(entered_us),"
            " make_timestamp(end_us) FROM syncer_lift_upload"
        )
    finally:
        raw.unregister("syncer_lift_upload")


def _micros(moment: dt.datetime) -> int:
    """Microseconds since 1970 of an aware datetime; exact (a double holds 2**53 > 10**16)."""
    return round(moment.timestamp() * 1_000_000)


def _upload_postgres(conn: Connection, rows: Sequence[Member]) -> None:
    """COPY with psycopg 3, the one PostgreSQL driver syncer declares."""
    raw: Any = conn.connection.driver_connection
    with (
        raw.cursor() as cursor,
        cursor.copy(
            f"COPY {TEMP_TABLE} (member_key, grp, entered_at, window_end) FROM STDIN"
        ) as copy,
    ):
        for row in rows:
            copy.write_row(row)


_DIALECTS = {
    "sqlite": _Dialect(
        "sqlite",
        "member_key TEXT PRIMARY KEY, grp TEXT NOT NULL, entered_at REAL NOT NULL,"
        " window_end REAL NOT NULL",
        moment="julianday({x})",
        day="CAST({t} - {start} AS INTEGER)",
        real="REAL",
        sha256="syncer_sha256({x})",
        setup=(),
        upload=_upload_sqlite,
    ),
    "duckdb": _Dialect(
        "duckdb",
        "member_key VARCHAR, grp VARCHAR, entered_at TIMESTAMP, window_end TIMESTAMP",
        moment="CAST({x} AS TIMESTAMP)",
        day="CAST((epoch_ms({t}) - epoch_ms({start})) // 86400000 AS INTEGER)",
        real="DOUBLE",
        sha256="sha256({x})",
        setup=("SET TimeZone = 'UTC'",),
        upload=_upload_duckdb,
    ),
    "postgresql": _Dialect(
        "postgresql",
        "member_key text PRIMARY KEY, grp text NOT NULL, entered_at timestamptz NOT NULL,"
        " window_end timestamptz NOT NULL",
        moment="CAST({x} AS timestamptz)",
        day="CAST(floor(extract(epoch FROM ({t} - {start})) / 86400) AS integer)",
        real="double precision",
        sha256="encode(sha256(convert_to({x}, 'UTF8')), 'hex')",
        setup=("SET TIME ZONE 'UTC'",),
        upload=_upload_postgres,
    ),
}


def key_sql(dialect: _Dialect, key_type: str, hashed: bool, column: str = "o.member_key") -> str:
    """The outcome's key as the history stores ``member_key`` (see the module docstring)."""
    sql = f"TRIM(CAST({column} AS TEXT))"
    if key_type == "email":
        sql = f"LOWER({sql})"
    if hashed:
        sql = dialect.sha256.format(x=sql)
    return sql


def _events_cte(dialect: _Dialect, outcomes: str, key: str) -> str:
    """The outcomes query and its rows matched to members' windows, as CTEs."""
    moment = dialect.moment.format(x="o.event_at")
    day = dialect.day.format(t="ev.t", start="m.entered_at")
    return (
        f"WITH outcomes AS ({outcomes}),\n"
        f"ev AS (SELECT {key} AS k, {moment} AS t,"
        f" COALESCE(CAST(o.revenue AS {dialect.real}), 0) AS r FROM outcomes o),\n"
        f"hit AS (SELECT m.member_key, m.grp, {day} AS day, ev.r FROM ev"
        f" JOIN {TEMP_TABLE} m ON m.member_key = ev.k"
        " AND ev.t >= m.entered_at AND ev.t < m.window_end)\n"
    )


def totals_sql(dialect: _Dialect, outcomes: str, key: str) -> str:
    """ONE statement: per group, members, converters, Σ member revenue, Σ its square."""
    return (
        _events_cte(dialect, outcomes, key)
        + ", per_member AS (SELECT member_key, grp, SUM(r) AS revenue FROM hit"
        " GROUP BY member_key, grp),\n"
        f"sizes AS (SELECT grp, COUNT(*) AS members FROM {TEMP_TABLE} GROUP BY grp)\n"
        "SELECT s.grp, s.members, COUNT(p.member_key) AS conversions,"
        " COALESCE(SUM(p.revenue), 0) AS revenue,"
        " COALESCE(SUM(p.revenue * p.revenue), 0) AS revenue_sq\n"
        "FROM sizes s LEFT JOIN per_member p ON p.grp = s.grp GROUP BY s.grp, s.members"
    )


def curve_sql(dialect: _Dialect, outcomes: str, key: str) -> str:
    """Per group and day since entry: members converting for the first time, revenue."""
    return (
        _events_cte(dialect, outcomes, key)
        + "SELECT grp, day, SUM(n) AS first_conversions, SUM(r) AS revenue FROM (\n"
        "  SELECT grp, day, 0 AS n, r FROM hit\n"
        "  UNION ALL\n"
        "  SELECT grp, MIN(day) AS day, 1 AS n, 0 AS r FROM hit GROUP BY grp, member_key\n"
        ") d GROUP BY grp, day"
    )


class _Warehouse:
    """Errors of the measurement's statements, sorted like syncer.warehouse sorts them."""

    def __init__(self, origin: str, outcomes: str) -> None:
        self.origin = origin
        self.outcomes = outcomes

    def fail(self, exc: BaseException, conn: Connection | None, during: str) -> Exception:
        from syncer.warehouse import _query_at_fault, _short

        detail = _short(exc, self.outcomes)
        dbapi = getattr(conn.dialect, "loaded_dbapi", None) if conn is not None else None
        lost = isinstance(exc, DBAPIError) and exc.connection_invalidated
        if not lost and _query_at_fault(exc, dbapi):
            return ConfigError(f"{self.origin}: measurement.outcomes failed {during}: {detail}")
        return TransientError(f"{self.origin}: the warehouse failed {during}: {detail}")


def measure(
    sync: LoadedSync,
    settings: Settings,
    state: Engine,
    phase: int,
    *,
    as_of: dt.datetime,
    page_size: int = PAGE_SIZE,
) -> PhaseData:
    """Totals and curve of one phase (see the module docstring). ConfigError (78) for a
    missing ``measurement:`` block, an outcomes query that fails or lacks a column;
    TransientError (75) when the warehouse cannot be reached."""
    from syncer.warehouse import _short, new_warehouse_engine

    definition = sync.definition
    origin = str(sync.path)
    as_of = as_of.astimezone(dt.UTC)
    measurement = definition.measurement
    if measurement is None:
        raise ConfigError(
            f'{origin}: no measurement: block; add `measurement: {{outcomes: "select'
            ' member_key, event_at, revenue from ..."}}` to report lift'
        )
    try:
        engine = new_warehouse_engine(settings.warehouse(definition.source.warehouse))
    except ConfigError as exc:
        raise ConfigError(f"{origin}: source.warehouse: {exc}") from None
    dialect = _DIALECTS.get(engine.dialect.name)
    if dialect is None:
        raise ConfigError(
            f"{origin}: source.warehouse: lift reports run on SQLite, DuckDB and PostgreSQL,"
            f" not {engine.dialect.name}"
        )
    outcomes = _clean(measurement.outcomes)
    errors = _Warehouse(origin, outcomes)
    key = key_sql(dialect, definition.source.key_type, sync.connector_cls.capabilities.hashed_keys)
    try:
        try:
            conn = engine.connect()
        except DBAPIError as exc:
            raise TransientError(
                f"{origin}: cannot connect to the warehouse: {_short(exc)}"
            ) from None
        try:
            return _measure(conn, dialect, errors, state, sync, phase, key, as_of, page_size)
        finally:
            conn.close()
    finally:
        engine.dispose()


def _measure(
    conn: Connection,
    dialect: _Dialect,
    errors: _Warehouse,
    state: Engine,
    sync: LoadedSync,
    phase: int,
    key: str,
    as_of: dt.datetime,
    page_size: int,
) -> PhaseData:
    measurement = sync.definition.measurement
    assert measurement is not None
    window_days = measurement.window_days
    outcomes = errors.outcomes
    try:
        probe = conn.execute(
            text(f"WITH outcomes AS ({outcomes}) SELECT * FROM outcomes WHERE 1 = 0")
        )
        columns = {str(c).lower() for c in list(probe.keys())}
        probe.close()
    except Exception as exc:
        if isinstance(exc, (ConfigError, TransientError)):
            raise
        raise errors.fail(exc, conn, "while reading its columns") from None
    for column in OUTCOME_COLUMNS:
        if column not in columns:
            raise ConfigError(
                f"{errors.origin}: measurement.outcomes returns no {column!r} column (it must"
                f" return {', '.join(OUTCOME_COLUMNS)}; it returns {', '.join(sorted(columns))})"
            )
    raw: Any = conn.connection.driver_connection

    def warehouse(step: Callable[[], object]) -> None:
        """One step of the upload; the warehouse's errors as TransientError (75)."""
        try:
            step()
        except Exception as exc:
            raise TransientError(
                f"{errors.origin}: cannot upload members to the warehouse: {_short(exc)}"
            ) from None

    def prepare() -> None:
        if dialect.name == "sqlite":
            # The warehouse connection is query_only; the temporary table needs writes.
            conn.exec_driver_sql("PRAGMA query_only = OFF")
            raw.create_function("syncer_sha256", 1, _sha256_hex, deterministic=True)
        for statement in dialect.setup:
            conn.exec_driver_sql(statement)
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {TEMP_TABLE}")
        conn.exec_driver_sql(f"CREATE TEMPORARY TABLE {TEMP_TABLE} ({dialect.temp_columns})")

    def seal() -> None:
        if dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA query_only = ON")  # the outcomes query only reads
        elif dialect.name == "postgresql":
            conn.exec_driver_sql(f"ANALYZE {TEMP_TABLE}")
            # The temporary table outlives the commit (it goes with the session); the
            # outcomes query then runs in a read-only transaction, like source.query.
            conn.commit()
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")

    warehouse(prepare)
    # The state database's errors leave the loop as they are (the CLI's state_errors says
    # what they mean); only the upload's are the warehouse's.
    for page in members(state, sync.name, phase, window_days, as_of, page_size):
        warehouse(partial(dialect.upload, conn, page))
    warehouse(seal)
    try:
        rows = conn.execute(text(totals_sql(dialect, outcomes, key))).all()
        days = conn.execute(text(curve_sql(dialect, outcomes, key))).all()
    except Exception as exc:
        if isinstance(exc, (ConfigError, TransientError)):
            raise
        raise errors.fail(exc, conn, "while totalling outcomes") from None
    finally:
        if conn.in_transaction():
            conn.rollback()  # the temporary table goes with the session
    totals = {
        grp: GroupTotals(int(n), int(conv), float(rev or 0), float(sq or 0))
        for grp, n, conv, rev, sq in rows
    }
    treated, holdout = totals.get(TREATED, GroupTotals()), totals.get(HOLDOUT, GroupTotals())
    return PhaseData(phase, treated, holdout, _curve(days, treated, holdout, window_days))


def _curve(
    days: Sequence[Any], treated: GroupTotals, holdout: GroupTotals, window_days: int
) -> list[dict[str, float | None]]:
    """Cumulative conversion rate and revenue per member, day 0 .. window_days-1."""
    firsts = {g: [0] * window_days for g in GROUPS}
    revenue = {g: [0.0] * window_days for g in GROUPS}
    for grp, day, n, rev in days:
        if grp not in firsts or day is None:
            continue
        d = min(max(int(day), 0), window_days - 1)
        firsts[grp][d] += int(n or 0)
        revenue[grp][d] += float(rev or 0)
    size = {TREATED: treated.members, HOLDOUT: holdout.members}
    out: list[dict[str, float | None]] = []
    conv = {g: 0 for g in GROUPS}
    rev_sum = {g: 0.0 for g in GROUPS}
    for d in range(window_days):
        row: dict[str, float | None] = {"day": d}
        for g in GROUPS:
            conv[g] += firsts[g][d]
            rev_sum[g] += revenue[g][d]
            n = size[g]
            row[f"{g}_conversion"] = conv[g] / n if n else None
            row[f"{g}_revenue"] = rev_sum[g] / n if n else None
        out.append(row)
    return out


__all__ = [
    "OUTCOME_COLUMNS",
    "Phase",
    "PhaseData",
    "curve_sql",
    "history_phases",
    "key_sql",
    "measure",
    "members",
    "totals_sql",
]
