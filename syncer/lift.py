"""Lift statistics: treated against holdout, from per-group totals only.

The warehouse returns four numbers per group (members, conversions, Σrevenue, Σrevenue²),
so no member's row leaves it; everything below is computed from those totals. Members are
counted by the group they were assigned (intention to treat), whether or not the destination
accepted them. The formulas are written out here (short, and each one tested against
statsmodels as an oracle in tests/test_lift_stats.py); scipy only supplies the distributions.
The methods, and what the numbers do not mean, are in docs/measurement/statistics.md.

``PhaseLift.as_dict()`` keys (every number a float or int, ``None`` where undefined):

- ``enough_data`` (bool), ``reason``: why not (``"not enough data yet: 40 held-out members,
  need 100"``) or ``None``; ``confidence`` (0.95); ``members``: ``{"treated", "holdout"}``.
- ``sample_ratio``: ``expected_holdout_share``, ``observed_holdout_share``, ``chi_square``,
  ``p_value`` (chi-square, 1 df, of the group sizes against the configured split),
  ``mismatch`` (p < 0.001); ``srm_warning``: the text to show when it is, else ``None``.
- ``conversion`` and ``revenue``, each: ``treated`` and ``holdout`` (the group's rate or revenue
  per member: ``{"estimate", "low", "high"}``), ``difference`` (treated - holdout),
  ``relative_lift`` (treated / holdout - 1), ``incremental`` (difference x treated members:
  conversions or revenue the treatment brought), all ``{"estimate", "low", "high"}``, and
  ``p_value`` (two-sided, of the difference). Conversion: Wilson intervals per group, Newcombe
  (hybrid score) for the difference, pooled two-proportion z test. Revenue: t intervals per
  group, Welch for the difference. Relative lifts: delta method.
- ``mde``: ``power`` (0.8), ``conversion_absolute``, ``conversion_relative`` (at the holdout's
  observed rate), ``revenue_absolute``, ``revenue_relative`` (at the holdout's observed mean
  and spread): the smallest true effect these group sizes detect with that power.

Without enough data (holdout members or conversions below the settings' minimums), only the
counts, the groups' point estimates, the sample-ratio check and the MDE are given: every
interval, difference, lift and p-value is ``None``, so nothing reads as a result. Undefined
values are ``None`` too, never NaN: a group with no members has no rate, a holdout with no
conversions (or revenue) has no relative lift, a difference with zero variance has no interval
or p-value, and a group of one member has no revenue interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: Sample-ratio alarm threshold (GrowthBook's and Eppo's default): at p below this the split
#: is so far from the configured one that chance is not a credible explanation.
SRM_P_VALUE = 0.001
#: Power at which the minimum detectable effect is given.
POWER = 0.8


@dataclass(frozen=True, slots=True)
class GroupTotals:
    """One group's totals over a phase: what the warehouse's aggregate query returns."""

    members: int = 0
    conversions: int = 0
    revenue: float = 0.0
    revenue_sq: float = 0.0

    def __post_init__(self) -> None:
        if self.members < 0 or not 0 <= self.conversions <= self.members:
            raise ValueError(
                f"group totals out of range: {self.conversions} conversions"
                f" among {self.members} members"
            )
        if self.revenue_sq < 0:
            raise ValueError(f"sum of squared revenue is negative: {self.revenue_sq}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> GroupTotals:
        """From a row or JSON object; a NULL sum (SQL's SUM over no rows) counts as 0, and
        Decimal (PostgreSQL's numeric) is taken as float."""
        return cls(
            members=int(raw.get("members") or 0),
            conversions=int(raw.get("conversions") or 0),
            revenue=float(raw.get("revenue") or 0),
            revenue_sq=float(raw.get("revenue_sq") or 0),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "members": self.members,
            "conversions": self.conversions,
            "revenue": self.revenue,
            "revenue_sq": self.revenue_sq,
        }


@dataclass(frozen=True, slots=True)
class LiftSettings:
    """The configured split and the minimum sample below which no result is given."""

    holdout_percent: float
    min_holdout_members: int = 100
    min_holdout_conversions: int = 10
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if not 0 < self.holdout_percent < 100:
            raise ValueError(f"holdout_percent must be between 0 and 100: {self.holdout_percent}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be between 0 and 1: {self.confidence}")


@dataclass(frozen=True, slots=True)
class Estimate:
    """A point estimate with its interval; ``None`` where it is undefined or withheld."""

    estimate: float | None
    low: float | None = None
    high: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high}

    def scaled(self, factor: float) -> Estimate:
        return Estimate(*(None if v is None else v * factor for v in self._values()))

    def _values(self) -> tuple[float | None, float | None, float | None]:
        return (self.estimate, self.low, self.high)


NONE = Estimate(None)


@dataclass(frozen=True, slots=True)
class MetricLift:
    """Treated against holdout on one metric (conversion rate or revenue per member)."""

    treated: Estimate
    holdout: Estimate
    difference: Estimate = NONE
    relative_lift: Estimate = NONE
    incremental: Estimate = NONE
    p_value: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "treated": self.treated.as_dict(),
            "holdout": self.holdout.as_dict(),
            "difference": self.difference.as_dict(),
            "relative_lift": self.relative_lift.as_dict(),
            "incremental": self.incremental.as_dict(),
            "p_value": self.p_value,
        }


@dataclass(frozen=True, slots=True)
class SampleRatio:
    """The observed split against the configured one (chi-square, 1 degree of freedom)."""

    expected_holdout_share: float
    observed_holdout_share: float | None
    chi_square: float | None
    p_value: float | None

    @property
    def mismatch(self) -> bool:
        return self.p_value is not None and self.p_value < SRM_P_VALUE

    def as_dict(self) -> dict[str, Any]:
        return {
            "expected_holdout_share": self.expected_holdout_share,
            "observed_holdout_share": self.observed_holdout_share,
            "chi_square": self.chi_square,
            "p_value": self.p_value,
            "mismatch": self.mismatch,
        }


@dataclass(frozen=True, slots=True)
class MinimumDetectable:
    """The smallest true effect the group sizes detect with ``power`` (two-sided test)."""

    power: float
    conversion_absolute: float | None
    conversion_relative: float | None
    revenue_absolute: float | None
    revenue_relative: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "power": self.power,
            "conversion_absolute": self.conversion_absolute,
            "conversion_relative": self.conversion_relative,
            "revenue_absolute": self.revenue_absolute,
            "revenue_relative": self.revenue_relative,
        }


@dataclass(frozen=True, slots=True)
class PhaseLift:
    """The analysis of one phase (see the module docstring for ``as_dict``'s keys)."""

    enough_data: bool
    reason: str | None
    confidence: float
    treated_members: int
    holdout_members: int
    sample_ratio: SampleRatio
    srm_warning: str | None
    conversion: MetricLift
    revenue: MetricLift
    mde: MinimumDetectable

    def as_dict(self) -> dict[str, Any]:
        return {
            "enough_data": self.enough_data,
            "reason": self.reason,
            "confidence": self.confidence,
            "members": {"treated": self.treated_members, "holdout": self.holdout_members},
            "sample_ratio": self.sample_ratio.as_dict(),
            "srm_warning": self.srm_warning,
            "conversion": self.conversion.as_dict(),
            "revenue": self.revenue.as_dict(),
            "mde": self.mde.as_dict(),
        }


# -- the analysis ------------------------------------------------------------------------------


def analyse(treated: GroupTotals, holdout: GroupTotals, settings: LiftSettings) -> PhaseLift:
    """Treated against holdout for one phase; never raises on sparse or degenerate data."""
    ratio = sample_ratio(treated.members, holdout.members, settings.holdout_percent / 100)
    reason = _not_enough(holdout, settings)
    if reason is not None:
        conversion = MetricLift(Estimate(_rate(treated)), Estimate(_rate(holdout)))
        revenue = MetricLift(Estimate(_mean(treated)), Estimate(_mean(holdout)))
    else:
        conversion = conversion_lift(treated, holdout, settings.confidence)
        revenue = revenue_lift(treated, holdout, settings.confidence)
    return PhaseLift(
        enough_data=reason is None,
        reason=reason,
        confidence=settings.confidence,
        treated_members=treated.members,
        holdout_members=holdout.members,
        sample_ratio=ratio,
        srm_warning=srm_warning(ratio, treated.members, holdout.members),
        conversion=conversion,
        revenue=revenue,
        mde=minimum_detectable(treated, holdout, settings.confidence),
    )


def _not_enough(holdout: GroupTotals, settings: LiftSettings) -> str | None:
    missing = []
    if holdout.members < settings.min_holdout_members:
        missing.append(
            f"{holdout.members:,} held-out {_plural(holdout.members, 'member')},"
            f" need {settings.min_holdout_members:,}"
        )
    if holdout.conversions < settings.min_holdout_conversions:
        missing.append(
            f"{holdout.conversions:,} {_plural(holdout.conversions, 'conversion')} among"
            f" held-out members, need {settings.min_holdout_conversions:,}"
        )
    return "not enough data yet: " + "; ".join(missing) if missing else None


def _plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"


def conversion_lift(treated: GroupTotals, holdout: GroupTotals, confidence: float) -> MetricLift:
    """Wilson per group, Newcombe difference, delta-method relative lift, pooled z test."""
    z = _z(confidence)
    x1, n1, x2, n2 = treated.conversions, treated.members, holdout.conversions, holdout.members
    difference = newcombe(x1, n1, x2, n2, z)
    relative = NONE
    if n1 and n2 and x2:
        p1, p2 = x1 / n1, x2 / n2
        relative = ratio_lift(p1, p1 * (1 - p1) / n1, p2, p2 * (1 - p2) / n2, z)
    return MetricLift(
        treated=wilson(x1, n1, z),
        holdout=wilson(x2, n2, z),
        difference=difference,
        relative_lift=relative,
        incremental=difference.scaled(n1),
        p_value=two_proportion_p(x1, n1, x2, n2),
    )


def revenue_lift(treated: GroupTotals, holdout: GroupTotals, confidence: float) -> MetricLift:
    """t interval per group, Welch difference and p-value, delta-method relative lift."""
    (m1, v1, n1), (m2, v2, n2) = _moments(treated), _moments(holdout)
    difference, p_value, df = NONE, None, None
    if m1 is not None and m2 is not None:
        difference = Estimate(m1 - m2)
        if v1 is not None and v2 is not None:
            welch_result = welch(m1, v1, n1, m2, v2, n2, confidence)
            if welch_result is not None:
                difference, p_value, df = welch_result
    relative = NONE
    if m1 is not None and m2 and v1 is not None and v2 is not None and df is not None:
        relative = ratio_lift(m1, v1 / n1, m2, v2 / n2, _t(confidence, df))
    return MetricLift(
        treated=t_interval(m1, v1, n1, confidence),
        holdout=t_interval(m2, v2, n2, confidence),
        difference=difference,
        relative_lift=relative,
        incremental=difference.scaled(n1),
        p_value=p_value,
    )


# -- the formulas ------------------------------------------------------------------------------


def wilson(successes: int, n: int, z: float) -> Estimate:
    """The rate with its Wilson score interval (good coverage even near 0 and 1)."""
    if n == 0:
        return NONE
    p = successes / n
    denominator = n + z * z
    centre = (successes + z * z / 2) / denominator
    half = z / denominator * math.sqrt(successes * (n - successes) / n + z * z / 4)
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half))


def newcombe(x1: int, n1: int, x2: int, n2: int, z: float) -> Estimate:
    """p1 - p2 with Newcombe's hybrid score interval (1998, method 10): Wilson limits combined."""
    if n1 == 0 or n2 == 0:
        return NONE
    a, b = wilson(x1, n1, z), wilson(x2, n2, z)
    assert a.low is not None and a.high is not None and b.low is not None and b.high is not None
    p1, p2 = x1 / n1, x2 / n2
    d = p1 - p2
    low = d - math.sqrt((p1 - a.low) ** 2 + (b.high - p2) ** 2)
    high = d + math.sqrt((a.high - p1) ** 2 + (p2 - b.low) ** 2)
    return Estimate(d, low, high)


def two_proportion_p(x1: int, n1: int, x2: int, n2: int) -> float | None:
    """Two-sided p-value of the pooled two-proportion z test (None when nobody or everybody
    converted, where the test has no variance)."""
    from scipy.stats import norm

    if n1 == 0 or n2 == 0:
        return None
    pooled = (x1 + x2) / (n1 + n2)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if variance <= 0:
        return None
    z = (x1 / n1 - x2 / n2) / math.sqrt(variance)
    return float(2 * norm.sf(abs(z)))


def moments(total: float, total_sq: float, n: int) -> tuple[float | None, float | None]:
    """Mean and sample variance (n - 1) from a count, a sum and a sum of squares."""
    if n == 0:
        return None, None
    mean = total / n
    if n == 1:
        return mean, None
    return mean, max(0.0, (total_sq - total * total / n) / (n - 1))


def _moments(group: GroupTotals) -> tuple[float | None, float | None, int]:
    return (*moments(group.revenue, group.revenue_sq, group.members), group.members)


def t_interval(mean: float | None, variance: float | None, n: int, confidence: float) -> Estimate:
    """A group's mean with its Student t interval (n - 1 degrees of freedom)."""
    if mean is None or variance is None:
        return Estimate(mean)
    half = _t(confidence, n - 1) * math.sqrt(variance / n)
    return Estimate(mean, mean - half, mean + half)


def welch(
    m1: float, v1: float, n1: int, m2: float, v2: float, n2: int, confidence: float
) -> tuple[Estimate, float, float] | None:
    """m1 - m2 with Welch's t interval and two-sided p-value, and the Welch-Satterthwaite
    degrees of freedom; None when both groups have zero variance."""
    from scipy.stats import t

    s1, s2 = v1 / n1, v2 / n2
    se2 = s1 + s2
    if se2 <= 0:
        return None
    df = se2 * se2 / (s1 * s1 / (n1 - 1) + s2 * s2 / (n2 - 1))
    se = math.sqrt(se2)
    d = m1 - m2
    half = _t(confidence, df) * se
    return Estimate(d, d - half, d + half), float(2 * t.sf(abs(d) / se, df)), df


def ratio_lift(m1: float, se2_1: float, m2: float, se2_2: float, quantile: float) -> Estimate:
    """m1 / m2 - 1 with a delta-method interval: Var(m1/m2) ≈ se1²/m2² + se2²·m1²/m2⁴
    (independent groups; GrowthBook's frequentist engine uses the same)."""
    if m2 == 0:
        return NONE
    lift = m1 / m2 - 1
    half = quantile * math.sqrt(se2_1 / m2**2 + se2_2 * m1**2 / m2**4)
    return Estimate(lift, lift - half, lift + half)


def sample_ratio(treated: int, holdout: int, holdout_share: float) -> SampleRatio:
    """Chi-square (1 df) of the observed group sizes against the configured split."""
    from scipy.stats import chi2

    n = treated + holdout
    if n == 0:
        return SampleRatio(holdout_share, None, None, None)
    expected_h, expected_t = n * holdout_share, n * (1 - holdout_share)
    statistic = (holdout - expected_h) ** 2 / expected_h + (treated - expected_t) ** 2 / expected_t
    return SampleRatio(holdout_share, holdout / n, statistic, float(chi2.sf(statistic, 1)))


def srm_warning(ratio: SampleRatio, treated: int, holdout: int) -> str | None:
    """What a sample-ratio mismatch means for the reader, or None without one."""
    if not ratio.mismatch:
        return None
    return (
        f"Sample ratio mismatch: the experiment holds out {ratio.expected_holdout_share:.1%}"
        f" of members, but {ratio.observed_holdout_share:.2%} are held out here"
        f" ({holdout:,} of {treated + holdout:,}; chi-square p = {ratio.p_value:.1e})."
        " The groups are not the split that was configured, so this result cannot be trusted:"
        " something added or lost members of one group, such as an outcomes join or filter"
        " that drops members, a change of holdout percent or salt without a new phase, or"
        " members assigned outside syncer."
    )


def minimum_detectable(
    treated: GroupTotals, holdout: GroupTotals, confidence: float, power: float = POWER
) -> MinimumDetectable:
    """(z_(1-alpha/2) + z_power) * sd * sqrt(1/n_t + 1/n_h), sd the holdout's: the normal
    approximation (statsmodels' NormalIndPower less its negligible opposite tail)."""
    from scipy.stats import norm

    if treated.members == 0 or holdout.members == 0:
        return MinimumDetectable(power, None, None, None, None)
    factor = (_z(confidence) + float(norm.ppf(power))) * math.sqrt(
        1 / treated.members + 1 / holdout.members
    )
    p = holdout.conversions / holdout.members
    conversion = factor * math.sqrt(p * (1 - p)) if 0 < p < 1 else None
    mean, variance = moments(holdout.revenue, holdout.revenue_sq, holdout.members)
    revenue = factor * math.sqrt(variance) if variance else None
    return MinimumDetectable(
        power,
        conversion,
        conversion / p if conversion is not None else None,
        revenue,
        revenue / mean if revenue is not None and mean else None,
    )


def _rate(group: GroupTotals) -> float | None:
    return group.conversions / group.members if group.members else None


def _mean(group: GroupTotals) -> float | None:
    return group.revenue / group.members if group.members else None


def _z(confidence: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1 - (1 - confidence) / 2))


def _t(confidence: float, df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(1 - (1 - confidence) / 2, df))
