"""What is retried, how long to wait, and when to give up (dlt's retry semantics).

A TransientError (a 5xx, a 429, a dropped connection, as the HTTP layer classifies them) is
tried again after the destination's Retry-After (clamped) or a jittered exponential backoff;
waiting out a 429 does not use up an attempt. Every other error ends the call at once. A
batch's time budget bounds the attempts, the waits and each request in real time, and a stop
request ends any wait early, so shutdown is never held up by a backoff.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from syncer.connector import Connector
from syncer.errors import ConnectorCrashed, RateLimited, SyncerError, TransientError, where
from syncer.http import time_limit
from syncer.settings import Settings

if TYPE_CHECKING:
    from tenacity import RetryCallState

T = TypeVar("T")


class RetryPolicy:
    """Retries on the engine's clock, sleep and stop event (tests drive time through them)."""

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float],
        sleep: Callable[[float], Any],
        stop: threading.Event,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.sleep = sleep
        self.stop = stop

    def __call__(self, attempt: Callable[[], T]) -> T:
        """``attempt()`` until it succeeds, fails for good, or the batch's budget runs out.

        Waiting out a 429 does not use up an attempt; the budget bounds the total either way.
        """
        # tenacity loads with the first batch sent, not with every run (most send nothing).
        from tenacity import Retrying, retry_if_exception_type, wait_exponential_jitter

        settings = self.settings
        stop = self.stop
        clock = self.clock
        begun = clock()
        failures = 0
        backoff = wait_exponential_jitter(initial=1, max=60)

        def pause(state: RetryCallState) -> float:
            """Retry-After when the destination gave one (clamped), else jittered backoff."""
            exc = state.outcome.exception() if state.outcome else None
            asked = getattr(exc, "retry_after", None)
            if asked is not None:
                return min(float(asked), settings.max_retry_after)
            return float(backoff(state))

        def give_up(state: RetryCallState) -> bool:
            """Stop on request, when attempts run out, or when the next wait would overrun.

            tenacity computes the wait first, so ``upcoming_sleep`` is the wait ahead.
            """
            nonlocal failures
            if stop.is_set():
                return True
            exc = state.outcome.exception() if state.outcome else None
            if not isinstance(exc, RateLimited):
                failures += 1
            spent = clock() - begun
            return (
                failures >= settings.retry_attempts
                or spent + state.upcoming_sleep > settings.batch_time_budget
            )

        retrying = Retrying(
            retry=retry_if_exception_type(TransientError),
            stop=give_up,
            wait=pause,
            sleep=self.sleep,
            reraise=True,
        )
        # The budget also bounds each request (and a wait for the rate limiter) in real time,
        # so a destination that trickles its answer cannot hold a batch past it.
        with time_limit(settings.batch_time_budget):
            return retrying(attempt)

    def pause(self, seconds: float) -> bool:
        """A connector's wait between job polls, on the engine's clock; False once stopping."""
        if self.stop.is_set():
            return False
        self.sleep(max(0.0, seconds))
        return not self.stop.is_set()


def guarded(connector: Connector, step: str, call: Callable[[], T]) -> T:
    """Run a connector call; anything outside the error contract becomes ConnectorCrashed
    (never retried: a bug does not go away by asking again)."""
    try:
        return call()
    except (SyncerError, httpx.HTTPError):
        raise
    except Exception as exc:
        raise ConnectorCrashed(
            f"connector {connector.name!r} crashed in {step} ({where(exc)})"
        ) from exc
