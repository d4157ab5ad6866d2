"""A real HTTP server on 127.0.0.1 that plays a webhook destination and keeps its own members.

Tests point the real `webhook` connector (through the real CLI) at it, then compare what the
server holds with the segment. It is scriptable, so tests can make it misbehave the way vendors
do:

- ``state.script(Fault(...), ...)``: a queue of faults, one per request in arrival order: a
  status code (with an optional ``Retry-After`` value and an optional body that echoes the
  request), a delay before answering (to trip client timeouts; the batch is applied late, as a
  slow vendor would), or a connection reset (TCP RST, no answer at all);
- ``reject_keys``: per-record refusals inside a 200 (``{"rejected": [{"key", "reason"}]}``);
- ``poison_keys``: any of these keys in a batch makes the WHOLE batch answer 400;
- ``rate_limit``: (N, S) = at most N requests per S seconds, else 429 with ``Retry-After``;
- ``latency`` (before the batch is applied) and ``ack_latency`` (after it is applied, before the
  answer), so a client killed mid-request can leave either side of that window;
- ``gate``: an event, set (open) by default; while a test holds it clear, requests wait at the
  door, so a run stays in progress for exactly as long as the test needs, however slow the
  machine.

It counts every request (``hits``), every status sent (``statuses``), resets, and requests whose
client had gone before the answer (``abandoned``), and keeps a timeline of ``Hit``s.

The bottom half is a small harness shared by the reliability tests: one sync wired to a SQLite
warehouse, a state database and this server, run through the real CLI.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import json
import math
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import sqlalchemy as sa


@dataclass(frozen=True)
class Fault:
    """What the server does to one request instead of (or before) handling it normally.

    ``status`` answers with that code (``retry_after`` becomes the ``Retry-After`` header;
    ``echo`` makes the body repeat the request's headers and body, as careless vendors do).
    ``delay`` waits that long first; with no ``status`` the batch is then applied and answered
    200 (too late, if the client timed out). ``reset`` closes the connection without answering.
    ``trickle`` answers one byte every ``trickle`` seconds (status line, headers and a long
    body), so no per-read timeout ever fires, until the client goes away; the batch is not
    applied. ``huge`` answers 200 with that many bytes of body and no Content-Length (the
    body ends when the connection closes), streamed until the client goes away;
    ``huge_declared`` sends a Content-Length for it. Bytes actually written go to
    ``DestinationState.streamed``.
    """

    status: int | None = None
    retry_after: str | None = None
    delay: float = 0.0
    reset: bool = False
    echo: bool = False
    trickle: float = 0.0
    huge: int = 0
    huge_declared: bool = False


@dataclass
class Hit:
    """One request as the server saw it (times are ``time.monotonic()`` in this process)."""

    arrived: float
    operation: str | None
    size: int
    status: int | None = None  # None: connection reset, or the client had gone
    answered: float | None = None


def _open_gate() -> threading.Event:
    gate = threading.Event()
    gate.set()
    return gate


@dataclass
class DestinationState:
    secret: str | None = None
    members: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)  # applied batches only
    reject_keys: dict[str, str] = field(default_factory=dict)
    fail_with: list[int] = field(default_factory=list)  # statuses for the next requests
    faults: collections.deque[Fault] = field(default_factory=collections.deque)
    poison_keys: set[str] = field(default_factory=set)
    poison_echo: bool = False  # the 400 for a poisoned batch echoes the request body
    rate_limit: tuple[int, float] | None = None  # (requests, per seconds)
    rate_limit_retry_after: str | None = None  # None: seconds until a slot frees, rounded up
    latency: float = 0.0
    ack_latency: float = 0.0
    gate: threading.Event = field(default_factory=_open_gate)
    hits: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    resets: int = 0
    abandoned: int = 0
    inflight: int = 0
    max_inflight: int = 0
    timeline: list[Hit] = field(default_factory=list)
    streamed: list[int] = field(default_factory=list)  # bytes written per trickle/huge fault
    lock: threading.Lock = field(default_factory=threading.Lock)
    _admitted: collections.deque[float] = field(default_factory=collections.deque)

    def records_sent(self, operation: str | None = None) -> int:
        return sum(len(r["records"]) for r in self.requests if operation in (None, r["operation"]))

    def script(self, *faults: Fault) -> None:
        """Queue faults for the next requests, in arrival order."""
        with self.lock:
            self.faults.extend(faults)

    def members_now(self) -> dict[str, dict[str, Any]]:
        """A copy of the members, safe while requests are still being handled."""
        with self.lock:
            return dict(self.members)

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until no request is being handled (delayed answers included)."""
        deadline = time.monotonic() + timeout
        while self.inflight and time.monotonic() < deadline:
            time.sleep(0.02)

    def pending_faults(self) -> int:
        with self.lock:
            return len(self.faults)

    def summary(self) -> dict[str, Any]:
        """Counters for printing: requests, status codes, resets, abandoned, peak concurrency."""
        with self.lock:
            return {
                "requests": self.hits,
                "statuses": dict(sorted(self.statuses.items())),
                "resets": self.resets,
                "abandoned": self.abandoned,
                "max_inflight": self.max_inflight,
                "records_applied": sum(len(r["records"]) for r in self.requests),
            }

    # -- decisions (called with the lock held) -------------------------------------------

    def _next_fault(self) -> Fault | None:
        if self.faults:
            return self.faults.popleft()
        if self.fail_with:
            return Fault(status=self.fail_with.pop(0))
        return None

    def _rate_limited(self, now: float) -> str | None:
        """The Retry-After to send if this request is over the limit, else None (admitted)."""
        if self.rate_limit is None:
            return None
        limit, per = self.rate_limit
        while self._admitted and now - self._admitted[0] >= per:
            self._admitted.popleft()
        if len(self._admitted) < limit:
            self._admitted.append(now)
            return None
        if self.rate_limit_retry_after is not None:
            return self.rate_limit_retry_after
        return str(max(1, math.ceil(per - (now - self._admitted[0]))))


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        state = self.server.state
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            doc = json.loads(body)
            operation, records = doc.get("operation"), doc.get("records", [])
        except ValueError:
            doc, operation, records = None, None, []
        hit = Hit(time.monotonic(), operation, len(records))
        with state.lock:
            state.hits += 1
            state.timeline.append(hit)
            state.inflight += 1
            state.max_inflight = max(state.max_inflight, state.inflight)
        try:
            self._handle(state, hit, body, doc)
        finally:
            with state.lock:
                state.inflight -= 1

    def _handle(
        self, state: DestinationState, hit: Hit, body: bytes, doc: dict[str, Any] | None
    ) -> None:
        state.gate.wait()
        if state.latency:
            time.sleep(state.latency)
        if state.secret is not None:
            # The README's check: HMAC-SHA256 over "<timestamp>.<idempotency key>.<body>".
            signed = b"%s.%s." % (
                self.headers.get("X-Syncer-Timestamp", "").encode(),
                self.headers.get("Idempotency-Key", "").encode(),
            )
            digest = hmac.new(state.secret.encode(), signed + body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(
                "sha256=" + digest, self.headers.get("X-Syncer-Signature", "")
            ):
                self._reply(state, hit, 401, {"error": "bad signature"})
                return
        with state.lock:
            fault = state._next_fault()
            throttled = None if fault is not None else state._rate_limited(time.monotonic())
        if throttled is not None:
            self._reply(state, hit, 429, {"error": "slow down"}, {"Retry-After": throttled})
            return
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.reset:
                self._reset(state)
                return
            if fault.trickle or fault.huge:
                self._stream(state, fault)
                return
            if fault.status is not None:
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                payload = self._echo(body) if fault.echo else {"error": "injected"}
                self._reply(state, hit, fault.status, payload, headers)
                return
        assert doc is not None, "the webhook connector always sends JSON"
        poisoned = [r["key"] for r in doc["records"] if r["key"] in state.poison_keys]
        if poisoned:
            payload = (
                self._echo(body)
                if state.poison_echo
                else {"error": "invalid record in batch", "count": len(poisoned)}
            )
            self._reply(state, hit, 400, payload)
            return
        rejected = []
        with state.lock:
            state.requests.append(
                {
                    "operation": doc["operation"],
                    "records": doc["records"],
                    "idempotency_key": self.headers.get("Idempotency-Key"),
                }
            )
            for record in doc["records"]:
                key = record["key"]
                if key in state.reject_keys:
                    rejected.append({"key": key, "reason": state.reject_keys[key]})
                elif doc["operation"] == "remove":
                    state.members.pop(key, None)
                else:
                    state.members[key] = record["fields"]
        if state.ack_latency:
            time.sleep(state.ack_latency)
        self._reply(state, hit, 200, {"rejected": rejected})

    def _echo(self, body: bytes) -> dict[str, Any]:
        """A careless vendor's error: it quotes credentials and record data, up front."""
        text = body.decode("utf-8", "replace")
        try:
            first = json.loads(text)["records"][0]["key"]
        except (ValueError, LookupError, TypeError):
            first = ""
        auth = self.headers.get("Authorization", "")
        return {
            "error": f"bad request from {auth} {first}".strip(),
            "you_sent": text,
            "you_sent_headers": dict(self.headers.items()),
        }

    def _client_gone(self) -> bool:
        """True when the client closed its end (it timed out or was killed) before our answer."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _stream(self, state: DestinationState, fault: Fault) -> None:
        """A trickled or a huge answer, written until done or the client has gone."""
        body = b'{"rejected": []}' + b" " * 100_000 if fault.trickle else b""
        head = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n"
        if fault.trickle or fault.huge_declared:
            head += b"Content-Length: %d\r\n" % (len(body) or fault.huge)
        head += b"\r\n"
        sent = 0
        with state.lock:
            state.streamed.append(0)
            slot = len(state.streamed) - 1
        try:
            if fault.trickle:
                for byte in head + body:
                    self.connection.sendall(bytes([byte]))
                    sent += 1
                    with state.lock:
                        state.streamed[slot] = sent
                    time.sleep(fault.trickle)
            else:
                self.connection.sendall(head)
                block = b"x" * 65536
                while sent < fault.huge:
                    piece = block[: fault.huge - sent]
                    self.connection.sendall(piece)
                    sent += len(piece)
                    with state.lock:
                        state.streamed[slot] = sent
        except OSError:
            with state.lock:
                state.abandoned += 1
        self.close_connection = True

    def _reset(self, state: DestinationState) -> None:
        """Close with SO_LINGER 0: the client gets a TCP RST and no response."""
        with state.lock:
            state.resets += 1
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def _reply(
        self,
        state: DestinationState,
        hit: Hit,
        status: int,
        payload: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        if self._client_gone():
            with state.lock:
                state.abandoned += 1
            self.close_connection = True
            return
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            with state.lock:
                state.abandoned += 1
            return
        with state.lock:
            state.statuses[status] += 1
            hit.status, hit.answered = status, time.monotonic()

    def finish(self) -> None:
        with contextlib.suppress(OSError):  # reset on purpose, or the client vanished
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, state: DestinationState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients killed mid-request are part of the tests


@contextmanager
def fake_destination(
    secret: str | None = None, **options: Any
) -> Iterator[tuple[str, DestinationState]]:
    """Yield (url, state) of a running destination; stopped on exit.

    ``options`` set any ``DestinationState`` field up front (``latency=0.05``, ...).
    """
    state = DestinationState(secret=secret, **options)
    server = _Server(state)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", state
    finally:
        server.shutdown()
        server.server_close()


# -- harness: one sync through the real CLI --------------------------------------------------

COLUMNS = ("email", "first_name", "ltv")
SECRET = "whsec-7Qm2-reliability-signing-key"

MAPPING = """\
name: {name}
source:
  warehouse: default
  query: select email, first_name, ltv from {table}
  key: email
  key_type: email
mode: mirror
fields:
  email: email
  first_name: first_name
  ltv: {{column: ltv, type: number}}
destination:
  connector: webhook
  url: ${{HOOK_URL}}
  secret: ${{HOOK_SECRET}}
  batch_size: {batch_size}
{extra}guards:
  max_remove_pct: 100
"""


def people(n: int, start: int = 0, domain: str = "example.com") -> list[tuple[str, str, str]]:
    return [(f"person{i}@{domain}", f"Name{i}", f"{i * 10}.50") for i in range(start, start + n)]


def members_of(rows: Sequence[tuple[str, str, str]]) -> dict[str, dict[str, Any]]:
    return {
        email: {"email": email, "first_name": name, "ltv": float(ltv)} for email, name, ltv in rows
    }


def cli_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCER_")}
    env.update(extra)
    return env


@dataclass
class Harness:
    """One sync (``name``) from a SQLite warehouse table to a fake destination."""

    root: Path
    url: str
    dest: DestinationState
    state_url: str
    name: str = "vip"
    table: str = "segment_vip"
    env: dict[str, str] = field(default_factory=dict)
    _outputs: dict[int, tuple[Path, Path]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.warehouse = f"sqlite:///{self.root / 'shop.db'}"
        self.mappings = self.root / "mappings"
        self.mappings.mkdir(exist_ok=True)
        self.env = {
            "SYNCER_WAREHOUSE_URL": self.warehouse,
            "SYNCER_STATE_URL": self.state_url,
            "SYNCER_MAPPINGS_DIR": str(self.mappings),
            "HOOK_URL": self.url,
            "HOOK_SECRET": SECRET,
            **self.env,
        }

    def mapping(self, batch_size: int = 7, extra: str = "") -> None:
        """Write the mapping; ``extra`` is more YAML inside ``destination:`` (indented 2)."""
        text = MAPPING.format(name=self.name, table=self.table, batch_size=batch_size, extra=extra)
        (self.mappings / f"{self.name}.yaml").write_text(text)

    def segment(self, rows: Sequence[tuple[str, str, str]]) -> None:
        from tests.conftest import write_table

        write_table(self.warehouse, self.table, COLUMNS, rows)

    def cli(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "syncer", *args],
            cwd=self.root,
            env=cli_env({**self.env, **(env or {})}),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def sync(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> tuple[int, dict[str, Any] | None, subprocess.CompletedProcess[str]]:
        proc = self.cli("sync", "now", self.name, "--json", *args, env=env, timeout=timeout)
        doc = json.loads(proc.stdout) if proc.stdout.strip() else None
        return proc.returncode, doc, proc

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """``sync now NAME --json`` started in the background; output goes to files."""
        n = len(list(self.root.glob("bg-*.out")))
        with (
            (self.root / f"bg-{n}.out").open("w") as stdout,
            (self.root / f"bg-{n}.err").open("w") as stderr,
        ):
            proc = subprocess.Popen(
                [sys.executable, "-m", "syncer", "sync", "now", self.name, "--json", *args],
                cwd=self.root,
                env=cli_env({**self.env, **(env or {})}),
                stdout=stdout,
                stderr=stderr,
                text=True,
            )
        self._outputs[proc.pid] = (self.root / f"bg-{n}.out", self.root / f"bg-{n}.err")
        return proc

    def stderr_so_far(self, proc: subprocess.Popen[str]) -> str:
        """What a ``popen`` process has written to stderr until now (it may still run)."""
        return self._outputs[proc.pid][1].read_text()

    def output(self, proc: subprocess.Popen[str]) -> tuple[str, str]:
        """(stdout, stderr) of a finished ``popen`` process."""
        out, err = self._outputs[proc.pid]
        return out.read_text(), err.read_text()

    def converge(self, max_runs: int = 4, env: dict[str, str] | None = None) -> list[int]:
        """Re-run ``sync now`` until it exits 0 (or ``max_runs``); the exit codes seen."""
        codes: list[int] = []
        for _ in range(max_runs):
            code, _, proc = self.sync(env=env)
            codes.append(code)
            if code == 0:
                break
            assert code in (1, 75), proc.stdout + proc.stderr
        return codes

    # -- reading the state database directly --------------------------------------------

    def _state(self) -> sa.Engine:
        return sa.create_engine(self.state_url)

    def state_hashes(self) -> dict[str, Any]:
        engine = self._state()
        try:
            with engine.connect() as conn:
                if not sa.inspect(conn).has_table("syncer_records"):
                    return {}  # no run got as far as creating the schema
                # Confirmed rows only: what state claims the destination holds.
                rows = conn.execute(
                    sa.text("select key, hash from syncer_records where sync = :s and unsure = 0"),
                    {"s": self.name},
                ).all()
        finally:
            engine.dispose()
        return {key: h for key, h in rows}

    def state_keys(self) -> set[str]:
        return set(self.state_hashes())

    def runs(self) -> list[dict[str, Any]]:
        proc = self.cli("runs", "--sync", self.name, "--limit", "1000", "--json")
        assert proc.returncode == 0, proc.stderr
        runs: list[dict[str, Any]] = json.loads(proc.stdout)["runs"]
        return runs


@contextmanager
def harness(
    root: Path,
    state_url: str | None = None,
    *,
    batch_size: int = 7,
    extra: str = "",
    env: dict[str, str] | None = None,
    **options: Any,
) -> Iterator[Harness]:
    """A running destination (``options`` as for ``fake_destination``) and a sync wired to it."""
    with fake_destination(secret=SECRET, **options) as (url, dest):
        h = Harness(root, url, dest, state_url or f"sqlite:///{root / 'state.db'}", env=env or {})
        h.mapping(batch_size, extra)
        yield h
