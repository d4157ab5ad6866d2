"""The webhook connector as a receiving endpoint sees it: body, signature, errors."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import respx
from pydantic import ValidationError

from connectors.webhook import WebhookConnector
from syncer.connector import Record, SyncContext
from syncer.errors import (
    AuthError,
    BatchRejected,
    ConfigError,
    RateLimited,
    SyncerError,
    TransientError,
)
from syncer.http import make_client

URL = "https://hooks.example.com/syncer"
SECRET = "s3cr3t-hmac-key"
TOKEN = "Bearer tok-123456"
CONTEXT = SyncContext(
    sync_name="vip", mode="membership", field_names=("email", "first_name"), run_id="r1"
)
ADA = Record("ada@example.com", {"email": "ada@example.com", "first_name": "Ada"})
BOB = Record("bob@example.com", {"email": "bob@example.com", "first_name": "Bob"})


def make(http: httpx.Client, **options: Any) -> WebhookConnector:
    settings: dict[str, Any] = {"url": URL, "secret": SECRET, "headers": {"Authorization": TOKEN}}
    settings.update(options)
    return WebhookConnector(WebhookConnector.config_model(**settings), CONTEXT, http)


def sent(router: respx.Router, index: int = -1) -> httpx.Request:
    return router.calls[index].request


# -- request shape -------------------------------------------------------------------------


def test_batch_body_headers_and_signature(router: respx.Router, http: httpx.Client) -> None:
    router.post(URL).respond(200)
    make(http).add([ADA, BOB])

    request = sent(router)
    body = json.loads(request.content)
    assert body == {
        "sync": "vip",
        "operation": "add",
        "records": [
            {"key": ADA.key, "fields": dict(ADA.fields)},
            {"key": BOB.key, "fields": dict(BOB.fields)},
        ],
    }
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Authorization"] == TOKEN
    expected = hmac.new(SECRET.encode(), request.content, hashlib.sha256).hexdigest()
    assert request.headers["X-Syncer-Signature"] == f"sha256={expected}"


@pytest.mark.parametrize("operation", ["add", "remove", "update"])
def test_each_operation_is_named_in_the_body(
    router: respx.Router, http: httpx.Client, operation: str
) -> None:
    router.post(URL).respond(204)
    result = getattr(make(http), operation)([ADA])
    assert json.loads(sent(router).content)["operation"] == operation
    assert [o.status for o in result.outcomes()] == ["accepted"]


def test_no_signature_header_without_secret(router: respx.Router, http: httpx.Client) -> None:
    router.post(URL).respond(200)
    make(http, secret=None).add([ADA])
    assert "X-Syncer-Signature" not in sent(router).headers


def test_idempotency_key_is_stable_per_batch_content(
    router: respx.Router, http: httpx.Client
) -> None:
    router.post(URL).respond(200)
    make(http).add([ADA, BOB])
    # A fresh connector (as after a crash and a new run) re-sending the same batch.
    other_run = SyncContext("vip", "membership", ("email", "first_name"), run_id="r2")
    again = WebhookConnector(make(http).config, other_run, http)
    again.add([ADA, BOB])
    make(http).remove([ADA, BOB])
    make(http).add([ADA])

    keys = [call.request.headers["Idempotency-Key"] for call in router.calls]
    assert keys[0] == keys[1]
    assert len({keys[0], keys[2], keys[3]}) == 3


def test_field_order_does_not_change_the_idempotency_key(
    router: respx.Router, http: httpx.Client
) -> None:
    router.post(URL).respond(200)
    make(http).add([Record("k", {"a": 1, "b": 2})])
    make(http).add([Record("k", {"b": 2, "a": 1})])
    assert sent(router, 0).headers["Idempotency-Key"] == sent(router, 1).headers["Idempotency-Key"]


# -- responses ------------------------------------------------------------------------------


def test_per_record_rejections_are_reported(router: respx.Router, http: httpx.Client) -> None:
    router.post(URL).respond(
        200,
        json={
            "rejected": [
                {"key": BOB.key, "reason": "mailbox does not exist"},
                {"key": "never-sent", "reason": "ignored"},
            ]
        },
    )
    outcomes = {o.key: o for o in make(http).add([ADA, BOB]).outcomes()}
    assert outcomes[ADA.key].status == "accepted"
    assert outcomes[BOB.key].status == "rejected"
    assert outcomes[BOB.key].reason == "mailbox does not exist"


@pytest.mark.parametrize("body", [b"", b"OK", b"[1, 2]", b'{"rejected": "all"}'])
def test_2xx_without_rejection_list_accepts_everything(
    router: respx.Router, http: httpx.Client, body: bytes
) -> None:
    router.post(URL).respond(200, content=body)
    assert {o.status for o in make(http).add([ADA, BOB]).outcomes()} == {"accepted"}


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_raise_auth_error(
    router: respx.Router, http: httpx.Client, status: int
) -> None:
    router.post(URL).respond(status, text=f"bad token {TOKEN}")
    with pytest.raises(AuthError, match=rf"hooks\.example\.com .*HTTP {status}") as caught:
        make(http).add([ADA])
    assert "tok-123456" not in str(caught.value)


@pytest.mark.parametrize("status", [408, 500, 502, 503])
def test_server_errors_are_transient(router: respx.Router, http: httpx.Client, status: int) -> None:
    router.post(URL).respond(status)
    with pytest.raises(TransientError, match=str(status)):
        make(http).add([ADA])


def test_rate_limit_passes_retry_after(router: respx.Router, http: httpx.Client) -> None:
    router.post(URL).respond(429, headers={"Retry-After": "17"})
    with pytest.raises(RateLimited) as caught:
        make(http).add([ADA])
    assert caught.value.retry_after == 17


@pytest.mark.parametrize(
    "error", [httpx.ReadTimeout("read timed out"), httpx.ConnectError("connection refused")]
)
def test_network_failures_are_transient(
    router: respx.Router, http: httpx.Client, error: Exception
) -> None:
    router.post(URL).mock(side_effect=error)
    with pytest.raises(TransientError, match=r"hooks\.example\.com"):
        make(http).add([ADA])


def test_bad_request_rejects_the_batch(router: respx.Router, http: httpx.Client) -> None:
    router.post(URL).respond(400, text="invalid payload: " + "x" * 1000)
    with pytest.raises(BatchRejected, match="HTTP 400") as caught:
        make(http).add([ADA])
    assert "invalid payload" in str(caught.value)
    assert len(str(caught.value)) < 300


def test_redirect_is_not_followed(router: respx.Router, http: httpx.Client) -> None:
    router.post(URL).respond(301, headers={"Location": "https://elsewhere.example.com/"})
    with pytest.raises(ConfigError, match="redirect"):
        make(http).add([ADA])
    assert len(router.calls) == 1


# -- secrets stay out of messages ---------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 422, 500])
@pytest.mark.parametrize("headers_first", [True, False])
def test_messages_never_contain_secrets_or_record_data(
    router: respx.Router, http: httpx.Client, status: int, headers_first: bool
) -> None:
    # A server echoing back everything it was sent, credentials included.
    def echo(request: httpx.Request) -> httpx.Response:
        parts = [" ".join(request.headers.values()), request.content.decode()]
        return httpx.Response(status, text=" ".join(parts if headers_first else parts[::-1]))

    router.post(host="hooks.example.com").mock(side_effect=echo)
    url = "https://user:pw-in-url@hooks.example.com/syncer?token=query-secret"
    with pytest.raises(SyncerError) as caught:
        make(http, url=url).add([ADA])
    message = str(caught.value)
    leaks = (SECRET, TOKEN, "tok-123456", "pw-in-url", "query-secret", ADA.key, "Ada", "@")
    assert [leak for leak in leaks if leak in message] == []
    assert "hooks.example.com" in message
    assert "/syncer" not in message  # paths can carry tokens too (think Slack hook URLs)


def test_invalid_url_is_a_config_error_without_echoing_it() -> None:
    with pytest.raises(ValidationError) as caught:
        WebhookConnector.config_model(url="ftp://user:hunter2@example.com/")
    assert "http" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_check_without_check_url_makes_no_request(router: respx.Router, http: httpx.Client) -> None:
    make(http).check()
    assert not router.calls


def test_check_url_is_probed(router: respx.Router, http: httpx.Client) -> None:
    router.get("https://hooks.example.com/health").respond(200)
    make(http, check_url="https://hooks.example.com/health").check()
    assert sent(router).headers["Authorization"] == TOKEN

    router.get("https://hooks.example.com/health").respond(401)
    with pytest.raises(AuthError):
        make(http, check_url="https://hooks.example.com/health").check()

    router.get("https://hooks.example.com/health").respond(404)
    with pytest.raises(ConfigError, match=r"check failed.*HTTP 404"):
        make(http, check_url="https://hooks.example.com/health").check()


def test_default_batch_size() -> None:
    with httpx.Client() as client:
        assert make(client).batch_size == 500
        assert make(client, batch_size=2000).batch_size == 2000


# -- against a real HTTP server -----------------------------------------------------------


class MemberServer(ThreadingHTTPServer):
    """A receiver that verifies signatures and keeps the member set in memory."""

    members: dict[str, dict[str, Any]]
    seen_idempotency_keys: list[str]
    lock: threading.Lock


class MemberHandler(BaseHTTPRequestHandler):
    server: MemberServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(self.headers.get("X-Syncer-Signature", ""), expected):
            self._reply(401, {"error": "bad signature"})
            return
        batch = json.loads(body)
        rejected = []
        with self.server.lock:
            self.server.seen_idempotency_keys.append(self.headers["Idempotency-Key"])
            for record in batch["records"]:
                if "@" not in record["key"]:
                    rejected.append({"key": record["key"], "reason": "not an email"})
                elif batch["operation"] == "remove":
                    self.server.members.pop(record["key"], None)
                else:
                    self.server.members[record["key"]] = record["fields"]
        self._reply(200, {"rejected": rejected})

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[MemberServer]:
    srv = MemberServer(("127.0.0.1", 0), MemberHandler)
    srv.members, srv.seen_idempotency_keys, srv.lock = {}, [], threading.Lock()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


@pytest.mark.parametrize("engine_client", [True, False])
def test_sync_against_a_real_server(server: MemberServer, engine_client: bool) -> None:
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    carol = Record("carol@example.com", {"email": "carol@example.com", "first_name": "Carol"})
    with make_client(5.0) if engine_client else httpx.Client() as client:
        webhook = WebhookConnector(
            WebhookConnector.config_model(url=url, secret=SECRET), CONTEXT, client
        )
        webhook.open()
        webhook.add([ADA, BOB, carol])
        webhook.remove([Record(BOB.key)])
        webhook.update([Record(ADA.key, {"email": ADA.key, "first_name": "Augusta"})])
        result = webhook.add([Record("not-an-email", {})])
        webhook.close(True)

        assert server.members == {
            ADA.key: {"email": ADA.key, "first_name": "Augusta"},
            carol.key: dict(carol.fields),
        }
        assert [(o.key, o.status, o.reason) for o in result.outcomes()] == [
            ("not-an-email", "rejected", "not an email")
        ]

        wrong = WebhookConnector(
            WebhookConnector.config_model(url=url, secret="wrong-secret"), CONTEXT, client
        )
        with pytest.raises(AuthError, match="HTTP 401"):
            wrong.add([ADA])
    assert len(set(server.seen_idempotency_keys)) == 4


@pytest.mark.parametrize(("option", "expected"), [({}, 2.5), ({"timeout": 0.5}, 0.5)])
def test_timeout_is_the_engine_setting_unless_the_mapping_sets_one(
    router: respx.Router, option: dict[str, Any], expected: float
) -> None:
    route = router.post(URL).respond(200, json={"rejected": []})
    with make_client(timeout=2.5, transport=httpx.MockTransport(router.handler)) as client:
        make(client, **option).add([Record("a@example.com", {"n": 1})])
    assert route.calls.last.request.extensions["timeout"]["read"] == expected
