"""A base for local servers that emulate a vendor API and keep its state, for end-to-end tests.

A subclass declares routes and keeps whatever the vendor keeps (contacts, lists, ids, jobs):

    class FakeHubSpot(VendorEmulator):
        endpoints = [("POST", r"/crm/v3/objects/contacts/batch/upsert", "upsert")]

        def upsert(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
            ...
            return Reply(207, {"results": [...], "errors": [...]})

``with FakeHubSpot() as vendor:`` serves it on 127.0.0.1 (``vendor.url`` is the base_url for the
mapping). Every request is kept in ``vendor.requests`` (as :class:`CapturedRequest`, for contract
checks) and handled under one lock, so handlers need no locking of their own.
``vendor.fail_next(r"/batch/upsert", Reply(429, ..., headers={"Retry-After": "1"}))`` answers the
next matching request with that reply instead of handling it (a 429, a 500, a timeout-like delay,
``Reply(reset=True)``: the connection closed without an answer); ``after=2`` lets two matching
requests through first. ``vendor.limit(1, 1.0)`` answers 429 (``rate_limited``) beyond a rate,
counted over a sliding window of admitted requests, and ``vendor.chaos(0.2, seed=7)`` answers a
seeded-random 20% of the admitted requests with a 503; both take a ``clock`` so tests can run
them on the engine's scaled or fake time. Neither the limit's nor chaos's answers change state.

``SyncRun`` wires one mapping, a SQLite warehouse table and a state database to the real CLI.
"""

from __future__ import annotations

import collections
import json
import math
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx

from syncer.testing import FakeVendor
from tests.contract import CapturedRequest
from tests.fake_oauth import TokenIssuer


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON-encoded unless bytes
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering
    reset: bool = False  # close the connection without answering (after ``delay``)

    def encoded(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body).encode()


class VendorEmulator(FakeVendor):
    """Subclass it: set ``endpoints`` to (method, path regex, handler method name) triples.

    It is also a :class:`syncer.testing.FakeVendor`: mounted on a respx router (``mount``),
    the connector kit's standard suite runs against it in-process; ``kit_check`` and
    ``record_refused`` in its write handlers serve the kit's refusal knobs.
    """

    endpoints: ClassVar[list[tuple[str, str, str]]] = []
    base_url: ClassVar[str] = "https://vendor.fake"

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[CapturedRequest] = []
        self.statuses: collections.Counter[int] = collections.Counter()
        # (path, method, reply, matching requests still to let through first)
        self._faults: list[list[Any]] = []
        self._compiled = [(m, re.compile(p + r"$"), h) for m, p, h in self.endpoints]
        self._server: ThreadingHTTPServer | None = None
        # Rate windows: (requests, per seconds, admitted times), all on one clock.
        self._limits: list[tuple[int, float, collections.deque[float]]] = []
        self._clock: Callable[[], float] = time.monotonic
        self._chaos: tuple[float, random.Random, Reply] | None = None
        #: Requests answered by ``limit`` (429) and by ``chaos``.
        self.throttled = 0
        self.chaotic = 0
        #: Requests a route handled (not a fault, the limit or chaos), with the status.
        self.handled: list[tuple[CapturedRequest, int]] = []
        #: The vendor's OAuth token endpoint on this server (tests.fake_oauth), if any.
        self.issuer: TokenIssuer | None = None
        #: Requests refused by ``accepts`` (no token, a wrong or an expired one).
        self.unauthorized = 0

    # -- the connector kit (respx, in-process) ---------------------------------------------

    def respond(self, request: httpx.Request) -> httpx.Response:
        """The kit's request through ``dispatch``, as if it had come over the socket."""
        captured = CapturedRequest(
            request.method,
            request.url.raw_path.decode("ascii"),
            {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers.raw},
            request.content,
        )
        return as_response(self.dispatch(captured))

    def kit_check(self, keys: Collection[str]) -> Reply | None:
        """``check_batch`` for a handler returning a ``Reply``."""
        refused = self.check_batch(keys)
        return None if refused is None else as_reply(refused)

    # -- OAuth ----------------------------------------------------------------------------

    def accepts(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries a good token: the static ``token``
        the fake was made with, or one its ``issuer`` issued that has not expired."""
        static = getattr(self, "token", None)
        if static is not None and authorization == f"Bearer {static}":
            return True
        issuer = self.issuer
        token = (authorization or "").removeprefix("Bearer ")
        if issuer is not None and issuer.valid(token):
            return True
        with self.lock:
            self.unauthorized += 1
        return False

    def is_token_request(self, req: CapturedRequest) -> bool:
        """A request to the token endpoint: it carries no bearer token to check."""
        issuer = self.issuer
        return issuer is not None and req.url.split("?", 1)[0] == issuer.path

    # -- scripting ----------------------------------------------------------------------

    def fail_next(
        self,
        path: str,
        reply: Reply,
        *,
        method: str | None = None,
        times: int = 1,
        after: int = 0,
    ) -> None:
        """Answer the next ``times`` requests whose path matches ``path`` with ``reply``,
        after letting ``after`` matching requests through."""
        with self.lock:
            for _ in range(times):
                self._faults.append([re.compile(path), method, reply, after])

    def limit(
        self, requests: int, per_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Answer :meth:`rate_limited` to requests beyond ``requests`` per ``per_seconds``
        (call it again to add windows; all apply, on the last ``clock`` given)."""
        with self.lock:
            self._limits.append((requests, per_seconds, collections.deque()))
            self._clock = clock

    def chaos(self, share: float, seed: int, reply: Reply | None = None) -> None:
        """Answer a random ``share`` of the admitted requests with ``reply`` (a bare 503)."""
        with self.lock:
            self._chaos = (share, random.Random(seed), reply or Reply(503, {"error": "busy"}))

    def rate_limited(self, wait: float) -> Reply:
        """The vendor's own 429 (override it: bare, Retry-After, JSON:API...)."""
        return Reply(429, {"message": "Too Many Requests"}, headers={"Retry-After": f"{wait:.0f}"})

    def _over_limit(self) -> Reply | None:
        """With the lock held: the 429 for a request over a rate, else None (admitted)."""
        if not self._limits:
            return None
        now = self._clock()
        wait = 0.0
        for requests, per, admitted in self._limits:
            while admitted and now - admitted[0] >= per:
                admitted.popleft()
            if len(admitted) >= requests:
                wait = max(wait, per - (now - admitted[0]))
        if wait > 0:
            self.throttled += 1
            return self.rate_limited(max(1.0, math.ceil(wait)))
        for _, _, admitted in self._limits:
            admitted.append(now)
        return None

    def pending_faults(self) -> int:
        with self.lock:
            return len(self._faults)

    def requests_to(self, path: str, method: str | None = None) -> list[CapturedRequest]:
        pattern = re.compile(path)
        with self.lock:
            return [
                r
                for r in self.requests
                if pattern.search(r.url.split("?", 1)[0]) and (method is None or r.method == method)
            ]

    # -- serving ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "use the emulator as a context manager"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> VendorEmulator:
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                captured = CapturedRequest(
                    self.command, self.path, {k: v for k, v in self.headers.items()}, body
                )
                reply = emulator.dispatch(captured)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.reset:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                data = reply.encoded()
                headers = {"Content-Type": "application/json", **reply.headers}
                try:
                    self.send_response(reply.status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (timed out) first

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def dispatch(self, req: CapturedRequest) -> Reply:
        path = req.url.split("?", 1)[0]
        with self.lock:
            self.requests.append(req)
            for i, (pattern, method, reply, after) in enumerate(self._faults):
                if pattern.search(path) and (method is None or method == req.method):
                    if after:
                        self._faults[i][3] -= 1
                        break
                    del self._faults[i]
                    self.statuses[0 if reply.reset else reply.status] += 1
                    return reply
            limited = self._over_limit()
            if limited is not None:
                self.statuses[limited.status] += 1
                return limited
            if self._chaos is not None:
                share, rng, chaotic = self._chaos
                if rng.random() < share:
                    self.chaotic += 1
                    self.statuses[chaotic.status] += 1
                    return chaotic
            if self.issuer is not None and path == self.issuer.path and req.method == "POST":
                status, body = self.issuer.answer(req)
                self.statuses[status] += 1
                return Reply(status, body, headers={"Cache-Control": "no-store"})
            for method, pattern, handler in self._compiled:
                match = pattern.match(path)
                if match and method == req.method:
                    reply = getattr(self, handler)(req, match)
                    self.statuses[reply.status] += 1
                    self.handled.append((req, reply.status))
                    return reply
            self.statuses[404] += 1
            return Reply(404, {"message": f"no route for {req.method} {path}"})


def as_response(reply: Reply) -> httpx.Response:
    """A ``Reply`` as respx answers it (a reset or delay becomes a read timeout)."""
    if reply.reset or reply.delay:
        raise httpx.ReadTimeout("the emulated vendor did not answer")
    headers = {"Content-Type": "application/json", **reply.headers}
    return httpx.Response(reply.status, content=reply.encoded(), headers=headers)


def as_reply(response: httpx.Response) -> Reply:
    """An ``httpx.Response`` (the kit's ``error()``) as a ``Reply``."""
    skip = {"content-length", "content-type", "content-encoding"}
    headers = {k: v for k, v in response.headers.items() if k.lower() not in skip}
    return Reply(response.status_code, response.content, headers)


@dataclass
class SyncRun:
    """One sync through the real CLI: a mapping file, a SQLite warehouse table, a state db.

    ``mapping`` is the whole YAML text; it should read ``select ... from segment``.
    """

    root: Path
    mapping: str
    name: str
    env: dict[str, str] = field(default_factory=dict)
    table: str = "segment"

    def __post_init__(self) -> None:
        self.mappings = self.root / "mappings"
        self.mappings.mkdir(parents=True, exist_ok=True)
        (self.mappings / f"{self.name}.yaml").write_text(self.mapping, encoding="utf-8")
        self.warehouse = f"sqlite:///{self.root / 'warehouse.db'}"
        self.env = {
            "SYNCER_WAREHOUSE_URL": self.warehouse,
            "SYNCER_STATE_URL": f"sqlite:///{self.root / 'state.db'}",
            "SYNCER_MAPPINGS_DIR": str(self.mappings),
            **self.env,
        }

    def segment(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        from tests.conftest import write_table

        write_table(self.warehouse, self.table, columns, rows)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCER_")}
        env.update(self.env)
        return subprocess.run(
            [sys.executable, "-m", "syncer", *args],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def sync(self, *args: str) -> tuple[int, dict[str, Any]]:
        """``sync now NAME --json``: (exit code, the run's JSON document)."""
        proc = self.cli("sync", "now", self.name, "--json", *args)
        assert proc.stdout.strip(), proc.stderr
        doc = json.loads(proc.stdout)
        return proc.returncode, doc
