"""The state database's schema versions: old databases are upgraded, newer ones refused."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from syncer.errors import ConfigError
from syncer.state import (
    MIGRATIONS,
    SCHEMA_VERSION,
    meta_table,
    records_table,
    schema_version,
    state_engine,
    upgrade,
    utcnow,
)


@pytest.fixture(params=["sqlite", "postgres"])
def state_url(request: pytest.FixtureRequest, isolated: Path) -> Iterator[str]:
    """A state database URL on each supported backend (Postgres: a fresh schema)."""
    if request.param == "sqlite":
        url = f"sqlite:///{isolated / 'state' / 'state.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    yield url
    state_engine.cache_clear()


def _raw_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return sa.create_engine(url)


def _version(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return schema_version(conn)


def test_migrations_are_numbered_up_to_the_current_version() -> None:
    assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1))


def test_fresh_database_gets_the_current_schema(state_url: str) -> None:
    engine = state_engine(state_url)
    assert _version(engine) == SCHEMA_VERSION
    tables = set(sa.inspect(engine).get_table_names())
    assert {"syncer_meta", "syncer_runs", "syncer_records", "syncer_events"} <= tables


def test_version_1_database_is_upgraded_keeping_its_records(state_url: str) -> None:
    old = _raw_engine(state_url)
    assert upgrade(old, target=1) == 0
    assert _version(old) == 1
    synced_at = utcnow()
    with old.begin() as conn:
        conn.execute(
            records_table.insert().values(
                sync="vip",
                key="ada@example.com",
                hash=1,
                destination_id="d-1",
                synced_at=synced_at,
            )
        )
    old.dispose()

    state_engine.cache_clear()
    engine = state_engine(state_url)

    assert _version(engine) == SCHEMA_VERSION
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                records_table.c.sync,
                records_table.c.key,
                records_table.c.hash,
                records_table.c.destination_id,
            )
        ).all()
    assert [tuple(r) for r in rows] == [("vip", "ada@example.com", 1, "d-1")]
    indexes = {ix["name"] for ix in sa.inspect(engine).get_indexes("syncer_events")}
    assert "ix_syncer_events_run" in indexes


def test_upgrading_an_up_to_date_database_changes_nothing(state_url: str) -> None:
    state_engine(state_url)
    engine = _raw_engine(state_url)
    assert upgrade(engine) == SCHEMA_VERSION
    assert _version(engine) == SCHEMA_VERSION
    engine.dispose()


def test_newer_schema_is_refused_with_advice_to_upgrade_syncer(state_url: str) -> None:
    engine = _raw_engine(state_url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(
            meta_table.update()
            .where(meta_table.c.key == "schema_version")
            .values(value=str(SCHEMA_VERSION + 1))
        )
    engine.dispose()

    state_engine.cache_clear()
    with pytest.raises(ConfigError) as info:
        state_engine(state_url)
    message = str(info.value).lower()
    assert "upgrade syncer" in message
    assert str(SCHEMA_VERSION + 1) in message

    check = _raw_engine(state_url)
    assert _version(check) == SCHEMA_VERSION + 1  # left alone
    check.dispose()


def test_many_databases_in_one_process(isolated: Path) -> None:
    """Opening several fresh state databases in one process works every time."""
    for n in range(3):
        engine = state_engine(f"sqlite:///{isolated / f's{n}.db'}")
        assert _version(engine) == SCHEMA_VERSION
        engine.dispose()
    state_engine.cache_clear()


@pytest.mark.parametrize(
    "url",
    ["not a url", "mysql://user@localhost/state"],
)
def test_unusable_state_url_is_a_config_error_naming_the_setting(url: str) -> None:
    with pytest.raises(ConfigError, match="SYNCER_STATE_URL"):
        state_engine(url)


def test_processes_starting_together_on_a_fresh_database_all_come_up(state_url: str) -> None:
    """Daemon replicas (or parallel ``sync now``) racing to create the schema: one creates it,
    the others find it; none fails with "already exists"."""
    if state_url.startswith("sqlite:///"):
        Path(state_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    script = (
        "import sys, time, sqlalchemy as sa\n"
        "from syncer.state import upgrade\n"
        "engine = sa.create_engine(sys.argv[1])\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "upgrade(engine)\n"
    )
    start = time.time() + 2.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, state_url, str(start)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, errors
    engine = _raw_engine(state_url)
    with engine.connect() as conn:
        assert schema_version(conn) == SCHEMA_VERSION
    engine.dispose()
