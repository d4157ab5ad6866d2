"""The one HTTP layer every connector uses: limits, error mapping and safe messages.

Connectors build requests and parse successful answers; :class:`DestinationClient` does the
rest for every request it sends:

* takes a permit from the account's :class:`~syncer.ratelimit.AccountLimiter` (pacing,
  concurrency cap, cool-down) and gives it back once the response body has been read;
* never follows redirects (httpx would turn a redirected POST into a GET, and a 2xx from
  that would look like an acknowledged batch);
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
import json
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import httpx

from syncer import __version__
from syncer.errors import AuthError, BatchRejected, ConfigError, RateLimited, TransientError
from syncer.metrics import rate_limited_response
from syncer.ratelimit import DEFAULT_COOL_DOWN as DEFAULT_COOL_DOWN  # re-exported
from syncer.ratelimit import MAX_DEFAULT_COOL_DOWN as MAX_DEFAULT_COOL_DOWN
from syncer.ratelimit import AccountLimiter, Strikes

if TYPE_CHECKING:
    from httpx._client import UseClientDefault
    from httpx._types import AuthTypes

USER_AGENT = f"syncer/{__version__}"
#: Upper bound for any Retry-After we honour.
MAX_RETRY_AFTER = 300.0


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


def transport_error(exc: httpx.RequestError, request: httpx.Request) -> TransientError:
    """A timeout, connection failure or unreadable answer as a TransientError naming only the
    method and host (the exception text may quote the URL)."""
    if isinstance(exc, httpx.TimeoutException):
        what = "timed out"
    elif isinstance(exc, httpx.TransportError):
        what = "connection failed"
    else:  # DecodingError and friends: the answer arrived but could not be read
        what = "unreadable response"
    where = f"{request.method} {describe_host(request)}"
    return TransientError(f"{where}: {what} ({type(exc).__name__})")


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
        raise AuthError(f"{host} refused the credentials (HTTP {status})")
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


# -- the client -------------------------------------------------------------------------


class DestinationClient(httpx.Client):
    """An ``httpx.Client`` that rate-limits, never follows redirects and raises syncer errors.

    Attributes the engine sets per run (all optional):

    * ``limiter``: the account's limiter; every request holds one of its permits.
    * ``classifier``: the connector's ``classify``; None, or a None answer, means the table.
    * ``secrets``: configured credentials to keep out of messages.
    * ``stop``: an event; a request still waiting for the limiter when it is set raises
      ``TransientError`` instead of being sent.
    * ``max_wait``: the longest Retry-After honoured (seconds), for ``retry_after`` on the
      errors and for the account cool-down after a 429 (set it to the engine's
      ``max_retry_after`` so the two agree).

    Thread-safe like ``httpx.Client``: set the attributes before sharing it between threads.
    Streaming is not supported: the body is always read before the permit is released.
    """

    def __init__(
        self,
        *,
        limiter: AccountLimiter | None = None,
        classifier: Classifier | None = None,
        secrets: Iterable[str] = (),
        stop: threading.Event | None = None,
        max_wait: float = MAX_RETRY_AFTER,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.limiter = limiter
        self.classifier = classifier
        self.secrets: tuple[str, ...] = tuple(secrets)
        self.stop = stop
        self.max_wait = max_wait
        # The 429 history lives in the account's limiter (shared by every sync and thread of
        # the account); a client without a limiter keeps its own.
        self._strikes = Strikes()

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
        limiter = self.limiter
        if limiter is not None and not limiter.acquire(self.stop):
            raise TransientError(
                f"{request.method} {describe_host(request)}: stopped while waiting to send"
            )
        try:
            try:
                # stream=False: the body is read (and the connection freed) in here.
                response = super().send(request, auth=auth, follow_redirects=False)
            except httpx.RequestError as exc:
                raise transport_error(exc, request) from None
        finally:
            if limiter is not None:
                limiter.release()
        self._check(response)
        return response

    def _check(self, response: httpx.Response) -> None:
        action = self.classifier(response) if self.classifier is not None else None
        if action is None:
            action = classify_status(response.status_code)
        limiter = self.limiter
        wait = DEFAULT_COOL_DOWN
        if action is Action.RATE_LIMITED:
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
    redirects followed; ``transport`` lets tests hand in a respx router."""
    return DestinationClient(
        limiter=limiter,
        max_wait=max_wait,
        timeout=httpx.Timeout(timeout),
        transport=transport,
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,
        verify=True,
    )
