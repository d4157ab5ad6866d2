"""The demo's measured segment: planted future orders with a known lift, found by the report.

The planted data is checked against the real assignment recomputed here from the documented
hash (not through the demo's own code), so a demo that planted the lift in the wrong group
could not pass. The end-to-end part needs `syncer report lift` and is skipped without it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sqlite3
import subprocess
import sys
from collections import defaultdict
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from syncer.demo import shop
from syncer.demo.outcomes import MARGIN, PLANTED, PlantedLift, plant_outcomes
from syncer.holdout import HOLDOUT, TREATED, Assignment, Split, bucket

REPO = Path(__file__).resolve().parents[1]
SYNC = "inactive_contacts"
SPLIT = Split(SYNC, 1, 10.0)
ENTERED = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
MEMBERS = 40_000


def held_out(key: str) -> bool:
    """The documented assignment, recomputed: bucket below 10% of 10,000."""
    return bucket(SYNC, 1, key) < 1000


def synthetic_shop(path: Path, members: int) -> dict[str, datetime]:
    """A warehouse with only what planting needs (customers, orders); entries on two days."""
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(
            "CREATE TABLE customers (customer_id INTEGER PRIMARY KEY, email TEXT NOT NULL);"
            "CREATE TABLE orders (order_id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL,"
            " ordered_at TIMESTAMP NOT NULL, amount REAL NOT NULL);"
        )
        conn.executemany(
            "INSERT INTO customers VALUES (?, ?)",
            [(i, f"member{i}@example.com") for i in range(1, members + 1)],
        )
        conn.commit()
    later = ENTERED + timedelta(days=7, minutes=3)
    return {f"member{i}@example.com": ENTERED if i % 10 else later for i in range(1, members + 1)}


def orders_by_member(path: Path) -> dict[str, list[tuple[str, float]]]:
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(
            "SELECT c.email, o.ordered_at, o.amount FROM orders o"
            " JOIN customers c ON c.customer_id = o.customer_id ORDER BY o.order_id"
        ).fetchall()
    found: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for email, at, amount in rows:
        found[email].append((at, amount))
    return found


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, datetime], Any]:
    path = tmp_path_factory.mktemp("planted") / "warehouse.db"
    entries = synthetic_shop(path, MEMBERS)
    summary = plant_outcomes(path, entries, Assignment(SPLIT), seed=7, window_days=30)
    return path, entries, summary


def test_planted_orders_carry_the_intended_lift_by_real_group(
    planted: tuple[Path, dict[str, datetime], Any],
) -> None:
    path, entries, summary = planted
    orders = orders_by_member(path)
    totals: dict[str, list[float]] = {TREATED: [], HOLDOUT: []}
    for key in entries:
        totals[HOLDOUT if held_out(key) else TREATED].append(
            sum(amount for _, amount in orders.get(key, []))
        )
    assert 0.09 < len(totals[HOLDOUT]) / MEMBERS < 0.11  # the real 10% split
    for group, revenues in totals.items():
        n = len(revenues)
        rate = sum(1 for r in revenues if r > 0) / n
        truth = PLANTED.conversion(group)
        assert abs(rate - truth) < 4 * math.sqrt(truth * (1 - truth) / n), group
        mean = sum(revenues) / n
        sd = math.sqrt(sum((r - mean) ** 2 for r in revenues) / (n - 1))
        assert abs(mean - PLANTED.revenue_per_member(group)) < 4 * sd / math.sqrt(n), group
        # The summary is what the report must count: the same totals, to the cent.
        got = summary.group(group)
        assert (got.members, got.conversions) == (n, sum(1 for r in revenues if r > 0))
        assert got.revenue == pytest.approx(sum(revenues), abs=0.01)
        assert got.revenue_sq == pytest.approx(sum(r * r for r in revenues), rel=1e-9)
    assert summary.orders == sum(len(v) for v in orders.values()) and summary.unknown == 0


def test_the_planted_difference_is_inside_an_oracle_interval(
    planted: tuple[Path, dict[str, datetime], Any],
) -> None:
    """What the lift report must find: the drawn data's Newcombe interval (statsmodels as
    oracle) holds the planted difference and excludes zero at this size."""
    from statsmodels.stats.proportion import confint_proportions_2indep

    _, _, summary = planted
    treated, holdout = summary.group(TREATED), summary.group(HOLDOUT)
    low, high = confint_proportions_2indep(
        treated.conversions,
        treated.members,
        holdout.conversions,
        holdout.members,
        method="newcomb",
    )
    assert low <= PLANTED.conversion_difference <= high
    assert low > 0


def test_every_planted_order_lies_in_its_members_window(
    planted: tuple[Path, dict[str, datetime], Any],
) -> None:
    path, entries, _ = planted
    for key, placed in orders_by_member(path).items():
        entered = entries[key]
        assert 1 <= len(placed) <= 2
        for at, amount in placed:
            moment = datetime.strptime(at, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
            assert entered + MARGIN - timedelta(seconds=1) <= moment
            assert moment <= entered + timedelta(days=30) - MARGIN
            assert amount > 0


def test_planting_is_reproducible(tmp_path: Path) -> None:
    def plant(name: str, seed: int) -> dict[str, list[tuple[str, float]]]:
        path = tmp_path / name
        entries = synthetic_shop(path, 3000)
        plant_outcomes(path, entries, Assignment(SPLIT), seed=seed, window_days=30)
        return orders_by_member(path)

    first = plant("a.db", seed=1)
    assert plant("b.db", seed=1) == first
    assert plant("c.db", seed=2) != first


def test_the_truth_is_what_the_model_says() -> None:
    lift = PlantedLift(holdout_conversion=0.05, treated_conversion=0.06, repeat_share=0.0)
    assert lift.conversion_difference == pytest.approx(0.01)
    assert lift.relative_lift == pytest.approx(0.2)
    assert lift.revenue_difference == pytest.approx(0.01 * lift.mean_order)


def test_planted_orders_move_no_segment(tmp_path: Path) -> None:
    """They are dated after the shop's clock, which its segment views never look past."""
    path = tmp_path / "shop.db"
    shop.build(path, customers=1500)
    before = shop.segment_members(path)
    entries = {email: datetime.now(UTC) for email in before["inactive"]}
    summary = plant_outcomes(path, entries, Assignment(SPLIT), seed=3, window_days=30)
    assert summary.orders > 0
    assert shop.segment_members(path) == before


def test_planted_orders_leave_the_simulated_weeks_alone(tmp_path: Path) -> None:
    """`python -m syncer.demo advance` after the demo simulates what it would have without
    them: the shop's past is what lies before its clock."""
    plain, planted_shop = tmp_path / "plain.db", tmp_path / "planted.db"
    shop.build(plain, customers=1500)
    shutil.copy(plain, planted_shop)
    entries = {email: ENTERED for email in shop.segment_members(plain)["inactive"]}
    assert plant_outcomes(planted_shop, entries, Assignment(SPLIT), seed=3).orders > 0
    first, second = shop.advance(plain, days=7), shop.advance(planted_shop, days=7)
    assert (first.orders_added, first.entered, first.left) == (
        second.orders_added,
        second.entered,
        second.left,
    )
    assert shop.segment_members(plain) == shop.segment_members(planted_shop)


def test_the_demo_mapping_holds_out_and_measures_inactive_contacts(tmp_path: Path) -> None:
    from syncer.mapping import load_file

    sync = load_file(REPO / "mappings" / f"{SYNC}.yaml")
    experiment, measurement = sync.definition.experiment, sync.definition.measurement
    assert experiment is not None and measurement is not None
    assert (experiment.holdout_percent, experiment.phase, experiment.salt) == (10, 1, None)
    assert measurement.window_days == 30
    # The outcomes query runs on the demo shop and keys rows like the sync stages them.
    path = tmp_path / "shop.db"
    shop.build(path, customers=300)
    with closing(sqlite3.connect(path)) as conn:
        cursor = conn.execute(measurement.outcomes + " limit 5")
        rows = cursor.fetchall()
        columns = [d[0] for d in cursor.description]
    assert columns == ["member_key", "event_at", "revenue"] and rows
    assert all(key == key.strip().lower() and "@" in key for key, _, _ in rows)


# -- the demo's checks ------------------------------------------------------------------------


def lift_report(summary: Any, low: float, enough: bool = True) -> dict[str, Any]:
    """A --json document in syncer.lift's layout, every interval from ``low`` x its truth to
    twice the truth."""

    def group(name: str) -> dict[str, Any]:
        got = summary.group(name)
        return {
            "members": got.members,
            "conversions": got.conversions,
            "revenue": round(got.revenue, 2),
            "revenue_sq": got.revenue_sq,
        }

    def estimate(truth: float) -> dict[str, float]:
        return {"estimate": truth, "low": low * truth, "high": 2 * truth}

    def metric(difference: float) -> dict[str, Any]:
        return {
            "difference": estimate(difference),
            "relative_lift": estimate(PLANTED.relative_lift),
            "p_value": 0.001,
        }

    analysis: dict[str, Any] = {"enough_data": enough, "confidence": 0.95}
    if enough:
        analysis["conversion"] = metric(PLANTED.conversion_difference)
        analysis["revenue"] = metric(PLANTED.revenue_difference)
    phase = {"phase": 1, "treated": group(TREATED), "holdout": group(HOLDOUT)}
    return {"sync": SYNC, "phases": [{**phase, "analysis": analysis}]}


def test_the_demo_reads_the_report_against_the_planted_truth(
    planted: tuple[Path, dict[str, datetime], Any],
) -> None:
    from syncer.demo.run import DemoSync, check_report

    _, _, summary = planted
    sync = DemoSync(SYNC, "upsert", "", "email", "email", "default", "file", {}, split=SPLIT)
    lines, problems = check_report(lift_report(summary, low=0.5), summary, sync)
    assert problems == []
    assert lines[0].startswith("The report counts exactly the planted")
    assert lines[1] == "The report's 95% intervals against the planted truth:"
    rows = [line.split() for line in lines[3:]]
    assert [row[-2:] for row in rows] == [["holds", "it"]] * 4
    assert "[+1.5, +6.0]" in lines[3] and "+3.0" in lines[3]  # percentage points
    assert "[+18.8%, +75.0%]" in lines[4] and "+37.5%" in lines[4]
    assert all(len(line) <= 80 for line in lines[1:])

    report = lift_report(summary, low=1.5)
    report["phases"][0]["holdout"]["members"] -= 1  # a report that lost a member
    lines, problems = check_report(report, summary, sync)
    assert len(problems) == 1 and problems[0].startswith("holdout: the report counts")
    assert [line.split()[-2:] for line in lines[2:]] == [["MISSES", "it"]] * 4

    lines, problems = check_report(lift_report(summary, 0.5, enough=False), summary, sync)
    assert problems == [] and lines[1].startswith("Not enough data yet at this size")


def test_the_closing_check_catches_a_held_out_member_at_the_destination(tmp_path: Path) -> None:
    from syncer.demo.receiver import start_receiver
    from syncer.demo.run import load_syncs, verify

    path = tmp_path / "shop.db"
    shop.build(path, customers=1500)
    members = sorted(shop.segment_members(path)["inactive"])
    out = frozenset(m for m in members if held_out(m))
    target = tmp_path / "out.csv"
    mapping = tmp_path / "mappings"
    mapping.mkdir()
    (mapping / "ic.yaml").write_text(
        f"name: {SYNC}\n"
        "source: {query: select email from segment_inactive, key: email, key_type: email}\n"
        "mode: membership\n"
        "experiment: {holdout_percent: 10}\n"
        f"destination: {{connector: file, path: '{target}'}}\n"
    )
    (sync,) = load_syncs(mapping, {})
    assert sync.split == SPLIT and out
    server, _ = start_receiver()
    try:
        target.write_text("key\n" + "".join(f"{m}\n" for m in members if m not in out))
        good = verify(sync, path, server, "", set(), out)
        target.write_text("key\n" + "".join(f"{m}\n" for m in members))
        bad = verify(sync, path, server, "", set(), out)
        # Sent once and removed since: the members file is right, the change log tells.
        target.write_text("key\n" + "".join(f"{m}\n" for m in members if m not in out))
        one = min(out)
        log = target.with_name(target.name + ".changes.jsonl")
        log.write_text(
            json.dumps({"operation": "add", "key": one, "fields": {}})
            + "\n"
            + json.dumps({"operation": "remove", "key": one, "fields": {}})
            + "\n"
        )
        removed = verify(sync, path, server, "", set(), out)
    finally:
        server.shutdown()
        server.server_close()
    assert good.ok and good.note == f"ok, {len(out)} held out" and good.held_out == len(out)
    assert not bad.ok and bad.note == f"MISMATCH: {len(out)} held-out members sent"
    assert not removed.ok and removed.note == "MISMATCH: 1 held-out members sent"


def test_the_receiver_remembers_who_was_ever_sent() -> None:
    from syncer.demo.receiver import DemoReceiver

    receiver = DemoReceiver()
    record = {"key": "ada@example.com", "fields": {}}
    receiver.apply({"sync": "s", "operation": "add", "records": [record]})
    receiver.apply({"sync": "s", "operation": "remove", "records": [record]})
    assert receiver.members("s") == {} and receiver.sent("s") == {"ada@example.com"}


# -- the whole demo, with the report ------------------------------------------------------------


def test_the_demo_reports_the_planted_lift(tmp_path: Path) -> None:
    """`make demo` on a mid-sized shop: the held-out members are never sent, the report counts
    exactly what was planted, its intervals hold the truth, and the page is written."""
    if importlib.util.find_spec("syncer.cli_report") is None:  # found, not imported
        pytest.skip("`syncer report lift` (syncer.cli_report) is not merged yet")
    done = subprocess.run(
        [sys.executable, "-m", "syncer.demo", "run", "--dir", ".syncer/demo",
         "--customers", "20000", "--mappings", str(REPO / "mappings")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    flat = " ".join(out.split())  # the prose is wrapped to 80 columns
    assert "skipped" not in flat and "note:" not in flat and "MISMATCH" not in flat, out
    assert "The report counts exactly the planted members, conversions and revenue" in flat
    assert "The report's 95% intervals against the planted truth:" in out
    assert out.count("holds it") == 4 and "MISSES" not in out, out
    assert "The report with its charts is in .syncer/demo/lift.html" in flat
    page = (tmp_path / ".syncer/demo/lift.html").read_text(encoding="utf-8")
    assert "<svg" in page and "http://" not in page.replace("http://www.w3.org", "")

    # Independently of the demo's own check: nobody the documented hash holds out was sent,
    # and the engine's history puts every member in the hash's group.
    sent = [
        json.loads(line)["key"]
        for line in (tmp_path / ".syncer/demo/out/inactive_contacts.jsonl").open()
        if line.strip()
    ]
    assert sent and not [key for key in sent if held_out(key)]
    with closing(sqlite3.connect(tmp_path / ".syncer/demo/state.db")) as conn:
        history = conn.execute(
            "SELECT member_key, grp FROM syncer_membership WHERE sync = ?", (SYNC,)
        ).fetchall()
    assert history and all((grp == HOLDOUT) == held_out(key) for key, grp in history)
    shutil.rmtree(tmp_path / ".syncer", ignore_errors=True)
