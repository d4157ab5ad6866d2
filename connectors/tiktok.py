"""TikTok Ads custom audiences: keep an audience equal to a warehouse segment.

Membership goes through the streaming (partner) route Segment uses,
``POST /segment/mapping/`` with ``action`` ``add`` or ``delete``: ``id_schema`` lists the
identifier kinds of the batch (``EMAIL_SHA256``, ``PHONE_SHA256``, ``MAID_SHA256``) and
``batch_data`` holds one inner array per member, one ``{"id": sha256, "audience_ids": [...]}``
entry per kind in ``id_schema`` order (``{}`` where the member has no such id, as Segment
sends it). Every value is normalised and hashed by :mod:`syncer.identifiers` (TikTok: email
lowercased with ``+tag`` removed; phone as digits with country code and no ``+``).

TikTok reports errors inside HTTP 200 bodies: ``{"code": <non-zero>, "message": ...}``;
success is ``code == 0``. ``classify`` turns rate-limit codes into rate limiting and 5xxxx
codes into retries; auth codes become ``AuthError``; any other code refuses the batch, which
the engine halves until the refused member is alone and rejected with TikTok's message (the
route reports no per-member results). Every code list is a setting: TikTok's codes are not
in the reference.

The engine keeps only SHA-256 of each key (``hashed_keys``); the member's hashes are kept as
its destination id (compact JSON ``{kind: sha256}``) so removal needs no lookup.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, Literal

import httpx
from pydantic import Field, SecretStr, field_validator, model_validator

from syncer.connector import (
    BatchResult,
    Capabilities,
    NamedList,
    Operation,
    Record,
    check_named_list,
)
from syncer.declarations import HeaderAuth
from syncer.errors import AuthError, BatchRejected, ConfigError, TransientError
from syncer.http import Action
from syncer.identifiers import (
    Kind,
    check_mapped_kinds,
    expected_kept_ids,
    kept_ids,
    prehashed_kinds,
    read_kept_id_sets,
    record_identifiers,
    stale_id_sets,
)
from syncer.normalize import InvalidValue
from syncer.ratelimit import RateLimit
from syncer.rest import RestConfig, RestConnector, dig

#: Users per mapping call. TikTok publishes no maximum for this route [U]: a conservative
#: default, configurable up to MAX_USERS.
DEFAULT_BATCH = 1_000
MAX_USERS = 10_000
#: Audiences listed per page while looking one up by name.
AUDIENCE_PAGE = 100
#: Kinds in the order they go into ``id_schema``, with TikTok's schema names.
ID_KINDS: tuple[Kind, ...] = ("email", "phone", "maid")
SCHEMA: Mapping[str, str] = {
    "email": "EMAIL_SHA256",
    "phone": "PHONE_SHA256",
    "maid": "MAID_SHA256",
}
#: TikTok response codes [U: background knowledge, not in the reference; all configurable].
AUTH_CODES = (40101, 40102, 40103, 40104, 40105, 40106, 40107)  # token invalid or expired
PERMISSION_CODES = (40001,)  # the token may not operate this advertiser
RATE_LIMIT_CODES = (40100, 40133)
#: Codes from this value up are TikTok-side failures, retried like a 5xx.
RETRY_FROM = 50_000

MappingAction = Literal["add", "delete"]


class TikTokConfig(RestConfig):
    """Settings of the ``tiktok`` destination."""

    access_token: SecretStr = Field(description="Marketing API access token, from the environment.")
    advertiser_id: str = Field(pattern=r"^\d+$", description="Advertiser (ad account) id.")
    audience_id: str | None = Field(
        default=None, pattern=r"^\d+$", description="Id of an existing custom audience."
    )
    audience_name: str | None = Field(
        default=None,
        min_length=1,
        description="The audience by name instead of audience_id (looked up once, then kept).",
    )
    create_if_missing: bool = Field(
        default=False, description="Create the audience_name audience when the advertiser has none."
    )
    region: str | None = Field(
        default=None, description="Default country (ISO alpha-2) for phones without one."
    )
    prehashed: list[Kind] = Field(
        default_factory=list, description="Kinds whose columns already hold SHA-256 hex."
    )
    auth_codes: list[int] = Field(default_factory=lambda: list(AUTH_CODES))
    permission_codes: list[int] = Field(default_factory=lambda: list(PERMISSION_CODES))
    rate_limit_codes: list[int] = Field(default_factory=lambda: list(RATE_LIMIT_CODES))
    batch_size: int | None = Field(default=DEFAULT_BATCH, ge=1, le=MAX_USERS)

    @field_validator("prehashed")
    @classmethod
    def _hashed_kinds(cls, value: list[Kind]) -> list[Kind]:
        return prehashed_kinds("tiktok", value)

    @model_validator(mode="after")
    def _audience_by_id_or_name(self) -> TikTokConfig:
        check_named_list(self, id_field="audience_id", name_field="audience_name")
        return self


class TikTokConnector(RestConnector[TikTokConfig]):
    """Add members to and remove them from a TikTok custom audience, by hashed ids."""

    name = "tiktok"
    description = "TikTok Ads custom audience (streaming segment mapping)"
    capabilities = Capabilities.ad_audience(MAX_USERS)
    default_base_url = "https://business-api.tiktok.com/open_api/v1.3"
    #: TikTok publishes no rate for this route [U]: 10 requests a second, 2 in flight.
    rate_limits = (RateLimit(10, 1),)
    max_concurrency = 2
    # The account is the token (one app's grant), not the audience: every audience and
    # advertiser one token writes to shares one limiter, which never sends more than the app may.
    auth = HeaderAuth("Access-Token", "access_token")

    # -- HTTP hooks ---------------------------------------------------------------------

    def classify(self, response: httpx.Response) -> Action | None:
        """An HTTP 200 carrying a rate-limit code is rate limiting (the account cools down);
        one carrying a 5xxxx code is a TikTok-side failure, retried. Other codes are read
        by the connector, which knows what the call was for."""
        code = _code(response)
        if code is None or code == 0:
            return None
        if code in self.settings.rate_limit_codes:
            return Action.RATE_LIMITED
        if code >= RETRY_FROM:
            return Action.RETRY
        return super().classify(response)

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
            within=cfg.advertiser_id,
        )

    def find_list(self, name: str) -> list[str]:
        """``GET /dmp/custom_audience/list/`` (100 a page, ``page_info.total_page``): the
        advertiser's audiences named exactly ``name``."""
        ids: list[str] = []
        page = 1
        while True:
            params = {
                "advertiser_id": self.settings.advertiser_id,
                "page": str(page),
                "page_size": str(AUDIENCE_PAGE),
            }
            response = self.probe(
                "GET", "/dmp/custom_audience/list/", "audience_name", params=params
            )
            data = self._expect(response, "audience_name", ConfigError)
            items = data.get("list") if isinstance(data, dict) else None
            for item in items if isinstance(items, list) else []:
                found = item.get("audience_id") if isinstance(item, dict) else None
                if isinstance(item, dict) and item.get("name") == name and found is not None:
                    ids.append(str(found))
            total = dig(data, "page_info", "total_page")
            if not isinstance(total, int) or page >= total:
                return ids
            page += 1

    def create_list(self, name: str) -> str:
        """``POST /segment/audience/`` (``action: create``), the streaming route's audience:
        its ``audience_id`` from ``data``."""
        cfg = self.settings
        body = {
            "advertiser_id": cfg.advertiser_id,
            "custom_audience_name": name,
            "action": "create",
        }
        response = self.probe("POST", "/segment/audience/", "audience_name", json_body=body)
        data = self._expect(response, "audience_name", ConfigError)
        created = data.get("audience_id") if isinstance(data, dict) else None
        if created in (None, ""):
            raise TransientError("tiktok: audience created without an audience_id")
        return str(created)

    # -- contract -----------------------------------------------------------------------

    def open(self) -> None:
        """Refuse mapped fields TikTok cannot take, and a mapping with nothing to match."""
        check_mapped_kinds("tiktok", self.context.field_names, ID_KINDS)

    def check(self) -> None:
        """Two cheap authenticated reads: ``/advertiser/info/`` proves the token and the
        advertiser, ``/dmp/custom_audience/get/`` that the audience belongs to it."""
        cfg = self.settings
        if self.check_list_name():
            return
        ids = json.dumps([cfg.advertiser_id])
        response = self.probe(
            "GET", "/advertiser/info/", "advertiser_id", params={"advertiser_ids": ids}
        )
        data = self._expect(response, "advertiser_id", ConfigError)
        if not _listed(data):
            raise ConfigError(
                f"tiktok: advertiser_id: no advertiser {cfg.advertiser_id} for this token"
            )
        params = {
            "advertiser_id": cfg.advertiser_id,
            "custom_audience_ids": json.dumps([cfg.audience_id]),
        }
        response = self.probe("GET", "/dmp/custom_audience/get/", "audience_id", params=params)
        data = self._expect(response, "audience_id", ConfigError)
        if not _listed(data):
            raise ConfigError(
                f"tiktok: audience_id: no audience {cfg.audience_id} in this advertiser"
            )

    def add(self, records: Sequence[Record]) -> BatchResult:
        """Add the members' ids. Ids kept for one of them that it no longer has (a send whose
        answer never arrived, or an earlier member of the audience under other ids) are
        taken off first, as in an update."""
        return self._put("add", records)

    def update(self, records: Sequence[Record]) -> BatchResult:
        """Mirror mode: a member whose ids changed loses the old ones first, then is added."""
        return self._put("update", records)

    def remove(self, records: Sequence[Record]) -> BatchResult:
        """Delete every id set kept for each member (one, or several while a send is
        unconfirmed: see ``expected_destination_id``)."""
        result = BatchResult(records)
        users = []
        for record in records:
            sets = read_kept_id_sets(record.destination_id, SCHEMA)
            if sets:
                users.extend(sets)
            else:
                result.reject(record.key, "no kept identifiers to remove this member by")
        self._send("delete", users)
        return result

    def expected_destination_id(self, operation: Operation, record: Record) -> str | None:
        """The ids this send adds, beside those already kept (see ``expected_kept_ids``)."""
        return expected_kept_ids(record.destination_id, SCHEMA, partial(self._ids, record))

    def _put(self, operation: Operation, records: Sequence[Record]) -> BatchResult:
        result = BatchResult(records)
        members = self._members(records, result)
        by_key = {r.key: r for r in records}
        stale = [
            gone
            for key, ids in members.items()
            for gone in stale_id_sets(by_key[key].destination_id, SCHEMA, ids)
        ]
        # Two calls: a retry of the batch after the second failed does not repeat the first.
        with self.progress.batch(operation, records) as steps:
            steps.once("delete stale ids", lambda: self._send("delete", stale))
            steps.once("add", lambda: self._send("add", list(members.values())))
        for key, ids in members.items():
            result.accept(key, destination_id=kept_ids(ids))
        return result

    # -- building -----------------------------------------------------------------------

    def _members(self, records: Sequence[Record], result: BatchResult) -> dict[str, dict[str, str]]:
        """Key -> kind -> hash for every record that has a valid id; the others rejected."""
        members: dict[str, dict[str, str]] = {}
        for record in records:
            try:
                ids = self._ids(record)
            except InvalidValue as exc:
                result.reject(record.key, self.reason(exc, [record]))
                continue
            if not ids:
                result.reject(record.key, "no email, phone or mobile advertiser id to match on")
                continue
            members[record.key] = ids
        return members

    def _ids(self, record: Record) -> dict[str, str]:
        cfg = self.settings
        return record_identifiers(
            "tiktok", record.fields, ID_KINDS, region=cfg.region, prehashed=cfg.prehashed
        )

    def mapping_body(self, action: MappingAction, users: list[dict[str, str]]) -> dict[str, Any]:
        """The ``/segment/mapping/`` body: the kinds present, one inner array per user."""
        cfg = self.settings
        kinds = [k for k in ID_KINDS if any(k in u for u in users)]
        if cfg.audience_id is None:  # the engine fills it in from audience_name first
            raise ConfigError("tiktok: audience_id is not known (audience_name not resolved)")
        audiences = [cfg.audience_id]
        batch = [
            [{"id": u[k], "audience_ids": audiences} if k in u else {} for k in kinds]
            for u in users
        ]
        return {
            "advertiser_ids": [cfg.advertiser_id],
            "action": action,
            "id_schema": [SCHEMA[k] for k in kinds],
            "batch_data": batch,
        }

    # -- sending ------------------------------------------------------------------------

    def _send(self, action: MappingAction, users: list[dict[str, str]]) -> None:
        if not users:
            return
        body = self.mapping_body(action, users)
        response = self.request("POST", "/segment/mapping/", json_body=body)
        self._expect(response, "mapping", BatchRejected)

    def _expect(self, response: httpx.Response, what: str, error: type[Exception]) -> Any:
        """``data`` of a ``code == 0`` answer; otherwise AuthError for auth codes and
        ``error`` (TikTok's code and message) for the rest."""
        body = self.json(response)
        if not isinstance(body, dict) or not isinstance(body.get("code"), int):
            raise TransientError(f"tiktok: {what}: answer without a code")
        code = body["code"]
        if code == 0:
            return body.get("data")
        message = self.reason(f"code {code}: {body.get('message') or 'no message'}")
        if code in self.settings.auth_codes:
            raise AuthError(f"tiktok: access token refused ({message})")
        if code in self.settings.permission_codes:
            raise ConfigError(f"tiktok: advertiser_id: not allowed for this token ({message})")
        raise error(f"tiktok: {what}: {message}")


def _code(response: httpx.Response) -> int | None:
    """The ``code`` of a JSON body, if it has one."""
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError, httpx.ResponseNotRead):
        return None
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _listed(data: Any) -> bool:
    items = data.get("list") if isinstance(data, dict) else None
    return isinstance(items, list) and bool(items)
