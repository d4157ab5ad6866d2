"""Project fixtures: isolated working directories, real warehouses, the local Postgres, the CLI.

The connector fixtures (``router``, ``http``, ``engine_http``, ``limiter``, ``clock``,
``harness``...) come from the connector kit, the same ones a plugin's tests use.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

pytest_plugins = ["syncer.testing.fixtures"]

REPO = Path(__file__).resolve().parents[1]
PG_BASE = os.environ.get(
    "SYNCER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _postgres_reason() -> str | None:
    try:
        engine = sa.create_engine(PG_BASE, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as exc:  # any failure means: not available here
        return f"PostgreSQL at {PG_BASE} not reachable ({type(exc).__name__})"
    return None


_PG_REASON = _postgres_reason()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh schema on the local Postgres; skipped (or failed in CI) when it is not there."""
    if _PG_REASON is not None:
        if os.environ.get("SYNCER_TEST_REQUIRE_POSTGRES"):
            pytest.fail(f"CI requires Postgres: {_PG_REASON}")
        pytest.skip(_PG_REASON)
    schema = f"t_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_BASE)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test runs in its own directory with no SYNCER_* variables from outside."""
    for name in list(os.environ):
        if name.startswith("SYNCER_") and name != "SYNCER_TEST_REQUIRE_POSTGRES":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    from syncer.state import state_engine
    from syncer.warehouse import warehouse_engine

    state_engine.cache_clear()
    warehouse_engine.cache_clear()
    return tmp_path


def write_table(
    url: str, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """(Re)create ``table`` in any SQLAlchemy warehouse, every column as text."""
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    t = sa.Table(table, meta, *(sa.Column(c, sa.Text()) for c in columns))
    with engine.begin() as conn:
        t.drop(conn, checkfirst=True)
        t.create(conn)
        if rows:
            conn.execute(t.insert(), [dict(zip(columns, row, strict=True)) for row in rows])
    engine.dispose()


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, as a user or a pipeline would run it."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCER_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "syncer", *args],
        cwd=cwd or Path.cwd(),
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
