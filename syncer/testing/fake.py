"""``FakeVendor``: the small in-memory vendor a connector's author writes for the kit.

The kit cannot know a vendor's request and response shapes, so the author describes them once:
respx routes that keep what the vendor keeps, and ``members()`` saying what it holds. The base
class adds everything the standard suite needs around those routes: answering the next calls
with 429, 5xx or 401, refusing one record or a whole batch, losing an answer after applying the
request, and noting every batch's size against the vendor's cap.
"""

from __future__ import annotations

import functools
import threading
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import httpx
import respx

#: What a vendor can do that some standard tests need; a fake that cannot says why in ``lacks``.
#:
#: - ``http``: the connector talks HTTP (a file connector does not: no status tests).
#: - ``record_rejects``: the vendor refuses single records inside an accepted request.
#: - ``batch_refusal``: the vendor refuses a whole request because of its content.
#: - ``field_values``: ``members()`` shows field values (an ad audience keeps only hashes).
#: - ``retry_after``: the vendor's 429 may carry a ``Retry-After`` header.
Feature = Literal["http", "record_rejects", "batch_refusal", "field_values", "retry_after"]

#: A member as the destination holds it: field name to value.
Fields = Mapping[str, object]


@dataclass(frozen=True, slots=True)
class _Fault:
    status: int
    retry_after: float | None


class FakeVendor:
    """Base for a vendor fake. Subclass it, set ``base_url`` (and ``batch_cap``), implement
    ``routes`` and ``members``; in write handlers call ``check_batch`` first and skip the
    records ``record_refused`` names.

    Override ``error`` when the vendor's error bodies matter to the connector (a vendor
    that answers throttling as a 400 with a code), and ``authorized`` to check credentials.
    Handlers run under ``self.lock``: the engine sends batches on several threads.
    """

    #: Where the fake answers; the connector's ``base_url`` setting points here.
    base_url: ClassVar[str] = "https://api.vendor.test"
    #: Most records the vendor takes in one request; None: no cap to check.
    batch_cap: ClassVar[int | None] = None
    #: Features the vendor lacks, each with the reason; their standard tests are skipped.
    lacks: ClassVar[Mapping[Feature, str]] = {}

    def __init__(self) -> None:
        self.lock = threading.RLock()
        #: Every request the fake received, in order.
        self.received: list[httpx.Request] = []
        #: The number of records in each batch handed to ``check_batch``.
        self.batch_sizes: list[int] = []
        self._kit_faults: deque[_Fault] = deque()
        self._kit_lose = 0
        self._kit_refused: set[str] = set()
        self._kit_refusing: set[str] = set()

    @functools.cached_property
    def api(self) -> respx.Router:
        """The fake's routes, built on first use (under ``lock``): ``routes()`` may read
        attributes a subclass sets after calling ``super().__init__()``."""
        api = respx.Router(base_url=self.base_url, assert_all_called=False)
        self.routes(api)
        api.route().respond(404, json={"error": "no such endpoint in the fake"})
        return api

    # -- what the author writes -----------------------------------------------------------

    def routes(self, api: respx.Router) -> None:
        """Mount the vendor's endpoints on ``api`` (paths relative to ``base_url``), e.g.
        ``api.post("/v1/contacts").mock(side_effect=self.upsert)``."""

    def members(self) -> Mapping[str, Fields]:
        """What the destination holds now: each member by the key the suite synced (see
        ``ConnectorSuite.vendor_key``), with its fields. A vendor that can hold the same
        person twice must show the copy under another key, so the suite sees it."""
        raise NotImplementedError(f"{type(self).__name__} must implement members()")

    def authorized(self, request: httpx.Request) -> bool:
        """Whether ``request`` carries valid credentials; False answers ``error(401)``."""
        return True

    def error(self, status: int, *, retry_after: float | None = None) -> httpx.Response:
        """The vendor's error answer for ``status`` (429, 5xx, 401, 400 for a refused batch,
        413 for an oversized one), with ``Retry-After`` when given."""
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        message = _MESSAGES.get(status, "error")
        return httpx.Response(
            status, json={"error": {"status": status, "message": message}}, headers=headers
        )

    # -- helpers for route handlers -------------------------------------------------------

    def check_batch(self, keys: Collection[str]) -> httpx.Response | None:
        """Note a write batch of ``keys``; the answer to send instead when the vendor refuses
        it (over ``batch_cap``: 413; holding a key given to ``refuse_batch_with``: 400), else
        None and the handler goes on."""
        with self.lock:
            self.batch_sizes.append(len(keys))
            if self.batch_cap is not None and len(keys) > self.batch_cap:
                return self.error(413)
            if self._kit_refusing.intersection(keys):
                return self.error(400)
            return None

    def record_refused(self, key: str) -> bool:
        """Whether the vendor refuses the record ``key`` on its own (``reject_record``)."""
        with self.lock:
            return key in self._kit_refused

    # -- knobs for tests ------------------------------------------------------------------

    def reject_record(self, key: str) -> None:
        """From now on refuse the record ``key`` alone; the rest of its batch is accepted."""
        with self.lock:
            self._kit_refused.add(key)

    def refuse_batch_with(self, key: str) -> None:
        """From now on refuse as a whole every batch holding ``key`` (the engine splits it)."""
        with self.lock:
            self._kit_refusing.add(key)

    def answer_next(self, status: int, times: int = 1, *, retry_after: float | None = None) -> None:
        """Answer the next ``times`` requests with ``error(status)`` instead of handling them."""
        with self.lock:
            self._kit_faults.extend(_Fault(status, retry_after) for _ in range(times))

    def lose_next_answers(self, times: int = 1) -> None:
        """Apply the next ``times`` requests but answer 503, as if the answer never arrived."""
        with self.lock:
            self._kit_lose += times

    def forgive(self) -> None:
        """Drop every refusal and pending fault: the vendor behaves again."""
        with self.lock:
            self._kit_faults.clear()
            self._kit_lose = 0
            self._kit_refused.clear()
            self._kit_refusing.clear()

    @property
    def faults_left(self) -> int:
        """Faults from ``answer_next`` and ``lose_next_answers`` not yet answered."""
        with self.lock:
            return len(self._kit_faults) + self._kit_lose

    @property
    def largest_batch(self) -> int:
        """The most records seen in one batch (0 before any)."""
        with self.lock:
            return max(self.batch_sizes, default=0)

    # -- serving --------------------------------------------------------------------------

    def mount(self, router: respx.Router) -> None:
        """Answer every request to ``base_url`` on ``router`` (the engine's transport)."""
        router.route(url__startswith=self.base_url.rstrip("/")).mock(side_effect=self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        """One request: a scripted fault, else the credential check, else the routes."""
        with self.lock:
            self.received.append(request)
            if self._kit_faults:
                fault = self._kit_faults.popleft()
                return self.error(fault.status, retry_after=fault.retry_after)
            if not self.authorized(request):
                return self.error(401)
            response = self.respond(request)
            if self._kit_lose:
                self._kit_lose -= 1
                return self.error(503)
            return response

    def respond(self, request: httpx.Request) -> httpx.Response:
        """The routes' answer to ``request``; override only to route some other way."""
        response = self.api.handler(request)
        response.read()
        return response


_MESSAGES = {
    400: "the request was refused",
    401: "invalid credentials",
    403: "forbidden",
    413: "too many records in one request",
    429: "too many requests",
    500: "internal error",
    502: "bad gateway",
    503: "service unavailable",
}
