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
from tests.conftest import FakeClock

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
    lim = AccountLimiter([RateLimit(10, 0.1)], max_concurrency=3)
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
                    times.append(time.monotonic())
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
