"""Simulated experiments for calibrating syncer.lift: the shared part of the fast seeded check
(tests/test_lift_stats.py) and its long version (bench/lift_calibration.py).

A member is held out with probability ``holdout_share`` (what the hash assignment gives),
converts with probability ``p_holdout`` (holdout) or ``p_holdout * (1 + lift)`` (treated), and
a converter spends one lognormal order value. So both the conversion rate and the revenue per
member carry the same true relative lift, and the true differences are known exactly.
Drawing the counts and then only the converters' order values gives the same totals, in
distribution, as drawing every member, at a fraction of the cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from syncer.lift import GroupTotals, LiftSettings, PhaseLift, analyse


def simulate(
    rng: np.random.Generator,
    n: int,
    holdout_share: float,
    p_holdout: float,
    lift: float,
    *,
    mu: float = 3.5,
    sigma: float = 1.0,
    drop_holdout: float = 0.0,
) -> tuple[GroupTotals, GroupTotals]:
    """One experiment of ``n`` members: (treated, holdout) totals. ``drop_holdout`` loses that
    share of the holdout at random (a planted join bug the sample-ratio check must catch)."""
    held_out = int(rng.binomial(n, holdout_share))
    treated = n - held_out
    if drop_holdout:
        held_out -= int(rng.binomial(held_out, drop_holdout))
    return (
        _group(rng, treated, p_holdout * (1 + lift), mu, sigma),
        _group(rng, held_out, p_holdout, mu, sigma),
    )


def _group(
    rng: np.random.Generator, members: int, p: float, mu: float, sigma: float
) -> GroupTotals:
    conversions = int(rng.binomial(members, p))
    orders = rng.lognormal(mu, sigma, conversions)
    return GroupTotals(members, conversions, float(orders.sum()), float((orders**2).sum()))


@dataclass(frozen=True)
class Truth:
    """The true effects of a simulated experiment."""

    conversion_difference: float
    revenue_difference: float
    relative_lift: float


def truth(p_holdout: float, lift: float, *, mu: float = 3.5, sigma: float = 1.0) -> Truth:
    order_value = math.exp(mu + sigma * sigma / 2)
    difference = p_holdout * lift
    return Truth(difference, difference * order_value, lift)


@dataclass(frozen=True)
class Calibration:
    """Shares over ``reps`` experiments: interval coverage, significance, sample-ratio alarms."""

    reps: int
    conversion_difference: float
    revenue_difference: float
    conversion_relative: float
    revenue_relative: float
    conversion_significant: float
    revenue_significant: float
    srm_alarms: float


def _covers(low: float | None, high: float | None, value: float) -> bool:
    return low is not None and high is not None and low <= value <= high


def calibrate(
    rng: np.random.Generator,
    reps: int,
    n: int,
    holdout_share: float,
    p_holdout: float,
    lift: float,
    *,
    mu: float = 3.5,
    sigma: float = 1.0,
    drop_holdout: float = 0.0,
    confidence: float = 0.95,
) -> Calibration:
    settings = LiftSettings(holdout_share * 100, confidence=confidence)
    true = truth(p_holdout, lift, mu=mu, sigma=sigma)
    alpha = 1 - confidence
    counts = dict.fromkeys(
        ("cd", "rd", "cr", "rr", "cs", "rs", "srm"),
        0,
    )
    for _ in range(reps):
        treated, holdout = simulate(
            rng, n, holdout_share, p_holdout, lift, mu=mu, sigma=sigma, drop_holdout=drop_holdout
        )
        result: PhaseLift = analyse(treated, holdout, settings)
        c, r = result.conversion, result.revenue
        counts["cd"] += _covers(c.difference.low, c.difference.high, true.conversion_difference)
        counts["rd"] += _covers(r.difference.low, r.difference.high, true.revenue_difference)
        counts["cr"] += _covers(c.relative_lift.low, c.relative_lift.high, true.relative_lift)
        counts["rr"] += _covers(r.relative_lift.low, r.relative_lift.high, true.relative_lift)
        counts["cs"] += c.p_value is not None and c.p_value < alpha
        counts["rs"] += r.p_value is not None and r.p_value < alpha
        counts["srm"] += result.sample_ratio.mismatch
    share = {key: value / reps for key, value in counts.items()}
    return Calibration(
        reps,
        share["cd"],
        share["rd"],
        share["cr"],
        share["rr"],
        share["cs"],
        share["rs"],
        share["srm"],
    )


def report_document(
    rng: np.random.Generator,
    *,
    sync: str = "vip_customers",
    n: int = 20_000,
    holdout_percent: float = 10.0,
    p_holdout: float = 0.05,
    lift: float = 0.10,
    window_days: int = 30,
    drop_holdout: float = 0.0,
    settings: LiftSettings | None = None,
) -> dict[str, object]:
    """A ``syncer report lift --json`` document of one simulated phase, with a plausible
    cumulative curve (conversions arrive at a decaying daily rate over the window)."""
    treated, holdout = simulate(
        rng, n, holdout_percent / 100, p_holdout, lift, drop_holdout=drop_holdout
    )
    analysis = analyse(treated, holdout, settings or LiftSettings(holdout_percent))
    arrived = [1 - math.exp(-(day + 1) / 8) for day in range(window_days)]
    share = [a / arrived[-1] for a in arrived]

    def per_member(total: float, members: int, day: int) -> float:
        return total / members * share[day] if members else 0.0

    curve = [
        {
            "day": day,
            "treated_conversion": per_member(treated.conversions, treated.members, day),
            "holdout_conversion": per_member(holdout.conversions, holdout.members, day),
            "treated_revenue": per_member(treated.revenue, treated.members, day),
            "holdout_revenue": per_member(holdout.revenue, holdout.members, day),
        }
        for day in range(window_days)
    ]
    return {
        "sync": sync,
        "connector": "hubspot",
        "window_days": window_days,
        "generated_at": "2026-12-08T03:00:00+00:00",
        "phases": [
            {
                "phase": 1,
                "holdout_percent": holdout_percent,
                "started_at": "2026-10-01T00:00:00+00:00",
                "treated": treated.as_dict(),
                "holdout": holdout.as_dict(),
                "analysis": analysis.as_dict(),
                "curve": curve,
            }
        ],
    }
