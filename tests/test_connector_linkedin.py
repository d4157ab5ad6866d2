"""The LinkedIn connector against respx: DMP segment users calls as the reference describes
them (section 10), per-element statuses, ids kept for removal, bare 429, pacing and check().

LinkedIn publishes no OpenAPI document, so request shapes are asserted field by field from
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

from connectors.linkedin import LinkedInConfig, LinkedInConnector
from syncer.connector import Record, SyncContext, effective_limits
from syncer.errors import AuthError, BatchRejected, ConfigError, RateLimited, TransientError
from syncer.http import DestinationClient
from syncer.identifiers import identifier, normalize
from syncer.normalize import InvalidValue
from syncer.ratelimit import AccountLimiter, RateLimit
from syncer.testing import FakeClock

BASE = "https://api.linkedin.com/rest"
TOKEN = "AQV-linkedin-secret-token-0123456789"
SEGMENT = "4242"
USERS = f"{BASE}/dmpSegments/{SEGMENT}/users"
FIELDS = ("country", "email", "first_name", "last_name", "maid")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def key(n: int) -> str:
    """What the engine hands a hashed_keys connector: SHA-256 of the warehouse key."""
    return sha(f"customer-{n}")


def person(n: int, **fields: Any) -> Record:
    return Record(key(n), {"email": f"user{n}@example.com", **fields})


def kept(email: str, maid: str | None = None) -> str:
    ids = {"email": sha(email), **({"maid": maid} if maid else {})}
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
) -> LinkedInConnector:
    settings: dict[str, Any] = {"access_token": TOKEN, "segment_id": SEGMENT, **options}
    context = SyncContext("li", mode, fields, "r1")
    connector = LinkedInConnector(LinkedInConfig(**settings), context, http)
    if isinstance(http, DestinationClient):  # wired as the engine does
        http.classifier = connector.classify
        http.secrets = connector.secret_values()
    connector.open()
    return connector


def created(request: httpx.Request) -> httpx.Response:
    """LinkedIn's answer when every element succeeded: one 201 per element, in order."""
    elements = json.loads(request.content)["elements"]
    return httpx.Response(200, json={"elements": [{"status": 201} for _ in elements]})


def body(call: Any) -> Any:
    return json.loads(call.request.content)


# -- add ---------------------------------------------------------------------------------


def test_add_request_shape_and_kept_ids(router: respx.Router, http: httpx.Client) -> None:
    route = router.post(USERS).mock(side_effect=created)
    ada = Record(
        key(1),
        {
            "email": "  Ada.Lovelace@Example.COM ",
            "maid": "38400000-8CF0-11BD-B23E-10B96E40000D",
            "first_name": " Ada ",
            "last_name": "Lovelace",
            "country": "gb",
        },
    )
    outcomes = make(http).add([ada, person(2)]).outcomes()

    request = route.calls[0].request
    assert request.method == "POST" and str(request.url) == USERS
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["LinkedIn-Version"] == "202604"
    assert request.headers["X-Restli-Protocol-Version"] == "2.0.0"
    assert request.headers["X-RestLi-Method"] == "BATCH_CREATE"
    assert request.headers["Content-Type"] == "application/json"
    maid = "38400000-8cf0-11bd-b23e-10b96e40000d"
    assert body(route.calls[0]) == {
        "elements": [
            {
                "action": "ADD",
                "userIds": [
                    {"idType": "SHA256_EMAIL", "idValue": sha("ada.lovelace@example.com")},
                    {"idType": "GOOGLE_AID", "idValue": maid},
                ],
                "firstName": "Ada",
                "lastName": "Lovelace",
                "country": "GB",
            },
            {
                "action": "ADD",
                "userIds": [{"idType": "SHA256_EMAIL", "idValue": sha("user2@example.com")}],
            },
        ]
    }
    assert [(o.status, o.destination_id) for o in outcomes] == [
        ("accepted", kept("ada.lovelace@example.com", maid)),
        ("accepted", kept("user2@example.com")),
    ]
    # Raw identifiers never leave in clear, and the kept id holds no name or raw email.
    assert b"Ada.Lovelace" not in request.content and b"user2@" not in request.content
    assert "Lovelace" not in str(outcomes)


def test_version_and_base_url_are_settings(router: respx.Router, http: httpx.Client) -> None:
    route = router.post("https://proxy.example.test/li/dmpSegments/4242/users").mock(
        side_effect=created
    )
    make(http, api_version="202510", base_url="https://proxy.example.test/li/").add([person(1)])
    assert route.calls[0].request.headers["LinkedIn-Version"] == "202510"


def test_hashed_values_pass_through_and_prehashed_refuses_plain(
    router: respx.Router, http: httpx.Client
) -> None:
    route = router.post(USERS).mock(side_effect=created)
    digest = sha("ada@example.com").upper()
    connector = make(http)
    connector.add([Record(key(1), {"email": digest})])
    assert body(route.calls[0])["elements"][0]["userIds"][0]["idValue"] == digest.lower()

    strict = make(http, prehashed=["email"])
    outcomes = strict.add([Record(key(2), {"email": "bob@example.com"})]).outcomes()
    assert outcomes[0].status == "rejected"
    assert (
        outcomes[0].reason == "email: email is declared pre-hashed but is not a SHA-256 hex digest"
    )
    assert len(route.calls) == 1  # nothing sent for a batch with no valid member


def test_invalid_values_are_rejected_per_record_without_quoting_them(
    router: respx.Router, http: httpx.Client
) -> None:
    route = router.post(USERS).mock(side_effect=created)
    bad_email = Record(key(1), {"email": "not-an-email"})
    bad_country = Record(key(2), {"email": "c@example.com", "country": "Narnia"})
    nothing = Record(key(3), {"email": None, "first_name": "Zed", "maid": "  "})
    outcomes = make(http).add([bad_email, bad_country, nothing, person(4)]).outcomes()
    assert [(o.status, o.reason) for o in outcomes] == [
        ("rejected", "email: not a valid email address"),
        ("rejected", "country: not an ISO 3166-1 alpha-2 country code"),
        ("rejected", "no email or mobile advertiser id to match on"),
        ("accepted", None),
    ]
    assert [e["userIds"][0]["idValue"] for e in body(route.calls[0])["elements"]] == [
        sha("user4@example.com")
    ]


# -- remove and update -------------------------------------------------------------------


def test_remove_sends_the_kept_ids_only(router: respx.Router, http: httpx.Client) -> None:
    route = router.post(USERS).mock(side_effect=created)
    gone = Record(key(1), destination_id=kept("ada@example.com", "aa-bb"))
    orphan = Record(key(2))  # nothing kept: cannot be removed by anything
    outcomes = make(http).remove([gone, orphan]).outcomes()
    assert body(route.calls[0]) == {
        "elements": [
            {
                "action": "REMOVE",
                "userIds": [
                    {"idType": "SHA256_EMAIL", "idValue": sha("ada@example.com")},
                    {"idType": "GOOGLE_AID", "idValue": "aa-bb"},
                ],
            }
        ]
    }
    assert route.calls[0].request.headers["X-RestLi-Method"] == "BATCH_CREATE"
    assert [(o.status, o.reason) for o in outcomes] == [
        ("accepted", None),
        ("rejected", "no kept identifiers to remove this member by"),
    ]


def test_update_with_a_new_email_removes_the_old_hash_and_adds_the_new(
    router: respx.Router, http: httpx.Client
) -> None:
    route = router.post(USERS).mock(side_effect=created)
    moved = Record(key(1), {"email": "new@example.com"}, kept("old@example.com"))
    renamed = Record(
        key(2), {"email": "same@example.com", "first_name": "Bo"}, kept("same@example.com")
    )
    outcomes = make(http, mode="mirror").update([moved, renamed]).outcomes()
    assert body(route.calls[0])["elements"] == [
        {
            "action": "REMOVE",
            "userIds": [{"idType": "SHA256_EMAIL", "idValue": sha("old@example.com")}],
        },
        {
            "action": "ADD",
            "userIds": [{"idType": "SHA256_EMAIL", "idValue": sha("new@example.com")}],
        },
        {
            "action": "ADD",
            "userIds": [{"idType": "SHA256_EMAIL", "idValue": sha("same@example.com")}],
            "firstName": "Bo",
        },
    ]
    assert [o.destination_id for o in outcomes] == [
        kept("new@example.com"),
        kept("same@example.com"),
    ]


def test_an_unconfirmed_send_keeps_both_id_sets_so_a_removal_takes_off_either(
    router: respx.Router, http: httpx.Client
) -> None:
    """An update whose answer never arrived leaves the member under its old ids or its new
    ones (the engine keeps ``expected_destination_id`` from before the request left): a
    removal takes off both, and a re-add takes off the stale one first."""
    route = router.post(USERS).mock(side_effect=created)
    connector = make(http, mode="mirror")
    moved = Record(key(1), {"email": "new@example.com"}, kept("old@example.com"))
    expected = connector.expected_destination_id("update", moved)
    assert expected is not None
    assert json.loads(expected) == [
        json.loads(kept("old@example.com")),
        json.loads(kept("new@example.com")),
    ]

    (gone,) = connector.remove([Record(key(1), destination_id=expected)]).outcomes()
    assert gone.status == "accepted"
    assert body(route.calls[0])["elements"] == [
        {"action": "REMOVE", "userIds": [{"idType": "SHA256_EMAIL", "idValue": sha(e)}]}
        for e in ("old@example.com", "new@example.com")
    ]
    (added,) = connector.add([Record(key(1), {"email": "new@example.com"}, expected)]).outcomes()
    assert [e["action"] for e in body(route.calls[1])["elements"]] == ["REMOVE", "ADD"]
    assert added.destination_id == kept("new@example.com")


# -- answers -----------------------------------------------------------------------------


def test_per_element_statuses_become_per_record_outcomes(
    router: respx.Router, http: httpx.Client
) -> None:
    reply = {
        "elements": [
            {"status": 201},
            {"status": 400, "error": {"message": "Invalid idValue for user2@example.com"}},
            {"status": 500, "error": {"message": "Internal error"}},
            {"status": 429},
        ]
    }
    router.post(USERS).respond(200, json=reply)
    outcomes = make(http).add([person(1), person(2), person(3), person(4)]).outcomes()
    assert [(o.status, o.reason) for o in outcomes] == [
        ("accepted", None),
        ("rejected", "LinkedIn: Invalid idValue for ***"),
        ("failed", "LinkedIn: Internal error"),
        ("failed", "LinkedIn: element status 429"),
    ]
    assert outcomes[0].destination_id == kept("user1@example.com")


def test_an_update_whose_remove_failed_is_not_accepted(
    router: respx.Router, http: httpx.Client
) -> None:
    reply = {"elements": [{"status": 400, "error": {"message": "bad id"}}, {"status": 201}]}
    router.post(USERS).respond(200, json=reply)
    moved = Record(key(1), {"email": "new@example.com"}, kept("old@example.com"))
    outcomes = make(http, mode="mirror").update([moved]).outcomes()
    assert [(o.status, o.reason) for o in outcomes] == [("rejected", "LinkedIn: bad id")]


def test_an_answer_without_a_body_accepts_the_batch(
    router: respx.Router, http: httpx.Client
) -> None:
    router.post(USERS).respond(201)
    outcomes = make(http).add([person(1)]).outcomes()
    assert [o.status for o in outcomes] == ["accepted"]


def test_statuses_that_do_not_cover_the_batch_are_transient(
    router: respx.Router, http: httpx.Client
) -> None:
    router.post(USERS).respond(200, json={"elements": [{"status": 201}]})
    with pytest.raises(TransientError, match="1 statuses for 2 elements"):
        make(http).add([person(1), person(2)])


def test_bare_429_is_rate_limited_with_the_default_cool_down(
    router: respx.Router, http: httpx.Client, clock: FakeClock
) -> None:
    router.post(USERS).mock(side_effect=[httpx.Response(429), httpx.Response(429), created])
    connector = make(http)
    with pytest.raises(RateLimited) as first:
        connector.add([person(1)])
    with pytest.raises(RateLimited) as second:
        connector.add([person(1)])
    assert (first.value.retry_after, second.value.retry_after) == (1.0, 2.0)
    assert connector.add([person(1)]).outcomes()[0].status == "accepted"
    assert sum(clock.slept) == pytest.approx(3.0, abs=0.01)  # the account cooled down


def test_404_from_a_young_segment_and_409_are_retried(
    router: respx.Router, http: httpx.Client
) -> None:
    router.post(USERS).mock(
        side_effect=[httpx.Response(404, json={"message": "Not found"}), httpx.Response(409)]
    )
    connector = make(http)
    with pytest.raises(TransientError):
        connector.add([person(1)])
    with pytest.raises(TransientError):
        connector.add([person(1)])


def test_a_refused_request_is_a_batch_rejection_without_secrets(
    router: respx.Router, http: httpx.Client
) -> None:
    router.post(USERS).respond(
        400, json={"message": f"Bad request for user1@example.com token {TOKEN}"}
    )
    with pytest.raises(BatchRejected) as caught:
        make(http).add([person(1)])
    assert TOKEN not in str(caught.value) and "user1@example.com" not in str(caught.value)


def test_published_rate_limit_paces_requests(
    router: respx.Router, http: httpx.Client, clock: FakeClock
) -> None:
    connector = make(http)
    rates, concurrency = effective_limits(connector)
    assert (rates, concurrency) == ([RateLimit(600, 60)], 4)
    router.post(USERS).mock(side_effect=created)
    assert isinstance(http, DestinationClient)
    http.limiter = AccountLimiter(rates, concurrency, clock=clock, sleep=clock.sleep)
    connector.add([person(1)])
    connector.add([person(2)])
    assert sum(clock.slept) == pytest.approx(0.1, rel=0.05)  # 600/min: 0.1 s apart


# -- settings and open -------------------------------------------------------------------


def test_open_refuses_fields_linkedin_does_not_take(http: httpx.Client) -> None:
    with pytest.raises(ConfigError, match=r"fields\.phone"):
        make(http, fields=("email", "phone"))
    with pytest.raises(ConfigError, match="map email or maid"):
        make(http, fields=("first_name", "country"))


def test_settings_are_validated() -> None:
    with pytest.raises(ValidationError, match="cannot be prehashed"):
        LinkedInConfig(access_token=TOKEN, segment_id=SEGMENT, prehashed=["first_name"])
    with pytest.raises(ValidationError):
        LinkedInConfig(access_token=TOKEN, segment_id=SEGMENT, batch_size=5_001)
    with pytest.raises(ValidationError):
        LinkedInConfig(access_token=TOKEN, segment_id="../admin")
    config = LinkedInConfig(access_token=TOKEN, segment_id=SEGMENT)
    assert (config.batch_size, config.api_version) == (5_000, "202604")
    assert LinkedInConnector.capabilities.hashed_keys
    assert LinkedInConnector.capabilities.modes == {"membership", "mirror"}


# -- check -------------------------------------------------------------------------------


SEGMENT_URL = f"{BASE}/dmpSegments/{SEGMENT}"


def test_check_reads_the_segment(router: respx.Router, http: httpx.Client) -> None:
    route = router.get(SEGMENT_URL).respond(
        200, json={"id": 4242, "type": "USER", "status": "READY"}
    )
    make(http).check()
    request = route.calls[0].request
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["LinkedIn-Version"] == "202604"


def test_check_bad_token_is_auth_error(router: respx.Router, http: httpx.Client) -> None:
    router.get(SEGMENT_URL).respond(401, json={"serviceErrorCode": 65600, "status": 401})
    with pytest.raises(AuthError) as caught:
        make(http).check()
    assert TOKEN not in str(caught.value)


def test_check_unknown_segment_is_config_error(router: respx.Router, http: httpx.Client) -> None:
    router.get(SEGMENT_URL).respond(404, json={"message": "Not found", "status": 404})
    with pytest.raises(ConfigError, match="segment_id") as caught:
        make(http).check()
    assert not isinstance(caught.value, AuthError)


@pytest.mark.parametrize(
    ("segment", "message"),
    [
        ({"type": "COMPANY", "status": "READY"}, "COMPANY"),
        ({"type": "USER", "status": "EXPIRED"}, "EXPIRED"),
    ],
)
def test_check_refuses_a_segment_that_cannot_take_users(
    router: respx.Router, http: httpx.Client, segment: dict[str, str], message: str
) -> None:
    router.get(SEGMENT_URL).respond(200, json=segment)
    with pytest.raises(ConfigError, match=f"segment_id: .*{message}"):
        make(http).check()


def test_check_network_failure_is_transient(router: respx.Router, http: httpx.Client) -> None:
    router.get(SEGMENT_URL).mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(TransientError):
        make(http).check()


# -- cost --------------------------------------------------------------------------------


def test_requests_per_10000_members_added_and_removed(
    router: respx.Router, http: httpx.Client
) -> None:
    """The engine's batch size is the connector's (5,000): two calls each way."""
    route = router.post(USERS).mock(side_effect=created)
    connector = make(http)
    members = [person(n) for n in range(10_000)]
    size = connector.batch_size
    kept_ids: list[str] = []
    for start in range(0, len(members), size):
        result = connector.add(members[start : start + size])
        kept_ids += [o.destination_id or "" for o in result.outcomes()]
    assert size == 5_000 and route.call_count == 2
    leaving = [Record(m.key, destination_id=d) for m, d in zip(members, kept_ids, strict=True)]
    for start in range(0, len(leaving), size):
        connector.remove(leaving[start : start + size])
    assert route.call_count == 4
    assert len(body(route.calls[3])["elements"]) == 5_000


# -- normalisation (LinkedIn's rules, from syncer.identifiers) ---------------------------


@pytest.mark.parametrize(
    ("kind", "raw", "sent"),
    [
        ("email", "  Ada.Lovelace@Example.COM ", sha("ada.lovelace@example.com")),
        # LinkedIn documents no +tag or dot stripping: the address stays as written.
        ("email", "a.b+news@gmail.com", sha("a.b+news@gmail.com")),
        ("email", sha("x@example.com").upper(), sha("x@example.com")),
        ("maid", " 38400000-8CF0-11BD-B23E-10B96E40000D ", "38400000-8cf0-11bd-b23e-10b96e40000d"),
        ("first_name", "  Ada   Maria ", "Ada Maria"),
        ("country", "gb", "GB"),
    ],
)
def test_linkedin_identifier_table(kind: Any, raw: str, sent: str) -> None:
    assert identifier("linkedin", kind, raw) == sent


@given(
    st.sampled_from(["email", "first_name", "last_name", "country", "maid"]),
    st.text(min_size=1, max_size=30),
)
def test_normalising_twice_changes_nothing(kind: Any, raw: str) -> None:
    try:
        once = normalize("linkedin", kind, raw)
    except InvalidValue:
        return
    assert normalize("linkedin", kind, once) == once
