"""Holdouts and membership history through the real CLI, on SQLite and PostgreSQL state.

What a user notices: held-out members never reach the destination, turning an experiment on
removes the ones already there (and `plan` says so first), each member's stay is recorded
once with its group and phase, and a split changed mid-phase is refused before anything is
sent.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from syncer.holdout import bucket
from tests.test_e2e_cli import Story, _story, write_mapping

EXPERIMENT = """
experiment:
  holdout_percent: {percent}
  phase: {phase}
"""


def emails(n: int, start: int = 0) -> list[tuple[str, str, str]]:
    return [(f"member{i}@example.com", f"Name{i}", f"{i}.5") for i in range(start, start + n)]


def held(keys: list[str], percent: float, phase: int = 1, salt: str = "vip") -> set[str]:
    return {k for k in keys if bucket(salt, phase, k) < round(percent * 100)}


def with_experiment(story_dir: Path, percent: float, phase: int = 1, guard: int = 50) -> None:
    write_mapping(story_dir, mode="mirror", guard=guard)
    path = story_dir / "vip.yaml"
    path.write_text(path.read_text() + EXPERIMENT.format(percent=percent, phase=phase))


@pytest.fixture(params=["sqlite", "postgres"])
def story(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Story]:
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        yield from _story(tmp_path, f"sqlite:///{tmp_path / 'shop.db'}", url)
        return
    yield from _story(
        tmp_path, f"sqlite:///{tmp_path / 'shop.db'}", f"sqlite:///{tmp_path / 'state.db'}"
    )


def history(story: Story) -> list[dict[str, Any]]:
    engine = sa.create_engine(story.env["SYNCER_STATE_URL"])
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT member_key, key, phase, grp, entered_run, exited_run, exited_at"
                    " FROM syncer_membership WHERE sync = 'vip' ORDER BY id"
                )
            )
            return [dict(r._mapping) for r in rows]
    finally:
        engine.dispose()


def open_groups(story: Story) -> dict[str, str]:
    return {r["member_key"]: r["grp"] for r in history(story) if r["exited_at"] is None}


def test_held_out_members_are_never_sent_and_every_member_has_history(
    story: Story, tmp_path: Path
) -> None:
    with_experiment(tmp_path / "mappings", percent=20)
    rows = emails(200)
    keys = [r[0] for r in rows]
    story.segment(rows)
    holdout = held(keys, 20)
    assert 20 < len(holdout) < 60  # the fixed keys give a stable share near 20%

    code, plan, out = story.cli("plan", "vip", "--json")
    assert code == 0, out
    (entry,) = plan.get("plans", [plan])
    assert entry["experiment"]["holdout"] == len(holdout)
    assert entry["experiment"]["starts"] is True
    assert entry["add"] == 200 - len(holdout)

    code, doc, out = story.cli("sync", "now", "vip", "--json")
    assert code == 0, out
    assert set(story.destination.members) == set(keys) - holdout
    assert not holdout & set(story.destination.members)
    (run,) = doc["runs"]
    assert run["held_out"] == len(holdout) and run["added"] == 200 - len(holdout)
    code, _, out = story.cli("run", "show", run["run_id"])
    assert code == 0 and f"held out: {len(holdout)}" in out, out

    stays = history(story)
    assert len(stays) == 200  # treated and held out alike (intention to treat)
    assert Counter(r["grp"] for r in stays) == {
        "treated": 200 - len(holdout),
        "holdout": len(holdout),
    }
    assert {r["member_key"] for r in stays if r["grp"] == "holdout"} == holdout
    assert all(r["phase"] == 1 and r["exited_at"] is None for r in stays)
    # Keys as the audit log stores them: SHA-256, not the address.
    assert all(r["key"] == hashlib.sha256(r["member_key"].encode()).hexdigest() for r in stays)

    # No change: nothing sent, history untouched.
    code, doc, out = story.cli("sync", "now", "vip", "--json")
    assert code == 0, out
    assert doc["runs"][0]["added"] == 0 and doc["runs"][0]["removed"] == 0
    assert len(history(story)) == 200

    # Churn: 30 leave, 30 join; held-out leavers and joiners are recorded too.
    churned = rows[30:] + emails(30, start=1000)
    story.segment(churned)
    code, doc, out = story.cli("sync", "now", "vip", "--json")
    assert code == 0, out
    new_keys = [r[0] for r in churned]
    new_holdout = held(new_keys, 20)
    assert set(story.destination.members) == set(new_keys) - new_holdout
    stays = history(story)
    exited = {r["member_key"] for r in stays if r["exited_at"] is not None}
    assert exited == set(keys[:30])
    assert open_groups(story) == {
        k: ("holdout" if k in new_holdout else "treated") for k in new_keys
    }
    run_ids = {r["exited_run"] for r in stays if r["exited_run"]}
    assert len(run_ids) == 1


def test_turning_an_experiment_on_removes_the_newly_held_out(story: Story, tmp_path: Path) -> None:
    rows = emails(120)
    keys = [r[0] for r in rows]
    story.segment(rows)
    write_mapping(tmp_path / "mappings", mode="mirror")
    code, _, out = story.cli("sync", "now", "vip")
    assert code == 0, out
    assert set(story.destination.members) == set(keys)
    assert {r["grp"] for r in history(story)} == {"treated"}
    assert {r["phase"] for r in history(story)} == {0}

    with_experiment(tmp_path / "mappings", percent=10)
    holdout = held(keys, 10)
    code, _, out = story.cli("plan", "vip")
    assert code == 0, out
    assert f"{len(holdout)} members held out (10%)" in out
    assert f"newly held out: {len(holdout)} members the destination holds" in out

    code, doc, out = story.cli("sync", "now", "vip", "--json")
    assert code == 0, out
    assert doc["runs"][0]["removed"] == len(holdout)
    assert set(story.destination.members) == set(keys) - holdout
    # The phase-0 stays closed, everyone opened again in phase 1 with their group.
    stays = history(story)
    assert all(r["exited_at"] is not None for r in stays if r["phase"] == 0)
    assert open_groups(story) == {k: ("holdout" if k in holdout else "treated") for k in keys}


def test_guards_still_apply_when_an_experiment_removes_members(
    story: Story, tmp_path: Path
) -> None:
    rows = emails(100)
    story.segment(rows)
    write_mapping(tmp_path / "mappings", mode="mirror")
    assert story.cli("sync", "now", "vip")[0] == 0
    with_experiment(tmp_path / "mappings", percent=30, guard=10)
    code, doc, out = story.cli("sync", "now", "vip", "--json")
    assert code != 0 and doc["runs"][0]["status"] == "blocked", out
    assert len(story.destination.members) == 100  # nothing removed
    assert {r["phase"] for r in history(story) if r["exited_at"] is None} == {0}


def test_a_split_changed_mid_phase_is_refused(story: Story, tmp_path: Path) -> None:
    rows = emails(50)
    story.segment(rows)
    with_experiment(tmp_path / "mappings", percent=10)
    assert story.cli("sync", "now", "vip")[0] == 0
    sent = dict(story.destination.members)
    requests = len(story.destination.requests)

    with_experiment(tmp_path / "mappings", percent=20)
    code, _, out = story.cli("sync", "now", "vip")
    assert code == 78, out
    assert "holdout percent 10 -> 20 changed within phase 1" in out
    assert "bump experiment.phase to 2" in out
    assert "vip.yaml" in out
    assert len(story.destination.requests) == requests and story.destination.members == sent
    code, _, out = story.cli("plan", "vip")
    assert code == 78 and "changed within phase 1" in out

    # A new phase is a fresh comparison: every stay closed and opened again.
    with_experiment(tmp_path / "mappings", percent=20, phase=2)
    code, _, out = story.cli("sync", "now", "vip")
    assert code == 0, out
    keys = [r[0] for r in rows]
    holdout = held(keys, 20, phase=2)
    assert set(story.destination.members) == set(keys) - holdout
    assert open_groups(story) == {k: ("holdout" if k in holdout else "treated") for k in keys}
    assert {r["phase"] for r in history(story) if r["exited_at"] is None} == {2}

    with_experiment(tmp_path / "mappings", percent=20, phase=1)
    code, _, out = story.cli("sync", "now", "vip")
    assert code == 78, out
    assert "experiment.phase went back from 2 to 1" in out


@pytest.mark.parametrize("percent", ["0", "100", "0.001", "60"])
def test_a_holdout_out_of_range_is_a_configuration_error(
    story: Story, tmp_path: Path, percent: str
) -> None:
    story.segment(emails(5))
    with_experiment(tmp_path / "mappings", percent=float(percent))
    code, _, out = story.cli("check")
    assert code == 78, out
    assert "holdout_percent" in out and "vip.yaml" in out


def test_the_global_holdout_is_never_sent_by_any_sync(story: Story, tmp_path: Path) -> None:
    rows = emails(300)
    keys = [r[0] for r in rows]
    story.segment(rows)
    write_mapping(tmp_path / "mappings", mode="mirror")
    story.env["SYNCER_GLOBAL_HOLDOUT_PERCENT"] = "5"
    code, _, out = story.cli("sync", "now", "vip")
    assert code == 0, out
    global_ = {k for k in keys if bucket("syncer-global", 1, k) < 500}
    assert global_ and not global_ & set(story.destination.members)
    assert set(story.destination.members) == set(keys) - global_
    assert {k for k, g in open_groups(story).items() if g == "global_holdout"} == global_

    story.env["SYNCER_GLOBAL_HOLDOUT_PERCENT"] = "10"
    code, _, out = story.cli("sync", "now", "vip")
    assert code == 78, out
    assert "SYNCER_GLOBAL_HOLDOUT_PHASE" in out


def test_forget_erases_a_held_out_members_history(story: Story, tmp_path: Path) -> None:
    rows = emails(60)
    keys = [r[0] for r in rows]
    story.segment(rows)
    with_experiment(tmp_path / "mappings", percent=20)
    assert story.cli("sync", "now", "vip")[0] == 0
    person = sorted(held(keys, 20))[0]
    assert person in open_groups(story)
    code, _, out = story.cli("forget", "--key", person.upper(), "--yes")
    assert code == 0, out
    assert person not in {r["member_key"] for r in history(story)}
    assert len(history(story)) == 59


def test_check_reports_the_experiment_and_refuses_a_changed_split(
    story: Story, tmp_path: Path
) -> None:
    story.segment(emails(20))
    with_experiment(tmp_path / "mappings", percent=10)

    def experiment_step() -> tuple[int, str]:
        code, doc, _ = story.cli("check", "vip", "--json")
        steps = [step for r in doc["checks"] for step in r["steps"]]
        said = " ".join(s["result"] for s in steps if s["step"] in ("experiment", "error"))
        return code, said

    code, said = experiment_step()
    assert code == 0, said
    assert said == "ok: phase 1, 10% held out (starts with the next run)"
    assert story.cli("sync", "now", "vip")[0] == 0
    assert experiment_step() == (0, "ok: phase 1, 10% held out")
    with_experiment(tmp_path / "mappings", percent=15)
    code, said = experiment_step()
    assert code == 78, said
    assert "changed within phase 1" in said


def test_history_begins_for_a_sync_synced_before_it_existed(story: Story, tmp_path: Path) -> None:
    """A sync from before membership history: its next run records every member, even when
    nothing changed (the no-change shortcut would stage nothing)."""
    rows = emails(40)
    story.segment(rows)
    write_mapping(tmp_path / "mappings", mode="mirror")
    assert story.cli("sync", "now", "vip")[0] == 0
    engine = sa.create_engine(story.env["SYNCER_STATE_URL"])
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM syncer_membership"))
    finally:
        engine.dispose()
    code, doc, out = story.cli("sync", "now", "vip", "--json")
    assert code == 0 and doc["runs"][0]["added"] == 0, out
    assert open_groups(story) == dict.fromkeys((r[0] for r in rows), "treated")
