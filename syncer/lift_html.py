"""The lift report as one self-contained HTML page: a marketer opens it from a mail or a shared
drive, offline, so everything is inline (CSS, charts drawn here as SVG) and nothing is fetched.

``render`` takes the ``syncer report lift --json`` document (see docs/measurement/statistics.md
and syncer.lift for its ``analysis`` keys). Python lays out the numbers and the charts' shapes;
the Jinja2 template (syncer/templates/lift/report.html.j2, autoescaped: a sync name or a
reason is text, never markup) only places them. Every chart has a title, a description and a
table of the same numbers beside it, so nothing is said by the drawing alone.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from typing import Any

import jinja2

MINUS = "\u2212"
TREATED_COLOUR = "#1f5fa8"
HOLDOUT_COLOUR = "#c2410c"


def render(report: dict[str, Any]) -> str:
    """The page for one report document."""
    phases = [_phase(phase, report) for phase in report.get("phases") or []]
    return _template().render(
        sync=str(report.get("sync", "")),
        connector=str(report.get("connector", "")),
        window_days=report.get("window_days"),
        generated_at=when(report.get("generated_at")),
        phases=phases,
        treated_colour=TREATED_COLOUR,
        holdout_colour=HOLDOUT_COLOUR,
    )


@cache
def _template() -> jinja2.Template:
    text = (files("syncer") / "templates" / "lift" / "report.html.j2").read_text(encoding="utf-8")
    environment = jinja2.Environment(
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    return environment.from_string(text)


# -- number formats ----------------------------------------------------------------------------


def _signed(text: str, value: float) -> str:
    if value > 0:
        return "+" + text
    return MINUS + text.lstrip("-") if value < 0 else text.lstrip("-")


def percent(value: float | None, digits: int = 1) -> str:
    """0.0556 -> "5.6%"."""
    return "n/a" if value is None else f"{value:.{digits}%}".replace("-", MINUS)


def lift_percent(value: float | None) -> str:
    """A relative lift with its sign: 0.118 -> "+12%", 0.034 -> "+3.4%"."""
    if value is None:
        return "n/a"
    digits = 0 if abs(value) >= 0.095 else 1
    return _signed(f"{abs(value):.{digits}%}", value)


def points(value: float | None) -> str:
    """A difference of rates in percentage points: 0.006 -> "+0.60 pts"."""
    if value is None:
        return "n/a"
    return _signed(f"{abs(value) * 100:.2f} pts", value)


def amount(value: float | None, signed: bool = False) -> str:
    """Money or counts: two decimals below 100, thousands separated above."""
    if value is None:
        return "n/a"
    text = f"{abs(value):,.2f}" if abs(value) < 100 else f"{abs(value):,.0f}"
    if signed:
        return _signed(text, value)
    return MINUS + text if value < 0 else text


def when(value: Any) -> str:
    """An ISO timestamp as "2026-10-01 09:30 UTC" (as given when it is not one)."""
    if not value:
        return ""
    try:
        moment = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
        return moment.strftime("%Y-%m-%d %H:%M UTC")
    return moment.strftime("%Y-%m-%d %H:%M")


def count(value: float | None, signed: bool = False) -> str:
    """A count, rounded to a whole number: 238.4 -> "238" ("+238" signed)."""
    if value is None:
        return "n/a"
    text = f"{abs(value):,.0f}"
    if signed:
        return _signed(text, round(value))
    return MINUS + text if round(value) < 0 else text


def p_value(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _interval(low: float | None, high: float | None, fmt: Any) -> str:
    if low is None or high is None:
        return ""
    return f"{fmt(low)} to {fmt(high)}"


# -- the phase ---------------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    cells: list[str]


@dataclass
class Phase:
    number: int
    holdout_percent: str
    started_at: str
    enough_data: bool
    reason: str
    srm_warning: str
    headlines: list[str]
    mde: str
    groups: list[Row]
    comparison: list[Row]
    sample_ratio: str
    charts: list[LineChart]
    differences: list[DifferenceChart]
    curve: list[Row]
    confidence_label: str
    notes: list[str] = field(default_factory=list)


def _get(d: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _phase(raw: dict[str, Any], report: dict[str, Any]) -> Phase:
    analysis = raw.get("analysis") or {}
    confidence = float(analysis.get("confidence") or 0.95)
    ci = f"{confidence:.0%} CI"
    treated, holdout = raw.get("treated") or {}, raw.get("holdout") or {}
    enough = bool(analysis.get("enough_data"))
    conversion, revenue = analysis.get("conversion") or {}, analysis.get("revenue") or {}
    reason = str(analysis.get("reason") or "")
    headlines = (
        [
            _conversion_headline(conversion, ci, 1 - confidence),
            _revenue_headline(revenue, ci, 1 - confidence),
        ]
        if enough
        else [reason[:1].upper() + reason[1:] + "." if reason else "Not enough data yet."]
    )
    if enough:
        headlines.append(_incremental_headline(conversion, revenue, ci))
    curve = raw.get("curve") or []
    window = report.get("window_days")
    return Phase(
        number=int(raw.get("phase", 0)),
        holdout_percent=f"{float(raw.get('holdout_percent') or 0):g}%",
        started_at=when(raw.get("started_at")),
        enough_data=enough,
        reason=reason,
        srm_warning=str(analysis.get("srm_warning") or ""),
        headlines=headlines,
        mde=_mde(analysis.get("mde") or {}, confidence),
        groups=_groups(treated, holdout, conversion, revenue, f" ({ci})" if enough else ""),
        comparison=_comparison(conversion, revenue) if enough else [],
        sample_ratio=_sample_ratio(analysis.get("sample_ratio") or {}),
        charts=[
            LineChart.of(
                f"p{raw.get('phase', 0)}-conversion",
                "Cumulative conversion rate",
                "Conversion rate",
                curve,
                "conversion",
                conversion,
                percent,
                window,
            ),
            LineChart.of(
                f"p{raw.get('phase', 0)}-revenue",
                "Cumulative revenue per member",
                "Revenue per member",
                curve,
                "revenue",
                revenue,
                amount,
                window,
            ),
        ]
        if curve
        else [],
        differences=[
            chart
            for chart in (
                DifferenceChart.of(
                    f"p{raw.get('phase', 0)}-conversion-difference",
                    "Conversion rate difference (treated minus held out)",
                    conversion.get("difference") or {},
                    points,
                    ci,
                ),
                DifferenceChart.of(
                    f"p{raw.get('phase', 0)}-revenue-difference",
                    "Revenue per member difference (treated minus held out)",
                    revenue.get("difference") or {},
                    lambda v: amount(v, signed=True),
                    ci,
                ),
            )
            if chart is not None
        ],
        curve=[
            Row(
                str(point.get("day")),
                [
                    percent(point.get("treated_conversion"), 2),
                    percent(point.get("holdout_conversion"), 2),
                    amount(point.get("treated_revenue")),
                    amount(point.get("holdout_revenue")),
                ],
            )
            for point in curve
        ],
        confidence_label=ci,
    )


def _conversion_headline(conversion: dict[str, Any], ci: str, alpha: float) -> str:
    treated = _get(conversion, "treated", "estimate")
    holdout = _get(conversion, "holdout", "estimate")
    start = f"Treated members converted {percent(treated)} vs {percent(holdout)} held out"
    return start + _effect(conversion, ci, points, alpha)


def _revenue_headline(revenue: dict[str, Any], ci: str, alpha: float) -> str:
    treated = _get(revenue, "treated", "estimate")
    holdout = _get(revenue, "holdout", "estimate")
    start = f"Revenue per member was {amount(treated)} treated vs {amount(holdout)} held out"
    return start + _effect(revenue, ci, lambda v: amount(v, signed=True), alpha)


def _effect(metric: dict[str, Any], ci: str, absolute: Any, alpha: float) -> str:
    """The effect clause, such as ': +12% (95% CI +2% to +22%); p = 0.010, unlikely to be
    chance alone.': in relative lift when there is one, else in the absolute difference."""
    relative, difference = metric.get("relative_lift") or {}, metric.get("difference") or {}
    if relative.get("estimate") is not None:
        chosen, fmt = relative, lift_percent
    elif difference.get("estimate") is not None:
        chosen, fmt = difference, absolute
    else:
        return "."
    text = f": {fmt(chosen['estimate'])}"
    interval = _interval(chosen.get("low"), chosen.get("high"), fmt)
    if interval:
        text += f" ({ci} {interval})"
    p = metric.get("p_value")
    if p is None:
        return text + "."
    verdict = "unlikely to be chance alone" if p < alpha else "could be chance alone"
    shown = p_value(p)
    return f"{text}; p {shown if shown.startswith('<') else '= ' + shown}, {verdict}."


def _incremental_headline(conversion: dict[str, Any], revenue: dict[str, Any], ci: str) -> str:
    c, r = conversion.get("incremental") or {}, revenue.get("incremental") or {}
    parts = []
    for value, unit, fmt in ((c, "conversions", count), (r, "revenue", amount)):
        if value.get("estimate") is None:
            continue
        interval = _interval(value.get("low"), value.get("high"), lambda v, f=fmt: f(v, True))
        parts.append(
            f"{fmt(value['estimate'], True)} {unit}" + (f" ({ci} {interval})" if interval else "")
        )
    if not parts:
        return "Incremental conversions and revenue cannot be estimated from these numbers."
    return "Incremental over the window, across the treated group: " + " and ".join(parts) + "."


def _mde(mde: dict[str, Any], confidence: float) -> str:
    power = float(mde.get("power") or 0.8)
    parts = []
    if mde.get("conversion_absolute") is not None:
        relative = mde.get("conversion_relative")
        parts.append(
            f"{abs(mde['conversion_absolute']) * 100:.2f} percentage points in conversion rate"
            + (f" ({lift_percent(relative).lstrip('+')} relative)" if relative is not None else "")
        )
    if mde.get("revenue_absolute") is not None:
        relative = mde.get("revenue_relative")
        parts.append(
            f"{amount(mde['revenue_absolute'])} in revenue per member"
            + (f" ({lift_percent(relative).lstrip('+')} relative)" if relative is not None else "")
        )
    if not parts:
        return "The minimum detectable effect cannot be estimated yet (no conversions or revenue)."
    return (
        f"Minimum detectable effect ({power:.0%} power, {confidence:.0%} confidence): with these"
        f" group sizes, a true change smaller than about {' or '.join(parts)} would usually"
        " go unnoticed."
    )


def _with_interval(estimate: dict[str, Any], fmt: Any) -> str:
    text = fmt(estimate.get("estimate"))
    interval = _interval(estimate.get("low"), estimate.get("high"), fmt)
    return f"{text} ({interval})" if interval else text


def _groups(
    treated: dict[str, Any],
    holdout: dict[str, Any],
    conversion: dict[str, Any],
    revenue: dict[str, Any],
    ci: str,
) -> list[Row]:
    def count(group: dict[str, Any], key: str) -> str:
        value = group.get(key)
        return "n/a" if value is None else f"{int(value):,}"

    return [
        Row("Members", [count(treated, "members"), count(holdout, "members")]),
        Row("Conversions", [count(treated, "conversions"), count(holdout, "conversions")]),
        Row(
            f"Conversion rate{ci}",
            [
                _with_interval(conversion.get("treated") or {}, lambda v: percent(v, 2)),
                _with_interval(conversion.get("holdout") or {}, lambda v: percent(v, 2)),
            ],
        ),
        Row("Revenue", [amount(treated.get("revenue")), amount(holdout.get("revenue"))]),
        Row(
            f"Revenue per member{ci}",
            [
                _with_interval(revenue.get("treated") or {}, amount),
                _with_interval(revenue.get("holdout") or {}, amount),
            ],
        ),
    ]


def _comparison(conversion: dict[str, Any], revenue: dict[str, Any]) -> list[Row]:
    def signed_amount(value: float | None) -> str:
        return amount(value, signed=True)

    return [
        Row(
            "Conversion rate",
            [
                _with_interval(conversion.get("difference") or {}, points),
                _with_interval(conversion.get("relative_lift") or {}, lift_percent),
                p_value(conversion.get("p_value")),
                _with_interval(conversion.get("incremental") or {}, lambda v: count(v, True))
                + " conversions",
            ],
        ),
        Row(
            "Revenue per member",
            [
                _with_interval(revenue.get("difference") or {}, signed_amount),
                _with_interval(revenue.get("relative_lift") or {}, lift_percent),
                p_value(revenue.get("p_value")),
                _with_interval(revenue.get("incremental") or {}, signed_amount) + " revenue",
            ],
        ),
    ]


def _sample_ratio(ratio: dict[str, Any]) -> str:
    expected, observed = ratio.get("expected_holdout_share"), ratio.get("observed_holdout_share")
    if expected is None or observed is None:
        return "Sample ratio: no members yet."
    return (
        f"Sample ratio: {percent(observed, 2)} of members held out against"
        f" {percent(expected, 2)} configured (chi-square p = {p_value(ratio.get('p_value'))})."
    )


# -- charts ------------------------------------------------------------------------------------

WIDTH, HEIGHT = 600, 280
LEFT, RIGHT, TOP, BOTTOM = 72, 96, 16, 44


def nice_ceiling(value: float) -> float:
    """The next round number (1, 1.2, 1.6, 2, 2.4, 3, 4, 5, 6 or 8 x 10^k) at or above
    ``value``: an axis top whose quarters are round too."""
    if value <= 0:
        return 1.0
    exponent = math.floor(math.log10(value))
    for step in (1, 1.2, 1.6, 2, 2.4, 3, 4, 5, 6, 8, 10):
        top = step * 10**exponent
        if top >= value * (1 - 1e-12):
            return float(top)
    return float(10 ** (exponent + 1))


@dataclass
class Tick:
    x: float
    y: float
    label: str


@dataclass
class ErrorBar:
    x: float
    y: float
    low: float
    high: float
    colour: str
    label: str


@dataclass
class LineChart:
    """A cumulative curve per group over the window, with the final intervals as error bars."""

    id: str
    title: str
    description: str
    width: int
    height: int
    plot: tuple[float, float, float, float]  # left, top, right, bottom
    treated_points: str
    holdout_points: str
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    y_label: str
    error_bars: list[ErrorBar]

    @classmethod
    def of(
        cls,
        chart_id: str,
        title: str,
        y_label: str,
        curve: list[dict[str, Any]],
        metric: str,
        analysis: dict[str, Any],
        fmt: Any,
        window_days: Any,
    ) -> LineChart:
        days = [float(p.get("day") or 0) for p in curve]
        treated = [float(p.get(f"treated_{metric}") or 0) for p in curve]
        holdout = [float(p.get(f"holdout_{metric}") or 0) for p in curve]
        estimates = [analysis.get("treated") or {}, analysis.get("holdout") or {}]
        highs = [float(e["high"]) for e in estimates if e.get("high") is not None]
        top = nice_ceiling(max([*treated, *holdout, *highs, 0.0]) * 1.05)
        last_day = max(days[-1] if days else 0, float(window_days or 1) - 1, 1.0)
        left, upper, right, lower = LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM

        def x(day: float) -> float:
            return round(left + (right - left) * day / last_day, 1)

        def y(value: float) -> float:
            return round(lower - (lower - upper) * min(max(value, 0.0), top) / top, 1)

        def polyline(values: list[float]) -> str:
            return " ".join(f"{x(d)},{y(v)}" for d, v in zip(days, values, strict=True))

        bars = []
        for offset, estimate, colour, name in (
            (26, estimates[0], TREATED_COLOUR, "treated"),
            (56, estimates[1], HOLDOUT_COLOUR, "held out"),
        ):
            if estimate.get("low") is None or estimate.get("estimate") is None:
                continue
            bars.append(
                ErrorBar(
                    right + offset,
                    y(estimate["estimate"]),
                    y(estimate["low"]),
                    y(estimate["high"]),
                    colour,
                    f"{name}: {fmt(estimate['estimate'])}"
                    f" ({fmt(estimate['low'])} to {fmt(estimate['high'])})",
                )
            )
        final_t, final_h = (treated[-1], holdout[-1]) if curve else (0.0, 0.0)
        description = (
            f"{y_label} of treated (solid line) and held-out (dashed line) members by day"
            f" since entering the segment, days 0 to {int(last_day)}; at the end"
            f" {fmt(final_t)} treated and {fmt(final_h)} held out."
        )
        if bars:
            description += " Error bars at the right: " + "; ".join(b.label for b in bars) + "."
        step = max(1, math.ceil(last_day / 6))
        return cls(
            id=chart_id,
            title=title,
            description=description,
            width=WIDTH,
            height=HEIGHT,
            plot=(left, upper, right, lower),
            treated_points=polyline(treated),
            holdout_points=polyline(holdout),
            y_ticks=[Tick(left, y(top * i / 4), fmt(top * i / 4)) for i in range(5)],
            x_ticks=[Tick(x(d), lower, str(d)) for d in range(0, int(last_day) + 1, step)],
            y_label=y_label,
            error_bars=bars,
        )


@dataclass
class DifferenceChart:
    """The difference's interval as a bar against a zero line: left of it is a loss."""

    id: str
    title: str
    description: str
    width: int
    height: int
    zero: float
    low: float
    high: float
    estimate: float
    low_label: str
    high_label: str
    estimate_label: str
    excludes_zero: bool

    @classmethod
    def of(
        cls, chart_id: str, title: str, difference: dict[str, Any], fmt: Any, ci: str
    ) -> DifferenceChart | None:
        if any(difference.get(k) is None for k in ("low", "high", "estimate")):
            return None
        low, high = float(difference["low"]), float(difference["high"])
        estimate = float(difference["estimate"])
        lo, hi = min(low, 0.0), max(high, 0.0)
        pad = (hi - lo) * 0.12 or 1.0
        lo, hi = lo - pad, hi + pad
        left, right = 40.0, WIDTH - 40.0

        def x(value: float) -> float:
            return round(left + (right - left) * (value - lo) / (hi - lo), 1)

        excludes = low > 0 or high < 0
        description = f"{title}: {fmt(estimate)}, {ci} {fmt(low)} to {fmt(high)};" + (
            " the whole interval is on one side of zero." if excludes else " it includes zero."
        )
        return cls(
            id=chart_id,
            title=title,
            description=description,
            width=WIDTH,
            height=78,
            zero=x(0.0),
            low=x(low),
            high=x(high),
            estimate=x(estimate),
            low_label=fmt(low),
            high_label=fmt(high),
            estimate_label=fmt(estimate),
            excludes_zero=excludes,
        )
