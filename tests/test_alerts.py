"""Alerts against a real local webhook: once when a sync starts failing, once when it recovers."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from syncer.alerts import Alerter, judge
from syncer.state import state_engine

OK = {"added": 10, "updated": 2, "removed": 0, "rejected": 0, "invalid": 0, "failed": 0}
BAD = {"added": 1, "updated": 0, "removed": 0, "rejected": 9, "invalid": 0, "failed": 0}


class Receiver:
    """A Slack-like incoming webhook: records JSON posts; can be told to answer 500."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.status == 200:
                    receiver.posts.append(json.loads(body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T0/B0/s3cr3t"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def alerter(tmp_path: Path, url: str | None, threshold: float = 0.1) -> Alerter:
    engine = state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    return Alerter(lambda: engine, url, threshold)


def test_fires_once_per_incident_and_once_on_recovery(tmp_path: Path, receiver: Receiver) -> None:
    a = alerter(tmp_path, receiver.url)
    assert a.observe("vip", "succeeded", OK, "run0") is None  # healthy from the start: quiet
    assert a.observe("vip", "failed", {}, "run1") == "failing"
    assert a.observe("vip", "failed", {}, "run2") is None  # still failing: no second message
    assert a.observe("vip", "blocked", {}, "run3") is None
    assert a.observe("vip", "locked", {}, None) is None  # did not run: no news
    assert a.observe("vip", "succeeded", OK, "run4") == "recovered"
    assert a.observe("vip", "succeeded", OK, "run5") is None
    texts = [p["text"] for p in receiver.posts]
    assert len(texts) == 2
    assert "`vip` is failing" in texts[0] and "run1" in texts[0]
    assert "`vip` recovered" in texts[1] and "run4" in texts[1] and "added 10" in texts[1]


def test_too_many_rejections_alert_and_guard_blocks_alert(
    tmp_path: Path, receiver: Receiver
) -> None:
    a = alerter(tmp_path, receiver.url, threshold=0.5)
    assert a.observe("vip", "partial", BAD, "run1") == "failing"  # 90% rejected
    assert "90% of its records" in receiver.posts[0]["text"]
    assert "rejected 9" in receiver.posts[0]["text"]
    assert a.observe("other", "blocked", {}, "run2") == "failing"
    assert "blocked by a guard" in receiver.posts[1]["text"]
    few = {"added": 9, "rejected": 1}
    assert judge("partial", few, 0.5).failing is False  # 10% is under the threshold


def test_replicas_sharing_the_state_database_alert_once(tmp_path: Path, receiver: Receiver) -> None:
    replicas = [alerter(tmp_path, receiver.url) for _ in range(3)]
    sent = [r.observe("vip", "failed", {}, f"run{i}") for i, r in enumerate(replicas)]
    assert sent.count("failing") == 1
    sent = [r.observe("vip", "succeeded", OK, f"ok{i}") for i, r in enumerate(replicas)]
    assert sent.count("recovered") == 1
    assert len(receiver.posts) == 2


def test_an_unreachable_webhook_is_retried_at_the_next_failing_run(
    tmp_path: Path, receiver: Receiver
) -> None:
    a = alerter(tmp_path, receiver.url)
    receiver.status = 500
    assert a.observe("vip", "failed", {}, "run1") is None
    receiver.status = 200
    assert a.observe("vip", "failed", {}, "run2") == "failing"
    assert len(receiver.posts) == 1 and "run2" in receiver.posts[0]["text"]


def test_alert_text_carries_no_url_or_record_data(tmp_path: Path, receiver: Receiver) -> None:
    a = alerter(tmp_path, receiver.url)
    a.observe("vip", "failed", {"failed": 3}, "run1")
    (post,) = receiver.posts
    assert set(post) == {"text"}  # Slack-compatible: {"text": ...}
    assert "s3cr3t" not in post["text"] and "127.0.0.1" not in post["text"]
    assert "syncer run show run1" in post["text"]


def test_without_a_webhook_nothing_is_recorded(tmp_path: Path) -> None:
    a = alerter(tmp_path, None)
    assert a.observe("vip", "failed", {}, "run1") is None
