"""A tiny stand-in for syncer.lift / syncer.lift_html (helper A's modules), used by the tests
only while those are not merged yet: the same API as DESIGN16.md, the same textbook formulas."""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from typing import Any

from scipy import stats


@dataclass(frozen=True)
class GroupTotals:
    members: int
    conversions: int
    revenue: float
    revenue_sq: float


@dataclass(frozen=True)
class LiftSettings:
    holdout_percent: float
    min_holdout_members: int = 100
    min_holdout_conversions: int = 10
    confidence: float = 0.95


def _wilson(k: int, n: int, z: float) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _metric(
    m1: float, v1: float, n1: int, m2: float, v2: float, n2: int, z: float
) -> dict[str, Any]:
    se = math.sqrt(v1 / n1 + v2 / n2)
    diff = m1 - m2
    df = (
        (v1 / n1 + v2 / n2) ** 2
        / ((v1 / n1) ** 2 / max(n1 - 1, 1) + (v2 / n2) ** 2 / max(n2 - 1, 1))
        if se > 0
        else float(n1 + n2 - 2)
    )
    t = float(stats.t.ppf(0.5 + (1 - 2 * (1 - stats.norm.cdf(z))) / 2, df))
    p = float(2 * stats.t.sf(abs(diff) / se, df)) if se > 0 else 1.0
    rel = m1 / m2 - 1 if m2 else None
    rel_ci = None
    if m2:
        var = (v1 / n1) / m2**2 + m1**2 * (v2 / n2) / m2**4
        rel_ci = [rel - z * math.sqrt(var), rel + z * math.sqrt(var)]  # type: ignore[operator]
    return {
        "treated": m1,
        "holdout": m2,
        "difference": diff,
        "difference_ci": [diff - t * se, diff + t * se],
        "relative_lift": rel,
        "relative_lift_ci": rel_ci,
        "p_value": p,
    }


@dataclass(frozen=True)
class PhaseLift:
    doc: dict[str, Any]

    @property
    def enough_data(self) -> bool:
        return bool(self.doc["enough_data"])

    @property
    def srm_warning(self) -> str | None:
        return self.doc["srm"]["warning"]  # type: ignore[no-any-return]

    def as_dict(self) -> dict[str, Any]:
        return self.doc


def analyse(treated: GroupTotals, holdout: GroupTotals, settings: LiftSettings) -> PhaseLift:
    z = float(stats.norm.ppf(0.5 + settings.confidence / 2))
    n1, n2 = treated.members, holdout.members
    share = settings.holdout_percent / 100
    total = n1 + n2
    srm_p = (
        float(stats.chisquare([n1, n2], [total * (1 - share), total * share]).pvalue)
        if total and 0 < share < 1
        else 1.0
    )
    warning = (
        f"sample ratio mismatch (p = {srm_p:.2g}): the result cannot be trusted"
        if srm_p < 0.001
        else None
    )
    doc: dict[str, Any] = {"srm": {"p_value": srm_p, "warning": warning}}
    enough = (
        n2 >= settings.min_holdout_members
        and holdout.conversions >= settings.min_holdout_conversions
        and n1 > 1
    )
    doc["enough_data"] = enough
    if not enough:
        doc["reason"] = "not enough data yet"
        return PhaseLift(doc)
    p1, p2 = treated.conversions / n1, holdout.conversions / n2
    l1, u1 = _wilson(treated.conversions, n1, z)
    l2, u2 = _wilson(holdout.conversions, n2, z)
    conv = _metric(p1, p1 * (1 - p1) * n1 / (n1 - 1), n1, p2, p2 * (1 - p2) * n2 / (n2 - 1), n2, z)
    d = p1 - p2
    conv["difference_ci"] = [d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2)]
    m1, m2 = treated.revenue / n1, holdout.revenue / n2
    v1 = (treated.revenue_sq - treated.revenue**2 / n1) / (n1 - 1)
    v2 = (holdout.revenue_sq - holdout.revenue**2 / n2) / (n2 - 1)
    rev = _metric(m1, v1, n1, m2, v2, n2, z)
    for metric in (conv, rev):
        metric["incremental"] = metric["difference"] * n1
        metric["incremental_ci"] = [x * n1 for x in metric["difference_ci"]]
    doc["conversion"], doc["revenue"] = conv, rev
    doc["mde"] = {"conversion": (z + 0.8416) * math.sqrt(p2 * (1 - p2) * (1 / n1 + 1 / n2))}
    return PhaseLift(doc)


def render(report: dict[str, Any]) -> str:
    body = html.escape(json.dumps(report)[:2000])
    return f"<!doctype html><html><head><title>lift</title></head><body><svg></svg><pre>{body}</pre></body></html>"
