"""A base for connectors that speak a vendor's JSON-over-HTTPS API.

It owns what every such connector repeats: the overridable ``base_url`` (sandboxes, EU data
centres, proxies, tests), auth headers, one ``request`` call that goes through the engine's
:class:`~syncer.http.DestinationClient` (rate limiter, classification, secret scrubbing), a
tolerant JSON reader, vendor reasons made safe for the audit log, and the hook for a vendor's
rate-limit headers. Subclasses keep only payload shapes and response parsing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, Generic, TypeVar, cast, get_args, get_origin
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from syncer.connector import (
    Connector,
    ConnectorConfig,
    Outcome,
    Record,
    SyncContext,
    credential_digest,
)
from syncer.declarations import CLIENT_ERRORS, Auth, BasicAuth, RateLimitHeaders
from syncer.errors import (
    AuthError,
    BatchRejected,
    ConfigError,
    RateLimited,
    SyncerError,
    TransientError,
)
from syncer.http import (
    Action,
    DestinationClient,
    describe_host,
    raise_for_action,
    scrub,
    time_limit,
    transport_error,
)
from syncer.oauth import (
    AccessToken,
    Grant,
    RefreshCredentials,
    TokenProvider,
    provider_for,
    refresh_grant,
)
from syncer.steps import BatchProgress
from syncer.types import JSON, JSONBody, QueryParams

REASON_LIMIT = 200
#: Modes that take members out of the destination (see ``membership_fields``).
REMOVING_MODES = frozenset({"membership", "mirror"})
T = TypeVar("T")
C = TypeVar("C", bound=ConnectorConfig)


class RestConfig(ConnectorConfig):
    """Settings every vendor connector has; subclasses add account, list and token fields."""

    # Tokens may be pasted by mistake: keep raw input out of pydantic's error text.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    #: None: the connector's ``default_base_url``.
    base_url: str | None = None
    #: Seconds per request; None: the engine's SYNCER_HTTP_TIMEOUT.
    timeout: float | None = Field(default=None, gt=0)

    @field_validator("base_url")
    @classmethod
    def _base_url_shape(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be an absolute http(s) URL")
        return value.rstrip("/")


class JobPolling(RestConfig):
    """Settings of connectors that poll a vendor's asynchronous jobs within a batch."""

    poll_interval: float = Field(default=1.0, gt=0, description="First wait between polls.")
    max_poll_interval: float = Field(default=30.0, gt=0)
    job_timeout: float = Field(default=1800.0, gt=0, description="Give up on a job after this.")


class RestConnector(Connector, Generic[C]):
    """Connector over a JSON HTTP API: subclass as ``RestConnector[MyConfig]`` (the config
    model is taken from the parameter), set ``default_base_url`` and declare the rest.

    Declarations (class attributes, checked against the config model when the class is
    defined, so a misspelt field is an import-time ``TypeError``):

    * ``auth``: :class:`~syncer.declarations.BearerAuth`, ``HeaderAuth`` or ``BasicAuth``
      (or a tuple of them), each naming a ``SecretStr`` config field;
    * ``rate_limit_headers``: :class:`~syncer.declarations.RateLimitHeaders` (or a tuple), the
      vendor's window headers, read on every answer;
    * ``parsed_statuses``: the 4xx statuses ``request`` returns to the connector instead of
      raising ``BatchRejected`` (``CLIENT_ERRORS`` for all of them), so their body becomes the
      records' reasons;
    * ``account_fields``: config fields naming the vendor account for rate limiting (plain
      fields shown, ``SecretStr`` ones digested); default: the ``auth`` fields;
    * ``static_headers``: headers every request carries (``Accept``, API versions that never
      change); ``default_headers()`` for ones built from the config;
    * ``membership_fields``: config fields (one of them) that taking members out needs: the
      list, segment or group; ``open()`` refuses a ``membership`` or ``mirror`` sync without.

    The engine owns retries, batching, rate limits and state; a subclass builds payloads and
    reads answers (``add``/``remove``/``update`` or ``write``, ``check``, maybe ``classify``).
    """

    default_base_url: ClassVar[str] = ""
    auth: ClassVar[Auth | tuple[Auth, ...]] = ()
    rate_limit_headers: ClassVar[RateLimitHeaders | tuple[RateLimitHeaders, ...]] = ()
    parsed_statuses: ClassVar[frozenset[int]] = frozenset()
    account_fields: ClassVar[tuple[str, ...]] = ()
    static_headers: ClassVar[Mapping[str, str]] = MappingProxyType({})
    membership_fields: ClassVar[tuple[str, ...]] = ()
    #: The vendor's OAuth token endpoint, for a config with :class:`RefreshCredentials`: the
    #: default ``oauth_grant`` is the refresh_token grant there (``token_url`` overrides it).
    default_token_url: ClassVar[str] = ""
    #: A vendor's own token-refusal codes as OAuth's (HubSpot's ``BAD_REFRESH_TOKEN``...).
    token_errors: ClassVar[Mapping[str, str]] = MappingProxyType({})

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        model = _generic_config(cls)
        if model is not None:
            declared = cls.__dict__.get("config_model")
            if declared is not None and declared is not model:
                raise TypeError(
                    f"{cls.__name__}: config_model {declared.__name__} is not the generic"
                    f" parameter {model.__name__}; drop config_model (it is inferred)"
                )
            cls.config_model = model
        _check_declarations(cls)

    def __init__(self, config: ConnectorConfig, context: SyncContext, http: httpx.Client) -> None:
        super().__init__(config, context, http)
        #: What each batch got done in this run, so a retried batch resumes (syncer.steps).
        self.progress = BatchProgress()
        self._tokens: TokenProvider | bool | None = False  # False: not looked up yet

    def open(self) -> None:
        """Refuse a sync whose mode removes members (``membership``, ``mirror``) when none of
        ``membership_fields`` is set: there would be no list to take them out of; get the
        first access token when the connector renews its own, so a run that cannot get one
        ends before it marks or sends anything. Overrides call ``super().open()`` first."""
        self.access_token()
        names = self.membership_fields
        if not names or self.context.mode not in REMOVING_MODES:
            return
        if all(getattr(self.config, name, None) in (None, "") for name in names):
            needed = " or ".join(names)
            raise ConfigError(f"{self.name}: {needed} is required in {self.context.mode} mode")

    @classmethod
    def auths(cls) -> tuple[Auth, ...]:
        """The ``auth`` declaration as a tuple."""
        return cls.auth if isinstance(cls.auth, tuple) else (cls.auth,)

    @classmethod
    def window_headers(cls) -> tuple[RateLimitHeaders, ...]:
        """The ``rate_limit_headers`` declaration as a tuple."""
        declared = cls.rate_limit_headers
        return declared if isinstance(declared, tuple) else (declared,)

    @property
    def settings(self) -> C:
        """The config, typed as the connector's own model (the engine builds it from
        ``config_model``; anything else is a wiring bug, reported as a config error)."""
        if not isinstance(self.config, self.config_model):
            raise ConfigError(f"{self.name} connector needs a {self.config_model.__name__}")
        return cast(C, self.config)

    @property
    def base_url(self) -> str:
        configured = getattr(self.config, "base_url", None)
        return str(configured or self.default_base_url).rstrip("/")

    def auth_headers(self) -> dict[str, str]:
        """Headers carrying the credentials (values are kept out of every message): those
        of the ``auth`` declaration. Override for credentials that are not a plain header.
        An access token that renews itself (:meth:`oauth_grant`) is not among them: ``request``
        sets it as the request leaves, after any wait for the rate limiter."""
        headers: dict[str, str] = {}
        for auth in self.auths():
            headers.update(auth.headers(self.config))
        return headers

    # -- OAuth tokens that renew themselves (syncer.oauth) ----------------------------------

    def oauth_grant(self) -> Grant | None:
        """How this sync obtains access tokens from the vendor's token endpoint, or None
        when it uses a static credential: by default the refresh_token grant at
        ``default_token_url`` when the config has refresh credentials. Override for another
        grant (return your own :class:`Grant`)."""
        cfg = self.config
        if not self.default_token_url or not isinstance(cfg, RefreshCredentials):
            return None
        if not cfg.renews():
            return None
        return refresh_grant(self.name, cfg, self.default_token_url, aliases=self.token_errors)

    def token_provider(self) -> TokenProvider | None:
        """The process-wide provider of this account's tokens (shared with every sync and
        thread using the same credentials), or None without :meth:`oauth_grant`."""
        if self._tokens is False:
            grant = self.oauth_grant()
            self._tokens = None if grant is None else provider_for(grant)
        return self._tokens if isinstance(self._tokens, TokenProvider) else None

    def access_token(self) -> AccessToken | None:
        """The current access token (fetched or renewed when due), or None without OAuth
        renewal. Raises TransientError or AuthError/ConfigError like any request."""
        provider = self.token_provider()
        if provider is None:
            return None
        return provider.token(self.http, self.context.sync_name)

    def default_headers(self) -> dict[str, str]:
        """Headers every request carries besides auth: ``static_headers``; override for API
        version headers built from the config (call ``super()`` to keep the static ones)."""
        return dict(self.static_headers)

    def account_key(self) -> str:
        """Connector name, API host and :meth:`account_id`: syncs with the same key share one
        rate limiter (never a secret, never a list or audience id)."""
        host = (urlsplit(self.base_url).hostname or "").lower()
        return f"{self.name}:{host}:{self.account_id()}"

    def account_id(self) -> str:
        """What tells two accounts on one API host apart for rate limiting: the vendor's
        account or workspace id and the credential, nothing per sync.

        Built from ``account_fields`` (default: the ``auth`` declaration's fields): plain
        values shown, ``SecretStr`` values (and unset ones) as one :func:`credential_digest`.
        Without either, a digest of every ``SecretStr`` in the config. Override it only when
        the account is not a config field (Salesforce: the instance host alone)."""
        if not self.account_fields:
            grant = self.oauth_grant()
            if grant is not None:  # the client and the user it acts for, never the token
                return f"oauth-{grant.account}"
        names = self.account_fields or tuple(f for a in self.auths() for f in a.secret_fields)
        if not names:
            return credential_digest(*self.secret_values())
        shown: list[str] = []
        hidden: list[str] = []
        for name in names:
            value = getattr(self.config, name, None)
            if isinstance(value, SecretStr):
                hidden.append(value.get_secret_value())
            elif value is None:
                hidden.append("")
            else:
                shown.append(str(value))
        return ":".join([*shown, credential_digest(*hidden)] if hidden else shown)

    def classify(self, response: httpx.Response) -> Action | None:
        """The declared part of classification: a 429 without ``Retry-After`` holds the
        account until the declared window resets; a status in ``parsed_statuses`` comes back
        to the connector (IGNORE). Everything else: None, the engine's table. Overrides
        should end with ``return super().classify(response)``."""
        status = response.status_code
        if status == 429 and "Retry-After" not in response.headers:
            self._hold(response, rate_limited=True)
        if status in self.parsed_statuses:
            return Action.IGNORE
        return None

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.base_url}/{path.lstrip('/')}"

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: JSONBody | None = None,
        params: QueryParams | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        auth: httpx.Auth | None = None,
    ) -> httpx.Response:
        """One request; returns only an answer the HTTP layer accepted, raises syncer errors
        (AuthError, RateLimited, TransientError, BatchRejected, ConfigError) otherwise.
        ``auth`` runs as the request leaves, after any wait for the rate limiter (signing
        with a timestamp belongs there). With tokens that renew themselves, a 401 forgets
        the token it refused and the request is sent once more with a new one."""
        provider = self.token_provider()
        if provider is not None:
            auth = _Bearer(self, auth)
        renewed = False
        while True:
            request = self._build(method, path, json_body, params, headers, content)
            try:
                # Never follow redirects: httpx would turn a redirected POST into a GET, and a
                # 2xx from that would look like an acknowledged batch.
                response = self.http.send(request, auth=auth, follow_redirects=False)
                if not isinstance(self.http, DestinationClient):
                    action = self.classify(response)
                    raise_for_action(response, secrets=self.secret_values(), action=action)
            except httpx.RequestError as exc:  # only a plain client lets these through
                raise transport_error(exc, request) from None
            except AuthError as exc:
                if provider is None or exc.status != 401:
                    raise
                if renewed:
                    raise AuthError(
                        f"{exc}: a token just issued by the token endpoint was refused too;"
                        " check the app's scopes and the user's access",
                        status=401,
                    ) from None
                # A 401 is not processed: sending again with a new token is safe.
                bearer = request.headers.get("Authorization", "")
                provider.refused(bearer.removeprefix("Bearer "))
                renewed = True
                continue
            self.read_rate_limit_headers(response)
            return response

    def _build(
        self,
        method: str,
        path: str,
        json_body: JSONBody | None,
        params: QueryParams | None,
        headers: Mapping[str, str] | None,
        content: bytes | None,
    ) -> httpx.Request:
        all_headers = {**self.default_headers(), **self.auth_headers(), **(headers or {})}
        kwargs: dict[str, Any] = {"headers": all_headers}
        if json_body is not None:
            kwargs["content"] = json.dumps(json_body, separators=(",", ":"), default=str).encode()
            all_headers.setdefault("Content-Type", "application/json")
        elif content is not None:
            kwargs["content"] = content
        if params:
            kwargs["params"] = {k: v for k, v in params.items() if v is not None}
        timeout = getattr(self.config, "timeout", None)
        if timeout is not None:
            kwargs["timeout"] = timeout
        return self.http.build_request(method, self.url(path), **kwargs)

    def read_rate_limit_headers(self, response: httpx.Response) -> None:
        """Look at the vendor's rate-limit headers on an accepted answer and ``slow_down``
        when they say the window is spent: the ``rate_limit_headers`` declaration. Override
        only for headers that are not a remaining/reset pair (a JSON usage header)."""
        self._hold(response, rate_limited=False)

    def _hold(self, response: httpx.Response, *, rate_limited: bool) -> None:
        for declared in self.window_headers():
            wait = declared.wait(response.headers, rate_limited=rate_limited)
            if wait is not None:
                self.slow_down(wait)

    def slow_down(self, seconds: float) -> None:
        """Hold every request to this account for ``seconds`` (the vendor said so without
        a 429). Works through the engine's limiter; a plain client has none."""
        limiter = getattr(self.http, "limiter", None)
        if limiter is not None and seconds > 0:
            limiter.cool_down(min(seconds, float(getattr(self.http, "max_wait", 300.0))))

    def json(self, response: httpx.Response) -> JSON:
        """The body as JSON; an empty body is None. A 2xx with a body we cannot read is a
        transient failure: we cannot tell what the vendor accepted, so nothing advances."""
        if not response.content.strip():
            return None
        try:
            data: JSON = json.loads(response.content)
        except (ValueError, UnicodeDecodeError):
            host = describe_host(response.request)
            raise TransientError(
                f"HTTP {response.status_code} from {host}: unreadable JSON body"
            ) from None
        return data

    def wait_for_job(
        self,
        what: str,
        poll: Callable[[], T | None],
        *,
        first_wait: float | None = None,
        max_wait: float | None = None,
        timeout: float | None = None,
    ) -> T:
        """Poll a vendor job (inside one batch) until ``poll`` returns its final answer.

        Waits go through ``self.pause`` (the engine's clock and stop event), doubling from
        ``first_wait`` up to ``max_wait``. A 429 while polling waits its Retry-After and polls
        again: the job was accepted, so the batch must not be sent twice. Running out of
        ``timeout`` or a stop leaves the batch unsynced (TransientError); ``poll`` raises for
        a job that failed. Waits not given come from the config's :class:`JobPolling` settings
        (``poll_interval``, ``max_poll_interval``, ``job_timeout``).
        """
        polling = self.config if isinstance(self.config, JobPolling) else JobPolling()
        first_wait = polling.poll_interval if first_wait is None else first_wait
        max_wait = polling.max_poll_interval if max_wait is None else max_wait
        timeout = polling.job_timeout if timeout is None else timeout
        waited, delay, interval = 0.0, first_wait, first_wait
        while True:
            if waited + delay > timeout:
                raise TransientError(f"{self.name}: {what} not finished after {waited:.0f}s")
            if not self.pause(delay):
                raise TransientError(f"{self.name}: stopped while {what} ran")
            waited += delay
            try:
                # The job was accepted: ``timeout`` bounds the wait for it, not the batch's
                # time budget (which would resend an accepted batch).
                with time_limit(None):
                    answer = poll()
            except RateLimited as exc:
                delay = exc.retry_after if exc.retry_after is not None else interval
                continue
            if answer is not None:
                return answer
            interval = min(interval * 2, max_wait)
            delay = interval

    def probe(
        self,
        method: str,
        path: str,
        what: str,
        *,
        json_body: JSONBody | None = None,
        params: QueryParams | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """A ``check()`` call: a 4xx (other than auth, which is AuthError) means the setting
        named ``what`` is wrong, so it becomes a ConfigError that names it."""
        try:
            return self.request(method, path, json_body=json_body, params=params, headers=headers)
        except BatchRejected as exc:
            raise ConfigError(f"{self.name}: {what}: {exc}") from None

    def error_text(self, response: httpx.Response) -> str:
        """The vendor's reason in a refused answer (a status in ``parsed_statuses``), as it
        wrote it: override to read the vendor's error envelope. Default: the body as text.
        :meth:`reason` makes it safe; never put this text in a message unscrubbed."""
        try:
            return response.text
        except (UnicodeDecodeError, LookupError):
            return ""

    def expect(
        self,
        response: httpx.Response,
        what: str,
        *,
        records: Iterable[Record] = (),
        error: type[SyncerError] = BatchRejected,
    ) -> None:
        """Nothing for a success; for a parsed 4xx the connector does not settle record by
        record, raise ``error`` (default BatchRejected: the engine halves the batch to find
        the refused records) as ``<name>: <what>: HTTP <status>: <reason>``, the reason from
        :meth:`error_text` with secrets and ``records``' data removed."""
        if response.status_code < 400:
            return
        text = self.reason(self.error_text(response) or "no detail", records)
        raise error(f"{self.name}: {what}: HTTP {response.status_code}: {text}")

    def reason(self, text: object, records: Iterable[Record] = ()) -> str:
        """A vendor's reason, fit for the audit log: no secrets, no record keys or values,
        no emails or phone numbers, one line of at most 200 characters."""
        hidden = [*self.secret_values(), *record_text(records)]
        return scrub(str(text), secrets=hidden, limit=REASON_LIMIT) or "rejected"


class _Bearer(httpx.Auth):
    """``Authorization: Bearer`` with the connector's current access token, set as the
    request leaves: after the wait for the rate limiter, which may outlast a token (then
    ``inner``, the connector's own ``auth``, if any)."""

    def __init__(self, connector: RestConnector[Any], inner: httpx.Auth | None) -> None:
        self.connector = connector
        self.inner = inner

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.connector.access_token()
        if token is not None:
            request.headers["Authorization"] = f"Bearer {token.value}"
        if self.inner is None:
            yield request
        else:
            yield from self.inner.auth_flow(request)


def group_by_value(
    records: Iterable[Record], value_of: Callable[[Record], str], missing: str
) -> tuple[dict[str, list[Record]], list[Outcome]]:
    """Records grouped by their upsert key ``value_of(record)``: records sharing one are one
    vendor record, sent once (vendors refuse a batch naming a key twice). Records without a
    value are rejected with the reason ``missing``, in the returned outcomes."""
    groups: dict[str, list[Record]] = {}
    refused: list[Outcome] = []
    for record in records:
        value = value_of(record)
        if value:
            groups.setdefault(value, []).append(record)
        else:
            refused.append(Outcome(record.key, "rejected", missing))
    return groups, refused


def record_text(records: Iterable[Record]) -> list[str]:
    """Keys and string field values of ``records``: record data never goes into messages."""
    found: list[str] = []
    for record in records:
        found.append(record.key)
        found += [v for v in record.fields.values() if isinstance(v, str)]
    return found


def dig(value: object, *path: str) -> JSON:
    """``value[path[0]][path[1]]...`` through nested JSON objects; None where one is missing."""
    found: object = value
    for part in path:
        if not isinstance(found, dict):
            return None
        found = found.get(part)
    return cast(JSON, found)


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """``items`` cut into pieces of at most ``size`` (for vendors with a smaller sub-limit)."""
    return [items[i : i + size] for i in range(0, len(items), max(1, size))]


def _generic_config(cls: type) -> type[ConnectorConfig] | None:
    """``MyConfig`` of ``class X(RestConnector[MyConfig])``; None for other bases."""
    for base in cls.__dict__.get("__orig_bases__", ()):
        origin = get_origin(base)
        if isinstance(origin, type) and issubclass(origin, RestConnector):
            for arg in get_args(base):
                if isinstance(arg, type) and issubclass(arg, ConnectorConfig):
                    return arg
    return None


def _check_declarations(cls: type[RestConnector[Any]]) -> None:
    """Refuse declarations that name no field of the config model, credentials that are not
    ``SecretStr`` (they would not be kept out of messages), and parsed statuses the engine
    owns. A class without its own config model yet (a generic base) is checked later."""
    model = cls.config_model
    where = cls.__name__
    wrong = sorted(set(cls.parsed_statuses) - CLIENT_ERRORS)
    if wrong:
        raise TypeError(
            f"{where}.parsed_statuses: {wrong} belong to the engine; only 4xx other than"
            " 401, 403, 408 and 429 can go to the connector"
        )
    if model is ConnectorConfig or model is RestConfig:
        return
    for auth in cls.auths():
        for name in auth.secret_fields:
            _need_field(model, name, f"{where}.auth", secret=True)
        if isinstance(auth, BasicAuth) and auth.username_field is not None:
            _need_field(model, auth.username_field, f"{where}.auth", secret=False)
    for name in cls.account_fields:
        _need_field(model, name, f"{where}.account_fields", secret=False)
    for name in cls.membership_fields:
        _need_field(model, name, f"{where}.membership_fields", secret=False)


def _need_field(model: type[BaseModel], name: str, what: str, *, secret: bool) -> None:
    field = model.model_fields.get(name)
    if field is None:
        raise TypeError(f"{what}: {model.__name__} has no field {name!r}")
    annotation = field.annotation
    if secret and annotation is not SecretStr and SecretStr not in get_args(annotation):
        raise TypeError(f"{what}: {model.__name__}.{name} must be a SecretStr")


def quoted_literal(value: str) -> str:
    """``value`` as a string literal of SOQL (Salesforce) or GAQL (Google Ads): in single
    quotes, backslashes and quotes escaped."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"
