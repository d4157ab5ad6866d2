"""The token provider (syncer.oauth) against respx token endpoints: renewal before expiry on a
driven clock, one refresh shared by many threads, exactly one renewal after a 401, token
endpoint answers classified (invalid_grant, invalid_client, 5xx, 429, HTML), rotation kept in
memory, and Salesforce's JWT bearer assertion checked against the public key."""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import respx
from pydantic import SecretStr

from connectors.linkedin import LinkedInConfig, LinkedInConnector
from syncer.connector import Record, SyncContext
from syncer.enums import SyncMode
from syncer.errors import AuthError, ConfigError, RateLimited, TransientError
from syncer.oauth import (
    MAX_MARGIN,
    RENEWAL_RETRY,
    Grant,
    TokenProvider,
    forget_all,
    margin,
    provider_for,
    refresh_grant,
    rs256_assertion,
)
from syncer.ratelimit import AccountLimiter
from syncer.testing import FakeClock
from syncer.testing.harness import engine_client
from tests.fake_oauth import rsa_key_pair

TOKEN_URL = "https://oauth.test/token"
API = "https://api.linkedin.test/rest"


class Endpoint:
    """A respx token endpoint: counts requests, answers from a script or issues tokens."""

    def __init__(self, router: respx.Router, lifetime: float = 100.0) -> None:
        self.calls = 0
        self.lifetime = lifetime
        self.script: list[httpx.Response] = []
        self.forms: list[dict[str, str]] = []
        self.gate: threading.Event | None = None
        self.lock = threading.Lock()
        router.post(TOKEN_URL).mock(side_effect=self.answer)

    def answer(self, request: httpx.Request) -> httpx.Response:
        if self.gate is not None:
            assert self.gate.wait(10)
        with self.lock:
            self.calls += 1
            self.forms.append({k: v[0] for k, v in parse_qs(request.content.decode()).items()})
            if self.script:
                return self.script.pop(0)
            body = {"access_token": f"tok-{self.calls}", "expires_in": self.lifetime}
            return httpx.Response(200, json=body)


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    forget_all()
    yield
    forget_all()


@pytest.fixture
def client(http: httpx.Client) -> httpx.Client:
    """The engine's client and a plain one (the kit's ``http`` fixture)."""
    return http


def grant(secret: str = "client-secret-abc", refresh: str = "refresh-token-xyz") -> Grant:
    config = LinkedInConfig(
        client_id="app-1",
        client_secret=secret,  # type: ignore[arg-type]
        refresh_token=refresh,  # type: ignore[arg-type]
        token_url=TOKEN_URL,
        segment_id="42",
    )
    return refresh_grant("linkedin", config, "https://unused.test/token")


def test_margin_is_a_fifth_of_the_life_and_at_most_a_minute() -> None:
    assert margin(3600) == MAX_MARGIN == 60
    assert margin(2.0) == pytest.approx(0.4)
    assert margin(0) == 0


def test_a_token_is_reused_until_within_the_margin_then_renewed(
    router: respx.Router, client: httpx.Client
) -> None:
    endpoint = Endpoint(router, lifetime=100)
    clock = FakeClock()
    provider = TokenProvider(grant(), clock=clock)
    first = provider.token(client, "vip")
    assert first.value == "tok-1" and endpoint.calls == 1
    clock.sleep(79.0)  # renewal is due at 80 (margin 20)
    assert provider.token(client, "vip") is first and endpoint.calls == 1
    clock.sleep(1.5)
    assert provider.token(client, "vip").value == "tok-2" and endpoint.calls == 2
    assert endpoint.forms[0] == {
        "grant_type": "refresh_token",
        "client_id": "app-1",
        "client_secret": "client-secret-abc",
        "refresh_token": "refresh-token-xyz",
    }
    assert "tok-" not in repr(first)


def test_threads_waiting_for_a_token_share_one_refresh(
    router: respx.Router, client: httpx.Client
) -> None:
    endpoint = Endpoint(router)
    endpoint.gate = threading.Event()
    provider = provider_for(grant())
    got: list[str] = []
    threads = [
        threading.Thread(target=lambda: got.append(provider.token(client, "vip").value))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    endpoint.gate.set()
    for thread in threads:
        thread.join(10)
    assert got == ["tok-1"] * 8
    assert endpoint.calls == 1
    # Another sync with the same credentials gets the same provider (and token).
    assert provider_for(grant()) is provider
    assert provider_for(grant(refresh="another-refresh-token")) is not provider


def connector(router: respx.Router, http: httpx.Client) -> LinkedInConnector:
    config = LinkedInConfig(
        client_id="app-1",
        client_secret="client-secret-abc",  # type: ignore[arg-type]
        refresh_token="refresh-token-xyz",  # type: ignore[arg-type]
        token_url=TOKEN_URL,
        segment_id="42",
        base_url=API,
    )
    context = SyncContext("li_vip", SyncMode.MEMBERSHIP, ("email",))
    return LinkedInConnector(config, context, http)


def test_a_401_renews_the_token_once_and_sends_again(
    router: respx.Router, client: httpx.Client
) -> None:
    endpoint = Endpoint(router)
    seen: list[str] = []

    def users(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        if request.headers["Authorization"] == "Bearer tok-1":
            return httpx.Response(401, json={"message": "Invalid access token"})
        return httpx.Response(200, json={"elements": [{"status": 201}]})

    router.post(f"{API}/dmpSegments/42/users").mock(side_effect=users)
    result = connector(router, client).add([Record("k1", {"email": "a@example.com"})])
    assert [o.status for o in result.outcomes()] == ["accepted"]
    assert seen == ["Bearer tok-1", "Bearer tok-2"]
    assert endpoint.calls == 2


def test_many_threads_refused_with_one_token_renew_it_once(
    router: respx.Router, client: httpx.Client
) -> None:
    endpoint = Endpoint(router)
    provider = provider_for(grant())
    old = provider.token(client, "vip")
    for _ in range(6):  # six threads saw the 401 on the same token
        provider.refused(old.value)
    assert provider.token(client, "vip").value == "tok-2"
    provider.refused(old.value)  # a late one changes nothing
    assert provider.token(client, "vip").value == "tok-2"
    assert endpoint.calls == 2


def test_a_fresh_token_refused_too_is_an_auth_error_after_one_renewal(
    router: respx.Router, client: httpx.Client
) -> None:
    endpoint = Endpoint(router)
    router.post(f"{API}/dmpSegments/42/users").mock(
        return_value=httpx.Response(401, json={"message": "Invalid access token"})
    )
    with pytest.raises(AuthError, match="refused too") as caught:
        connector(router, client).add([Record("k1", {"email": "a@example.com"})])
    assert caught.value.exit_code == 78
    assert endpoint.calls == 2


def test_a_403_is_not_renewed(router: respx.Router, client: httpx.Client) -> None:
    endpoint = Endpoint(router)
    router.post(f"{API}/dmpSegments/42/users").mock(return_value=httpx.Response(403, json={}))
    with pytest.raises(AuthError):
        connector(router, client).add([Record("k1", {"email": "a@example.com"})])
    assert endpoint.calls == 1


def test_invalid_grant_names_the_sync_and_the_setting_and_is_remembered(
    router: respx.Router, client: httpx.Client
) -> None:
    endpoint = Endpoint(router)
    refusal = {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
    endpoint.script = [httpx.Response(400, json=refusal)]
    provider = provider_for(grant())
    with pytest.raises(AuthError) as caught:
        provider.token(client, "li_vip")
    text = str(caught.value)
    assert text.startswith("sync 'li_vip': linkedin token endpoint oauth.test")
    assert "invalid_grant: Token has been expired or revoked." in text
    assert "destination.refresh_token" in text and "Nothing was sent" in text
    assert "refresh-token-xyz" not in text and "client-secret-abc" not in text
    with pytest.raises(AuthError, match="sync 'other'"):  # another sync, no second request
        provider.token(client, "other")
    assert endpoint.calls == 1


@pytest.mark.parametrize(
    ("response", "error", "words"),
    [
        (
            httpx.Response(401, json={"error": "invalid_client"}),
            AuthError,
            "refused the client (invalid_client); check destination.client_id",
        ),
        (httpx.Response(503, text="busy"), TransientError, "answered HTTP 503"),
        (
            httpx.Response(429, headers={"Retry-After": "7"}, json={}),
            RateLimited,
            "HTTP 429",
        ),
        (
            httpx.Response(
                200,
                text="<!DOCTYPE html><html>Sign in</html>",
                headers={"Content-Type": "text/html"},
            ),
            ConfigError,
            "with an HTML page instead of a JSON token",
        ),
        (
            httpx.Response(200, json={"token_type": "Bearer"}),
            ConfigError,
            "without an access_token",
        ),
        (
            httpx.Response(302, headers={"Location": "https://elsewhere.test/"}),
            ConfigError,
            "redirect, not followed",
        ),
    ],
)
def test_token_endpoint_answers_are_classified(
    router: respx.Router,
    client: httpx.Client,
    response: httpx.Response,
    error: type[Exception],
    words: str,
) -> None:
    Endpoint(router).script = [response]
    with pytest.raises(error) as caught:
        provider_for(grant()).token(client, "vip")
    assert type(caught.value) is error
    assert words in str(caught.value)
    if isinstance(caught.value, RateLimited):
        assert caught.value.retry_after == 7


def test_a_network_failure_is_transient(router: respx.Router, client: httpx.Client) -> None:
    router.post(TOKEN_URL).mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(TransientError, match="connection failed"):
        provider_for(grant()).token(client, "vip")


def test_a_due_token_still_valid_is_used_while_the_endpoint_is_down(
    router: respx.Router, client: httpx.Client
) -> None:
    endpoint = Endpoint(router, lifetime=100)
    clock = FakeClock()
    provider = TokenProvider(grant(), clock=clock)
    first = provider.token(client, "vip")
    clock.sleep(90)  # due (80), not expired (100)
    endpoint.script = [httpx.Response(502)]
    assert provider.token(client, "vip") is first
    clock.sleep(15)  # expired now
    endpoint.script = [httpx.Response(502)]
    with pytest.raises(TransientError):
        provider.token(client, "vip")
    assert provider.token(client, "vip").value == "tok-4"


def test_a_failed_renewal_is_not_tried_again_by_every_request(
    router: respx.Router, client: httpx.Client
) -> None:
    """While the endpoint is down and the token still valid, requests go on with the token
    instead of each waiting on the endpoint; it is asked again after a short pause."""
    endpoint = Endpoint(router, lifetime=100)
    clock = FakeClock()
    provider = TokenProvider(grant(), clock=clock)
    first = provider.token(client, "vip")
    clock.sleep(90)  # due (80), not expired (100)
    endpoint.script = [httpx.Response(502)]
    assert provider.token(client, "vip") is first
    asked = endpoint.calls
    for _ in range(20):
        assert provider.token(client, "vip").value == first.value
    assert endpoint.calls == asked  # the endpoint was not asked by each request
    clock.sleep(RENEWAL_RETRY)
    assert provider.token(client, "vip").value != first.value  # asked again, renewed
    assert endpoint.calls == asked + 1


def test_a_rotated_refresh_token_is_used_next_time(
    router: respx.Router, client: httpx.Client
) -> None:
    endpoint = Endpoint(router, lifetime=10)
    endpoint.script = [
        httpx.Response(
            200, json={"access_token": "a", "expires_in": 10, "refresh_token": "rotated-1"}
        )
    ]
    clock = FakeClock()
    provider = TokenProvider(grant(), clock=clock)
    provider.token(client, "vip")
    clock.sleep(9)
    provider.token(client, "vip")
    assert [f["refresh_token"] for f in endpoint.forms] == ["refresh-token-xyz", "rotated-1"]


def test_without_expires_in_a_token_lives_until_refused(
    router: respx.Router, client: httpx.Client
) -> None:
    endpoint = Endpoint(router)
    endpoint.script = [httpx.Response(200, json={"access_token": "sf", "instance_url": "x"})]
    clock = FakeClock()
    provider = TokenProvider(grant(), clock=clock)
    assert provider.token(client, "vip").value == "sf"
    clock.sleep(100_000)
    assert provider.token(client, "vip").value == "sf" and endpoint.calls == 1


def _claims(assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
    def part(text: str) -> Any:
        return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))

    head, body, _ = assertion.split(".")
    return part(head), part(body)


def test_rs256_assertion_verifies_with_the_public_key() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    pem, public = rsa_key_pair()
    claims = {"iss": "consumer", "sub": "user@example.com", "aud": "https://login.test"}
    assertion = rs256_assertion(pem, claims, now=lambda: 1_000_000.0)
    header, body = _claims(assertion)
    assert header == {"alg": "RS256", "typ": "JWT"}
    assert body == {**claims, "exp": 1_000_180}
    signed, signature = assertion.rsplit(".", 1)
    public.verify(
        base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)),
        signed.encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )
    one_line = pem.replace("\n", "\\n")  # as a .env file holds it
    assert _claims(rs256_assertion(one_line, claims))[1]["sub"] == "user@example.com"


def test_a_private_key_that_is_not_one_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"destination\.private_key is not an unencrypted PEM"):
        rs256_assertion("not a key", {"iss": "x"})


def test_the_token_endpoint_is_asked_outside_the_accounts_limiter(router: respx.Router) -> None:
    """Google allows one request in flight: the token is fetched as a request leaves, holding
    that permit, so asking the token endpoint through the limiter would wait for itself."""
    Endpoint(router)
    limiter = AccountLimiter([], 1)
    assert limiter.acquire(None)  # the API request's permit, held
    got: list[str] = []
    with engine_client(router, limiter=limiter) as http:
        thread = threading.Thread(
            target=lambda: got.append(provider_for(grant()).token(http, "v").value)
        )
        thread.start()
        thread.join(10)
    limiter.release()
    assert got == ["tok-1"]


def test_secrets_stay_out_of_reprs() -> None:
    text = repr(grant())
    assert "client-secret-abc" not in text and "refresh-token-xyz" not in text


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({}, "access_token is required, or client_id, client_secret, refresh_token"),
        ({"access_token": "${T}", "client_id": "a"}, "give either access_token or client_id"),
        ({"client_id": "a", "refresh_token": "${R}"}, "client_secret missing"),
    ],
)
def test_one_set_of_credentials_is_required(settings: dict[str, str], words: str) -> None:
    from pydantic import ValidationError

    values = {k: SecretStr(v) if v.startswith("$") else v for k, v in settings.items()}
    with pytest.raises(ValidationError, match=re.escape(words)):
        LinkedInConfig(segment_id="42", **values)  # type: ignore[arg-type]


def test_salesforce_takes_a_refresh_token_or_a_key_and_needs_an_instance_for_a_static_token() -> (
    None
):
    from pydantic import ValidationError

    from connectors.salesforce import SalesforceConfig

    base = {"external_id_field": "Warehouse_Id__c"}
    with pytest.raises(ValidationError, match="base_url"):
        SalesforceConfig(access_token=SecretStr("t"), **base)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="not both"):
        SalesforceConfig(
            client_id="c", refresh_token=SecretStr("r"), private_key=SecretStr("k"), **base
        )  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="private_key missing"):
        SalesforceConfig(client_id="c", username="u@example.com", **base)  # type: ignore[arg-type]
    jwt = SalesforceConfig(
        client_id="c", username="u@example.com", private_key=SecretStr("k"), **base
    )  # type: ignore[arg-type]
    assert jwt.renews() and jwt.base_url is None
