"""Braze connector against respx: request shapes field by field (no OpenAPI document here; the
shapes come from ../shared/reference/destinations.md section 5), per-record errors by index,
X-RateLimit-* headers, 429 and check()."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
import respx
from pydantic import ValidationError

from connectors.braze import BrazeConnector
from syncer.connector import Record, SyncContext
from syncer.errors import AuthError, BatchRejected, ConfigError, RateLimited, TransientError
from syncer.http import DestinationClient
from syncer.ratelimit import AccountLimiter, RateLimit
from syncer.testing import engine_client

KEY = "braze-rest-key-0123456789"
BASE = "https://rest.iad-01.braze.com"
GROUP = "sg-123"
U1 = Record("u1", {"email": "ada@example.com", "first_name": "Ada", "ltv": 120})
U2 = Record("u2", {"email": "bob@example.com", "first_name": "Bob"})
SUCCESS = {"message": "success", "attributes_processed": 2}


def make(http: httpx.Client, mode: str = "membership", **options: Any) -> BrazeConnector:
    settings: dict[str, Any] = {"api_key": KEY, "base_url": BASE, "subscription_group_id": GROUP}
    settings.update(options)
    context = SyncContext("vip", mode, ("email", "first_name", "ltv"), run_id="r1")
    connector = BrazeConnector(BrazeConnector.config_model(**settings), context, http)
    if isinstance(http, DestinationClient):  # wired as the engine does
        http.classifier = connector.classify
        http.secrets = connector.secret_values()
    return connector


@pytest.fixture
def http(engine_http: httpx.Client) -> httpx.Client:
    """The engine's client only (the kit's)."""
    return engine_http


def cooling(limiter: AccountLimiter) -> float:
    """Seconds the account is still held (the limiter's own monotonic clock)."""
    return float(limiter._cool_until) - time.monotonic()


def body(call: Any) -> Any:
    return json.loads(call.request.content)


# -- configuration ---------------------------------------------------------------------------


def test_base_url_is_required_and_limits_are_published(http: httpx.Client) -> None:
    with pytest.raises(ValidationError):
        BrazeConnector.config_model(api_key=KEY)
    with pytest.raises(ValidationError):
        make(http, batch_size=76)
    assert BrazeConnector.capabilities.max_batch_size == 75
    assert make(http).batch_size == 75 and make(http, batch_size=50).batch_size == 50
    assert RateLimit(3000, 3.0) in BrazeConnector.rate_limits
    assert RateLimit(5000, 60.0) in BrazeConnector.rate_limits


def test_removal_modes_need_a_subscription_group(http: httpx.Client) -> None:
    with pytest.raises(ConfigError, match="subscription_group_id"):
        make(http, "mirror", subscription_group_id=None).open()
    make(http, "upsert", subscription_group_id=None).open()


# -- /users/track ----------------------------------------------------------------------------


def test_add_tracks_attributes_and_subscribes(router: respx.Router, http: httpx.Client) -> None:
    route = router.post(f"{BASE}/users/track").respond(201, json=SUCCESS)
    result = make(http).add([U1, U2])

    request = route.calls.last.request
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Content-Type"] == "application/json"
    subscribed = [{"subscription_group_id": GROUP, "subscription_state": "subscribed"}]
    assert body(route.calls.last) == {
        "attributes": [
            {
                "external_id": "u1",
                "email": "ada@example.com",
                "first_name": "Ada",
                "ltv": 120,
                "_update_existing_only": False,
                "subscription_groups": subscribed,
            },
            {
                "external_id": "u2",
                "email": "bob@example.com",
                "first_name": "Bob",
                "_update_existing_only": False,
                "subscription_groups": subscribed,
            },
        ]
    }
    assert [o.status for o in result.outcomes()] == ["accepted", "accepted"]


def test_update_sends_fields_only(router: respx.Router, http: httpx.Client) -> None:
    route = router.post(f"{BASE}/users/track").respond(201, json=SUCCESS)
    make(http, "mirror").update([U1])
    (item,) = body(route.calls.last)["attributes"]
    assert "subscription_groups" not in item and item["external_id"] == "u1"


def test_email_identifier_and_update_only(router: respx.Router, http: httpx.Client) -> None:
    route = router.post(f"{BASE}/users/track").respond(201, json=SUCCESS)
    make(http, "update_only", identifier="email").update([Record("Ada@Example.com", {"x": 1})])
    assert body(route.calls.last)["attributes"] == [
        {"x": 1, "email": "ada@example.com", "_update_existing_only": True}
    ]


def test_partial_errors_map_back_by_index(router: respx.Router, http: httpx.Client) -> None:
    errors = [
        {
            "type": "'email' value ada@example.com is not a valid email",
            "input_array": "attributes",
            "index": 1,
        }
    ]
    router.post(f"{BASE}/users/track").respond(201, json={"message": "success", "errors": errors})
    outcomes = make(http).add([U2, U1, Record("u3")]).outcomes()
    assert [o.status for o in outcomes] == ["accepted", "rejected", "accepted"]
    reason = outcomes[1].reason or ""
    assert "is not a valid email" in reason and "ada@example.com" not in reason


def test_error_without_index_fails_the_batch(router: respx.Router, http: httpx.Client) -> None:
    errors = [{"type": "something went wrong"}]
    router.post(f"{BASE}/users/track").respond(200, json={"message": "success", "errors": errors})
    outcomes = make(http).add([U1, U2]).outcomes()
    assert [o.status for o in outcomes] == ["failed", "failed"]


def test_fatal_message_is_a_rejected_batch(router: respx.Router, http: httpx.Client) -> None:
    router.post(f"{BASE}/users/track").respond(400, json={"message": "Invalid attributes"})
    with pytest.raises(BatchRejected, match="Invalid attributes"):
        make(http).add([U1])


# -- membership removal ----------------------------------------------------------------------


def test_remove_unsubscribes_in_chunks_of_50(router: respx.Router, http: httpx.Client) -> None:
    route = router.post(f"{BASE}/v2/subscription/status/set").respond(
        201, json={"message": "success"}
    )
    records = [Record(f"u{i}") for i in range(75)]
    result = make(http).remove(records)

    assert route.call_count == 2
    first, second = body(route.calls[0]), body(route.calls[1])
    assert first == {
        "subscription_groups": [
            {
                "subscription_group_id": GROUP,
                "subscription_state": "unsubscribed",
                "external_ids": [f"u{i}" for i in range(50)],
            }
        ]
    }
    assert second["subscription_groups"][0]["external_ids"] == [f"u{i}" for i in range(50, 75)]
    assert route.calls[0].request.headers["Authorization"] == f"Bearer {KEY}"
    assert all(o.status == "accepted" for o in result.outcomes())
    assert all(c.request.url.path == "/v2/subscription/status/set" for c in router.calls)


def test_remove_by_email_uses_emails(router: respx.Router, http: httpx.Client) -> None:
    route = router.post(f"{BASE}/v2/subscription/status/set").respond(
        201, json={"message": "success"}
    )
    make(http, identifier="email").remove([Record("Ada@example.com")])
    entry = body(route.calls.last)["subscription_groups"][0]
    assert entry["emails"] == ["ada@example.com"] and "external_ids" not in entry


# -- rate limiting ---------------------------------------------------------------------------


def test_remaining_zero_slows_down_until_reset(router: respx.Router) -> None:
    reset = int(time.time()) + 30
    headers = {
        "x-ratelimit-limit": "3000",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": str(reset),
    }
    router.post(f"{BASE}/users/track").respond(201, json=SUCCESS, headers=headers)
    limiter = AccountLimiter([RateLimit(3000, 3.0)], 8)
    with engine_client(router, limiter=limiter) as client:
        make(client).add([U1])
        assert limiter.cooldowns == 1
        assert 20 < cooling(limiter) <= 30


def test_remaining_quota_does_not_slow_down(router: respx.Router) -> None:
    headers = {"X-RateLimit-Remaining": "12", "X-RateLimit-Reset": str(int(time.time()) + 30)}
    router.post(f"{BASE}/users/track").respond(201, json=SUCCESS, headers=headers)
    limiter = AccountLimiter([RateLimit(3000, 3.0)], 8)
    with engine_client(router, limiter=limiter) as client:
        make(client).add([U1])
        assert limiter.cooldowns == 0


def test_429_is_rate_limited(router: respx.Router, http: httpx.Client) -> None:
    router.post(f"{BASE}/users/track").respond(
        429, json={"message": "rate limited"}, headers={"Retry-After": "2"}
    )
    with pytest.raises(RateLimited) as info:
        make(http).add([U1])
    assert info.value.retry_after == 2


# -- check -----------------------------------------------------------------------------------


def test_check_reads_the_subscription_group(router: respx.Router, http: httpx.Client) -> None:
    route = router.get(f"{BASE}/subscription/status/get").respond(
        200, json={"status": {"syncer-check": "Unknown"}, "message": "success"}
    )
    make(http).check()
    params = route.calls.last.request.url.params
    assert params["subscription_group_id"] == GROUP and params["external_id"] == "syncer-check"
    assert route.calls.last.request.headers["Authorization"] == f"Bearer {KEY}"


def test_check_without_group_sends_an_empty_track(router: respx.Router, http: httpx.Client) -> None:
    route = router.post(f"{BASE}/users/track").respond(201, json={"message": "success"})
    make(http, "upsert", subscription_group_id=None).check()
    assert body(route.calls.last) == {"attributes": []}


@pytest.mark.parametrize(
    ("status", "error", "text"),
    [(401, AuthError, "credentials"), (400, ConfigError, "subscription_group_id")],
)
def test_check_tells_bad_key_from_wrong_group(
    router: respx.Router, http: httpx.Client, status: int, error: type[Exception], text: str
) -> None:
    router.get(f"{BASE}/subscription/status/get").respond(
        status, json={"message": "Invalid subscription group"}
    )
    with pytest.raises(error, match=text) as info:
        make(http).check()
    assert KEY not in str(info.value)
    assert (status == 401) == isinstance(info.value, AuthError)


def test_check_network_failure_is_transient(router: respx.Router, http: httpx.Client) -> None:
    router.get(f"{BASE}/subscription/status/get").mock(side_effect=httpx.ConnectTimeout("slow"))
    with pytest.raises(TransientError):
        make(http).check()


# -- cost ------------------------------------------------------------------------------------


def test_requests_per_10000_members(router: respx.Router, http: httpx.Client) -> None:
    router.post(f"{BASE}/users/track").respond(201, json=SUCCESS)
    router.post(f"{BASE}/v2/subscription/status/set").respond(201, json={"message": "success"})
    connector = make(http)
    records = [Record(f"u{i}", {"first_name": "X"}) for i in range(10_000)]
    size = connector.batch_size
    for start in range(0, 10_000, size):
        connector.add(records[start : start + size])
    assert len(router.calls) == 134  # ceil(10000 / 75): add and subscribe in one call
    for start in range(0, 10_000, size):
        connector.remove(records[start : start + size])
    # Removal: 133 batches of 75 (2 calls each: 50 + 25) and one of 25.
    assert len(router.calls) - 134 == 133 * 2 + 1


def test_example_mapping_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from syncer.mapping import load_file

    monkeypatch.setenv("BRAZE_API_KEY", KEY)
    example = Path(__file__).resolve().parents[1] / "mappings" / "examples" / "braze.yaml"
    sync = load_file(example)
    assert sync.connector_cls is BrazeConnector and sync.definition.mode == "mirror"
