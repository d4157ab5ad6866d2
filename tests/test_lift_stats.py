"""syncer.lift against statsmodels and scipy as oracles, its edge cases, and a fast seeded
calibration (the long one is bench/lift_calibration.py; the end-to-end one goes through the
warehouse SQL)."""

from __future__ import annotations

import json
import math
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from statsmodels.stats.power import NormalIndPower, zt_ind_solve_power
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportions_ztest,
)
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW, ttest_ind

from syncer import lift
from syncer.lift import GroupTotals, LiftSettings, analyse
from tests.lift_sim import calibrate

Z95 = stats.norm.ppf(0.975)
TOL = 1e-6


def totals(values: np.ndarray) -> GroupTotals:
    """A group's totals from its members' revenue (a member converted when it spent)."""
    return GroupTotals(
        len(values), int((values > 0).sum()), float(values.sum()), float((values**2).sum())
    )


def members(rng: np.random.Generator, n: int, p: float, mu: float = 3.5) -> np.ndarray:
    return rng.binomial(1, p, n) * rng.lognormal(mu, 1.0, n)


@pytest.fixture(scope="module")
def raw() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(16)
    return members(rng, 9_000, 0.055), members(rng, 1_000, 0.05)


# -- against the oracles -----------------------------------------------------------------------


@pytest.mark.parametrize(("x", "n"), [(0, 10), (1, 10), (10, 10), (50, 1000), (7, 23), (0, 1)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_matches_statsmodels(x: int, n: int, confidence: float) -> None:
    got = lift.wilson(x, n, lift._z(confidence))
    low, high = proportion_confint(x, n, alpha=1 - confidence, method="wilson")
    assert got.estimate == x / n
    assert got.low == pytest.approx(low, abs=TOL) and got.high == pytest.approx(high, abs=TOL)


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2"),
    [
        (56, 1000, 50, 1000),
        (990, 18_000, 100, 2_000),
        (0, 50, 0, 40),
        (0, 30, 5, 30),
        (30, 30, 29, 30),
        (3, 7, 1, 9),
    ],
)
def test_newcombe_difference_matches_statsmodels(x1: int, n1: int, x2: int, n2: int) -> None:
    got = lift.newcombe(x1, n1, x2, n2, Z95)
    low, high = confint_proportions_2indep(x1, n1, x2, n2, method="newcomb", compare="diff")
    assert got.estimate == pytest.approx(x1 / n1 - x2 / n2, abs=1e-12)
    assert got.low == pytest.approx(low, abs=TOL) and got.high == pytest.approx(high, abs=TOL)


@pytest.mark.parametrize(("x1", "n1", "x2", "n2"), [(990, 18_000, 100, 2_000), (3, 7, 1, 9)])
def test_pooled_z_p_value_matches_statsmodels(x1: int, n1: int, x2: int, n2: int) -> None:
    _, p = proportions_ztest([x1, x2], [n1, n2])
    assert lift.two_proportion_p(x1, n1, x2, n2) == pytest.approx(p, rel=TOL)


def test_conversion_analysis_matches_statsmodels(raw: tuple[np.ndarray, np.ndarray]) -> None:
    treated, holdout = totals(raw[0]), totals(raw[1])
    result = analyse(treated, holdout, LiftSettings(10)).as_dict()["conversion"]
    x1, n1, x2, n2 = treated.conversions, treated.members, holdout.conversions, holdout.members
    low, high = confint_proportions_2indep(x1, n1, x2, n2, method="newcomb")
    assert (result["difference"]["low"], result["difference"]["high"]) == pytest.approx(
        (low, high), abs=TOL
    )
    assert result["incremental"]["low"] == pytest.approx(low * n1, abs=TOL * n1)
    assert result["incremental"]["estimate"] == pytest.approx(x1 - x2 / n2 * n1)
    for group, (x, n) in (("treated", (x1, n1)), ("holdout", (x2, n2))):
        expected = proportion_confint(x, n, method="wilson")
        assert (result[group]["low"], result[group]["high"]) == pytest.approx(expected, abs=TOL)
    assert result["p_value"] == pytest.approx(proportions_ztest([x1, x2], [n1, n2])[1], rel=TOL)


def test_revenue_analysis_matches_welch_from_raw_members(
    raw: tuple[np.ndarray, np.ndarray],
) -> None:
    a, b = raw
    result = analyse(totals(a), totals(b), LiftSettings(10)).as_dict()["revenue"]
    compare = CompareMeans.from_data(a, b)
    low, high = compare.tconfint_diff(alpha=0.05, usevar="unequal")
    _, p, df = ttest_ind(a, b, usevar="unequal")
    assert result["difference"]["estimate"] == pytest.approx(a.mean() - b.mean(), rel=TOL)
    assert result["difference"]["low"] == pytest.approx(low, rel=TOL)
    assert result["difference"]["high"] == pytest.approx(high, rel=TOL)
    assert result["p_value"] == pytest.approx(p, rel=TOL)
    assert result["incremental"]["high"] == pytest.approx(high * len(a), rel=TOL)
    for group, values in (("treated", a), ("holdout", b)):
        expected = DescrStatsW(values).tconfint_mean(alpha=0.05)
        assert (result[group]["low"], result[group]["high"]) == pytest.approx(expected, rel=TOL)
    # The delta method, written from the raw members: Var(a̅/b̅) ≈ Var(a̅)/b̅² + Var(b̅)·a̅²/b̅⁴.
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va / b.mean() ** 2 + vb * a.mean() ** 2 / b.mean() ** 4)
    half = stats.t.ppf(0.975, df) * se
    relative = result["relative_lift"]
    assert relative["estimate"] == pytest.approx(a.mean() / b.mean() - 1, rel=TOL)
    assert relative["high"] - relative["estimate"] == pytest.approx(half, rel=TOL)


def test_relative_conversion_lift_is_the_delta_method(raw: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = (raw[0] > 0).astype(float), (raw[1] > 0).astype(float)
    result = analyse(totals(raw[0]), totals(raw[1]), LiftSettings(10)).conversion.relative_lift
    pa, pb = a.mean(), b.mean()
    va, vb = pa * (1 - pa) / len(a), pb * (1 - pb) / len(b)
    half = Z95 * math.sqrt(va / pb**2 + vb * pa**2 / pb**4)
    assert result.estimate == pytest.approx(pa / pb - 1, rel=TOL)
    assert (result.low, result.high) == pytest.approx((pa / pb - 1 - half, pa / pb - 1 + half))


@pytest.mark.parametrize(
    ("treated", "holdout", "percent"),
    [(9_000, 1_000, 10), (9_300, 700, 10), (5_000, 5_100, 50), (0, 10, 5)],
)
def test_sample_ratio_matches_scipy_chisquare(treated: int, holdout: int, percent: float) -> None:
    got = lift.sample_ratio(treated, holdout, percent / 100)
    n = treated + holdout
    expected = stats.chisquare([treated, holdout], [n * (1 - percent / 100), n * percent / 100])
    assert got.chi_square == pytest.approx(expected.statistic, rel=TOL)
    assert got.p_value == pytest.approx(expected.pvalue, rel=TOL, abs=1e-300)
    assert got.observed_holdout_share == holdout / n


@pytest.mark.parametrize(
    ("n_t", "n_h", "p"),
    [(19_000, 1_000, 0.05), (18_000, 2_000, 0.05), (500, 500, 0.3), (90_000, 10_000, 0.01)],
)
def test_mde_matches_statsmodels_power(n_t: int, n_h: int, p: float) -> None:
    treated = GroupTotals(n_t, round(n_t * p), 0.0, 0.0)
    holdout = GroupTotals(n_h, round(n_h * p), round(n_h * p) * 30.0, round(n_h * p) * 1000.0)
    mde = lift.minimum_detectable(treated, holdout, 0.95)
    effect = NormalIndPower().solve_power(nobs1=n_h, alpha=0.05, power=0.8, ratio=n_t / n_h)
    assert effect == pytest.approx(
        zt_ind_solve_power(nobs1=n_h, alpha=0.05, power=0.8, ratio=n_t / n_h), rel=1e-6
    )
    rate = holdout.conversions / n_h
    # statsmodels also counts the opposite tail's (negligible) power: equal within 0.1%.
    assert mde.conversion_absolute == pytest.approx(effect * math.sqrt(rate * (1 - rate)), rel=1e-3)
    assert mde.conversion_relative == pytest.approx(mde.conversion_absolute / rate)
    _, variance = lift.moments(holdout.revenue, holdout.revenue_sq, n_h)
    assert variance is not None
    assert mde.revenue_absolute == pytest.approx(effect * math.sqrt(variance), rel=1e-3)
    assert mde.revenue_relative == pytest.approx(mde.revenue_absolute / (holdout.revenue / n_h))


def test_mde_at_the_reference_point_is_about_two_points() -> None:
    # docs: 5% baseline, 1,000 held out against 19,000: about 2 points, about 40% relative.
    mde = lift.minimum_detectable(
        GroupTotals(19_000, 950, 0, 0), GroupTotals(1_000, 50, 0, 0), 0.95
    )
    assert mde.conversion_absolute == pytest.approx(0.02, abs=0.001)
    assert mde.conversion_relative == pytest.approx(0.40, abs=0.02)
    assert mde.revenue_absolute is None  # no revenue: no spread to detect anything against


# -- sample ratio, not enough data, edge cases -------------------------------------------------


def test_a_sample_ratio_mismatch_warns_that_the_result_cannot_be_trusted() -> None:
    result = analyse(GroupTotals(18_000, 990, 0, 0), GroupTotals(1_700, 85, 0, 0), LiftSettings(10))
    assert result.sample_ratio.mismatch and result.sample_ratio.p_value is not None
    assert result.sample_ratio.p_value < 0.001
    assert result.srm_warning is not None
    assert "cannot be trusted" in result.srm_warning and "10.0%" in result.srm_warning
    assert "join" in result.srm_warning and "1,700 of 19,700" in result.srm_warning
    assert result.as_dict()["srm_warning"] == result.srm_warning
    assert result.enough_data  # the numbers are still given, under the warning


def test_a_split_within_chance_does_not_warn() -> None:
    result = analyse(GroupTotals(18_100, 990, 0, 0), GroupTotals(1_980, 99, 0, 0), LiftSettings(10))
    assert not result.sample_ratio.mismatch and result.srm_warning is None


@pytest.mark.parametrize(
    ("holdout", "reason"),
    [
        (GroupTotals(40, 12, 400.0, 9000.0), "not enough data yet: 40 held-out members, need 100"),
        (
            GroupTotals(400, 3, 90.0, 2700.0),
            "not enough data yet: 3 conversions among held-out members, need 10",
        ),
        (
            GroupTotals(1, 1, 5.0, 25.0),
            "not enough data yet: 1 held-out member, need 100;"
            " 1 conversion among held-out members, need 10",
        ),
    ],
)
def test_not_enough_data_gives_counts_ratio_and_mde_but_no_result(
    holdout: GroupTotals, reason: str
) -> None:
    treated = GroupTotals(
        holdout.members * 9, holdout.conversions * 9, 9 * holdout.revenue, 9 * holdout.revenue_sq
    )
    result = analyse(treated, holdout, LiftSettings(10))
    assert not result.enough_data and result.reason == reason
    document = result.as_dict()
    assert document["members"] == {"treated": treated.members, "holdout": holdout.members}
    assert document["sample_ratio"]["p_value"] is not None
    assert document["mde"]["conversion_absolute"] is not None or holdout.members == 1
    for metric in ("conversion", "revenue"):
        assert document[metric]["holdout"]["estimate"] is not None
        assert document[metric]["p_value"] is None
        for key in ("difference", "relative_lift", "incremental"):
            assert document[metric][key] == {"estimate": None, "low": None, "high": None}
        for group in ("treated", "holdout"):
            assert document[metric][group]["low"] is None


EDGES = {
    "nobody at all": (GroupTotals(0, 0, 0, 0), GroupTotals(0, 0, 0, 0)),
    "no treated members": (GroupTotals(0, 0, 0, 0), GroupTotals(200, 20, 400.0, 9000.0)),
    "nobody converted": (GroupTotals(1800, 0, 0, 0), GroupTotals(200, 0, 0, 0)),
    "everybody converted": (
        GroupTotals(1800, 1800, 1800.0, 1800.0),
        GroupTotals(200, 200, 200.0, 200.0),
    ),
    "no revenue": (GroupTotals(1800, 90, 0, 0), GroupTotals(200, 10, 0, 0)),
    "one member each": (GroupTotals(1, 1, 3.0, 9.0), GroupTotals(1, 0, 0, 0)),
    "holdout never converts": (GroupTotals(1800, 90, 900.0, 9000.0), GroupTotals(200, 0, 0, 0)),
}


@pytest.mark.parametrize("name", EDGES)
def test_edge_cases_give_none_where_undefined_and_never_crash(name: str) -> None:
    treated, holdout = EDGES[name]
    result = analyse(
        treated, holdout, LiftSettings(10, min_holdout_members=0, min_holdout_conversions=0)
    )
    document = result.as_dict()
    json.dumps(document, allow_nan=False)  # None, never NaN or infinity
    conversion, revenue = document["conversion"], document["revenue"]
    if name == "nobody at all":
        assert document["sample_ratio"]["p_value"] is None and result.srm_warning is None
        assert conversion["treated"]["estimate"] is None
        assert document["mde"]["conversion_absolute"] is None
    if name == "no treated members":
        assert result.srm_warning is not None
        assert conversion["difference"]["estimate"] is None and revenue["p_value"] is None
    if name in ("nobody converted", "everybody converted"):
        assert conversion["difference"]["estimate"] == 0 and conversion["p_value"] is None
        assert conversion["difference"]["low"] < 0 < conversion["difference"]["high"]
        assert revenue["difference"]["low"] is None and revenue["p_value"] is None
    if name == "nobody converted":
        assert conversion["relative_lift"]["estimate"] is None
        assert document["mde"]["conversion_absolute"] is None
    if name == "no revenue":
        assert revenue["difference"]["estimate"] == 0 and revenue["difference"]["low"] is None
        assert revenue["relative_lift"]["estimate"] is None and revenue["p_value"] is None
        assert document["mde"]["revenue_absolute"] is None
        assert conversion["p_value"] is not None
    if name == "one member each":
        assert revenue["treated"] == {"estimate": 3.0, "low": None, "high": None}
        assert revenue["difference"] == {"estimate": 3.0, "low": None, "high": None}
    if name == "holdout never converts":
        assert conversion["relative_lift"]["estimate"] is None
        assert revenue["relative_lift"]["estimate"] is None
        assert revenue["difference"]["low"] is not None  # one group's variance is enough


@pytest.mark.parametrize("percent", [0, 100, -1, 150])
def test_a_split_outside_zero_to_hundred_is_refused(percent: float) -> None:
    with pytest.raises(ValueError, match="holdout_percent"):
        LiftSettings(percent)


def test_impossible_totals_are_refused() -> None:
    with pytest.raises(ValueError, match="12 conversions among 10 members"):
        GroupTotals(10, 12, 0, 0)
    assert GroupTotals.from_dict(GroupTotals(3, 1, 2.5, 6.25).as_dict()) == GroupTotals(
        3, 1, 2.5, 6.25
    )
    row = {"members": 5, "conversions": None, "revenue": None, "revenue_sq": Decimal("0")}
    assert GroupTotals.from_dict(row) == GroupTotals(5, 0, 0.0, 0.0)


# -- properties --------------------------------------------------------------------------------

revenues = st.lists(
    st.one_of(st.just(0.0), st.floats(0.01, 5_000, allow_nan=False)), min_size=2, max_size=60
)


@settings(max_examples=200, deadline=None)
@given(a=revenues, b=revenues, confidence=st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_every_interval_contains_its_point_estimate(
    a: list[float], b: list[float], confidence: float
) -> None:
    result = analyse(totals(np.array(a)), totals(np.array(b)), LiftSettings(10, 0, 0, confidence))
    for metric in (result.conversion, result.revenue):
        for interval in (
            metric.treated,
            metric.holdout,
            metric.difference,
            metric.relative_lift,
            metric.incremental,
        ):
            if interval.low is not None and interval.high is not None:
                assert interval.estimate is not None
                slack = 1e-9 * max(1.0, abs(interval.estimate))
                assert interval.low - slack <= interval.estimate <= interval.high + slack


@settings(max_examples=300, deadline=None)
@given(a=revenues, b=revenues)
def test_welch_p_below_005_iff_zero_outside_the_difference_interval(
    a: list[float], b: list[float]
) -> None:
    revenue = analyse(totals(np.array(a)), totals(np.array(b)), LiftSettings(10, 0, 0)).revenue
    if revenue.p_value is None:
        assert revenue.difference.low is None
        return
    low, high = revenue.difference.low, revenue.difference.high
    assert low is not None and high is not None
    if abs(revenue.p_value - 0.05) > 1e-9:
        assert (revenue.p_value < 0.05) == (low > 0 or high < 0)


# -- calibration (fast, seeded; bench/lift_calibration.py is the long one) ---------------------


def test_intervals_cover_the_planted_lift_about_95_percent_of_the_time() -> None:
    # 5% against 5.5% (+10%), ~2,000 held out of 20,000; Monte Carlo SE at R=300: 1.3 points.
    result = calibrate(np.random.default_rng(20261208), 300, 20_000, 0.1, 0.05, 0.10)
    assert 0.92 <= result.conversion_difference <= 0.98, result
    assert 0.92 <= result.revenue_difference <= 0.98, result
    assert 0.92 <= result.conversion_relative <= 0.98, result
    assert 0.91 <= result.revenue_relative <= 0.98, result
    assert result.srm_alarms <= 0.01, result


def test_an_aa_experiment_is_significant_about_5_percent_of_the_time() -> None:
    result = calibrate(np.random.default_rng(1208), 300, 20_000, 0.1, 0.05, 0.0)
    assert 0.02 <= result.conversion_significant <= 0.09, result
    assert 0.02 <= result.revenue_significant <= 0.09, result
    assert result.srm_alarms <= 0.01, result


def test_dropping_3_percent_of_a_large_holdout_trips_the_sample_ratio_check() -> None:
    # Detectable only with enough members: the shortfall (3% of ~50,000) must dwarf chance.
    result = calibrate(np.random.default_rng(3), 50, 500_000, 0.1, 0.05, 0.0, drop_holdout=0.03)
    assert result.srm_alarms >= 0.95, result
