"""The tables people read fit an 80-column terminal, with times a person reads at a glance.

Through the real CLI with COLUMNS=80 (the width a terminal reports), and the table functions
on a rich console 80 wide: every line fits, every column keeps its whole header and values
(the longest demo name included); `runs` says how long ago (`5m ago`) and `run show` when
(`2026-12-07 23:41:05 UTC`), never ISO 8601 with microseconds.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from syncer import output
from syncer.diff import DiffCounts
from syncer.enums import RunStatus, SyncMode
from syncer.results import Guard, PlanResult, RunResult
from tests.conftest import run_cli, write_table

NAME = "high_value_recent"  # the longest name the demo ships, 17 characters
READABLE = re.compile(r"\b\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\b")
AGE = re.compile(r"  (just now|\d+[smhd] ago)  ")
ISO_PRECISE = re.compile(r"\d\dT\d\d:\d\d|\d\d:\d\d:\d\d\.\d")


def fits(text: str, width: int = 80) -> list[str]:
    lines = text.splitlines()
    assert lines, "no output"
    too_wide = [line for line in lines if len(line.rstrip()) > width]
    assert not too_wide, "\n".join(too_wide)
    return lines


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    warehouse = f"sqlite:///{tmp_path / 'shop.db'}"
    rows = [(f"p{i}@example.com",) for i in range(30)] + [("not-an-email",)]
    write_table(warehouse, "people", ("email",), rows)
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    for name in (NAME, "inactive_contacts"):
        (mappings / f"{name}.yaml").write_text(
            f"name: {name}\n"
            "source: {query: select email from people, key: email, key_type: email}\n"
            f"destination: {{connector: file, path: {tmp_path / name}.csv}}\n"
        )
    return {
        "SYNCER_WAREHOUSE_URL": warehouse,
        "SYNCER_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
        "SYNCER_MAPPINGS_DIR": str(mappings),
        "COLUMNS": "80",
    }


def test_every_table_fits_80_columns_through_the_cli(env: dict[str, str]) -> None:
    proc = run_cli("sync", "now", "--all", env=env)
    assert proc.returncode == 1, proc.stderr  # one invalid row: partial
    lines = fits(proc.stdout)
    header = next(line for line in lines if line.startswith("sync  "))
    assert header.split() == [
        "sync", "status", "added", "removed", "updated", "unchanged", "run"
    ]  # fmt: skip
    row = next(line for line in lines if line.startswith(NAME))
    cells = row.split()
    assert cells[:6] == [NAME, "partial", "30", "0", "0", "0"]
    run_id = cells[-1]
    assert re.fullmatch(r"[0-9a-f]{8}", run_id)
    assert f"{NAME}: 1 invalid: syncer run show {run_id}" in proc.stdout

    shown = run_cli("run", "show", run_id, env=env)  # the short id the table shows works
    assert shown.returncode == 0, shown.stderr
    fits(shown.stdout, 120)  # key: value lines; the records table may hold longer reasons
    started = next(line for line in shown.stdout.splitlines() if "started_at:" in line)
    assert READABLE.search(started) and started.endswith(" UTC") and not ISO_PRECISE.search(started)

    listed = run_cli("runs", env=env)
    lines = fits(listed.stdout)
    assert lines[1].split() == ["run", "started", "sync", "status", "changes"]
    assert all(AGE.search(line) for line in lines if re.match(r"[0-9a-f]{8} ", line))
    assert not ISO_PRECISE.search(listed.stdout)
    assert any(line.rstrip().endswith("+30 1 invalid") for line in lines)

    for command in (("check",), ("plan", NAME), ("plan", "--all")):
        proc = run_cli(*command, env=env)
        assert proc.returncode == 0, proc.stderr
        fits(proc.stdout)
    assert f"plan for {NAME} (mode membership)" in proc.stdout


def test_json_keeps_full_ids_and_iso_timestamps(env: dict[str, str]) -> None:
    """Only the human tables shorten: scripts keep what they had."""
    run_cli("sync", "now", NAME, env=env)
    (run,) = json.loads(run_cli("runs", "--json", env=env).stdout)["runs"]
    assert len(run["id"]) == 16 and "T" in run["started_at"]


def render(draw: object, *args: object) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=80, highlight=False)
    saved, output.stdout = output.stdout, console
    try:
        draw(*args)  # type: ignore[operator]
    finally:
        output.stdout = saved
    return buffer.getvalue()


def test_summary_on_an_80_column_console_keeps_every_cell_whole() -> None:
    counts = {"added": 19104, "removed": 12345, "updated": 18, "unchanged": 2570}
    results = [
        RunResult("1f217875e23145f7", NAME, RunStatus.SUCCEEDED, counts, duration_s=0.5),
        RunResult(
            "c53e7497988f4e40",
            "inactive_contacts",
            RunStatus.INTERRUPTED,
            {**counts, "rejected": 3, "failed": 500},
            duration_s=123.4,
        ),
    ]
    text = render(output.runs_summary_table, results)
    lines = fits(text)
    assert lines[3].split() == [NAME, "succeeded", "19104", "12345", "18", "2570", "1f217875"]
    assert lines[4].split()[1:] == ["interrupted", "19104", "12345", "18", "2570", "c53e7497"]
    assert "inactive_contacts: 3 rejected, 500 failed: syncer run show c53e7497" in text


def test_runs_and_plan_on_an_80_column_console() -> None:
    rows = [
        {
            "id": "1f217875e23145f7",
            "sync": NAME,
            "status": "succeeded",
            "started_at": (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)).isoformat(),
            "added": 2650,
            "removed": 80,
            "updated": 3,
            "rejected": 2,
        }
    ]
    text = render(output.runs_table, rows)
    fits(text)
    assert "1f217875  5m ago   high_value_recent  succeeded  +2650 -80 ~3 2 rejected" in text
    plan = PlanResult(
        NAME,
        SyncMode.MIRROR,
        DiffCounts(add=2, update=1, remove=0, unchanged=5, source_rows=8, members_before=6),
        {"add": ["a***@example.com", "b***@example.com"], "update": [], "remove": []},
        [],
        Guard(False, None),
    )
    text = render(output.plan_table, plan)
    fits(text)
    assert f"plan for {NAME} (mode mirror)" in text


def test_timestamps_read_as_utc_seconds() -> None:
    assert output.when("2026-12-07T23:41:05.123456+00:00") == "2026-12-07 23:41:05"
    assert output.when("2026-12-08T01:41:05+02:00") == "2026-12-07 23:41:05"
    assert output.when(None) == "-"
    now = dt.datetime(2026, 12, 7, 23, 41, 5, tzinfo=dt.UTC)
    ages = [output.age(now - dt.timedelta(seconds=s), now) for s in (0, 42, 300, 7300, 200000)]
    assert ages == ["just now", "42s ago", "5m ago", "2h ago", "2d ago"]
    assert output.age("2026-12-07 23:40:05", now) == "1m ago"  # SQLite's: no offset, UTC
