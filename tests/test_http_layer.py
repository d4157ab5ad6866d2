"""The shared HTTP layer: what each answer means, waits, limits and what messages may show."""

from __future__ import annotations

import contextlib
import gzip
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

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
    MAX_RESPONSE_BYTES,
    Action,
    DestinationClient,
    classify_status,
    make_client,
    parse_retry_after,
    raise_for_action,
    scrub,
    time_limit,
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
    assert 0.15 <= time.monotonic() - started < 10  # 40 s unclamped; slack for a busy machine


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


# -- every request has an overall deadline, a stop ends it, answers have a size limit -------
#
# httpx's timeouts are per phase and per read: a server that sends one byte a second never
# trips a 30 s read timeout. These tests use real sockets on 127.0.0.1, because the guard
# lives in the network backend that a mock transport bypasses.

TRICKLED = b"HTTP/1.1 200 OK\r\nContent-Length: 400\r\n\r\n" + b"x" * 400


class RawServer:
    """A TCP server on 127.0.0.1 running ``handle(conn)`` per connection on its own thread.

    ``arrived`` is set once a request's first bytes were read (by ``read_request``);
    ``written`` counts the bytes handlers wrote.
    """

    def __init__(self, handle: Any, tls: ssl.SSLContext | None = None, backlog: int = 16):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self.handle = handle
        self.tls = tls
        self.arrived = threading.Event()
        self.written = 0
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            self.handle(self, conn)

    def read_request(self, conn: socket.socket) -> None:
        conn.recv(65536)
        self.arrived.set()

    def send(self, conn: socket.socket, data: bytes, every: float = 0.0) -> None:
        """``data`` at once, or one byte every ``every`` seconds."""
        if not every:
            conn.sendall(data)
            self.written += len(data)
            return
        for byte in data:
            conn.sendall(bytes([byte]))
            self.written += 1
            time.sleep(every)

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.close()


@contextlib.contextmanager
def raw_server(handle: Any, **kwargs: Any) -> Iterator[RawServer]:
    server = RawServer(handle, **kwargs)
    try:
        yield server
    finally:
        server.close()


def trickle(server: RawServer, conn: socket.socket) -> None:
    """Status line, headers and body one byte every 50 ms: 20 s for the whole answer, and
    never a pause long enough for a per-read timeout."""
    server.read_request(conn)
    server.send(conn, TRICKLED, every=0.05)


def timed(call: Any) -> tuple[Exception | None, float]:
    started = time.monotonic()
    try:
        call()
    except Exception as exc:
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


def test_a_trickled_answer_ends_at_the_overall_deadline() -> None:
    with raw_server(trickle) as server, make_client(1.0) as client:
        error, took = timed(lambda: client.post(f"http://127.0.0.1:{server.port}/hook"))
    print(f"\n[deadline] trickled answer: refused after {took:.2f}s (timeout 1 s)")
    assert isinstance(error, TransientError)
    assert str(error) == (
        f"POST 127.0.0.1:{server.port}: no complete answer within 1 s (the HTTP timeout)"
    )
    assert 0.9 <= took < 10, "the whole answer would have taken 20 s"


def test_a_per_request_timeout_is_the_overall_limit_too() -> None:
    with raw_server(trickle) as server, make_client(30.0) as client:
        request = client.build_request("POST", f"http://127.0.0.1:{server.port}/", timeout=0.5)
        error, took = timed(lambda: client.send(request))
    assert isinstance(error, TransientError) and "within 0.5 s" in str(error)
    assert took < 10  # the trickle lasts 20 s


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) for localhost."""
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server)
    client = ssl.create_default_context()
    authority.configure_trust(client)
    return server, client


def test_over_tls_answers_are_read_and_connections_reused(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    def keep_alive(server: RawServer, conn: socket.socket) -> None:
        while conn.recv(65536):
            server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")

    with (
        raw_server(keep_alive, tls=tls[0]) as server,
        DestinationClient(verify=tls[1], timeout=5.0) as client,
    ):
        answers = [client.get(f"https://localhost:{server.port}/").text for _ in range(3)]
        assert answers == ["hello"] * 3
        assert len(server.conns) == 1  # one connection, kept alive


@pytest.mark.parametrize("where", ["answer", "handshake"])
def test_over_tls_a_trickle_or_a_stalled_handshake_ends_at_the_deadline(
    tls: tuple[ssl.SSLContext, ssl.SSLContext], where: str
) -> None:
    def stall(server: RawServer, conn: socket.socket) -> None:
        server.arrived.set()
        time.sleep(20)  # never answers the ClientHello

    handle = trickle if where == "answer" else stall
    server_tls = tls[0] if where == "answer" else None
    with (
        raw_server(handle, tls=server_tls) as server,
        DestinationClient(verify=tls[1], timeout=1.0) as client,
    ):
        error, took = timed(lambda: client.get(f"https://localhost:{server.port}/"))
    assert isinstance(error, TransientError) and "within 1 s" in str(error), error
    assert 0.9 <= took < 10  # the trickle or the stall lasts 20 s


def test_a_connect_that_never_completes_ends_at_the_deadline_or_a_stop() -> None:
    # A listener that never accepts, its backlog of 0 taken: the kernel drops further SYNs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))
    probe = socket.socket()
    probe.settimeout(0.3)
    try:
        with pytest.raises(TimeoutError):
            probe.connect(("127.0.0.1", port))  # the premise: connecting now hangs
        with make_client(1.0) as client:
            error, took = timed(lambda: client.get(f"http://127.0.0.1:{port}/"))
            assert isinstance(error, TransientError) and "within 1 s" in str(error), error
            assert 0.9 <= took < 10  # the connect would hang for good
            stop = threading.Event()
            client.stop, client.stop_grace = stop, 0.0
            threading.Timer(0.3, stop.set).start()
            request = client.build_request("GET", f"http://127.0.0.1:{port}/", timeout=60)
            error, took = timed(lambda: client.send(request))
            assert isinstance(error, TransientError) and "stop request" in str(error), error
            assert took < 10, "a stop must not wait out a 60 s connect timeout"
    finally:
        for sock in (probe, filler, listener):
            sock.close()


def test_a_stop_abandons_a_request_in_flight_after_the_grace() -> None:
    stop = threading.Event()
    with raw_server(trickle) as server, make_client(60.0) as client:
        client.stop, client.stop_grace = stop, 0.5

        def signal_when_it_arrives() -> None:
            server.arrived.wait(10)
            stop.set()

        threading.Thread(target=signal_when_it_arrives, daemon=True).start()
        error, took = timed(lambda: client.post(f"http://127.0.0.1:{server.port}/"))
    print(f"\n[stop] request in flight abandoned {took:.2f}s after it was sent (grace 0.5 s)")
    assert isinstance(error, TransientError)
    assert "abandoned 0.5 s after the stop request" in str(error)
    assert 0.4 <= took < 10  # the trickle lasts 20 s


def test_an_answer_within_the_grace_after_a_stop_is_kept() -> None:
    """The first SIGTERM lets requests in flight finish: their answers are committed."""
    stop = threading.Event()

    def slow(server: RawServer, conn: socket.socket) -> None:
        server.read_request(conn)
        stop.set()
        time.sleep(0.5)
        server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    with raw_server(slow) as server, make_client(60.0) as client:
        client.stop, client.stop_grace = stop, 5.0
        assert client.post(f"http://127.0.0.1:{server.port}/").text == "ok"


def test_a_time_limit_shortens_requests_and_limiter_waits() -> None:
    with raw_server(trickle) as server, make_client(60.0) as client:
        with time_limit(0.5):
            error, took = timed(lambda: client.post(f"http://127.0.0.1:{server.port}/"))
        assert isinstance(error, TransientError)
        assert "the batch's time budget ran out before the answer was complete" in str(error)
        assert took < 10  # the trickle lasts 20 s

        limiter = AccountLimiter([], 1)
        limiter.cool_down(60)  # a 429 asked for a minute of quiet
        client.limiter = limiter
        sent_before = len(server.conns)
        with time_limit(0.3):
            error, took = timed(lambda: client.post(f"http://127.0.0.1:{server.port}/"))
        assert isinstance(error, TransientError) and "rate limiter" in str(error), error
        assert took < 10 and len(server.conns) == sent_before and limiter.in_flight == 0


def test_a_lifted_time_limit_leaves_the_request_its_own_timeout() -> None:
    def slow(server: RawServer, conn: socket.socket) -> None:
        server.read_request(conn)
        time.sleep(0.5)
        server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    with raw_server(slow) as server, make_client(10.0) as client:
        with time_limit(0.2), time_limit(None):  # a vendor job's poll: job_timeout rules
            assert client.get(f"http://127.0.0.1:{server.port}/").text == "ok"
        with time_limit(0.2), time_limit(30):  # a nested limit never extends the outer one
            error, _ = timed(lambda: client.get(f"http://127.0.0.1:{server.port}/"))
        assert isinstance(error, TransientError) and "time budget" in str(error)


class CountingStream(httpx.SyncByteStream):
    """An endless answer that counts how many chunks the client pulled."""

    def __init__(self, chunk: bytes) -> None:
        self.chunk = chunk
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        while True:
            self.pulled += 1
            yield self.chunk


@pytest.mark.parametrize("declared", [True, False])
def test_a_huge_answer_is_refused_without_reading_it_all(declared: bool) -> None:
    stream = CountingStream(b"x" * 65536)
    headers = {"Content-Length": str(10 * 1024**3)} if declared else {}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=headers, stream=stream)

    limiter = AccountLimiter([], 1)
    with make_client(transport=httpx.MockTransport(handler), limiter=limiter) as client:
        client.max_body = 1024 * 1024
        with pytest.raises(TransientError) as caught:
            client.post(URL)
    if declared:
        assert str(caught.value) == (
            "POST api.vendor.example: HTTP 200 answer of 10737418240 bytes refused unread;"
            " syncer reads at most 1 MiB"
        )
        assert stream.pulled == 0
    else:
        assert str(caught.value) == (
            "POST api.vendor.example: HTTP 200 answer larger than 1 MiB; refused, the rest"
            " was not read"
        )
        assert stream.pulled == 17  # 16 chunks fill the limit; the 17th is one too many
    assert limiter.in_flight == 0


def test_a_compressed_answer_is_limited_by_its_decoded_size() -> None:
    bomb = gzip.compress(b"\0" * (8 * 1024 * 1024))  # 8 MiB in about 8 KiB
    headers = {"Content-Encoding": "gzip", "Content-Length": str(len(bomb))}
    transport = httpx.MockTransport(lambda r: httpx.Response(200, headers=headers, content=bomb))
    with make_client(transport=transport) as client:
        client.max_body = 1024 * 1024
        with pytest.raises(TransientError, match="larger than 1 MiB"):
            client.post(URL)
        client.max_body = MAX_RESPONSE_BYTES
        assert len(client.post(URL).content) == 8 * 1024 * 1024


def test_a_huge_answer_over_the_network_stops_being_read() -> None:
    def endless(server: RawServer, conn: socket.socket) -> None:
        server.read_request(conn)
        server.send(conn, b"HTTP/1.0 200 OK\r\n\r\n")
        block = b"x" * 65536
        while server.written < 1024**3:
            server.send(conn, block)

    with raw_server(endless) as server, make_client(30.0) as client:
        client.max_body = 1024 * 1024
        with pytest.raises(TransientError, match="larger than 1 MiB"):
            client.post(f"http://127.0.0.1:{server.port}/")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and server.conns and server.written < 1024**3:
            before = server.written
            time.sleep(0.2)
            if server.written == before:
                break  # the server is stuck on a closed connection: the client has gone
    print(f"\n[size] the server got {server.written / 2**20:.1f} MiB out before the client left")
    assert server.written < 64 * 1024**2, "the client kept reading a 1 GiB answer"


def test_over_tls_an_untrusted_certificate_is_refused(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """syncer's own clients verify TLS: a destination whose certificate no trusted authority
    signed (a man in the middle, or a mistyped host) gets no request body, and the run says why."""

    def answer(server: RawServer, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            server.read_request(conn)
            server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    with raw_server(answer, tls=tls[0]) as server, make_client(5.0) as client:
        error, _ = timed(lambda: client.post(f"https://localhost:{server.port}/", content=b"x"))
    # Not worth retrying: a configuration error (exit 78) that says what failed and what to do.
    assert isinstance(error, ConfigError), error
    assert str(error).startswith(f"POST localhost:{server.port}: the destination's TLS certificate")
    assert "SSL_CERT_FILE" in str(error)
    assert not server.arrived.is_set()  # the handshake failed: no request was read


def test_a_private_authority_is_trusted_through_ssl_cert_file(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the refusal tells the user to do works: SSL_CERT_FILE names the authority."""
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_tls)
    bundle = tmp_path / "private-ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))

    def answer(server: RawServer, conn: socket.socket) -> None:
        # Answer and keep the connection until the client closes it: closing first could
        # reset a request still being written on a busy machine.
        while conn.recv(65536):
            server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    with raw_server(answer, tls=server_tls) as server, make_client(30.0) as client:
        assert client.get(f"https://localhost:{server.port}/").text == "ok"
