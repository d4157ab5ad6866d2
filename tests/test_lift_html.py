"""The lift report's HTML page (syncer.lift_html): self-contained, readable, escaped."""

from __future__ import annotations

import copy
import tomllib
from fnmatch import fnmatch
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from syncer import lift_html
from syncer.lift import LiftSettings
from syncer.lift_html import render
from tests.lift_sim import report_document

REPO = Path(__file__).resolve().parents[1]
VOID = {"meta", "br", "img", "input", "link", "hr", "col", "source", "wbr"}
SVG_LEAVES = {"line", "polyline", "rect", "circle", "path"}


class Structure(HTMLParser):
    """Collects tags, checks every opened element is closed in order, and gathers text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> Structure:
    structure = Structure()
    structure.feed(page)
    structure.close()
    assert not structure.errors and not structure.stack, (structure.errors, structure.stack)
    return structure


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return report_document(np.random.default_rng(16), n=60_000, lift=0.15)


def test_the_page_is_self_contained(report: dict[str, Any]) -> None:
    page = render(report)
    lowered = page.lower()
    for reference in ("http://", "https://", "<script", "<link", "src=", "url(", "@import"):
        assert reference not in lowered, reference
    structure = parse(page)
    assert not [attrs for _, attrs in structure.tags if "href" in attrs]


def test_the_page_gives_the_numbers_with_headings_charts_and_tables(report: dict[str, Any]) -> None:
    page = render(report)
    structure = parse(page)
    text = " ".join(" ".join(structure.text).split())
    tags = [tag for tag, _ in structure.tags]
    assert tags.count("h1") == 1 and "h2" in tags and "h3" in tags
    assert "Lift report: vip_customers" in text and "Phase 1" in text
    assert "started 2026-10-01 00:00 UTC" in text and "generated 2026-12-08 03:00 UTC" in text
    phase = report["phases"][0]
    analysis = phase["analysis"]
    treated_rate = analysis["conversion"]["treated"]["estimate"]
    holdout_rate = analysis["conversion"]["holdout"]["estimate"]
    relative = analysis["conversion"]["relative_lift"]
    headline = (
        f"Treated members converted {lift_html.percent(treated_rate)} vs"
        f" {lift_html.percent(holdout_rate)} held out:"
        f" {lift_html.lift_percent(relative['estimate'])}"
        f" (95% CI {lift_html.lift_percent(relative['low'])} to"
        f" {lift_html.lift_percent(relative['high'])})"
    )
    assert headline in text
    assert f"{phase['treated']['members']:,}" in text and f"{phase['holdout']['members']:,}" in text
    assert "Minimum detectable effect (80% power, 95% confidence)" in text
    assert "percentage points in conversion rate" in text
    assert "Sample ratio: " in text and "cannot be trusted" not in text
    # Two curves and two difference bars, each an image with a title and a description.
    svgs = [attrs for tag, attrs in structure.tags if tag == "svg"]
    assert len(svgs) == 4
    for attrs in svgs:
        assert attrs["role"] == "img"
        title, desc = (attrs["aria-labelledby"] or "").split()
        assert f'<title id="{title}">' in page and f'<desc id="{desc}">' in page
    assert tags.count("polyline") == 4  # treated and holdout, conversion and revenue
    assert tags.count("circle") == 4  # the final point of each group's error bar
    assert tags.count("table") == 3  # groups, comparison, the daily numbers behind the charts
    assert text.count(" pts") >= 2 and "p-value" in text
    assert "Conversion rate (95% CI)" in text and "Revenue per member (95% CI)" in text


def test_a_sample_ratio_mismatch_is_shown_first_and_prominently() -> None:
    report = report_document(np.random.default_rng(5), n=20_000, drop_holdout=0.3)
    assert report["phases"][0]["analysis"]["srm_warning"]  # type: ignore[index]
    page = render(report)
    parse(page)
    assert 'role="alert"' in page and "Warning: this result cannot be trusted" in page
    assert page.index("cannot be trusted") < page.index("Treated members converted")
    assert "Sample ratio mismatch: the experiment holds out 10.0% of members" in page


def test_not_enough_data_says_so_instead_of_a_result() -> None:
    report = report_document(
        np.random.default_rng(5), n=5_000, settings=LiftSettings(10, min_holdout_members=1_000)
    )
    held_out = report["phases"][0]["holdout"]["members"]  # type: ignore[index]
    page = render(report)
    structure = parse(page)
    text = " ".join(" ".join(structure.text).split())
    assert f"Not enough data yet: {held_out:,} held-out members, need 1,000." in text
    assert "Treated members converted" not in text and "Difference against no effect" not in text
    tags = [tag for tag, _ in structure.tags]
    assert tags.count("circle") == 0  # no intervals drawn
    assert tags.count("polyline") == 4  # the curves still describe the groups
    assert "Minimum detectable effect" in text and "Sample ratio" in text
    assert "Conversion rate " in text and "CI" not in text


def test_everything_is_escaped(report: dict[str, Any]) -> None:
    hostile = copy.deepcopy(report)
    hostile["sync"] = '<script>alert("x")</script> & <b>co</b>'
    hostile["connector"] = "<img src=x onerror=alert(1)>"
    hostile["phases"][0]["analysis"]["srm_warning"] = "<i>split</i> off"
    page = render(hostile)
    assert "<script>" not in page and "<b>co</b>" not in page and "<img" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;co&lt;/b&gt;" in page
    assert "&lt;i&gt;split&lt;/i&gt; off" in page
    parse(page)


def test_a_report_without_phases_or_curves_still_renders(report: dict[str, Any]) -> None:
    empty = {**report, "phases": []}
    assert "nothing to compare" in render(empty)
    no_curve = copy.deepcopy(report)
    no_curve["phases"][0]["curve"] = []
    page = render(no_curve)
    parse(page)
    assert "<polyline" not in page and "Treated members converted" in page


def test_the_template_is_packaged() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["syncer"]
    templates = list((REPO / "syncer" / "templates" / "lift").iterdir())
    assert templates
    for template in templates:
        relative = template.relative_to(REPO / "syncer").as_posix()
        assert any(fnmatch(relative, pattern) for pattern in patterns), relative


@pytest.mark.parametrize(
    ("function", "value", "expected"),
    [
        (lift_html.percent, 0.0556, "5.6%"),
        (lift_html.percent, None, "n/a"),
        (lift_html.lift_percent, 0.118, "+12%"),
        (lift_html.lift_percent, -0.034, "\u22123.4%"),
        (lift_html.lift_percent, 0.0, "0.0%"),
        (lift_html.points, 0.006, "+0.60 pts"),
        (lift_html.points, -0.0123, "\u22121.23 pts"),
        (lift_html.amount, 2.8, "2.80"),
        (lift_html.amount, -12_345.6, "\u221212,346"),
        (lift_html.count, 238.4, "238"),
        (lift_html.p_value, 0.0004, "< 0.001"),
        (lift_html.p_value, 0.0312, "0.031"),
        (lift_html.when, "2026-10-01T11:30:00+02:00", "2026-10-01 09:30 UTC"),
        (lift_html.when, "yesterday", "yesterday"),
        (lift_html.when, None, ""),
    ],
)
def test_number_formats(function: Any, value: float | None, expected: str) -> None:
    assert function(value) == expected


@pytest.mark.parametrize(
    ("value", "top"), [(0.061, 0.08), (0.05, 0.05), (3.1, 4.0), (0.0, 1.0), (1234, 1600)]
)
def test_axis_tops_are_round(value: float, top: float) -> None:
    assert lift_html.nice_ceiling(value) == pytest.approx(top)


@pytest.mark.parametrize(("seed", "lift"), [(0, 0.1), (1, 0.4), (2, 0.0), (3, 0.4)])
def test_the_headline_verdict_follows_the_p_value(seed: int, lift: float) -> None:
    report = report_document(np.random.default_rng(seed), n=30_000, lift=lift)
    analysis = report["phases"][0]["analysis"]  # type: ignore[index]
    page = render(report)
    for metric, start in (("conversion", "Treated members converted"), ("revenue", "Revenue per")):
        line = page[page.index(start) :].split("</p>")[0]
        significant = analysis[metric]["p_value"] < 0.05
        assert ("unlikely to be chance alone" in line) == significant, line
        assert ("could be chance alone" in line) == (not significant), line


def test_phases_are_separate_sections_with_unique_ids(report: dict[str, Any]) -> None:
    second = copy.deepcopy(report["phases"][0])
    second["phase"] = 2
    page = render({**report, "phases": [report["phases"][0], second]})
    structure = parse(page)
    ids = [attrs["id"] for _, attrs in structure.tags if attrs.get("id")]
    assert len(ids) == len(set(ids)) and "phase-1" in ids and "phase-2" in ids
    assert [tag for tag, _ in structure.tags].count("section") == 2
