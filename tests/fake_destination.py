"""A real HTTP server on 127.0.0.1 that plays a webhook destination and keeps its own members.

Tests point the real `webhook` connector (through the real CLI) at it, then compare what the
server holds with the segment.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class DestinationState:
    secret: str | None = None
    members: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    reject_keys: dict[str, str] = field(default_factory=dict)
    fail_with: list[int] = field(default_factory=list)  # statuses for the next requests
    lock: threading.Lock = field(default_factory=threading.Lock)

    def records_sent(self, operation: str | None = None) -> int:
        return sum(len(r["records"]) for r in self.requests if operation in (None, r["operation"]))


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        state = self.server.state
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if state.secret is not None:
            expected = "sha256=" + hmac.new(state.secret.encode(), body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(expected, self.headers.get("X-Syncer-Signature", "")):
                self._reply(401, {"error": "bad signature"})
                return
        with state.lock:
            if state.fail_with:
                self._reply(state.fail_with.pop(0), {"error": "injected"})
                return
            doc = json.loads(body)
            state.requests.append(
                {
                    "operation": doc["operation"],
                    "records": doc["records"],
                    "idempotency_key": self.headers.get("Idempotency-Key"),
                }
            )
            rejected = []
            for record in doc["records"]:
                key = record["key"]
                if key in state.reject_keys:
                    rejected.append({"key": key, "reason": state.reject_keys[key]})
                elif doc["operation"] == "remove":
                    state.members.pop(key, None)
                else:
                    state.members[key] = record["fields"]
        self._reply(200, {"rejected": rejected})

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: DestinationState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


@contextmanager
def fake_destination(secret: str | None = None) -> Iterator[tuple[str, DestinationState]]:
    """Yield (url, state) of a running destination; stopped on exit."""
    state = DestinationState(secret=secret)
    server = _Server(state)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", state
    finally:
        server.shutdown()
        server.server_close()
