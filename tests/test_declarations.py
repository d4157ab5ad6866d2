"""What a connector author declares instead of coding (syncer.declarations, RestConnector):
auth, rate-limit headers, parsed 4xx, the account, the config model, the name."""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Sequence

import httpx
import pytest
import respx
from pydantic import SecretStr

import syncer
from syncer import (
    CLIENT_ERRORS,
    BasicAuth,
    BatchRejected,
    BatchResult,
    BearerAuth,
    Capabilities,
    ConfigError,
    HeaderAuth,
    Operation,
    RateLimitHeaders,
    Record,
    RestConfig,
    RestConnector,
    SyncContext,
)
from syncer.connector import discover, load_connector
from syncer.http import make_client
from syncer.ratelimit import AccountLimiter

BASE = "https://api.acme.example"
TOKEN = "tok-0123456789abcdef"
CONTEXT = SyncContext("s", "membership", ("email",))


class AcmeConfig(RestConfig):
    api_key: SecretStr
    list_id: str | None = None
    workspace: str = "w1"


class Acme(RestConnector[AcmeConfig]):
    """The plain JSON API of docs/connector-api.md, trimmed."""

    default_base_url = BASE
    capabilities = Capabilities(max_batch_size=10)
    auth = BearerAuth("api_key")
    rate_limit_headers = RateLimitHeaders("X-Left", reset="X-Reset")
    parsed_statuses = frozenset({422})
    membership_fields = ("list_id",)

    def write(self, operation: Operation, records: Sequence[Record]) -> BatchResult:
        body = {"members": [{"id": r.key, **r.fields} for r in records]}
        response = self.request("PUT", "/v1/members", json_body=body)
        result = BatchResult(records)
        if response.status_code == 422:
            data = self.json(response)
            errors = data.get("errors") if isinstance(data, dict) else None
            if not isinstance(errors, list) or not errors:
                self.expect(response, "members", records=records)  # raises BatchRejected
                return result
            for error in errors:
                key = error.get("id") if isinstance(error, dict) else None
                if isinstance(error, dict) and isinstance(key, str):
                    result.reject(key, self.reason(error.get("message"), records))
        return result


class Clock:
    """A fake clock the limiter's sleeps advance: waits are observed, never slept."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += seconds


def build(
    router: respx.MockRouter,
    cls: type[RestConnector[AcmeConfig]] = Acme,
    clock: Clock | None = None,
    context: SyncContext = CONTEXT,
    **settings: object,
) -> RestConnector[AcmeConfig]:
    limiter = AccountLimiter([], 4, clock=clock, sleep=clock.sleep) if clock else None
    client = make_client(transport=httpx.MockTransport(router.handler), limiter=limiter)
    config = cls.config_model.model_validate({"api_key": TOKEN, "list_id": "L1", **settings})
    connector = cls(config, context, client)
    client.classifier = connector.classify
    client.secrets = connector.secret_values()
    return connector


# -- the config model and the name ------------------------------------------------------------


def test_config_model_comes_from_the_generic_parameter() -> None:
    assert Acme.config_model is AcmeConfig


def test_a_second_config_model_that_disagrees_is_refused_at_class_definition() -> None:
    class Other(RestConfig):
        api_key: SecretStr

    with pytest.raises(TypeError, match="generic parameter"):

        class Wrong(RestConnector[AcmeConfig]):
            config_model = Other


def test_a_subclass_keeps_or_narrows_its_parents_config_model() -> None:
    class Child(Acme):
        pass

    class WiderConfig(AcmeConfig):
        region: str = "eu"

    class Narrowed(Acme):
        config_model = WiderConfig

    assert Child.config_model is AcmeConfig
    assert Narrowed.config_model is WiderConfig


def test_every_builtin_is_named_by_its_entry_point() -> None:
    infos = {i.name: i for i in discover() if i.target.startswith("connectors.")}
    assert len(infos) == 12
    for name, info in infos.items():
        assert info.error is None, info.error
        assert info.cls is not None and info.cls.name == name


class Unnamed(RestConnector[AcmeConfig]):
    default_base_url = BASE


class UnnamedToo(RestConnector[AcmeConfig]):
    default_base_url = BASE


class Misnamed(RestConnector[AcmeConfig]):
    name = "acme_crm"


def _plugins(monkeypatch: pytest.MonkeyPatch, **targets: str) -> None:
    """Pretend a plugin package registered ``targets`` (entry-point name -> object)."""
    points = importlib.metadata.EntryPoints(
        importlib.metadata.EntryPoint(name, target, "syncer.connectors")
        for name, target in targets.items()
    )
    monkeypatch.setattr("syncer.connector.entry_points", lambda group: points)


def test_a_connector_without_a_name_takes_its_entry_points(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _plugins(monkeypatch, acme=f"{__name__}:Unnamed")
    assert load_connector("acme").name == "acme"


def test_a_name_that_disagrees_with_the_entry_point_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _plugins(monkeypatch, acme=f"{__name__}:Misnamed")
    with pytest.raises(ConfigError, match=r"declares name 'acme_crm' but is registered as 'acme'"):
        load_connector("acme")


def test_an_unnamed_class_reads_its_name_without_being_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tools that only hold the class (the kit writing a mapping) see the name too."""
    _plugins(monkeypatch, acme=f"{__name__}:UnnamedToo")
    assert UnnamedToo.name == "acme"
    connector = build(respx.MockRouter(), UnnamedToo)
    assert connector.name == "acme"
    assert connector.account_key().startswith("acme:api.acme.example:")


# -- auth ---------------------------------------------------------------------------------------


class TwoKeysConfig(RestConfig):
    api_key: SecretStr
    developer: SecretStr
    list_id: str | None = None


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        (BearerAuth("api_key"), {"authorization": f"Bearer {TOKEN}"}),
        (HeaderAuth("Access-Token", "api_key"), {"access-token": TOKEN}),
        (
            HeaderAuth("Authorization", "api_key", prefix="Klaviyo-API-Key "),
            {"authorization": f"Klaviyo-API-Key {TOKEN}"},
        ),
        # base64("syncer:tok-0123456789abcdef")
        (
            BasicAuth("api_key", username="syncer"),
            {"authorization": "Basic c3luY2VyOnRvay0wMTIzNDU2Nzg5YWJjZGVm"},
        ),
        (
            (BearerAuth("api_key"), HeaderAuth("developer-token", "developer")),
            {"authorization": f"Bearer {TOKEN}", "developer-token": "dev-secret"},
        ),
    ],
)
def test_declared_auth_is_sent_on_every_request(auth: object, expected: dict[str, str]) -> None:
    class Vendor(RestConnector[TwoKeysConfig]):
        default_base_url = BASE

    Vendor.auth = auth  # type: ignore[assignment]
    router = respx.MockRouter()
    route = router.get(f"{BASE}/ping").respond(200, json={})
    client = make_client(transport=httpx.MockTransport(router.handler))
    config = TwoKeysConfig(api_key=SecretStr(TOKEN), developer=SecretStr("dev-secret"))
    Vendor(config, CONTEXT, client).request("GET", "/ping")
    sent = route.calls.last.request.headers
    assert {name: sent[name] for name in expected} == expected


def test_auth_naming_a_missing_field_fails_at_class_definition() -> None:
    with pytest.raises(TypeError, match=r"Typo\.auth: AcmeConfig has no field 'apikey'"):

        class Typo(RestConnector[AcmeConfig]):
            auth = BearerAuth("apikey")


def test_auth_from_a_plain_string_field_is_refused() -> None:
    """A credential that is not a SecretStr would not be kept out of messages."""
    with pytest.raises(TypeError, match=r"AcmeConfig\.workspace must be a SecretStr"):

        class Plain(RestConnector[AcmeConfig]):
            auth = BearerAuth("workspace")


def test_a_refused_batch_never_shows_the_credential_or_record_values() -> None:
    router = respx.MockRouter()
    echo = {"error": f"bad key {TOKEN} for a@example.com"}
    router.put(f"{BASE}/v1/members").respond(422, json=echo)
    connector = build(router)
    with pytest.raises(BatchRejected) as caught:
        connector.add([Record("k1", {"email": "a@example.com"})])
    assert TOKEN not in str(caught.value)
    assert "a@example.com" not in str(caught.value)


# -- parsed statuses ----------------------------------------------------------------------------


def test_a_parsed_status_comes_back_for_per_record_reasons() -> None:
    router = respx.MockRouter()
    answer = {"errors": [{"id": "k2", "message": "email k2@example.com is invalid"}]}
    router.put(f"{BASE}/v1/members").respond(422, json=answer)
    records = [Record("k1", {"email": "k1@example.com"}), Record("k2", {"email": "k2@example.com"})]
    outcomes = build(router).add(records).outcomes()
    assert [(o.key, o.status) for o in outcomes] == [("k1", "accepted"), ("k2", "rejected")]
    assert outcomes[1].reason == "email *** is invalid"


def test_statuses_the_engine_owns_cannot_be_parsed_by_the_connector() -> None:
    for status in (401, 403, 408, 429, 500):
        with pytest.raises(TypeError, match="belong to the engine"):

            class Greedy(RestConnector[AcmeConfig]):
                parsed_statuses = frozenset({400, status})

    assert 422 in CLIENT_ERRORS and 429 not in CLIENT_ERRORS


# -- rate-limit headers -------------------------------------------------------------------------


def test_a_spent_window_holds_the_account_until_the_reset() -> None:
    router = respx.MockRouter()
    router.put(f"{BASE}/v1/members").mock(
        side_effect=[
            httpx.Response(200, json={}, headers={"X-Left": "0", "X-Reset": "7"}),
            httpx.Response(200, json={}, headers={"X-Left": "9", "X-Reset": "60"}),
            httpx.Response(200, json={}),
        ]
    )
    clock = Clock()
    connector = build(router, clock=clock)
    connector.add([Record("k1")])
    assert clock.slept == 0
    connector.add([Record("k1")])
    assert clock.slept == pytest.approx(7, abs=0.01)  # waited for the window
    connector.add([Record("k1")])
    assert clock.slept == pytest.approx(7, abs=0.01)  # 9 left: no wait


def test_a_429_without_retry_after_waits_for_the_declared_reset() -> None:
    class EpochVendor(Acme):
        rate_limit_headers = RateLimitHeaders("X-Left", reset="X-Reset", reset_unit="epoch")

    router = respx.MockRouter()
    reset = str(int(time.time()) + 40)
    router.put(f"{BASE}/v1/members").mock(
        side_effect=[
            httpx.Response(429, headers={"X-Left": "3", "X-Reset": reset}),
            httpx.Response(200, json={}),
        ]
    )
    clock = Clock()
    connector = build(router, EpochVendor, clock=clock)
    with pytest.raises(syncer.RateLimited):
        connector.add([Record("k1")])
    connector.add([Record("k1")])
    assert 35 <= clock.slept <= 41


@pytest.mark.parametrize(
    ("declared", "headers", "rate_limited", "wait"),
    [
        (
            RateLimitHeaders("R", reset="T", reset_unit="milliseconds"),
            {"R": "0", "T": "2500"},
            False,
            2.5,
        ),
        (RateLimitHeaders("R", reset="T", default_reset=10), {"R": "0"}, False, 10.0),
        (RateLimitHeaders("R", reset="T", default_reset=10), {"R": "4"}, True, 10.0),
        (RateLimitHeaders("R", default_reset=300), {"R": "0"}, False, 300.0),
        (RateLimitHeaders("R", default_reset=300), {"R": "2"}, True, None),
        (RateLimitHeaders("R", reset="T"), {"R": "junk", "T": "5"}, False, None),
        (RateLimitHeaders("R", reset="T"), {"R": "0", "T": "inf"}, False, None),
    ],
)
def test_window_header_readings(
    declared: RateLimitHeaders, headers: dict[str, str], rate_limited: bool, wait: float | None
) -> None:
    assert declared.wait(headers, rate_limited=rate_limited) == wait


# -- the account --------------------------------------------------------------------------------


def test_the_default_account_is_the_declared_credential_not_the_list() -> None:
    router = respx.MockRouter()
    one = build(router, list_id="L1").account_key()
    assert build(router, list_id="L2").account_key() == one
    assert build(router, api_key="another-token-0000").account_key() != one
    assert TOKEN not in one


def test_account_fields_show_plain_ids_and_digest_secrets() -> None:
    class Workspaces(Acme):
        account_fields = ("workspace", "api_key")

    key = build(respx.MockRouter(), Workspaces, workspace="w42").account_key()
    assert ":api.acme.example:w42:" in key
    assert TOKEN not in key


# -- membership fields --------------------------------------------------------------------------


def test_a_mode_that_removes_members_needs_the_declared_list() -> None:
    with pytest.raises(ConfigError, match="list_id is required in membership mode"):
        build(respx.MockRouter(), list_id=None).open()
    upsert = SyncContext("s", "upsert", ("email",))
    build(respx.MockRouter(), context=upsert, list_id=None).open()  # nothing to remove from


def test_everything_the_docs_import_is_public() -> None:
    for name in syncer.__all__:
        assert getattr(syncer, name) is not None, name
