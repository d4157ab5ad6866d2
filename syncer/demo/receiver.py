"""A tiny local webhook receiver that plays a destination for the ``webhook`` connector.

It keeps one member set per sync, so the demo can prove the destination ended up holding
exactly the warehouse segment. It verifies ``X-Syncer-Signature`` the way a real receiver
should, and never logs record keys or field values: they are email addresses.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OPERATIONS = ("add", "remove", "update")
MAX_BODY = 64 * 1024 * 1024


class PayloadError(ValueError):
    """A request body that is not a webhook batch (message names no record data)."""


class DemoReceiver:
    """Destination state shared by all request threads: members and fields per sync."""

    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret
        self._lock = threading.Lock()
        self._members: dict[str, dict[str, dict[str, Any]]] = {}
        self.requests: Counter[str] = Counter()
        self.unknown_updates: Counter[str] = Counter()
        """Updates for keys that were never added, per sync: a sign of an engine bug."""

    def verify(self, body: bytes, signature: str | None) -> bool:
        """True when no secret is set or ``signature`` is the HMAC-SHA256 of ``body``."""
        if self.secret is None:
            return True
        expected = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        return signature is not None and hmac.compare_digest(signature.strip(), expected)

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
        if not receiver.verify(body, self.headers.get("X-Syncer-Signature")):
            self._note("rejected a request with a missing or wrong signature")
            self._reply(401, {"error": "bad signature"})
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
