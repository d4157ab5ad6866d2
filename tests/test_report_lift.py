"""`syncer report lift`: the warehouse SQL (lift_query) on SQLite, DuckDB and PostgreSQL, and
the real CLI end to end: text, JSON, HTML and every bad input."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from syncer.holdout import GLOBAL_HOLDOUT, HOLDOUT, TREATED
from syncer.lift import GroupTotals as Totals
from syncer.lift_query import measure
from syncer.mapping import load_all
from syncer.settings import load_settings
from syncer.state import state_engine
from tests.lift_world import (
    META,
    T0,
    World,
    make_world,
    seed_history,
    write_mapping,
    write_outcomes,
)

DAY = dt.timedelta(days=1)


def expected(
    members: dict[str, tuple[str, dt.datetime]],
    outcomes: list[tuple[str, dt.datetime, float | None]],
    window_days: int,
    as_of: dt.datetime,
    key: Any = lambda k: k.strip().lower(),
) -> dict[str, Totals]:
    """The totals computed directly, row by row, in Python."""
    revenue: dict[str, float] = {}
    for raw, at, amount in outcomes:
        k = key(raw)
        if k not in members:
            continue
        start = members[k][1]
        end = min(start + dt.timedelta(days=window_days), as_of)
        if start <= at < end:
            revenue[k] = revenue.get(k, 0.0) + (amount or 0.0)
    out = {}
    for grp in (TREATED, HOLDOUT):
        keys = [k for k, (g, _) in members.items() if g == grp]
        values = [revenue[k] for k in keys if k in revenue]
        out[grp] = Totals(len(keys), len(values), sum(values), sum(v * v for v in values))
    return out


def _close(a: Totals, b: Totals) -> None:
    assert (a.members, a.conversions) == (b.members, b.conversions)
    assert a.revenue == pytest.approx(b.revenue, rel=1e-9, abs=1e-9)
    assert a.revenue_sq == pytest.approx(b.revenue_sq, rel=1e-9, abs=1e-9)


def _story(
    seed: int = 7,
) -> tuple[
    list[tuple[str, str, dt.datetime]],
    dict[str, tuple[str, dt.datetime]],
    list[tuple[str, dt.datetime, float | None]],
]:
    """Members with edge cases, and outcome rows around their windows."""
    rng = random.Random(seed)
    rows: list[tuple[str, str, dt.datetime]] = []
    first: dict[str, tuple[str, dt.datetime]] = {}
    for i in range(400):
        key = f"user{i}@example.com"
        grp = HOLDOUT if i % 5 == 0 else TREATED
        entered = T0 + dt.timedelta(hours=rng.randrange(0, 24 * 20))
        rows.append((key, grp, entered))
        first[key] = (grp, entered)
        if i % 17 == 0:  # re-entry: a later stay; the first entry counts
            rows.append((key, grp, entered + 12 * DAY))
    outcomes: list[tuple[str, dt.datetime, float | None]] = []
    for key, (_, entered) in first.items():
        for _ in range(rng.choice([0, 0, 1, 2])):
            at = entered + dt.timedelta(hours=rng.uniform(-48, 24 * 34))
            outcomes.append((key, at, round(rng.lognormvariate(3, 1), 2)))
    k0, (_, e0) = next(iter(first.items()))
    outcomes += [
        (k0.upper() + "  ", e0 + DAY, 10.0),  # case and spaces: the same member
        ("user1@example.com", first["user1@example.com"][1], None),  # at entry, NULL revenue
        ("user2@example.com", first["user2@example.com"][1] + 30 * DAY, 99.0),  # window end
        ("stranger@example.com", T0 + DAY, 5.0),
    ]
    return rows, first, outcomes


def _measure(world: World, phase: int = 1, as_of: dt.datetime | None = None) -> Any:
    (sync,) = load_all(world.root / "mappings")
    settings = load_settings(None)
    return measure(
        sync,
        settings,
        state_engine(world.state),
        phase,
        as_of=as_of or T0 + 400 * DAY,
        page_size=37,
    )


@pytest.fixture(params=["sqlite", "duckdb", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        w = make_world(tmp_path, url)
    else:
        w = make_world(tmp_path, request.param)
    for name, value in w.env.items():
        monkeypatch.setenv(name, value)
    yield w


def test_totals_and_curve_match_a_direct_computation(world: World) -> None:
    write_mapping(world.root / "mappings", window=30)
    rows, first, outcomes = _story()
    seed_history(world.state, "vip", rows)
    # Not members of phase 1's comparison: another phase, the global holdout, another sync.
    seed_history(world.state, "vip", [("user3@example.com", TREATED, T0)], phase=2)
    seed_history(world.state, "vip", [("g@example.com", GLOBAL_HOLDOUT, T0)], phase=3)
    seed_history(world.state, "other", [("user4@example.com", HOLDOUT, T0)])
    outcomes.append(("g@example.com", T0 + DAY, 1000.0))
    event_type = "timestamptz" if "postgresql" in world.warehouse else "TIMESTAMP"
    write_outcomes(world.warehouse, outcomes, event_type=event_type)
    data = _measure(world)
    want = expected(first, outcomes, 30, T0 + 400 * DAY)
    _close(data.treated, want[TREATED])
    _close(data.holdout, want[HOLDOUT])
    assert data.treated.members == 320 and data.holdout.members == 80
    last = data.curve[-1]
    assert len(data.curve) == 30 and [d["day"] for d in data.curve] == list(range(30))
    assert last["treated_conversion"] == pytest.approx(want[TREATED].conversions / 320)
    assert last["holdout_revenue"] == pytest.approx(want[HOLDOUT].revenue / 80)
    for a, b in zip(data.curve, data.curve[1:], strict=False):
        assert b["treated_conversion"] >= a["treated_conversion"]
    # --as-of caps every window and drops members who entered after it.
    as_of = T0 + 10 * DAY
    capped = _measure(world, as_of=as_of)
    early = {k: v for k, v in first.items() if v[1] < as_of}
    want = expected(early, outcomes, 30, as_of)
    _close(capped.treated, want[TREATED])
    _close(capped.holdout, want[HOLDOUT])


def test_hashed_key_destinations_hash_the_outcome_keys(world: World) -> None:
    write_mapping(world.root / "mappings", destination=META)
    rows, first, outcomes = _story(3)

    def digest(key: str) -> str:
        return hashlib.sha256(key.strip().lower().encode()).hexdigest()

    seed_history(world.state, "vip", [(digest(k), g, e) for k, g, e in rows])
    event_type = "timestamptz" if "postgresql" in world.warehouse else "TIMESTAMP"
    write_outcomes(world.warehouse, outcomes, event_type=event_type)
    data = _measure(world)
    want = expected(
        {digest(k): v for k, v in first.items()}, outcomes, 30, T0 + 400 * DAY, key=digest
    )
    assert want[TREATED].conversions > 50
    _close(data.treated, want[TREATED])
    _close(data.holdout, want[HOLDOUT])


@pytest.mark.parametrize("backend", ["sqlite", "duckdb"])
def test_date_events_count_from_midnight(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = make_world(tmp_path, backend)
    for name, value in world.env.items():
        monkeypatch.setenv(name, value)
    write_mapping(world.root / "mappings", window=2)
    entered = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    seed_history(world.state, "vip", [("a@x.io", TREATED, entered), ("b@x.io", HOLDOUT, entered)])
    write_outcomes(
        world.warehouse,
        [
            ("a@x.io", dt.date(2026, 1, 1), 1.0),
            ("a@x.io", dt.date(2026, 1, 2), 2.0),
            ("a@x.io", dt.date(2026, 1, 3), 4.0),
            ("b@x.io", dt.date(2025, 12, 31), 8.0),
        ],
        event_type="DATE",
    )
    data = _measure(world)
    assert data.treated == Totals(1, 1, 3.0, 9.0)
    assert data.holdout == Totals(1, 0, 0.0, 0.0)
    assert data.curve[0]["treated_revenue"] == 1.0 and data.curve[1]["treated_revenue"] == 3.0


def test_warehouse_tables_are_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = make_world(tmp_path, "sqlite")
    for name, value in world.env.items():
        monkeypatch.setenv(name, value)
    write_mapping(world.root / "mappings")
    rows, _, outcomes = _story()
    seed_history(world.state, "vip", rows)
    write_outcomes(world.warehouse, outcomes)
    _measure(world)
    engine = sa.create_engine(world.warehouse)
    assert sorted(sa.inspect(engine).get_table_names()) == ["orders", "segment"]
    engine.dispose()


# -- the real CLI ---------------------------------------------------------------------------

TRUE_P = {HOLDOUT: 0.05, TREATED: 0.07}


def _planted(
    world: World, n: int = 20_000, seed: int = 11
) -> tuple[dict[str, tuple[str, dt.datetime]], list[tuple[str, dt.datetime, float | None]]]:
    """``n`` members split by the real assignment (10% holdout), conversion 5% held out and
    7% treated, lognormal order values; history and outcomes written."""
    from syncer.holdout import Split

    split = Split("vip", 1, 10.0)
    rng = random.Random(seed)
    first: dict[str, tuple[str, dt.datetime]] = {}
    outcomes: list[tuple[str, dt.datetime, float | None]] = []
    for i in range(n):
        key = f"member{i}@shop.example"
        grp = HOLDOUT if split.holds(key) else TREATED
        entered = T0 + dt.timedelta(minutes=rng.randrange(0, 60 * 24 * 10))
        first[key] = (grp, entered)
        if rng.random() < TRUE_P[grp]:
            for _ in range(1 + (rng.random() < 0.3)):
                at = entered + dt.timedelta(hours=rng.uniform(0, 24 * 29))
                outcomes.append(
                    (key.upper() if i % 7 == 0 else key, at, round(rng.lognormvariate(3.5, 0.8), 2))
                )
        if rng.random() < 0.01:  # noise outside the window
            outcomes.append((key, entered - DAY, 50.0))
    seed_history(world.state, "vip", [(k, g, e) for k, (g, e) in first.items()])
    write_outcomes(world.warehouse, outcomes)
    return first, outcomes


@pytest.fixture(params=["sqlite", "duckdb"])
def file_world(request: pytest.FixtureRequest, tmp_path: Path) -> World:
    world = make_world(tmp_path, request.param)
    write_mapping(world.root / "mappings")
    return world


def test_report_recovers_a_planted_lift(file_world: World) -> None:
    world = file_world
    first, outcomes = _planted(world)
    as_of = "2026-03-01"
    code, doc, _, err = world.cli("report", "lift", "vip", "--as-of", as_of, "--json")
    assert code == 0, err
    (phase,) = doc["phases"]
    want = expected(first, outcomes, 30, dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
    for grp in (TREATED, HOLDOUT):
        got = Totals(**phase[grp])
        _close(got, want[grp])
    assert doc["sync"] == "vip" and doc["connector"] == "webhook" and doc["window_days"] == 30
    assert phase["phase"] == 1 and phase["holdout_percent"] == 10.0
    assert len(phase["curve"]) == 30
    assert phase["curve"][-1]["holdout_conversion"] == pytest.approx(
        want[HOLDOUT].conversions / want[HOLDOUT].members
    )
    analysis = phase["analysis"]
    assert analysis["enough_data"] is True
    diff = analysis["conversion"]["difference"]
    assert diff["low"] < TRUE_P[TREATED] - TRUE_P[HOLDOUT] < diff["high"] and diff["low"] > 0
    assert analysis["srm_warning"] is None and analysis["sample_ratio"]["mismatch"] is False
    # The numbers are syncer.lift's analysis of the totals the warehouse returned.
    from syncer.lift import GroupTotals, LiftSettings, analyse

    direct = analyse(
        GroupTotals(**want[TREATED].as_dict()),
        GroupTotals(**want[HOLDOUT].as_dict()),
        LiftSettings(10.0),
    ).as_dict()
    for metric in ("conversion", "revenue"):
        for part in ("treated", "holdout", "difference", "relative_lift", "incremental"):
            assert analysis[metric][part] == pytest.approx(direct[metric][part])
        assert analysis[metric]["p_value"] == pytest.approx(direct[metric]["p_value"])

    code, _, out, err = world.cli("report", "lift", "vip", "--as-of", as_of)
    assert code == 0, err
    assert "vip phase 1: 10% holdout" in out
    assert "Treated members converted" in out and "significant at 5%" in out
    for label in (
        "members",
        "conversion",
        "revenue/member",
        "added conversions",
        "added revenue",
        "Sample ratio",
        "80% power",
    ):
        assert label in out
    assert max(len(line) for line in out.splitlines()) <= 80

    page = world.root / "out" / "lift.html"
    page.parent.mkdir()
    code, _, _, err = world.cli("report", "lift", "vip", "--as-of", as_of, "--html", str(page))
    assert code == 0, err
    body = page.read_text()
    assert "<svg" in body and "vip" in body
    assert 'src="http' not in body and 'href="http' not in body and "@import" not in body
    assert [p.name for p in page.parent.iterdir()] == ["lift.html"]
    # A page to share: readable as a file written by `open()` would be, not private.
    assert page.stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_not_enough_data_is_a_report(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    write_mapping(world.root / "mappings")
    seed_history(world.state, "vip", [("a@x.io", TREATED, T0), ("b@x.io", HOLDOUT, T0)])
    write_outcomes(world.warehouse, [("a@x.io", T0 + DAY, 5.0)])
    code, doc, _, err = world.cli("report", "lift", "vip", "--json")
    assert code == 0, err
    assert doc["phases"][0]["analysis"]["enough_data"] is False
    code, _, out, _ = world.cli("report", "lift", "vip")
    assert code == 0 and "not enough data yet" in out.lower()


def test_phases_newest_first_and_one_by_flag(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    write_mapping(world.root / "mappings", experiment="experiment: {holdout_percent: 20, phase: 2}")
    seed_history(world.state, "vip", [("a@x.io", TREATED, T0), ("b@x.io", HOLDOUT, T0)])
    seed_history(world.state, "vip", [("a@x.io", HOLDOUT, T0 + 5 * DAY)], phase=2, percent=20)
    write_outcomes(world.warehouse, [])
    code, doc, _, err = world.cli("report", "lift", "vip", "--json")
    assert code == 0, err
    assert [p["phase"] for p in doc["phases"]] == [2, 1]
    assert [p["holdout_percent"] for p in doc["phases"]] == [20.0, 10.0]
    code, doc, _, _ = world.cli("report", "lift", "vip", "--json", "--phase", "1")
    assert [p["phase"] for p in doc["phases"]] == [1]
    code, _, _out, err = world.cli("report", "lift", "vip", "--phase", "3")
    assert code == 2 and "phase 3" in err and "phases with history: 1, 2" in err


def _bad(world: World, *args: str) -> tuple[int, str]:
    page = world.root / "never.html"
    code, _, _out, err = world.cli("report", "lift", *args, "--html", str(page))
    assert not page.exists()
    return code, err


def test_bad_input(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    mappings = world.root / "mappings"
    write_mapping(mappings)
    write_outcomes(world.warehouse, [])
    # Unknown sync: a usage error naming the nearest, as `sync now` does.
    code, err = _bad(world, "vpi")
    assert code == 2 and "'vpi'" in err and "vip?" in err
    # No history yet: no state database at all (and none is created), then an empty one.
    code, err = _bad(world, "vip")
    assert code == 1 and "no membership history for vip yet: run it first" in err
    assert not (world.root / "state.db").exists()
    state_engine(world.state)
    code, err = _bad(world, "vip")
    assert code == 1 and "no membership history for vip yet: run it first" in err
    seed_history(world.state, "vip", [("a@x.io", TREATED, T0)])
    # No measurement block: 78 naming the file.
    write_mapping(mappings, measurement="")
    code, err = _bad(world, "vip")
    assert code == 78 and "vip.yaml" in err and "measurement" in err
    # Outcomes query without a column: 78 naming the column and the field.
    write_mapping(
        mappings,
        measurement="measurement:\n  outcomes: select member_key, event_at from orders",
    )
    code, err = _bad(world, "vip")
    assert code == 78 and "'revenue'" in err and "measurement.outcomes" in err
    assert "vip.yaml" in err
    # A window of 0 days: 78 naming the field and the file.
    write_mapping(
        mappings,
        measurement="measurement:\n  outcomes: select 1\n  window_days: 0",
    )
    code, err = _bad(world, "vip")
    assert code == 78 and "window_days" in err and "vip.yaml" in err
    # An outcomes query the warehouse refuses: 78.
    write_mapping(mappings, measurement="measurement:\n  outcomes: select * from nosuch")
    code, err = _bad(world, "vip")
    assert code == 78 and "measurement.outcomes" in err and "nosuch" in err
    # No experiment block and no history.
    write_mapping(mappings, name="plain", experiment="")
    code, err = _bad(world, "plain")
    assert code == 1 and "no membership history for plain yet" in err
    # Warehouse unreachable: 75.
    write_mapping(mappings)
    world.warehouse = "postgresql+psycopg://nobody@127.0.0.1:9/none"
    code, err = _bad(world, "vip")
    assert code == 75 and "warehouse" in err


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
