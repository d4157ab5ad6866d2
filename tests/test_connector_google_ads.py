"""The Google Ads Customer Match connector as Google sees it: job create, addOperations bodies
(hashes computed here with hashlib, independently of the connector), partial failures placed
on their record, run and poll, CONCURRENT_MODIFICATION and 429 retryDelay handling, check().

Google publishes no OpenAPI document for the Ads REST API (only protos), so shapes are
asserted field by field against the reference (section 9) instead of a contract spec."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx
import pytest
import respx

from connectors.google_ads import GoogleAdsConfig, GoogleAdsConnector
from syncer.connector import JobStatus, Outcome, Record, SyncContext
from syncer.errors import AuthError, BatchRejected, ConfigError, RateLimited, TransientError
from syncer.http import DestinationClient
from syncer.ratelimit import AccountLimiter
from syncer.testing import engine_client

BASE = "https://googleads.googleapis.com"
TOKEN = "ya29.oauth-token-0123456789"
DEV = "devtoken-ABCDEFGHIJ0123"
CID = "1234567890"
LIST = "456"
JOB = f"customers/{CID}/offlineUserDataJobs/789"
V = "/v22"
FIELDS = ("email", "phone", "first_name", "last_name", "country", "postcode")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def context(fields: tuple[str, ...] = FIELDS, mode: str = "membership") -> SyncContext:
    return SyncContext("vip", mode, tuple(sorted(fields)), run_id="r1")


def make(
    http: httpx.Client, *, ctx: SyncContext | None = None, **options: Any
) -> GoogleAdsConnector:
    settings: dict[str, Any] = {
        "access_token": TOKEN,
        "developer_token": DEV,
        "customer_id": "123-456-7890",
        "user_list_id": LIST,
        **options,
    }
    connector = GoogleAdsConnector(GoogleAdsConfig(**settings), ctx or context(), http)
    if isinstance(http, DestinationClient):  # what the engine wires up for every run
        http.classifier = connector.classify
        http.secrets = connector.secret_values()
    connector.open()
    return connector


def member(n: int, **fields: Any) -> Record:
    # The engine hands hashed keys (hashed_keys=True): the key is never an identifier.
    return Record(sha(f"key{n}"), {"email": f"Person{n}@Example.com", **fields})


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(assert_all_called=False, base_url=BASE)


def body(request: httpx.Request) -> Any:
    return json.loads(request.content)


def job_routes(router: respx.Router, add: Any = None) -> tuple[respx.Route, respx.Route]:
    create = router.post(f"{V}/customers/{CID}/offlineUserDataJobs:create").respond(
        200, json={"resourceName": JOB}
    )
    ops = router.post(f"{V}/{JOB}:addOperations")
    if add is None:
        ops.respond(200, json={})
    else:
        ops.mock(side_effect=add)
    return create, ops


def partial_failure(*errors: tuple[int, dict[str, str], str]) -> dict[str, Any]:
    return {
        "partialFailureError": {
            "code": 3,
            "message": "Multiple errors in 'details'. First error: ...",
            "details": [
                {
                    "@type": "type.googleapis.com/google.ads.googleads.v22.errors.GoogleAdsFailure",
                    "errors": [
                        {
                            "errorCode": code,
                            "message": message,
                            "location": {
                                "fieldPathElements": [
                                    {"fieldName": "operations", "index": index},
                                    {"fieldName": "create"},
                                ]
                            },
                        }
                        for index, code, message in errors
                    ],
                }
            ],
        }
    }


def google_error(status: int, grpc: str, code: dict[str, str], **extra: Any) -> httpx.Response:
    error = {"errorCode": code, "message": "error", **extra}
    failure = {
        "@type": "type.googleapis.com/google.ads.googleads.v22.errors.GoogleAdsFailure",
        "errors": [error],
        "requestId": "req-1",
    }
    return httpx.Response(
        status,
        json={"error": {"code": status, "message": "m", "status": grpc, "details": [failure]}},
    )


# -- add: job lifecycle and request shapes ----------------------------------------------


def test_first_batch_creates_the_job_and_adds_hashed_operations(
    router: respx.Router, http: httpx.Client
) -> None:
    create, ops = job_routes(router)
    connector = make(
        http,
        login_customer_id="999-000-1111",
        ad_user_data="GRANTED",
        ad_personalization="DENIED",
        region="US",
    )
    full = Record(
        sha("k1"),
        {
            "email": " Jane.Doe@Gmail.com ",
            "phone": "(650) 253-0000",
            "first_name": " Jane ",
            "last_name": "DOE",
            "country": "us",
            "postcode": "94045",
        },
    )
    only_email = member(2)
    outcomes = connector.add([full, only_email]).outcomes()

    assert create.call_count == 1
    request = create.calls[0].request
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["developer-token"] == DEV
    assert request.headers["login-customer-id"] == "9990001111"
    assert body(request) == {
        "job": {
            "type": "CUSTOMER_MATCH_USER_LIST",
            "customerMatchUserListMetadata": {
                "userList": f"customers/{CID}/userLists/{LIST}",
                "consent": {"adUserData": "GRANTED", "adPersonalization": "DENIED"},
            },
        }
    }
    sent = body(ops.calls[0].request)
    assert sent["enablePartialFailure"] is True
    first = [
        {"hashedEmail": sha("jane.doe@gmail.com")},  # gmail dots kept by default
        {"hashedPhoneNumber": sha("+16502530000")},  # E.164 with the +
        {
            "addressInfo": {
                "hashedFirstName": sha("jane"),
                "hashedLastName": sha("doe"),
                "countryCode": "US",  # in clear
                "postalCode": "94045",  # in clear
            }
        },
    ]
    assert sent["operations"] == [
        {"create": {"userIdentifiers": first}},
        {"create": {"userIdentifiers": [{"hashedEmail": sha("person2@example.com")}]}},
    ]
    assert [o.status for o in outcomes] == ["pending", "pending"]
    assert {o.job for o in outcomes} == {JOB}
    # What removal needs, and nothing raw: the identifiers exactly as sent.
    assert json.loads(outcomes[0].destination_id or "") == first
    assert "jane" not in (outcomes[0].destination_id or "").lower()
    assert connector.stats == {"operations_sent": 2, "operations_failed": 0}

    connector.add([member(3)])
    assert create.call_count == 1  # one job per run
    assert ops.call_count == 2


def test_no_consent_configured_sends_none(router: respx.Router, http: httpx.Client) -> None:
    create, _ = job_routes(router)
    make(http).add([member(1)])
    metadata = body(create.calls[0].request)["job"]["customerMatchUserListMetadata"]
    assert metadata == {"userList": f"customers/{CID}/userLists/{LIST}"}
    assert "login-customer-id" not in create.calls[0].request.headers


def test_api_version_and_base_url_are_settings(router: respx.Router) -> None:
    other = respx.Router(base_url="https://proxy.example.test")
    other.post(f"/v23/customers/{CID}/offlineUserDataJobs:create").respond(
        200, json={"resourceName": JOB}
    )
    added = other.post(f"/v23/{JOB}:addOperations").respond(200, json={})
    with engine_client(other) as client:
        make(client, api_version="v23", base_url="https://proxy.example.test/").add([member(1)])
    assert added.call_count == 1


def test_gmail_dots_setting_and_prehashed_values(router: respx.Router, http: httpx.Client) -> None:
    _, ops = job_routes(router)
    digest = sha("someone@example.com").upper()
    connector = make(http, gmail_dots=True, prehashed=["phone"])
    outcomes = connector.add(
        [
            Record("a" * 64, {"email": "J.A.N.E@googlemail.com"}),
            Record("b" * 64, {"email": digest}),  # already hashed: passed through once
            Record("c" * 64, {"email": "x@example.com", "phone": "+16502530000"}),
        ]
    ).outcomes()
    sent = body(ops.calls[0].request)["operations"]
    assert sent[0]["create"]["userIdentifiers"] == [{"hashedEmail": sha("jane@googlemail.com")}]
    assert sent[1]["create"]["userIdentifiers"] == [{"hashedEmail": digest.lower()}]
    assert len(sent) == 2
    # A column declared pre-hashed that holds a raw phone is refused, never hashed or sent.
    assert outcomes[2].status == "rejected"
    assert "pre-hashed" in (outcomes[2].reason or "")
    assert "6502530000" not in (outcomes[2].reason or "")


def test_invalid_values_are_rejected_without_quoting_them(
    router: respx.Router, http: httpx.Client
) -> None:
    _, ops = job_routes(router)
    bad_phone = Record("d" * 64, {"email": "ok@example.com", "phone": "555"})
    no_ident = Record("e" * 64, {"email": None, "first_name": "Ann"})  # partial address
    outcomes = make(http).add([bad_phone, no_ident, member(3)]).outcomes()
    assert [o.status for o in outcomes] == ["rejected", "rejected", "pending"]
    assert (outcomes[0].reason or "").startswith("phone:")
    assert "555" not in (outcomes[0].reason or "")
    assert "no usable identifier" in (outcomes[1].reason or "")
    assert len(body(ops.calls[0].request)["operations"]) == 1


def test_batch_of_only_invalid_records_creates_no_job(
    router: respx.Router, http: httpx.Client
) -> None:
    create, ops = job_routes(router)
    connector = make(http)
    outcomes = connector.add([Record("f" * 64, {"email": "not-an-email"})]).outcomes()
    assert outcomes[0].status == "rejected"
    assert create.call_count == ops.call_count == 0
    connector.close(True)
    assert len(router.calls) == 0  # nothing to run


# -- partial failures -------------------------------------------------------------------


def test_partial_failure_rejects_the_operation_it_names(
    router: respx.Router, http: httpx.Client
) -> None:
    reply = partial_failure(
        (1, {"userDataError": "TOO_MANY_USER_IDENTIFIERS"}, "Too many identifiers."),
        (1, {"offlineUserDataJobError": "INVALID_SHA256_FORMAT"}, "person2@example.com bad"),
    )
    job_routes(router, add=lambda request: httpx.Response(200, json=reply))
    connector = make(http)
    outcomes = connector.add([member(1), member(2), member(3)]).outcomes()
    assert [o.status for o in outcomes] == ["pending", "rejected", "pending"]
    reason = outcomes[1].reason or ""
    assert reason.startswith("userDataError.TOO_MANY_USER_IDENTIFIERS: Too many identifiers.")
    assert "offlineUserDataJobError.INVALID_SHA256_FORMAT" in reason
    assert "person2" not in reason.lower()  # raw emails never reach the audit log
    assert outcomes[1].destination_id is None
    assert connector.stats == {"operations_sent": 3, "operations_failed": 1}


def test_unplaceable_partial_failure_lets_the_engine_split(
    router: respx.Router, http: httpx.Client
) -> None:
    reply = partial_failure((0, {"userDataError": "X"}, "m"))
    del reply["partialFailureError"]["details"][0]["errors"][0]["location"]
    job_routes(router, add=lambda request: httpx.Response(200, json=reply))
    with pytest.raises(BatchRejected, match="partial failure"):
        make(http).add([member(1), member(2)])


def test_whole_request_refused_is_batch_rejected(router: respx.Router, http: httpx.Client) -> None:
    error = google_error(400, "INVALID_ARGUMENT", {"requestError": "INVALID_INPUT"})
    job_routes(router, add=lambda request: error)
    with pytest.raises(BatchRejected, match="HTTP 400"):
        make(http).add([member(1)])


def test_job_create_refused_names_the_user_list(router: respx.Router, http: httpx.Client) -> None:
    router.post(f"{V}/customers/{CID}/offlineUserDataJobs:create").mock(
        return_value=google_error(400, "INVALID_ARGUMENT", {"userListError": "USER_LIST_NOT_FOUND"})
    )
    with pytest.raises(ConfigError, match="user_list_id"):
        make(http).add([member(1)])


# -- remove and update ------------------------------------------------------------------


def test_remove_sends_the_kept_identifiers_and_searches_nothing(
    router: respx.Router, http: httpx.Client
) -> None:
    _, ops = job_routes(router)
    kept = json.dumps([{"hashedEmail": sha("gone@example.com")}], separators=(",", ":"))
    outcomes = make(http).remove([Record("a" * 64, {}, kept), Record("b" * 64, {})]).outcomes()
    assert body(ops.calls[0].request)["operations"] == [
        {"remove": {"userIdentifiers": [{"hashedEmail": sha("gone@example.com")}]}}
    ]
    assert outcomes[0] == Outcome("a" * 64, "pending", None, kept, JOB)
    assert outcomes[1].status == "rejected"
    assert "no stored identifiers" in (outcomes[1].reason or "")
    paths = [c.request.url.path for c in router.calls]
    assert not any("googleAds:search" in p for p in paths)


def test_update_removes_changed_identifiers_and_creates_the_new_set(
    router: respx.Router, http: httpx.Client
) -> None:
    _, ops = job_routes(router)
    connector = make(http, ctx=context(("email", "phone"), mode="mirror"), region="US")
    old = json.dumps(
        [{"hashedEmail": sha("a@example.com")}, {"hashedPhoneNumber": sha("+16502530000")}],
        separators=(",", ":"),
        sort_keys=True,
    )
    changed = Record("a" * 64, {"email": "a@example.com", "phone": "650 253 0001"}, old)
    unchanged = json.dumps([{"hashedEmail": sha("b@example.com")}], separators=(",", ":"))
    same = Record("b" * 64, {"email": "b@example.com"}, unchanged)
    outcomes = connector.update([changed, same]).outcomes()
    assert body(ops.calls[0].request)["operations"] == [
        {"remove": {"userIdentifiers": [{"hashedPhoneNumber": sha("+16502530000")}]}},
        {
            "create": {
                "userIdentifiers": [
                    {"hashedEmail": sha("a@example.com")},
                    {"hashedPhoneNumber": sha("+16502530001")},
                ]
            }
        },
    ]
    assert outcomes[0].status == "pending"
    assert outcomes[1] == Outcome("b" * 64, "accepted", None, unchanged)  # nothing to send


def test_an_unconfirmed_send_keeps_old_and_new_identifiers_for_removal(
    router: respx.Router, http: httpx.Client
) -> None:
    """``expected_destination_id`` (stored before the request leaves): an update that never
    lands in a job that runs leaves the member under its old identifiers or the new ones, so
    both are kept; a removal sends them all, and a re-add takes the old ones off first."""
    _, ops = job_routes(router)
    connector = make(http, ctx=context(("email",), mode="mirror"))
    old = json.dumps([{"hashedEmail": sha("old@example.com")}], separators=(",", ":"))
    moved = Record("a" * 64, {"email": "new@example.com"}, old)
    expected = connector.expected_destination_id("update", moved)
    both = [{"hashedEmail": sha("old@example.com")}, {"hashedEmail": sha("new@example.com")}]
    assert expected is not None and json.loads(expected) == both
    assert connector.expected_destination_id("add", Record("c" * 64, {"email": "x"})) is None

    connector.remove([Record("a" * 64, {}, expected)])
    connector.add([Record("a" * 64, {"email": "new@example.com"}, expected)])
    assert body(ops.calls[0].request)["operations"] == [{"remove": {"userIdentifiers": both}}]
    assert body(ops.calls[1].request)["operations"] == [
        {"remove": {"userIdentifiers": [{"hashedEmail": sha("old@example.com")}]}},
        {"create": {"userIdentifiers": [{"hashedEmail": sha("new@example.com")}]}},
    ]


# -- run and poll -----------------------------------------------------------------------


def test_close_runs_the_job_only_when_it_has_operations(
    router: respx.Router, http: httpx.Client
) -> None:
    job_routes(router)
    run = router.post(f"{V}/{JOB}:run").respond(200, json={"name": f"{JOB}/operations/1"})
    connector = make(http)
    connector.close(True)
    assert run.call_count == 0
    connector = make(http)
    connector.add([member(1)])
    connector.close(False)  # even after an early stop: its records are pending in the job
    assert run.call_count == 1
    assert body(run.calls[0].request) == {}


def search_reply(status: str, **extra: Any) -> dict[str, Any]:
    row = {"resourceName": JOB, "status": status, **extra}
    return {"results": [{"offlineUserDataJob": row}], "fieldMask": "offlineUserDataJob.status"}


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (search_reply("RUNNING"), JobStatus("running")),
        (
            search_reply("SUCCESS", operationMetadata={"matchRateRange": "MATCH_RANGE_41_TO_50"}),
            JobStatus("succeeded", stats={"match_rate_min_pct": 41, "match_rate_max_pct": 50}),
        ),
        (
            search_reply(
                "SUCCESS", operationMetadata={"matchRateRange": "MATCH_RANGE_LESS_THAN_20"}
            ),
            JobStatus("succeeded", stats={"match_rate_min_pct": 0, "match_rate_max_pct": 19}),
        ),
        (search_reply("SUCCESS"), JobStatus("succeeded")),
        (
            search_reply("FAILED", failureReason="USER_LIST_NOT_APPLICABLE"),
            JobStatus("failed", reason="job failed: USER_LIST_NOT_APPLICABLE"),
        ),
        ({"results": []}, JobStatus("failed", reason="google_ads: job not found")),
    ],
)
def test_poll_job_maps_google_statuses(
    router: respx.Router, http: httpx.Client, reply: dict[str, Any], expected: JobStatus
) -> None:
    search = router.post(f"{V}/customers/{CID}/googleAds:search").respond(200, json=reply)
    assert make(http).poll_job(JOB) == expected
    query = body(search.calls[0].request)["query"]
    assert query.startswith("SELECT offline_user_data_job.resource_name")
    assert "offline_user_data_job.status" in query
    assert "offline_user_data_job.failure_reason" in query
    assert f"WHERE offline_user_data_job.resource_name = '{JOB}'" in query


def test_poll_of_a_pending_job_starts_it_again(router: respx.Router, http: httpx.Client) -> None:
    router.post(f"{V}/customers/{CID}/googleAds:search").respond(200, json=search_reply("PENDING"))
    run = router.post(f"{V}/{JOB}:run")
    run.side_effect = [
        google_error(400, "INVALID_ARGUMENT", {"offlineUserDataJobError": "INVALID_JOB_STATUS"}),
        httpx.Response(200, json={"name": "op"}),
    ]
    connector = make(http)
    assert connector.poll_job(JOB) == JobStatus("running")  # refused: already started
    assert connector.poll_job(JOB) == JobStatus("running")  # started now
    assert run.call_count == 2


def test_poll_job_refuses_a_foreign_job_name(router: respx.Router, http: httpx.Client) -> None:
    with pytest.raises(ConfigError):
        make(http).poll_job("customers/1/offlineUserDataJobs/2' OR 1=1")
    assert len(router.calls) == 0


# -- retries and rate limits ------------------------------------------------------------


def test_concurrent_modification_is_retryable(router: respx.Router, http: httpx.Client) -> None:
    error = google_error(400, "INVALID_ARGUMENT", {"databaseError": "CONCURRENT_MODIFICATION"})
    job_routes(router, add=lambda request: error)
    with pytest.raises(TransientError) as caught:
        make(http).add([member(1)])
    assert not isinstance(caught.value, (RateLimited, BatchRejected))


def test_429_with_retry_delay_waits_that_long(router: respx.Router) -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = AccountLimiter([], 1, clock=lambda: now[0], sleep=sleep)
    quota = {"quotaErrorDetails": {"rateScope": "DEVELOPER", "retryDelay": "7s"}}
    error = google_error(
        429, "RESOURCE_EXHAUSTED", {"quotaError": "RESOURCE_EXHAUSTED"}, details=quota
    )
    replies = iter([error, httpx.Response(200, json={})])
    job_routes(router, add=lambda request: next(replies))
    with engine_client(router, limiter=limiter) as client:
        connector = make(client)
        with pytest.raises(RateLimited) as caught:
            connector.add([member(1)])
        assert caught.value.retry_after == pytest.approx(7.0)
        assert connector.add([member(1)]).outcomes()[0].status == "pending"
    assert sum(slept) == pytest.approx(7.0)  # the account was held for Google's delay


def test_429_without_retry_delay_is_still_rate_limited(
    router: respx.Router, http: httpx.Client
) -> None:
    job_routes(router, add=lambda request: httpx.Response(429, json={}))
    with pytest.raises(RateLimited):
        make(http).add([member(1)])


# -- check and open ---------------------------------------------------------------------


def list_reply(kind: str = "CRM_BASED") -> dict[str, Any]:
    row = {"resourceName": f"customers/{CID}/userLists/{LIST}", "id": LIST, "type": kind}
    return {"results": [{"userList": row}]}


def test_check_reads_the_user_list(router: respx.Router, http: httpx.Client) -> None:
    search = router.post(f"{V}/customers/{CID}/googleAds:search").respond(200, json=list_reply())
    make(http).check()
    query = body(search.calls[0].request)["query"]
    assert "FROM user_list" in query
    assert f"user_list.resource_name = 'customers/{CID}/userLists/{LIST}'" in query
    assert search.calls[0].request.headers["developer-token"] == DEV


def test_check_bad_token_is_auth_error(router: respx.Router, http: httpx.Client) -> None:
    router.post(f"{V}/customers/{CID}/googleAds:search").mock(
        return_value=google_error(401, "UNAUTHENTICATED", {"authenticationError": "x"})
    )
    with pytest.raises(AuthError) as caught:
        make(http).check()
    assert TOKEN not in str(caught.value)


def test_check_unknown_list_names_user_list_id(router: respx.Router, http: httpx.Client) -> None:
    router.post(f"{V}/customers/{CID}/googleAds:search").respond(200, json={"results": []})
    with pytest.raises(ConfigError, match="user_list_id"):
        make(http).check()


def test_check_wrong_list_type(router: respx.Router, http: httpx.Client) -> None:
    router.post(f"{V}/customers/{CID}/googleAds:search").respond(200, json=list_reply("RULE_BASED"))
    with pytest.raises(ConfigError, match=r"user_list_id.*CRM_BASED"):
        make(http).check()


def test_check_bad_customer_names_customer_id(router: respx.Router, http: httpx.Client) -> None:
    router.post(f"{V}/customers/{CID}/googleAds:search").mock(
        return_value=google_error(400, "INVALID_ARGUMENT", {"requestError": "INVALID_CUSTOMER_ID"})
    )
    with pytest.raises(ConfigError, match="customer_id") as caught:
        make(http).check()
    assert not isinstance(caught.value, AuthError)


def test_check_network_failure_is_transient(router: respx.Router, http: httpx.Client) -> None:
    router.post(f"{V}/customers/{CID}/googleAds:search").mock(
        side_effect=httpx.ConnectError("refused")
    )
    with pytest.raises(TransientError):
        make(http).check()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (("email", "city"), "field 'city'"),
        (("email", "maid"), "mix upload key types"),
        (("email", "first_name"), "also needs field 'country'"),
    ],
)
def test_open_refuses_fields_google_cannot_take(fields: tuple[str, ...], message: str) -> None:
    with httpx.Client() as client, pytest.raises(ConfigError, match=message):
        make(client, ctx=context(fields))


def test_config_refuses_non_numeric_ids() -> None:
    with pytest.raises(ValueError, match="numeric"):
        GoogleAdsConfig(
            access_token=TOKEN, developer_token=DEV, customer_id="abc", user_list_id=LIST
        )


def test_capabilities_and_secrets() -> None:
    caps = GoogleAdsConnector.capabilities
    assert caps.hashed_keys and caps.async_jobs
    assert caps.max_batch_size == 10_000
    assert "update_only" not in caps.modes
    with httpx.Client() as client:
        connector = make(client)
    assert set(connector.secret_values()) == {TOKEN, DEV}
    # The customer and a digest of the developer token (the access token is refreshed).
    assert connector.account_key().startswith(f"google_ads:googleads.googleapis.com:{CID}:")
    assert DEV not in connector.account_key() and TOKEN not in connector.account_key()


# -- volume -----------------------------------------------------------------------------


def test_requests_per_10000_members(router: respx.Router, http: httpx.Client) -> None:
    """10,000 adds with the engine's batch size: create + 1 addOperations + run = 3 requests;
    10,000 removes in the next run: the same 3."""
    create, ops = job_routes(router)
    run = router.post(f"{V}/{JOB}:run").respond(200, json={})
    connector = make(http)
    members = [member(i) for i in range(10_000)]
    for start in range(0, len(members), connector.batch_size):
        connector.add(members[start : start + connector.batch_size])
    connector.close(True)
    assert (create.call_count, ops.call_count, run.call_count) == (1, 1, 1)
    assert len(router.calls) == 3
    identifiers = sum(
        len(op["create"]["userIdentifiers"]) for op in body(ops.calls[0].request)["operations"]
    )
    assert identifiers == 10_000  # within 100,000 per request

    kept = json.dumps([{"hashedEmail": sha("x@example.com")}])
    gone = [Record(sha(f"k{i}"), {}, kept) for i in range(10_000)]
    connector = make(http)
    for start in range(0, len(gone), connector.batch_size):
        connector.remove(gone[start : start + connector.batch_size])
    connector.close(True)
    assert len(router.calls) == 6


def test_example_mapping_loads_and_opens(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from syncer.mapping import load_file

    monkeypatch.setenv("GOOGLE_ADS_ACCESS_TOKEN", TOKEN)
    monkeypatch.setenv("GOOGLE_ADS_DEVELOPER_TOKEN", DEV)
    path = Path(__file__).resolve().parents[1] / "mappings" / "examples" / "google_ads.yaml"
    loaded = load_file(path)
    assert loaded.connector_cls is GoogleAdsConnector
    fields = tuple(sorted(loaded.definition.fields))
    with httpx.Client() as client:
        connector = GoogleAdsConnector(
            loaded.connector_config, context(fields, loaded.definition.mode), client
        )
        connector.open()
