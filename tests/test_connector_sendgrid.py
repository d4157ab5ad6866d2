"""The SendGrid connector as SendGrid sees it: async upsert jobs polled to completion, contact
ids resolved by email and kept, list removal by id, rate-limit headers, check(); every request
checked against SendGrid's OpenAPI documents."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest
import respx

from connectors.sendgrid import SendGridConfig, SendGridConnector
from syncer.connector import Record, SyncContext
from syncer.errors import AuthError, BatchRejected, ConfigError, RateLimited, TransientError
from syncer.http import DestinationClient
from syncer.ratelimit import AccountLimiter
from syncer.testing import engine_client
from tests.contract import spec

BASE = "https://api.sendgrid.com"
KEY = "SG.secret-key-0123456789"
LIST = "ca7a3796-e8a8-4029-9ccb-df8937940562"
LIST2 = "0b6a8a4c-3c56-4c53-9d8e-2f5c3c0f6d11"
CONTEXT = SyncContext("vip", "membership", ("email", "first_name", "plan"), run_id="r1")


def person(n: int) -> Record:
    email = f"user{n}@example.com"
    return Record(email, {"email": email, "first_name": f"Name{n}", "plan": "gold"})


def cid(email: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, email))


def make(http: httpx.Client, **options: Any) -> tuple[SendGridConnector, list[float]]:
    settings: dict[str, Any] = {"api_key": KEY, "list_ids": [LIST], **options}
    connector = SendGridConnector(SendGridConfig(**settings), CONTEXT, http)
    if isinstance(http, DestinationClient):
        http.classifier = connector.classify
        http.secrets = connector.secret_values()
    pauses: list[float] = []

    def pause(seconds: float) -> bool:
        pauses.append(seconds)
        return True

    connector.pause = pause
    return connector, pauses


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(assert_all_called=False, base_url=BASE)


def validate_all(router: respx.Router) -> None:
    contacts, lists = spec("sendgrid_contacts.json"), spec("sendgrid_lists.json")
    for call in router.calls:
        path = call.request.url.path
        (lists if path.startswith("/v3/marketing/lists") else contacts).validate(call.request)


def body(request: httpx.Request) -> Any:
    return json.loads(request.content)


class Jobs:
    """respx-side SendGrid: PUT -> 202 job, job pending then a final status, email search."""

    def __init__(
        self, router: respx.Router, statuses: list[str], missing: frozenset[str] = frozenset()
    ) -> None:
        self.statuses = statuses
        self.missing = missing
        self.searches: list[list[str]] = []
        router.put("/v3/marketing/contacts").respond(202, json={"job_id": "job-1"})
        router.get("/v3/marketing/contacts/imports/job-1").mock(side_effect=self.poll)
        router.post("/v3/marketing/contacts/search/emails").mock(side_effect=self.search)

    def poll(self, request: httpx.Request) -> httpx.Response:
        status = self.statuses.pop(0)
        results = {"requested_count": 3, "errored_count": len(self.missing)}
        return httpx.Response(200, json={"id": "job-1", "status": status, "results": results})

    def search(self, request: httpx.Request) -> httpx.Response:
        emails = body(request)["emails"]
        self.searches.append(emails)
        result: dict[str, Any] = {}
        for email in emails:
            if email in self.missing:
                result[email] = {"error": "contact not found"}
            else:
                result[email] = {"contact": {"id": cid(email), "email": email}}
        if all(e in self.missing for e in emails):
            return httpx.Response(404, json={"errors": [{"message": "no contacts found"}]})
        return httpx.Response(200, json={"result": result})


def test_add_upserts_onto_the_list_polls_the_job_and_keeps_contact_ids(
    router: respx.Router, http: httpx.Client
) -> None:
    jobs = Jobs(router, ["pending", "pending", "completed"])
    connector, pauses = make(http, custom_field_ids={"plan": "e1_T"})
    ada = Record("Ada@Example.com", {"first_name": "Ada", "plan": "gold", "last_name": None})
    result = connector.add([ada, person(2)])

    put = router.calls[0].request
    assert put.method == "PUT" and put.url == f"{BASE}/v3/marketing/contacts"
    assert put.headers["Authorization"] == f"Bearer {KEY}"
    assert body(put) == {
        "list_ids": [LIST],
        "contacts": [
            {"first_name": "Ada", "email": "Ada@Example.com", "custom_fields": {"e1_T": "gold"}},
            {
                "email": "user2@example.com",
                "first_name": "Name2",
                "custom_fields": {"e1_T": "gold"},
            },
        ],
    }
    assert pauses == [2.0, 4.0, 8.0]
    assert jobs.searches == [["ada@example.com", "user2@example.com"]]
    assert [(o.status, o.destination_id) for o in result.outcomes()] == [
        ("accepted", cid("ada@example.com")),
        ("accepted", cid("user2@example.com")),
    ]
    validate_all(router)


def test_update_sends_no_list_and_skips_search_for_known_ids(
    router: respx.Router, http: httpx.Client
) -> None:
    jobs = Jobs(router, ["completed"])
    connector, _ = make(http)
    known = Record("user1@example.com", {"first_name": "New"}, "known-id")
    result = connector.update([known, person(2)])
    assert "list_ids" not in body(router.calls[0].request)
    assert jobs.searches == [["user2@example.com"]]
    assert [o.destination_id for o in result.outcomes()] == ["known-id", cid("user2@example.com")]
    validate_all(router)


def test_contacts_the_errored_job_did_not_save_are_rejected(
    router: respx.Router, http: httpx.Client
) -> None:
    Jobs(router, ["errored"], missing={"user2@example.com"})
    connector, _ = make(http)
    outcomes = {o.key: o for o in connector.add([person(1), person(2), person(3)]).outcomes()}
    assert outcomes["user2@example.com"].status == "rejected"
    assert outcomes["user2@example.com"].reason == (
        "SendGrid import job errored (1 of 3 contacts errored); contact not saved"
    )
    assert outcomes["user1@example.com"].status == "accepted"


def test_completed_job_but_contact_not_searchable_yet_fails_for_a_resend(
    router: respx.Router, http: httpx.Client
) -> None:
    Jobs(router, ["completed"], missing={"user1@example.com"})
    connector, _ = make(http)
    outcomes = connector.add([person(1)]).outcomes()
    assert [(o.status, o.reason) for o in outcomes] == [
        ("failed", "contact not found by email after the import job")
    ]


def test_search_goes_100_emails_a_call(router: respx.Router, http: httpx.Client) -> None:
    jobs = Jobs(router, ["completed"])
    connector, _ = make(http)
    connector.add([person(n) for n in range(250)])
    assert [len(s) for s in jobs.searches] == [100, 100, 50]


def test_validation_errors_reject_the_named_contacts_and_send_the_rest(
    router: respx.Router, http: httpx.Client
) -> None:
    refusal = {
        "errors": [{"field": "contacts[1].email", "message": "user2@example.com is not valid"}]
    }
    router.put("/v3/marketing/contacts").mock(
        side_effect=[
            httpx.Response(400, json=refusal),
            httpx.Response(202, json={"job_id": "job-1"}),
        ]
    )
    router.get("/v3/marketing/contacts/imports/job-1").respond(200, json={"status": "completed"})
    router.post("/v3/marketing/contacts/search/emails").mock(
        side_effect=lambda r: httpx.Response(
            200, json={"result": {e: {"contact": {"id": cid(e)}} for e in body(r)["emails"]}}
        )
    )
    connector, _ = make(http)
    outcomes = {o.key: o for o in connector.add([person(1), person(2), person(3)]).outcomes()}
    assert outcomes["user2@example.com"].status == "rejected"
    assert outcomes["user2@example.com"].reason == "contacts[1].email: *** is not valid"
    resent = body(router.calls[1].request)["contacts"]
    assert [c["email"] for c in resent] == ["user1@example.com", "user3@example.com"]
    assert outcomes["user3@example.com"].status == "accepted"
    validate_all(router)


def test_unplaceable_validation_error_rejects_the_batch(
    router: respx.Router, http: httpx.Client
) -> None:
    router.put("/v3/marketing/contacts").respond(
        400, json={"errors": [{"field": "list_ids", "message": "list does not exist"}]}
    )
    connector, _ = make(http)
    with pytest.raises(BatchRejected, match="list_ids: list does not exist"):
        connector.add([person(1)])


def test_job_timeout_and_stop(router: respx.Router, http: httpx.Client) -> None:
    Jobs(router, ["pending"] * 20)
    connector, pauses = make(http, job_timeout=10)
    with pytest.raises(TransientError, match="not finished after 6s"):
        connector.add([person(1)])
    assert pauses == [2.0, 4.0]
    stopping, _ = make(http)
    stopping.pause = lambda seconds: False
    with pytest.raises(TransientError, match="stopped"):
        stopping.add([person(1)])


def test_429_while_polling_waits_instead_of_upserting_again(
    router: respx.Router, http: httpx.Client
) -> None:
    jobs = Jobs(router, ["completed"])
    replies = iter([httpx.Response(429, headers={"Retry-After": "5"})])
    router.get("/v3/marketing/contacts/imports/job-1").mock(
        side_effect=lambda r: next(replies, None) or jobs.poll(r)
    )
    connector, pauses = make(http)
    assert [o.status for o in connector.add([person(1)]).outcomes()] == ["accepted"]
    assert pauses == [2.0, 5.0]
    assert sum(c.request.method == "PUT" for c in router.calls) == 1


# -- removal -----------------------------------------------------------------------------------


def test_remove_uses_kept_ids_100_a_call_on_every_list(
    router: respx.Router, http: httpx.Client
) -> None:
    router.delete(path__regex=r"/v3/marketing/lists/[^/]+/contacts").respond(
        202, json={"job_id": "rm-1"}
    )
    records = [Record(f"u{n}@example.com", {}, cid(f"u{n}")) for n in range(150)]
    connector, _ = make(http, list_ids=[LIST, LIST2])
    result = connector.remove(records)
    calls = [c.request for c in router.calls]
    assert [c.url.path for c in calls] == [f"/v3/marketing/lists/{LIST}/contacts"] * 2 + [
        f"/v3/marketing/lists/{LIST2}/contacts"
    ] * 2
    assert calls[0].url.params["contact_ids"] == ",".join(
        r.destination_id or "" for r in records[:100]
    )
    assert not any("search" in c.url.path for c in calls)
    assert {o.status for o in result.outcomes()} == {"accepted"}
    validate_all(router)


def test_remove_without_kept_id_searches_by_email_once(
    router: respx.Router, http: httpx.Client
) -> None:
    jobs = Jobs(router, [], missing=frozenset({"never@example.com"}))
    route = router.delete(f"/v3/marketing/lists/{LIST}/contacts").respond(202, json={"job_id": "r"})
    connector, _ = make(http)
    records = [
        Record("a@example.com", {}, cid("a")),
        Record("Old@example.com"),
        Record("never@example.com"),
    ]
    result = connector.remove(records)
    assert jobs.searches == [["old@example.com", "never@example.com"]]
    contact_ids = route.calls.last.request.url.params["contact_ids"]
    assert contact_ids == f"{cid('a')},{cid('old@example.com')}"
    assert {o.status for o in result.outcomes()} == {"accepted"}
    validate_all(router)


def test_remove_404_for_a_vanished_contact_still_removes_the_others(
    router: respx.Router, http: httpx.Client
) -> None:
    gone = cid("gone")

    def delete(request: httpx.Request) -> httpx.Response:
        if gone in request.url.params["contact_ids"].split(","):
            return httpx.Response(404, json={"errors": [{"message": "contact not found"}]})
        return httpx.Response(202, json={"job_id": "rm"})

    router.delete(f"/v3/marketing/lists/{LIST}/contacts").mock(side_effect=delete)
    router.get(f"/v3/marketing/lists/{LIST}").respond(200, json={"id": LIST, "name": "VIP"})
    connector, _ = make(http)
    records = [Record("a@example.com", {}, cid("a")), Record("g@example.com", {}, gone)]
    assert {o.status for o in connector.remove(records).outcomes()} == {"accepted"}
    singles = [c.request.url.params.get("contact_ids") for c in router.calls[2:]]
    assert singles == [cid("a"), gone]


def test_remove_from_a_missing_list_is_a_config_error(
    router: respx.Router, http: httpx.Client
) -> None:
    router.delete(f"/v3/marketing/lists/{LIST}/contacts").respond(404, json={"errors": []})
    router.get(f"/v3/marketing/lists/{LIST}").respond(404, json={"errors": []})
    connector, _ = make(http)
    with pytest.raises(ConfigError, match="list_ids"):
        connector.remove([Record("a@example.com", {}, cid("a"))])


# -- rate limits -------------------------------------------------------------------------------


def clocked() -> tuple[AccountLimiter, list[float]]:
    now = [time.monotonic()]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    return AccountLimiter([], 2, clock=lambda: now[0], sleep=sleep), slept


def test_spent_ratelimit_headers_hold_until_reset(router: respx.Router) -> None:
    limiter, slept = clocked()
    reset = str(int(time.time()) + 30)
    headers = {"X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}
    router.delete(f"/v3/marketing/lists/{LIST}/contacts").respond(202, headers=headers, json={})
    with engine_client(router, limiter=limiter) as client:
        connector, _ = make(client)
        connector.remove([Record("a@example.com", {}, cid("a"))])
        assert limiter.cooldowns == 1
        connector.remove([Record("b@example.com", {}, cid("b"))])
    assert 28 <= sum(slept) <= 31


def test_429_without_retry_after_waits_for_reset(router: respx.Router) -> None:
    limiter, _ = clocked()
    reset = str(int(time.time()) + 20)
    router.put("/v3/marketing/contacts").respond(
        429,
        headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset},
        json={"errors": [{"field": None, "message": "too many requests"}]},
    )
    with engine_client(router, limiter=limiter) as client:
        connector, _ = make(client)
        with pytest.raises(RateLimited):
            connector.add([person(1)])
    assert limiter.cooldowns >= 1


def test_429_with_retry_after(router: respx.Router, http: httpx.Client) -> None:
    router.put("/v3/marketing/contacts").respond(
        429, headers={"Retry-After": "9"}, json={"errors": [{"message": "too many requests"}]}
    )
    connector, _ = make(http)
    with pytest.raises(RateLimited) as caught:
        connector.add([person(1)])
    assert caught.value.retry_after == 9


# -- config and check() ------------------------------------------------------------------------


def test_list_ids_must_be_uuids() -> None:
    with pytest.raises(ValueError, match="UUID"):
        SendGridConfig(api_key=KEY, list_ids=["vip-list"])  # type: ignore[arg-type]


def test_check_reads_each_list(router: respx.Router, http: httpx.Client) -> None:
    router.get(f"/v3/marketing/lists/{LIST}").respond(200, json={"id": LIST, "name": "VIP"})
    make(http)[0].check()
    validate_all(router)


@pytest.mark.parametrize(
    ("reply", "error", "message"),
    [
        (httpx.Response(401, json={"errors": [{"message": "bad key"}]}), AuthError, "credentials"),
        (httpx.Response(404, json={"errors": [{"message": "not found"}]}), ConfigError, "list_ids"),
        (httpx.ConnectTimeout("slow"), TransientError, "api.sendgrid.com"),
    ],
)
def test_check_tells_token_list_and_network_apart(
    router: respx.Router, http: httpx.Client, reply: Any, error: type[Exception], message: str
) -> None:
    router.get(f"/v3/marketing/lists/{LIST}").mock(side_effect=[reply])
    with pytest.raises(error, match=message) as caught:
        make(http)[0].check()
    assert KEY not in str(caught.value)
    if error is ConfigError:
        assert not isinstance(caught.value, AuthError)


def test_requests_per_10000_members_added(router: respx.Router) -> None:
    """10,000 adds at the default batch size (1,000): PUT, one poll, 10 searches per batch."""
    router.put("/v3/marketing/contacts").respond(202, json={"job_id": "job-1"})
    router.get("/v3/marketing/contacts/imports/job-1").respond(200, json={"status": "completed"})
    router.post("/v3/marketing/contacts/search/emails").mock(
        side_effect=lambda r: httpx.Response(
            200, json={"result": {e: {"contact": {"id": cid(e)}} for e in body(r)["emails"]}}
        )
    )
    records = [person(n) for n in range(10_000)]
    with engine_client(router) as client:
        connector, _ = make(client)
        size = connector.batch_size
        ids = [
            o.destination_id
            for start in range(0, len(records), size)
            for o in connector.add(records[start : start + size]).outcomes()
        ]
    assert len(set(ids)) == 10_000 and None not in ids
    assert len(router.calls) == 10 * (1 + 1 + 10)


def test_requests_per_10000_members_removed_and_updated(router: respx.Router) -> None:
    """Removal: 100 ids per DELETE. Updates with kept ids: PUT + poll, no search."""
    router.delete(f"/v3/marketing/lists/{LIST}/contacts").respond(202, json={"job_id": "r"})
    router.put("/v3/marketing/contacts").respond(202, json={"job_id": "job-1"})
    router.get("/v3/marketing/contacts/imports/job-1").respond(200, json={"status": "completed"})
    records = [Record(r.key, r.fields, cid(r.key)) for r in map(person, range(10_000))]
    with engine_client(router) as client:
        connector, _ = make(client)
        size = connector.batch_size
        for start in range(0, len(records), size):
            connector.remove(records[start : start + size])
        assert len(router.calls) == 100
        for start in range(0, len(records), size):
            connector.update(records[start : start + size])
    assert len(router.calls) == 100 + 20
