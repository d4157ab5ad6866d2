"""Mailchimp connector against respx: request shapes field by field (Mailchimp publishes no
OpenAPI document here, so the shapes come from ../shared/reference/destinations.md section 3),
per-record outcomes, membership through tags (as static segments, or per member) and static
segments, tag lookup and creation, 429s, check() and request counts."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import respx
from pydantic import ValidationError

from connectors.mailchimp import MailchimpConfig, MailchimpConnector, subscriber_hash
from syncer.connector import Record, SyncContext
from syncer.errors import AuthError, ConfigError, RateLimited, TransientError
from syncer.http import DestinationClient

KEY = "0123456789abcdef0123456789abcdef-us21"
BASE = "https://us21.api.mailchimp.com/3.0"
LIST = "a1b2c3d4e5"
ADA = Record("ada@example.com", {"email": "ada@example.com", "FNAME": "Ada", "LTV": 120})
BOB = Record("bob@example.com", {"email": "bob@example.com", "FNAME": "Bob"})
ADA_HASH = hashlib.md5(b"ada@example.com").hexdigest()
BOB_HASH = hashlib.md5(b"bob@example.com").hexdigest()
SEGMENTS = f"{BASE}/lists/{LIST}/segments"
TAG_ID = 7


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
def http(engine_http: httpx.Client) -> httpx.Client:
    """The engine's client only (the kit's)."""
    return engine_http


def body(call: Any) -> Any:
    return json.loads(call.request.content)


def ok_subscribe(**extra: Any) -> dict[str, Any]:
    return {"new_members": [], "updated_members": [], "errors": [], "error_count": 0, **extra}


def ok_segment(**extra: Any) -> dict[str, Any]:
    return {"members_added": [], "members_removed": [], "errors": [], "error_count": 0, **extra}


def tag_listing(router: respx.Router, *segments: tuple[int, str]) -> respx.Route:
    """``GET /segments``: one page holding ``segments`` (default: the "vip" tag, id 7)."""
    found = [{"id": i, "name": n} for i, n in segments or [(TAG_ID, "vip")]]
    return router.get(SEGMENTS).respond(200, json={"segments": found, "total_items": len(found)})


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


def test_tag_method_is_segment_by_default_and_only_for_tags(http: httpx.Client) -> None:
    assert make(http).settings.tag_method == "segment"
    assert make(http, tag_method="member").settings.tag_method == "member"
    with pytest.raises(ValidationError, match="tag only"):
        make(http, tag=None, segment_id=42, tag_method="member")
    with pytest.raises(ValidationError):
        make(http, tag_method="batches")


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


# -- tag as a static segment (tag_method: segment) --------------------------------------------


def test_tag_found_on_the_first_page(router: respx.Router, http: httpx.Client) -> None:
    listing = tag_listing(router, (3, "VIP"), (5, "vip "), (TAG_ID, "vip"))
    router.post(f"{BASE}/lists/{LIST}").respond(200, json=ok_subscribe())
    segment = router.post(f"{SEGMENTS}/{TAG_ID}").respond(200, json=ok_segment())
    make(http).add([ADA])

    params = listing.calls.last.request.url.params
    assert (params["type"], params["count"], params["offset"]) == ("static", "1000", "0")
    assert listing.call_count == 1 and segment.call_count == 1  # the exact name, nothing else


def test_tag_found_on_the_second_page(router: respx.Router, http: httpx.Client) -> None:
    def page(request: httpx.Request) -> httpx.Response:
        offset = int(request.url.params["offset"])
        names = [(i, f"other-{i}") for i in range(offset, min(offset + 1000, 1500))]
        if offset == 1000:
            names[200] = (4321, "vip")
        found = [{"id": i, "name": n} for i, n in names]
        return httpx.Response(200, json={"segments": found, "total_items": 1500})

    listing = router.get(SEGMENTS).mock(side_effect=page)
    create = router.post(SEGMENTS).respond(200, json={"id": 1})
    router.post(f"{BASE}/lists/{LIST}").respond(200, json=ok_subscribe())
    segment = router.post(f"{SEGMENTS}/4321").respond(200, json=ok_segment())
    make(http).add([ADA])

    assert [c.request.url.params["offset"] for c in listing.calls] == ["0", "1000"]
    assert segment.call_count == 1 and not create.called


def test_missing_tag_is_created_once(router: respx.Router, http: httpx.Client) -> None:
    listing = router.get(SEGMENTS).respond(200, json={"segments": [], "total_items": 0})
    create = router.post(SEGMENTS).respond(200, json={"id": 99, "name": "vip", "type": "static"})
    router.post(f"{BASE}/lists/{LIST}").respond(200, json=ok_subscribe())
    segment = router.post(f"{SEGMENTS}/99").respond(200, json=ok_segment())
    connector = make(http)
    connector.add([ADA])
    connector.add([BOB])
    connector.remove([Record("carl@example.com")])

    assert body(create.calls.last) == {"name": "vip", "static_segment": []}
    assert listing.call_count == 1 and create.call_count == 1  # once per run
    assert segment.call_count == 3


def test_concurrent_batches_resolve_the_tag_once(router: respx.Router, http: httpx.Client) -> None:
    def slow_listing(request: httpx.Request) -> httpx.Response:
        time.sleep(0.05)  # long enough for every thread to be waiting on the lookup
        return httpx.Response(200, json={"segments": [], "total_items": 0})

    listing = router.get(SEGMENTS).mock(side_effect=slow_listing)
    create = router.post(SEGMENTS).respond(200, json={"id": 99})
    router.post(f"{BASE}/lists/{LIST}").respond(200, json=ok_subscribe())
    segment = router.post(f"{SEGMENTS}/99").respond(200, json=ok_segment())
    connector = make(http)
    start = threading.Barrier(4)

    def add(i: int) -> None:
        start.wait()
        connector.add([Record(f"m{i}@example.com")])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(add, range(4)))
    assert (listing.call_count, create.call_count, segment.call_count) == (1, 1, 4)


def test_tag_that_cannot_be_created_stops_the_run(router: respx.Router, http: httpx.Client) -> None:
    router.get(SEGMENTS).respond(200, json={"segments": [], "total_items": 0})
    router.post(f"{BASE}/lists/{LIST}").respond(200, json=ok_subscribe())
    create = router.post(SEGMENTS).respond(400, json={"title": "Invalid Resource"})
    with pytest.raises(ConfigError, match="cannot create the tag"):
        make(http).add([ADA])
    create.respond(403, json={"title": "Forbidden"})
    with pytest.raises(AuthError, match="tag_method: member") as info:
        make(http).add([ADA])
    assert KEY not in str(info.value)


def test_segment_edits_forbidden_point_at_the_member_method(
    router: respx.Router, http: httpx.Client
) -> None:
    tag_listing(router)
    router.post(f"{SEGMENTS}/{TAG_ID}").respond(403, json={"title": "Forbidden"})
    with pytest.raises(AuthError, match="tag_method: member"):
        make(http).remove([Record("ada@example.com")])


def test_tag_listing_refused_is_a_config_error(router: respx.Router, http: httpx.Client) -> None:
    router.get(SEGMENTS).respond(404, json={"title": "Resource Not Found"})
    with pytest.raises(ConfigError, match="tag"):
        make(http).remove([Record("ada@example.com")])


def test_add_subscribes_then_adds_the_batch_to_the_tag(
    router: respx.Router, http: httpx.Client
) -> None:
    tag_listing(router)
    subscribe = router.post(f"{BASE}/lists/{LIST}").respond(200, json=ok_subscribe())
    segment = router.post(f"{SEGMENTS}/{TAG_ID}").respond(200, json=ok_segment())
    tags = router.post(url__regex=r"/tags$").respond(204)
    result = make(http).add([ADA, BOB])

    assert subscribe.call_count == 1 and segment.call_count == 1 and not tags.called
    assert body(segment.calls.last) == {"members_to_add": ["ada@example.com", "bob@example.com"]}
    member_fields = {k for m in body(subscribe.calls.last)["members"] for k in m}
    assert "tags" not in member_fields  # membership is the segment call's job
    # State keeps the address: members_to_remove takes addresses.
    assert [o.destination_id for o in result.outcomes()] == ["ada@example.com", "bob@example.com"]


def test_rejected_subscriber_is_not_sent_to_the_tag(
    router: respx.Router, http: httpx.Client
) -> None:
    tag_listing(router)
    errors = [
        {"email_address": "bob@example.com", "error": "invalid", "error_code": "ERROR_GENERIC"}
    ]
    router.post(f"{BASE}/lists/{LIST}").respond(200, json=ok_subscribe(errors=errors))
    segment = router.post(f"{SEGMENTS}/{TAG_ID}").respond(200, json=ok_segment())
    outcomes = make(http).add([ADA, BOB]).outcomes()
    assert [o.status for o in outcomes] == ["accepted", "rejected"]
    assert body(segment.calls.last) == {"members_to_add": ["ada@example.com"]}


def test_tag_add_errors_map_back_by_address(router: respx.Router, http: httpx.Client) -> None:
    carl = Record("carl@example.com", {"email": "carl@example.com"})
    tag_listing(router)
    router.post(f"{BASE}/lists/{LIST}").respond(200, json=ok_subscribe())
    errors = [
        {"email_addresses": ["ada@example.com"], "error": "ada@example.com is already a member"},
        {"email_addresses": ["BOB@example.com"], "error": "Email is in compliance state"},
        {"email_addresses": ["carl@example.com"], "error": "carl@example.com is not subscribed"},
    ]
    router.post(f"{SEGMENTS}/{TAG_ID}").respond(200, json=ok_segment(errors=errors))
    outcomes = make(http).add([ADA, BOB, carl]).outcomes()

    assert [o.status for o in outcomes] == ["accepted", "rejected", "rejected"]
    assert outcomes[1].reason == "mailchimp tag: Email is in compliance state"
    reason = outcomes[2].reason or ""
    assert "not in the audience (not subscribed)" in reason and "carl@" not in reason


def test_tag_remove_is_one_segment_call(router: respx.Router, http: httpx.Client) -> None:
    tag_listing(router)
    errors = [
        {"email_addresses": ["bob@example.com"], "error": "Email is not a member of this list"},
        {"email_addresses": ["carl@example.com"], "error": "Email is in compliance state"},
    ]
    segment = router.post(f"{SEGMENTS}/{TAG_ID}").respond(200, json=ok_segment(errors=errors))
    records = [
        Record("cust-1", destination_id="ada@example.com"),  # non-email key: state's address
        Record("bob@example.com"),
        Record("carl@example.com"),
    ]
    outcomes = make(http).remove(records).outcomes()

    assert body(segment.calls.last) == {
        "members_to_remove": ["ada@example.com", "bob@example.com", "carl@example.com"]
    }
    assert [o.status for o in outcomes] == ["accepted", "accepted", "rejected"]
    assert outcomes[2].reason == "mailchimp tag: Email is in compliance state"
    assert [c.request.method for c in router.calls] == ["GET", "POST"]  # lookup, no search


def test_tag_remove_of_a_hash_only_member_uses_the_member_call(
    router: respx.Router, http: httpx.Client
) -> None:
    """State written by tag_method: member keeps a hash; with a non-email key that is all
    there is, so that member goes through the per-member call."""
    tag_listing(router)
    segment = router.post(f"{SEGMENTS}/{TAG_ID}").respond(200, json=ok_segment())
    tags = router.post(url__regex=r"/tags$").respond(204)
    records = [Record("cust-1", destination_id=ADA_HASH), Record("bob@example.com")]
    outcomes = make(http).remove(records).outcomes()

    assert [o.status for o in outcomes] == ["accepted", "accepted"]
    assert body(segment.calls.last) == {"members_to_remove": ["bob@example.com"]}
    assert tags.calls.last.request.url.path == f"/3.0/lists/{LIST}/members/{ADA_HASH}/tags"
    assert body(tags.calls.last) == {"tags": [{"name": "vip", "status": "inactive"}]}


def test_tag_remove_without_any_address_is_rejected(
    router: respx.Router, http: httpx.Client
) -> None:
    outcomes = make(http).remove([Record("cust-1")]).outcomes()
    assert outcomes[0].status == "rejected" and "no email" in (outcomes[0].reason or "")
    assert not router.calls  # nothing to look up either


# -- tag per member (tag_method: member) -----------------------------------------------------


def test_member_method_tags_each_member(router: respx.Router, http: httpx.Client) -> None:
    subscribe = router.post(f"{BASE}/lists/{LIST}").respond(200, json=ok_subscribe())
    tags = router.post(url__regex=rf"{BASE}/lists/{LIST}/members/\w+/tags").respond(204)
    result = make(http, tag_method="member").add([ADA, BOB])

    assert subscribe.call_count == 1
    assert [c.request.url.path.split("/")[-2] for c in tags.calls] == [ADA_HASH, BOB_HASH]
    assert body(tags.calls[0]) == {"tags": [{"name": "vip", "status": "active"}]}
    assert [o.destination_id for o in result.outcomes()] == [ADA_HASH, BOB_HASH]
    assert not any("/segments" in str(c.request.url) for c in router.calls)


def test_member_method_skips_rejected_subscribers(router: respx.Router, http: httpx.Client) -> None:
    errors = [
        {"email_address": "bob@example.com", "error": "invalid", "error_code": "ERROR_GENERIC"}
    ]
    router.post(f"{BASE}/lists/{LIST}").respond(200, json=ok_subscribe(errors=errors))
    tags = router.post(url__regex=r"/tags$").respond(204)
    outcomes = make(http, tag_method="member").add([ADA, BOB]).outcomes()
    assert [o.status for o in outcomes] == ["accepted", "rejected"]
    assert tags.call_count == 1 and ADA_HASH in str(tags.calls[0].request.url)


def test_member_method_failure_rejects_that_member_only(
    router: respx.Router, http: httpx.Client
) -> None:
    router.post(f"{BASE}/lists/{LIST}").respond(200, json=ok_subscribe())
    router.post(url__regex=ADA_HASH).respond(
        400, json={"title": "Invalid Resource", "status": 400, "detail": "Tag name too long"}
    )
    router.post(url__regex=BOB_HASH).respond(404, json={"title": "Resource Not Found"})
    outcomes = make(http, tag_method="member").add([ADA, BOB]).outcomes()
    assert [o.status for o in outcomes] == ["rejected", "rejected"]
    assert "Tag name too long" in (outcomes[0].reason or "")
    assert "member not found" in (outcomes[1].reason or "")


def test_member_method_remove_uses_the_stored_hash_and_never_searches(
    router: respx.Router, http: httpx.Client
) -> None:
    gone = router.post(url__regex=BOB_HASH).respond(404, json={"title": "Resource Not Found"})
    tags = router.post(url__regex=r"/tags$").respond(204)
    # A non-email key: only the stored subscriber hash can address the member.
    records = [Record("cust-1", destination_id=ADA_HASH), Record("cust-2", destination_id=BOB_HASH)]
    outcomes = make(http, tag_method="member").remove(records).outcomes()

    assert [o.status for o in outcomes] == ["accepted", "accepted"]  # 404: not on the list
    assert body(tags.calls[0]) == {"tags": [{"name": "vip", "status": "inactive"}]}
    assert tags.calls[0].request.url.path == f"/3.0/lists/{LIST}/members/{ADA_HASH}/tags"
    assert gone.call_count == 1
    assert all(c.request.method == "POST" for c in router.calls)  # no GET/search


def test_member_method_remove_hashes_the_email_key(
    router: respx.Router, http: httpx.Client
) -> None:
    tags = router.post(url__regex=r"/tags$").respond(204)
    make(http, tag_method="member").remove([Record("Ada@Example.com")])
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


def test_check_reads_the_audience_and_looks_the_tag_up(
    router: respx.Router, http: httpx.Client
) -> None:
    route = router.get(f"{BASE}/lists/{LIST}").respond(200, json={"id": LIST, "name": "Main"})
    listing = tag_listing(router)
    make(http).check()
    assert route.calls.last.request.headers["Authorization"].startswith("Basic ")
    assert listing.calls.last.request.url.params["type"] == "static"


def test_check_passes_when_the_tag_does_not_exist_yet(
    router: respx.Router, http: httpx.Client
) -> None:
    router.get(f"{BASE}/lists/{LIST}").respond(200, json={"id": LIST})
    tag_listing(router, (3, "other"))
    make(http).check()  # the first add creates it; check never writes
    assert all(c.request.method == "GET" for c in router.calls)


def test_check_fails_when_tags_cannot_be_listed(router: respx.Router, http: httpx.Client) -> None:
    router.get(f"{BASE}/lists/{LIST}").respond(200, json={"id": LIST})
    router.get(SEGMENTS).respond(400, json={"title": "Invalid Resource"})
    with pytest.raises(ConfigError, match="tag"):
        make(http).check()
    make(http, tag_method="member").check()  # the member method needs no lookup


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


def _members(count: int) -> list[Record]:
    return [Record(f"m{i}@example.com", {"email": f"m{i}@example.com"}) for i in range(count)]


def _in_batches(connector: MailchimpConnector, operation: str, records: list[Record]) -> None:
    size = connector.batch_size
    for start in range(0, len(records), size):
        getattr(connector, operation)(records[start : start + size])


COUNT_CASES = {
    # tag found by one listing: batch subscribe + one segment call per 500 + 1 lookup
    "tag-segment-found": ({"tag": "vip"}, True, 20 + 20 + 1, 20 + 1),
    # tag missing: the lookup plus one creation; the removal run finds it
    "tag-segment-created": ({"tag": "vip"}, False, 20 + 20 + 2, 20 + 1),
    # batch subscribe + one tag call per member; removal one call per member
    "tag-member": ({"tag": "vip", "tag_method": "member"}, True, 20 + 10_000, 10_000),
    # batch subscribe + segment add; removal one segment call per 500
    "segment-id": ({"tag": None, "segment_id": 42}, True, 20 + 20, 20),
}


@pytest.mark.parametrize(
    ("options", "tag_exists", "adds", "removes"), COUNT_CASES.values(), ids=list(COUNT_CASES)
)
def test_requests_per_10000_members(
    router: respx.Router,
    http: httpx.Client,
    options: dict[str, Any],
    tag_exists: bool,
    adds: int,
    removes: int,
) -> None:
    router.post(f"{BASE}/lists/{LIST}").respond(200, json=ok_subscribe())
    router.post(url__regex=r"/tags$").respond(204)
    router.post(url__regex=rf"{SEGMENTS}/\d+$").respond(200, json=ok_segment())
    tags = [{"id": 3, "name": "other"}] + ([{"id": TAG_ID, "name": "vip"}] if tag_exists else [])
    router.get(SEGMENTS).mock(
        side_effect=lambda _: httpx.Response(200, json={"segments": tags, "total_items": len(tags)})
    )

    def create(request: httpx.Request) -> httpx.Response:
        tags.append({"id": TAG_ID, "name": json.loads(request.content)["name"]})
        return httpx.Response(200, json=tags[-1])

    router.post(SEGMENTS).mock(side_effect=create)
    records = _members(10_000)

    connector = make(http, **options)
    assert connector.batch_size == 500
    _in_batches(connector, "add", records)
    assert len(router.calls) == adds

    router.calls.clear()
    connector = make(http, **options)  # a later run: the tag is looked up again
    _in_batches(connector, "remove", records)
    assert len(router.calls) == removes


def test_example_mapping_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from syncer.mapping import load_file

    monkeypatch.setenv("MAILCHIMP_API_KEY", KEY)
    example = Path(__file__).resolve().parents[1] / "mappings" / "examples" / "mailchimp.yaml"
    sync = load_file(example)
    assert sync.connector_cls is MailchimpConnector and sync.definition.mode == "mirror"
    assert isinstance(sync.connector_config, MailchimpConfig)
    assert (sync.connector_config.tag, sync.connector_config.tag_method) == ("vip", "segment")
