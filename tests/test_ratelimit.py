"""The per-account limiter: windows, pacing, concurrency, cool-downs, stopping, sharing."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any, ClassVar

import httpx
import pytest
from pydantic import ValidationError

from connectors.file import FileConnector
from connectors.webhook import WebhookConnector
from syncer.connector import Connector, ConnectorConfig, SyncContext, effective_limits
from syncer.ratelimit import SAFETY_MARGIN, AccountLimiter, RateLimit, limiter_for
from syncer.testing import FakeClock

CONTEXT = SyncContext("s", "membership", ("email",))


M = 1 + SAFETY_MARGIN  # every window is stretched by this


def limiter(fake: FakeClock, rates: Sequence[RateLimit], max_concurrency: int = 100) -> Any:
    return AccountLimiter(rates, max_concurrency, clock=fake, sleep=fake.sleep)


def grant_times(lim: AccountLimiter, fake: FakeClock, count: int) -> list[float]:
    times = []
    for _ in range(count):
        assert lim.acquire()
        times.append(fake.now)
        lim.release()
    return times


def most_in_any_window(times: list[float], seconds: float) -> int:
    """The largest number of grants inside any half-open interval of ``seconds``."""
    return max(sum(1 for t in times if start <= t < start + seconds) for start in times)


def test_two_windows_are_enforced_at_once() -> None:
    fake = FakeClock()
    lim = limiter(fake, [RateLimit(5, 1.0), RateLimit(12, 3600)])
    times = grant_times(lim, fake, 14)
    assert most_in_any_window(times, 1.0) <= 5
    # the hourly quota is spent after 12 grants: the 13th waits for the first to age out
    assert times[11] < 3
    assert times[12] == pytest.approx(times[0] + 3600 * M)
    assert most_in_any_window(times, 3600) <= 12


def test_a_big_quota_is_never_exceeded() -> None:
    fake = FakeClock()
    lim = limiter(fake, [RateLimit(5000, 3600)])  # long window: counted, not paced
    times = grant_times(lim, fake, 5001)
    assert times[4999] == 0.0  # a short sync is not slowed down to the hourly average
    # the next one waits for the window (stretched by the safety margin)
    assert 3600 * M <= times[5000] <= 3600 * M + 3600 / 1024


def test_the_strictest_short_window_sets_the_pace() -> None:
    fake = FakeClock()
    lim = limiter(fake, [RateLimit(10, 1.0), RateLimit(30, 10.0)])
    times = grant_times(lim, fake, 61)
    gaps = {round(b - a, 9) for a, b in itertools.pairwise(times)}
    assert gaps == {round(10 / 30 * M, 9)}  # 3 per second, never a burst of 10 then a stall
    assert most_in_any_window(times, 10.0) <= 30


def test_paces_evenly_at_the_limit_for_a_whole_run() -> None:
    fake = FakeClock()
    lim = limiter(fake, [RateLimit(50, 1.0)])
    times: list[float] = []
    while True:
        assert lim.acquire()
        if fake.now >= 10.0:
            break
        times.append(fake.now)
        lim.release()
    assert 493 <= len(times) <= 500  # driven at 50/s less the 1% safety margin, not more
    assert most_in_any_window(times, 1.0) <= 50
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) == pytest.approx(0.02 * M) and max(gaps) == pytest.approx(0.02 * M)
    assert lim.acquired == len(times) + 1
    assert lim.waited_s == pytest.approx(fake.now, abs=0.05)


def test_idle_time_does_not_save_up_a_burst() -> None:
    fake = FakeClock()
    lim = limiter(fake, [RateLimit(10, 1.0)])
    grant_times(lim, fake, 3)
    fake.now += 60  # nothing to send for a minute
    start = fake.now
    times = grant_times(lim, fake, 5)
    assert times[0] == start
    assert all(b - a >= 0.05 for a, b in itertools.pairwise(times))


def test_concurrency_cap_holds_the_next_request_until_one_finishes() -> None:
    lim = AccountLimiter([], max_concurrency=2)
    assert lim.acquire() and lim.acquire()
    got = threading.Event()
    waiter = threading.Thread(target=lambda: lim.acquire() and got.set())
    waiter.start()
    assert not got.wait(0.15)  # a third request would exceed the cap
    lim.release()
    assert got.wait(1.0)
    waiter.join()
    assert lim.in_flight == 2


def test_cool_down_pauses_every_acquirer_and_is_never_shortened() -> None:
    fake = FakeClock()
    lim = limiter(fake, [])
    lim.cool_down(5.0)
    lim.cool_down(2.0)  # a later, shorter hint must not let anyone through early
    assert grant_times(lim, fake, 3) == [5.0, 5.0, 5.0]
    assert lim.cooldowns == 2


def test_cool_down_holds_other_threads_too() -> None:
    lim = AccountLimiter([], max_concurrency=10)
    lim.cool_down(0.2)
    start = time.monotonic()
    granted: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        with lim.permit() as ok:
            assert ok
            with lock:
                granted.append(time.monotonic() - start)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(2)
    assert len(granted) == 4 and min(granted) >= 0.19


def test_stop_event_abandons_a_wait() -> None:
    fake = FakeClock()
    stop = threading.Event()

    def sleep(seconds: float) -> None:
        fake.sleep(seconds)
        stop.set()  # shutdown requested while we were waiting

    lim = AccountLimiter([], 1, clock=fake, sleep=sleep)
    lim.cool_down(1000)
    assert lim.acquire(stop) is False
    assert lim.in_flight == 0 and lim.acquired == 0
    assert fake.now < 1000  # it did not sit out the cool-down first


def test_stop_is_noticed_quickly_with_the_real_clock() -> None:
    lim = AccountLimiter([], 1)
    lim.cool_down(60)
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    start = time.monotonic()
    with lim.permit(stop) as granted:
        assert granted is False
    assert time.monotonic() - start < 1.0
    assert lim.in_flight == 0


def test_threads_share_one_limit_safely() -> None:
    # Each permit is timed by the reading of the limiter's own clock it was granted at (the
    # thread's last one): a reading taken after the permit returned moves later whenever a
    # busy machine pauses the thread there, and bunched permits that were spaced.
    reading = threading.local()

    def clock() -> float:
        reading.now = time.monotonic()
        return float(reading.now)

    lim = AccountLimiter([RateLimit(10, 0.1)], max_concurrency=3, clock=clock)
    lock = threading.Lock()
    active = peak = 0
    times: list[float] = []

    def worker() -> None:
        nonlocal active, peak
        for _ in range(5):
            with lim.permit():
                with lock:
                    active += 1
                    peak = max(peak, active)
                    times.append(reading.now)
                time.sleep(0.002)
                with lock:
                    active -= 1

    threads = [threading.Thread(target=worker) for _ in range(8)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert lim.acquired == 40 and lim.in_flight == 0
    assert peak <= 3
    assert most_in_any_window(sorted(times), 0.1) <= 10
    assert time.monotonic() - start < 1.0


def test_release_without_acquire_is_a_bug() -> None:
    with pytest.raises(RuntimeError):
        AccountLimiter([], 1).release()


# -- sharing and configuration -------------------------------------------------------------


def test_same_account_shares_one_limiter_and_can_only_be_tightened() -> None:
    account = f"test:{uuid.uuid4()}"
    first = limiter_for(account, [RateLimit(100, 10)], 4)
    assert limiter_for(account, [RateLimit(100, 10)], 4) is first
    assert limiter_for(f"other:{uuid.uuid4()}", [RateLimit(100, 10)], 4) is not first

    limiter_for(account, [RateLimit(10, 1)], 8)  # a second sync asking for less
    assert set(first.rates) == {RateLimit(100, 10), RateLimit(10, 1)}
    assert first.max_concurrency == 4
    limiter_for(account, [], 2)
    assert first.max_concurrency == 2


class Vendor(Connector):
    name: ClassVar[str] = "vendor"
    rate_limits: ClassVar[tuple[RateLimit, ...]] = (RateLimit(100, 10), RateLimit(250_000, 86400))
    max_concurrency: ClassVar[int] = 4


def vendor(**settings: Any) -> Vendor:
    return Vendor(ConnectorConfig.model_validate(settings), CONTEXT, httpx.Client())


def test_yaml_limits_add_to_the_vendor_defaults() -> None:
    assert effective_limits(vendor()) == (list(Vendor.rate_limits), 4)
    rates, concurrency = effective_limits(
        vendor(rate_limits=[{"requests": 5, "per_seconds": 1}], max_concurrency=2)
    )
    assert rates == [*Vendor.rate_limits, RateLimit(5, 1.0)]
    assert concurrency == 2
    # asking for more concurrency than the vendor allows changes nothing
    assert effective_limits(vendor(max_concurrency=50))[1] == 4


@pytest.mark.parametrize(
    "settings",
    [
        {"rate_limits": [{"requests": 0, "per_seconds": 1}]},
        {"rate_limits": [{"requests": 5, "per_seconds": 0}]},
        {"rate_limits": [{"requests": 5, "per_seconds": 1, "burst": 9}]},
        {"max_concurrency": 0},
    ],
)
def test_bad_limits_in_yaml_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ConnectorConfig.model_validate(settings)


def test_rate_limit_refuses_nonsense_in_code() -> None:
    with pytest.raises(ValueError):
        RateLimit(0, 1)
    with pytest.raises(ValueError):
        RateLimit(1, float("inf"))


def test_builtin_connector_limits(tmp_path: Any) -> None:
    hook = WebhookConnector(
        WebhookConnector.config_model(url="https://h.example.com:8443/a?token=t0ken"),
        CONTEXT,
        httpx.Client(),
    )
    assert effective_limits(hook) == ([], 4)
    assert hook.account_key() == "webhook:https://h.example.com:8443"
    other_path = WebhookConnector(
        WebhookConnector.config_model(url="https://H.example.com:8443/b"), CONTEXT, httpx.Client()
    )
    assert other_path.account_key() == hook.account_key()  # one server, one budget

    file = FileConnector(
        FileConnector.config_model(path=str(tmp_path / "m.csv")), CONTEXT, httpx.Client()
    )
    assert effective_limits(file) == ([], 1)  # one writer per file
    assert file.account_key() == f"file:{(tmp_path / 'm.csv').resolve()}"


def test_default_account_key_tells_accounts_apart_without_showing_secrets() -> None:
    from pydantic import SecretStr

    class TokenConfig(ConnectorConfig):
        token: SecretStr

    class TokenVendor(Vendor):
        config_model = TokenConfig

    def make(token: str, batch_size: int | None = None) -> str:
        config = TokenConfig(token=SecretStr(token), batch_size=batch_size)
        return TokenVendor(config, CONTEXT, httpx.Client()).account_key()

    assert make("key-aaaa") == make("key-aaaa", batch_size=10)
    assert make("key-aaaa") != make("key-bbbb")
    assert "key-aaaa" not in make("key-aaaa")


# -- 429 history and adaptive pacing ----------------------------------------------------------


def test_alternating_success_and_429_still_backs_off() -> None:
    """success, 429, success, 429...: each success used to reset the back-off to 1 s, so the
    vendor was asked again at once, forever. The account's history now keeps growing."""
    fake = FakeClock()
    lim = limiter(fake, [])
    waits = []
    for _ in range(6):
        assert lim.acquire()
        lim.release()
        lim.succeeded()
        assert lim.acquire()
        lim.release()
        waits.append(lim.rate_limited(None))
    assert waits[0] == 1.0
    assert waits == sorted(waits) and waits[-1] >= 4.0


def test_429s_in_a_row_double_up_to_the_cap_and_successes_fade_them() -> None:
    fake = FakeClock()
    lim = limiter(fake, [])
    waits = []
    for _ in range(10):
        assert lim.acquire()  # waits out the previous cool-down (the fake clock moves)
        lim.release()
        waits.append(lim.rate_limited(None, max_wait=120))
    assert waits[:6] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    assert waits[-1] == 60.0 and max(waits) == 60.0
    assert lim.rate_limited(None, max_wait=20) == 20.0  # and never above the longest wait
    for _ in range(20):
        lim.succeeded()
    assert lim.acquire()
    lim.release()
    assert lim.rate_limited(None) == 1.0


def test_the_history_fades_with_time() -> None:
    fake = FakeClock()
    lim = limiter(fake, [])
    for _ in range(4):
        assert lim.acquire()
        lim.release()
        lim.rate_limited(None)
    fake.now += 3600  # an hour later, the account starts afresh
    assert lim.acquire()
    lim.release()
    assert lim.rate_limited(None) == 1.0


def test_429s_on_requests_already_in_flight_count_once() -> None:
    """Ten requests sent together and all answered 429 are one strike, not ten: they were
    sent before the first 429 said anything. The next request sent after it counts."""
    fake = FakeClock()
    lim = limiter(fake, [])
    granted = threading.Barrier(10)
    waits: list[float] = []
    lock = threading.Lock()

    def request() -> None:
        assert lim.acquire()
        lim.release()
        granted.wait(5)  # all ten are in flight before the first answer
        with lock:
            fake.now += 0.01
            waits.append(lim.rate_limited(None))

    threads = [threading.Thread(target=request) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert waits == [1.0] * 10
    assert lim.acquire()
    lim.release()
    assert lim.rate_limited(None) == 2.0


def test_a_bare_429_slows_the_pace_and_successes_bring_it_back() -> None:
    """No published limit, a vendor that says "too many" without saying when to come back:
    after the 429, requests are spaced at least as far apart as in the second before it."""
    fake = FakeClock()
    lim = limiter(fake, [])
    grant_times(lim, fake, 10)  # ten requests at once
    wait = lim.rate_limited(None)
    assert lim.pace == pytest.approx(0.1)
    fake.now += wait
    times = grant_times(lim, fake, 5)
    assert all(b - a >= 0.099 for a, b in itertools.pairwise(times))
    pace = lim.pace
    for _ in range(200):
        lim.succeeded()
    assert lim.pace < pace / 10
    fake.now += 1000
    assert lim.pace == 0.0


def test_a_429_on_a_lone_request_leaves_the_pace_to_the_cool_down() -> None:
    """One request in the last second and a bare 429: our pace was not the problem (the
    vendor throttles for another reason), so only the cool-down holds the account."""
    fake = FakeClock()
    lim = limiter(fake, [])
    grant_times(lim, fake, 1)
    wait = lim.rate_limited(None)
    assert wait == 1.0 and lim.pace == 0.0
    fake.now += wait
    times = grant_times(lim, fake, 3)
    assert times[0] >= 1.0 and times[-1] - times[0] < 0.01  # then at full speed again


def test_a_429_with_retry_after_leaves_the_pace_alone() -> None:
    """The vendor said when to come back: the cool-down is exactly that, the pace unchanged."""
    fake = FakeClock()
    lim = limiter(fake, [RateLimit(50, 1)])
    grant_times(lim, fake, 5)
    assert lim.rate_limited(7.0) == 7.0
    assert lim.pace == 0.0
    assert grant_times(lim, fake, 1)[0] >= 7.0


def test_one_accounts_history_is_shared_by_its_syncs() -> None:
    """Two syncs (two clients) to one account: the second sync's 429 continues the first's
    history instead of starting at 1 s."""
    from syncer.errors import RateLimited
    from syncer.http import make_client

    fake = FakeClock()
    registry: dict[str, AccountLimiter] = {}
    shared = limiter_for("acme:1", [], 4, registry=registry, clock=fake, sleep=fake.sleep)
    transport = httpx.MockTransport(lambda request: httpx.Response(429))
    waits = []
    with (
        make_client(transport=transport, limiter=shared) as one,
        make_client(transport=transport, limiter=shared) as two,
    ):
        for client in (one, two, one, two):
            with pytest.raises(RateLimited) as caught:
                client.post("https://api.acme.example/members")
            waits.append(caught.value.retry_after)
    assert waits == [1.0, 2.0, 4.0, 8.0]
