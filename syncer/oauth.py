"""OAuth access tokens that renew themselves: one per account, shared by every sync and thread.

A connector whose vendor speaks OAuth 2.0 describes how to get a token (a :class:`Grant`: the
token endpoint, the form to post, which settings hold what); this module does the rest:

* one :class:`TokenProvider` per account and credential in the process (:func:`provider_for`,
  keyed by token URL, client id and a digest of the credentials), so the daemon's syncs and
  a run's sending threads share one token and one refresh;
* a token is renewed when it is within a margin of its expiry (:func:`margin`), one refresh
  at a time under a lock: threads that need it meanwhile wait for that refresh and take its
  token rather than asking again;
* a 401 from the API forgets the token it refused (once, however many threads saw it), so
  the next request gets a new one (``RestConnector.request`` retries the request once);
* token endpoint answers are classified like any call: 5xx, 408, 429 and network failures
  are ``TransientError`` (the engine retries the batch); ``invalid_grant``,
  ``invalid_client`` and other refusals are ``AuthError`` (exit 78) naming the sync and the
  setting to fix; a 2xx that is not a JSON token (an HTML login page) a ``ConfigError`` naming
  ``token_url``.

Tokens live in memory only: never written to disk, logs, messages or the audit log. A
refresh token the endpoint rotates is kept in memory too (the configured one is used again
after a restart).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from syncer.errors import AuthError, ConfigError, RateLimited, SyncerError, TransientError
from syncer.http import DestinationClient, describe_host, parse_retry_after, scrub, transport_error
from syncer.log import get_logger

log = get_logger("syncer.oauth")

#: Most seconds before expiry a token is renewed.
MAX_MARGIN = 60.0
#: Share of a token's lifetime left when it is renewed, for short-lived ones.
MARGIN_SHARE = 0.2
#: Seconds a refused grant is answered from memory (other threads and syncs of the account
#: get the same error without asking the endpoint again).
REFUSAL_MEMORY = 10.0
#: Seconds a still-valid token is kept after a failed renewal before the endpoint is asked again.
RENEWAL_RETRY = 5.0
#: Refusal codes that blame the client (id or secret) rather than the grant.
CLIENT_CODES = frozenset({"invalid_client", "unauthorized_client", "invalid_client_id"})
_EXPLAINED = 160  # characters of a vendor's error_description kept in a message


def margin(lifetime: float) -> float:
    """Seconds before expiry a token living ``lifetime`` seconds is renewed: a fifth of its
    life, at most a minute (an hour-long Google token: 60 s; a 2 s test token: 0.4 s)."""
    return min(MAX_MARGIN, MARGIN_SHARE * max(0.0, lifetime))


@dataclass(frozen=True, slots=True)
class Grant:
    """How to get an access token for one account: what the connector declares.

    ``form`` is called for each refresh (a JWT assertion carries the time it was made).
    ``identity`` tells accounts apart (client id, refresh token or user, key): only its
    digest is kept. ``grant_setting`` and ``client_setting`` are what a refusal blames
    (``destination.refresh_token``...). ``keep`` names token-answer fields the connector
    needs besides the token (Salesforce's ``instance_url``); ``aliases`` maps a vendor's own
    error codes to OAuth's (HubSpot's ``BAD_REFRESH_TOKEN`` is ``invalid_grant``).
    """

    connector: str
    token_url: str
    form: Callable[[], dict[str, str]]
    identity: tuple[str, ...]
    grant_setting: str
    client_setting: str
    secrets: tuple[str, ...] = field(default=(), repr=False)
    keep: tuple[str, ...] = ()
    aliases: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The process-wide cache key: token URL, client and credentials, digested."""
        text = "\0".join((self.token_url, *self.identity))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @property
    def account(self) -> str:
        """A short digest naming the account for rate limiting (never a secret)."""
        return self.key[:16]


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A token and when to renew it (on the provider's clock; None: unknown, kept until the
    API refuses it). ``extra`` holds the answer's fields the grant asked to ``keep``."""

    value: str = field(repr=False)
    renew_at: float | None
    expires_at: float | None
    extra: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # never the token, even in a traceback's locals
        return f"AccessToken(renew_at={self.renew_at}, expires_at={self.expires_at})"


class TokenProvider:
    """The current access token of one account, renewed before expiry and after a 401.

    Thread-safe; one refresh at a time. ``refreshes`` counts tokens obtained (tests and
    metrics read it)."""

    def __init__(self, grant: Grant, clock: Callable[[], float] = time.monotonic) -> None:
        self.grant = grant
        self.clock = clock
        self.refreshes = 0
        self._lock = threading.Lock()
        self._token: AccessToken | None = None
        self._rotated: str | None = None  # a refresh token the endpoint issued in place
        self._refusal: tuple[type[SyncerError], str, float] | None = None

    def token(self, http: httpx.Client, sync: str) -> AccessToken:
        """A token that is not due for renewal, fetched through ``http`` when needed.
        ``sync`` names the sync asking, for messages. Raises TransientError (retry later),
        AuthError or ConfigError (the message names the setting to fix)."""
        current = self._token
        if current is not None and self._fresh(current):
            return current
        with self._lock:
            current = self._token
            if current is not None and self._fresh(current):
                return current  # another thread renewed it while this one waited
            refusal = self._refusal
            if refusal is not None and self.clock() - refusal[2] < REFUSAL_MEMORY:
                raise refusal[0](f"sync {sync!r}: {refusal[1]}")
            try:
                renewed = self._fetch(http)
            except TransientError as exc:
                if current is not None and not self._expired(current):
                    # Due, but still valid: keep it, and ask again only after a pause, so
                    # an endpoint that is down is not asked (and waited on) by every request.
                    pause = self.clock() + RENEWAL_RETRY
                    if current.expires_at is not None:
                        pause = min(pause, current.expires_at)
                    self._token = replace(current, renew_at=pause)
                    return current
                raise type(exc)(f"sync {sync!r}: {exc}", retry_after=exc.retry_after) from None
            except _Refused as exc:
                self._refusal = (exc.kind, exc.text, self.clock())
                raise exc.kind(f"sync {sync!r}: {exc.text}") from None
            except ConfigError as exc:  # a key that cannot sign, a certificate that fails
                raise type(exc)(f"sync {sync!r}: {exc}") from None
            self._token = renewed
            self._refusal = None
            self.refreshes += 1
            lifetime = None
            if renewed.expires_at is not None:
                lifetime = round(renewed.expires_at - self.clock(), 1)
            # The account is a digest of the client and credentials, never the token.
            log.info(
                "oauth.token_obtained",
                connector=self.grant.connector,
                account=self.grant.account,
                sync=sync,
                expires_in_s=lifetime,
                renewal=self.refreshes - 1,
            )
            return renewed

    def refused(self, value: str) -> None:
        """The API answered 401 to the token ``value``: forget it if it is still the current
        one (a thread that saw the 401 after another renewed it changes nothing)."""
        with self._lock:
            if self._token is not None and self._token.value == value:
                self._token = None

    def _fresh(self, token: AccessToken) -> bool:
        return token.renew_at is None or self.clock() < token.renew_at

    def _expired(self, token: AccessToken) -> bool:
        return token.expires_at is not None and self.clock() >= token.expires_at

    # -- asking the token endpoint --------------------------------------------------------

    def _fetch(self, http: httpx.Client) -> AccessToken:
        grant = self.grant
        form = grant.form()
        if self._rotated is not None and "refresh_token" in form:
            form["refresh_token"] = self._rotated
        request = http.build_request(
            "POST", grant.token_url, data=form, headers={"Accept": "application/json"}
        )
        asked = self.clock()
        response = _exchange(http, request)
        return self._read(response, asked)

    def _read(self, response: httpx.Response, asked: float) -> AccessToken:
        grant = self.grant
        status = response.status_code
        where = f"{grant.connector} token endpoint {describe_host(response.request)}"
        body = _json_object(response)
        if status == 429:
            wait = parse_retry_after(response.headers.get("Retry-After"))
            raise RateLimited(f"{where}: HTTP 429", retry_after=wait)
        if status == 408 or status >= 500:
            what = f" ({_shape(response)})" if body is None else ""
            raise TransientError(
                f"{where} answered HTTP {status}{what}; no access token yet",
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        if 300 <= status < 400:
            raise _Refused(
                ConfigError,
                f"{where} answered HTTP {status} (a redirect, not followed): set"
                f" destination.token_url to the final URL",
            )
        if status >= 400:
            raise _Refused(AuthError, self._refusal_text(where, status, body))
        if body is None:
            raise _Refused(
                ConfigError,
                f"{where} answered HTTP {status} with {_shape(response)} instead of a JSON"
                " token; nothing was sent. Is destination.token_url the vendor's token"
                " endpoint?",
            )
        value = body.get("access_token")
        if not isinstance(value, str) or not value.strip():
            raise _Refused(
                ConfigError,
                f"{where} answered HTTP {status} without an access_token; nothing was sent",
            )
        rotated = body.get("refresh_token")
        if isinstance(rotated, str) and rotated and rotated not in grant.secrets:
            self._rotated = rotated
        lifetime = _seconds(body.get("expires_in"))
        extra = {k: v for k in grant.keep if isinstance(v := body.get(k), str) and v}
        if lifetime is None:
            return AccessToken(value, None, None, extra)
        expires = asked + lifetime
        return AccessToken(value, expires - margin(lifetime), expires, extra)

    def _refusal_text(self, where: str, status: int, body: Mapping[str, Any] | None) -> str:
        grant = self.grant
        code, description = _error_of(body, grant.aliases)
        if code is None and status == 401:
            code = "invalid_client"
        said = code or f"HTTP {status}"
        if description:
            hidden = [*grant.secrets, *([self._rotated] if self._rotated else [])]
            said += f": {scrub(description, secrets=hidden, limit=_EXPLAINED)}"
        if code == "invalid_grant":
            return (
                f"{where} refused the grant ({said}); {grant.grant_setting} has expired, was"
                " revoked or is wrong: authorise again and set the new value. Nothing was sent"
            )
        if code in CLIENT_CODES:
            return (
                f"{where} refused the client ({said}); check {grant.client_setting}."
                " Nothing was sent"
            )
        return f"{where} refused the token request ({said}). Nothing was sent"


class _Refused(Exception):
    """A token request the endpoint refused for good: the error to raise (without the sync)."""

    def __init__(self, kind: type[SyncerError], text: str) -> None:
        super().__init__(text)
        self.kind = kind
        self.text = text


def _exchange(http: httpx.Client, request: httpx.Request) -> httpx.Response:
    """Send a token request: outside the account's limiter on the engine's client, and
    read whatever its status; a transport failure is a TransientError (or a ConfigError for
    a certificate that does not verify)."""
    if isinstance(http, DestinationClient):
        return http.send_unpaced(request)
    try:
        return http.send(request, follow_redirects=False)
    except httpx.RequestError as exc:
        raise transport_error(exc, request) from None


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        data = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _shape(response: httpx.Response) -> str:
    """What a non-JSON answer looks like, without quoting it."""
    kind = response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    head = response.content.lstrip()[:15].lower()
    if "html" in kind or head.startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    if not response.content.strip():
        return "an empty body"
    return f"a {kind or 'non-JSON'} body"


def _error_of(
    body: Mapping[str, Any] | None, aliases: Mapping[str, str]
) -> tuple[str | None, str | None]:
    """OAuth's ``error`` and ``error_description`` (or a vendor's ``status``/``message``,
    translated by ``aliases``)."""
    if body is None:
        return None, None
    code = body.get("error")
    if not isinstance(code, str):
        status = body.get("status")
        code = status if isinstance(status, str) else None
    description = body.get("error_description") or body.get("message")
    if code is not None:
        code = aliases.get(code, code)
    return code, description if isinstance(description, str) else None


def _seconds(value: Any) -> float | None:
    """``expires_in`` as seconds (numbers or numeric strings); None when absent or silly."""
    if isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


# -- the process-wide cache ----------------------------------------------------------------

_providers: dict[str, TokenProvider] = {}
_providers_lock = threading.Lock()


def provider_for(grant: Grant) -> TokenProvider:
    """The process's provider for ``grant``'s account: every sync and thread using the same
    token URL, client and credentials shares it (and its token)."""
    key = grant.key
    with _providers_lock:
        provider = _providers.get(key)
        if provider is None:
            provider = _providers[key] = TokenProvider(grant)
        return provider


def forget_all() -> None:
    """Drop every cached provider and token (tests)."""
    with _providers_lock:
        _providers.clear()


# -- settings shared by OAuth connectors ---------------------------------------------------


def _credential_schema(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """The JSON Schema's share of ``_one_way_in``: one set of credentials must be given
    (editors flag a destination with none)."""
    choices = getattr(model, "credential_choices", None)
    if choices is not None:
        schema["anyOf"] = [{"required": list(fields)} for fields in choices()]


class RefreshCredentials(BaseModel):
    """Settings of a connector that can renew its own access tokens: ``client_id``,
    ``client_secret`` and ``refresh_token`` (secrets from the environment), and the token
    endpoint's URL for tests and proxies. Give either these or the static token field named
    by ``static_token_field``, not both."""

    model_config = ConfigDict(json_schema_extra=_credential_schema)

    static_token_field: ClassVar[str] = "access_token"
    #: Fields a refresh needs, besides client_id (Salesforce: client_secret is optional).
    refresh_fields: ClassVar[tuple[str, ...]] = ("client_secret", "refresh_token")

    client_id: str | None = Field(
        default=None,
        description="OAuth client (app) id; with client_secret and refresh_token, access"
        " tokens are obtained and renewed by syncer instead of a static token.",
    )
    client_secret: SecretStr | None = Field(default=None, description="OAuth client secret.")
    refresh_token: SecretStr | None = Field(
        default=None, description="OAuth refresh token of the authorised user."
    )
    token_url: str | None = Field(
        default=None, description="Token endpoint; default: the vendor's (tests, proxies)."
    )

    @field_validator("token_url")
    @classmethod
    def _token_url_shape(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("token_url must be an absolute http(s) URL")
        return value

    @model_validator(mode="after")
    def _one_way_in(self) -> RefreshCredentials:
        static = self.static_token_field
        renewing = self.renewing_fields()
        given = [name for name in renewing if getattr(self, name, None) is not None]
        has_static = getattr(self, static, None) is not None
        if not given:
            if not has_static:
                raise ValueError(
                    f"{static} is required, or {', '.join(self.required_fields())} for"
                    " access tokens that renew themselves"
                )
            return self
        if has_static:
            raise ValueError(
                f"give either {static} or {', '.join(self.required_fields())}, not both"
            )
        conflict = self.conflict()
        if conflict is not None:
            raise ValueError(conflict)
        missing = [name for name in self.required_fields() if getattr(self, name) is None]
        if missing:
            raise ValueError(
                f"{', '.join(missing)} missing: tokens that renew themselves need"
                f" {', '.join(self.required_fields())}"
            )
        return self

    @classmethod
    def credential_choices(cls) -> list[tuple[str, ...]]:
        """The sets of fields that each make valid credentials (for the JSON Schema)."""
        return [(cls.static_token_field,), ("client_id", *cls.refresh_fields)]

    def conflict(self) -> str | None:
        """What is wrong with refresh credentials that exclude each other (Salesforce's two
        flows), checked before missing ones; None when nothing is."""
        return None

    def renewing_fields(self) -> tuple[str, ...]:
        """Fields whose presence means "renew tokens" (any one of them)."""
        return ("client_id", *self.refresh_fields)

    def required_fields(self) -> tuple[str, ...]:
        """Fields renewing tokens needs, all of them."""
        return ("client_id", *self.refresh_fields)

    def renews(self) -> bool:
        """Whether tokens are obtained from the token endpoint (not a static token)."""
        return self.client_id is not None


def refresh_grant(
    connector: str,
    config: RefreshCredentials,
    default_url: str,
    *,
    extra: Mapping[str, str] | None = None,
    keep: tuple[str, ...] = (),
    aliases: Mapping[str, str] | None = None,
) -> Grant:
    """The standard ``refresh_token`` grant (RFC 6749, 6): client id and secret in the form,
    as Google, LinkedIn, HubSpot and Salesforce all take them."""
    client_id = config.client_id or ""
    secret = config.client_secret.get_secret_value() if config.client_secret else ""
    refresh = config.refresh_token.get_secret_value() if config.refresh_token else ""

    def form() -> dict[str, str]:
        body = {"grant_type": "refresh_token", "client_id": client_id, "refresh_token": refresh}
        if secret:
            body["client_secret"] = secret
        body.update(extra or {})
        return body

    return Grant(
        connector=connector,
        token_url=config.token_url or default_url,
        form=form,
        identity=(client_id, fingerprint(secret), fingerprint(refresh)),
        grant_setting="destination.refresh_token",
        client_setting="destination.client_id and destination.client_secret",
        secrets=tuple(s for s in (secret, refresh) if s),
        keep=keep,
        aliases=aliases or {},
    )


def fingerprint(secret: str) -> str:
    """SHA-256 of a credential: tells credentials apart in a cache key without keeping them."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


# -- JWT bearer assertions (RFC 7523) ------------------------------------------------------

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: Seconds a signed assertion is valid (Salesforce accepts at most 3 minutes).
ASSERTION_LIFETIME = 180


def rs256_assertion(
    private_key_pem: str, claims: Mapping[str, Any], now: Callable[[], float] = time.time
) -> str:
    """A JWT signed with RS256 by ``private_key_pem`` (PKCS#1 or PKCS#8 PEM, unencrypted),
    with ``exp`` set ``ASSERTION_LIFETIME`` seconds from now. ConfigError when the key
    cannot be read or ``cryptography`` is not installed (the message says how to get it)."""
    try:
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding, rsa
    except ImportError:
        from syncer.dist import install_command

        raise ConfigError(
            "destination.private_key: signing a JWT needs the cryptography package:"
            f" {install_command('jwt')}"
        ) from None
    pem = private_key_pem.strip()
    if "\n" not in pem and "\\n" in pem:  # one line from a .env file
        pem = pem.replace("\\n", "\n")
    try:
        key = serialization.load_pem_private_key(pem.encode("utf-8"), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(
            "destination.private_key is not an unencrypted PEM private key"
            " (-----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY-----)"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError("destination.private_key must be an RSA key (RS256)")
    header = {"alg": "RS256", "typ": "JWT"}
    body = {**claims, "exp": int(now()) + ASSERTION_LIFETIME}
    signing_input = f"{_b64(json.dumps(header))}.{_b64(json.dumps(body))}".encode("ascii")
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode('ascii')}.{_b64(signature)}"


def _b64(data: str | bytes) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
