"""Alerts: a Slack-compatible webhook told when a sync starts failing and when it recovers.

One message per incident, not one per failing run: each sync has a row in ``syncer_alerts``
(``ok`` or ``failing``) and a message is sent only by the replica whose compare-and-swap moves
that row from one state to the other, so several daemons sharing a state database agree on
what was already said. If the webhook cannot be reached the state is put back, so the next run
tries again rather than the incident going unannounced.

The text names the sync, the status, the counts and the run id, and points at
``syncer run show``; never record data, the run's message (a vendor's error may quote records)
or the webhook URL.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError

from syncer import metrics
from syncer.errors import SyncerError
from syncer.http import make_client
from syncer.log import get_logger
from syncer.state import alerts_table

log = get_logger("syncer.alerts")

#: Statuses that say nothing about the sync's health: nothing ran, or we were asked to stop.
NEUTRAL = frozenset({"locked", "interrupted", "running"})
FAILING = frozenset({"failed", "blocked"})
_SHOWN = ("added", "updated", "removed", "rejected", "invalid", "failed", "pending")

PostFn = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one run says about its sync: ``failing`` True/False, or None for no news."""

    failing: bool | None
    reason: str = ""


def problem_share(counts: Mapping[str, int]) -> float:
    """Records rejected, invalid or failed, as a share of every record the run handled."""
    bad = sum(counts.get(k, 0) for k in ("rejected", "invalid", "failed"))
    total = bad + sum(counts.get(k, 0) for k in ("added", "updated", "removed", "pending"))
    return bad / total if total else 0.0


def judge(status: str, counts: Mapping[str, int], threshold: float) -> Verdict:
    """Failing if the run failed, was blocked by a guard, or lost more than ``threshold`` of
    its records; healthy if it finished otherwise; no news if it did not really run."""
    if status in NEUTRAL:
        return Verdict(None)
    if status in FAILING:
        return Verdict(True, "blocked by a guard" if status == "blocked" else "failed")
    share = problem_share(counts)
    if share > threshold:
        return Verdict(True, f"{share:.0%} of its records were rejected, invalid or failed")
    return Verdict(False)


#: Seconds an alert post may take as a whole (syncer's HTTP client: an overall deadline, no
#: redirects, a size limit), so a webhook that trickles its answer cannot hold a worker.
ALERT_TIMEOUT = 10.0


def _post(url: str, payload: dict[str, Any]) -> None:
    with make_client(ALERT_TIMEOUT) as http:
        http.post(url, json=payload)  # raises a SyncerError unless the answer is a 2xx


class Alerter:
    """Decides and sends alerts for finished runs; a no-op without a webhook URL."""

    def __init__(
        self,
        engine: Callable[[], Engine],
        url: str | None,
        threshold: float,
        *,
        post: PostFn = _post,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self.url = url
        self.threshold = threshold
        self._post = post
        self._clock = clock

    def observe(
        self, sync: str, status: str, counts: Mapping[str, int], run_id: str | None
    ) -> str | None:
        """Update the sync's alert state after a run; returns the alert kind sent, if any."""
        if not self.url:
            return None
        verdict = judge(status, counts, self.threshold)
        if verdict.failing is None:
            return None
        kind = "failing" if verdict.failing else "recovered"
        before, after = ("ok", "failing") if verdict.failing else ("failing", "ok")
        if not self._swap(sync, before, after, run_id, verdict.reason):
            return None
        text = self._text(sync, kind, status, counts, run_id, verdict.reason)
        try:
            self._post(self.url, {"text": text})
        except (httpx.HTTPError, OSError, SyncerError) as exc:
            # Put the state back so the next run announces it instead.
            self._swap(sync, after, before, run_id, verdict.reason)
            metrics.ALERTS.labels(kind=kind, result="failed").inc()
            log.warning("alert.failed", sync=sync, run_id=run_id, error=type(exc).__name__)
            return None
        metrics.ALERTS.labels(kind=kind, result="sent").inc()
        log.info("alert.sent", sync=sync, run_id=run_id, kind=kind, status=status)
        return kind

    def _swap(self, sync: str, before: str, after: str, run_id: str | None, reason: str) -> bool:
        """Move the sync's alert row from ``before`` to ``after``; True if this call did."""
        values = {"state": after, "since": self._clock(), "run_id": run_id, "reason": reason[:40]}
        engine = self._engine()
        with engine.begin() as conn:
            moved = conn.execute(
                update(alerts_table)
                .where(alerts_table.c.sync == sync, alerts_table.c.state == before)
                .values(**values)
            ).rowcount
            if moved:
                return True
            exists = conn.execute(
                select(alerts_table.c.state).where(alerts_table.c.sync == sync)
            ).first()
        if exists is not None or before != "ok":
            return False  # already in that state (or never failed: nothing to recover from)
        try:  # first verdict ever for this sync, and it is failing
            with engine.begin() as conn:
                conn.execute(alerts_table.insert().values(sync=sync, **values))
        except IntegrityError:
            return False  # another replica recorded it first, and alerts
        return True

    @staticmethod
    def _text(
        sync: str,
        kind: str,
        status: str,
        counts: Mapping[str, int],
        run_id: str | None,
        reason: str,
    ) -> str:
        shown = ", ".join(f"{k} {counts[k]}" for k in _SHOWN if counts.get(k))
        run = f"run {run_id}" if run_id else "no run recorded"
        if kind == "failing":
            head = f":rotating_light: syncer: sync `{sync}` is failing: {reason} (status {status})"
        else:
            head = f":white_check_mark: syncer: sync `{sync}` recovered (status {status})"
        detail = f"{run}" + (f"; {shown}" if shown else "")
        hint = f"\n`syncer run show {run_id}` lists the records' outcomes." if run_id else ""
        return f"{head}\n{detail}{hint}"
