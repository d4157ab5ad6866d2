"""The Meta Custom Audiences connector as Meta sees it: payload shapes (schema, rows, hashes),
counts reported, hashed rows kept for removal, Meta's error envelope (throttling as HTTP 400,
token errors, audiences refusing edits), X-Business-Use-Case-Usage and check().

Meta publishes no OpenAPI document; shapes follow ../shared/reference/destinations.md §8.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import httpx
import pytest
import respx

from connectors.meta import MetaConfig, MetaConnector
from syncer.connector import Record, SyncContext
from syncer.errors import AuthError, BatchRejected, ConfigError, RateLimited, TransientError
from syncer.http import DestinationClient
from syncer.ratelimit import AccountLimiter
from syncer.testing import engine_client

BASE = "https://graph.facebook.com"
TOKEN = "EAAB-system-user-token-0123456789"
AUDIENCE = "23850000000000001"
USERS = f"/v24.0/{AUDIENCE}/users"
FIELDS = ("email", "phone", "first_name", "date_of_birth", "external_id")
CONTEXT = SyncContext("vip", "membership", FIELDS, run_id="r1")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def person(n: int, **fields: Any) -> Record:
    base = {"email": f"User{n}@Example.com ", "phone": None, "first_name": f"Ann{n}"}
    return Record(sha(f"key{n}"), {**base, **fields})


def make(http: httpx.Client, context: SyncContext = CONTEXT, **options: Any) -> MetaConnector:
    settings: dict[str, Any] = {"access_token": TOKEN, "audience_id": AUDIENCE, **options}
    connector = MetaConnector(MetaConfig(**settings), context, http)
    if isinstance(http, DestinationClient):  # what the engine wires up for every run
        http.classifier = connector.classify
        http.secrets = connector.secret_values()
    return connector


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(assert_all_called=False, base_url=BASE)


def payload(request: httpx.Request) -> dict[str, Any]:
    body = json.loads(request.content)
    assert set(body) == {"payload"}
    return dict(body["payload"])


def counts(request: httpx.Request) -> httpx.Response:
    rows = len(payload(request)["data"])
    body = {"audience_id": AUDIENCE, "session_id": "9", "num_received": rows}
    return httpx.Response(200, json={**body, "num_invalid_entries": 0, "invalid_entry_samples": {}})


def meta_error(code: int, subcode: int | None = None, status: int = 400, **extra: Any) -> Any:
    error: dict[str, Any] = {"message": "Invalid parameter", "type": "OAuthException", "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    error.update(extra, fbtrace_id="AbC")
    return httpx.Response(status, json={"error": error})


# -- add ---------------------------------------------------------------------------------------


def test_add_posts_one_multi_key_payload_with_hashed_rows(
    router: respx.Router, http: httpx.Client
) -> None:
    route = router.post(USERS).mock(side_effect=counts)
    connector = make(http, region="US")
    ada = Record(
        sha("ada"),
        {
            "email": "  Ada@Example.com ",
            "phone": "(650) 253-0000",
            "first_name": "Ada-Marie",
            "date_of_birth": "1997-02-16",
            "external_id": " CRM-1 ",
        },
    )
    result = connector.add([ada, person(2)])

    request = route.calls.last.request
    assert request.method == "POST"
    assert request.url.path == USERS
    assert request.url.params["access_token"] == TOKEN
    assert request.headers["Content-Type"] == "application/json"
    schema = ["EXTERN_ID", "EMAIL", "PHONE", "DOBY", "DOBM", "DOBD", "FN"]
    ada_row = [
        "CRM-1",  # EXTERN_ID unhashed
        sha("ada@example.com"),
        sha("16502530000"),  # digits with country code, no "+"
        sha("1997"),
        sha("02"),
        sha("16"),
        sha("adamarie"),
    ]
    second = ["", sha("user2@example.com"), "", "", "", "", sha("ann")]
    assert payload(request) == {"schema": schema, "data": [ada_row, second]}
    assert all(len(row) == len(schema) for row in payload(request)["data"])
    by_key = {o.key: o for o in result.outcomes()}
    assert {o.status for o in by_key.values()} == {"accepted"}
    kept = json.loads(by_key[sha("ada")].destination_id or "")
    assert kept == [dict(zip(schema, ada_row, strict=True))]
    assert "ada@example.com" not in (by_key[sha("ada")].destination_id or "")
    assert connector.stats == {"num_received": 2, "num_invalid_entries": 0}


def test_counts_from_meta_are_reported_and_summed(router: respx.Router, http: httpx.Client) -> None:
    router.post(USERS).respond(
        200, json={"num_received": 3, "num_invalid_entries": 1, "invalid_entry_samples": {}}
    )
    connector = make(http)
    connector.add([person(1), person(2), person(3)])
    connector.add([person(4)])
    assert connector.stats == {"num_received": 6, "num_invalid_entries": 2}


def test_prehashed_values_pass_through_and_are_never_hashed_twice(
    router: respx.Router, http: httpx.Client
) -> None:
    route = router.post(USERS).mock(side_effect=counts)
    digest = sha("jane@example.com")
    connector = make(http, prehashed=["email"])
    connector.add([Record("k1", {"email": digest.upper(), "first_name": "Jane"})])
    assert payload(route.calls.last.request)["data"] == [[digest, sha("jane")]]


def test_prehashed_column_refuses_a_clear_value_as_a_rejection(
    router: respx.Router, http: httpx.Client
) -> None:
    route = router.post(USERS).mock(side_effect=counts)
    connector = make(http, prehashed=["email"])
    result = connector.add([Record("k1", {"email": "jane@example.com"}), person(2, email=None)])
    by_key = {o.key: o for o in result.outcomes()}
    assert by_key["k1"].status == "rejected"
    assert (
        by_key["k1"].reason == "email: email is declared pre-hashed but is not a SHA-256 hex digest"
    )
    assert payload(route.calls.last.request)["data"] == [[sha("ann")]]


def test_invalid_values_are_rejected_locally_without_quoting_them(
    router: respx.Router, http: httpx.Client
) -> None:
    route = router.post(USERS).mock(side_effect=counts)
    connector = make(http)
    bad_email = Record("k1", {"email": "not-an-email", "first_name": "Ann"})
    bad_phone = Record("k2", {"email": "ok@example.com", "phone": "555"})
    nothing = Record("k3", {"email": "  ", "first_name": None})
    result = connector.add([bad_email, bad_phone, nothing, person(4)])
    reasons = {o.key: o.reason for o in result.outcomes() if o.status == "rejected"}
    assert reasons == {
        "k1": "email: not a valid email address",
        "k2": "phone: not a valid phone number",
        "k3": "no identifier to match on (every mapped identifier is empty)",
    }
    assert len(payload(route.calls.last.request)["data"]) == 1


def test_nothing_valid_sends_nothing(router: respx.Router, http: httpx.Client) -> None:
    route = router.post(USERS).mock(side_effect=counts)
    result = make(http).add([Record("k1", {"email": "bad"})])
    assert [o.status for o in result.outcomes()] == ["rejected"]
    assert not route.called


def test_open_refuses_fields_that_are_not_identifier_kinds() -> None:
    with httpx.Client() as client:
        connector = make(client, SyncContext("vip", "membership", ("email", "ltv")))
        with pytest.raises(ConfigError, match="field 'ltv' is not an identifier kind"):
            connector.open()
        make(client).open()


def test_dob_cannot_be_declared_prehashed() -> None:
    with pytest.raises(ValueError, match="date_of_birth cannot be pre-hashed"):
        MetaConfig.model_validate(
            {"access_token": TOKEN, "audience_id": AUDIENCE, **dict(prehashed=["date_of_birth"])}
        )


def test_settings_api_version_base_url_and_bearer_header(router: respx.Router) -> None:
    other = respx.Router(assert_all_called=False, base_url="https://proxy.example")
    route = other.post(f"/v25.0/{AUDIENCE}/users").mock(side_effect=counts)
    with httpx.Client(transport=httpx.MockTransport(other.handler)) as client:
        connector = make(
            client,
            base_url="https://proxy.example/",
            api_version="v25.0",
            token_in="header",
            app_secret="s3cret",
        )
        connector.add([person(1)])
    request = route.calls.last.request
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert "access_token" not in request.url.params

    proof = hmac.new(b"s3cret", TOKEN.encode(), hashlib.sha256).hexdigest()
    assert request.url.params["appsecret_proof"] == proof
    assert proof in connector.secret_values() and TOKEN in connector.secret_values()


# -- remove and update -------------------------------------------------------------------------


def test_remove_sends_the_kept_rows_without_raw_data(
    router: respx.Router, http: httpx.Client
) -> None:
    route = router.delete(USERS).mock(side_effect=counts)
    connector = make(http)
    first = json.dumps([{"EMAIL": sha("a@example.com"), "EXTERN_ID": "c-1"}])
    second = json.dumps([{"EMAIL": sha("b@example.com")}, {"PHONE": sha("16502530000")}])
    result = connector.remove([Record("k1", {}, first), Record("k2", {}, second)])

    request = route.calls.last.request
    assert request.method == "DELETE" and request.url.params["access_token"] == TOKEN
    assert payload(request) == {
        "schema": ["EXTERN_ID", "EMAIL", "PHONE"],
        "data": [
            ["c-1", sha("a@example.com"), ""],
            ["", sha("b@example.com"), ""],
            ["", "", sha("16502530000")],
        ],
    }
    assert {o.status for o in result.outcomes()} == {"accepted"}
    assert connector.stats["num_received"] == 3
    assert len(router.calls) == 1  # no lookup of any kind


def test_a_retried_removal_resends_only_the_calls_that_failed(
    router: respx.Router, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Members keep every row they were added with, so one removal batch can take several
    calls of 10,000 rows (2 here). A 503 on the second: the retry of the batch sends only
    the second again, and Meta's counts are reported once per call that landed."""
    monkeypatch.setattr("connectors.meta.MAX_ROWS", 2)
    answers = iter([counts, lambda request: httpx.Response(503), counts, counts])
    route = router.delete(USERS).mock(side_effect=lambda request: next(answers)(request))
    connector = make(http)
    kept = [
        Record(f"k{n}", {}, json.dumps([{"EMAIL": sha(f"{n}a@x.com")}, {"EMAIL": sha(f"{n}b")}]))
        for n in range(2)
    ]
    with pytest.raises(TransientError):
        connector.remove(kept)
    result = connector.remove(kept)  # what the engine does after a TransientError
    assert {o.status for o in result.outcomes()} == {"accepted"}
    sent = [payload(call.request)["data"] for call in route.calls]
    assert sent[0] != sent[1] and sent[1] == sent[2] and len(sent) == 3
    assert connector.stats["num_received"] == 4


def test_remove_without_kept_rows_is_rejected(router: respx.Router, http: httpx.Client) -> None:
    route = router.delete(USERS).mock(side_effect=counts)
    result = make(http).remove([Record("k1", {}, None)])
    assert [(o.status, o.reason) for o in result.outcomes()] == [
        ("rejected", "no hashed identifiers were kept for this member")
    ]
    assert not route.called


def test_update_adds_the_new_row_and_keeps_the_old_for_removal(
    router: respx.Router, http: httpx.Client
) -> None:
    route = router.post(USERS).mock(side_effect=counts)
    connector = make(http, SyncContext("vip", "mirror", ("email",)))
    old = json.dumps([{"EMAIL": sha("old@example.com")}])
    result = connector.update([Record("k1", {"email": "new@example.com"}, old)])
    assert payload(route.calls.last.request)["data"] == [[sha("new@example.com")]]
    kept = json.loads(result.outcomes()[0].destination_id or "")
    assert kept == [{"EMAIL": sha("old@example.com")}, {"EMAIL": sha("new@example.com")}]


def test_the_row_a_send_adds_is_kept_before_its_answer_arrives(
    router: respx.Router, http: httpx.Client
) -> None:
    """``expected_destination_id`` (stored by the engine before the request leaves): the kept
    rows plus the new one, so a member whose add or update was never confirmed can still be
    removed by every row it may be in the audience under."""
    route = router.delete(USERS).mock(side_effect=counts)
    connector = make(http, SyncContext("vip", "mirror", ("email",)))
    old = json.dumps([{"EMAIL": sha("old@example.com")}])
    moved = Record("k1", {"email": "new@example.com"}, old)
    expected = connector.expected_destination_id("update", moved)
    assert expected is not None
    assert json.loads(expected) == [
        {"EMAIL": sha("old@example.com")},
        {"EMAIL": sha("new@example.com")},
    ]
    new = connector.expected_destination_id("add", Record("k2", {"email": "b@example.com"}))
    assert new is not None and json.loads(new) == [{"EMAIL": sha("b@example.com")}]
    assert connector.expected_destination_id("add", Record("k3", {"email": "nope"})) is None

    connector.remove([Record("k1", {}, expected)])
    assert payload(route.calls.last.request)["data"] == [
        [sha("old@example.com")],
        [sha("new@example.com")],
    ]


@pytest.mark.parametrize(
    "error",
    [
        {"code": 100, "error_subcode": 1713230, "message": "Invalid parameter",
         "error_user_title": "Audience cannot be edited",
         "error_user_msg": "This audience's operation_status does not allow edits"},
        {"code": 2650, "error_subcode": 1870050, "message": "Invalid parameter",
         "error_user_title": "Audience Size too low",
         "error_user_msg": "You cannot remove users from this audience because it will "
         "result in a low audience size."},
    ],
)  # fmt: skip
def test_audience_refusing_removal_rejects_each_record_with_metas_reason(
    router: respx.Router, http: httpx.Client, error: dict[str, Any]
) -> None:
    router.delete(USERS).respond(400, json={"error": {**error, "type": "OAuthException"}})
    connector = make(http)
    rows = json.dumps([{"EMAIL": sha("a@example.com")}])
    result = connector.remove([Record("k1", {}, rows), Record("k2", {}, rows)])
    outcomes = result.outcomes()
    assert {o.status for o in outcomes} == {"rejected"}
    reason = outcomes[0].reason or ""
    assert reason.startswith("meta refused the change: ")
    assert error["error_user_title"] in reason and str(error["error_subcode"]) in reason
    assert TOKEN not in reason


def test_configured_refusal_subcodes(router: respx.Router, http: httpx.Client) -> None:
    router.post(USERS).mock(return_value=meta_error(100, 4242))
    connector = make(http, refusal_subcodes=[4242])
    assert {o.status for o in connector.add([person(1)]).outcomes()} == {"rejected"}


def test_other_invalid_parameter_refuses_the_batch(
    router: respx.Router, http: httpx.Client
) -> None:
    router.post(USERS).mock(
        return_value=meta_error(100, message="(#100) Data is missing or does not match schema")
    )
    with pytest.raises(BatchRejected, match="does not match schema") as caught:
        make(http).add([person(1)])
    assert "user1@example.com" not in str(caught.value).lower()


def test_unknown_audience_on_write_is_a_config_error(
    router: respx.Router, http: httpx.Client
) -> None:
    router.post(USERS).mock(return_value=meta_error(803, status=404))
    with pytest.raises(ConfigError, match="audience_id"):
        make(http).add([person(1)])


# -- errors and rate limits ---------------------------------------------------------------------


@pytest.mark.parametrize("code", [4, 17, 32, 613, 80003])
def test_throttling_as_http_400_is_rate_limiting(
    router: respx.Router, http: httpx.Client, code: int
) -> None:
    router.post(USERS).mock(return_value=meta_error(code, 2446079))
    with pytest.raises(RateLimited):
        make(http).add([person(1)])


@pytest.mark.parametrize(("status", "code"), [(400, 190), (401, 190), (400, 200), (403, 10)])
def test_token_errors_are_auth_errors(
    router: respx.Router, http: httpx.Client, status: int, code: int
) -> None:
    router.post(USERS).mock(return_value=meta_error(code, 463, status=status))
    with pytest.raises(AuthError) as caught:
        make(http).add([person(1)])
    assert TOKEN not in str(caught.value)


def test_transient_meta_errors_are_retried(router: respx.Router, http: httpx.Client) -> None:
    router.post(USERS).mock(return_value=meta_error(2, is_transient=True, status=400))
    with pytest.raises(TransientError) as caught:
        make(http).add([person(1)])
    assert not isinstance(caught.value, RateLimited)


def _limited(router: respx.Router) -> tuple[AccountLimiter, list[float]]:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    return AccountLimiter([], 4, clock=lambda: now[0], sleep=sleep), slept


def usage(minutes: int, percent: int = 20) -> dict[str, str]:
    entry = {
        "type": "custom_audience",
        "call_count": percent,
        "total_cputime": 5,
        "total_time": 5,
        "estimated_time_to_regain_access": minutes,
    }
    return {"X-Business-Use-Case-Usage": json.dumps({"1234567890": [entry]})}


def test_buc_estimate_on_a_throttle_holds_the_account(router: respx.Router) -> None:
    limiter, slept = _limited(router)
    router.post(USERS).mock(
        side_effect=[
            httpx.Response(400, json={"error": {"code": 80003, "message": "throttled"}},
                           headers=usage(2, 100)),
            httpx.Response(200, json={"num_received": 1, "num_invalid_entries": 0}),
        ]
    )  # fmt: skip
    with engine_client(router, limiter=limiter) as client:
        connector = make(client)
        with pytest.raises(RateLimited):
            connector.add([person(1)])
        connector.add([person(1)])
    assert sum(slept) == pytest.approx(120.0)


def test_buc_usage_on_success_slows_down_only_when_spent(router: respx.Router) -> None:
    limiter, slept = _limited(router)
    router.post(USERS).mock(
        side_effect=[
            httpx.Response(200, json={"num_received": 1}, headers=usage(0, 40)),
            httpx.Response(200, json={"num_received": 1}, headers=usage(0, 100)),
            httpx.Response(200, json={"num_received": 1}, headers=usage(0, 10)),
        ]
    )
    with engine_client(router, limiter=limiter) as client:
        connector = make(client)
        connector.add([person(1)])
        assert limiter.cooldowns == 0
        connector.add([person(2)])
        assert limiter.cooldowns == 1
        connector.add([person(3)])
    assert sum(slept) == pytest.approx(60.0)


def test_real_429_is_rate_limited_with_retry_after(
    router: respx.Router, http: httpx.Client
) -> None:
    router.post(USERS).respond(429, headers={"Retry-After": "3"})
    with pytest.raises(RateLimited) as caught:
        make(http).add([person(1)])
    assert caught.value.retry_after == 3


def test_limits_and_capabilities() -> None:
    caps = MetaConnector.capabilities
    assert caps.hashed_keys and caps.max_batch_size == 10_000
    assert caps.modes == {"membership", "mirror"}
    with httpx.Client() as client:
        assert make(client).batch_size == 10_000
        assert make(client, batch_size=500).batch_size == 500
    with pytest.raises(ValueError):
        MetaConfig.model_validate(
            {"access_token": TOKEN, "audience_id": AUDIENCE, **dict(batch_size=10_001)}
        )


# -- check() -----------------------------------------------------------------------------------


def test_check_reads_the_audience(router: respx.Router, http: httpx.Client) -> None:
    route = router.get(f"/v24.0/{AUDIENCE}").respond(
        200, json={"id": AUDIENCE, "name": "VIP", "operation_status": {"code": 200}}
    )
    make(http).check()
    assert route.calls.last.request.url.params["access_token"] == TOKEN


@pytest.mark.parametrize(
    ("reply", "error", "message"),
    [
        (meta_error(190, 463, message="Error validating access token"), AuthError, "credentials"),
        (
            meta_error(100, 33, message="Unsupported get request. Object does not exist"),
            ConfigError,
            f"audience_id: no custom audience {AUDIENCE}",
        ),
        (httpx.ConnectError("refused"), TransientError, "graph.facebook.com"),
    ],
)
def test_check_tells_token_audience_and_network_apart(
    router: respx.Router, http: httpx.Client, reply: Any, error: type[Exception], message: str
) -> None:
    router.get(f"/v24.0/{AUDIENCE}").mock(side_effect=[reply])
    with pytest.raises(error, match=message) as caught:
        make(http).check()
    assert TOKEN not in str(caught.value)
    if error is ConfigError:
        assert not isinstance(caught.value, AuthError)


# -- cost --------------------------------------------------------------------------------------


def test_requests_per_10000_members_added_and_removed(router: respx.Router) -> None:
    """10,000 members with the default batch size (10,000): one call to add, one to remove."""
    add = router.post(USERS).mock(side_effect=counts)
    remove = router.delete(USERS).mock(side_effect=counts)
    records = [person(n, phone=f"+1650253{n:04d}") for n in range(10_000)]
    with engine_client(router) as client:
        connector = make(client)
        kept: list[Record] = []
        for start in range(0, len(records), connector.batch_size):
            for outcome in connector.add(records[start : start + connector.batch_size]).outcomes():
                assert outcome.status == "accepted", outcome.reason
                kept.append(Record(outcome.key, {}, outcome.destination_id))
        for start in range(0, len(kept), connector.batch_size):
            connector.remove(kept[start : start + connector.batch_size])
    assert (add.call_count, remove.call_count) == (1, 1)
    assert len(payload(add.calls.last.request)["data"]) == 10_000
    assert payload(remove.calls.last.request) == payload(add.calls.last.request)
    assert connector.stats["num_received"] == 20_000
