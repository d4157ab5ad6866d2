"""``syncer prune`` through the real CLI: old runs and their audit events go, acknowledged
state and what later runs still need stay, and a sync running meanwhile is not disturbed.

Runs are made old by moving their ``started_at`` into the past directly in the state
database, the only way to have a 200-day-old run in a test.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from syncer.state import BulkWriter, events_table, jobs_table, runs_table, ticks_table, upgrade
from tests.fake_destination import Harness, cli_env, harness, members_of, people

NOW = dt.datetime.now(dt.UTC)


def ago(days: float) -> dt.datetime:
    return NOW - dt.timedelta(days=days)


def state(h: Harness) -> sa.Engine:
    return sa.create_engine(h.state_url)


def age(h: Harness, run_ids: list[str], days: float) -> None:
    """Make these runs (and their events) ``days`` old."""
    engine = state(h)
    with engine.begin() as conn:
        conn.execute(
            sa.update(runs_table)
            .where(runs_table.c.id.in_(run_ids))
            .values(started_at=ago(days), finished_at=ago(days))
        )
        conn.execute(
            sa.update(events_table).where(events_table.c.run_id.in_(run_ids)).values(at=ago(days))
        )
    engine.dispose()


def add_run(h: Harness, sync: str, days: float, status: str = "succeeded", events: int = 0) -> str:
    """A run of another sync, written as syncer writes one, ``days`` old."""
    run_id = uuid.uuid4().hex
    engine = state(h)
    upgrade(engine)  # the schema, when no command made it yet
    with engine.begin() as conn:
        conn.execute(
            runs_table.insert().values(
                id=run_id,
                sync=sync,
                status=status,
                trigger="cli",
                mode="mirror",
                started_at=ago(days),
                finished_at=None if status == "running" else ago(days),
            )
        )
        if events:
            stamp = BulkWriter(conn).stamp(ago(days))
            m = "?" if conn.dialect.paramstyle == "qmark" else "%s"
            conn.exec_driver_sql(
                "INSERT INTO syncer_events (run_id, key, operation, outcome, at)"
                f" VALUES ({m}, {m}, 'add', 'accepted', {m})",
                [(run_id, f"{run_id}{i:032x}", stamp) for i in range(events)],
            )
    engine.dispose()
    return run_id


def add_job(h: Harness, sync: str, run_id: str, settled: bool) -> None:
    engine = state(h)
    with engine.begin() as conn:
        conn.execute(
            jobs_table.insert().values(
                sync=sync,
                job=uuid.uuid4().hex,
                run_id=run_id,
                sealed=1,
                status="succeeded" if settled else "submitted",
                created_at=ago(300),
                settled_at=ago(299) if settled else None,
            )
        )
    engine.dispose()


def table_rows(h: Harness, query: Any) -> list[Any]:
    engine = state(h)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    engine.dispose()
    return list(rows)


def events_of(h: Harness, run_ids: list[str]) -> int:
    (row,) = table_rows(h, sa.select(sa.func.count()).where(events_table.c.run_id.in_(run_ids)))
    return int(row[0])


def prune(h: Harness, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = h.cli("prune", *args, "--json", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def sync_ok(h: Harness) -> dict[str, Any]:
    code, doc, proc = h.sync()
    assert code == 0 and doc is not None, proc.stdout + proc.stderr
    run: dict[str, Any] = doc["runs"][0]
    return run


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def test_prune_removes_only_old_runs_and_keeps_state_and_latest_runs(
    tmp_path: Path, state_url: str
) -> None:
    rows = people(12)
    with harness(tmp_path, state_url) as h:
        h.segment(rows[:10])
        first = sync_ok(h)["run_id"]
        h.segment(rows)
        second = sync_ok(h)["run_id"]
        h.segment(rows[2:])
        latest = sync_ok(h)["run_id"]  # recent: stays
        age(h, [first, second], days=200)
        # Another sync whose runs are all old: only its latest finished run stays, and a run
        # still marked running stays whatever its age.
        legacy_old = add_run(h, "legacy", 300, events=3)
        add_job(h, "legacy", legacy_old, settled=True)  # goes with its run
        legacy_latest = add_run(h, "legacy", 250, events=2)
        legacy_running = add_run(h, "legacy", 260, status="running")
        # A run whose vendor job is not settled yet stays: the job's records depend on it.
        waiting = add_run(h, "ads", 300, events=4)
        add_job(h, "ads", waiting, settled=False)
        ads_latest = add_run(h, "ads", 200)
        engine = state(h)
        with engine.begin() as conn:
            conn.execute(
                ticks_table.insert(),
                [
                    {
                        "sync": "vip",
                        "tick": int(ago(200).timestamp()),
                        "holder": "h:1",
                        "claimed_at": 0.0,
                    },
                    {
                        "sync": "vip",
                        "tick": int(ago(1).timestamp()),
                        "holder": "h:1",
                        "claimed_at": 0.0,
                    },
                ],
            )
        engine.dispose()
        old_events = events_of(h, [first, second, legacy_old])
        assert old_events == 10 + 2 + 3
        state_before = h.state_hashes()
        expected = {
            "syncer_runs": 3,
            "syncer_events": old_events,
            "syncer_jobs": 1,
            "syncer_ticks": 1,
        }

        dry = prune(h, "--older-than", "90d", "--dry-run")
        assert dry["dry_run"] is True and dry["removed"] == expected
        assert len(table_rows(h, sa.select(runs_table.c.id))) == 8  # nothing went

        done = prune(h, "--older-than", "90d")
        assert done["status"] == "ok" and done["removed"] == expected

        kept = {row.id for row in table_rows(h, sa.select(runs_table.c.id))}
        assert kept == {latest, legacy_latest, legacy_running, waiting, ads_latest}
        assert events_of(h, [first, second, legacy_old]) == 0
        assert events_of(h, [legacy_latest, waiting]) == 2 + 4
        assert len(table_rows(h, sa.select(jobs_table.c.job))) == 1  # the unsettled one
        assert h.state_hashes() == state_before
        assert [r["id"] for r in h.runs()] == [latest]
        shown = h.cli("run", "show", latest)
        assert shown.returncode == 0 and latest in shown.stdout

        # Idempotent, and the state it kept is the state the next run diffs against.
        again = prune(h, "--older-than", "90d")
        assert again["removed"] == dict.fromkeys(expected, 0)
        nothing = sync_ok(h)
        assert (nothing["added"], nothing["removed"], nothing["updated"]) == (0, 0, 0)
        assert h.dest.members_now() == members_of(rows[2:])


def test_prune_says_what_it_removed_in_words(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        h.segment(people(3))
        old = sync_ok(h)["run_id"]
        sync_ok(h)
        age(h, [old], days=30)
        proc = h.cli("prune", "--older-than", "2w")
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0].startswith("Removed what started before ")
        assert "(older than 2w)" in lines[0]
        assert [line.split() for line in lines[1:5]] == [
            ["syncer_runs", "1"],
            ["syncer_events", "3"],
            ["syncer_jobs", "0"],
            ["syncer_ticks", "0"],
        ]


@pytest.mark.parametrize("given", ["banana", "6m", "90", "d", "0d", "-1d", "1.5d", "90 days"])
def test_an_age_that_is_not_one_is_a_usage_error_naming_the_forms(
    tmp_path: Path, given: str
) -> None:
    with harness(tmp_path) as h:
        proc = h.cli("prune", "--older-than", given)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "--older-than" in proc.stderr and "90d, 12h, 2w" in proc.stderr
        assert not (tmp_path / "state.db").exists()  # nothing was opened, let alone deleted


def test_the_setting_is_the_default_and_is_checked(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        missing = h.cli("prune")
        assert missing.returncode == 2
        assert "--older-than 90d" in missing.stderr and "SYNCER_PRUNE_OLDER_THAN" in missing.stderr
        doc = prune(h, env={"SYNCER_PRUNE_OLDER_THAN": "30d"})
        assert doc["older_than"] == "30d"
        wrong = h.cli("prune", env={"SYNCER_PRUNE_OLDER_THAN": "banana"})
        assert wrong.returncode == 78
        assert "SYNCER_PRUNE_OLDER_THAN" in wrong.stderr and "90d, 12h, 2w" in wrong.stderr


def test_a_prune_beside_a_running_sync_leaves_it_to_finish(tmp_path: Path) -> None:
    rows = people(600)
    # Each request takes a while, so the sync is mid-way (between commits) while the prune
    # deletes in batches of 100 events: the two take turns at the write lock.
    with harness(tmp_path, latency=0.15) as h:
        h.segment(people(5))
        sync_ok(h)
        old = [add_run(h, "legacy", 200 + i, events=2_000) for i in range(10)]
        add_run(h, "legacy", 100)
        h.segment(rows)
        proc = h.popen()
        deadline = time.monotonic() + 60
        while h.dest.hits < 2:  # observable: the sync is sending
            assert proc.poll() is None and time.monotonic() < deadline, h.output(proc)
            time.sleep(0.02)
        # --pace 0: batch after batch with no pause, the hardest case for the sync's commits.
        done = prune(h, "--older-than", "90d", "--batch-size", "100", "--pace", "0")
        assert proc.poll() is None, "the sync ended before the prune did: nothing overlapped"
        assert done["removed"]["syncer_runs"] == 10
        assert done["removed"]["syncer_events"] == 20_000
        assert proc.wait(120) == 0, h.output(proc)
        out, _ = h.output(proc)
        (run,) = json.loads(out)["runs"]
        assert run["status"] == "succeeded" and run["added"] == 595
        assert h.dest.members_now() == members_of(rows)
        assert events_of(h, old) == 0
        assert events_of(h, [run["run_id"]]) == 595


# -- the daemon's daily prune (SYNCER_PRUNE_OLDER_THAN) -----------------------------------


def test_the_daemon_prunes_once_a_day_across_replicas(tmp_path: Path) -> None:
    from tests.test_daemon_process import running

    with harness(tmp_path) as h:
        old = [add_run(h, "legacy", 100 + i, events=50) for i in range(4)]
        latest = add_run(h, "legacy", 40)
        env = {"SYNCER_PRUNE_OLDER_THAN": "30d"}
        with running(h, env, tag="a") as a, running(h, env, tag="b") as b:
            deadline = time.monotonic() + 60
            while (
                len(a.events("prune.finished") + b.events("prune.finished")) < 1
                or len(a.events("prune.skipped") + b.events("prune.skipped")) < 1
            ):
                assert time.monotonic() < deadline, a.stderr() + b.stderr()
                time.sleep(0.1)
            (finished,) = a.events("prune.finished") + b.events("prune.finished")
            assert a.stop()[0] == 0 and b.stop()[0] == 0
        assert (finished["runs"], finished["events"], finished["stopped"]) == (4, 200, False)
        assert finished["older_than"] == "30d"
        assert events_of(h, old) == 0
        assert {r.id for r in table_rows(h, sa.select(runs_table.c.id))} == {latest}
        (claim,) = table_rows(h, sa.select(ticks_table).where(ticks_table.c.sync == "syncer:prune"))
        assert claim.status == "succeeded" and claim.tick == int(time.time() // 86400 * 86400)


def test_sigterm_stops_the_daemons_prune_between_batches(tmp_path: Path) -> None:
    from tests.test_daemon_process import running

    with harness(tmp_path) as h:
        old = [add_run(h, "legacy", 100 + i, events=20_000) for i in range(10)]
        add_run(h, "legacy", 40)
        with running(h, {"SYNCER_PRUNE_OLDER_THAN": "30d"}) as d:
            d.wait_for("prune.started")
            code, took = d.stop()
            assert code == 0 and took < 20, d.stderr()
            (finished,) = d.events("prune.finished")
        # Whatever it got through is gone for good; what is left is whole runs' worth or the
        # remains of one, for the next prune.
        assert events_of(h, old) + finished["events"] == 200_000
        claims = table_rows(h, sa.select(ticks_table).where(ticks_table.c.sync == "syncer:prune"))
        # Stopped half way, the day's claim is given back so the next daemon finishes it.
        assert len(claims) == (0 if finished["stopped"] else 1)


def test_sigterm_stops_a_prune_between_batches_and_the_next_one_finishes(tmp_path: Path) -> None:
    slow = ("--batch-size", "100", "--pace", "5")  # a hundred batches, most of the time idle
    with harness(tmp_path) as h:
        old = [add_run(h, "legacy", 100 + i, events=2_000) for i in range(5)]
        add_run(h, "legacy", 40)
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncer", "prune", "--older-than", "90d", "--json", *slow],
            cwd=h.root,
            env=cli_env(h.env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while events_of(h, old) == 10_000:  # observable: the first batches are gone
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 75, out + err
        first = json.loads(out)
        assert first["status"] == "stopped" and first["stopped"] is True
        assert "run `syncer prune` again" in err
        left = events_of(h, old)
        assert 0 < left == 10_000 - first["removed"]["syncer_events"]
        rest = prune(h, "--older-than", "90d")
        assert rest["removed"]["syncer_events"] == left
        assert first["removed"]["syncer_runs"] + rest["removed"]["syncer_runs"] == 5


def test_many_small_runs_go_page_after_page(tmp_path: Path) -> None:
    """A daemon syncing every minute leaves many runs with few events each: more than one
    page of runs (see syncer.retention.RUN_PAGE) goes, the latest stays."""
    with harness(tmp_path) as h:
        add_run(h, "minutely", 600, events=1)
        engine = state(h)
        with engine.begin() as conn:
            conn.execute(
                runs_table.insert(),
                [
                    {
                        "id": f"m{i:05d}",
                        "sync": "minutely",
                        "status": "succeeded",
                        "trigger": "schedule",
                        "mode": "mirror",
                        "started_at": ago(100 + i / 1440),
                    }
                    for i in range(450)
                ],
            )
        engine.dispose()
        done = prune(h, "--older-than", "90d", "--pace", "0")
        assert done["removed"]["syncer_runs"] == 450 and done["removed"]["syncer_events"] == 1
        (kept,) = table_rows(h, sa.select(runs_table.c.id))
        assert kept.id == "m00000"  # the newest: 100 days old, the sync's latest
