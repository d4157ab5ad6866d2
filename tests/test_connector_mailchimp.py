"""Mailchimp connector against respx: request shapes field by field (Mailchimp publishes no
OpenAPI document here, so the shapes come from ../shared/reference/destinations.md section 3),
per-record outcomes, membership through tags and static segments, 429s and check()."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx
from pydantic import ValidationError

from connectors.mailchimp import MailchimpConnector, subscriber_hash
from syncer.connector import Record, SyncContext
from syncer.errors import AuthError, ConfigError, RateLimited, TransientError
from syncer.http import DestinationClient, make_client

KEY = "0123456789abcdef0123456789abcdef-us21"
BASE = "https://us21.api.mailchimp.com/3.0"
LIST = "a1b2c3d4e5"
ADA = Record("ada@example.com", {"email": "ada@example.com", "FNAME": "Ada", "LTV": 120})
BOB = Record("bob@example.com", {"email": "bob@example.com", "FNAME": "Bob"})
ADA_HASH = hashlib.md5(b"ada@example.com").hexdigest()
BOB_HASH = hashlib.md5(b"bob@example.com").hexdigest()


def context(mode: str = "membership") -> SyncContext:
    return SyncContext("vip", mode, ("FNAME", "LTV", "email"), run_id="r1")


def make(http: httpx.Client, mode: str = "membership", **options: Any) -> MailchimpConnector:
    settings: dict[str, Any] = {"api_key": KEY, "list_id": LIST, "tag": "vip"}
    settings.update(options)
    connector = MailchimpConnector(MailchimpConnector.config_model(**settings), context(mode), http)
    if isinstance(http, DestinationClient):  # wired as the engine does
        http.classifier = connector.classify
        http.secrets = connector.secret_values()
    return connector


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(assert_all_called=False)


@pytest.fixture
def http(router: respx.Router) -> Iterator[httpx.Client]:
    with make_client(transport=httpx.MockTransport(router.handler)) as client:
        yield client


def body(call: Any) -> Any:
    return json.loads(call.request.content)


def ok_subscribe(**extra: Any) -> dict[str, Any]:
    return {"new_members": [], "updated_members": [], "errors": [], "error_count": 0, **extra}


# -- configuration ---------------------------------------------------------------------------


def test_data_centre_from_key_and_base_url_override(http: httpx.Client) -> None:
    assert make(http).base_url == BASE
    assert make(http, base_url="http://127.0.0.1:9/3.0/").base_url == "http://127.0.0.1:9/3.0"
    with pytest.raises(ValidationError) as info:
        make(http, api_key="nodatacentre")
    assert "nodatacentre" not in str(info.value)
    make(http, api_key="nodatacentre", base_url="https://proxy.example.com/3.0")


def test_tag_and_segment_are_exclusive_and_removal_needs_one(http: httpx.Client) -> None:
    with pytest.raises(ValidationError):
        make(http, segment_id=7)
    with pytest.raises(ConfigError, match="tag or segment_id"):
        make(http, tag=None).open()
    make(http, "upsert", tag=None).open()  # upsert never removes


def test_published_limits() -> None:
    assert MailchimpConnector.max_concurrency == 10
    assert MailchimpConnector.rate_limits == ()
    assert MailchimpConnector.capabilities.max_batch_size == 500


def test_subscriber_hash_is_md5_of_lowercased_email() -> None:
    assert subscriber_hash("  Ada@Example.COM ") == ADA_HASH


# -- upsert ----------------------------------------------------------------------------------


def test_batch_subscribe_request_shape(router: respx.Router, http: httpx.Client) -> None:
    route = router.post(f"{BASE}/lists/{LIST}").respond(200, json=ok_subscribe())
    result = make(http, "upsert", tag=None, status_if_new="pending").update([ADA, BOB])

    request = route.calls.last.request
    assert request.method == "POST"
    assert request.url.params.get("skip_merge_validation") is None
    user, _, secret = base64.b64decode(request.headers["Authorization"][6:]).decode().partition(":")
    assert request.headers["Authorization"].startswith("Basic ") and secret == KEY and user
    assert request.headers["Content-Type"] == "application/json"
    assert body(route.calls.last) == {
        "members": [
            {
                "email_address": "ada@example.com",
                "status": "pending",
                "merge_fields": {"FNAME": "Ada", "LTV": 120},
            },
            {
                "email_address": "bob@example.com",
                "status": "pending",
                "merge_fields": {"FNAME": "Bob"},
            },
        ],
        "update_existing": True,
        "sync_tags": False,
    }
    assert [(o.status, o.destination_id) for o in result.outcomes()] == [
        ("accepted", ADA_HASH),
        ("accepted", BOB_HASH),
    ]


def test_skip_merge_validation_query(router: respx.Router, http: httpx.Client) -> None:
    route = router.post(f"{BASE}/lists/{LIST}").respond(200, json=ok_subscribe())
    make(http, "upsert", skip_merge_validation=True).update([ADA])
    assert route.calls.last.request.url.params["skip_merge_validation"] == "true"


def test_batch_subscribe_errors_are_per_record(router: respx.Router, http: httpx.Client) -> None:
    carl = Record("carl@example.com", {"email": "CARL@example.com"})
    dora = Record("dora@example.com", {"email": "dora@example.com"})
    errors = [
        {
            "email_address": "bob@example.com",
            "error": "bob@example.com looks fake or invalid, please enter a real email address.",
            "error_code": "ERROR_GENERIC",
            "field": "email_address",
            "field_message": "",
        },
        {
            "email_address": "carl@example.com",
            "error": "exists",
            "error_code": "ERROR_CONTACT_EXISTS",
        },
        {"email_address": "dora@example.com", "error": "Dora is already a list member."},
    ]
    router.post(f"{BASE}/lists/{LIST}").respond(
        200, json=ok_subscribe(errors=errors, error_count=3)
    )
    outcomes = make(http, "upsert").update([ADA, BOB, carl, dora]).outcomes()
    assert [o.status for o in outcomes] == ["accepted", "rejected", "accepted", "accepted"]
    reason = outcomes[1].reason or ""
    assert "looks fake or invalid" in reason
    assert "bob@example.com" not in reason


def test_record_without_email_is_rejected_without_a_request(
    router: respx.Router, http: httpx.Client
) -> None:
    route = router.post(f"{BASE}/lists/{LIST}").respond(200, json=ok_subscribe())
    outcomes = make(http, "upsert").update([Record("u-1", {"FNAME": "X"})]).outcomes()
    assert outcomes[0].status == "rejected" and "no email" in (outcomes[0].reason or "")
    assert not route.called


# -- tags ------------------------------------------------------------------------------------


def test_add_subscribes_then_tags_each_member(router: respx.Router, http: httpx.Client) -> None:
    subscribe = router.post(f"{BASE}/lists/{LIST}").respond(200, json=ok_subscribe())
    tags = router.post(url__regex=rf"{BASE}/lists/{LIST}/members/\w+/tags").respond(204)
    result = make(http).add([ADA, BOB])

    assert subscribe.call_count == 1
    assert [c.request.url.path.split("/")[-2] for c in tags.calls] == [ADA_HASH, BOB_HASH]
    assert body(tags.calls[0]) == {"tags": [{"name": "vip", "status": "active"}]}
    assert [o.destination_id for o in result.outcomes()] == [ADA_HASH, BOB_HASH]


def test_rejected_subscriber_is_not_tagged(router: respx.Router, http: httpx.Client) -> None:
    errors = [
        {"email_address": "bob@example.com", "error": "invalid", "error_code": "ERROR_GENERIC"}
    ]
    router.post(f"{BASE}/lists/{LIST}").respond(200, json=ok_subscribe(errors=errors))
    tags = router.post(url__regex=r"/tags$").respond(204)
    outcomes = make(http).add([ADA, BOB]).outcomes()
    assert [o.status for o in outcomes] == ["accepted", "rejected"]
    assert tags.call_count == 1 and ADA_HASH in str(tags.calls[0].request.url)


def test_tag_failure_rejects_that_member_only(router: respx.Router, http: httpx.Client) -> None:
    router.post(f"{BASE}/lists/{LIST}").respond(200, json=ok_subscribe())
    router.post(url__regex=ADA_HASH).respond(
        400, json={"title": "Invalid Resource", "status": 400, "detail": "Tag name too long"}
    )
    router.post(url__regex=BOB_HASH).respond(404, json={"title": "Resource Not Found"})
    outcomes = make(http).add([ADA, BOB]).outcomes()
    assert [o.status for o in outcomes] == ["rejected", "rejected"]
    assert "Tag name too long" in (outcomes[0].reason or "")
    assert "member not found" in (outcomes[1].reason or "")


def test_remove_uses_the_stored_hash_and_never_searches(
    router: respx.Router, http: httpx.Client
) -> None:
    gone = router.post(url__regex=BOB_HASH).respond(404, json={"title": "Resource Not Found"})
    tags = router.post(url__regex=r"/tags$").respond(204)
    # A non-email key: only the stored subscriber hash can address the member.
    records = [Record("cust-1", destination_id=ADA_HASH), Record("cust-2", destination_id=BOB_HASH)]
    outcomes = make(http).remove(records).outcomes()

    assert [o.status for o in outcomes] == ["accepted", "accepted"]  # 404: not on the list
    assert body(tags.calls[0]) == {"tags": [{"name": "vip", "status": "inactive"}]}
    assert tags.calls[0].request.url.path == f"/3.0/lists/{LIST}/members/{ADA_HASH}/tags"
    assert gone.call_count == 1
    assert all(c.request.method == "POST" for c in router.calls)  # no GET/search


def test_remove_without_hash_hashes_the_email_key(router: respx.Router, http: httpx.Client) -> None:
    tags = router.post(url__regex=r"/tags$").respond(204)
    make(http).remove([Record("Ada@Example.com")])
    assert ADA_HASH in tags.calls[0].request.url.path


# -- static segment --------------------------------------------------------------------------


def test_segment_add_and_remove_shapes(router: respx.Router, http: httpx.Client) -> None:
    router.post(f"{BASE}/lists/{LIST}").respond(200, json=ok_subscribe())
    segment = router.post(f"{BASE}/lists/{LIST}/segments/42").respond(
        200, json={"members_added": [], "members_removed": [], "errors": [], "error_count": 0}
    )
    connector = make(http, tag=None, segment_id=42)
    added = connector.add([ADA, BOB]).outcomes()
    assert body(segment.calls[0]) == {"members_to_add": ["ada@example.com", "bob@example.com"]}
    assert [o.destination_id for o in added] == ["ada@example.com", "bob@example.com"]

    connector.remove([Record("cust-1", destination_id="ada@example.com")])
    assert body(segment.calls[1]) == {"members_to_remove": ["ada@example.com"]}


def test_segment_errors_map_back_by_email(router: respx.Router, http: httpx.Client) -> None:
    router.post(f"{BASE}/lists/{LIST}").respond(200, json=ok_subscribe())
    errors = [
        {"email_addresses": ["bob@example.com"], "error": "Email is in compliance state"},
        {"email_addresses": ["ada@example.com"], "error": "ada@example.com is already a member"},
    ]
    router.post(f"{BASE}/lists/{LIST}/segments/42").respond(
        200, json={"members_added": [], "errors": errors, "error_count": 2}
    )
    outcomes = make(http, tag=None, segment_id=42).add([ADA, BOB]).outcomes()
    assert [o.status for o in outcomes] == ["accepted", "rejected"]
    assert outcomes[1].reason == "mailchimp segment: Email is in compliance state"


def test_segment_remove_ignores_emails_not_on_the_list(
    router: respx.Router, http: httpx.Client
) -> None:
    errors = [
        {"email_addresses": ["bob@example.com"], "error": "Email is not a member of this list"}
    ]
    router.post(f"{BASE}/lists/{LIST}/segments/42").respond(
        200, json={"members_removed": [], "errors": errors, "error_count": 1}
    )
    outcomes = make(http, tag=None, segment_id=42).remove([ADA, BOB]).outcomes()
    assert [o.status for o in outcomes] == ["accepted", "accepted"]


# -- rate limiting ---------------------------------------------------------------------------


def test_429_without_headers_is_rate_limited(router: respx.Router, http: httpx.Client) -> None:
    router.post(f"{BASE}/lists/{LIST}").respond(429, json={"title": "Too Many Requests"})
    with pytest.raises(RateLimited) as info:
        make(http, "upsert").update([ADA])
    assert info.value.retry_after is not None and info.value.retry_after > 0


# -- check -----------------------------------------------------------------------------------


def test_check_reads_the_audience(router: respx.Router, http: httpx.Client) -> None:
    route = router.get(f"{BASE}/lists/{LIST}").respond(200, json={"id": LIST, "name": "Main"})
    make(http).check()
    assert route.calls.last.request.headers["Authorization"].startswith("Basic ")


@pytest.mark.parametrize(
    ("status", "error", "text"),
    [(401, AuthError, "credentials"), (404, ConfigError, "list_id")],
)
def test_check_tells_bad_key_from_wrong_list(
    router: respx.Router, http: httpx.Client, status: int, error: type[Exception], text: str
) -> None:
    router.get(f"{BASE}/lists/{LIST}").respond(status, json={"title": "x", "status": status})
    with pytest.raises(error, match=text) as info:
        make(http).check()
    assert KEY not in str(info.value)
    if status == 404:
        assert not isinstance(info.value, AuthError)


def test_check_network_failure_is_transient(router: respx.Router, http: httpx.Client) -> None:
    router.get(f"{BASE}/lists/{LIST}").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(TransientError):
        make(http).check()


def test_check_refuses_a_saved_segment(router: respx.Router, http: httpx.Client) -> None:
    router.get(f"{BASE}/lists/{LIST}").respond(200, json={"id": LIST})
    router.get(f"{BASE}/lists/{LIST}/segments/42").respond(200, json={"id": 42, "type": "saved"})
    with pytest.raises(ConfigError, match="static"):
        make(http, tag=None, segment_id=42).check()
    router.get(f"{BASE}/lists/{LIST}/segments/43").respond(404, json={"title": "Not Found"})
    with pytest.raises(ConfigError, match="segment_id"):
        make(http, tag=None, segment_id=43).check()


# -- cost ------------------------------------------------------------------------------------


def _add_members(connector: MailchimpConnector, count: int) -> None:
    records = [Record(f"m{i}@example.com", {"email": f"m{i}@example.com"}) for i in range(count)]
    size = connector.batch_size
    for start in range(0, count, size):
        connector.add(records[start : start + size])


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"tag": "vip"}, 20 + 10_000),  # batch subscribe + one tag call per member
        ({"tag": None, "segment_id": 42}, 20 + 20),  # batch subscribe + segment add
    ],
)
def test_requests_per_10000_members_added(
    router: respx.Router, http: httpx.Client, options: dict[str, Any], expected: int
) -> None:
    router.post(f"{BASE}/lists/{LIST}").respond(200, json=ok_subscribe())
    router.post(url__regex=r"/tags$").respond(204)
    router.post(f"{BASE}/lists/{LIST}/segments/42").respond(200, json={"errors": []})
    connector = make(http, **options)
    assert connector.batch_size == 500
    _add_members(connector, 10_000)
    assert len(router.calls) == expected


def test_example_mapping_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from syncer.mapping import load_file

    monkeypatch.setenv("MAILCHIMP_API_KEY", KEY)
    example = Path(__file__).resolve().parents[1] / "mappings" / "examples" / "mailchimp.yaml"
    sync = load_file(example)
    assert sync.connector_cls is MailchimpConnector and sync.definition.mode == "mirror"
