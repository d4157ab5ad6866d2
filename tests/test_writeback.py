"""Write-back to the warehouse (issue 16 point 3), end to end through the real CLI, on SQLite,
DuckDB and PostgreSQL warehouses: tables created and filled after `sync now`, membership
history mirrored, a run written twice is there once, and a failed write-back leaves the
sync's run and state alone, warns once, and is caught up by the next run."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import PG_BASE, run_cli, write_table

MAPPING = """
name: vip
source:
  warehouse: default
  query: select email, name from segment_vip
  key: email
  key_type: email
mode: mirror
fields:
  name: name
destination:
  connector: file
  path: out/vip.csv
writeback:
  enabled: true
  schema: {schema}
"""


@dataclass
class World:
    dialect: str
    warehouse: str
    state: str
    schema: str | None  # where the write-back tables are (None: the SQLite file itself)
    env: dict[str, str]

    def segment(self, n: int, start: int = 0) -> None:
        rows = [(f"person{i}@example.com", f"Name{i}") for i in range(start, start + n)]
        write_table(self.warehouse, "segment_vip", ("email", "name"), rows)

    def cli(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, Any, str, str]:
        proc = run_cli("--log-level", "info", *args, env={**self.env, **(env or {})})
        doc = json.loads(proc.stdout) if "--json" in args and proc.stdout.strip() else None
        return proc.returncode, doc, proc.stdout, proc.stderr

    def table(self, name: str) -> str:
        return f'"{self.schema}"."{name}"' if self.schema else f'"{name}"'

    def query(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        engine = sa.create_engine(self.warehouse, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(sa.text(sql), params)]
        finally:
            engine.dispose()

    def count(self, table: str, where: str = "true", **params: Any) -> int:
        sql = f"select count(*) from {self.table(table)} where {where}"
        return int(self.query(sql, **params)[0][0])

    def state_rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        engine = sa.create_engine(self.state)
        try:
            with engine.begin() as conn:
                result = conn.execute(sa.text(sql), params)
                return [tuple(r) for r in result] if result.returns_rows else []
        finally:
            engine.dispose()


def _world(
    tmp_path: Path, dialect: str, warehouse: str, schema: str | None, state: str | None = None
) -> World:
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "vip.yaml").write_text(MAPPING.format(schema=schema or "ignored_on_sqlite"))
    state = state or f"sqlite:///{tmp_path / 'state.db'}"
    env = {
        "SYNCER_WAREHOUSE_URL": warehouse,
        "SYNCER_STATE_URL": state,
        "SYNCER_MAPPINGS_DIR": str(mappings),
    }
    return World(dialect, warehouse, state, schema, env)


# "postgres-state": the state database on PostgreSQL too (its timestamps are formatted by SQL).
@pytest.fixture(params=["sqlite", "duckdb", "postgres", "postgres-state"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    if request.param.startswith("postgres"):
        url = request.getfixturevalue("postgres_url")
        schema = f"wb_{uuid.uuid4().hex[:10]}"
        state = url if request.param == "postgres-state" else None
        yield _world(tmp_path, "postgres", url, schema, state)
        admin = sa.create_engine(PG_BASE)
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
        return
    if request.param == "duckdb":
        yield _world(tmp_path, "duckdb", f"duckdb:///{tmp_path / 'shop.duckdb'}", "wb")
        return
    yield _world(tmp_path, "sqlite", f"sqlite:///{tmp_path / 'shop.db'}", None)


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _no_raw_keys(text: str) -> None:
    assert "@example.com" not in text, text


def test_sync_now_creates_and_fills_the_tables(world: World) -> None:
    world.segment(30)
    code, doc, out, err = world.cli("sync", "now", "vip", "--json")
    assert code == 0, out + err
    (run,) = doc["runs"]
    assert run["status"] == "succeeded" and run["warnings"] == []
    run_id = run["run_id"]

    runs = world.table("syncer_runs")
    rows = world.query(f"select run_id, sync, status, trigger, added, finished_at from {runs}")
    assert [r[:5] for r in rows] == [(run_id, "vip", "succeeded", "cli", 30)]
    assert rows[0][5] is not None
    table = world.table("syncer_audit")
    audit = world.query(f"select run_id, key, operation, outcome from {table}")
    assert len(audit) == 30
    assert {r[1] for r in audit} == {_sha(f"person{i}@example.com") for i in range(30)}
    assert {(r[0], r[2], r[3]) for r in audit} == {(run_id, "add", "accepted")}
    for table in ("syncer_membership", "syncer_membership_events"):
        world.count(table)  # created, whether or not the run kept membership history
    assert world.state_rows("select sync, run_id from syncer_writeback") == [("vip", run_id)]
    _no_raw_keys(out + err)

    # Nothing pending: a second write-back writes nothing, and says so.
    code, doc, out, err = world.cli("writeback", "--json")
    assert code == 0, out + err
    assert doc["writebacks"][0]["runs_written"] == 0
    assert world.count("syncer_runs") == 1 and world.count("syncer_audit") == 30


T0 = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)


def _history(world: World) -> tuple[str, str, list[int]]:
    """Two runs of 'vip' with membership history, as the engine records them: run A enters
    40 members (4 held out), run B closes 3 of them and enters 4 more. Run ids of their own,
    so they never mix with history the runs of the tests record themselves."""
    run_a, run_b = f"hista{uuid.uuid4().hex[:8]}", f"histb{uuid.uuid4().hex[:8]}"
    for i, run_id in enumerate((run_a, run_b)):
        started = T0 + dt.timedelta(hours=i)
        world.state_rows(
            "insert into syncer_runs (id, sync, status, trigger, mode, full_resync, started_at,"
            " finished_at, source_rows, added, removed, updated, unchanged, rejected, invalid,"
            " failed, pending) values (:id, 'vip', 'succeeded', 'schedule', 'mirror', 0,"
            " :started, :finished, 40, 0, 0, 0, 0, 0, 0, 0, 0)",
            id=run_id,
            started=started.strftime("%Y-%m-%d %H:%M:%S.%f"),
            finished=(started + dt.timedelta(minutes=1)).strftime("%Y-%m-%d %H:%M:%S.%f"),
        )

    def enter(i: int, run_id: str, at: dt.datetime) -> None:
        key = f"member{i}@example.com"
        world.state_rows(
            "insert into syncer_membership (sync, member_key, key, phase, grp, entered_at,"
            " entered_run) values ('vip', :mk, :k, 1, :grp, :at, :run)",
            mk=key,
            k=_sha(key),
            grp="holdout" if i % 10 == 0 else "treated",
            at=at.strftime("%Y-%m-%d %H:%M:%S.%f"),
            run=run_id,
        )

    for i in range(40):
        enter(i, run_a, T0)
    closed_at = (T0 + dt.timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S.%f")
    world.state_rows(
        "update syncer_membership set exited_at = :at, exited_run = :run"
        " where entered_run = :a and member_key in ('member1@example.com',"
        " 'member2@example.com', 'member3@example.com')",
        at=closed_at,
        run=run_b,
        a=run_a,
    )
    for i in range(40, 44):
        enter(i, run_b, T0 + dt.timedelta(hours=1))
    ids = [
        r[0]
        for r in world.state_rows(
            "select id from syncer_membership where entered_run in (:a, :b)", a=run_a, b=run_b
        )
    ]
    return run_a, run_b, ids


def _check_history(world: World, run_a: str, run_b: str, ids: list[int]) -> None:
    m = world.table("syncer_membership")
    mine = f"id in ({', '.join(map(str, ids))})"
    assert world.count("syncer_membership", mine) == 44
    assert world.count("syncer_membership", f"{mine} and exited_run = :b", b=run_b) == 3
    assert world.count("syncer_membership", f"{mine} and exited_at is null") == 41
    assert world.count("syncer_membership", f"{mine} and grp = 'holdout'") == 5
    (row,) = world.query(
        f"select member_key, key, phase, grp, entered_at, entered_run, exited_at from {m}"
        " where member_key = 'member2@example.com'"
    )
    assert row[:4] == ("member2@example.com", _sha("member2@example.com"), 1, "treated")
    assert row[5] == run_a
    entered, exited = (_aware(v) for v in (row[4], row[6]))
    assert entered == T0 and exited == T0 + dt.timedelta(hours=1)

    e = world.table("syncer_membership_events")
    events = world.query(
        f"select run_id, event, count(*) from {e} where run_id in (:a, :b)"
        " group by run_id, event order by run_id, event",
        a=run_a,
        b=run_b,
    )
    assert sorted(events) == sorted([(run_a, "enter", 40), (run_b, "enter", 4), (run_b, "exit", 3)])
    (at,) = world.query(
        f"select occurred_at from {e} where run_id = :b and event = 'exit'"
        " and member_key = 'member3@example.com'",
        b=run_b,
    )[0]
    assert _aware(at) == T0 + dt.timedelta(hours=1)
    assert world.count("syncer_runs", "run_id in (:a, :b)", a=run_a, b=run_b) == 2


def _aware(value: Any) -> dt.datetime:
    """A timestamp read back: SQLite gives UTC text without an offset."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def test_membership_history_is_mirrored_and_a_run_written_twice_is_there_once(
    world: World,
) -> None:
    world.segment(5)
    code, _, out, err = world.cli("sync", "now", "vip")
    assert code == 0, out + err
    run_a, run_b, ids = _history(world)

    code, doc, out, err = world.cli("writeback", "vip", "--json")
    assert code == 0, out + err
    (report,) = doc["writebacks"]
    assert report["runs_written"] == 2 and report["error"] is None
    assert report["rows"]["syncer_membership"] == 44 + 3  # B rewrites the 3 rows it closed
    assert report["rows"]["syncer_membership_events"] == 47
    _check_history(world, run_a, run_b, ids)
    _no_raw_keys(out + err)

    # Forget that they were written (as a crash between the warehouse's commit and the
    # state's would): written again, they are there once.
    world.state_rows("delete from syncer_writeback where run_id in (:a, :b)", a=run_a, b=run_b)
    code, doc, out, err = world.cli("writeback", "--json")
    assert code == 0, out + err
    assert doc["writebacks"][0]["runs_written"] == 2
    _check_history(world, run_a, run_b, ids)
    # Only run B again (its exits replace rows A wrote): still once.
    world.state_rows("delete from syncer_writeback where run_id = :b", b=run_b)
    code, doc, out, err = world.cli("writeback", "--json")
    assert code == 0 and doc["writebacks"][0]["runs_written"] == 1, out + err
    _check_history(world, run_a, run_b, ids)


def _break(world: World) -> None:
    """A table of the same name the user made for something else: inserts fail."""
    engine = sa.create_engine(world.warehouse, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text(f"drop table if exists {world.table('syncer_audit')}"))
        conn.execute(sa.text(f"create table {world.table('syncer_audit')} (something text)"))
    engine.dispose()


def _mend(world: World) -> None:
    engine = sa.create_engine(world.warehouse, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text(f"drop table {world.table('syncer_audit')}"))
    engine.dispose()


def test_a_failed_write_back_warns_keeps_the_run_and_is_caught_up_next_run(
    world: World,
) -> None:
    world.segment(10)
    code, _, out, err = world.cli("sync", "now", "vip")  # creates the schema and tables
    assert code == 0, out + err
    _break(world)
    world.segment(12)
    code, doc, out, err = world.cli("sync", "now", "vip", "--json")
    assert code == 0, out + err  # the sync itself succeeded
    (run,) = doc["runs"]
    assert run["status"] == "succeeded" and run["added"] == 2
    (warning,) = run["warnings"]
    assert "write-back to the warehouse failed" in warning
    lines = [line for line in err.splitlines() if line.startswith("vip: warning:")]
    assert len(lines) == 1 and "write-back" in lines[0], err
    _no_raw_keys(out + err)
    failed_run = run["run_id"]
    # The run and its state are the sync's own, untouched; the run is not marked written.
    assert world.state_rows("select status from syncer_runs where id = :r", r=failed_run) == [
        ("succeeded",)
    ]
    assert world.state_rows("select count(*) from syncer_records") == [(12,)]
    assert not world.state_rows("select 1 from syncer_writeback where run_id = :r", r=failed_run)
    # Nothing of it reached the warehouse either: one transaction.
    assert world.count("syncer_runs", "run_id = :r", r=failed_run) == 0

    # `syncer writeback` now says why, exit 1.
    code, doc, out, err = world.cli("writeback", "--json")
    assert code == 1 and doc["writebacks"][0]["error"], out + err

    _mend(world)
    world.segment(13)
    code, doc, out, err = world.cli("sync", "now", "vip", "--json")
    assert code == 0 and doc["runs"][0]["warnings"] == [], out + err
    assert world.count("syncer_runs") == 3  # the failed one caught up, and this one
    assert world.count("syncer_runs", "run_id = :r", r=failed_run) == 1
    assert world.count("syncer_audit", "run_id = :r", r=failed_run) == 2
    assert world.count("syncer_audit") == 2 + 1  # the first run's 10 went with the old table
    assert len(world.state_rows("select run_id from syncer_writeback")) == 3


def test_write_back_off_is_said(tmp_path: Path) -> None:
    world = _world(tmp_path, "sqlite", f"sqlite:///{tmp_path / 'shop.db'}", None)
    (tmp_path / "mappings" / "vip.yaml").write_text(
        MAPPING.format(schema="x").replace("enabled: true", "enabled: false")
    )
    world.segment(3)
    code, doc, out, err = world.cli("sync", "now", "vip", "--json")
    assert code == 0 and doc["runs"][0]["warnings"] == [], out + err
    assert not world.query("select name from sqlite_master where name like 'syncer_%'")
    code, _, out, err = world.cli("writeback", "vip")
    assert code == 1 and "write-back is off for vip" in err, out + err


def test_the_setting_turns_it_on_and_a_block_turns_it_off(tmp_path: Path) -> None:
    world = _world(tmp_path, "sqlite", f"sqlite:///{tmp_path / 'shop.db'}", None)
    plain = MAPPING.split("writeback:")[0]
    (tmp_path / "mappings" / "vip.yaml").write_text(plain)
    (tmp_path / "mappings" / "other.yaml").write_text(
        plain.replace("name: vip", "name: other").replace("vip.csv", "other.csv")
        + "writeback: {enabled: false}\n"
    )
    world.segment(3)
    code, _, out, err = world.cli("sync", "now", "--all", env={"SYNCER_WRITEBACK": "true"})
    assert code == 0, out + err
    assert world.query('select sync from "syncer_runs"') == [("vip",)]


def test_a_state_database_is_not_taken_for_a_warehouse(tmp_path: Path) -> None:
    world = _world(tmp_path, "sqlite", f"sqlite:///{tmp_path / 'state.db'}", None)
    world.segment(3)  # the segment lives in the state database's file
    code, doc, out, err = world.cli("sync", "now", "vip", "--json")
    assert code == 0, out + err
    (warning,) = doc["runs"][0]["warnings"]
    assert "holds a syncer state database" in warning


def test_postgres_names_the_missing_grant_and_never_the_password(postgres_url: str) -> None:
    """A warehouse user who may not create the schema: the sync succeeds, the warning names
    the GRANT; once granted, the next run writes both runs."""
    role = f"wb_role_{uuid.uuid4().hex[:8]}"
    password = f"pw-{uuid.uuid4().hex}"
    schema = f"wb_{uuid.uuid4().hex[:10]}"
    fixture_schema = postgres_url.rsplit("%3D", 1)[1]
    admin = sa.create_engine(PG_BASE)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
        conn.execute(sa.text(f'GRANT USAGE ON SCHEMA "{fixture_schema}" TO {role}'))
    url = sa.make_url(postgres_url).set(username=role, password=password)
    warehouse = url.render_as_string(hide_password=False)
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as tmp:
            world = _world(Path(tmp), "postgres", warehouse, schema)
            write_table(postgres_url, "segment_vip", ("email", "name"), [("a@example.com", "A")])
            with admin.begin() as conn:
                conn.execute(sa.text(f'GRANT SELECT ON "{fixture_schema}".segment_vip TO {role}'))
            code, doc, out, err = world.cli("sync", "now", "vip", "--json")
            assert code == 0, out + err
            (warning,) = doc["runs"][0]["warnings"]
            assert f"GRANT CREATE ON DATABASE test TO {role}" in warning
            assert password not in out + err
            _no_raw_keys(out + err)

            with admin.begin() as conn:
                conn.execute(sa.text(f"GRANT CREATE ON DATABASE test TO {role}"))
            code, doc, out, err = world.cli("sync", "now", "vip", "--json")
            assert code == 0 and doc["runs"][0]["warnings"] == [], out + err
            world.warehouse = PG_BASE
            assert world.count("syncer_runs") == 2
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            conn.execute(sa.text(f"REVOKE ALL ON DATABASE test FROM {role}"))
            conn.execute(sa.text(f"DROP OWNED BY {role}"))
            conn.execute(sa.text(f"DROP ROLE {role}"))
        admin.dispose()


def test_turned_on_for_a_sync_with_a_history_writes_its_old_runs(world: World) -> None:
    mapping = Path(world.env["SYNCER_MAPPINGS_DIR"]) / "vip.yaml"
    on = mapping.read_text()
    mapping.write_text(on.replace("enabled: true", "enabled: false"))
    for n in (3, 5):
        world.segment(n)
        code, _, out, err = world.cli("sync", "now", "vip")
        assert code == 0, out + err
    mapping.write_text(on)
    world.segment(6)
    code, doc, out, err = world.cli("sync", "now", "vip", "--json")
    assert code == 0 and doc["runs"][0]["warnings"] == [], out + err
    runs = world.query(f"select added from {world.table('syncer_runs')} order by started_at")
    assert runs == [(3,), (2,), (1,)]  # oldest first, all three
    assert world.count("syncer_audit") == 6


def test_writeback_skips_a_sync_that_is_running(tmp_path: Path) -> None:
    world = _world(tmp_path, "sqlite", f"sqlite:///{tmp_path / 'shop.db'}", None)
    world.segment(2)
    code, _, out, err = world.cli("sync", "now", "vip")
    assert code == 0, out + err
    world.state_rows(
        "insert into syncer_leases (sync, holder, host, pid, acquired_at, heartbeat_at,"
        " expires_at) values ('vip', 'other', 'elsewhere', 1, 0, 0, 9e18)"
    )
    code, doc, out, err = world.cli("writeback", "--json")
    assert code == 1, out + err
    (report,) = doc["writebacks"]
    assert report["status"] == "running" and "already running" in report["error"]
