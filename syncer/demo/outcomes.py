"""Planted outcomes: the demo shop's future orders, with a known true lift for treated members.

`syncer report lift` can only be shown to work against a truth it does not know, so the demo
plants one. Every member of the measured segment gets a group from the real assignment
(:class:`syncer.holdout.Assignment`, the function the engine holds members out by), then a
seeded draw decides whether they order in the window after their entry and what they spend:
treated members convert at ``treated_conversion``, held-out ones at ``holdout_conversion``,
with the same log-normal order values, so the true lift in conversion and in revenue per member
is known exactly and the report has to find it inside its interval.

Orders are dated after each member's entry as the state database records it (the real clock of
the run that first saw them), not on the shop's own simulated clock: they lie in the shop's
future, where its segment views (bounded by ``shop_clock``) never see them, so planting them
moves nobody between segments. The report is then asked ``--as-of`` a day after every window
has closed.
"""

from __future__ import annotations

import math
import random
import sqlite3
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from syncer.holdout import HOLDOUT, TREATED, Assignment
from syncer.state import as_utc

#: Conversions fall inside the window with this much room at both ends, so a member's entry
#: time may differ a little from the run time the demo dates them by (entry is written during
#: the run; the demo reads the run's finish) and every planted order still counts.
MARGIN = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class PlantedLift:
    """The truth the report must recover: conversion per group and the order-value model."""

    holdout_conversion: float = 0.08
    treated_conversion: float = 0.11
    order_median: float = 55.0
    """Median order value; values are log-normal around it."""
    order_sigma: float = 0.6
    repeat_share: float = 0.3
    """Share of converters who order a second time within the window."""
    mean_days_to_order: float = 7.0
    """Days from entry to the first order on average (exponential, cut at the window)."""

    def conversion(self, group: str) -> float:
        return self.treated_conversion if group == TREATED else self.holdout_conversion

    @property
    def mean_order(self) -> float:
        return self.order_median * math.exp(self.order_sigma**2 / 2)

    def revenue_per_member(self, group: str) -> float:
        """Expected revenue of one member of ``group`` over the window."""
        return self.conversion(group) * (1 + self.repeat_share) * self.mean_order

    @property
    def conversion_difference(self) -> float:
        """Treated minus held-out conversion rate (absolute, a fraction)."""
        return self.treated_conversion - self.holdout_conversion

    @property
    def revenue_difference(self) -> float:
        """Treated minus held-out revenue per member."""
        return self.revenue_per_member(TREATED) - self.revenue_per_member(HOLDOUT)

    @property
    def relative_lift(self) -> float:
        """Relative lift, the same for conversion and revenue here (order values do not move)."""
        return self.treated_conversion / self.holdout_conversion - 1


#: What ``make demo`` plants: 8% of held-out members order within 30 days, 11% of treated ones
#: (a true lift of 3 points, +37.5%): with about 2,000 held out, a lift the report finds
#: nearly every time, not just an interval around zero.
PLANTED = PlantedLift()


@dataclass(slots=True)
class GroupOutcome:
    """What was planted for one group: the totals the lift report computes, known in advance."""

    members: int = 0
    conversions: int = 0
    revenue: float = 0.0
    revenue_sq: float = 0.0

    @property
    def conversion(self) -> float:
        return self.conversions / self.members if self.members else 0.0

    @property
    def revenue_per_member(self) -> float:
        return self.revenue / self.members if self.members else 0.0


@dataclass(frozen=True, slots=True)
class PlantSummary:
    """Per group (treated, holdout, global_holdout when any), and the orders written."""

    groups: dict[str, GroupOutcome] = field(default_factory=dict)
    orders: int = 0
    unknown: int = 0
    """Members with no customer in the shop (none in the demo): no orders planted for them."""
    last_entry: datetime | None = None

    def group(self, name: str) -> GroupOutcome:
        return self.groups.get(name, GroupOutcome())


def _stamp(moment: datetime) -> str:
    """UTC, in the shop's own timestamp format (``YYYY-MM-DD HH:MM:SS``)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def plant_outcomes(
    shop_path: Path | str,
    entries: Mapping[str, datetime],
    assignment: Assignment,
    *,
    seed: int,
    lift: PlantedLift = PLANTED,
    window_days: int = 30,
) -> PlantSummary:
    """Write each member's orders in ``[entry + MARGIN, entry + window - MARGIN]`` into the shop.

    ``entries`` maps a member's key (the normalised email the sync stages) to when they entered
    the segment. The same shop, entries, assignment and seed always plant the same orders.
    """
    if window_days < 1:
        raise ValueError("window_days must be at least 1")
    rng = random.Random(f"outcomes:{seed}")
    mu = math.log(lift.order_median)
    span = timedelta(days=window_days) - 2 * MARGIN
    groups: dict[str, GroupOutcome] = {}
    orders: list[tuple[str, int, float]] = []
    unknown = 0
    with closing(sqlite3.connect(shop_path, isolation_level=None)) as conn:
        ids = dict(conn.execute("SELECT lower(trim(email)), customer_id FROM customers"))
        for key in sorted(entries):  # a fixed order: the draws follow the seed only
            entered = as_utc(entries[key])
            group = assignment.group(key)
            # Every member takes the same draws whatever their group, so a group's outcome
            # differs only where the planted rates do.
            converts = rng.random() < lift.conversion(group)
            first = rng.expovariate(1 / lift.mean_days_to_order)
            count = 2 if rng.random() < lift.repeat_share else 1
            values = [round(math.exp(rng.gauss(mu, lift.order_sigma)), 2) for _ in range(count)]
            second = rng.random()
            totals = groups.setdefault(group, GroupOutcome())
            totals.members += 1
            if not converts:
                continue
            customer = ids.get(key)
            if customer is None:
                unknown += 1
                continue
            start = entered + MARGIN + min(timedelta(days=first), span)
            end = entered + MARGIN + span
            moments = [start, start + (end - start) * second][:count]
            orders.extend(
                (_stamp(at), int(customer), value)
                for at, value in zip(moments, values, strict=True)
            )
            spent = sum(values)
            totals.conversions += 1
            totals.revenue += spent
            totals.revenue_sq += spent * spent
        orders.sort()
        conn.execute("BEGIN")
        next_id = conn.execute("SELECT COALESCE(MAX(order_id), 0) FROM orders").fetchone()[0]
        conn.executemany(
            "INSERT INTO orders (order_id, customer_id, ordered_at, amount) VALUES (?, ?, ?, ?)",
            [(next_id + i, cid, at, amount) for i, (at, cid, amount) in enumerate(orders, 1)],
        )
        conn.execute("COMMIT")
    last = max((as_utc(at) for at in entries.values()), default=None)
    return PlantSummary(groups, len(orders), unknown, last)
