"""Metrics: what runs, the HTTP layer, the rate limiter and the lease count, with safe labels."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from syncer import metrics
from syncer.errors import RateLimited
from syncer.http import DestinationClient
from syncer.lease import Lease
from syncer.ratelimit import AccountLimiter, RateLimit, limiter_for
from syncer.state import leases_table, state_engine


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_run_counts_by_status_operation_and_outcome() -> None:
    before = value("syncer_records_total", sync="m1", operation="update", outcome="rejected")
    metrics.record_run(
        "m1",
        "partial",
        2.5,
        {("add", "accepted"): 5, ("update", "rejected"): 2, ("remove", "weird"): 1},
        {"added": 5, "rejected": 2},
        finished_at=1000.0,
    )
    assert value("syncer_runs_total", sync="m1", status="partial") == 1
    assert value("syncer_records_total", sync="m1", operation="add", outcome="accepted") == 5
    assert (
        value("syncer_records_total", sync="m1", operation="update", outcome="rejected")
        == before + 2
    )
    assert value("syncer_run_duration_seconds_sum", sync="m1") == 2.5
    assert value("syncer_last_success_timestamp_seconds", sync="m1") == 0  # partial: no success
    metrics.record_run("m1", "succeeded", 1.0, None, {"added": 3}, finished_at=2000.0)
    assert value("syncer_last_success_timestamp_seconds", sync="m1") == 2000.0
    assert value("syncer_records_total", sync="m1", operation="add", outcome="accepted") == 8
    text = metrics.render().decode()
    assert 'outcome="weird"' not in text  # unknown label values never become series


def test_429s_are_counted_by_the_http_layer_per_connector() -> None:
    before = value("syncer_http_429_responses_total", connector="hubspot")
    transport = httpx.MockTransport(lambda request: httpx.Response(429))
    limiter = limiter_for("hubspot:api.example.test:0123abcd", [], 1, registry={})
    with (
        DestinationClient(transport=transport, limiter=limiter) as client,
        pytest.raises(RateLimited),
    ):
        client.post("https://api.example.test/x", json={"email": "a@b.c"})
    assert value("syncer_http_429_responses_total", connector="hubspot") == before + 1
    # Only the connector's name becomes a label, never the account behind it.
    assert "0123abcd" not in metrics.render().decode()


def test_rate_limit_waits_are_counted_by_the_limiter() -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    limiter = AccountLimiter(
        [RateLimit(1, 1.0)], 1, clock=lambda: now[0], sleep=sleep, connector="klaviyo"
    )
    waits = value("syncer_rate_limit_waits_total", connector="klaviyo")
    seconds = value("syncer_rate_limit_wait_seconds_total", connector="klaviyo")
    for _ in range(3):
        assert limiter.acquire()
        limiter.release()
    # The first went at once; the other two waited a second each.
    assert value("syncer_rate_limit_waits_total", connector="klaviyo") == waits + 2
    assert value("syncer_rate_limit_wait_seconds_total", connector="klaviyo") == pytest.approx(
        seconds + 2.0, abs=0.1
    )


def test_lease_takeovers_are_counted(tmp_path: Path) -> None:
    engine = state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    Lease(engine, "taken", ttl=3600).acquire()
    with engine.begin() as conn:
        conn.execute(update(leases_table).values(pid=2**22 + 12345))  # a dead process
    Lease(engine, "taken", ttl=3600).acquire()
    assert value("syncer_lease_takeovers_total", sync="taken") == 1


def test_labels_are_only_names_statuses_operations_and_outcomes() -> None:
    metrics.record_run("m2", "failed", 0.1, None, {"failed": 4}, finished_at=1.0)
    allowed = {"sync", "status", "operation", "outcome", "result", "kind", "connector", "le"}
    for family in metrics.REGISTRY.collect():
        for sample in family.samples:
            assert set(sample.labels) <= allowed, (family.name, sample.labels)
