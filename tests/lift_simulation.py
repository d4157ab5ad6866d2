"""Calibration of the lift report end to end: members split by the real assignment
(syncer.holdout), a planted true lift in conversion and revenue (lognormal order values)
written as outcome rows to a real warehouse, and the real report path (syncer.lift_query's
SQL, then syncer.lift.analyse) asked whether its intervals cover the truth.

Used by tests/test_lift_calibration.py (fast, seeded) and bench/lift_e2e_calibration.py
(R = 1000)."""

from __future__ import annotations

import datetime as dt
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from syncer.holdout import HOLDOUT, TREATED, Split
from syncer.lift import GroupTotals, LiftSettings, analyse
from syncer.lift_query import measure
from syncer.mapping import LoadedSync, load_all
from syncer.settings import Settings
from syncer.state import state_engine
from tests.lift_world import T0, World, clear_history, seed_history, write_mapping, write_outcomes

AS_OF = T0 + dt.timedelta(days=60)


@dataclass(frozen=True)
class Truth:
    """The planted effect: conversion probabilities and a lognormal order value."""

    p_holdout: float = 0.05
    p_treated: float = 0.055
    mu: float = 3.5
    sigma: float = 1.0

    @property
    def order_mean(self) -> float:
        return math.exp(self.mu + self.sigma**2 / 2)

    def targets(self) -> dict[str, float]:
        """The true values each interval should cover."""
        value = self.order_mean
        return {
            "conversion.difference": self.p_treated - self.p_holdout,
            "conversion.relative_lift": self.p_treated / self.p_holdout - 1,
            "revenue.difference": (self.p_treated - self.p_holdout) * value,
            "revenue.relative_lift": self.p_treated / self.p_holdout - 1,
        }


@dataclass
class Tally:
    """Coverage and significance counts over repetitions."""

    runs: int = 0
    covered: dict[str, int] = field(default_factory=dict)
    significant: dict[str, int] = field(default_factory=dict)
    srm_alarms: int = 0
    not_enough: int = 0

    def add(self, analysis: dict[str, Any], truth: Truth) -> None:
        self.runs += 1
        if analysis["srm_warning"]:
            self.srm_alarms += 1
        if not analysis["enough_data"]:
            self.not_enough += 1
            return
        for name, target in truth.targets().items():
            metric, part = name.split(".")
            value = analysis[metric][part]
            hit = value["low"] is not None and value["low"] <= target <= value["high"]
            self.covered[name] = self.covered.get(name, 0) + hit
        for metric in ("conversion", "revenue"):
            p = analysis[metric]["p_value"]
            self.significant[metric] = self.significant.get(metric, 0) + (
                p is not None and p < 0.05
            )

    def rate(self, counts: dict[str, int], name: str) -> float:
        return counts.get(name, 0) / max(self.runs - self.not_enough, 1)


class Calibration:
    """One state database and one warehouse; each repetition draws new outcomes (and, with
    ``fresh_assignment``, a new salt and so a new split) and runs the report path."""

    def __init__(
        self,
        root: Path,
        *,
        members: int,
        holdout_percent: float,
        warehouse: str = "duckdb",
        seed: int = 16,
        fresh_assignment: bool = False,
    ) -> None:
        from tests.lift_world import make_world

        root.mkdir(parents=True, exist_ok=True)
        self.world: World = make_world(root, warehouse)
        self.n = members
        self.percent = holdout_percent
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.fresh = fresh_assignment
        self.keys = [f"member{i}@shop.example" for i in range(members)]
        write_mapping(
            root / "mappings",
            experiment=f"experiment: {{holdout_percent: {holdout_percent}}}",
            min_members=10,
            min_conversions=1,
        )
        os.environ.setdefault("LIFT_SECRET", "not-used")  # the webhook's, never used here
        (self.sync,) = load_all(root / "mappings")
        self.settings = Settings(
            warehouse_url=self.world.warehouse,  # type: ignore[arg-type]
            state_url=self.world.state,  # type: ignore[arg-type]
        )
        self.state = state_engine(self.world.state)
        self._assign(0)

    def _assign(self, repetition: int) -> None:
        """Groups by the real hash; history rows written the way the engine keeps them."""
        split = Split(f"calibration-{repetition}", 1, self.percent)
        self.held = np.array([split.holds(k) for k in self.keys])
        self.entered = self.np_rng.uniform(0, 86400 * 10, self.n)
        starts = [T0 + dt.timedelta(seconds=float(x)) for x in self.entered]
        self.rows = [
            (k, HOLDOUT if h else TREATED, e)
            for k, h, e in zip(self.keys, self.held.tolist(), starts, strict=True)
        ]
        clear_history(self.world.state)
        seed_history(self.world.state, "vip", self.rows, percent=self.percent, salt=split.salt)

    def drop_holdout(self, share: float) -> None:
        """The planted join bug: ``share`` of the holdout lost from the history."""
        held = [i for i, (_, g, _) in enumerate(self.rows) if g == HOLDOUT]
        lost = set(self.rng.sample(held, round(len(held) * share)))
        kept = [row for i, row in enumerate(self.rows) if i not in lost]
        clear_history(self.world.state)
        seed_history(self.world.state, "vip", kept, percent=self.percent)

    def outcomes(self, truth: Truth) -> None:
        """One order per converting member, inside their window; some noise outside it."""
        rng = self.np_rng
        p = np.where(self.held, truth.p_holdout, truth.p_treated)
        converts = np.flatnonzero(rng.random(self.n) < p)
        at = self.entered[converts] + rng.uniform(0, 86400 * 29.9, converts.size)
        values = rng.lognormal(truth.mu, truth.sigma, converts.size)
        upper = rng.random(converts.size) < 0.1  # as the shop spells them: same member
        rows: list[tuple[str, dt.datetime, float | None]] = [
            (
                self.keys[i].upper() if up else self.keys[i],
                T0 + dt.timedelta(seconds=float(t)),
                float(v),
            )
            for i, t, v, up in zip(converts, at, values, upper, strict=True)
        ]
        noise = np.flatnonzero(rng.random(self.n) < 0.01)  # before entry or after the window
        rows += [
            (self.keys[i], T0 + dt.timedelta(seconds=float(self.entered[i]), days=d), 100.0)
            for i, d in zip(noise, rng.choice([-2.0, 31.0], noise.size), strict=True)
        ]
        write_outcomes(self.world.warehouse, rows)

    def repetition(self, index: int, truth: Truth) -> dict[str, Any]:
        if self.fresh and index:
            self._assign(index)
        self.outcomes(truth)
        return self.report()

    def report(self) -> dict[str, Any]:
        return report(self.sync, self.settings, self.state, self.percent)


def report(sync: LoadedSync, settings: Settings, state: Any, percent: float) -> dict[str, Any]:
    """lift_query's totals of phase 1, analysed by syncer.lift."""
    data = measure(sync, settings, state, 1, as_of=AS_OF)
    return analyse(
        GroupTotals(**data.treated.as_dict()),
        GroupTotals(**data.holdout.as_dict()),
        LiftSettings(percent, min_holdout_members=10, min_holdout_conversions=1),
    ).as_dict()
