"""Prometheus metrics of the daemon (``/metrics``), on a registry of syncer's own.

Labels carry only sync names, run statuses, operations, outcomes and connector names: never a
record key, an account id, a host or a URL, so a dashboard cannot leak identifiers and the
number of series stays bounded by the number of syncs. The HTTP layer, the rate limiter and
the lease call the small functions at the bottom; in ``sync now`` nobody serves the registry,
so they cost a counter increment and nothing else, and they import this module (and
prometheus_client) where they first count something, so a run that counts nothing never
loads it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

__all__ = ["CONTENT_TYPE", "REGISTRY", "render"]

# ``*_created`` series double the output and no syncer dashboard needs them.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry(auto_describe=True)

RUNS = Counter(
    "syncer_runs",
    "Runs finished, by sync and status (succeeded, partial, failed, blocked, locked...).",
    ["sync", "status"],
    registry=REGISTRY,
)
RECORDS = Counter(
    "syncer_records",
    "Records handled by runs, by sync, operation (add, update, remove) and outcome.",
    ["sync", "operation", "outcome"],
    registry=REGISTRY,
)
RUN_DURATION = Histogram(
    "syncer_run_duration_seconds",
    "Wall-clock duration of runs, by sync.",
    ["sync"],
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200),
    registry=REGISTRY,
)
LAST_SUCCESS = Gauge(
    "syncer_last_success_timestamp_seconds",
    "Unix time the sync last finished a run without problems.",
    ["sync"],
    registry=REGISTRY,
)
RUNNING = Gauge(
    "syncer_runs_in_progress",
    "Runs of the sync in progress in this process (0 or 1).",
    ["sync"],
    registry=REGISTRY,
)
TICKS = Counter(
    "syncer_ticks",
    "Scheduled ticks seen by this replica, by sync and result (claimed, taken_elsewhere).",
    ["sync", "result"],
    registry=REGISTRY,
)
RATE_LIMIT_WAITS = Counter(
    "syncer_rate_limit_waits",
    "Requests that waited for the account's rate limiter before being sent, by connector.",
    ["connector"],
    registry=REGISTRY,
)
RATE_LIMIT_WAIT_SECONDS = Counter(
    "syncer_rate_limit_wait_seconds",
    "Seconds requests spent waiting for the rate limiter, by connector.",
    ["connector"],
    registry=REGISTRY,
)
HTTP_429 = Counter(
    "syncer_http_429_responses",
    "Destination answers that said slow down (HTTP 429 or a vendor's equivalent), by connector.",
    ["connector"],
    registry=REGISTRY,
)
LEASE_TAKEOVERS = Counter(
    "syncer_lease_takeovers",
    "Leases taken over from a run that had died or stopped renewing, by sync.",
    ["sync"],
    registry=REGISTRY,
)
ALERTS = Counter(
    "syncer_alerts_sent",
    "Alert webhook calls, by kind (failing, recovered) and result (sent, failed).",
    ["kind", "result"],
    registry=REGISTRY,
)
SCHEDULED_SYNCS = Gauge(
    "syncer_scheduled_syncs",
    "Syncs with a schedule currently loaded by the daemon.",
    registry=REGISTRY,
)
RELOADS = Counter(
    "syncer_reloads",
    "Reloads of the mappings directory, by result (ok, error).",
    ["result"],
    registry=REGISTRY,
)

#: ``RunResult.counts`` key -> (operation, outcome), when the audit log cannot be read.
_COUNT_LABELS: Mapping[str, tuple[str, str]] = {
    "added": ("add", "accepted"),
    "updated": ("update", "accepted"),
    "removed": ("remove", "accepted"),
    "rejected": ("any", "rejected"),
    "failed": ("any", "failed"),
    "invalid": ("any", "invalid"),
    "pending": ("any", "pending"),
}
OPERATIONS = frozenset({"add", "update", "remove", "any"})
OUTCOMES = frozenset({"accepted", "rejected", "failed", "invalid", "pending"})


def record_run(
    sync: str,
    status: str,
    duration_s: float,
    outcomes: Mapping[tuple[str, str], int] | None,
    counts: Mapping[str, int],
    finished_at: float,
) -> None:
    """Count one finished run. ``outcomes`` ((operation, outcome) -> records, from the audit
    log) is preferred; without it the run's summary counts are used."""
    RUNS.labels(sync=sync, status=status).inc()
    if status == "locked":
        return  # nothing ran
    RUN_DURATION.labels(sync=sync).observe(max(0.0, duration_s))
    if outcomes is None:
        outcomes = {
            _COUNT_LABELS[name]: n for name, n in counts.items() if name in _COUNT_LABELS and n
        }
    for (operation, outcome), n in outcomes.items():
        if n > 0 and operation in OPERATIONS and outcome in OUTCOMES:
            RECORDS.labels(sync=sync, operation=operation, outcome=outcome).inc(n)
    if status in ("succeeded", "submitted", "waiting"):
        LAST_SUCCESS.labels(sync=sync).set(finished_at)


def forget_sync(sync: str) -> None:
    """Drop the gauges of a sync that was removed from the mappings (counters stay)."""
    for gauge in (LAST_SUCCESS, RUNNING):
        with contextlib.suppress(KeyError):
            gauge.remove(sync)


def rate_limit_waited(seconds: float, connector: str = "") -> None:
    """Called by the rate limiter when a request had to wait before its permit."""
    if seconds > 0:
        RATE_LIMIT_WAITS.labels(connector=connector or "unknown").inc()
        RATE_LIMIT_WAIT_SECONDS.labels(connector=connector or "unknown").inc(seconds)


def rate_limited_response(connector: str = "") -> None:
    """Called by the HTTP layer for each answer classified as rate limited."""
    HTTP_429.labels(connector=connector or "unknown").inc()


def lease_taken_over(sync: str) -> None:
    """Called by the lease when it takes a sync over from a dead or silent holder."""
    LEASE_TAKEOVERS.labels(sync=sync).inc()


def render() -> bytes:
    """The registry in the Prometheus text exposition format."""
    return generate_latest(REGISTRY)
