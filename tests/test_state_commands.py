"""`syncer state show | reset | move` through the real CLI.

A sync runs against the fake webhook destination; then its state is looked at, forgotten (the
next run sends everyone again as adds) or renamed (the next run under the new name sends
nothing). Refusals change nothing: an unknown name, a move onto a name with state, a sync that
is running or has a vendor job the vendor may still apply, a failure half-way through a move.
"""

from __future__ import annotations

import json
import os
import pty
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.fake_destination import Harness, cli_env, harness, members_of, people


@pytest.fixture(params=["sqlite", "postgres"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite:///{tmp_path / 'state.db'}"


def show(h: Harness, name: str | None = None) -> dict[str, Any]:
    proc = h.cli("state", "show", name or h.name, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    state: dict[str, Any] = json.loads(proc.stdout)["state"]
    return state


def first_run(h: Harness, n: int = 20) -> list[tuple[str, str, str]]:
    rows = people(n)
    h.segment(rows)
    code, doc, proc = h.sync()
    assert code == 0, proc.stdout + proc.stderr
    assert doc is not None and doc["runs"][0]["added"] == n
    return rows


def execute(h: Harness, *statements: str) -> None:
    engine = sa.create_engine(h.state_url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))
    finally:
        engine.dispose()


def rename_mapping(h: Harness, new: str) -> None:
    (h.mappings / f"{h.name}.yaml").unlink()
    h.name = new
    h.mapping()


# -- show ----------------------------------------------------------------------------------------


def test_show_after_a_run(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        first_run(h)
        state = show(h)
        assert state["members"] == {
            "total": 20,
            "confirmed": 20,
            "maybe_absent": 0,
            "maybe_stale": 0,
            "last_synced_at": state["members"]["last_synced_at"],
        }
        assert state["runs"] == 1
        last = state["last_run"]
        assert (last["status"], last["added"], last["trigger"]) == ("succeeded", 20, "cli")
        assert state["jobs"] == [] and state["pending"] == 0
        assert state["rejects"] == {"total": 0, "parked": 0}
        assert state["lease"] is None
        assert state["mapping"] == [str(h.mappings / "vip.yaml")]

        text = h.cli("state", "show", "vip")
        assert text.returncode == 0, text.stderr
        assert "members: 20 (20 confirmed by the destination)" in text.stdout
        assert f"last {last['id']} succeeded (cli)" in text.stdout
        assert "running: no" in text.stdout
        lines = [line for line in text.stdout.splitlines() if "mapping:" not in line]
        assert max(len(line) for line in lines) <= 80  # a path may be longer


def test_show_lists_vendor_jobs_and_unconfirmed_members(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        first_run(h)
        execute(
            h,
            "update syncer_records set unsure = 1 where key like 'person1%'",
            "insert into syncer_jobs (sync, job, run_id, sealed, status, created_at)"
            " values ('vip', 'jobs/42', 'r1', 1, 'submitted', '2026-12-07 10:00:00')",
            "insert into syncer_pending (sync, key, operation, hash, job, run_id)"
            " values ('vip', 'k1', 'add', 1, 'jobs/42', 'r1'), ('vip', 'k2', 'add', 2, 'jobs/42',"
            " 'r1')",
        )
        state = show(h)
        assert state["members"]["maybe_absent"] == 11  # person1 and person10..19
        assert state["members"]["confirmed"] == 9
        (job,) = state["jobs"]
        assert (job["job"], job["sealed"], job["records"]) == ("jobs/42", True, 2)
        text = h.cli("state", "show", "vip").stdout
        assert (
            "9 confirmed, 11 sent but not confirmed" in text
            and "jobs/42: submitted, 2 records" in text
        )


# -- reset ---------------------------------------------------------------------------------------


def test_reset_then_the_next_run_sends_everyone_again_as_adds(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        rows = first_run(h)
        adds_before = h.dest.records_sent("add")

        off_a_terminal = h.cli("state", "reset", "vip")
        assert off_a_terminal.returncode == 2, off_a_terminal.stderr
        assert "--yes" in off_a_terminal.stderr
        assert show(h)["members"]["total"] == 20, "a refused reset changed state"

        proc = h.cli("state", "reset", "vip", "--yes")
        assert proc.returncode == 0, proc.stderr
        assert "forgot 20 acknowledged members of sync 'vip'" in proc.stdout
        state = show(h)
        assert state["members"]["total"] == 0
        assert state["runs"] == 1, "reset must keep the run history"

        code, doc, out = h.sync()
        assert code == 0, out.stdout + out.stderr
        assert doc is not None and doc["runs"][0]["added"] == 20
        assert h.dest.records_sent("add") == adds_before + 20
        assert h.dest.members_now() == members_of(rows)

        again = h.cli("state", "reset", "vip", "--yes", "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["forgot"]["records"] == 20


def test_reset_of_a_sync_with_a_mapping_but_no_state_forgets_nothing(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        proc = h.cli("state", "reset", "vip")  # no prompt, so no --yes needed
        assert proc.returncode == 0, proc.stderr
        assert "nothing to forget" in proc.stdout


def _on_a_terminal(h: Harness, answer: str, *args: str) -> tuple[int, str]:
    """Run the CLI with stdin (only) on a pseudo-terminal and type ``answer``."""
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncer", *args],
            cwd=h.root,
            env=cli_env(h.env),
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.write(controller, answer.encode() + b"\n")
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(controller)
        os.close(terminal)
    return proc.returncode, out + err


def test_reset_asks_on_a_terminal(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        first_run(h)
        code, out = _on_a_terminal(h, "n", "state", "reset", "vip")
        assert code == 1, out
        assert "Forget the 20 members the destination of sync 'vip' acknowledged?" in out
        assert show(h)["members"]["total"] == 20, "declining changed state"
        code, out = _on_a_terminal(h, "y", "state", "reset", "vip")
        assert code == 0, out
        assert show(h)["members"]["total"] == 0


def test_reset_refused_while_a_vendor_job_may_still_apply(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        first_run(h)
        execute(
            h,
            "insert into syncer_jobs (sync, job, run_id, sealed, status, created_at) values"
            " ('vip', 'jobs/7', 'r1', 1, 'submitted', '2026-12-07 10:00:00'),"
            " ('vip', 'jobs/8', 'r2', 0, 'open', '2026-12-07 10:05:00')",
            "insert into syncer_pending (sync, key, operation, hash, job, run_id)"
            " values ('vip', 'k1', 'add', 1, 'jobs/8', 'r2')",
        )
        proc = h.cli("state", "reset", "vip", "--yes")
        assert proc.returncode == 75, proc.stderr
        assert "jobs/7" in proc.stderr and "settle" in proc.stderr
        assert show(h)["members"]["total"] == 20

        # Settled by a later run: a job never started is no obstacle, and is dropped.
        execute(h, "update syncer_jobs set settled_at = created_at where job = 'jobs/7'")
        proc = h.cli("state", "reset", "vip", "--yes", "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["forgot"] == {
            "records": 20,
            "unconfirmed": 0,
            "pending": 1,
            "jobs": 1,
        }
        assert show(h)["jobs"] == []


# -- unknown names -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["reset", "--yes"], ["show"], ["move", "--yes"]])
def test_an_unknown_sync_is_named_with_the_names_it_may_mean(
    tmp_path: Path, command: list[str]
) -> None:
    with harness(tmp_path) as h:
        first_run(h)
        verb, *flags = command
        extra = ["vip_new"] if verb == "move" else []
        proc = h.cli("state", verb, "vpi", *extra, *flags)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "no sync named 'vpi'" in proc.stderr
        assert "did you mean 'vip'?" in proc.stderr
        assert show(h)["members"]["total"] == 20


# -- move ----------------------------------------------------------------------------------------


def test_move_then_a_run_under_the_new_name_sends_nothing(tmp_path: Path, state_url: str) -> None:
    with harness(tmp_path, state_url) as h:
        rows = first_run(h)
        sent = len(h.dest.requests)
        proc = h.cli("state", "move", "vip", "vip_customers", "--yes")
        assert proc.returncode == 0, proc.stderr
        assert "moved the state of sync 'vip' to 'vip_customers'" in proc.stdout
        assert ": 20 members, 1 runs" in proc.stdout
        assert "warning:" in proc.stderr and "still declares sync 'vip'" in proc.stderr

        rename_mapping(h, "vip_customers")
        code, doc, out = h.sync()
        assert code == 0, out.stdout + out.stderr
        assert doc is not None
        run = doc["runs"][0]
        assert (run["added"], run["unchanged"]) == (0, 20)
        assert len(h.dest.requests) == sent, "a run after a move sent something"
        assert h.dest.members_now() == members_of(rows)
        assert [r["added"] for r in h.runs()] == [0, 20]  # the history came along

        gone = h.cli("state", "show", "vip")
        assert gone.returncode == 2 and "known syncs: vip_customers" in gone.stderr


def test_move_after_renaming_the_mapping_says_it_carries_on(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        first_run(h)
        rename_mapping(h, "vip2")
        state = show(h, "vip")  # state whose mapping is gone still shows
        assert state["mapping"] == [] and state["members"]["total"] == 20
        proc = h.cli("state", "move", "vip", "vip2", "--yes", "--json")
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert doc["moved"]["syncer_records"] == 20 and doc["moved"]["syncer_runs"] == 1
        assert "warning" not in proc.stderr and "carries on where 'vip' left off" in proc.stderr


def test_move_renames_every_table_keyed_by_sync(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        first_run(h)
        at = "'2026-12-07 10:00:00'"
        execute(
            h,
            "insert into syncer_jobs (sync, job, run_id, sealed, status, created_at)"
            f" values ('vip', 'jobs/1', 'r1', 1, 'submitted', {at})",
            "insert into syncer_pending (sync, key, operation, hash, job, run_id)"
            " values ('vip', 'k1', 'add', 1, 'jobs/1', 'r1')",
            "insert into syncer_ticks (sync, tick, holder, claimed_at) values ('vip', 1, 'h', 0)",
            "insert into syncer_alerts (sync, state, since) values ('vip', 'failing', 0)",
            "insert into syncer_rejects (sync, key, operation, outcome, attempts, first_at,"
            f" last_at, parked_at) values ('vip', 'k2', 'add', 'rejected', 3, {at}, {at}, {at})",
            "insert into syncer_destinations (scope, connector, name, status, sync, created_at,"
            f" updated_at) values ('webhook:x', 'webhook', 'x', 'created', 'vip', {at}, {at})",
            "insert into syncer_experiments (sync, phase, holdout_percent, salt, started_at)"
            f" values ('vip', 1, 10, 'vip', {at})",
            f"insert into syncer_writeback (sync, run_id, written_at) values ('vip', 'r1', {at})",
        )
        proc = h.cli("state", "move", "vip", "vip2", "--yes", "--json")
        assert proc.returncode == 0, proc.stderr
        moved = json.loads(proc.stdout)["moved"]
        engine = sa.create_engine(h.state_url)
        try:
            with engine.connect() as conn:
                keyed = [
                    t
                    for t in sa.inspect(conn).get_table_names()
                    if t.startswith("syncer_")
                    and t != "syncer_leases"
                    and any(c["name"] == "sync" for c in sa.inspect(conn).get_columns(t))
                ]
                left = {
                    t: conn.execute(
                        sa.text(f"select count(*) from {t} where sync = 'vip'")
                    ).scalar()
                    for t in keyed
                }
        finally:
            engine.dispose()
        assert left == dict.fromkeys(keyed, 0)
        assert {t for t, n in moved.items() if n} == set(keyed)
        state = show(h, "vip2")
        assert state["rejects"] == {"total": 1, "parked": 1}
        assert state["alert"]["state"] == "failing" and state["jobs"][0]["records"] == 1


def test_move_onto_a_name_with_state_is_refused(tmp_path: Path, state_url: str) -> None:
    with harness(tmp_path, state_url) as h:
        first_run(h)
        other = (h.mappings / "vip.yaml").read_text().replace("name: vip", "name: other")
        (h.mappings / "other.yaml").write_text(other)
        code, _, proc = h.sync()
        h.name = "other"
        code, _, proc = h.sync()
        assert code == 0, proc.stderr  # the same members, sent again under its own name

        refused = h.cli("state", "move", "vip", "other", "--yes")
        assert refused.returncode == 2, refused.stderr
        assert "sync 'other' already has state (20 acknowledged members, 1 runs)" in (
            refused.stderr
        )
        assert "nothing changed" in refused.stderr
        assert (show(h, "vip")["runs"], show(h, "other")["runs"]) == (2, 1)

        same = h.cli("state", "move", "vip", "vip", "--yes")
        assert same.returncode == 2
        bad = h.cli("state", "move", "vip", "no spaces", "--yes")
        assert bad.returncode == 2 and "not a sync name" in bad.stderr


def test_a_failure_half_way_through_a_move_changes_nothing(tmp_path: Path, state_url: str) -> None:
    """The tables are renamed in one transaction: a trigger that fails the last one (ticks)
    must leave the records and runs renamed before it where they were."""
    with harness(tmp_path, state_url) as h:
        first_run(h)
        ticks = (
            "insert into syncer_ticks (sync, tick, holder, claimed_at) values ('vip', 1, 'h', 0)"
        )
        sqlite = state_url.startswith("sqlite")
        if sqlite:
            trigger = [
                "create trigger no_moves before update on syncer_ticks"
                " begin select raise(abort, 'refused by a test trigger'); end"
            ]
        else:
            trigger = [
                "create function no_moves() returns trigger language plpgsql as"
                " $$ begin raise exception 'refused by a test trigger'; end $$",
                "create trigger no_moves before update on syncer_ticks"
                " for each row execute function no_moves()",
            ]
        execute(h, ticks, *trigger)
        proc = h.cli("state", "move", "vip", "vip2", "--yes")
        assert proc.returncode == 75, proc.stdout + proc.stderr
        assert "refused by a test trigger" not in proc.stderr  # driver text is never quoted
        state = show(h, "vip")
        assert (state["members"]["total"], state["runs"], state["lease"]) == (20, 1, None)
        assert h.cli("state", "show", "vip2").returncode == 2

        execute(h, "drop trigger no_moves" + ("" if sqlite else " on syncer_ticks"))
        proc = h.cli("state", "move", "vip", "vip2", "--yes")
        assert proc.returncode == 0, proc.stderr
        assert show(h, "vip2")["members"]["total"] == 20


# -- while a run holds the lease -----------------------------------------------------------------


def test_reset_and_move_refused_while_the_sync_runs(tmp_path: Path, state_url: str) -> None:
    with harness(tmp_path, state_url) as h:
        rows = first_run(h, 14)
        h.segment(rows + people(70, start=100))  # 10 more batches of 7
        h.dest.gate.clear()  # the run's requests wait at the destination: it stays running
        hits = h.dest.hits
        running = h.popen()
        deadline = time.monotonic() + 30
        while h.dest.hits == hits:
            assert running.poll() is None, h.output(running)
            assert time.monotonic() < deadline, "the run never reached the destination"
            time.sleep(0.02)
        holder = f"{socket.gethostname()} (pid {running.pid})"

        for args in (["reset", "vip"], ["move", "vip", "vip2"], ["move", "other", "vip"]):
            proc = h.cli("state", *args, "--yes")
            if args[1] == "other":  # no such sync: named as unknown first
                assert proc.returncode == 2, proc.stderr
                continue
            assert proc.returncode == 75, proc.stdout + proc.stderr
            assert f"sync 'vip' is running on {holder} since" in proc.stderr, proc.stderr
            assert "nothing changed" in proc.stderr
        state = show(h)
        assert state["lease"]["live"] and state["lease"]["pid"] == running.pid
        assert "running: yes, on" in h.cli("state", "show", "vip").stdout
        assert running.poll() is None, "the run ended before the refusals were checked"

        h.dest.gate.set()
        assert running.wait(timeout=120) == 0, h.output(running)
        state = show(h)
        assert (state["members"]["total"], state["runs"], state["lease"]) == (84, 2, None)
