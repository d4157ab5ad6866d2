"""The Salesforce connector against respx: sObject Collections upsert and CampaignMember
insert/delete shapes from the reference (section 2), per-item ``success``/``errors``,
DUPLICATE_VALUE as "already a member", Sforce-Limit-Info, 403 REQUEST_LIMIT_EXCEEDED and check().

Salesforce publishes no OpenAPI document in ../shared/specs, so request shapes are asserted
field by field from ../shared/reference/destinations.md.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx
from pydantic import SecretStr, ValidationError

from connectors.salesforce import SalesforceConfig, SalesforceConnector
from syncer.connector import Record, SyncContext
from syncer.errors import AuthError, ConfigError, RateLimited, TransientError
from syncer.http import DestinationClient
from syncer.testing import FakeClock

BASE = "https://acme.my.salesforce.com"
TOKEN = "00Dxx0000001gPL!AQ4AQFakeAccessToken"
API = f"{BASE}/services/data/v53.0"
UPSERT = f"{API}/composite/sobjects/Contact/Warehouse_Id__c"
COLLECTIONS = f"{API}/composite/sobjects"
CAMPAIGN = "701xx000000AbCdAAK"
C1, C2 = "003xx000001AaaaAAA", "003xx000001BbbbAAA"
M1, M2 = "00vxx000001AaaaAAA", "00vxx000001BbbbAAA"
ADA = Record("c-1", {"Email": "ada@example.com", "LastName": "Lovelace"})
BOB = Record("c-2", {"Email": "bob@example.com", "LastName": None})


@pytest.fixture
def http(engine_http: httpx.Client) -> httpx.Client:
    """The engine's client only (the kit's, its limiter on the fake clock)."""
    return engine_http


def make(http: httpx.Client, mode: str = "membership", **options: Any) -> SalesforceConnector:
    settings: dict[str, Any] = {
        "base_url": BASE,
        "access_token": TOKEN,
        "external_id_field": "Warehouse_Id__c",
        "campaign_id": CAMPAIGN,
    }
    settings.update(options)
    context = SyncContext("vip", mode, ("Email", "LastName"), "r1")
    connector = SalesforceConnector(SalesforceConnector.config_model(**settings), context, http)
    if isinstance(http, DestinationClient):  # wired as the engine does
        http.classifier = connector.classify
        http.secrets = connector.secret_values()
    return connector


def ok(record_id: str, created: bool = True) -> dict[str, Any]:
    return {"id": record_id, "success": True, "errors": [], "created": created}


def failed(code: str, message: str, fields: list[str] | None = None) -> dict[str, Any]:
    error = {"statusCode": code, "message": message, "fields": fields or []}
    return {"success": False, "created": False, "errors": [error]}


def body_of(router: respx.Router, index: int) -> Any:
    return json.loads(router.calls[index].request.content)


# -- upsert ------------------------------------------------------------------------------


def test_upsert_request_shape(router: respx.Router, http: httpx.Client) -> None:
    router.patch(UPSERT).respond(200, json=[ok(C1), ok(C2, created=False)])
    out = make(http, mode="upsert", campaign_id=None).update([ADA, BOB]).outcomes()

    request = router.calls[0].request
    assert request.method == "PATCH" and str(request.url) == UPSERT
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    assert body_of(router, 0) == {
        "allOrNone": False,
        "records": [
            {
                "attributes": {"type": "Contact"},
                "Email": "ada@example.com",
                "LastName": "Lovelace",
                "Warehouse_Id__c": "c-1",
            },
            {
                "attributes": {"type": "Contact"},
                "Email": "bob@example.com",
                "LastName": None,
                "Warehouse_Id__c": "c-2",
            },
        ],
    }
    assert [(o.status, o.destination_id) for o in out] == [("accepted", C1), ("accepted", C2)]
    assert len(router.calls) == 1  # no campaign: no member insert


def test_lead_and_version_and_external_id_source(router: respx.Router, http: httpx.Client) -> None:
    url = f"{BASE}/services/data/v60.0/composite/sobjects/Lead/Ext__c"
    router.patch(url).respond(200, json=[ok("00Qxx000001AaaaAAA")])
    record = Record("k1", {"ext": "E-9", "LastName": "L", "Company": "Acme"})
    make(
        http,
        mode="upsert",
        campaign_id=None,
        sobject="Lead",
        api_version="v60.0",
        external_id_field="Ext__c",
        external_id_source="ext",
    ).update([record])
    sent = body_of(router, 0)["records"][0]
    assert sent["attributes"] == {"type": "Lead"} and sent["Ext__c"] == "E-9"


def test_per_item_errors_reject_only_their_records(
    router: respx.Router, http: httpx.Client
) -> None:
    router.patch(UPSERT).respond(
        200,
        json=[
            ok(C1),
            failed(
                "REQUIRED_FIELD_MISSING", "Required fields are missing: [LastName]", ["LastName"]
            ),
        ],
    )
    router.post(COLLECTIONS).respond(200, json=[ok(M1)])
    ada, bob = make(http).add([ADA, BOB]).outcomes()
    assert ada.status == "accepted" and ada.destination_id == f"{C1}:{M1}"
    assert bob.status == "rejected"
    assert bob.reason == (
        "REQUIRED_FIELD_MISSING: Required fields are missing: [LastName] (fields LastName)"
    )
    assert body_of(router, 1)["records"] == [
        {"attributes": {"type": "CampaignMember"}, "CampaignId": CAMPAIGN, "ContactId": C1}
    ]


def test_missing_result_is_failed(router: respx.Router, http: httpx.Client) -> None:
    router.patch(UPSERT).respond(200, json=[ok(C1)])
    _, bob = make(http, mode="upsert", campaign_id=None).update([ADA, BOB]).outcomes()
    assert bob.status == "failed"


def test_update_keeps_the_campaign_member_id(router: respx.Router, http: httpx.Client) -> None:
    router.patch(UPSERT).respond(200, json=[ok(C1, created=False)])
    member = Record("c-1", ADA.fields, f"{C1}:{M1}")
    out = make(http, mode="mirror").update([member]).outcomes()
    assert out[0].destination_id == f"{C1}:{M1}"
    assert len(router.calls) == 1


def test_reason_hides_record_values(router: respx.Router, http: httpx.Client) -> None:
    router.patch(UPSERT).respond(
        200, json=[failed("INVALID_EMAIL_ADDRESS", "Email: invalid email address: ada@example.com")]
    )
    out = make(http, mode="upsert", campaign_id=None).update([ADA]).outcomes()
    assert out[0].reason == "INVALID_EMAIL_ADDRESS: Email: invalid email address: ***"


def test_more_than_200_is_refused_by_config() -> None:
    with pytest.raises(ValidationError):
        SalesforceConfig(
            base_url=BASE,
            access_token=SecretStr(TOKEN),
            external_id_field="X__c",
            batch_size=201,
        )


# -- campaign members ------------------------------------------------------------------


def test_member_insert_shape_with_status(router: respx.Router, http: httpx.Client) -> None:
    router.patch(UPSERT).respond(200, json=[ok(C1)])
    router.post(COLLECTIONS).respond(200, json=[ok(M1)])
    make(http, member_status="Sent").add([ADA])
    request = router.calls[1].request
    assert request.method == "POST" and str(request.url) == COLLECTIONS
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert body_of(router, 1) == {
        "allOrNone": False,
        "records": [
            {
                "attributes": {"type": "CampaignMember"},
                "CampaignId": CAMPAIGN,
                "ContactId": C1,
                "Status": "Sent",
            }
        ],
    }


def test_duplicate_value_is_success_and_resolved_by_one_query(
    router: respx.Router, http: httpx.Client
) -> None:
    router.patch(UPSERT).respond(200, json=[ok(C1, created=False), ok(C2)])
    router.post(COLLECTIONS).respond(
        200,
        json=[
            failed("DUPLICATE_VALUE", "Already a campaign member."),
            ok(M2),
        ],
    )
    query = router.get(f"{API}/query").respond(
        200,
        json={
            "totalSize": 1,
            "done": True,
            "records": [{"attributes": {"type": "CampaignMember"}, "Id": M1, "ContactId": C1}],
        },
    )
    out = make(http).add([ADA, BOB]).outcomes()
    assert [(o.status, o.destination_id) for o in out] == [
        ("accepted", f"{C1}:{M1}"),
        ("accepted", f"{C2}:{M2}"),
    ]
    assert query.call_count == 1
    soql = parse_qs(urlsplit(str(query.calls[0].request.url)).query)["q"][0]
    assert soql == (
        f"SELECT Id, ContactId FROM CampaignMember WHERE CampaignId = '{CAMPAIGN}'"
        f" AND ContactId IN ('{C1}')"  # only the duplicate
    )


def test_duplicate_with_known_member_id_needs_no_query(
    router: respx.Router, http: httpx.Client
) -> None:
    router.patch(UPSERT).respond(200, json=[ok(C1, created=False)])
    router.post(COLLECTIONS).respond(200, json=[failed("DUPLICATE_VALUE", "Already a member.")])
    out = make(http).add([Record("c-1", ADA.fields, f"{C1}:{M1}")]).outcomes()
    assert out[0].destination_id == f"{C1}:{M1}"
    assert len(router.calls) == 2


def test_other_member_errors_reject(router: respx.Router, http: httpx.Client) -> None:
    router.patch(UPSERT).respond(200, json=[ok(C1)])
    router.post(COLLECTIONS).respond(
        200, json=[failed("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", "Status: bad value")]
    )
    out = make(http).add([ADA]).outcomes()
    assert out[0].status == "rejected"
    assert out[0].reason == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST: Status: bad value"


def test_lead_members_use_lead_id(router: respx.Router, http: httpx.Client) -> None:
    router.patch(f"{API}/composite/sobjects/Lead/Warehouse_Id__c").respond(
        200, json=[ok("00Qxx000001AaaaAAA")]
    )
    router.post(COLLECTIONS).respond(200, json=[ok(M1)])
    make(http, sobject="Lead").add([ADA])
    assert body_of(router, 1)["records"][0]["LeadId"] == "00Qxx000001AaaaAAA"


def test_remove_deletes_stored_member_ids_without_a_query(
    router: respx.Router, http: httpx.Client
) -> None:
    route = router.delete(COLLECTIONS).respond(
        200,
        json=[
            {"id": M1, "success": True, "errors": []},
            {
                "id": M2,
                "success": False,
                "errors": [{"statusCode": "ENTITY_IS_DELETED", "message": "entity is deleted"}],
            },
        ],
    )
    records = [Record("c-1", {}, f"{C1}:{M1}"), Record("c-2", {}, f"{C2}:{M2}")]
    out = make(http).remove(records).outcomes()
    assert len(router.calls) == 1 and route.called
    query = parse_qs(urlsplit(str(route.calls[0].request.url)).query)
    assert query == {"ids": [f"{M1},{M2}"], "allOrNone": ["false"]}
    assert [o.status for o in out] == ["accepted", "accepted"]


def test_a_member_whose_add_was_never_confirmed_is_looked_up_and_removed(
    router: respx.Router, http: httpx.Client
) -> None:
    """No CampaignMember id was stored (the add's answer never arrived): Salesforce may have
    made the contact and the member anyway. They are found by the contact id when it was
    stored, else by the external id (the key), and deleted; one that is not there is done."""
    c3, c4, m4 = "003xx000001CcccAAA", "003xx000001DdddAAA", "00vxx000001DdddAAA"
    queries: list[str] = []

    def query(request: httpx.Request) -> httpx.Response:
        soql = parse_qs(urlsplit(str(request.url)).query)["q"][0]
        queries.append(soql)
        if soql.startswith("SELECT Id, Warehouse_Id__c FROM Contact"):
            rows = [{"Id": c4, "Warehouse_Id__c": "c-4"}]
        else:
            rows = [{"Id": m4, "ContactId": c4}]
        return httpx.Response(200, json={"totalSize": len(rows), "done": True, "records": rows})

    router.get(f"{API}/query").mock(side_effect=query)
    delete = router.delete(COLLECTIONS).respond(200, json=[{"id": m4, "success": True}])
    records = [
        Record("c-3", {}, c3),  # upserted, never confirmed as a member: it is not one
        Record("c-4", {}, None),  # nothing stored: found by its external id, and a member
        Record("it's\\odd", {}, None),  # quoted safely, and not in Salesforce at all
    ]
    out = make(http).remove(records).outcomes()

    assert queries[0] == (
        "SELECT Id, Warehouse_Id__c FROM Contact WHERE Warehouse_Id__c IN ('c-4','it\\'s\\\\odd')"
    )
    assert queries[1] == (
        f"SELECT Id, ContactId FROM CampaignMember WHERE CampaignId = '{CAMPAIGN}'"
        f" AND ContactId IN ('{c3}','{c4}')"
    )
    query_ids = parse_qs(urlsplit(str(delete.calls[0].request.url)).query)["ids"]
    assert query_ids == [m4]
    assert [o.status for o in out] == ["accepted", "accepted", "accepted"]


def test_without_a_stored_id_or_an_external_id_key_a_removal_says_what_to_do(
    router: respx.Router, http: httpx.Client
) -> None:
    connector = make(http, external_id_source="Email")
    (outcome,) = connector.remove([Record("ada@example.com", {}, None)]).outcomes()
    assert router.calls.call_count == 0
    assert outcome.status == "rejected"
    assert outcome.reason is not None and "remove it from the campaign" in outcome.reason


def test_remove_error_rejects(router: respx.Router, http: httpx.Client) -> None:
    router.delete(COLLECTIONS).respond(
        200,
        json=[
            {
                "id": M1,
                "success": False,
                "errors": [{"statusCode": "INSUFFICIENT_ACCESS", "message": "no access"}],
            }
        ],
    )
    out = make(http).remove([Record("c-1", {}, f"{C1}:{M1}")]).outcomes()
    assert out[0].status == "rejected" and out[0].reason == "INSUFFICIENT_ACCESS: no access"


def test_membership_mode_needs_a_campaign(http: httpx.Client) -> None:
    with pytest.raises(ConfigError, match="campaign_id is required"):
        make(http, campaign_id=None).open()


# -- rate limits -------------------------------------------------------------------------


def test_request_limit_exceeded_is_rate_limiting_not_auth(
    router: respx.Router, http: httpx.Client
) -> None:
    router.patch(UPSERT).respond(
        403,
        json=[{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}],
    )
    with pytest.raises(RateLimited):
        make(http, mode="upsert").update([ADA])


def test_other_403_is_auth(router: respx.Router, http: httpx.Client) -> None:
    router.patch(UPSERT).respond(
        403, json=[{"message": "no", "errorCode": "INSUFFICIENT_ACCESS_OR_READONLY"}]
    )
    with pytest.raises(AuthError):
        make(http, mode="upsert").update([ADA])


def test_spent_allocation_in_sforce_limit_info_slows_down(
    router: respx.Router, http: httpx.Client, clock: FakeClock
) -> None:
    router.patch(UPSERT).mock(
        side_effect=[
            httpx.Response(
                200, json=[ok(C1)], headers={"Sforce-Limit-Info": "api-usage=99999/100000"}
            ),
            httpx.Response(
                200,
                json=[ok(C1)],
                headers={"Sforce-Limit-Info": "api-usage=100000/100000; api-bursts=1/750"},
            ),
            httpx.Response(200, json=[ok(C1)]),
        ]
    )
    connector = make(http, mode="upsert")
    connector.update([ADA])
    connector.update([ADA])
    assert clock.slept == []
    connector.update([ADA])
    assert sum(clock.slept) == pytest.approx(300.0, abs=0.01)


# -- check -------------------------------------------------------------------------------


DESCRIBE = f"{API}/sobjects/Contact/describe"
DESCRIBED = {"name": "Contact", "fields": [{"name": "Warehouse_Id__c", "externalId": True}]}


def test_check_describes_and_reads_the_campaign(router: respx.Router, http: httpx.Client) -> None:
    router.get(DESCRIBE).respond(200, json=DESCRIBED)
    campaign = router.get(f"{API}/sobjects/Campaign/{CAMPAIGN}").respond(200, json={"Id": CAMPAIGN})
    make(http).check()
    assert campaign.called
    assert router.calls[0].request.headers["Authorization"] == f"Bearer {TOKEN}"


def test_check_bad_token(router: respx.Router, http: httpx.Client) -> None:
    router.get(DESCRIBE).respond(
        401, json=[{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    )
    with pytest.raises(AuthError) as caught:
        make(http).check()
    assert TOKEN not in str(caught.value)


def test_check_wrong_campaign(router: respx.Router, http: httpx.Client) -> None:
    router.get(DESCRIBE).respond(200, json=DESCRIBED)
    router.get(f"{API}/sobjects/Campaign/{CAMPAIGN}").respond(
        404, json=[{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]
    )
    with pytest.raises(ConfigError, match="campaign_id") as caught:
        make(http).check()
    assert not isinstance(caught.value, AuthError)


def test_check_wrong_external_id_field(router: respx.Router, http: httpx.Client) -> None:
    router.get(DESCRIBE).respond(200, json={"fields": [{"name": "Email", "externalId": False}]})
    with pytest.raises(ConfigError, match="external_id_field"):
        make(http).check()


def test_check_network_failure(router: respx.Router, http: httpx.Client) -> None:
    router.get(DESCRIBE).mock(side_effect=httpx.ConnectTimeout("slow"))
    with pytest.raises(TransientError):
        make(http).check()


# -- cost --------------------------------------------------------------------------------


def test_requests_per_10000_members_added(router: respx.Router, http: httpx.Client) -> None:
    """Membership mode: one upsert and one CampaignMember insert per 200 records."""

    def answer(prefix: str) -> Any:
        def reply(request: httpx.Request) -> httpx.Response:
            n = len(json.loads(request.content)["records"])
            return httpx.Response(200, json=[ok(f"{prefix}{i:015d}") for i in range(n)])

        return reply

    upsert = router.patch(UPSERT).mock(side_effect=answer("003"))
    insert = router.post(COLLECTIONS).mock(side_effect=answer("00v"))
    connector = make(http)
    members = [Record(f"w{i}", {"LastName": f"L{i}"}) for i in range(10_000)]
    for start in range(0, len(members), connector.batch_size):
        connector.add(members[start : start + connector.batch_size])
    assert connector.batch_size == 200
    assert (upsert.call_count, insert.call_count) == (50, 50)
    assert len(router.calls) == 100
