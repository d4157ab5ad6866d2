"""HubSpot CRM: contacts batch upsert and static-list (lists v3) membership.

Contacts are upserted by a unique property (``email`` by default) through
``POST /crm/v3/objects/contacts/batch/upsert``, 100 inputs a call. HubSpot lists take record
ids, not emails, so the upsert's ``results[].id`` is kept as the record's ``destination_id``;
list adds use it straight away and a later removal sends the stored id, never a search.

Per-record outcomes come from the 207 multi-status body (``errors[].context.ids`` names the
inputs that failed) and from ``recordIdsMissing`` of the membership answer. List membership
calls ignore records that are already members (or, on removal, already gone), which is the
idempotence the engine needs when it re-sends a batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from syncer.connector import (
    BatchResult,
    Capabilities,
    NamedList,
    Outcome,
    Record,
    check_named_list,
)
from syncer.declarations import BearerAuth, RateLimitHeaders
from syncer.errors import BatchRejected, ConfigError, TransientError
from syncer.oauth import RefreshCredentials
from syncer.ratelimit import RateLimit
from syncer.rest import RestConfig, RestConnector, chunks, group_by_value
from syncer.steps import Steps, apply

MAX_BATCH = 100  # HubSpot's v3 batch limit (reference: standard, not in the spec)
READ_CHUNK = 100  # inputs per batch/read, the same v3 limit
LIST_PAGE = 500  # lists per page of /lists/search (HubSpot's largest count)
DEFAULT_INTERVAL = 10.0  # seconds; the documented window when the header is absent
DAILY_COOL_DOWN = 300.0  # the daily quota resets at the account's midnight: wait long
#: HubSpot's OAuth token endpoint (``token_url`` overrides it); its tokens live 30 minutes.
TOKEN_URL = "https://api.hubapi.com/oauth/v1/token"
#: HubSpot's own refusal codes (``status`` of its error body) as OAuth's.
TOKEN_ERRORS = {
    "BAD_REFRESH_TOKEN": "invalid_grant",
    "BAD_CLIENT_ID": "invalid_client",
    "BAD_CLIENT_SECRET": "invalid_client",
}
Tier = Literal["starter", "professional", "enterprise", "limit_increase", "public_app"]
#: Published limits per tier: requests per 10 s (per app) and per day (per account).
TIER_LIMITS: Mapping[str, tuple[RateLimit, ...]] = {
    "starter": (RateLimit(100, 10), RateLimit(250_000, 86_400)),
    "professional": (RateLimit(190, 10), RateLimit(625_000, 86_400)),
    "enterprise": (RateLimit(190, 10), RateLimit(1_000_000, 86_400)),
    "limit_increase": (RateLimit(250, 10), RateLimit(2_000_000, 86_400)),
    "public_app": (RateLimit(110, 10),),
}


class HubSpotConfig(RestConfig, RefreshCredentials):
    """Settings of the ``hubspot`` destination."""

    static_token_field: ClassVar[str] = "token"

    #: Private-app (or OAuth) access token, sent as ``Authorization: Bearer``; or
    #: client_id, client_secret and refresh_token of an OAuth app, and syncer renews tokens.
    token: SecretStr | None = None
    #: ILS list id of a MANUAL or SNAPSHOT contact list; needed for membership and mirror.
    list_id: str | None = None
    #: The list by name instead of ``list_id`` (looked up once, then kept).
    list_name: str | None = Field(default=None, min_length=1)
    #: Create the ``list_name`` list (a MANUAL contact list) when HubSpot has none by that name.
    create_if_missing: bool = False
    #: Unique contact property the upsert matches on.
    id_property: str = "email"
    #: Mapping field holding the id property's value; None: the sync key.
    id_field: str | None = None
    #: ``v3`` for ``/crm/v3/...`` or a date version such as ``2026-03``.
    api_version: str = "v3"
    #: Account tier: picks the published request limits.
    tier: Tier = "starter"
    #: Record ids per membership call (HubSpot publishes no maximum).
    membership_chunk_size: int = Field(default=MAX_BATCH, ge=1, le=MAX_BATCH)
    batch_size: int | None = Field(default=MAX_BATCH, ge=1, le=MAX_BATCH)

    @model_validator(mode="after")
    def _list_by_id_or_name(self) -> HubSpotConfig:
        check_named_list(self, id_field="list_id", name_field="list_name", optional=True)
        return self

    @field_validator("api_version")
    @classmethod
    def _version_shape(cls, value: str) -> str:
        if not value.replace("-", "").isalnum():
            raise ValueError("api_version must look like v3 or 2026-03")
        return value

    @field_validator("id_property")
    @classmethod
    def _not_object_id(cls, value: str) -> str:
        if value == "hs_object_id":  # HubSpot refuses it as idProperty (non-unique 0-2)
            raise ValueError("hs_object_id cannot be an id_property; use email or a unique one")
        return value


class HubSpotConnector(RestConnector[HubSpotConfig]):
    """HubSpot contacts upsert plus lists v3 membership by record id."""

    name = "hubspot"
    description = "HubSpot CRM: contacts batch upsert, static list membership"
    capabilities = Capabilities(
        modes=frozenset({"membership", "upsert", "mirror"}), max_batch_size=MAX_BATCH
    )
    default_base_url = "https://api.hubapi.com"
    default_token_url = TOKEN_URL
    token_errors = TOKEN_ERRORS
    rate_limits = TIER_LIMITS["starter"]
    max_concurrency = 4
    # HubSpot counts per app and account, not per list: syncs to several lists with one
    # token share one limiter (the token is the default account).
    auth = BearerAuth("token")
    static_headers = {"Accept": "application/json"}
    membership_fields = ("list_id",)
    rate_limit_headers = (
        # A spent daily quota holds the account for the longest wait the engine allows.
        RateLimitHeaders("X-HubSpot-RateLimit-Daily-Remaining", default_reset=DAILY_COOL_DOWN),
        # A spent 10 s window (or a 429 without Retry-After) holds it for the window.
        RateLimitHeaders(
            "X-HubSpot-RateLimit-Remaining",
            reset="X-HubSpot-RateLimit-Interval-Milliseconds",
            reset_unit="milliseconds",
            default_reset=DEFAULT_INTERVAL,
        ),
    )

    def published_limits(self) -> tuple[RateLimit, ...]:
        """The limits of the account's tier (``tier`` setting)."""
        return TIER_LIMITS[self.settings.tier]

    # -- paths and headers --------------------------------------------------------------

    def _crm(self, group: str, tail: str) -> str:
        """``/crm/v3/{group}{tail}`` or the date-versioned ``/crm/{group}/{version}{tail}``."""
        version = self.settings.api_version
        if version == "v3":
            return f"/crm/v3/{group}{tail}"
        return f"/crm/{group}/{version}{tail}"

    @property
    def contacts_path(self) -> str:
        return self._crm("objects", "/contacts")

    def list_path(self, rest: str = "") -> str:
        return self._crm("lists", f"/{self.settings.list_id}{rest}")

    # -- lists created when missing (the engine resolves list_name) ----------------------

    def named_list(self) -> NamedList | None:
        cfg = self.settings
        if cfg.list_id or cfg.list_name is None:
            return None
        return NamedList("list", cfg.list_name, "list_id", create=cfg.create_if_missing)

    def find_list(self, name: str) -> list[str]:
        """``POST /crm/v3/lists/search`` (a contains-match, every page), kept to exact names."""
        ids: list[str] = []
        offset = 0
        while True:
            body = {"query": name, "count": LIST_PAGE, "offset": offset}
            response = self.probe(
                "POST", self._crm("lists", "/search"), "list_name", json_body=body
            )
            data = self.json(response)
            found = data.get("lists") if isinstance(data, dict) else None
            for item in found if isinstance(found, list) else []:
                if isinstance(item, dict) and item.get("name") == name and item.get("listId"):
                    ids.append(str(item["listId"]))
            following = data.get("offset") if isinstance(data, dict) else None
            more = isinstance(data, dict) and data.get("hasMore") is True
            if not more or not isinstance(following, int) or following <= offset:
                return ids
            offset = following

    def create_list(self, name: str) -> str:
        """``POST /crm/v3/lists``: a MANUAL (static) contact list; its ``listId``."""
        body = {"name": name, "objectTypeId": "0-1", "processingType": "MANUAL"}
        response = self.probe("POST", self._crm("lists", ""), "list_name", json_body=body)
        data = self.json(response)
        info = data.get("list", data) if isinstance(data, dict) else None
        list_id = info.get("listId") if isinstance(info, dict) else None
        if list_id in (None, ""):
            raise TransientError("hubspot: list created without a listId")
        return str(list_id)

    # -- contract -----------------------------------------------------------------------

    def check(self) -> None:
        """Read the list (or one contact without a list): a 401 is AuthError, a 404 a
        ConfigError naming list_id, a network problem TransientError."""
        if self.check_list_name():
            return
        self.open()
        if not self.settings.list_id:
            self.probe("GET", self.contacts_path, "token", params={"limit": 1})
            return
        response = self.probe("GET", self.list_path(), "list_id")
        body = self.json(response)
        info = body.get("list", body) if isinstance(body, dict) else {}
        kind = info.get("processingType") if isinstance(info, dict) else None
        if kind not in (None, "MANUAL", "SNAPSHOT"):
            raise ConfigError(
                f"hubspot: list_id: list is {kind}; only MANUAL or SNAPSHOT lists take members"
            )

    def add(self, records: Sequence[Record]) -> BatchResult:
        """Upsert, then add to the list. A retry of the batch resumes at the call that failed:
        an upsert that succeeded is not sent again (syncer.steps)."""
        with self.progress.batch("add", records) as steps:
            outcomes, ids = steps.once("upsert", lambda: self._upsert(records))
            result = apply(BatchResult(records), outcomes)
            if self.settings.list_id:
                apply(result, self._membership("add", ids, records, steps))
            return result

    def update(self, records: Sequence[Record]) -> BatchResult:
        return apply(BatchResult(records), self._upsert(records)[0])

    def remove(self, records: Sequence[Record]) -> BatchResult:
        result = BatchResult(records)
        if not self.settings.list_id:
            raise ConfigError("hubspot: removing needs list_id")
        ids: dict[str, str] = {}
        unknown: list[Record] = []
        for record in records:
            if record.destination_id:
                ids[record.key] = record.destination_id
            elif self.settings.id_field is None:
                unknown.append(record)  # its key is the id property's value: look it up
            else:
                result.reject(
                    record.key,
                    "no HubSpot record id stored for this member, and its key is not"
                    f" {self.settings.id_property}: remove it from the list in HubSpot",
                )
        with self.progress.batch("remove", records) as steps:
            if unknown:
                # Its add was sent but never confirmed (a crash, a timeout): HubSpot may have
                # it under an id syncer never learnt. A contact that is not there is not in
                # the list either, which is what a removal wants.
                ids.update(steps.once("look up record ids", lambda: self._record_ids(unknown)))
            return apply(result, self._membership("remove", ids, records, steps))

    def _record_ids(self, records: Sequence[Record]) -> dict[str, str]:
        """Key -> HubSpot record id of the contacts that exist, by the id property."""
        by_value: dict[str, list[str]] = {}
        for record in records:
            value = self._id_value(record)
            if value:
                by_value.setdefault(value, []).append(record.key)
        found: dict[str, str] = {}
        values = list(by_value)
        for part in chunks(values, READ_CHUNK):
            response = self.request(
                "POST",
                f"{self.contacts_path}/batch/read",
                json_body={
                    "idProperty": self.settings.id_property,
                    "inputs": [{"id": value} for value in part],
                    "properties": [self.settings.id_property],
                },
            )
            body = self.json(response)
            for item in _dicts(body.get("results") if isinstance(body, dict) else None):
                answered = _result_value(item, list(part), self.settings.id_property)
                if answered is not None and item.get("id") is not None:
                    for key in by_value[answered]:
                        found[key] = str(item["id"])
        return found

    # -- upsert -------------------------------------------------------------------------

    def _id_value(self, record: Record) -> str:
        field = self.settings.id_field
        raw = record.fields.get(field) if field else record.key
        value = "" if raw is None else str(raw).strip()
        return value.lower() if self.settings.id_property == "email" else value

    def _upsert(self, records: Sequence[Record]) -> tuple[list[Outcome], dict[str, str]]:
        """Upsert ``records``; returns the outcomes and key -> HubSpot record id of those
        that were accepted. Inputs resolving to one id value go once (HubSpot refuses the
        whole batch otherwise) and all of them get its record id."""
        missing = f"no value for {self.settings.id_property}"
        by_value, outcomes = group_by_value(records, self._id_value, missing)
        if not by_value:
            return outcomes, {}
        values = list(by_value)
        inputs = [
            {
                "idProperty": self.settings.id_property,
                "id": value,
                "properties": _properties(by_value[value][0].fields),
                "objectWriteTraceId": str(index),
            }
            for index, value in enumerate(values)
        ]
        response = self.request(
            "POST", f"{self.contacts_path}/batch/upsert", json_body={"inputs": inputs}
        )
        body = self.json(response)
        body = body if isinstance(body, dict) else {}
        found: dict[str, str] = {}
        for item in _dicts(body.get("results")):
            answered = _result_value(item, values, self.settings.id_property)
            if answered is not None and item.get("id") is not None:
                found[answered] = str(item["id"])
        failed: dict[str, str] = {}
        for error in _dicts(body.get("errors")):
            for value in _error_values(error, values):
                failed.setdefault(value, _error_text(error))
        ids: dict[str, str] = {}
        for value, group in by_value.items():
            for record in group:
                if value in found:
                    ids[record.key] = found[value]
                    outcomes.append(Outcome(record.key, "accepted", destination_id=found[value]))
                elif value in failed:
                    reason = self.reason(failed[value], group)
                    outcomes.append(Outcome(record.key, "rejected", reason))
                else:
                    reason = "HubSpot answered without a result for this record"
                    outcomes.append(Outcome(record.key, "failed", reason))
        return outcomes, ids

    # -- lists --------------------------------------------------------------------------

    def _membership(
        self,
        action: Literal["add", "remove"],
        ids: Mapping[str, str],
        records: Sequence[Record],
        steps: Steps,
    ) -> list[Outcome]:
        """PUT the record ids to ``memberships/add|remove``, one step per chunk. Already-members
        (add) and absent records (remove) are ignored by HubSpot: both count as done. A record
        id HubSpot reports missing on add cannot become a member and is rejected."""
        keys_by_id: dict[str, list[str]] = {}
        for key, record_id in ids.items():
            keys_by_id.setdefault(record_id, []).append(key)
        by_key = {r.key: r for r in records}
        parts = [
            list(part) for part in chunks(list(keys_by_id), self.settings.membership_chunk_size)
        ]
        outcomes: list[Outcome] = []
        for missing in steps.each(f"list {action}", parts, partial(self._membership_call, action)):
            for record_id in missing:
                for key in keys_by_id.get(record_id, []):
                    reason = self.reason(
                        "HubSpot list: record id not found (recordIdsMissing)", [by_key[key]]
                    )
                    outcomes.append(Outcome(key, "rejected", reason))
        return outcomes

    def _membership_call(
        self, action: Literal["add", "remove"], record_ids: list[str]
    ) -> list[str]:
        """One membership PUT; the record ids HubSpot reports missing on add."""
        try:
            response = self.request(
                "PUT", self.list_path(f"/memberships/{action}"), json_body=record_ids
            )
        except BatchRejected as exc:
            # The ids came from HubSpot itself: a refusal means the list is wrong (a
            # DYNAMIC list, another object type), which no halving of the batch fixes.
            raise ConfigError(f"hubspot: list_id: membership {action} refused: {exc}") from None
        body = self.json(response)
        missing = body.get("recordIdsMissing") if isinstance(body, dict) else None
        if action == "remove" or not isinstance(missing, list):
            return []
        return [str(record_id) for record_id in missing]


def _properties(fields: Mapping[str, Any]) -> dict[str, str]:
    """HubSpot properties are strings; None clears a property (an empty string)."""
    out: dict[str, str] = {}
    for name, value in fields.items():
        if value is None:
            out[name] = ""
        elif isinstance(value, bool):
            out[name] = "true" if value else "false"
        else:
            out[name] = str(value)
    return out


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _result_value(item: Mapping[str, Any], values: Sequence[str], id_property: str) -> str | None:
    """Which input a result answers: our trace id first, else the id property's value."""
    trace = item.get("objectWriteTraceId")
    if isinstance(trace, str) and trace.isdigit() and int(trace) < len(values):
        return values[int(trace)]
    props = item.get("properties")
    if isinstance(props, dict) and props.get(id_property) is not None:
        wanted = str(props[id_property]).strip()
        for value in values:
            if value == wanted or value.lower() == wanted.lower():
                return value
    return None


def _error_values(error: Mapping[str, Any], values: Sequence[str]) -> list[str]:
    """Inputs an ``errors[]`` item is about: ``context.ids`` (id values) or our trace id."""
    context = error.get("context")
    context = context if isinstance(context, dict) else {}
    lowered = {v.lower(): v for v in values}
    hits: list[str] = []
    for raw in context.get("ids") or []:
        value = lowered.get(str(raw).strip().lower())
        if value is not None:
            hits.append(value)
    for raw in [error.get("objectWriteTraceId"), *(context.get("objectWriteTraceId") or [])]:
        if isinstance(raw, str) and raw.isdigit() and int(raw) < len(values):
            hits.append(values[int(raw)])
    return hits


def _error_text(error: Mapping[str, Any]) -> str:
    """``CATEGORY: message`` plus the first detail's property name, as HubSpot gave them."""
    parts = [str(error.get("category") or "error"), str(error.get("message") or "")]
    details = _dicts(error.get("errors"))
    if details and details[0].get("in"):
        parts.append(f"(property {details[0]['in']})")
    return " ".join(p for p in (f"{parts[0]}:", *parts[1:]) if p)
