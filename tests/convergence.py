"""The issue's hostile week, as a repeatable scenario: a vendor with a rate limit that answers
a seeded-random share of requests with a 503, a realistic segment, and ``sync now`` repeated
until the destination holds the segment (used by test_e2e_convergence.py and the longer
``bench/steps_soak.py``).

The real engine runs in-process on :class:`~tests.engine_world.ScaledTime`: engine, account
limiter and the vendor's rate limit share one clock running ``factor`` times faster than real
time, so a vendor allowing one request a second behaves as it would, only sooner.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncer.engine import RunResult
from tests.engine_world import ScaledTime, World
from tests.fake_klaviyo import FakeKlaviyo
from tests.fake_mailchimp import FakeMailchimp

KLAVIYO_KEY = "pk_soak_0123456789abcdef"
MAILCHIMP_KEY = "soak0123456789abcdef0123456789ab-us21"


@dataclass
class Report:
    vendor: str
    records: int
    runs: list[dict[str, Any]] = field(default_factory=list)
    batches: int = 0  # batches the engine sent, over all runs
    jobs: int = 0  # import jobs (Klaviyo) or successful subscribe calls (Mailchimp) made
    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    virtual_s: float = 0.0
    wall_s: float = 0.0
    converged: bool = False

    def line(self) -> str:
        codes = " ".join(f"{k}:{v}" for k, v in sorted(self.statuses.items()))
        return (
            f"{self.vendor}: {self.records} records, converged={self.converged} after"
            f" {len(self.runs)} run(s); {self.batches} batches, {self.jobs} jobs/subscribes"
            f" ({self.jobs / max(1, self.batches):.2f} per batch); {self.requests} requests"
            f" ({self.requests / max(1, self.batches):.1f} per batch) [{codes}];"
            f" {self.virtual_s:.0f} s vendor time, {self.wall_s:.1f} s wall"
        )


def _summary(result: RunResult) -> dict[str, Any]:
    keep = ("added", "failed", "rejected")
    return {"status": result.status, **{k: result.counts.get(k, 0) for k in keep}}


def _repeat(
    report: Report,
    world: World,
    batch_size: int,
    done: Any,
    max_runs: int,
) -> None:
    started = time.monotonic()
    for _ in range(max_runs):
        result = world.run()
        report.runs.append(_summary(result))
        sent = sum(result.counts.get(k, 0) for k in ("added", "failed", "rejected"))
        report.batches += math.ceil(sent / batch_size)
        if result.status == "succeeded" and done():
            report.converged = True
            break
    report.wall_s = time.monotonic() - started


def klaviyo(
    root: Path,
    *,
    records: int = 2_000,
    share: float = 0.2,
    seed: int = 12,
    factor: float = 20.0,
    max_runs: int = 6,
    batch_size: int = 1_000,
    **settings: Any,
) -> Report:
    """Klaviyo at its published limits (10/s, 150/min), ``share`` of answers a 503."""
    timing = ScaledTime(factor)
    rows = [(f"member{i:06}@example.com", f"Name{i}") for i in range(records)]
    with FakeKlaviyo(KLAVIYO_KEY, "L1") as vendor:
        assert isinstance(vendor, FakeKlaviyo)
        vendor.limit(10, 1.0, clock=timing.clock)
        vendor.limit(150, 60.0, clock=timing.clock)
        vendor.chaos(share, seed)
        world = World(
            root,
            f"""
source: {{query: 'select email, first_name from segment', key: email, key_type: email}}
mode: mirror
fields: {{email: {{column: email, type: email}}, first_name: first_name}}
destination:
  connector: klaviyo
  api_key: ${{KLAVIYO_API_KEY}}
  list_id: L1
  base_url: {vendor.url}
  batch_size: {batch_size}
""",
            {"KLAVIYO_API_KEY": KLAVIYO_KEY},
            timing=timing,
            **{"http_timeout": 10.0, **settings},
        )
        world.segment(("email", "first_name"), rows)
        report = Report("klaviyo", records)
        wanted = {row[0] for row in rows}
        _repeat(report, world, batch_size, lambda: vendor.member_emails() == wanted, max_runs)
        report.jobs = len(vendor.jobs)
        report.requests = len(vendor.requests)
        report.statuses = dict(Counter(vendor.statuses))
        report.virtual_s = timing.clock()
    return report


def mailchimp(
    root: Path,
    *,
    records: int = 2_000,
    per_second: int = 1,
    share: float = 0.2,
    seed: int = 12,
    factor: float = 20.0,
    max_runs: int = 6,
    batch_size: int = 500,
    **settings: Any,
) -> Report:
    """Mailchimp allowing ``per_second`` requests (a bare 429 beyond), ``share`` 503s; the
    tag changed as a static segment (subscribe, then one segment call per batch)."""
    timing = ScaledTime(factor)
    rows = [(f"member{i:06}@example.com", f"Name{i}") for i in range(records)]
    with FakeMailchimp(MAILCHIMP_KEY, "aud1") as vendor:
        assert isinstance(vendor, FakeMailchimp)
        vendor.limit(per_second, 1.0, clock=timing.clock)
        vendor.chaos(share, seed)
        world = World(
            root,
            f"""
source: {{query: 'select email, first_name from segment', key: email, key_type: email}}
mode: mirror
fields: {{email: {{column: email, type: email}}, FNAME: first_name}}
destination:
  connector: mailchimp
  api_key: ${{MAILCHIMP_API_KEY}}
  base_url: {vendor.url}/3.0
  list_id: aud1
  tag: vip
  batch_size: {batch_size}
""",
            {"MAILCHIMP_API_KEY": MAILCHIMP_KEY},
            timing=timing,
            **{"http_timeout": 10.0, **settings},
        )
        world.segment(("email", "first_name"), rows)
        report = Report("mailchimp", records)
        wanted = {row[0] for row in rows}
        _repeat(report, world, batch_size, lambda: vendor.tagged("vip") == wanted, max_runs)
        subscribe = re.compile(r"/lists/[^/]+$")
        report.jobs = sum(
            1
            for req, status in vendor.handled
            if req.method == "POST" and subscribe.search(req.url.split("?")[0]) and status == 200
        )
        report.requests = len(vendor.requests)
        report.statuses = dict(Counter(vendor.statuses))
        report.virtual_s = timing.clock()
    return report
