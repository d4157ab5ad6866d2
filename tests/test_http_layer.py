"""The shared HTTP layer: what each answer means, waits, limits and what messages may show."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import respx

from syncer import __version__
from syncer.errors import (
    AuthError,
    BatchRejected,
    ConfigError,
    RateLimited,
    SyncerError,
    TransientError,
)
from syncer.http import (
    Action,
    DestinationClient,
    classify_status,
    make_client,
    parse_retry_after,
    raise_for_action,
    scrub,
)
from syncer.ratelimit import AccountLimiter

URL = "https://api.vendor.example/v1/members"


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(assert_all_called=False)


@pytest.fixture
def client(router: respx.Router) -> Iterator[DestinationClient]:
    with make_client(5.0, httpx.MockTransport(router.handler)) as http:
        yield http


# -- what each status means -----------------------------------------------------------------

OUTCOMES: list[tuple[int, type[SyncerError] | None]] = [
    (200, None),
    (201, None),
    (204, None),
    (301, ConfigError),  # a redirect means the address is wrong, not the records
    (400, BatchRejected),
    (401, AuthError),
    (403, AuthError),
    (404, BatchRejected),
    (408, TransientError),
    (409, BatchRejected),
    (422, BatchRejected),
    (429, RateLimited),
    (500, TransientError),
    (502, TransientError),
    (503, TransientError),
    (504, TransientError),
]


@pytest.mark.parametrize(("status", "error"), OUTCOMES)
def test_status_table(
    router: respx.Router,
    client: DestinationClient,
    status: int,
    error: type[SyncerError] | None,
) -> None:
    headers = {"Location": "https://elsewhere.example/"} if status == 301 else {}
    router.post(URL).respond(status, headers=headers, text="vendor says no")
    if error is None:
        assert client.post(URL, json={"k": 1}).status_code == status
    else:
        with pytest.raises(error) as caught:
            client.post(URL, json={"k": 1})
        assert type(caught.value) is error  # a 5xx is not a RateLimited, a 401 not a reject
        assert f"HTTP {status}" in str(caught.value)
        assert "api.vendor.example" in str(caught.value)
    assert len(router.calls) == 1  # no redirect followed, no hidden retry


@pytest.mark.parametrize(("status", "error"), OUTCOMES)
def test_plain_clients_get_the_same_answers(status: int, error: type[SyncerError] | None) -> None:
    with httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(status))) as plain:
        response = plain.post(URL)
    if error is None:
        assert raise_for_action(response) is response
    else:
        with pytest.raises(error):
            raise_for_action(response)


def test_a_redirect_never_looks_acknowledged(
    router: respx.Router, client: DestinationClient
) -> None:
    router.post(URL).respond(307, headers={"Location": "https://api.vendor.example/v2/members"})
    router.post("https://api.vendor.example/v2/members").respond(200)
    with pytest.raises(ConfigError, match="redirect"):
        client.post(URL, follow_redirects=True)  # even when a caller asks for it
    assert len(router.calls) == 1


def test_a_connector_can_reclassify_answers(
    router: respx.Router, client: DestinationClient
) -> None:
    def classify(response: httpx.Response) -> Action | None:
        if response.status_code == 404:
            return Action.IGNORE  # removing a member the vendor already forgot
        if response.status_code == 200 and b"busy" in response.content:
            return Action.RETRY  # a vendor that says "try later" with a 200
        return None

    client.classifier = classify
    router.delete(URL).respond(404)
    router.post(URL).respond(200, json={"error": "busy"})
    router.put(URL).respond(400)
    assert client.delete(URL).status_code == 404
    with pytest.raises(TransientError):
        client.post(URL)
    with pytest.raises(BatchRejected):
        client.put(URL)


def test_classify_status_defaults() -> None:
    assert classify_status(299) is Action.SUCCESS
    assert classify_status(302) is Action.REJECT
    assert classify_status(599) is Action.RETRY


# -- Retry-After ----------------------------------------------------------------------------

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("17", 17.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (" 2 ", 2.0),
        (format_datetime(NOW + timedelta(seconds=90), usegmt=True), 90.0),
        ("Wed, 01 Jan 2025 12:01:00 GMT", 60.0),
        (format_datetime(NOW - timedelta(hours=1), usegmt=True), 0.0),  # in the past
        ("-5", 0.0),
        ("86400", 300.0),  # clamped: a vendor cannot park a run for a day
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
        ("inf", None),
        ("1e9", None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


def test_retry_after_cap_is_adjustable() -> None:
    assert parse_retry_after("120", max_wait=30) == 30
    assert parse_retry_after("120", max_wait=600) == 120


def test_unavailable_destination_passes_retry_after(
    router: respx.Router, client: DestinationClient
) -> None:
    router.post(URL).respond(503, headers={"Retry-After": "2.5"})
    with pytest.raises(TransientError) as caught:
        client.post(URL)
    assert caught.value.retry_after == 2.5


def test_rate_limited_without_header_backs_off_more_each_time(
    router: respx.Router, client: DestinationClient
) -> None:
    route = router.post(URL)
    route.respond(429)
    waits = []
    for _ in range(3):
        with pytest.raises(RateLimited) as caught:
            client.post(URL)
        waits.append(caught.value.retry_after)
    assert waits == [1.0, 2.0, 4.0]
    route.respond(200)
    client.post(URL)
    route.respond(429)
    with pytest.raises(RateLimited) as caught:
        client.post(URL)
    # One success does not wipe the history (success, 429, success, 429... must back off)...
    assert caught.value.retry_after == 4.0
    route.respond(200)
    for _ in range(10):
        client.post(URL)
    route.respond(429)
    with pytest.raises(RateLimited) as caught:
        client.post(URL)
    assert caught.value.retry_after == 1.0  # ...a run of successes does


# -- network failures -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (httpx.ReadTimeout("read timed out"), "timed out (ReadTimeout)"),
        (httpx.ConnectTimeout("connect timed out"), "timed out (ConnectTimeout)"),
        (httpx.ConnectError("[Errno 111] refused"), "connection failed (ConnectError)"),
        (httpx.RemoteProtocolError("peer closed"), "connection failed (RemoteProtocolError)"),
    ],
)
def test_network_failures_are_transient(router: respx.Router, error: Exception, words: str) -> None:
    limiter = AccountLimiter([], 1)
    router.post(host="api.vendor.example").mock(side_effect=error)
    transport = httpx.MockTransport(router.handler)
    with (
        make_client(transport=transport, limiter=limiter) as client,
        pytest.raises(TransientError) as caught,
    ):
        client.post(URL + "?api_key=k3y-in-query")
    assert str(caught.value) == f"POST api.vendor.example: {words}"
    assert limiter.in_flight == 0  # a failed request does not keep its slot forever


# -- the account's limiter ------------------------------------------------------------------


def test_every_request_holds_a_permit_until_its_body_is_read(router: respx.Router) -> None:
    limiter = AccountLimiter([], 2)
    seen: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(limiter.in_flight)
        return httpx.Response(200, text="ok")

    router.post(URL).mock(side_effect=handler)
    with make_client(transport=httpx.MockTransport(router.handler), limiter=limiter) as client:
        response = client.post(URL)
        assert response.text == "ok"
    assert seen == [1] and limiter.in_flight == 0 and limiter.acquired == 1


def test_429_cools_down_the_whole_account(router: respx.Router) -> None:
    """Two syncs to one account: after one is told to slow down, the other waits too."""
    limiter = AccountLimiter([], 4)
    arrived: dict[str, float] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        arrived[request.url.path] = time.monotonic()
        if request.url.path == "/first":
            return httpx.Response(429, headers={"Retry-After": "0.3"})
        return httpx.Response(200)

    router.route(host="api.vendor.example").mock(side_effect=handler)
    transport = httpx.MockTransport(router.handler)
    with (
        make_client(transport=transport, limiter=limiter) as one,
        make_client(transport=transport, limiter=limiter) as two,
    ):
        with pytest.raises(RateLimited) as caught:
            one.post("https://api.vendor.example/first")
        assert caught.value.retry_after == 0.3
        other = threading.Thread(target=lambda: two.post("https://api.vendor.example/second"))
        other.start()
        other.join(3)
    assert arrived["/second"] - arrived["/first"] >= 0.25
    assert limiter.cooldowns == 1


def test_cool_down_never_exceeds_the_configured_longest_wait(router: respx.Router) -> None:
    limiter = AccountLimiter([], 4)
    router.post(URL).respond(429, headers={"Retry-After": "40"})
    transport = httpx.MockTransport(router.handler)
    with make_client(transport=transport, limiter=limiter, max_wait=0.2) as client:
        with pytest.raises(RateLimited) as caught:
            client.post(URL)
        assert caught.value.retry_after == 0.2
        router.post(URL).respond(200)
        started = time.monotonic()
        client.post(URL)  # the account waits the clamped 0.2 s, not 40 s
    assert 0.15 <= time.monotonic() - started < 2


def test_stop_while_waiting_sends_nothing(router: respx.Router) -> None:
    limiter = AccountLimiter([], 1)
    limiter.cool_down(60)
    stop = threading.Event()
    stop.set()
    route = router.post(URL).respond(200)
    with make_client(transport=httpx.MockTransport(router.handler), limiter=limiter) as client:
        client.stop = stop
        with pytest.raises(TransientError, match="stopped"):
            client.post(URL)
    assert not route.called


# -- what messages may show -----------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 409, 422])
def test_messages_show_no_secret_query_email_phone_or_record_data(
    router: respx.Router, status: int
) -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        # A vendor quoting everything back: credentials, the query, the body, its own notes.
        text = (
            f"{' '.join(request.headers.values())} {request.url} {request.content.decode()} "
            "contact ops@vendor.example or +44 20 7946 0958; config key sk_live_abcdef"
        )
        return httpx.Response(status, text=text)

    router.post(host="api.vendor.example").mock(side_effect=echo)
    with make_client(transport=httpx.MockTransport(router.handler)) as client:
        client.secrets = ("sk_live_abcdef",)
        with pytest.raises(BatchRejected) as caught:
            client.post(
                "https://bob:url-pass@api.vendor.example/v1/members?token=query-secret",
                headers={"Authorization": "Bearer tok-987654", "X-Api-Key": "hdr-key-555"},
                json={"records": [{"email": "ada@example.com", "name": "Augusta"}]},
            )
    message = str(caught.value)
    leaks = (
        "sk_live_abcdef",
        "tok-987654",
        "hdr-key-555",
        "url-pass",
        "query-secret",
        "token=",
        "ada@example.com",
        "Augusta",
        "ops@vendor.example",
        "7946",
        "/v1/members",
    )
    assert [leak for leak in leaks if leak in message] == []
    assert message.startswith(f"HTTP {status} from api.vendor.example: ")
    assert "\n" not in message and len(message) < 200


def test_scrub() -> None:
    text = "Bearer abc123xyz rejected for ada@example.com (+1 (555) 123-4567) on 2025-01-31"
    assert scrub(text, secrets=["Bearer abc123xyz"]) == (
        "*** rejected for <email> (<phone>) on 2025-01-31"
    )
    assert scrub("HTTP 400: field 12 invalid") == "HTTP 400: field 12 invalid"
    long = scrub("word " * 100, limit=50)
    assert len(long) == 50 and long.endswith("…")
    assert scrub("a\n\tb   c") == "a b c"


def test_make_client_defaults(router: respx.Router) -> None:
    router.get(URL).respond(200)
    with make_client(12.0, httpx.MockTransport(router.handler)) as client:
        client.get(URL)
        assert client.timeout.read == 12.0
        assert client.follow_redirects is False
    assert router.calls[0].request.headers["User-Agent"] == f"syncer/{__version__}"
