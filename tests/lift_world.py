"""A lift report's world: a real state database with membership history (written the way
the engine writes it: syncer.state's own schema) and a warehouse with an outcomes table."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from syncer.state import experiments_table, membership_table, state_engine
from tests.conftest import run_cli

T0 = dt.datetime(2026, 1, 1, 9, 30, tzinfo=dt.UTC)

MAPPING = """
name: {name}
source:
  query: select email from segment
  key: email
  key_type: {key_type}
mode: mirror
fields:
  email: email
destination:
  {destination}
{experiment}
{measurement}
"""

WEBHOOK = "connector: webhook\n  url: http://127.0.0.1:9/hook\n  secret: ${LIFT_SECRET}"
META = (
    "connector: meta\n  access_token: ${LIFT_TOKEN}\n"
    '  audience_id: "23850000000000042"\n  region: US'
)
EXPERIMENT = "experiment: {holdout_percent: 10}"
MEASUREMENT = """measurement:
  outcomes: select member_key, event_at, revenue from orders
  window_days: {window}
  min_holdout_members: {min_members}
  min_holdout_conversions: {min_conversions}"""


def write_mapping(
    directory: Path,
    name: str = "vip",
    *,
    key_type: str = "email",
    destination: str = WEBHOOK,
    experiment: str = EXPERIMENT,
    measurement: str | None = None,
    window: int = 30,
    min_members: int = 100,
    min_conversions: int = 10,
) -> Path:
    directory.mkdir(exist_ok=True)
    if measurement is None:
        measurement = MEASUREMENT.format(
            window=window, min_members=min_members, min_conversions=min_conversions
        )
    path = directory / f"{name}.yaml"
    path.write_text(
        MAPPING.format(
            name=name,
            key_type=key_type,
            destination=destination,
            experiment=experiment,
            measurement=measurement,
        )
    )
    return path


def seed_history(
    state_url: str,
    sync: str,
    members: Iterable[tuple[str, str, dt.datetime]],
    *,
    phase: int = 1,
    percent: float = 10.0,
    salt: str | None = None,
    started_at: dt.datetime = T0,
    exits: dict[str, dt.datetime] | None = None,
) -> None:
    """Membership rows (member_key, grp, entered_at) of one phase, and its experiments row."""
    engine = state_engine(state_url)
    exits = exits or {}
    rows = [
        {
            "sync": sync,
            "member_key": key,
            "key": key,
            "phase": phase,
            "grp": grp,
            "entered_at": entered,
            "entered_run": "r1",
            "exited_at": exits.get(key),
            "exited_run": "r2" if key in exits else None,
        }
        for key, grp, entered in members
    ]
    with engine.begin() as conn:
        conn.execute(
            experiments_table.insert().values(
                sync=sync,
                phase=phase,
                holdout_percent=percent,
                salt=salt or sync,
                started_at=started_at,
                started_run="r1",
            )
        )
        for start in range(0, len(rows), 50_000):
            conn.execute(membership_table.insert(), rows[start : start + 50_000])


def clear_history(state_url: str) -> None:
    engine = state_engine(state_url)
    with engine.begin() as conn:
        conn.execute(membership_table.delete())
        conn.execute(experiments_table.delete())


def write_outcomes(
    url: str, rows: Sequence[tuple[Any, Any, Any]], *, event_type: str = "TIMESTAMP"
) -> None:
    """(Re)create ``orders(member_key, event_at, revenue)`` in a SQLite, DuckDB or PostgreSQL
    warehouse. ``event_type`` TIMESTAMP or DATE (SQLite keeps ISO text either way)."""
    engine = sa.create_engine(url)
    real = {"sqlite": "REAL", "duckdb": "DOUBLE"}.get(engine.dialect.name, "double precision")
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS orders")
        conn.exec_driver_sql(
            f"CREATE TABLE orders (member_key TEXT, event_at {event_type}, revenue {real})"
        )
        if engine.dialect.name == "duckdb" and rows:
            import numpy as np

            raw: Any = conn.connection.driver_connection
            raw.register(
                "up",
                {
                    "member_key": np.array([r[0] for r in rows], dtype=object),
                    "event_at": np.array([_naive(r[1]) for r in rows], dtype="datetime64[us]"),
                    "revenue": np.array(
                        [np.nan if r[2] is None else r[2] for r in rows], dtype=float
                    ),
                },
            )
            raw.execute(
                f"INSERT INTO orders SELECT member_key, CAST(event_at AS {event_type}),"
                " CASE WHEN isnan(revenue) THEN NULL ELSE revenue END FROM up"
            )
            raw.unregister("up")
        elif rows:
            conn.execute(
                sa.text("INSERT INTO orders VALUES (:k, :t, :r)"),
                [{"k": k, "t": _stored(t, engine.dialect.name), "r": r} for k, t, r in rows],
            )
    engine.dispose()


def _naive(value: Any) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        return dt.datetime.combine(value, dt.time())
    return value.astimezone(dt.UTC).replace(tzinfo=None)


def _stored(value: Any, dialect: str) -> Any:
    if dialect == "sqlite" and isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat(sep=" ")
    if dialect == "sqlite" and isinstance(value, dt.date):
        return value.isoformat()
    return value


def empty_file_warehouse(path: Path) -> str:
    """A warehouse file that exists (syncer refuses a missing one)."""
    url = f"duckdb:///{path}" if path.suffix == ".duckdb" else f"sqlite:///{path}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS segment (email TEXT)")
    engine.dispose()
    return url


@dataclass
class World:
    """A mappings directory, a state database and a warehouse, for the real CLI."""

    root: Path
    warehouse: str
    state: str

    @property
    def env(self) -> dict[str, str]:
        return {
            "SYNCER_WAREHOUSE_URL": self.warehouse,
            "SYNCER_STATE_URL": self.state,
            "SYNCER_MAPPINGS_DIR": str(self.root / "mappings"),
            "COLUMNS": "80",
            "LIFT_SECRET": "not-used",
            "LIFT_TOKEN": "EAAB-not-used-0123456789",
        }

    def cli(self, *args: str) -> tuple[int, Any, str, str]:
        proc = run_cli(*args, env=self.env, cwd=self.root)
        document = None
        if "--json" in args and proc.stdout.strip():
            document = json.loads(proc.stdout)
        return proc.returncode, document, proc.stdout, proc.stderr


def make_world(root: Path, warehouse: str = "sqlite") -> World:
    if warehouse == "sqlite":
        url = empty_file_warehouse(root / "warehouse.db")
    elif warehouse == "duckdb":
        url = empty_file_warehouse(root / "warehouse.duckdb")
    else:
        url = warehouse
    return World(root, url, f"sqlite:///{root / 'state.db'}")
