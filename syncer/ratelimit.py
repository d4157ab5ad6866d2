"""Client-side rate limiting per destination account, shared by every sync in the process.

A vendor publishes limits per *account* (per API key, per workspace), not per sync, so two
syncs to the same account must draw from one budget: :func:`limiter_for` hands out one
:class:`AccountLimiter` per account key. A limiter enforces, all at once:

* every :class:`RateLimit` window ("100 requests per 10 s" *and* "250,000 per day"), counted
  in a sliding window, so no interval of ``per_seconds`` ever sees more than ``requests``
  grants, whether the vendor counts in fixed or sliding windows;
* pacing: grants are spaced ``per_seconds / requests`` apart for the strictest window of at
  most :data:`PACING_HORIZON` seconds, so a destination is driven *at* its limit instead of
  getting 100 requests in the first millisecond and then nothing for ten seconds. Longer
  windows (hourly/daily quotas) are only counted: pacing to a daily average would make a
  short sync crawl, and once a quota is spent the vendor would refuse us anyway;
* at most ``max_concurrency`` permits out at a time (requests in flight);
* a cool-down: after a 429 the HTTP layer calls :meth:`AccountLimiter.rate_limited` and every
  thread sending to that account waits, not just the one that was told off;
* the account's 429 history (:class:`Strikes`): the cool-down after a 429 without a
  ``Retry-After`` doubles with the account's *recent* 429s, and that history fades with time
  and successes instead of resetting on one success, so a vendor that answers
  success, 429, success, 429... is backed off from, not hammered;
* adaptive pacing: a 429 without ``Retry-After`` (the vendor said "too fast" and not when to
  come back) also spaces the account's requests further apart, at least as far apart as they
  were in the second before the 429 and twice as far as before; the extra spacing fades with
  every success and with time, so an unpublished limit (Mailchimp's, say) is found and kept
  instead of being hit again by every batch.

Why not pyrate-limiter (4.5)? It covers the first point only, and in the bursty way: its
buckets are sliding-window logs that grant a whole window's worth at once. It has no
concurrency cap, no cool-down, no stop event to abandon a wait on shutdown, and its sleeping
happens inside the library against its own clocks, so tests could not drive it with a fake
clock and a fake sleep. Wrapping it would mean a semaphore, a cool-down and a pacing layer
around it plus a second lock: more code than the ~100 lines below, and another dependency.

Memory: a window of up to 1024 requests keeps one timestamp per grant (exact). A bigger
quota keeps its grants in time buckets of ``per_seconds / 1024``; a bucket expires with its
newest grant, which can only make us wait up to 1/1024 of the window longer, never send more,
so even a daily quota of millions holds about a thousand entries.

:class:`RateLimit` is a frozen stdlib dataclass that pydantic also validates, so the same type
serves connector code (``RateLimit(100, 10)``) and YAML (``{requests: 100, per_seconds: 10}``).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import ConfigDict, Field

#: Windows no longer than this (seconds) set the pacing; longer ones are only counted.
PACING_HORIZON = 60.0
#: Cool-down after a 429 without a usable Retry-After: this, doubling with the account's
#: recent 429s (:class:`Strikes`), at most MAX_DEFAULT_COOL_DOWN (and the engine's longest wait).
DEFAULT_COOL_DOWN = 1.0
MAX_DEFAULT_COOL_DOWN = 60.0
#: The 429 history halves every STRIKE_HALF_LIFE seconds and shrinks to this share with every
#: success: a 429 right after one success still counts nearly in full.
STRIKE_HALF_LIFE = 300.0
STRIKE_SUCCESS_DECAY = 0.75
#: Adaptive pacing: the extra spacing after bare 429s shrinks to this share with every success
#: and halves every PACE_HALF_LIFE seconds; below PACE_FLOOR seconds it is dropped, and it
#: never exceeds MAX_DEFAULT_COOL_DOWN. The rate before a 429 is counted over PACE_SAMPLE s.
PACE_SUCCESS_DECAY = 0.98
PACE_HALF_LIFE = 120.0
PACE_FLOOR = 0.001
PACE_SAMPLE = 1.0
#: Every window is stretched by this share. Requests reach the vendor a few milliseconds
#: apart from when we granted them, so pacing at exactly the published limit lets the
#: vendor's window now and then see one request too many, and each 429 costs a whole
#: cool-down for the account (measured: one 429 per ~100 requests at 50/s without it).
SAFETY_MARGIN = 0.01
# Longest single sleep while a stop event may need noticing, and the longest condition wait.
_NAP = 0.1
_GRAIN = 1024


@dataclass(frozen=True)
class RateLimit:
    """At most ``requests`` grants in any ``per_seconds`` interval."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    requests: Annotated[int, Field(gt=0)]
    per_seconds: Annotated[float, Field(gt=0, allow_inf_nan=False)]

    def __post_init__(self) -> None:
        if isinstance(self.requests, bool) or not isinstance(self.requests, int):
            raise ValueError("requests must be a whole number")
        if self.requests <= 0:
            raise ValueError("requests must be greater than 0")
        seconds = float(self.per_seconds)
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError("per_seconds must be a finite number greater than 0")
        object.__setattr__(self, "per_seconds", seconds)

    @property
    def interval(self) -> float:
        """Seconds between grants when paced exactly at this rate."""
        return self.per_seconds / self.requests


class _Window:
    """Grants of the last ``per_seconds``, in coarse time buckets ``[first, last, count]``."""

    def __init__(self, rate: RateLimit) -> None:
        self.rate = rate
        # Exact (one entry per grant) up to _GRAIN requests, coarse buckets for big quotas.
        self.grain = rate.per_seconds / _GRAIN if rate.requests > _GRAIN else 0.0
        self.buckets: deque[list[float]] = deque()
        self.count = 0

    def wait(self, now: float) -> float:
        """Seconds until this window has room (0 if it has room now)."""
        span = self.rate.per_seconds * (1 + SAFETY_MARGIN)
        while self.buckets and self.buckets[0][1] + span <= now:
            self.count -= int(self.buckets.popleft()[2])
        if self.count < self.rate.requests:
            return 0.0
        return self.buckets[0][1] + span - now

    def record(self, now: float) -> None:
        tail = self.buckets[-1] if self.buckets else None
        if tail is not None and now - tail[0] < self.grain:
            tail[1] = max(tail[1], now)
            tail[2] += 1
        else:
            self.buckets.append([now, now, 1])
        self.count += 1


class Strikes:
    """An account's recent 429s as a score, and the cool-down it earns.

    Each 429 adds 1; the score halves every :data:`STRIKE_HALF_LIFE` seconds and shrinks to
    :data:`STRIKE_SUCCESS_DECAY` of itself with each success. The default cool-down is
    ``DEFAULT_COOL_DOWN * 2 ** (round(score) - 1)``: 1 s for a first 429, 2, 4, 8 s... for 429s
    in a row, and still growing when successes and 429s alternate (the score settles at 4,
    an 8 s cool-down), where resetting on each success would retry at 1 s forever.
    Thread-safe.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._score = 0.0
        self._at = 0.0

    def _now_score(self, now: float) -> float:
        return self._score * float(0.5 ** (max(0.0, now - self._at) / STRIKE_HALF_LIFE))

    @property
    def score(self) -> float:
        with self._lock:
            return self._now_score(self._clock())

    def hit(self) -> float:
        """Count a 429; the default cool-down it earns (seconds)."""
        with self._lock:
            now = self._clock()
            self._score, self._at = self._now_score(now) + 1.0, now
            return self._wait()

    def wait(self) -> float:
        """The default cool-down the history earns now, without counting a new 429."""
        with self._lock:
            now = self._clock()
            self._score, self._at = self._now_score(now), now
            return self._wait()

    def success(self) -> None:
        with self._lock:
            now = self._clock()
            self._score, self._at = self._now_score(now) * STRIKE_SUCCESS_DECAY, now

    def _wait(self) -> float:
        doublings = max(0, math.floor(self._score + 0.5) - 1)
        return min(DEFAULT_COOL_DOWN * 2.0 ** min(doublings, 16), MAX_DEFAULT_COOL_DOWN)


class AccountLimiter:
    """Blocking, thread-safe permits for one destination account (see module docstring).

    ``clock`` and ``sleep`` are injectable: time-based waits are computed under the lock and
    slept outside it with ``sleep(seconds)``, then re-checked, so a fake clock that the fake
    sleep advances makes tests instant. Waiting for a free concurrency slot uses the
    condition variable (woken by :meth:`release`), which needs no clock.
    """

    def __init__(
        self,
        rates: Sequence[RateLimit],
        max_concurrency: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = time.sleep,
        connector: str = "",
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        #: The connector's name, for metric labels (never the account itself).
        self.connector = connector
        self._clock = clock
        self._sleep = sleep
        self._cond = threading.Condition()
        self._windows: list[_Window] = []
        self._spacing = 0.0
        self._next_at = -math.inf
        self._cool_until = -math.inf
        self._in_flight = 0
        # The 429 history and adaptive pacing (see the module docstring).
        self.strikes = Strikes(clock)
        self._pace = 0.0  # extra spacing after bare 429s, as of _pace_at
        self._pace_at = 0.0
        self._last_grant = -math.inf
        self._recent: deque[float] = deque()  # grant times of the last PACE_SAMPLE seconds
        self._last_strike = -math.inf  # when the last 429 that counted was noted
        self._mine = threading.local()  # .granted: when this thread's last permit was granted
        self.max_concurrency = max_concurrency
        # Counters for benchmarks and logs; written under the lock, read freely.
        self.acquired = 0
        self.waited_s = 0.0
        self.cooldowns = 0
        self._add_rates(rates)

    @property
    def rates(self) -> tuple[RateLimit, ...]:
        return tuple(w.rate for w in self._windows)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def tighten(self, rates: Sequence[RateLimit], max_concurrency: int) -> None:
        """Add windows this limiter lacks and lower the concurrency; never loosens anything."""
        with self._cond:
            self._add_rates(rates)
            self.max_concurrency = max(1, min(self.max_concurrency, max_concurrency))
            self._cond.notify_all()

    def _add_rates(self, rates: Sequence[RateLimit]) -> None:
        have = {w.rate for w in self._windows}
        for rate in rates:
            if rate not in have:
                self._windows.append(_Window(rate))
                have.add(rate)
        paced = [w.rate.interval for w in self._windows if w.rate.per_seconds <= PACING_HORIZON]
        self._spacing = max(paced, default=0.0) * (1 + SAFETY_MARGIN)

    @property
    def pace(self) -> float:
        """Extra seconds between requests that 429s without Retry-After asked for, now."""
        with self._cond:
            return self._pace_now(self._clock())

    def _pace_now(self, now: float) -> float:
        if self._pace <= 0:
            return 0.0
        pace = self._pace * float(0.5 ** (max(0.0, now - self._pace_at) / PACE_HALF_LIFE))
        return pace if pace >= PACE_FLOOR else 0.0

    def _time_to_wait(self, now: float) -> float:
        pace = self._pace_now(now)
        waits = [self._cool_until - now, self._next_at - now, self._last_grant + pace - now]
        waits += [w.wait(now) for w in self._windows]
        return max(0.0, *waits)

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Block until a request may be sent and take a permit; False if ``stop`` got set."""
        # Imported here, with the first request (a run that sends nothing never loads
        # prometheus_client), and before the permit: the import must not delay a request
        # after it was paced.
        from syncer.metrics import rate_limit_waited

        start = self._clock()
        while True:
            if stop is not None and stop.is_set():
                return False
            with self._cond:
                now = self._clock()
                wait = self._time_to_wait(now)
                if wait <= 0 and self._in_flight < self.max_concurrency:
                    self._grant(now)
                    self.waited_s += max(0.0, now - start)
                    rate_limit_waited(now - start, self.connector)
                    return True
                if wait <= 0:  # only the concurrency cap is in the way: release() wakes us
                    self._cond.wait(_NAP)
                    continue
            self._sleep(min(wait, _NAP) if stop is not None else wait)

    def _grant(self, now: float) -> None:
        for window in self._windows:
            window.record(now)
        if self._spacing:
            # A sleep that overshot by up to half an interval is made up on the next grant;
            # after a longer idle the schedule restarts from now (no saved-up burst).
            on_time = now - self._next_at <= self._spacing / 2
            self._next_at = (self._next_at if on_time else now) + self._spacing
        self._in_flight += 1
        self.acquired += 1
        self._last_grant = now
        self._mine.granted = now
        self._recent.append(now)
        while self._recent and self._recent[0] <= now - PACE_SAMPLE:
            self._recent.popleft()

    def release(self) -> None:
        """Give back a permit taken by :meth:`acquire`."""
        with self._cond:
            if self._in_flight <= 0:
                raise RuntimeError("release() without a matching acquire()")
            self._in_flight -= 1
            self._cond.notify()

    @contextmanager
    def permit(self, stop: threading.Event | None = None) -> Iterator[bool]:
        """``with limiter.permit() as granted:``; ``granted`` is False only if ``stop`` was set
        (then nothing is held and the block should not send)."""
        granted = self.acquire(stop)
        try:
            yield granted
        finally:
            if granted:
                self.release()

    def cool_down(self, seconds: float) -> None:
        """Hold every acquirer of this account until ``seconds`` from now (never shortens)."""
        if not math.isfinite(seconds) or seconds <= 0:
            return
        with self._cond:
            self._cool_until = max(self._cool_until, self._clock() + seconds)
            self.cooldowns += 1

    def rate_limited(self, retry_after: float | None, max_wait: float = math.inf) -> float:
        """The vendor answered this thread's latest request with a 429: add it to the account's
        history, cool the account down, and return the wait (``retry_after`` when the vendor
        gave one, else the default cool-down the history earns, at most ``max_wait``).

        Only a 429 on a request granted after the previous counted 429 was noted counts: the
        requests already in flight then were sent at the old pace and say nothing new, so a
        burst of ten 429s is one strike, not ten. A 429 without ``Retry-After`` that counts
        also slows the account's pace (see the module docstring).
        """
        with self._cond:
            now = self._clock()
            granted = getattr(self._mine, "granted", None)
            counted = granted is None or granted >= self._last_strike
            if counted:
                self._last_strike = now
                default = self.strikes.hit()
                if retry_after is None:
                    self._slow_pace(now)
            else:
                default = self.strikes.wait()
            wait = min(default, max_wait) if retry_after is None else retry_after
        self.cool_down(wait)
        return wait

    def _slow_pace(self, now: float) -> None:
        """At least the spacing of the last PACE_SAMPLE seconds' grants, and twice the
        spacing in force; never above MAX_DEFAULT_COOL_DOWN. A 429 on a lone request in that
        second says nothing about our pace (a throttle of another kind, or a window we cannot
        see): only the cool-down, and twice a pace already in force, answer it."""
        while self._recent and self._recent[0] <= now - PACE_SAMPLE:
            self._recent.popleft()
        current = max(self._spacing, self._pace_now(now))
        observed = PACE_SAMPLE / len(self._recent) if len(self._recent) >= 2 else 0.0
        self._pace = min(max(2 * current, observed), MAX_DEFAULT_COOL_DOWN)
        self._pace_at = now

    def succeeded(self) -> None:
        """The vendor accepted a request: the 429 history and the extra pacing fade a little."""
        self.strikes.success()
        with self._cond:
            now = self._clock()
            self._pace = self._pace_now(now) * PACE_SUCCESS_DECAY
            self._pace_at = now


_registry: dict[str, AccountLimiter] = {}
_registry_lock = threading.Lock()


def limiter_for(
    account: str,
    rates: Sequence[RateLimit],
    max_concurrency: int,
    *,
    registry: dict[str, AccountLimiter] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Any] = time.sleep,
) -> AccountLimiter:
    """The limiter of ``account`` in ``registry`` (default: process-wide), made on first use.

    Syncs to the same account share it. A later call with other limits can only tighten it
    (its windows are added, the concurrency becomes the lower of the two); nothing ever
    loosens a limiter during the life of the registry. ``clock``/``sleep`` apply to a new one.
    """
    table = _registry if registry is None else registry
    with _registry_lock:
        limiter = table.get(account)
        if limiter is None:
            # Account keys start with the connector's name ("hubspot:..."): only that part
            # goes into metric labels.
            limiter = table[account] = AccountLimiter(
                rates, max_concurrency, clock=clock, sleep=sleep, connector=account.split(":")[0]
            )
        else:
            limiter.tighten(rates, max_concurrency)
        return limiter
