"""Meta (Facebook) Custom Audiences: membership of a customer-list audience by hashed rows.

Add is ``POST /{version}/{audience_id}/users`` and removal ``DELETE`` on the same path, both
with ``{"payload": {"schema": [...], "data": [[...], ...]}}``: a multi-key schema built from
the identifier kinds the mapping names as fields (``email``, ``phone``, ``date_of_birth``...),
rows of exactly ``len(schema)`` values with ``""`` where a member has none, at most 10,000
rows a call. Values are normalised and SHA-256 hashed by :mod:`syncer.identifiers` (Meta's
rules); ``EXTERN_ID`` and ``MADID`` go unhashed; a date of birth becomes ``DOBY``/``DOBM``/
``DOBD``. Meta answers with counts only (``num_received``, ``num_invalid_entries``), which
are reported with the run; there are no per-row results.

The hashed rows sent for a member are kept as its destination id (compact JSON), so removal
sends exactly those rows and needs no raw data; the engine keeps only SHA-256 keys.

Meta's error envelope (``{"error": {"code", "error_subcode", "message", ...}}``) is read:
throttling arrives as HTTP 400 with codes 4/17/32/613/80003 and is rate limiting, token
errors (190...) are auth errors, audiences that refuse membership edits (subcode 1713230,
"Audience Size too low" on removal from small audiences) turn into per-record rejections
with Meta's reason. ``X-Business-Use-Case-Usage`` slows the account down before Meta throttles.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, Literal, get_args

import httpx
from pydantic import Field, SecretStr, field_validator, model_validator

from syncer.connector import (
    BatchResult,
    Capabilities,
    NamedList,
    Operation,
    Outcome,
    Record,
    check_named_list,
)
from syncer.declarations import CLIENT_ERRORS
from syncer.errors import BatchRejected, ConfigError, TransientError
from syncer.http import Action
from syncer.identifiers import SUPPORTED, Kind, date_parts, identifier, looks_hashed, sha256_hex
from syncer.normalize import InvalidValue
from syncer.ratelimit import RateLimit
from syncer.rest import RestConfig, RestConnector, dig
from syncer.steps import Steps, apply

DEFAULT_VERSION = "v24.0"
#: Most rows in one ``/users`` call (Meta's documented maximum).
MAX_ROWS = 10_000
#: Meta's multi-key schema names for each identifier kind, in Meta's documented order.
SCHEMA_KEYS: dict[Kind, tuple[str, ...]] = {
    "external_id": ("EXTERN_ID",),
    "email": ("EMAIL",),
    "phone": ("PHONE",),
    "gender": ("GEN",),
    "date_of_birth": ("DOBY", "DOBM", "DOBD"),
    "last_name": ("LN",),
    "first_name": ("FN",),
    "city": ("CT",),
    "state": ("ST",),
    "postcode": ("ZIP",),
    "maid": ("MADID",),
    "country": ("COUNTRY",),
}
ORDER: tuple[str, ...] = tuple(key for keys in SCHEMA_KEYS.values() for key in keys)
#: Throttling codes: app (4), user (17), page (32), ad account (613), custom audience BUC
#: (80003, unverified). Meta sends them as HTTP 400, not 429.
THROTTLE_CODES = frozenset({4, 17, 32, 613, 80003})
#: Token and permission errors: expired or invalid token (190, 102), missing permission
#: (10, 200-299).
AUTH_CODES = frozenset({190, 102, 10, *range(200, 300)})
#: Subcodes of audiences that refuse membership edits (operation_status 471).
REFUSAL_SUBCODES = (1713230,)
#: Titles Meta gives a refused removal from a small audience (its codes are unpublished).
REFUSAL_TITLES = ("audience size too low",)
#: Usage percentage in X-Business-Use-Case-Usage at which we pause without an estimate.
FULL_USAGE = 100

Row = dict[str, str]
CustomerFileSource = Literal[
    "USER_PROVIDED_ONLY", "PARTNER_PROVIDED_ONLY", "BOTH_USER_AND_PARTNER_PROVIDED"
]
FILE_SOURCES: tuple[str, ...] = get_args(CustomerFileSource)
#: What the user states when creating an audience (Meta requires it; syncer cannot know it).
FILE_SOURCE_CHOICES = (
    "USER_PROVIDED_ONLY (you collected the data from your customers),"
    " PARTNER_PROVIDED_ONLY (partners gave it to you) or BOTH_USER_AND_PARTNER_PROVIDED"
)
#: "Terms of service has not been accepted": the ad account never accepted the Custom
#: Audience terms, which only a person can do, in Meta's web page.
TOS_CODES = frozenset({2655, 2663})
TOS_URL = "https://business.facebook.com/ads/manage/customaudiences/tos/?act={account}"
#: Audiences listed per page while looking one up by name.
AUDIENCE_PAGE = 100


class MetaConfig(RestConfig):
    """Settings of the ``meta`` destination."""

    access_token: SecretStr = Field(description="System-user access token, from the environment.")
    audience_id: str | None = Field(
        default=None, pattern=r"^\d+$", description="The customer-list custom audience."
    )
    audience_name: str | None = Field(
        default=None,
        min_length=1,
        description="The audience by name instead of audience_id (needs ad_account_id).",
    )
    create_if_missing: bool = Field(
        default=False, description="Create the audience_name audience when the account has none."
    )
    ad_account_id: str | None = Field(
        default=None,
        pattern=r"^(act_)?\d+$",
        description="Ad account to find or create audience_name in (digits, act_ allowed).",
    )
    customer_file_source: CustomerFileSource | None = Field(
        default=None,
        description="Where the audience's data comes from (required to create it): "
        + ", ".join(FILE_SOURCES),
    )
    audience_description: str | None = Field(
        default=None, description="Description of an audience syncer creates."
    )
    api_version: str = Field(default=DEFAULT_VERSION, pattern=r"^v\d+\.\d+$")
    app_secret: SecretStr | None = Field(
        default=None, description="App secret: adds appsecret_proof, for apps that require it."
    )
    token_in: Literal["query", "header"] = Field(
        default="query",
        description="access_token as a query parameter (documented) or a Bearer header.",
    )
    region: str | None = Field(
        default=None, pattern=r"^[A-Za-z]{2}$", description="Default phone region (ISO 3166)."
    )
    prehashed: list[Kind] = Field(
        default_factory=list, description="Kinds whose columns already hold SHA-256 digests."
    )
    refusal_subcodes: list[int] = Field(
        default_factory=lambda: list(REFUSAL_SUBCODES),
        description="error_subcodes meaning the audience refuses the edit (per-record rejection).",
    )
    batch_size: int | None = Field(default=MAX_ROWS, ge=1, le=MAX_ROWS)

    @model_validator(mode="after")
    def _audience_by_id_or_name(self) -> MetaConfig:
        check_named_list(
            self,
            id_field="audience_id",
            name_field="audience_name",
            required={"customer_file_source": FILE_SOURCE_CHOICES},
        )
        if self.audience_name is not None and self.ad_account_id is None:
            raise ValueError("audience_name needs ad_account_id: the account to look it up in")
        return self

    @field_validator("prehashed")
    @classmethod
    def _dob_cannot_be_prehashed(cls, value: list[Kind]) -> list[Kind]:
        if "date_of_birth" in value:
            raise ValueError("date_of_birth cannot be pre-hashed: Meta takes DOBY, DOBM, DOBD")
        return value


class MetaConnector(RestConnector[MetaConfig]):
    """Keep a Meta customer-list custom audience equal to a segment, by hashed identifiers."""

    name = "meta"
    description = "Meta Custom Audiences (hashed customer list membership)"
    capabilities = Capabilities.ad_audience(MAX_ROWS)
    default_base_url = "https://graph.facebook.com"
    # Business Use Case limits depend on the app's tier and are not a fixed number; this is
    # a conservative default (one 10,000-row call a second), X-Business-Use-Case-Usage and
    # throttling errors slow down further.
    rate_limits = (RateLimit(60, 60),)
    max_concurrency = 2
    # The token (and app secret), not the audience: Meta throttles per app, user and ad
    # account, so every audience one token writes to shares one limiter.
    account_fields = ("access_token", "app_secret")
    # Other 4xx come back to the connector, which reads the error envelope for the reason.
    parsed_statuses = CLIENT_ERRORS

    # -- HTTP hooks ---------------------------------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        if self.settings.token_in == "header":
            return {"Authorization": f"Bearer {self.settings.access_token.get_secret_value()}"}
        return {}

    def auth_params(self) -> dict[str, str]:
        """``access_token`` (unless sent as a header) and ``appsecret_proof`` when configured."""
        cfg = self.settings
        token = cfg.access_token.get_secret_value()
        params: dict[str, str] = {}
        if cfg.token_in == "query":
            params["access_token"] = token
        if cfg.app_secret is not None:
            secret = cfg.app_secret.get_secret_value().encode()
            params["appsecret_proof"] = hmac.new(secret, token.encode(), hashlib.sha256).hexdigest()
        return params

    def secret_values(self) -> tuple[str, ...]:
        """The configured secrets plus the appsecret_proof derived from them."""
        proof = self.auth_params().get("appsecret_proof")
        return (*super().secret_values(), *([proof] if proof else []))

    def classify(self, response: httpx.Response) -> Action | None:
        """Meta's error codes over its HTTP statuses: throttling comes as 400 (rate
        limiting, honouring the BUC header's estimate), token errors as 400 (auth); other
        4xx go back to the connector, which reads the envelope for the reason."""
        status = response.status_code
        if status < 400:
            return None
        error = _error(response)
        code = _int(error.get("code"))
        if code in THROTTLE_CODES:
            self._slow_down_for_usage(response, throttled=True)
            return Action.RATE_LIMITED
        if code in TOS_CODES:
            return Action.IGNORE  # create_list says which terms to accept, and where
        if code in AUTH_CODES:
            return Action.AUTH
        if error.get("is_transient") is True or code in (1, 2):
            return Action.RETRY
        return super().classify(response)

    def read_rate_limit_headers(self, response: httpx.Response) -> None:
        self._slow_down_for_usage(response, throttled=False)

    def _slow_down_for_usage(self, response: httpx.Response, *, throttled: bool) -> None:
        """``X-Business-Use-Case-Usage``: wait ``estimated_time_to_regain_access`` (minutes)
        when Meta gives one; a full quota (100%) without an estimate waits a minute."""
        usage = _usage(response.headers.get("X-Business-Use-Case-Usage"))
        minutes = max(
            (_int(u.get("estimated_time_to_regain_access")) or 0 for u in usage), default=0
        )
        if minutes > 0:
            self.slow_down(minutes * 60.0)
            return
        fullest = max(
            (
                _int(u.get(name)) or 0
                for u in usage
                for name in ("call_count", "total_cputime", "total_time")
            ),
            default=0,
        )
        if fullest >= FULL_USAGE and not throttled:
            self.slow_down(60.0)

    # -- audiences created when missing (the engine resolves audience_name) --------------

    def named_list(self) -> NamedList | None:
        cfg = self.settings
        if cfg.audience_id is not None or cfg.audience_name is None:
            return None
        return NamedList(
            "custom audience",
            cfg.audience_name,
            "audience_id",
            create=cfg.create_if_missing,
            within=self._account(),
        )

    def find_list(self, name: str) -> list[str]:
        """``GET /act_{id}/customaudiences?fields=id,name``, every page: the ids named so."""
        path = f"/{self.settings.api_version}/act_{self._account()}/customaudiences"
        params = {**self.auth_params(), "fields": "id,name", "limit": str(AUDIENCE_PAGE)}
        ids: list[str] = []
        while True:
            response = self.request("GET", path, params=params)
            self._expect_account(response, "audience_name")
            data = self.json(response)
            items = data.get("data") if isinstance(data, dict) else None
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and item.get("name") == name and item.get("id"):
                    ids.append(str(item["id"]))
            after = dig(data, "paging", "cursors", "after")
            if not isinstance(dig(data, "paging", "next"), str) or not isinstance(after, str):
                return ids
            params = {**params, "after": after}

    def create_list(self, name: str) -> str:
        """``POST /act_{id}/customaudiences``: a customer-list (``CUSTOM``) audience with the
        customer file source the user stated. Terms not accepted: a ConfigError with the
        page where a person accepts them."""
        cfg = self.settings
        body: dict[str, Any] = {
            "name": name,
            "subtype": "CUSTOM",
            "customer_file_source": cfg.customer_file_source,
        }
        if cfg.audience_description:
            body["description"] = cfg.audience_description
        path = f"/{cfg.api_version}/act_{self._account()}/customaudiences"
        response = self.request("POST", path, params=self.auth_params(), json_body=body)
        self._expect_account(response, "create audience")
        audience_id = dig(self.json(response), "id")
        if not isinstance(audience_id, (str, int)) or not str(audience_id):
            raise TransientError("meta: audience created without an id")
        return str(audience_id)

    def _account(self) -> str:
        return (self.settings.ad_account_id or "").removeprefix("act_")

    def _expect_account(self, response: httpx.Response, what: str) -> None:
        """A refused call on the ad account is a configuration error naming what to fix."""
        if response.status_code < 400:
            return
        error = _error(response)
        meta = self.reason(_describe(error) or f"HTTP {response.status_code}")
        if _int(error.get("code")) in TOS_CODES:
            url = TOS_URL.format(account=self._account())
            raise ConfigError(
                f"meta: ad account {self._account()} has not accepted the Custom Audience terms;"
                f" a person with access to it must accept them at {url}, then run again ({meta})"
            )
        raise ConfigError(f"meta: {what}: ad account {self._account()}: {meta}")

    # -- contract -----------------------------------------------------------------------

    def check(self) -> None:
        """``GET /{version}/{audience_id}``: the token works and can see the audience (by
        name: the ad account's audiences, and the name there once, or creatable)."""
        cfg = self.settings
        if self.check_list_name():
            return
        response = self.request(
            "GET",
            self._path(),
            params={**self.auth_params(), "fields": "id,name,operation_status"},
        )
        if response.status_code < 400:
            return
        error = _error(response)
        meta = self.reason(_describe(error) or f"HTTP {response.status_code}")
        if response.status_code == 404 or _int(error.get("code")) == 100:
            raise ConfigError(
                f"meta: audience_id: no custom audience {cfg.audience_id} this token can "
                f"see ({meta})"
            )
        raise ConfigError(f"meta: audience_id {cfg.audience_id}: {meta}")

    def open(self) -> None:
        """Refuse mapped fields that are not identifier kinds Meta takes."""
        for name in self.context.field_names:
            if name not in SUPPORTED["meta"]:
                kinds = ", ".join(SCHEMA_KEYS)
                raise ConfigError(
                    f"meta: field {name!r} is not an identifier kind Meta takes ({kinds})"
                )

    def add(self, records: Sequence[Record]) -> BatchResult:
        return self._add("add", records)

    def update(self, records: Sequence[Record]) -> BatchResult:
        """Mirror mode, identifiers changed: Meta has no field update, so the new row is
        added; the rows sent before stay kept so a later removal takes them all out."""
        return self._add("update", records)

    def remove(self, records: Sequence[Record]) -> BatchResult:
        """Send back the hashed rows kept when each member was added."""
        result = BatchResult(records)
        sendable: list[tuple[Record, list[Row]]] = []
        for record in records:
            rows = _stored_rows(record.destination_id)
            if rows:
                sendable.append((record, rows))
            else:
                result.reject(record.key, "no hashed identifiers were kept for this member")
        if sendable:
            with self.progress.batch("remove", records) as steps:
                self._send("DELETE", sendable, result, steps)
        return result

    def expected_destination_id(self, operation: Operation, record: Record) -> str | None:
        """The rows already kept plus the one this send adds: if its answer never arrives,
        the member may be in the audience under it, and a removal sends them all."""
        try:
            row = self.row(record)
        except InvalidValue:
            return None  # refused before sending: nothing new can land
        kept = _stored_rows(record.destination_id)
        return _dump([*(r for r in kept if r != row), row])

    # -- rows ---------------------------------------------------------------------------

    def _add(self, operation: str, records: Sequence[Record]) -> BatchResult:
        result = BatchResult(records)
        sendable: list[tuple[Record, list[Row]]] = []
        for record in records:
            try:
                row = self.row(record)
            except InvalidValue as exc:
                result.reject(record.key, str(exc))
                continue
            sendable.append((record, [row]))
        if sendable:
            with self.progress.batch(operation, records) as steps:
                accepted = self._send("POST", sendable, result, steps)
            for record, rows in accepted:
                kept = _stored_rows(record.destination_id)
                merged = [*(r for r in kept if r not in rows), *rows]
                result.accept(record.key, destination_id=_dump(merged))
        return result

    def row(self, record: Record) -> Row:
        """Meta schema key -> what Meta gets for this member; empty values are left out.
        Raises InvalidValue naming the kind (never the value)."""
        cfg = self.settings
        row: Row = {}
        for name, value in record.fields.items():
            if name not in SUPPORTED["meta"] or _blank(value):
                continue
            kind: Kind = name
            try:
                if kind == "date_of_birth":
                    if looks_hashed(value):
                        raise InvalidValue("a digest cannot be split into DOBY, DOBM and DOBD")
                    for key, part in zip(SCHEMA_KEYS[kind], date_parts(value), strict=True):
                        row[key] = sha256_hex(part)
                    continue
                sent = identifier(
                    "meta", kind, value, region=cfg.region, prehashed=kind in cfg.prehashed
                )
            except InvalidValue as exc:
                raise InvalidValue(f"{kind.replace('_', ' ')}: {exc}") from None
            row[SCHEMA_KEYS[kind][0]] = sent
        if not row:
            raise InvalidValue("no identifier to match on (every mapped identifier is empty)")
        return row

    def _send(
        self,
        method: str,
        items: Sequence[tuple[Record, list[Row]]],
        result: BatchResult,
        steps: Steps,
    ) -> list[tuple[Record, list[Row]]]:
        """One call per 10,000 rows (a step each: a retry of the batch sends only the calls
        that did not succeed); returns the items Meta took. A refusal of the edit by the
        audience rejects that call's records with Meta's reason."""
        taken: list[tuple[Record, list[Row]]] = []
        parts = _row_chunks(items, MAX_ROWS)
        answers = steps.each(f"{method} users", parts, partial(self._send_part, method))
        for part, refused in zip(parts, answers, strict=True):
            if refused is None:
                taken += part
            else:
                apply(result, refused)
        return taken

    def _send_part(
        self, method: str, part: Sequence[tuple[Record, list[Row]]]
    ) -> list[Outcome] | None:
        """One call; None when Meta took it, else its records' rejections."""
        rows = [row for _, item_rows in part for row in item_rows]
        schema = [key for key in ORDER if any(key in row for row in rows)]
        payload = {"schema": schema, "data": [[row.get(k, "") for k in schema] for row in rows]}
        records = [record for record, _ in part]
        response = self.request(
            method,
            f"{self._path()}/users",
            params=self.auth_params(),
            json_body={"payload": payload},
        )
        if response.status_code >= 400:
            refused = BatchResult(records)
            self._refused(response, records, refused)
            return refused.outcomes()
        data = self.json(response)
        counts = data if isinstance(data, dict) else {}
        self.report(
            num_received=_int(counts.get("num_received")) or 0,
            num_invalid_entries=_int(counts.get("num_invalid_entries")) or 0,
        )
        return None

    def _refused(
        self, response: httpx.Response, records: Sequence[Record], result: BatchResult
    ) -> None:
        """A 4xx handed back by ``classify``: an audience refusing edits rejects every record
        of the call with Meta's reason; anything else refuses the batch (the engine halves it
        to find a bad record)."""
        error = _error(response)
        text = self.reason(_describe(error) or f"HTTP {response.status_code}", records)
        subcode = _int(error.get("error_subcode"))
        title = " ".join(str(error.get(k) or "") for k in ("error_user_title", "message")).lower()
        if subcode in self.settings.refusal_subcodes or any(t in title for t in REFUSAL_TITLES):
            for record in records:
                result.reject(record.key, f"meta refused the change: {text}")
            return
        if response.status_code == 404:
            raise ConfigError(f"meta: audience_id: no custom audience {self.settings.audience_id}")
        raise BatchRejected(f"meta: HTTP {response.status_code}: {text}")

    def _path(self) -> str:
        cfg = self.settings
        if cfg.audience_id is None:  # the engine fills it in from audience_name before a run
            raise ConfigError("meta: audience_id is not known (audience_name not resolved)")
        return f"/{cfg.api_version}/{cfg.audience_id}"


def _row_chunks(
    items: Sequence[tuple[Record, list[Row]]], size: int
) -> list[list[tuple[Record, list[Row]]]]:
    """Items grouped so no group has more than ``size`` rows (a member's rows stay together)."""
    groups: list[list[tuple[Record, list[Row]]]] = []
    count = size
    for item in items:
        if count + len(item[1]) > size:
            groups.append([])
            count = 0
        groups[-1].append(item)
        count += len(item[1])
    return groups


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _dump(rows: list[Row]) -> str:
    return json.dumps(rows, separators=(",", ":"), sort_keys=True)


def _stored_rows(destination_id: str | None) -> list[Row]:
    """The hashed rows kept for a member (a JSON list of schema-key -> value objects)."""
    if not destination_id:
        return []
    try:
        data = json.loads(destination_id)
    except ValueError:
        return []
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        return []
    return [
        {str(k): str(v) for k, v in row.items() if k in ORDER and v}
        for row in data
        if isinstance(row, dict) and row
    ]


def _error(response: httpx.Response) -> dict[str, Any]:
    """The ``error`` object of Meta's envelope, or {} when there is none."""
    try:
        data = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return {}
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else {}


def _describe(error: Mapping[str, Any]) -> str:
    """``title: message (code N, subcode M)`` from Meta's envelope (not ``N/M``, which
    the scrubber would take for a phone number)."""
    words = [
        str(error[k]) for k in ("error_user_title", "error_user_msg", "message") if error.get(k)
    ]
    code, subcode = error.get("code"), error.get("error_subcode")
    codes = ", ".join(
        f"{name} {value}" for name, value in (("code", code), ("subcode", subcode)) if value
    )
    text = ": ".join(dict.fromkeys(words))
    return f"{text} ({codes})" if codes else text


def _usage(header: str | None) -> list[dict[str, Any]]:
    """Entries of ``X-Business-Use-Case-Usage``: ``{business_id: [{type, call_count...}]}``."""
    if not header:
        return []
    try:
        data = json.loads(header)
    except ValueError:
        return []
    if not isinstance(data, dict):
        return []
    entries: list[dict[str, Any]] = []
    for value in data.values():
        for entry in value if isinstance(value, list) else [value]:
            if isinstance(entry, dict):
                entries.append(entry)
    return entries


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, (float, str)):
        try:
            return int(float(value))
        except ValueError:
            return None
    return None
