"""The TikTok connector against respx: ``/segment/mapping/`` bodies as the reference describes
them (section 11), errors inside HTTP 200 bodies, ids kept for removal, pacing and check().

TikTok publishes no OpenAPI document, so request shapes are asserted field by field from
../shared/reference/destinations.md. Hashes are computed here with hashlib, independently of
the connector.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx
import pytest
import respx
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from connectors.tiktok import TikTokConfig, TikTokConnector
from syncer.connector import Record, SyncContext, effective_limits
from syncer.errors import AuthError, BatchRejected, ConfigError, RateLimited, TransientError
from syncer.http import DestinationClient
from syncer.identifiers import identifier, normalize
from syncer.normalize import InvalidValue
from syncer.ratelimit import AccountLimiter, RateLimit
from syncer.testing import FakeClock

BASE = "https://business-api.tiktok.com/open_api/v1.3"
TOKEN = "tt-access-token-secret-0123456789"
ADVERTISER = "7000123"
AUDIENCE = "123456"
MAPPING = f"{BASE}/segment/mapping/"
FIELDS = ("email", "maid", "phone")
OK = {"code": 0, "message": "OK", "request_id": "r-1", "data": {}}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def key(n: int) -> str:
    """What the engine hands a hashed_keys connector: SHA-256 of the warehouse key."""
    return sha(f"customer-{n}")


def person(n: int, **fields: Any) -> Record:
    return Record(key(n), {"email": f"user{n}@example.com", **fields})


def entry(value: str) -> dict[str, Any]:
    return {"id": value, "audience_ids": [AUDIENCE]}


def kept(**ids: str) -> str:
    return json.dumps(ids, separators=(",", ":"), sort_keys=True)


@pytest.fixture
def http(engine_http: httpx.Client) -> httpx.Client:
    """The engine's client only (the kit's, its limiter on the fake clock)."""
    return engine_http


def make(
    http: httpx.Client,
    mode: str = "membership",
    fields: tuple[str, ...] = FIELDS,
    **options: Any,
) -> TikTokConnector:
    settings: dict[str, Any] = {
        "access_token": TOKEN,
        "advertiser_id": ADVERTISER,
        "audience_id": AUDIENCE,
        **options,
    }
    context = SyncContext("tt", mode, fields, "r1")
    connector = TikTokConnector(TikTokConfig(**settings), context, http)
    if isinstance(http, DestinationClient):  # wired as the engine does
        http.classifier = connector.classify
        http.secrets = connector.secret_values()
    connector.open()
    return connector


def body(call: Any) -> Any:
    return json.loads(call.request.content)


# -- add ---------------------------------------------------------------------------------


def test_add_request_shape_and_kept_ids(router: respx.Router, http: httpx.Client) -> None:
    route = router.post(MAPPING).respond(200, json=OK)
    ada = Record(
        key(1),
        {
            "email": " Ada.Lovelace+ads@Example.COM ",
            "phone": "(657) 777-0000",
            "maid": "38400000-8CF0-11BD-B23E-10B96E40000D",
        },
    )
    bob = Record(key(2), {"email": None, "phone": "+44 20 7946 0958", "maid": ""})
    outcomes = make(http, region="US").add([ada, bob]).outcomes()

    request = route.calls[0].request
    assert request.method == "POST" and str(request.url) == MAPPING
    assert request.headers["Access-Token"] == TOKEN
    assert "Authorization" not in request.headers
    assert request.headers["Content-Type"] == "application/json"
    maid = sha("38400000-8cf0-11bd-b23e-10b96e40000d")
    assert body(route.calls[0]) == {
        "advertiser_ids": [ADVERTISER],
        "action": "add",
        "id_schema": ["EMAIL_SHA256", "PHONE_SHA256", "MAID_SHA256"],
        "batch_data": [
            [entry(sha("ada.lovelace@example.com")), entry(sha("16577770000")), entry(maid)],
            [{}, entry(sha("442079460958")), {}],
        ],
    }
    assert [(o.status, o.destination_id) for o in outcomes] == [
        (
            "accepted",
            kept(email=sha("ada.lovelace@example.com"), maid=maid, phone=sha("16577770000")),
        ),
        ("accepted", kept(phone=sha("442079460958"))),
    ]
    assert b"Lovelace" not in request.content and b"7946" not in request.content


def test_id_schema_lists_only_the_kinds_present(router: respx.Router, http: httpx.Client) -> None:
    route = router.post(MAPPING).respond(200, json=OK)
    make(http).add([person(1), person(2)])
    sent = body(route.calls[0])
    assert sent["id_schema"] == ["EMAIL_SHA256"]
    assert sent["batch_data"] == [
        [entry(sha("user1@example.com"))],
        [entry(sha("user2@example.com"))],
    ]


def test_base_url_is_a_setting(router: respx.Router, http: httpx.Client) -> None:
    route = router.post("https://proxy.example.test/tt/segment/mapping/").respond(200, json=OK)
    make(http, base_url="https://proxy.example.test/tt").add([person(1)])
    assert route.called


def test_hashed_values_pass_through_and_prehashed_refuses_plain(
    router: respx.Router, http: httpx.Client
) -> None:
    route = router.post(MAPPING).respond(200, json=OK)
    digest = sha("16577770000")
    make(http).add([Record(key(1), {"phone": digest.upper()})])
    assert body(route.calls[0])["batch_data"] == [[entry(digest)]]

    outcomes = make(http, prehashed=["phone"]).add([Record(key(2), {"phone": "16577770000"})])
    assert [(o.status, o.reason) for o in outcomes.outcomes()] == [
        ("rejected", "phone: phone is declared pre-hashed but is not a SHA-256 hex digest")
    ]
    assert route.call_count == 1  # nothing sent for a batch with no valid member


def test_invalid_values_are_rejected_per_record_without_quoting_them(
    router: respx.Router, http: httpx.Client
) -> None:
    route = router.post(MAPPING).respond(200, json=OK)
    records = [
        Record(key(1), {"email": "nope"}),
        Record(key(2), {"phone": "12"}),
        Record(key(3), {"email": " ", "phone": None}),
        person(4),
    ]
    outcomes = make(http).add(records).outcomes()
    assert [o.status for o in outcomes] == ["rejected", "rejected", "rejected", "accepted"]
    assert outcomes[0].reason == "email: not a valid email address"
    assert (outcomes[1].reason or "").startswith("phone: ")
    assert "12" not in (outcomes[1].reason or "")
    assert outcomes[2].reason == "no email, phone or mobile advertiser id to match on"
    assert body(route.calls[0])["batch_data"] == [[entry(sha("user4@example.com"))]]


# -- remove and update -------------------------------------------------------------------


def test_remove_deletes_the_kept_hashes(router: respx.Router, http: httpx.Client) -> None:
    route = router.post(MAPPING).respond(200, json=OK)
    gone = Record(key(1), destination_id=kept(email=sha("a@example.com"), phone=sha("15550100")))
    orphan = Record(key(2))
    outcomes = make(http).remove([gone, orphan]).outcomes()
    assert body(route.calls[0]) == {
        "advertiser_ids": [ADVERTISER],
        "action": "delete",
        "id_schema": ["EMAIL_SHA256", "PHONE_SHA256"],
        "batch_data": [[entry(sha("a@example.com")), entry(sha("15550100"))]],
    }
    assert [(o.status, o.reason) for o in outcomes] == [
        ("accepted", None),
        ("rejected", "no kept identifiers to remove this member by"),
    ]


def test_update_deletes_changed_hashes_then_adds(router: respx.Router, http: httpx.Client) -> None:
    route = router.post(MAPPING).respond(200, json=OK)
    moved = Record(key(1), {"email": "new@example.com"}, kept(email=sha("old@example.com")))
    same = Record(key(2), {"email": "same@example.com"}, kept(email=sha("same@example.com")))
    outcomes = make(http, mode="mirror").update([moved, same]).outcomes()
    assert [body(c)["action"] for c in route.calls] == ["delete", "add"]
    assert body(route.calls[0])["batch_data"] == [[entry(sha("old@example.com"))]]
    assert len(body(route.calls[1])["batch_data"]) == 2
    assert outcomes[0].destination_id == kept(email=sha("new@example.com"))


def test_an_unconfirmed_send_keeps_both_id_sets_so_a_removal_takes_off_either(
    router: respx.Router, http: httpx.Client
) -> None:
    """The engine stores ``expected_destination_id`` before a request leaves. An update whose
    answer never arrived leaves the member under its old ids or its new ones; removing it (it
    left the segment meanwhile) takes off both, and a re-add takes off the stale one."""
    route = router.post(MAPPING).respond(200, json=OK)
    connector = make(http, mode="mirror")
    moved = Record(key(1), {"email": "new@example.com"}, kept(email=sha("old@example.com")))
    expected = connector.expected_destination_id("update", moved)
    assert expected is not None
    assert json.loads(expected) == [
        {"email": sha("old@example.com")},
        {"email": sha("new@example.com")},
    ]
    assert connector.expected_destination_id("add", person(2)) == kept(
        email=sha("user2@example.com")
    )
    assert (
        connector.expected_destination_id("add", Record(key(3), {"email": "not an email"})) is None
    )

    (gone,) = connector.remove([Record(key(1), destination_id=expected)]).outcomes()
    assert gone.status == "accepted"
    assert body(route.calls[0])["batch_data"] == [
        [entry(sha("old@example.com"))],
        [entry(sha("new@example.com"))],
    ]
    back = Record(key(1), {"email": "new@example.com"}, expected)
    (added,) = connector.add([back]).outcomes()
    assert [body(c)["action"] for c in route.calls[1:]] == ["delete", "add"]
    assert body(route.calls[1])["batch_data"] == [[entry(sha("old@example.com"))]]
    assert added.destination_id == kept(email=sha("new@example.com"))


# -- errors inside HTTP 200 ----------------------------------------------------------------


def test_invalid_data_code_refuses_the_batch_with_tiktoks_message(
    router: respx.Router, http: httpx.Client
) -> None:
    router.post(MAPPING).respond(
        200, json={"code": 40002, "message": f"Invalid id for user1@example.com {TOKEN}"}
    )
    with pytest.raises(BatchRejected) as caught:
        make(http).add([person(1)])
    text = str(caught.value)
    assert text.startswith("tiktok: mapping: code 40002: Invalid id for")
    assert TOKEN not in text and "user1@example.com" not in text


@pytest.mark.parametrize("code", [40100, 40133])
def test_rate_limit_codes_in_a_200_are_rate_limited(
    router: respx.Router, http: httpx.Client, clock: FakeClock, code: int
) -> None:
    router.post(MAPPING).mock(
        side_effect=[
            httpx.Response(200, json={"code": code, "message": "Too many requests"}),
            httpx.Response(200, json=OK),
        ]
    )
    connector = make(http)
    with pytest.raises(RateLimited) as caught:
        connector.add([person(1)])
    assert caught.value.retry_after == 1.0
    assert connector.add([person(1)]).outcomes()[0].status == "accepted"
    assert sum(clock.slept) == pytest.approx(1.0, abs=0.01)  # the account cooled down


def test_a_configured_rate_limit_code_is_honoured(router: respx.Router, http: httpx.Client) -> None:
    router.post(MAPPING).respond(200, json={"code": 41234, "message": "slow down"})
    with pytest.raises(RateLimited):
        make(http, rate_limit_codes=[41234]).add([person(1)])


@pytest.mark.parametrize("code", [40104, 40105])
def test_auth_codes_are_auth_errors(router: respx.Router, http: httpx.Client, code: int) -> None:
    router.post(MAPPING).respond(200, json={"code": code, "message": "Access token is invalid"})
    with pytest.raises(AuthError, match=f"code {code}"):
        make(http).add([person(1)])


def test_permission_code_is_a_config_error(router: respx.Router, http: httpx.Client) -> None:
    router.post(MAPPING).respond(200, json={"code": 40001, "message": "No permission"})
    with pytest.raises(ConfigError, match="advertiser_id") as caught:
        make(http).add([person(1)])
    assert not isinstance(caught.value, AuthError)


def test_server_side_codes_and_http_errors_are_transient(
    router: respx.Router, http: httpx.Client
) -> None:
    router.post(MAPPING).mock(
        side_effect=[
            httpx.Response(200, json={"code": 50000, "message": "System error"}),
            httpx.Response(503),
            httpx.Response(200, content=b"<html>gateway</html>"),
            httpx.Response(200, json={"message": "no code"}),
        ]
    )
    connector = make(http)
    for _ in range(4):
        with pytest.raises(TransientError):
            connector.add([person(1)])


def test_bare_http_429_is_rate_limited(router: respx.Router, http: httpx.Client) -> None:
    router.post(MAPPING).respond(429)
    with pytest.raises(RateLimited):
        make(http).add([person(1)])


def test_published_rate_limit_paces_requests(
    router: respx.Router, http: httpx.Client, clock: FakeClock
) -> None:
    connector = make(http)
    rates, concurrency = effective_limits(connector)
    assert (rates, concurrency) == ([RateLimit(10, 1)], 2)
    router.post(MAPPING).respond(200, json=OK)
    assert isinstance(http, DestinationClient)
    http.limiter = AccountLimiter(rates, concurrency, clock=clock, sleep=clock.sleep)
    connector.add([person(1)])
    connector.add([person(2)])
    assert sum(clock.slept) == pytest.approx(0.1, rel=0.05)  # 10/s: 0.1 s apart


# -- settings and open -------------------------------------------------------------------


def test_open_refuses_fields_tiktok_does_not_take(http: httpx.Client) -> None:
    with pytest.raises(ConfigError, match=r"fields\.first_name"):
        make(http, fields=("email", "first_name"))
    with pytest.raises(ConfigError, match="at least one of email, phone, maid"):
        make(http, fields=())


def test_settings_are_validated() -> None:
    base = {"access_token": TOKEN, "advertiser_id": ADVERTISER, "audience_id": AUDIENCE}
    with pytest.raises(ValidationError, match="not country"):
        TikTokConfig(**base, prehashed=["country"])
    with pytest.raises(ValidationError):
        TikTokConfig(**base, batch_size=10_001)
    with pytest.raises(ValidationError):
        TikTokConfig(**{**base, "audience_id": "12/../x"})
    config = TikTokConfig(**base)
    assert config.batch_size == 1_000
    assert TikTokConnector.capabilities.hashed_keys


# -- check -------------------------------------------------------------------------------


INFO = f"{BASE}/advertiser/info/"
AUDIENCE_GET = f"{BASE}/dmp/custom_audience/get/"


def good_check(router: respx.Router) -> tuple[respx.Route, respx.Route]:
    info = router.get(INFO).respond(
        200, json={"code": 0, "data": {"list": [{"advertiser_id": ADVERTISER}]}}
    )
    audience = router.get(AUDIENCE_GET).respond(
        200, json={"code": 0, "data": {"list": [{"audience_details": {}}]}}
    )
    return info, audience


def test_check_reads_advertiser_and_audience(router: respx.Router, http: httpx.Client) -> None:
    info, audience = good_check(router)
    make(http).check()
    assert info.calls[0].request.url.params["advertiser_ids"] == f'["{ADVERTISER}"]'
    assert info.calls[0].request.headers["Access-Token"] == TOKEN
    params = audience.calls[0].request.url.params
    assert (params["advertiser_id"], params["custom_audience_ids"]) == (
        ADVERTISER,
        f'["{AUDIENCE}"]',
    )


def test_check_bad_token_is_auth_error(router: respx.Router, http: httpx.Client) -> None:
    router.get(INFO).respond(200, json={"code": 40105, "message": "Access token is incorrect"})
    with pytest.raises(AuthError) as caught:
        make(http).check()
    assert TOKEN not in str(caught.value)


def test_check_http_401_is_auth_error(router: respx.Router, http: httpx.Client) -> None:
    router.get(INFO).respond(401)
    with pytest.raises(AuthError):
        make(http).check()


@pytest.mark.parametrize(
    "reply",
    [
        {"code": 40001, "message": "No permission to operate advertiser"},
        {"code": 40002, "message": "advertiser_ids: invalid"},
        {"code": 0, "data": {"list": []}},
    ],
)
def test_check_wrong_advertiser_is_config_error(
    router: respx.Router, http: httpx.Client, reply: dict[str, Any]
) -> None:
    router.get(INFO).respond(200, json=reply)
    with pytest.raises(ConfigError, match="advertiser_id") as caught:
        make(http).check()
    assert not isinstance(caught.value, AuthError)


@pytest.mark.parametrize(
    "reply",
    [
        {"code": 40002, "message": "Custom audience does not exist"},
        {"code": 0, "data": {"list": []}},
    ],
)
def test_check_wrong_audience_is_config_error(
    router: respx.Router, http: httpx.Client, reply: dict[str, Any]
) -> None:
    router.get(INFO).respond(
        200, json={"code": 0, "data": {"list": [{"advertiser_id": ADVERTISER}]}}
    )
    router.get(AUDIENCE_GET).respond(200, json=reply)
    with pytest.raises(ConfigError, match="audience_id"):
        make(http).check()


def test_check_network_failure_is_transient(router: respx.Router, http: httpx.Client) -> None:
    router.get(INFO).mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(TransientError):
        make(http).check()


# -- cost --------------------------------------------------------------------------------


def test_requests_per_10000_members_added_and_removed(
    router: respx.Router, http: httpx.Client
) -> None:
    """The engine's batch size is the connector's default (1,000): ten calls each way."""
    route = router.post(MAPPING).respond(200, json=OK)
    connector = make(http)
    members = [person(n) for n in range(10_000)]
    size = connector.batch_size
    ids: list[str] = []
    for start in range(0, len(members), size):
        ids += [
            o.destination_id or "" for o in connector.add(members[start : start + size]).outcomes()
        ]
    assert size == 1_000 and route.call_count == 10
    leaving = [Record(m.key, destination_id=d) for m, d in zip(members, ids, strict=True)]
    for start in range(0, len(leaving), size):
        connector.remove(leaving[start : start + size])
    assert route.call_count == 20
    assert len(body(route.calls[19])["batch_data"]) == 1_000


# -- normalisation (TikTok's rules, from syncer.identifiers) -----------------------------


@pytest.mark.parametrize(
    ("kind", "raw", "normalised"),
    [
        # TikTok: lowercase; remove "+" and everything after it up to "@"; dots are kept.
        ("email", " John.Doe+Promo@Example.com ", "john.doe@example.com"),
        ("email", "a.b@gmail.com", "a.b@gmail.com"),
        # TikTok's own example: country code even for the US, no "+", no symbols.
        ("phone", "+1 (657) 777-0000", "16577770000"),
        ("phone", "16577770000", "16577770000"),
        ("maid", " 38400000-8CF0-11BD-B23E-10B96E40000D", "38400000-8cf0-11bd-b23e-10b96e40000d"),
    ],
)
def test_tiktok_identifier_table(kind: Any, raw: str, normalised: str) -> None:
    assert normalize("tiktok", kind, raw, region="US") == normalised
    assert identifier("tiktok", kind, raw, region="US") == sha(normalised)


def test_a_digest_is_never_hashed_twice() -> None:
    digest = sha("john@example.com")
    assert identifier("tiktok", "email", digest.upper()) == digest


@given(st.sampled_from(["email", "phone", "maid"]), st.text(min_size=1, max_size=30))
def test_normalising_twice_changes_nothing(kind: Any, raw: str) -> None:
    try:
        once = normalize("tiktok", kind, raw, region="US")
    except InvalidValue:
        return
    assert normalize("tiktok", kind, once, region="US") == once
