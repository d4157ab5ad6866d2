"""The one HTTP layer every connector uses: limits, error mapping and safe messages.

Connectors build requests and parse successful answers; :class:`DestinationClient` does the
rest for every request it sends:

* takes a permit from the account's :class:`~syncer.ratelimit.AccountLimiter` (pacing,
  concurrency cap, cool-down) and gives it back once the response body has been read;
* never follows redirects (httpx would turn a redirected POST into a GET, and a 2xx from
  that would look like an acknowledged batch);
* gives every request one overall deadline: httpx's timeouts are per phase and per read, so
  a destination that trickles its answer a byte a second would never trip them. Every
  blocking network call (connect, TLS handshake, each send and receive) waits in short
  slices against that deadline, a thread's :func:`time_limit` (the engine's batch time
  budget) and the stop event (after a stop request, :data:`STOP_GRACE` more seconds);
* reads at most :data:`MAX_RESPONSE_BYTES` of an answer (decoded), refusing a bigger one
  with a ``TransientError`` instead of holding it in memory;
* maps transport failures and HTTP statuses to syncer's errors (:data:`DEFAULT_TABLE`, or
  the connector's ``classify`` override): ``TransientError`` (the engine retries the batch),
  ``RateLimited`` (cools the whole account down first), ``AuthError``, ``BatchRejected``;
* builds messages that name the method, host and status only, plus for a refused batch a
  short excerpt of the vendor's answer passed through :func:`scrub`: no credentials, header
  values, URL paths, query strings, e-mail addresses or phone numbers, and none of the
  strings we sent in the request body (record data).

A plain ``httpx.Client`` still works for connectors (tests, ``check()``): they call
:func:`raise_for_action` and :func:`transport_error` themselves.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import functools
import json
import math
import os
import re
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl

import httpcore
import httpx

from syncer import __version__
from syncer.errors import AuthError, BatchRejected, ConfigError, RateLimited, TransientError
from syncer.ratelimit import DEFAULT_COOL_DOWN as DEFAULT_COOL_DOWN  # re-exported
from syncer.ratelimit import MAX_DEFAULT_COOL_DOWN as MAX_DEFAULT_COOL_DOWN
from syncer.ratelimit import AccountLimiter, Strikes

if TYPE_CHECKING:
    from httpx._client import UseClientDefault
    from httpx._types import AuthTypes, CertTypes

USER_AGENT = f"syncer/{__version__}"
#: Upper bound for any Retry-After we honour.
MAX_RETRY_AFTER = 300.0
#: The largest answer syncer reads, after decompression. A bigger one is refused (a
#: TransientError naming the limit) without reading the rest: no vendor answer to a batch
#: comes near it, and an endless or compressed-bomb answer must not exhaust memory.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
#: Seconds a request already in flight when a stop is requested may still take to answer;
#: then it is abandoned (its batch is resent by the next run).
STOP_GRACE = 5.0
#: Longest single blocking wait of a network call while a stop request may need noticing.
_POLL = 0.1
T = TypeVar("T")


class Action(enum.Enum):
    """What a response means for the batch that caused it."""

    SUCCESS = "success"  # acknowledged: parse the body
    RETRY = "retry"  # may work later: TransientError
    RATE_LIMITED = "rate_limited"  # slow down: cool the account down, RateLimited
    REJECT = "reject"  # refused because of the content: BatchRejected
    AUTH = "auth"  # credentials refused: AuthError
    IGNORE = "ignore"  # not a success, but nothing to do (a connector's call, e.g. 404 on delete)


Classifier = Callable[[httpx.Response], "Action | None"]


def _default_action(status: int) -> Action:
    if status in (401, 403):
        return Action.AUTH
    if status == 429:
        return Action.RATE_LIMITED
    if 200 <= status < 300:
        return Action.SUCCESS
    if status == 408 or status >= 500:
        return Action.RETRY
    return Action.REJECT  # 3xx (a redirected POST must never look acknowledged) and 4xx


DEFAULT_TABLE: Mapping[int, Action] = MappingProxyType(
    {status: _default_action(status) for status in range(100, 600)}
)
"""Status -> action: 2xx success; 401, 403 auth; 408 retry; 429 rate limited; 5xx retry;
other 3xx and 4xx reject (1xx too: no server sends one as a final answer)."""


def classify_status(status: int) -> Action:
    """The :data:`DEFAULT_TABLE` action of ``status``; retry for codes outside 100-599."""
    return DEFAULT_TABLE.get(status, Action.RETRY)


_SECONDS = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")


def parse_retry_after(
    value: str | None, *, now: datetime | None = None, max_wait: float = MAX_RETRY_AFTER
) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (seconds, decimal seconds or an HTTP
    date), clamped to ``[0, max_wait]``; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if _SECONDS.fullmatch(value):
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), max_wait)


# -- scrubbing --------------------------------------------------------------------------

_EMAIL = re.compile(r"[^\s@\"'<>,;:()\[\]]+@[^\s@\"'<>,;:()\[\]]+\.[A-Za-z]{2,}")
# 9 to 15 digits with single separators (and brackets): phone-number shaped. ISO dates,
# status codes and short numbers survive.
_PHONE = re.compile(r"(?<![\w+])(?!\d{4}-\d\d-\d\d)\+?\(?\d(?:\)?[ .\-/]?\(?\d){8,14}(?!\w)")
_SCRUB_CAP = 8 * 1024
_MIN_SECRET = 3
_MASK = "***"


def scrub(text: str, *, secrets: Iterable[str] = (), limit: int = 200) -> str:
    """``text`` fit for an error message: secrets (whole and word by word) become ``***``,
    e-mail addresses ``<email>``, phone-number-shaped digit runs ``<phone>``; on one line, at
    most ``limit`` characters. Secrets shorter than 3 characters are not masked (it would
    shred the text), so do not rely on it for those."""
    if len(text) > _SCRUB_CAP:
        # The cut-off last word is dropped: it may be the start of a secret.
        head = text[:_SCRUB_CAP].rsplit(None, 1)
        text = head[0] if len(head) > 1 else ""
    masks: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        masks.add(secret)
        masks.update(secret.split())
    for secret in sorted((s for s in masks if len(s) >= _MIN_SECRET), key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, _MASK)
    text = _EMAIL.sub("<email>", text)
    text = _PHONE.sub("<phone>", text)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: max(0, limit - 1)] + "…"
    return text


# Request headers that carry no credentials; every other header value is treated as secret.
_PLAIN_HEADERS = frozenset(
    {
        "host",
        "accept",
        "accept-encoding",
        "connection",
        "user-agent",
        "content-length",
        "content-type",
        "idempotency-key",
        "x-syncer-timestamp",
    }
)
_MAX_BODY_SCAN = 16 * 1024 * 1024
_TOKEN_LIKE = 16


def request_secrets(request: httpx.Request) -> list[str]:
    """Strings of ``request`` that must not appear in messages: credential header values,
    URL userinfo, path and query, and every string or number sent in a JSON or form body."""
    found: list[str] = [
        value for name, value in request.headers.items() if name.lower() not in _PLAIN_HEADERS
    ]
    url = request.url
    found += [url.username, url.password, url.query.decode("ascii", "replace")]
    # Paths can carry tokens (Slack-style hook URLs): the whole path and token-like segments.
    found += [url.path, *(part for part in url.path.split("/") if len(part) >= _TOKEN_LIKE)]
    found += [v for _, v in parse_qsl(url.query.decode("ascii", "replace"))]
    try:
        body = request.content
    except httpx.RequestNotRead:
        return found
    if not body or len(body) > _MAX_BODY_SCAN:
        return found
    try:
        _strings(json.loads(body), found)
    except (ValueError, UnicodeDecodeError, RecursionError):
        with contextlib.suppress(UnicodeDecodeError):
            found += [v for _, v in parse_qsl(body.decode("utf-8"))]
    return found


def _strings(value: Any, into: list[str]) -> None:
    if isinstance(value, str):
        into.append(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        into.append(str(value))
    elif isinstance(value, dict):
        for item in value.values():
            _strings(item, into)
    elif isinstance(value, list):
        for item in value:
            _strings(item, into)


def describe_host(request: httpx.Request) -> str:
    """``host`` or ``host:port`` (non-default port): no userinfo, path or query."""
    url = request.url
    host = url.host
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{url.port}" if url.port is not None else host


# -- mapping to errors ------------------------------------------------------------------


def transport_error(
    exc: httpx.RequestError, request: httpx.Request
) -> TransientError | ConfigError:
    """A timeout, connection failure or unreadable answer as a TransientError naming only the
    method and host (the exception text may quote the URL). A certificate that does not verify
    is a ConfigError instead: retrying cannot fix it, and verification is never turned off."""
    refusal = _certificate_refusal(exc)
    if refusal is not None:
        return ConfigError(
            f"{request.method} {describe_host(request)}: the destination's TLS certificate "
            f"could not be verified ({refusal}); nothing was sent. If it is signed by a private "
            "authority, point SSL_CERT_FILE at that authority's certificate"
        )
    if isinstance(exc, httpx.TimeoutException):
        what = "timed out"
    elif isinstance(exc, httpx.TransportError):
        what = "connection failed"
    else:  # DecodingError and friends: the answer arrived but could not be read
        what = "unreadable response"
    where = f"{request.method} {describe_host(request)}"
    return TransientError(f"{where}: {what} ({type(exc).__name__})")


def _certificate_refusal(exc: BaseException) -> str | None:
    """The verifier's reason (for example "self-signed certificate") when ``exc`` or what
    caused it is a failed certificate check, else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return str(current.verify_message or "certificate verify failed")
        current = current.__cause__ or current.__context__
    return None


def raise_for_action(
    response: httpx.Response,
    *,
    secrets: Iterable[str] = (),
    action: Action | None = None,
    rate_limit_wait: float = DEFAULT_COOL_DOWN,
    max_wait: float = MAX_RETRY_AFTER,
) -> httpx.Response:
    """Return ``response`` if ``action`` (default: :func:`classify_status`) is SUCCESS or
    IGNORE, else raise the matching error. ``rate_limit_wait`` is the ``retry_after`` of a
    429 that has no usable Retry-After header; any ``retry_after`` is at most ``max_wait``.
    The body must have been read."""
    if action is None:
        action = classify_status(response.status_code)
    if action in (Action.SUCCESS, Action.IGNORE):
        return response
    status = response.status_code
    host = describe_host(response.request)
    if action is Action.AUTH:
        raise AuthError(f"{host} refused the credentials (HTTP {status})", status=status)
    retry_after = parse_retry_after(response.headers.get("Retry-After"), max_wait=max_wait)
    if action is Action.RATE_LIMITED:
        wait = min(rate_limit_wait, max_wait) if retry_after is None else retry_after
        raise RateLimited(f"HTTP {status} from {host}", retry_after=wait)
    if action is Action.RETRY:
        raise TransientError(f"HTTP {status} from {host}", retry_after=retry_after)
    if 300 <= status < 400:
        # The address is wrong, not the records: splitting the batch would not help.
        raise ConfigError(
            f"HTTP {status} from {host}: redirect not followed; configure the final URL"
        )
    detail = _short_body(response, [*secrets, *request_secrets(response.request)])
    raise BatchRejected(f"HTTP {status} from {host}" + (f": {detail}" if detail else ""))


def _short_body(response: httpx.Response, secrets: list[str]) -> str:
    try:
        text = response.text
    except (UnicodeDecodeError, LookupError, httpx.ResponseNotRead):
        return ""
    return scrub(text, secrets=secrets, limit=120)


# -- deadlines ---------------------------------------------------------------------------

_local = threading.local()


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Every request this thread sends inside the block must be over ``seconds`` from now
    (never later than an enclosing limit): the engine wraps each batch's tries in its time
    budget. ``None`` lifts any enclosing limit (a vendor job a batch waits for has its own)."""
    before: float | None = getattr(_local, "limit", None)
    if seconds is None:
        _local.limit = None
    else:
        end = time.monotonic() + seconds
        _local.limit = end if before is None else min(before, end)
    try:
        yield
    finally:
        _local.limit = before


class _Guard:
    """When the request being sent on this thread must be over, and why it ended early."""

    def __init__(self, timeout: float | None, stop: threading.Event | None, grace: float) -> None:
        now = time.monotonic()
        own = math.inf if timeout is None else now + timeout
        limit: float | None = getattr(_local, "limit", None)
        self.timeout = timeout
        self.by_budget = limit is not None and limit < own
        self.deadline = min(own, limit) if limit is not None else own
        self.stop = stop
        self.grace = grace
        self.stopped_at: float | None = None

    def end(self) -> float:
        """The monotonic time the request must be over by (notices a stop request)."""
        if self.stopped_at is None and self.stop is not None and self.stop.is_set():
            self.stopped_at = time.monotonic()
        if self.stopped_at is None:
            return self.deadline
        return min(self.deadline, self.stopped_at + self.grace)

    def watching(self) -> bool:
        """True while a stop request could still come: waits are then cut into naps."""
        return self.stop is not None and self.stopped_at is None

    def over(self) -> bool:
        return time.monotonic() >= self.end()


def _blocking(
    call: Callable[[float | None], T],
    timeout: float | None,
    timed_out: type[Exception],
    failed: type[Exception],
) -> T:
    """``call(wait)`` blocks for at most ``wait`` seconds (None: no limit) and raises
    ``TimeoutError`` when nothing happened; it is called again until it succeeds, the phase's
    ``timeout`` passes or the current request's guard ends (both raise ``timed_out``).
    Only calls that can be repeated after a timeout without losing data come here."""
    guard: _Guard | None = getattr(_local, "guard", None)
    phase_end = math.inf if timeout is None else time.monotonic() + timeout
    while True:
        end = phase_end if guard is None else min(phase_end, guard.end())
        wait = end - time.monotonic()
        if wait <= 0:
            raise timed_out("timed out")
        if guard is not None and guard.watching():
            wait = min(wait, _POLL)
        try:
            return call(None if math.isinf(wait) else wait)
        except (TimeoutError, httpcore.TimeoutException):
            continue
        except OSError as exc:
            raise failed(type(exc).__name__) from exc


def _readable(sock: socket.socket) -> bool:
    """True if a read would not block (data or EOF waiting): httpcore then drops the idle
    pooled connection instead of reusing it."""
    try:
        if sock.fileno() < 0:
            return True
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ)
            return bool(selector.select(0))
    except (OSError, ValueError):
        return True


class _Stream(httpcore.NetworkStream):
    """A TCP (or TLS) socket whose every blocking call honours the request's guard."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def _recv(self, max_bytes: int, wait: float | None) -> bytes:
        self._sock.settimeout(wait)
        return self._sock.recv(max_bytes)

    def _send(self, data: memoryview, wait: float | None) -> int:
        # Nothing is lost when this times out: a plain socket sent nothing, and TLS wants the
        # same bytes again, which is what the next slice passes.
        self._sock.settimeout(wait)
        return self._sock.send(data)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        recv = functools.partial(self._recv, max_bytes)
        return _blocking(recv, timeout, httpcore.ReadTimeout, httpcore.ReadError)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        view = memoryview(buffer)
        while view:
            send = functools.partial(self._send, view)
            view = view[_blocking(send, timeout, httpcore.WriteTimeout, httpcore.WriteError) :]

    def close(self) -> None:
        self._sock.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        try:
            if isinstance(self._sock, ssl.SSLSocket):
                return _tls_in_tls(self._sock, ssl_context, server_hostname, timeout)
            sock = ssl_context.wrap_socket(
                self._sock, server_hostname=server_hostname, do_handshake_on_connect=False
            )
            _blocking(
                functools.partial(_handshake, sock),
                timeout,
                httpcore.ConnectTimeout,
                httpcore.ConnectError,
            )
        except BaseException:
            self.close()
            raise
        return _Stream(sock)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._sock if isinstance(self._sock, ssl.SSLSocket) else None
        if info == "client_addr":
            return self._sock.getsockname()
        if info == "server_addr":
            return self._sock.getpeername()
        if info == "socket":
            return self._sock
        if info == "is_readable":
            return _readable(self._sock)
        return None


def _handshake(sock: ssl.SSLSocket, wait: float | None) -> None:
    sock.settimeout(wait)
    sock.do_handshake()


def _tls_in_tls(
    sock: ssl.SSLSocket,
    ssl_context: ssl.SSLContext,
    server_hostname: str | None,
    timeout: float | None,
) -> httpcore.NetworkStream:
    """TLS inside TLS (an ``https://`` proxy): httpcore's own stream does it. Its handshake
    and writes keep httpcore's per-call timeouts, cut to the guard's end; reads are sliced."""
    from httpcore._backends.sync import SyncStream

    guard: _Guard | None = getattr(_local, "guard", None)
    if guard is not None:
        left = max(0.001, guard.end() - time.monotonic())
        timeout = left if timeout is None else min(timeout, left)
    return _Layered(SyncStream(sock).start_tls(ssl_context, server_hostname, timeout))


class _Layered(httpcore.NetworkStream):
    """Another stream, read in guarded slices; writes are cut to the guard's end."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return _blocking(
            functools.partial(self._inner.read, max_bytes),
            timeout,
            httpcore.ReadTimeout,
            httpcore.ReadError,
        )

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        guard: _Guard | None = getattr(_local, "guard", None)
        if guard is not None:
            left = guard.end() - time.monotonic()
            if left <= 0:
                raise httpcore.WriteTimeout("timed out")
            timeout = left if timeout is None else min(timeout, left)
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("TLS inside TLS inside TLS is not supported")

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def _connected(sock: socket.socket, wait: float | None) -> None:
    """Wait for a non-blocking connect to finish; raise its error, or TimeoutError."""
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_WRITE)
        if not selector.select(wait):
            raise TimeoutError
    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code:
        raise OSError(code, os.strerror(code))


class _Backend(httpcore.NetworkBackend):
    """httpcore's network backend with guarded streams: connects without blocking, so a
    stop request or the deadline ends a connect to a host that never answers, too."""

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(type(exc).__name__) from exc
        error: Exception = httpcore.ConnectError("no address")
        for family, kind, proto, _, address in addresses:
            sock = socket.socket(family, kind, proto)
            try:
                for option in socket_options or ():
                    sock.setsockopt(*option)
                if local_address is not None:
                    sock.bind((local_address, 0))
                sock.setblocking(False)
                code = sock.connect_ex(address)
                if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
                    raise httpcore.ConnectError(errno.errorcode.get(code, str(code)))
                if code:
                    wait = functools.partial(_connected, sock)
                    _blocking(wait, timeout, httpcore.ConnectTimeout, httpcore.ConnectError)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (httpcore.ConnectError, OSError) as exc:  # refused: try the next address
                sock.close()
                error = exc
                continue
            except BaseException:
                sock.close()
                raise
            return _Stream(sock)
        if isinstance(error, OSError):
            raise httpcore.ConnectError(type(error).__name__) from error
        raise error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        return httpcore.SyncBackend().connect_unix_socket(path, timeout, socket_options)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def _guard_transports(client: httpx.Client) -> None:
    """Give httpx's own transports of ``client`` (direct and proxies from the environment)
    the guarded network backend; a transport handed in (tests' mocks) is left alone."""
    for transport in [client._transport, *client._mounts.values()]:
        if isinstance(transport, httpx.HTTPTransport):
            _guard_transport(transport)


def _guard_transport(transport: httpx.HTTPTransport) -> None:
    pool = transport._pool
    if isinstance(pool, httpcore.ConnectionPool):  # HTTP and SOCKS proxies are ones too
        pool._network_backend = _Backend()


class _TransportOnFirstRequest(httpx.BaseTransport):
    """The transport ``build`` makes (httpx's default one), made for the first request:
    making it loads the CA bundle into an SSL context, tens of milliseconds that a run with
    nothing to send never needs. :meth:`DestinationClient.send` makes it before taking the
    limiter's permit, so that delay never falls between a permit and its request (the vendor
    would see the first requests bunched closer than the limit)."""

    def __init__(self, build: Callable[[], httpx.BaseTransport]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._transport: httpx.BaseTransport | None = None

    def ready(self) -> httpx.BaseTransport:
        """The transport, made now if it was not yet."""
        transport = self._transport
        if transport is None:
            with self._lock:
                transport = self._transport
                if transport is None:
                    transport = self._build()
                    if isinstance(transport, httpx.HTTPTransport):
                        _guard_transport(transport)
                    self._transport = transport
        return transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.ready().handle_request(request)

    def close(self) -> None:
        with self._lock:
            if self._transport is not None:
                self._transport.close()


def _request_timeout(request: httpx.Request) -> float | None:
    """The request's overall limit: its largest httpx timeout (they are per phase)."""
    phases = request.extensions.get("timeout") or {}
    values = [float(v) for v in phases.values() if v is not None]
    return max(values) if values else None


class _StopOrLimit(threading.Event):
    """Set once ``stop`` is set or the thread's time limit has passed: the limiter stops
    waiting for either."""

    def __init__(self, stop: threading.Event | None, limit: float) -> None:
        super().__init__()
        self._stop = stop
        self._limit = limit

    def is_set(self) -> bool:
        return (self._stop is not None and self._stop.is_set()) or time.monotonic() >= self._limit

    def wait(self, timeout: float | None = None) -> bool:
        end = math.inf if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = min(end, self._limit) - time.monotonic()
            if left <= 0:
                break
            if self._stop is not None:
                self._stop.wait(min(left, _POLL))
            else:
                time.sleep(min(left, _POLL))
        return self.is_set()


def _size(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MiB" if limit % (1024 * 1024) == 0 else f"{limit} bytes"


# -- the client -------------------------------------------------------------------------


class DestinationClient(httpx.Client):
    """An ``httpx.Client`` that rate-limits, never follows redirects, bounds every request in
    time and size, and raises syncer errors.

    Attributes the engine sets per run (all optional):

    * ``limiter``: the account's limiter; every request holds one of its permits.
    * ``classifier``: the connector's ``classify``; None, or a None answer, means the table.
    * ``secrets``: configured credentials to keep out of messages.
    * ``stop``: an event; a request still waiting for the limiter when it is set raises
      ``TransientError`` instead of being sent, and one in flight gets ``stop_grace`` more
      seconds to be answered, then is abandoned (``TransientError``).
    * ``max_wait``: the longest Retry-After honoured (seconds), for ``retry_after`` on the
      errors and for the account cool-down after a 429 (set it to the engine's
      ``max_retry_after`` so the two agree).
    * ``max_body``: the most bytes of an answer read (:data:`MAX_RESPONSE_BYTES`).

    A request's timeout (the client's, or the one passed to ``build_request``) is its overall
    limit: connecting, sending and the whole answer; a thread's :func:`time_limit` can only
    shorten it. Thread-safe like ``httpx.Client``: set the attributes before sharing it
    between threads. Streaming is not supported: the body is always read before the permit
    is released.
    """

    def __init__(
        self,
        *,
        limiter: AccountLimiter | None = None,
        classifier: Classifier | None = None,
        secrets: Iterable[str] = (),
        stop: threading.Event | None = None,
        max_wait: float = MAX_RETRY_AFTER,
        max_body: int = MAX_RESPONSE_BYTES,
        stop_grace: float = STOP_GRACE,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _guard_transports(self)
        self.limiter = limiter
        self.classifier = classifier
        self.secrets: tuple[str, ...] = tuple(secrets)
        self.stop = stop
        self.max_wait = max_wait
        self.max_body = max_body
        self.stop_grace = stop_grace
        # The 429 history lives in the account's limiter (shared by every sync and thread of
        # the account); a client without a limiter keeps its own.
        self._strikes = Strikes()

    def _init_transport(
        self,
        verify: ssl.SSLContext | str | bool = True,
        cert: CertTypes | None = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = httpx._config.DEFAULT_LIMITS,
        transport: httpx.BaseTransport | None = None,
    ) -> httpx.BaseTransport:
        """httpx's own transport, made on the first request (see _TransportOnFirstRequest);
        one handed in is used as it is. Overriding this, rather than handing httpx a
        transport, keeps the proxies of the environment (httpx ignores them then)."""
        if transport is not None:
            return transport
        default = super()._init_transport
        return _TransportOnFirstRequest(
            lambda: default(verify, cert, trust_env, http1, http2, limits)
        )

    def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        auth: AuthTypes | UseClientDefault | None = httpx.USE_CLIENT_DEFAULT,
        follow_redirects: bool | UseClientDefault = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        """Send under a permit; return the read response or raise (see class docstring).
        ``stream`` and ``follow_redirects`` are ignored: never streamed, never redirected."""
        response = self._exchange(request, auth, self.limiter)
        self._check(response)
        return response

    def send_unpaced(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` outside the account's limiter and without classifying the answer:
        the read response whatever its status. Still bounded in time and size, never
        redirected, stopped by the stop event; transport failures raise as for ``send``.

        For an OAuth token endpoint (syncer.oauth): another host with its own budget, asked
        while an API request holds its permit (the token is set as that request leaves, so
        through the limiter a connector capped at one request in flight would wait for
        itself), and whose refusals mean something else than the API's."""
        return self._exchange(request, httpx.USE_CLIENT_DEFAULT, None)

    def _exchange(
        self,
        request: httpx.Request,
        auth: AuthTypes | UseClientDefault | None,
        limiter: AccountLimiter | None,
    ) -> httpx.Response:
        """Send under a permit of ``limiter`` (if any) and read the whole answer."""
        where = f"{request.method} {describe_host(request)}"
        if isinstance(self._transport, _TransportOnFirstRequest):
            self._transport.ready()  # before the permit (see _TransportOnFirstRequest)
        if limiter is not None:
            limit: float | None = getattr(_local, "limit", None)
            stop = self.stop if limit is None else _StopOrLimit(self.stop, limit)
            if not limiter.acquire(stop):
                if self.stop is not None and self.stop.is_set():
                    raise TransientError(f"{where}: stopped while waiting to send")
                raise TransientError(
                    f"{where}: not sent, the batch's time budget ran out while waiting for"
                    " the rate limiter"
                )
        guard = _Guard(_request_timeout(request), self.stop, self.stop_grace)
        outer, _local.guard = getattr(_local, "guard", None), guard
        try:
            if guard.over():
                raise TransientError(f"{where}: not sent, the batch's time budget is spent")
            try:
                response = super().send(request, stream=True, auth=auth, follow_redirects=False)
                try:
                    self._read(response, guard, where)
                finally:
                    response.close()
            except httpx.RequestError as exc:
                raise self._failure(exc, request, guard, where) from None
        finally:
            _local.guard = outer
            if limiter is not None:
                limiter.release()
        return response

    def _read(self, response: httpx.Response, guard: _Guard, where: str) -> None:
        """Read the body into ``response`` (as ``read()`` would), refusing more than
        ``max_body`` bytes and noticing the guard's end between chunks (for transports that
        do not use the guarded network backend)."""
        limit = self.max_body
        declared = response.headers.get("Content-Length", "").strip()
        if declared.isdigit() and int(declared) > limit:
            raise TransientError(
                f"{where}: HTTP {response.status_code} answer of {int(declared)} bytes refused"
                f" unread; syncer reads at most {_size(limit)}"
            )
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > limit:
                raise TransientError(
                    f"{where}: HTTP {response.status_code} answer larger than {_size(limit)};"
                    " refused, the rest was not read"
                )
            chunks.append(chunk)
            if guard.over():
                raise httpx.ReadTimeout("timed out", request=response.request)
        if guard.over():
            raise httpx.ReadTimeout("timed out", request=response.request)
        # What Response.read() does; iterating ourselves is what lets us stop early.
        response._content = b"".join(chunks)

    @staticmethod
    def _failure(
        exc: httpx.RequestError, request: httpx.Request, guard: _Guard, where: str
    ) -> TransientError | ConfigError:
        """The error for a request that did not complete, saying which limit ended it."""
        if guard.stopped_at is not None and guard.over():
            return TransientError(
                f"{where}: abandoned {guard.grace:g} s after the stop request, before its"
                " answer was complete"
            )
        if time.monotonic() >= guard.deadline:
            if guard.by_budget:
                return TransientError(
                    f"{where}: the batch's time budget ran out before the answer was complete"
                )
            return TransientError(
                f"{where}: no complete answer within {guard.timeout:g} s (the HTTP timeout)"
            )
        return transport_error(exc, request)

    def _check(self, response: httpx.Response) -> None:
        action = self.classifier(response) if self.classifier is not None else None
        if action is None:
            action = classify_status(response.status_code)
        limiter = self.limiter
        wait = DEFAULT_COOL_DOWN
        if action is Action.RATE_LIMITED:
            from syncer.metrics import rate_limited_response  # prometheus: not for every run

            rate_limited_response(limiter.connector if limiter is not None else "")
            header = parse_retry_after(response.headers.get("Retry-After"), max_wait=self.max_wait)
            if limiter is not None:
                # Cools the account down and adds to its 429 history (see syncer.ratelimit).
                wait = limiter.rate_limited(header, self.max_wait)
            else:
                default = self._strikes.hit()
                wait = min(default, self.max_wait) if header is None else header
        elif action is Action.SUCCESS:
            (limiter.succeeded if limiter is not None else self._strikes.success)()
        raise_for_action(
            response,
            secrets=self.secrets,
            action=action,
            rate_limit_wait=wait,
            max_wait=self.max_wait,
        )


def make_client(
    timeout: float = 30.0,
    transport: httpx.BaseTransport | None = None,
    *,
    limiter: AccountLimiter | None = None,
    max_wait: float = MAX_RETRY_AFTER,
) -> DestinationClient:
    """A :class:`DestinationClient`: TLS verification always on, syncer's user agent, no
    redirects followed, ``timeout`` seconds for each whole request; ``transport`` lets tests
    hand in a respx router."""
    return DestinationClient(
        limiter=limiter,
        max_wait=max_wait,
        timeout=httpx.Timeout(timeout),
        transport=transport,
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,
        verify=True,
    )
