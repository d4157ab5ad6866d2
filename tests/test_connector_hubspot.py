"""The HubSpot connector against respx: request shapes from the reference (section 1), 207
partial failures, list membership by record id, rate-limit headers, 429 and check().

HubSpot publishes no OpenAPI document in ../shared/specs, so request shapes are asserted field
by field from ../shared/reference/destinations.md.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import respx

from connectors.hubspot import HubSpotConnector
from syncer.connector import Record, SyncContext, effective_limits
from syncer.errors import AuthError, ConfigError, RateLimited, TransientError
from syncer.http import DestinationClient
from syncer.ratelimit import RateLimit
from syncer.testing import FakeClock

BASE = "https://api.hubapi.com"
TOKEN = "pat-na1-0000-secret-token"
UPSERT = f"{BASE}/crm/v3/objects/contacts/batch/upsert"
BATCH_READ = f"{BASE}/crm/v3/objects/contacts/batch/read"
LIST_ADD = f"{BASE}/crm/v3/lists/77/memberships/add"
LIST_REMOVE = f"{BASE}/crm/v3/lists/77/memberships/remove"
ADA = Record("ada@example.com", {"email": "ada@example.com", "firstname": "Ada", "ltv": 120})
BOB = Record("bob@example.com", {"email": "bob@example.com", "firstname": "Bob", "ltv": None})


@pytest.fixture
def http(engine_http: httpx.Client) -> httpx.Client:
    """The engine's client only (the kit's, its limiter on the fake clock)."""
    return engine_http


def make(http: httpx.Client, mode: str = "membership", **options: Any) -> HubSpotConnector:
    settings: dict[str, Any] = {"token": TOKEN, "list_id": "77"}
    settings.update(options)
    context = SyncContext("vip", mode, ("email", "firstname", "ltv"), "r1")
    connector = HubSpotConnector(HubSpotConnector.config_model(**settings), context, http)
    if isinstance(http, DestinationClient):  # wired as the engine does
        http.classifier = connector.classify
        http.secrets = connector.secret_values()
    return connector


def upsert_reply(*pairs: tuple[str, str], errors: list[dict[str, Any]] | None = None) -> Any:
    """A batch/upsert answer: 200, or 207 with ``errors[]`` when there are errors."""
    results = [
        {"id": rid, "new": True, "properties": {"email": email}, "objectWriteTraceId": None}
        for email, rid in pairs
    ]
    body: dict[str, Any] = {"status": "COMPLETE", "results": results}
    if errors:
        body.update(numErrors=len(errors), errors=errors)
    return httpx.Response(207 if errors else 200, json=body)


def sent(router: respx.Router, index: int) -> httpx.Request:
    request: httpx.Request = router.calls[index].request
    return request


# -- upsert ------------------------------------------------------------------------------


def test_upsert_request_shape(router: respx.Router, http: httpx.Client) -> None:
    router.post(UPSERT).mock(return_value=upsert_reply(("ada@example.com", "101")))
    loud = Record("ADA@Example.com", {"email": "ADA@Example.com", "firstname": "Ada", "vip": True})
    outcome = make(http, mode="upsert", list_id=None).update([loud]).outcomes()

    request = sent(router, 0)
    assert request.method == "POST" and str(request.url) == UPSERT
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {
        "inputs": [
            {
                "idProperty": "email",
                "id": "ada@example.com",  # lowercased, as HubSpot stores emails
                "properties": {"email": "ADA@Example.com", "firstname": "Ada", "vip": "true"},
                "objectWriteTraceId": "0",
            }
        ]
    }
    assert outcome[0].status == "accepted" and outcome[0].destination_id == "101"
    assert len(router.calls) == 1  # update never touches the list


def test_property_values_are_strings_and_none_clears(
    router: respx.Router, http: httpx.Client
) -> None:
    router.post(UPSERT).mock(
        return_value=upsert_reply(("ada@example.com", "101"), ("bob@example.com", "102"))
    )
    make(http, mode="upsert").update([ADA, BOB])
    inputs = json.loads(sent(router, 0).content)["inputs"]
    assert inputs[0]["properties"]["ltv"] == "120"
    assert inputs[1]["properties"]["ltv"] == ""  # "cleared by passing an empty string"


def test_configured_id_property_and_field(router: respx.Router, http: httpx.Client) -> None:
    router.post(UPSERT).mock(
        return_value=httpx.Response(
            200, json={"results": [{"id": "9", "objectWriteTraceId": "0", "properties": {}}]}
        )
    )
    record = Record("c-1", {"customer_id": "C-1", "firstname": "Ada"})
    out = make(http, mode="upsert", id_property="customer_id", id_field="customer_id").update(
        [record]
    )
    body = json.loads(sent(router, 0).content)["inputs"][0]
    assert (body["idProperty"], body["id"]) == ("customer_id", "C-1")  # not lowercased
    assert out.outcomes()[0].destination_id == "9"


def test_date_versioned_paths(router: respx.Router, http: httpx.Client) -> None:
    router.post(f"{BASE}/crm/objects/2026-03/contacts/batch/upsert").mock(
        return_value=upsert_reply(("ada@example.com", "101"))
    )
    router.put(f"{BASE}/crm/lists/2026-03/77/memberships/add").respond(
        200, json={"recordsIdsAdded": ["101"], "recordIdsMissing": []}
    )
    out = make(http, api_version="2026-03").add([ADA]).outcomes()
    assert out[0].status == "accepted" and len(router.calls) == 2


def test_207_errors_reject_only_their_records(router: respx.Router, http: httpx.Client) -> None:
    error = {
        "status": "error",
        "category": "VALIDATION_ERROR",
        "message": "Property values were not valid: bob@example.com ltv",
        "context": {"ids": ["bob@example.com"]},
        "errors": [{"message": "not a number", "code": "INVALID_DOUBLE", "in": "ltv"}],
    }
    router.post(UPSERT).mock(return_value=upsert_reply(("ada@example.com", "101"), errors=[error]))
    router.put(LIST_ADD).respond(200, json={"recordsIdsAdded": ["101"], "recordIdsMissing": []})
    ada, bob = make(http).add([ADA, BOB]).outcomes()

    assert ada.status == "accepted" and ada.destination_id == "101"
    assert bob.status == "rejected"
    assert bob.reason == "VALIDATION_ERROR: Property values were not valid: *** ltv (property ltv)"
    assert json.loads(sent(router, 1).content) == ["101"]  # only the upserted one is added


def test_record_without_result_is_failed_not_accepted(
    router: respx.Router, http: httpx.Client
) -> None:
    router.post(UPSERT).mock(return_value=upsert_reply(("ada@example.com", "101")))
    _, bob = make(http, mode="upsert").update([ADA, BOB]).outcomes()
    assert bob.status == "failed"


def test_duplicates_in_a_batch_are_sent_once(router: respx.Router, http: httpx.Client) -> None:
    router.post(UPSERT).mock(return_value=upsert_reply(("ada@example.com", "101")))
    twin = Record("Ada@example.com ", {"email": "ADA@example.com"})
    out = make(http, mode="upsert", id_field="email").update([ADA, twin]).outcomes()
    assert len(json.loads(sent(router, 0).content)["inputs"]) == 1
    assert [o.destination_id for o in out] == ["101", "101"]


def test_missing_id_value_is_rejected_without_a_request(
    router: respx.Router, http: httpx.Client
) -> None:
    out = make(http, mode="upsert", id_field="email").update([Record("k", {"email": None})])
    assert out.outcomes()[0].status == "rejected"
    assert out.outcomes()[0].reason == "no value for email"
    assert not router.calls


# -- list membership -------------------------------------------------------------------


def test_add_upserts_then_puts_record_ids(router: respx.Router, http: httpx.Client) -> None:
    router.post(UPSERT).mock(
        return_value=upsert_reply(("ada@example.com", "101"), ("bob@example.com", "102"))
    )
    # Ada is already a member: HubSpot ignores her (not in recordsIdsAdded), still success.
    router.put(LIST_ADD).respond(200, json={"recordsIdsAdded": ["102"], "recordIdsMissing": []})
    out = make(http).add([ADA, BOB]).outcomes()

    put = sent(router, 1)
    assert put.method == "PUT" and str(put.url) == LIST_ADD
    assert put.headers["Authorization"] == f"Bearer {TOKEN}"
    assert json.loads(put.content) == ["101", "102"]
    assert [(o.status, o.destination_id) for o in out] == [
        ("accepted", "101"),
        ("accepted", "102"),
    ]


def test_record_ids_missing_on_add_are_rejected(router: respx.Router, http: httpx.Client) -> None:
    router.post(UPSERT).mock(
        return_value=upsert_reply(("ada@example.com", "101"), ("bob@example.com", "102"))
    )
    router.put(LIST_ADD).respond(
        200, json={"recordsIdsAdded": ["101"], "recordIdsMissing": ["102"]}
    )
    ada, bob = make(http).add([ADA, BOB]).outcomes()
    assert ada.status == "accepted"
    assert bob.status == "rejected" and "recordIdsMissing" in (bob.reason or "")


def test_remove_uses_stored_ids_and_never_searches_for_them(
    router: respx.Router, http: httpx.Client
) -> None:
    router.put(LIST_REMOVE).respond(
        200, json={"recordsIdsAdded": [], "recordIdsRemoved": ["101"], "recordIdsMissing": ["102"]}
    )
    gone = [Record("ada@example.com", {}, "101"), Record("bob@example.com", {}, "102")]
    out = make(http).remove(gone).outcomes()

    assert len(router.calls) == 1  # one PUT, no search, no read
    put = sent(router, 0)
    assert put.method == "PUT" and str(put.url) == LIST_REMOVE
    assert json.loads(put.content) == ["101", "102"]
    # A record HubSpot no longer has is not on the list either: removal done.
    assert [o.status for o in out] == ["accepted", "accepted"]


def test_a_member_whose_add_was_never_confirmed_is_looked_up_and_removed(
    router: respx.Router, http: httpx.Client
) -> None:
    """No record id was stored (the add's answer never arrived): HubSpot may still have made
    the contact and put it on the list. It is read by email, and removed if it exists."""
    router.post(BATCH_READ).respond(
        207,
        json={
            "status": "COMPLETE",
            "results": [{"id": "105", "properties": {"email": "eve@example.com"}}],
            "numErrors": 1,
            "errors": [{"category": "OBJECT_NOT_FOUND", "context": {"ids": ["zed@example.com"]}}],
        },
    )
    router.put(LIST_REMOVE).respond(
        200, json={"recordsIdsAdded": [], "recordIdsRemoved": ["101", "105"]}
    )
    records = [
        Record("ada@example.com", {}, "101"),
        Record("eve@example.com", {}, None),
        Record("Zed@Example.com", {}, None),
    ]
    out = make(http).remove(records).outcomes()

    read, put = sent(router, 0), sent(router, 1)
    assert read.method == "POST" and str(read.url) == BATCH_READ
    assert json.loads(read.content) == {
        "idProperty": "email",
        "inputs": [{"id": "eve@example.com"}, {"id": "zed@example.com"}],
        "properties": ["email"],
    }
    assert json.loads(put.content) == ["101", "105"]
    # A contact HubSpot does not have is on no list: nothing left to remove.
    assert [o.status for o in out] == ["accepted", "accepted", "accepted"]


def test_without_a_record_id_or_an_email_key_a_removal_says_what_to_do(
    router: respx.Router, http: httpx.Client
) -> None:
    out = (
        make(http, id_property="customer_no", id_field="customer_no")
        .remove([Record("c-17", {}, None)])
        .outcomes()
    )
    assert router.calls.call_count == 0
    (outcome,) = out
    assert outcome.status == "rejected"
    assert outcome.reason is not None and "remove it from the list in HubSpot" in outcome.reason


def test_dynamic_list_refusal_is_a_config_error(router: respx.Router, http: httpx.Client) -> None:
    router.post(UPSERT).mock(return_value=upsert_reply(("ada@example.com", "101")))
    router.put(LIST_ADD).respond(
        400, json={"category": "VALIDATION_ERROR", "message": "list is DYNAMIC"}
    )
    with pytest.raises(ConfigError, match="list_id"):
        make(http).add([ADA])


def test_membership_chunks(router: respx.Router, http: httpx.Client) -> None:
    router.put(LIST_REMOVE).respond(200, json={"recordIdsRemoved": [], "recordIdsMissing": []})
    records = [Record(f"k{i}", {}, str(i)) for i in range(5)]
    make(http, membership_chunk_size=2).remove(records)
    assert [json.loads(c.request.content) for c in router.calls] == [
        ["0", "1"],
        ["2", "3"],
        ["4"],
    ]


def test_membership_mode_needs_a_list(http: httpx.Client) -> None:
    with pytest.raises(ConfigError, match="list_id is required"):
        make(http, list_id=None).open()


# -- rate limits -------------------------------------------------------------------------


def test_published_limits_follow_the_tier(http: httpx.Client) -> None:
    assert effective_limits(make(http))[0] == [RateLimit(100, 10), RateLimit(250_000, 86_400)]
    pro = effective_limits(make(http, tier="professional"))[0]
    assert pro == [RateLimit(190, 10), RateLimit(625_000, 86_400)]


def test_syncs_to_two_lists_share_one_account_limiter(http: httpx.Client) -> None:
    one, two = make(http), make(http, list_id="88")
    assert one.account_key() == two.account_key()
    assert TOKEN not in one.account_key()
    assert make(http, token="another-token-0000").account_key() != one.account_key()


def test_remaining_zero_holds_the_account_for_the_interval(
    router: respx.Router, http: httpx.Client, clock: FakeClock
) -> None:
    headers = {
        "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
        "X-HubSpot-RateLimit-Max": "100",
        "X-HubSpot-RateLimit-Remaining": "0",
    }
    body = {"results": [{"id": "101", "properties": {"email": "ada@example.com"}}]}
    router.post(UPSERT).respond(200, json=body, headers=headers)
    connector = make(http, mode="upsert")
    connector.update([ADA])
    assert clock.slept == []
    connector.update([ADA])  # the next request waits out the spent window
    assert sum(clock.slept) == pytest.approx(10.0, abs=0.01)


def test_remaining_quota_left_does_not_slow_down(
    router: respx.Router, http: httpx.Client, clock: FakeClock
) -> None:
    headers = {"X-HubSpot-RateLimit-Remaining": "42", "X-HubSpot-RateLimit-Daily-Remaining": "9"}
    body = {"results": [{"id": "101", "properties": {"email": "ada@example.com"}}]}
    router.post(UPSERT).respond(200, json=body, headers=headers)
    connector = make(http, mode="upsert")
    connector.update([ADA])
    connector.update([ADA])
    assert clock.slept == []


def test_429_with_retry_after_is_rate_limited(router: respx.Router, http: httpx.Client) -> None:
    router.post(UPSERT).respond(
        429,
        json={"status": "error", "errorType": "RATE_LIMIT", "policyName": "TEN_SECONDLY_ROLLING"},
        headers={"Retry-After": "2"},
    )
    with pytest.raises(RateLimited) as caught:
        make(http, mode="upsert").update([ADA])
    assert caught.value.retry_after == 2.0


def test_429_without_retry_after_waits_the_interval(
    router: respx.Router, http: httpx.Client, clock: FakeClock
) -> None:
    router.post(UPSERT).mock(
        side_effect=[
            httpx.Response(
                429,
                json={"policyName": "TEN_SECONDLY_ROLLING"},
                headers={"X-HubSpot-RateLimit-Interval-Milliseconds": "10000"},
            ),
            upsert_reply(("ada@example.com", "101")),
        ]
    )
    connector = make(http, mode="upsert")
    with pytest.raises(RateLimited):
        connector.update([ADA])
    assert connector.update([ADA]).outcomes()[0].destination_id == "101"
    assert sum(clock.slept) == pytest.approx(10.0, abs=0.01)


# -- check -------------------------------------------------------------------------------


def test_check_reads_the_list(router: respx.Router, http: httpx.Client) -> None:
    router.get(f"{BASE}/crm/v3/lists/77").respond(
        200, json={"list": {"listId": "77", "processingType": "MANUAL", "objectTypeId": "0-1"}}
    )
    make(http).check()
    assert router.calls[0].request.headers["Authorization"] == f"Bearer {TOKEN}"


def test_check_bad_token_is_auth_error(router: respx.Router, http: httpx.Client) -> None:
    router.get(f"{BASE}/crm/v3/lists/77").respond(401, json={"category": "INVALID_AUTHENTICATION"})
    with pytest.raises(AuthError) as caught:
        make(http).check()
    assert TOKEN not in str(caught.value)


def test_check_wrong_list_is_config_error(router: respx.Router, http: httpx.Client) -> None:
    router.get(f"{BASE}/crm/v3/lists/77").respond(404, json={"category": "OBJECT_NOT_FOUND"})
    with pytest.raises(ConfigError, match="list_id") as caught:
        make(http).check()
    assert not isinstance(caught.value, AuthError)


def test_check_dynamic_list_is_config_error(router: respx.Router, http: httpx.Client) -> None:
    router.get(f"{BASE}/crm/v3/lists/77").respond(
        200, json={"list": {"listId": "77", "processingType": "DYNAMIC"}}
    )
    with pytest.raises(ConfigError, match="DYNAMIC"):
        make(http).check()


def test_check_network_failure_is_transient(router: respx.Router, http: httpx.Client) -> None:
    router.get(f"{BASE}/crm/v3/lists/77").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(TransientError):
        make(http).check()


def test_check_without_a_list_reads_one_contact(router: respx.Router, http: httpx.Client) -> None:
    route = router.get(f"{BASE}/crm/v3/objects/contacts", params={"limit": "1"}).respond(
        200, json={"results": []}
    )
    make(http, mode="upsert", list_id=None).check()
    assert route.called


# -- cost --------------------------------------------------------------------------------


def test_requests_per_10000_members_added(router: respx.Router, http: httpx.Client) -> None:
    """Membership mode: one upsert and one list PUT per batch of 100 (the engine's size)."""

    def upserted(request: httpx.Request) -> httpx.Response:
        inputs = json.loads(request.content)["inputs"]
        results = [
            {"id": str(1000 + int(i["objectWriteTraceId"])), **i, "properties": {}} for i in inputs
        ]
        return httpx.Response(200, json={"status": "COMPLETE", "results": results})

    upsert = router.post(UPSERT).mock(side_effect=upserted)
    add = router.put(LIST_ADD).respond(200, json={"recordsIdsAdded": [], "recordIdsMissing": []})
    connector = make(http)
    members = [Record(f"m{i}@example.com", {"email": f"m{i}@example.com"}) for i in range(10_000)]
    for start in range(0, len(members), connector.batch_size):
        connector.add(members[start : start + connector.batch_size])
    assert connector.batch_size == 100
    assert (upsert.call_count, add.call_count) == (100, 100)
    assert len(router.calls) == 200
