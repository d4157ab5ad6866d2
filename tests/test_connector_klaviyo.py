"""The Klaviyo connector as Klaviyo sees it: request shapes (checked against Klaviyo's OpenAPI
document), per-record outcomes from profile-import and bulk import jobs, list membership by
profile id, rate-limit signals and check()."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import respx

from connectors.klaviyo import KlaviyoConfig, KlaviyoConnector
from syncer.connector import Record, SyncContext
from syncer.errors import AuthError, BatchRejected, ConfigError, RateLimited, TransientError
from syncer.http import DestinationClient
from syncer.ratelimit import AccountLimiter
from syncer.testing import engine_client
from tests.contract import spec

BASE = "https://a.klaviyo.com"
KEY = "pk_live_0123456789abcdef"
LIST = "VRgFBd"
CONTEXT = SyncContext("vip", "membership", ("email", "first_name", "ltv"), run_id="r1")


def person(n: int, **fields: Any) -> Record:
    email = f"user{n}@example.com"
    return Record(email, {"email": email, "first_name": f"Name{n}", "ltv": n, **fields})


def make(http: httpx.Client, **options: Any) -> tuple[KlaviyoConnector, list[float]]:
    settings: dict[str, Any] = {"api_key": KEY, "list_id": LIST, **options}
    connector = KlaviyoConnector(KlaviyoConfig(**settings), CONTEXT, http)
    if isinstance(http, DestinationClient):  # what the engine wires up for every run
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
    """Every request the connector built is valid for Klaviyo's OpenAPI document."""
    contract = spec("klaviyo_stable.json")
    for call in router.calls:
        contract.validate(call.request)


def body(request: httpx.Request) -> Any:
    return json.loads(request.content)


def jsonapi_error(code: str, detail: str, status: int = 400) -> httpx.Response:
    error = {"id": "e-1", "code": code, "title": "Invalid input.", "detail": detail}
    error["source"] = {"pointer": "/data/attributes/email"}  # type: ignore[assignment]
    return httpx.Response(status, json={"errors": [error]})


def imported(request: httpx.Request) -> httpx.Response:
    email = body(request)["data"]["attributes"]["email"]
    profile_id = "01P" + email.split("@")[0].upper()
    return httpx.Response(201, json={"data": {"type": "profile", "id": profile_id}})


# -- small batches: profile-import + list add ------------------------------------------------


def test_small_add_imports_each_profile_then_adds_ids_to_list(
    router: respx.Router, http: httpx.Client
) -> None:
    router.post("/api/profile-import").mock(side_effect=imported)
    router.post(f"/api/lists/{LIST}/relationships/profiles").respond(204)
    connector, _ = make(http)
    ada = Record("ada@example.com", {"first_name": "Ada", "ltv": 120, "location.city": "Paris"})
    result = connector.add([ada, person(2)])

    outcomes = {o.key: (o.status, o.destination_id) for o in result.outcomes()}
    assert outcomes == {
        "ada@example.com": ("accepted", "01PADA"),
        "user2@example.com": ("accepted", "01PUSER2"),
    }
    first = router.calls[0].request
    assert first.method == "POST" and first.url == f"{BASE}/api/profile-import"
    assert first.headers["Authorization"] == f"Klaviyo-API-Key {KEY}"
    assert first.headers["revision"] == "2026-07-15"
    assert first.headers["Content-Type"] == "application/vnd.api+json"
    assert body(first) == {
        "data": {
            "type": "profile",
            "attributes": {
                "email": "ada@example.com",
                "first_name": "Ada",
                "location": {"city": "Paris"},
                "properties": {"ltv": 120},
            },
        }
    }
    membership = router.calls[2].request
    assert membership.url == f"{BASE}/api/lists/{LIST}/relationships/profiles"
    assert body(membership) == {
        "data": [{"type": "profile", "id": "01PADA"}, {"type": "profile", "id": "01PUSER2"}]
    }
    assert len(router.calls) == 3
    validate_all(router)


def test_rejected_profile_keeps_klaviyo_reason_and_is_not_added_to_list(
    router: respx.Router, http: httpx.Client
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if body(request)["data"]["attributes"]["email"] == "bad@example":
            return jsonapi_error("invalid", "bad@example is not a valid email address")
        return imported(request)

    router.post("/api/profile-import").mock(side_effect=answer)
    route = router.post(f"/api/lists/{LIST}/relationships/profiles").respond(204)
    connector, _ = make(http)
    result = connector.add([Record("bad@example", {}), person(1)])

    by_key = {o.key: o for o in result.outcomes()}
    assert by_key["bad@example"].status == "rejected"
    assert by_key["bad@example"].reason == "invalid: *** is not a valid email address"
    assert by_key["user1@example.com"].status == "accepted"
    assert body(route.calls.last.request)["data"] == [{"type": "profile", "id": "01PUSER1"}]
    validate_all(router)


def test_update_upserts_without_touching_the_list(router: respx.Router, http: httpx.Client) -> None:
    router.post("/api/profile-import").mock(side_effect=imported)
    connector, _ = make(http, identifier="external_id")
    result = connector.update([Record("c-1", {"email": "ada@example.com", "ltv": None})])

    assert [o.destination_id for o in result.outcomes()] == ["01PADA"]
    assert [c.request.url.path for c in router.calls] == ["/api/profile-import"]
    attributes = body(router.calls[0].request)["data"]["attributes"]
    assert attributes == {
        "email": "ada@example.com",
        "external_id": "c-1",
        "properties": {"ltv": None},
    }
    validate_all(router)


# -- large batches: bulk import jobs -----------------------------------------------------------


class BulkJobs:
    """A respx-side Klaviyo job: queued -> processing -> complete, with errors and ids."""

    def __init__(self, router: respx.Router, bad: set[str], statuses: list[str]) -> None:
        self.profiles: list[dict[str, Any]] = []
        self.statuses = statuses
        self.bad = bad
        router.post("/api/profile-bulk-import-jobs").mock(side_effect=self.create)
        router.get("/api/profile-bulk-import-jobs/J1").mock(side_effect=self.poll)
        router.get("/api/profile-bulk-import-jobs/J1/import-errors").mock(side_effect=self.errors)
        router.get("/api/profile-bulk-import-jobs/J1/profiles").mock(side_effect=self.listing)

    def create(self, request: httpx.Request) -> httpx.Response:
        self.profiles = body(request)["data"]["attributes"]["profiles"]["data"]
        return httpx.Response(202, json=self.job("queued"))

    def job(self, status: str) -> dict[str, Any]:
        failed = sum(p["attributes"]["email"] in self.bad for p in self.profiles)
        attributes = {"status": status, "total_count": len(self.profiles), "failed_count": failed}
        return {"data": {"type": "profile-bulk-import-job", "id": "J1", "attributes": attributes}}

    def poll(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=self.job(self.statuses.pop(0)))

    def errors(self, request: httpx.Request) -> httpx.Response:
        items = [
            {
                "type": "import-error",
                "id": f"err-{i}",
                "attributes": {
                    "code": "invalid",
                    "title": "Invalid email",
                    "detail": f"{p['attributes']['email']} is not a valid email",
                    "source": {"pointer": f"/data/attributes/profiles/data/{i}/attributes/email"},
                },
            }
            for i, p in enumerate(self.profiles)
            if p["attributes"]["email"] in self.bad
        ]
        return httpx.Response(200, json={"data": items, "links": {"self": str(request.url)}})

    def listing(self, request: httpx.Request) -> httpx.Response:
        good = [p for p in self.profiles if p["attributes"]["email"] not in self.bad]
        start = int(request.url.params.get("page[cursor]", "0"))
        size = int(request.url.params["page[size]"])
        page = good[start : start + size]
        links: dict[str, str] = {"self": str(request.url)}
        if start + size < len(good):
            links["next"] = (
                f"{BASE}/api/profile-bulk-import-jobs/J1/profiles?page%5Bcursor%5D={start + size}"
            )
        data = [
            {
                "type": "profile",
                "id": "01P" + p["attributes"]["email"].split("@")[0].upper(),
                "attributes": {"email": p["attributes"]["email"].upper()},
            }
            for p in page
        ]
        return httpx.Response(200, json={"data": data, "links": links})


def test_large_add_runs_one_bulk_job_with_the_list_and_reads_errors_and_ids(
    router: respx.Router, http: httpx.Client
) -> None:
    jobs = BulkJobs(
        router, bad={"user7@example.com"}, statuses=["queued", "processing", "complete"]
    )
    records = [person(n) for n in range(150)]
    connector, pauses = make(http)
    result = connector.add(records)

    outcomes = {o.key: o for o in result.outcomes()}
    assert outcomes["user7@example.com"].status == "rejected"
    assert outcomes["user7@example.com"].reason == "invalid: *** is not a valid email"
    accepted = [o for o in outcomes.values() if o.status == "accepted"]
    assert len(accepted) == 149
    assert outcomes["user149@example.com"].destination_id == "01PUSER149"

    create = body(router.calls[0].request)["data"]
    assert create["type"] == "profile-bulk-import-job"
    assert create["relationships"] == {"lists": {"data": [{"type": "list", "id": LIST}]}}
    assert len(create["attributes"]["profiles"]["data"]) == 150
    assert len(jobs.profiles) == 150
    assert pauses == [1.0, 2.0, 4.0]  # waits come from the engine's pause, growing
    paths = [c.request.url.path for c in router.calls]
    assert paths.count("/api/profile-bulk-import-jobs/J1") == 3
    assert paths.count("/api/profile-bulk-import-jobs/J1/import-errors") == 1
    assert paths.count("/api/profile-bulk-import-jobs/J1/profiles") == 2  # 149 ids, 100 a page
    assert not any("relationships/profiles" in p for p in paths)  # the job added them
    validate_all(router)


def test_bulk_job_without_failures_skips_the_error_listing(
    router: respx.Router, http: httpx.Client
) -> None:
    BulkJobs(router, bad=set(), statuses=["complete"])
    connector, _ = make(http, bulk_threshold=2)
    result = connector.update([person(1), person(2)])
    assert {o.status for o in result.outcomes()} == {"accepted"}
    paths = [c.request.url.path for c in router.calls]
    assert "/api/profile-bulk-import-jobs/J1/import-errors" not in paths
    assert "relationships" not in body(router.calls[0].request)["data"]  # update: no list
    validate_all(router)


def test_bulk_update_with_kept_ids_does_not_list_the_job_profiles(
    router: respx.Router, http: httpx.Client
) -> None:
    BulkJobs(router, bad=set(), statuses=["complete"])
    connector, _ = make(http, bulk_threshold=2)
    records = [Record(r.key, r.fields, f"KEPT{n}") for n, r in enumerate([person(1), person(2)])]
    outcomes = connector.update(records).outcomes()
    assert [o.destination_id for o in outcomes] == ["KEPT0", "KEPT1"]
    paths = [c.request.url.path for c in router.calls]
    assert paths == ["/api/profile-bulk-import-jobs", "/api/profile-bulk-import-jobs/J1"]


def test_record_missing_from_job_profiles_fails_so_it_is_resent(
    router: respx.Router, http: httpx.Client
) -> None:
    jobs = BulkJobs(router, bad=set(), statuses=["complete"])
    original = jobs.listing

    def drop_first(request: httpx.Request) -> httpx.Response:
        answer = original(request)
        data = json.loads(answer.content)
        data["data"] = data["data"][1:]
        return httpx.Response(200, json=data)

    router.get("/api/profile-bulk-import-jobs/J1/profiles").mock(side_effect=drop_first)
    connector, _ = make(http, bulk_threshold=2)
    outcomes = connector.add([person(1), person(2)]).outcomes()
    assert [(o.status, o.reason) for o in outcomes] == [
        ("failed", "not in the bulk import job's profiles"),
        ("accepted", None),
    ]


def test_cancelled_job_is_transient_and_the_retry_creates_a_new_one(
    router: respx.Router, http: httpx.Client
) -> None:
    BulkJobs(router, bad=set(), statuses=["processing", "cancelled", "complete"])
    connector, _ = make(http, bulk_threshold=1)
    with pytest.raises(TransientError, match="cancelled"):
        connector.add([person(1)])
    assert [o.status for o in connector.add([person(1)]).outcomes()] == ["accepted"]
    paths = [c.request.url.path for c in router.calls]
    assert paths.count("/api/profile-bulk-import-jobs") == 2  # that job will never run


def test_a_job_still_running_at_the_timeout_is_polled_again_not_created_again(
    router: respx.Router, http: httpx.Client
) -> None:
    """The engine retries the batch after the timeout: the retry polls the same job."""
    BulkJobs(router, bad=set(), statuses=["processing", "processing", "complete"])
    connector, _ = make(http, bulk_threshold=1, job_timeout=3)
    with pytest.raises(TransientError, match="not finished"):
        connector.add([person(1)])
    assert [o.status for o in connector.add([person(1)]).outcomes()] == ["accepted"]
    paths = [c.request.url.path for c in router.calls]
    assert paths.count("/api/profile-bulk-import-jobs") == 1
    assert paths.count("/api/profile-bulk-import-jobs/J1") == 3


def test_job_poll_times_out_and_stop_is_honoured(router: respx.Router, http: httpx.Client) -> None:
    BulkJobs(router, bad=set(), statuses=["processing"] * 50)
    connector, pauses = make(http, bulk_threshold=1, job_timeout=10)
    with pytest.raises(TransientError, match="not finished after 7s"):
        connector.add([person(1)])
    assert pauses == [1.0, 2.0, 4.0]

    BulkJobs(router, bad=set(), statuses=["processing"] * 50)
    stopping, _ = make(http, bulk_threshold=1)
    stopping.pause = lambda seconds: False
    with pytest.raises(TransientError, match="stopped"):
        stopping.add([person(1)])


def test_429_while_polling_waits_retry_after_instead_of_a_new_job(
    router: respx.Router, http: httpx.Client
) -> None:
    jobs = BulkJobs(router, bad=set(), statuses=["complete"])
    replies = iter([httpx.Response(429, headers={"Retry-After": "3"})])

    def poll(request: httpx.Request) -> httpx.Response:
        return next(replies, None) or jobs.poll(request)

    router.get("/api/profile-bulk-import-jobs/J1").mock(side_effect=poll)
    connector, pauses = make(http, bulk_threshold=1)
    assert [o.status for o in connector.add([person(1)]).outcomes()] == ["accepted"]
    assert pauses == [1.0, 3.0]
    assert [c.request.url.path for c in router.calls].count("/api/profile-bulk-import-jobs") == 1


def test_bulk_job_refused_as_a_whole_is_batch_rejected(
    router: respx.Router, http: httpx.Client
) -> None:
    router.post("/api/profile-bulk-import-jobs").mock(
        return_value=jsonapi_error("invalid", "Payload too large", status=413)
    )
    connector, _ = make(http, bulk_threshold=1)
    with pytest.raises(BatchRejected, match="invalid: Payload too large"):
        connector.add([person(1)])


# -- removal -----------------------------------------------------------------------------------


def test_remove_deletes_kept_profile_ids_without_any_search(
    router: respx.Router, http: httpx.Client
) -> None:
    route = router.delete(f"/api/lists/{LIST}/relationships/profiles").respond(204)
    records = [Record(f"u{n}@example.com", {}, f"01P{n}") for n in range(1500)]
    connector, _ = make(http)
    result = connector.remove(records)

    assert len(route.calls) == 2  # 1,000 ids per call
    assert len(router.calls) == 2  # and nothing else: no profile search
    assert body(route.calls[0].request)["data"][0] == {"type": "profile", "id": "01P0"}
    assert len(body(route.calls[0].request)["data"]) == 1000
    assert len(body(route.calls[1].request)["data"]) == 500
    assert {o.status for o in result.outcomes()} == {"accepted"}
    validate_all(router)


def test_remove_without_kept_id_looks_the_profile_up_once(
    router: respx.Router, http: httpx.Client
) -> None:
    found = {
        "data": [{"type": "profile", "id": "01POLD", "attributes": {"email": "old@example.com"}}]
    }
    lookup = router.get("/api/profiles").respond(200, json=found)
    route = router.delete(f"/api/lists/{LIST}/relationships/profiles").respond(204)
    connector, _ = make(http)
    records = [
        Record("a@example.com", {}, "01PA"),
        Record("Old@example.com"),
        Record("no@example.com"),
    ]
    result = connector.remove(records)

    params = lookup.calls.last.request.url.params
    assert params["filter"] == 'any(email,["old@example.com","no@example.com"])'
    assert params["page[size]"] == "100"
    assert body(route.calls.last.request)["data"] == [
        {"type": "profile", "id": "01PA"},
        {"type": "profile", "id": "01POLD"},
    ]
    assert {o.status for o in result.outcomes()} == {"accepted"}  # no profile: not a member
    validate_all(router)


def test_missing_list_is_a_config_error_naming_list_id(
    router: respx.Router, http: httpx.Client
) -> None:
    router.delete(f"/api/lists/{LIST}/relationships/profiles").mock(
        return_value=jsonapi_error("not_found", "List not found", status=404)
    )
    connector, _ = make(http)
    with pytest.raises(ConfigError, match="list_id"):
        connector.remove([Record("a@example.com", {}, "01PA")])


def test_membership_mode_needs_a_list() -> None:
    with httpx.Client() as client:
        connector, _ = make(client, list_id=None)
        with pytest.raises(ConfigError, match="list_id is required"):
            connector.open()


# -- rate limits -------------------------------------------------------------------------------


def test_spent_ratelimit_headers_slow_the_account_down(router: respx.Router) -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = AccountLimiter([], 4, clock=lambda: now[0], sleep=sleep)
    headers = {"RateLimit-Limit": "150", "RateLimit-Remaining": "0", "RateLimit-Reset": "7"}
    router.delete(f"/api/lists/{LIST}/relationships/profiles").respond(204, headers=headers)
    with engine_client(router, limiter=limiter) as client:
        connector, _ = make(client)
        connector.remove([Record("a@example.com", {}, "01PA")])
        assert limiter.cooldowns == 1
        connector.remove([Record("b@example.com", {}, "01PB")])
    assert sum(slept) == pytest.approx(7.0)


def test_remaining_quota_does_not_slow_down(router: respx.Router) -> None:
    limiter = AccountLimiter([], 4)
    headers = {"RateLimit-Remaining": "149", "RateLimit-Reset": "60"}
    router.delete(f"/api/lists/{LIST}/relationships/profiles").respond(204, headers=headers)
    with engine_client(router, limiter=limiter) as client:
        connector, _ = make(client)
        connector.remove([Record("a@example.com", {}, "01PA")])
    assert limiter.cooldowns == 0


def test_429_raises_rate_limited_with_retry_after(router: respx.Router, http: httpx.Client) -> None:
    router.post("/api/profile-import").respond(
        429, headers={"Retry-After": "12"}, json={"errors": [{"code": "throttled"}]}
    )
    connector, _ = make(http)
    with pytest.raises(RateLimited) as caught:
        connector.update([person(1)])
    assert caught.value.retry_after == 12


def test_published_limits() -> None:
    with httpx.Client() as client:
        connector, _ = make(client)
    assert [(r.requests, r.per_seconds) for r in connector.rate_limits] == [(10, 1), (150, 60)]
    assert connector.batch_size == 1000
    assert KlaviyoConnector.capabilities.max_batch_size == 10_000


# -- check() -----------------------------------------------------------------------------------


def test_check_reads_the_list(router: respx.Router, http: httpx.Client) -> None:
    router.get(f"/api/lists/{LIST}").respond(200, json={"data": {"type": "list", "id": LIST}})
    connector, _ = make(http)
    connector.check()
    validate_all(router)


@pytest.mark.parametrize(
    ("reply", "error", "message"),
    [
        (httpx.Response(401, json={"errors": []}), AuthError, "credentials"),
        (jsonapi_error("not_found", "Not found", status=404), ConfigError, "list_id"),
        (httpx.ConnectError("refused"), TransientError, "a.klaviyo.com"),
    ],
)
def test_check_tells_token_list_and_network_apart(
    router: respx.Router, http: httpx.Client, reply: Any, error: type[Exception], message: str
) -> None:
    router.get(f"/api/lists/{LIST}").mock(side_effect=[reply])
    connector, _ = make(http)
    with pytest.raises(error, match=message) as caught:
        connector.check()
    assert KEY not in str(caught.value)
    if error is ConfigError:
        assert not isinstance(caught.value, AuthError)


# -- cost ------------------------------------------------------------------------------------


def test_requests_per_10000_members_added(router: respx.Router) -> None:
    """10,000 adds with the default batch size (1,000): one job each, done on the first poll."""
    jobs: dict[str, list[dict[str, Any]]] = {}

    def create(request: httpx.Request) -> httpx.Response:
        job_id = f"J{len(jobs)}"
        jobs[job_id] = body(request)["data"]["attributes"]["profiles"]["data"]
        attributes = {"status": "queued", "total_count": len(jobs[job_id])}
        return httpx.Response(
            202,
            json={
                "data": {"type": "profile-bulk-import-job", "id": job_id, "attributes": attributes}
            },
        )

    def poll(request: httpx.Request, job_id: str) -> httpx.Response:
        attributes = {"status": "complete", "total_count": 1000, "failed_count": 0}
        return httpx.Response(
            200,
            json={
                "data": {"type": "profile-bulk-import-job", "id": job_id, "attributes": attributes}
            },
        )

    def listing(request: httpx.Request, job_id: str) -> httpx.Response:
        start = int(request.url.params.get("page[cursor]", "0"))
        page = jobs[job_id][start : start + 100]
        data = [
            {"type": "profile", "id": f"P{start + i}", "attributes": p["attributes"]}
            for i, p in enumerate(page)
        ]
        links = {"self": "x"}
        if start + 100 < len(jobs[job_id]):
            links["next"] = f"{BASE}/x?page%5Bcursor%5D={start + 100}"
        return httpx.Response(200, json={"data": data, "links": links})

    router.post("/api/profile-bulk-import-jobs").mock(side_effect=create)
    router.get(path__regex=r"/api/profile-bulk-import-jobs/(?P<job_id>J\d+)$").mock(
        side_effect=poll
    )
    router.get(path__regex=r"/api/profile-bulk-import-jobs/(?P<job_id>J\d+)/profiles$").mock(
        side_effect=listing
    )
    records = [person(n) for n in range(10_000)]
    with engine_client(router) as client:
        connector, _ = make(client)
        accepted = 0
        for start in range(0, len(records), connector.batch_size):
            outcomes = connector.add(records[start : start + connector.batch_size]).outcomes()
            accepted += sum(
                o.status == "accepted" and o.destination_id is not None for o in outcomes
            )
    assert accepted == 10_000
    # Per batch of 1,000: 1 job create + 1 poll + 10 pages of profile ids = 12.
    assert len(router.calls) == 120


def test_requests_per_10000_members_removed(router: respx.Router) -> None:
    route = router.delete(f"/api/lists/{LIST}/relationships/profiles").respond(204)
    records = [Record(f"u{n}@example.com", {}, f"P{n}") for n in range(10_000)]
    with engine_client(router) as client:
        connector, _ = make(client)
        for start in range(0, len(records), connector.batch_size):
            connector.remove(records[start : start + connector.batch_size])
    assert len(router.calls) == len(route.calls) == 10
