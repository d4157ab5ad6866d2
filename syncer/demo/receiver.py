"""A tiny local webhook receiver that plays a destination for the ``webhook`` connector.

It keeps one member set per sync, so the demo can prove the destination ended up holding
exactly the warehouse segment. It checks requests the way docs/connectors/webhook.md tells
a real receiver to (:class:`ReplayGuard`: signature, replay window, idempotency keys seen),
and never logs record keys or field values: they are email addresses.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OPERATIONS = ("add", "remove", "update")
MAX_BODY = 64 * 1024 * 1024
#: Seconds a signed request stays valid (either way, for clock skew). Idempotency keys are
#: remembered twice as long, so a request can never be replayed, inside the window or out.
REPLAY_WINDOW = 300.0


class PayloadError(ValueError):
    """A request body that is not a webhook batch (message names no record data)."""


class Refused(ValueError):
    """A request the receiver must refuse with 401: unsigned, forged, altered or stale."""


class ReplayGuard:
    """The receiver's check from docs/connectors/webhook.md, for one signing secret.

    The signature is HMAC-SHA256 over ``"<X-Syncer-Timestamp>.<Idempotency-Key>.<body>"``.
    A request signed more than ``window`` seconds away from now is refused, so a captured
    request cannot be replayed later; a key seen within the window means a batch already
    applied (a retry whose answer was lost, or a replay), to be answered 2xx and not applied
    again. A later run's batch with the same records carries another key.
    """

    def __init__(
        self,
        secret: str,
        window: float = REPLAY_WINDOW,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret.encode("utf-8")
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        self._order: deque[tuple[float, str]] = deque()

    def admit(
        self, timestamp: str | None, key: str | None, signature: str | None, body: bytes
    ) -> bool:
        """True: a new batch, apply it; False: already applied, answer 2xx only.
        Raises :class:`Refused` for anything else."""
        if not timestamp or not key or not signature or not timestamp.isdigit():
            raise Refused("missing signature headers")
        signed = f"{timestamp}.{key}.".encode() + body
        expected = "sha256=" + hmac.new(self._secret, signed, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature.strip()):
            raise Refused("bad signature")
        now = self._clock()
        if abs(now - int(timestamp)) > self.window:
            raise Refused("signed outside the replay window")
        with self._lock:
            while self._order and now - self._order[0][0] > 2 * self.window:
                self._seen.discard(self._order.popleft()[1])
            if key in self._seen:
                return False
            self._seen.add(key)
            self._order.append((now, key))
        return True


class DemoReceiver:
    """Destination state shared by all request threads: members and fields per sync."""

    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret
        self.guard = ReplayGuard(secret) if secret is not None else None
        self._lock = threading.Lock()
        self._members: dict[str, dict[str, dict[str, Any]]] = {}
        self._sent: dict[str, set[str]] = {}
        self.requests: Counter[str] = Counter()
        self.duplicates = 0
        """Requests whose idempotency key was already seen: answered, not applied again."""
        self.unknown_updates: Counter[str] = Counter()
        """Updates for keys that were never added, per sync: a sign of an engine bug."""

    def admit(self, headers: Any, body: bytes) -> bool:
        """The documented check (see :class:`ReplayGuard`) when a secret is set: True to apply
        the batch, False for one already applied; raises :class:`Refused`."""
        if self.guard is None:
            return True
        fresh = self.guard.admit(
            headers.get("X-Syncer-Timestamp"),
            headers.get("Idempotency-Key"),
            headers.get("X-Syncer-Signature"),
            body,
        )
        if not fresh:
            with self._lock:
                self.duplicates += 1
        return fresh

    def apply(self, payload: Any) -> tuple[str, str, int]:
        """Apply one batch; returns (sync, operation, record count) for logging."""
        if not isinstance(payload, dict):
            raise PayloadError("body must be a JSON object")
        sync, operation, records = (payload.get(k) for k in ("sync", "operation", "records"))
        if not isinstance(sync, str) or not sync:
            raise PayloadError("'sync' must be a non-empty string")
        if operation not in OPERATIONS:
            raise PayloadError("'operation' must be add, remove or update")
        if not isinstance(records, list):
            raise PayloadError("'records' must be a list")
        parsed: list[tuple[str, dict[str, Any]]] = []
        for record in records:
            key = record.get("key") if isinstance(record, dict) else None
            fields = record.get("fields", {}) if isinstance(record, dict) else None
            if not isinstance(key, str | int) or isinstance(key, bool):
                raise PayloadError("every record needs a string 'key'")
            if not isinstance(fields, dict):
                raise PayloadError("record 'fields' must be an object")
            parsed.append((str(key), fields))
        with self._lock:
            members = self._members.setdefault(sync, {})
            if operation != "remove":
                self._sent.setdefault(sync, set()).update(key for key, _ in parsed)
            for key, fields in parsed:
                if operation == "add":
                    members[key] = dict(fields)
                elif operation == "remove":
                    members.pop(key, None)
                elif key in members:
                    members[key].update(fields)
                else:
                    # A real CRM would 404 here; counting it lets the demo spot engine bugs.
                    self.unknown_updates[sync] += 1
            self.requests[operation] += 1
        return sync, str(operation), len(parsed)

    def members(self, sync: str) -> dict[str, dict[str, Any]]:
        """A copy of the current members of ``sync``: key -> last known fields."""
        with self._lock:
            return {key: dict(fields) for key, fields in self._members.get(sync, {}).items()}

    def sent(self, sync: str) -> set[str]:
        """Every key ever added or updated for ``sync``, removed since or not: who was sent."""
        with self._lock:
            return set(self._sent.get(sync, ()))

    def counts(self) -> dict[str, int]:
        """Member count per sync: safe to show, it names nobody."""
        with self._lock:
            return {sync: len(members) for sync, members in sorted(self._members.items())}


class ReceiverServer(ThreadingHTTPServer):
    """HTTP server bound to one ``DemoReceiver``."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        receiver: DemoReceiver,
        log: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(address, _Handler)
        self.receiver = receiver
        self.log = log

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    server: ReceiverServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._reply(411, {"error": "Content-Length required"})
            return
        if int(length) > MAX_BODY:
            self._reply(413, {"error": "body too large"})
            return
        body = self.rfile.read(int(length))
        receiver = self.server.receiver
        try:
            fresh = receiver.admit(self.headers, body)
        except Refused as exc:
            self._note(f"refused a request: {exc}")
            self._reply(401, {"error": str(exc)})
            return
        if not fresh:
            self._note("a batch already applied came again; answered, not applied twice")
            self._reply(200, {"rejected": []})
            return
        try:
            sync, operation, count = receiver.apply(json.loads(body))
        except (ValueError, UnicodeDecodeError) as exc:
            reason = str(exc) if isinstance(exc, PayloadError) else "body is not valid JSON"
            self._reply(400, {"error": reason})
            return
        if self.server.log is not None:
            size = receiver.counts().get(sync, 0)
            self._note(f"{sync}: {operation} {count} record(s), {size} member(s)")
        self._reply(200, {"rejected": []})

    def do_GET(self) -> None:
        """Member counts per sync (never the members themselves)."""
        self._reply(200, {"members": self.server.receiver.counts()})

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _note(self, message: str) -> None:
        if self.server.log is not None:
            self.server.log(message)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence http.server's access log: the demo output belongs to the CLI."""


def start_receiver(
    secret: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log: Callable[[str], None] | None = None,
) -> tuple[ReceiverServer, int]:
    """Serve in a daemon thread; returns the server (``.receiver``, ``.shutdown()``) and port."""
    server = ReceiverServer((host, port), DemoReceiver(secret), log)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name="demo-receiver",
        daemon=True,
    )
    thread.start()
    return server, server.port


def serve(port: int, secret: str | None = None, host: str = "127.0.0.1") -> None:
    """Run in the foreground until Ctrl-C, logging one count-only line per batch."""

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    server = ReceiverServer((host, port), DemoReceiver(secret), log)
    signed = "signature required" if secret else "no signature check"
    log(f"demo receiver listening on http://{host}:{server.port}/hook ({signed})")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
