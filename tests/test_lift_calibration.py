"""Calibration end to end, fast and seeded (issue 16, point 5): members split by the real
hash, a planted lift written as outcome rows to a DuckDB warehouse, the real report path
(lift_query's SQL + syncer.lift) and the CLI once. The heavy version, R = 1000, is
bench/lift_e2e_calibration.py; its numbers are in docs/measurement/report.md."""

from __future__ import annotations

from pathlib import Path

from tests.lift_simulation import Calibration, Tally, Truth

R = 100


def test_intervals_cover_the_planted_lift(tmp_path: Path) -> None:
    """R = 100 draws of outcomes with conversion 5% -> 5.5% (+10%), about 2,000 held out of
    8,000: each 95% interval covers the truth 88-99 times (Monte Carlo SE 2.2 points at R
    = 100; the bench pins it within 93-97% at R = 1000)."""
    sim = Calibration(tmp_path / "cal", members=8_000, holdout_percent=25.0, seed=16)
    truth = Truth()
    tally = Tally()
    for r in range(R):
        tally.add(sim.repetition(r, truth), truth)
    assert tally.not_enough == 0
    for name in truth.targets():
        assert 0.88 <= tally.rate(tally.covered, name) <= 0.99, (name, tally.covered)
    assert tally.srm_alarms <= 1  # the split is the configured one: ~0.1% alarm


def test_a_a_is_significant_about_5_percent_of_the_time(tmp_path: Path) -> None:
    sim = Calibration(tmp_path / "aa", members=8_000, holdout_percent=25.0, seed=61)
    truth = Truth(p_holdout=0.05, p_treated=0.05)
    tally = Tally()
    for r in range(R):
        tally.add(sim.repetition(r, truth), truth)
    for metric in ("conversion", "revenue"):
        assert tally.significant[metric] <= 12, tally.significant  # 5 expected, SE 2.2
    assert tally.srm_alarms <= 1


def test_a_join_bug_dropping_3_percent_of_the_holdout_trips_the_srm_warning(
    tmp_path: Path,
) -> None:
    """The real CLI once: 120,000 members, 50% holdout, 3% of it lost (z about 5, p about
    1e-6: caught with power near 99%)."""
    sim = Calibration(tmp_path / "srm", members=120_000, holdout_percent=50.0, seed=3)
    sim.outcomes(Truth())
    sim.drop_holdout(0.03)
    code, _, out, err = sim.world.cli("report", "lift", "vip", "--as-of", "2026-03-02")
    assert code == 0, err
    assert "WARNING: Sample ratio mismatch" in out and "cannot be trusted" in out
