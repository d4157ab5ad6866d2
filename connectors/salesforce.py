"""Salesforce: Contact or Lead upsert by external id, and CampaignMember membership.

Records are upserted through sObject Collections
(``PATCH /services/data/vXX.X/composite/sobjects/{SObject}/{ExternalIdField}``, ``allOrNone``
false, up to 200 records, answered in order with one ``{id, success, errors, created}`` each).
Membership is a CampaignMember per record: inserted with the id the upsert returned, and
deleted by its own id, so ``destination_id`` is ``"<contact or lead id>:<CampaignMember id>"``
once the record is a member (just the contact or lead id while it is not). Removal therefore
never queries. A ``DUPLICATE_VALUE`` on insert means "already a member": success; its member id
is resolved with one SOQL query for those duplicates only.

Core REST signals a spent daily allocation as HTTP 403 ``REQUEST_LIMIT_EXCEEDED``, which is
rate limiting rather than bad credentials (see ``classify``); ``Sforce-Limit-Info`` is read on
every answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import Field, SecretStr, field_validator, model_validator

from syncer.connector import (
    BatchResult,
    Capabilities,
    NamedList,
    Outcome,
    Record,
    check_named_list,
)
from syncer.declarations import BearerAuth
from syncer.errors import ConfigError, TransientError
from syncer.http import Action
from syncer.oauth import (
    JWT_BEARER,
    Grant,
    RefreshCredentials,
    fingerprint,
    refresh_grant,
    rs256_assertion,
)
from syncer.rest import RestConfig, RestConnector, chunks, group_by_value, quoted_literal
from syncer.steps import Steps, apply

MAX_BATCH = 200  # sObject Collections limit per request
#: Production login host: token endpoint base and the JWT bearer audience.
LOGIN_URL = "https://login.salesforce.com"
QUERY_CHUNK = 200  # values per SOQL IN list: well inside the query length limit
QUOTA_COOL_DOWN = 300.0  # the allocation is a rolling 24 h: hold for the longest allowed wait
#: Delete errors that mean the CampaignMember is already gone: the goal is met.
GONE = frozenset({"ENTITY_IS_DELETED"})
_SFID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
_API_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_USAGE = re.compile(r"api-usage=(\d+)/(\d+)")


class SalesforceConfig(RestConfig, RefreshCredentials):
    """Settings of the ``salesforce`` destination."""

    #: The refresh_token grant needs no client secret when the connected app says so.
    refresh_fields: ClassVar[tuple[str, ...]] = ("refresh_token",)

    #: The org's instance URL (``https://yourorg.my.salesforce.com``); with tokens that renew
    #: themselves it may be left out: the token endpoint's ``instance_url`` is used.
    base_url: str | None = None
    #: Static OAuth 2.0 access token, sent as ``Authorization: Bearer``; or client_id with
    #: refresh_token (and client_secret), or client_id, username and private_key (JWT bearer).
    access_token: SecretStr | None = None
    #: JWT bearer flow: the Salesforce user the connected app acts as.
    username: str | None = None
    #: JWT bearer flow: the PEM RSA private key whose certificate the connected app holds.
    private_key: SecretStr | None = None
    #: Where tokens come from and the JWT's audience: ``https://test.salesforce.com`` for a
    #: sandbox, or the org's My Domain URL. The token endpoint is
    #: ``{login_url}/services/oauth2/token`` unless ``token_url`` says otherwise.
    login_url: str = LOGIN_URL
    #: REST API version without the ``v``; sObject Collections upsert needs 46.0 or later.
    api_version: str = "53.0"
    sobject: Literal["Contact", "Lead"] = "Contact"
    #: External-ID field the upsert matches on (e.g. ``Warehouse_Id__c``).
    external_id_field: str
    #: Mapping field holding the external id value; None: the sync key.
    external_id_source: str | None = None
    #: Campaign whose members this sync manages; needed for membership and mirror.
    campaign_id: str | None = None
    #: The campaign by name instead of ``campaign_id`` (looked up once, then kept).
    campaign_name: str | None = Field(default=None, min_length=1, max_length=80)
    #: Create the ``campaign_name`` campaign (active) when the org has none by that name.
    create_if_missing: bool = False
    #: CampaignMember ``Status`` for new members; None: the campaign's default status.
    member_status: str | None = None
    batch_size: int | None = Field(default=MAX_BATCH, ge=1, le=MAX_BATCH)

    @field_validator("login_url")
    @classmethod
    def _login_url_shape(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("login_url must be an absolute http(s) URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _instance_known(self) -> SalesforceConfig:
        if not self.renews() and self.base_url is None:
            raise ValueError("base_url (the org's instance URL) is required with access_token")
        return self

    @classmethod
    def credential_choices(cls) -> list[tuple[str, ...]]:
        return [
            ("access_token", "base_url"),
            ("client_id", "refresh_token"),
            ("client_id", "username", "private_key"),
        ]

    def conflict(self) -> str | None:
        if self.refresh_token is not None and self.private_key is not None:
            return "give either refresh_token or private_key (JWT bearer), not both"
        return None

    def renewing_fields(self) -> tuple[str, ...]:
        return ("client_id", "client_secret", "refresh_token", "username", "private_key")

    def required_fields(self) -> tuple[str, ...]:
        if self.private_key is not None or self.username is not None:
            return ("client_id", "username", "private_key")
        return ("client_id", "refresh_token")

    @field_validator("api_version")
    @classmethod
    def _version_shape(cls, value: str) -> str:
        value = value.removeprefix("v")
        if not re.fullmatch(r"\d{2,3}\.\d", value) or float(value) < 46:
            raise ValueError("api_version must look like 53.0 and be at least 46.0")
        return value

    @field_validator("external_id_field")
    @classmethod
    def _field_name(cls, value: str) -> str:
        if not _API_NAME.fullmatch(value) or value == "Id":
            raise ValueError("external_id_field must be an external-ID field's API name, not Id")
        return value

    @model_validator(mode="after")
    def _campaign_by_id_or_name(self) -> SalesforceConfig:
        check_named_list(self, id_field="campaign_id", name_field="campaign_name", optional=True)
        return self

    @field_validator("campaign_id")
    @classmethod
    def _campaign_shape(cls, value: str | None) -> str | None:
        if value is not None and not _SFID.fullmatch(value):
            raise ValueError("campaign_id must be a 15 or 18 character Salesforce id")
        return value


class SalesforceConnector(RestConnector[SalesforceConfig]):
    """Salesforce Contact/Lead upsert plus CampaignMember insert/delete."""

    name = "salesforce"
    description = "Salesforce: Contact/Lead upsert by external id, campaign membership"
    capabilities = Capabilities(
        modes=frozenset({"membership", "upsert", "mirror"}), max_batch_size=MAX_BATCH
    )
    # No per-second limit; the daily allocation is per org and read from Sforce-Limit-Info.
    rate_limits = ()
    # Long-running requests (20 s or more) are capped at 5 per Developer/Trial org, 25 else.
    max_concurrency = 5
    auth = BearerAuth("access_token")
    static_headers = {"Accept": "application/json"}
    membership_fields = ("campaign_id",)

    @property
    def api(self) -> str:
        return f"/services/data/v{self.settings.api_version}"

    @property
    def base_url(self) -> str:
        """The configured instance URL, else the ``instance_url`` of the token answer."""
        configured = self.settings.base_url
        if configured:
            return configured.rstrip("/")
        token = self.access_token()
        instance = token.extra.get("instance_url", "") if token is not None else ""
        parts = urlsplit(instance)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"sync {self.context.sync_name!r}: salesforce: the token endpoint gave no"
                " usable instance_url; set destination.base_url to the org's instance URL"
            )
        return instance.rstrip("/")

    def oauth_grant(self) -> Grant | None:
        """The refresh_token grant, or the JWT bearer grant (an RS256 assertion signed with
        ``private_key``: iss the client id, sub the username, aud ``login_url``), at
        ``{login_url}/services/oauth2/token``. Salesforce says nothing of a token's lifetime
        (the org's session timeout): a token is used until it is refused (401)."""
        cfg = self.settings
        if not cfg.renews():
            return None
        token_url = cfg.token_url or f"{cfg.login_url}/services/oauth2/token"
        keep = ("instance_url",)
        if cfg.private_key is None:
            return refresh_grant(self.name, cfg, token_url, keep=keep)
        key = cfg.private_key.get_secret_value()
        claims = {"iss": cfg.client_id or "", "sub": cfg.username or "", "aud": cfg.login_url}

        def form() -> dict[str, str]:
            return {"grant_type": JWT_BEARER, "assertion": rs256_assertion(key, claims)}

        return Grant(
            connector=self.name,
            token_url=token_url,
            form=form,
            identity=(cfg.client_id or "", cfg.username or "", cfg.login_url, fingerprint(key)),
            grant_setting=(
                "the JWT of destination.username and destination.private_key (the user must be"
                " pre-authorised for the connected app, which must hold the key's certificate;"
                " login_url must be the JWT's audience)"
            ),
            client_setting="destination.client_id (the connected app's consumer key)",
            secrets=(key,),
            keep=keep,
        )

    def account_key(self) -> str:
        """Without a configured instance URL (it comes with the token), the credential
        names the org; reading the host would ask for a token before any request."""
        grant = None if self.settings.base_url else self.oauth_grant()
        if grant is not None:
            return f"{self.name}:oauth-{grant.account}:org"
        return super().account_key()

    def account_id(self) -> str:
        """The instance host names the org, whose API allowance every user and campaign
        shares; a refreshed token must not get a new limiter."""
        return "org"

    # -- contract -----------------------------------------------------------------------

    def open(self) -> None:
        super().open()
        if "Id" in self.context.field_names:
            raise ConfigError("salesforce: do not map a field called Id (upsert by external id)")

    # -- campaigns created when missing (the engine resolves campaign_name) --------------

    def named_list(self) -> NamedList | None:
        cfg = self.settings
        if cfg.campaign_id or cfg.campaign_name is None:
            return None
        return NamedList("campaign", cfg.campaign_name, "campaign_id", create=cfg.create_if_missing)

    def find_list(self, name: str) -> list[str]:
        """SOQL ``SELECT Id, Name FROM Campaign WHERE Name = '...'``, every page
        (``nextRecordsUrl``): the ids of the campaigns named exactly ``name``."""
        soql = f"SELECT Id, Name FROM Campaign WHERE Name = {quoted_literal(name)}"
        path, params = f"{self.api}/query", {"q": soql}
        ids: list[str] = []
        while True:
            response = self.probe("GET", path, "campaign_name", params=params)
            body = self.json(response)
            rows = body.get("records") if isinstance(body, dict) else None
            for row in rows if isinstance(rows, list) else []:
                if isinstance(row, dict) and row.get("Name") == name and row.get("Id"):
                    ids.append(str(row["Id"]))
            following = body.get("nextRecordsUrl") if isinstance(body, dict) else None
            if not isinstance(following, str) or not following:
                return ids
            path, params = following, {}

    def create_list(self, name: str) -> str:
        """``POST /sobjects/Campaign`` (active); its ``id`` from the 201. A user who may not
        create campaigns (no Marketing User permission) gets a ConfigError with the org's
        reason."""
        body = {"Name": name, "IsActive": True}
        path = f"{self.api}/sobjects/Campaign"
        response = self.probe("POST", path, "campaign_name", json_body=body)
        data = self.json(response)
        created = data.get("id") if isinstance(data, dict) else None
        if not isinstance(created, str) or not _SFID.fullmatch(created):
            raise TransientError("salesforce: campaign created without an id")
        return created

    # -- contract -----------------------------------------------------------------------

    def check(self) -> None:
        """Describe the sObject (the token, version and external-ID field) and read the
        campaign: 401 is AuthError, a wrong setting a ConfigError naming it, a network
        failure TransientError."""
        cfg = self.settings
        if not self.check_list_name():
            self.open()  # with a name, membership needs the id the run resolves first
        response = self.probe(
            "GET", f"{self.api}/sobjects/{cfg.sobject}/describe", "api_version/sobject"
        )
        body = self.json(response)
        fields = body.get("fields") if isinstance(body, dict) else None
        if isinstance(fields, list):
            named = {f.get("name"): f for f in fields if isinstance(f, dict)}
            found = named.get(cfg.external_id_field)
            if found is None or not (found.get("externalId") or found.get("idLookup")):
                raise ConfigError(
                    f"salesforce: external_id_field: {cfg.sobject} has no external-ID field "
                    f"{cfg.external_id_field}"
                )
        if cfg.campaign_id:
            self.probe(
                "GET",
                f"{self.api}/sobjects/Campaign/{cfg.campaign_id}",
                "campaign_id",
                params={"fields": "Id"},
            )

    def add(self, records: Sequence[Record]) -> BatchResult:
        """Upsert, then insert CampaignMembers. A retry of the batch resumes at the call that
        failed: an upsert that succeeded is not sent again (syncer.steps)."""
        with self.progress.batch("add", records) as steps:
            outcomes, ids = steps.once("upsert", lambda: self._upsert(records))
            result = apply(BatchResult(records), outcomes)
            if self.settings.campaign_id and ids:
                apply(result, self._add_members(ids, records, steps))
            return result

    def update(self, records: Sequence[Record]) -> BatchResult:
        return apply(BatchResult(records), self._upsert(records)[0])

    def remove(self, records: Sequence[Record]) -> BatchResult:
        """DELETE the stored CampaignMember ids; the contact or lead itself stays.

        A member whose add was sent but never confirmed (a crash, a timeout) has no stored
        CampaignMember id, though Salesforce may have made one: it is looked up, by the
        contact or lead id if known, else by the external id when that is the record's key.
        A member that is not found is not in the campaign, which is what a removal wants."""
        result = BatchResult(records)
        members: dict[str, Record] = {}
        unknown: list[Record] = []
        for record in records:
            member = _member_id(record.destination_id)
            if member is not None:
                members[member] = record
            elif record.destination_id or self.settings.external_id_source is None:
                unknown.append(record)
            else:
                result.reject(
                    record.key,
                    "no CampaignMember id stored for this member, and its key is not the"
                    f" {self.settings.external_id_field} value: remove it from the campaign"
                    " in Salesforce",
                )
        with self.progress.batch("remove", records) as steps:
            if unknown:
                found = steps.once("look up members", lambda: self._members_of(unknown))
                members.update({member: r for r in unknown if (member := found.get(r.key))})
            if not members:
                return result
            return self._delete_members(members, result)

    def _members_of(self, records: Sequence[Record]) -> dict[str, str]:
        """Key -> CampaignMember id of those that are members, found by their contact or
        lead id, or by their external id (the key) when no id was stored."""
        cfg = self.settings
        lookup = "LeadId" if cfg.sobject == "Lead" else "ContactId"
        parents: dict[str, str] = {}
        by_external: dict[str, str] = {}
        for record in records:
            parent = (record.destination_id or "").split(":", 1)[0]
            if parent:
                parents[record.key] = parent
            else:
                by_external[record.key] = record.key
        if by_external:
            found = self._parents_by_external_id(list(by_external.values()))
            parents.update({k: found[v] for k, v in by_external.items() if v in found})
        members = self._existing_members(lookup, sorted(set(parents.values())))
        return {key: members[parent] for key, parent in parents.items() if parent in members}

    def _parents_by_external_id(self, values: Sequence[str]) -> dict[str, str]:
        """External id -> contact or lead id, by SOQL, the values quoted as SOQL strings."""
        cfg = self.settings
        found: dict[str, str] = {}
        for part in chunks(list(values), QUERY_CHUNK):
            quoted = ",".join(quoted_literal(v) for v in part)
            soql = (
                f"SELECT Id, {cfg.external_id_field} FROM {cfg.sobject}"
                f" WHERE {cfg.external_id_field} IN ({quoted})"
            )
            found.update(self._ids_by(soql, cfg.external_id_field))
        return found

    def _delete_members(self, members: dict[str, Record], result: BatchResult) -> BatchResult:
        response = self.request(
            "DELETE",
            f"{self.api}/composite/sobjects",
            params={"ids": ",".join(members), "allOrNone": "false"},
        )
        items = _items(self.json(response))
        by_id = {str(i.get("id")): i for i in items if i.get("id")}
        for index, (member, record) in enumerate(members.items()):
            item = by_id.get(member) or (items[index] if index < len(items) else None)
            if item is None:
                result.fail(record.key, "Salesforce answered without a result for this member")
            elif not item.get("success") and not (_codes(item) & GONE):
                result.reject(record.key, self.reason(_errors_text(item), [record]))
        return result

    # -- rate limits --------------------------------------------------------------------

    def classify(self, response: httpx.Response) -> Action | None:
        """403 ``REQUEST_LIMIT_EXCEEDED`` is the org's allocation, not the credentials."""
        if response.status_code == 403 and "REQUEST_LIMIT_EXCEEDED" in _error_codes(response):
            return Action.RATE_LIMITED
        return super().classify(response)

    def read_rate_limit_headers(self, response: httpx.Response) -> None:
        """``Sforce-Limit-Info: api-usage=used/allowed``: a spent allocation holds the org."""
        match = _USAGE.search(response.headers.get("Sforce-Limit-Info", ""))
        if match and int(match[1]) >= int(match[2]) > 0:
            self.slow_down(QUOTA_COOL_DOWN)

    # -- upsert -------------------------------------------------------------------------

    def _external_id(self, record: Record) -> str:
        source = self.settings.external_id_source
        raw = record.fields.get(source) if source else record.key
        return "" if raw is None else str(raw).strip()

    def _upsert(self, records: Sequence[Record]) -> tuple[list[Outcome], dict[str, str]]:
        """Upsert by external id; returns outcomes and key -> contact/lead id of those
        accepted. Records sharing an external id go once (one record in Salesforce)."""
        cfg = self.settings
        missing = f"no value for {cfg.external_id_field}"
        groups, outcomes = group_by_value(records, self._external_id, missing)
        if not groups:
            return outcomes, {}
        body = {
            "allOrNone": False,
            "records": [
                {
                    "attributes": {"type": cfg.sobject},
                    **{k: v for k, v in group[0].fields.items() if k != "Id"},
                    cfg.external_id_field: value,
                }
                for value, group in groups.items()
            ],
        }
        response = self.request(
            "PATCH",
            f"{self.api}/composite/sobjects/{cfg.sobject}/{cfg.external_id_field}",
            json_body=body,
        )
        items = _items(self.json(response))
        ids: dict[str, str] = {}
        for index, group in enumerate(groups.values()):
            item = items[index] if index < len(items) else None  # answered in order
            for record in group:
                if item is None:
                    reason = "Salesforce answered without a result for this record"
                    outcomes.append(Outcome(record.key, "failed", reason))
                elif item.get("success") and item.get("id"):
                    ids[record.key] = str(item["id"])
                    # Keep a known CampaignMember id: removal needs it later.
                    kept = _join(str(item["id"]), record.destination_id)
                    outcomes.append(Outcome(record.key, "accepted", destination_id=kept))
                else:
                    reason = self.reason(_errors_text(item), group)
                    outcomes.append(Outcome(record.key, "rejected", reason))
        return outcomes, ids

    # -- campaign members ---------------------------------------------------------------

    def _add_members(
        self, ids: Mapping[str, str], records: Sequence[Record], steps: Steps
    ) -> list[Outcome]:
        """Insert a CampaignMember per upserted record; ``DUPLICATE_VALUE`` is success. The
        insert and the look-up of already-members are steps of the batch."""
        cfg = self.settings
        lookup = "LeadId" if cfg.sobject == "Lead" else "ContactId"
        by_key = {r.key: r for r in records}
        keys_by_parent: dict[str, list[str]] = {}
        for key, parent in ids.items():
            keys_by_parent.setdefault(parent, []).append(key)
        parents = list(keys_by_parent)
        items = steps.once("campaign members", lambda: self._insert_members(lookup, parents))
        outcomes: list[Outcome] = []
        member_ids: dict[str, str] = {}
        duplicates: list[str] = []
        for index, parent in enumerate(parents):
            item = items[index] if index < len(items) else None
            keys = keys_by_parent[parent]
            if item is None:
                reason = "Salesforce answered without a result for this member"
                outcomes += [Outcome(key, "failed", reason) for key in keys]
            elif item.get("success") and item.get("id"):
                member_ids[parent] = str(item["id"])
            elif "DUPLICATE_VALUE" in _codes(item):
                known = _known_member(parent, [by_key[k] for k in keys])
                if known:
                    member_ids[parent] = known
                else:
                    duplicates.append(parent)
            else:
                reason = self.reason(_errors_text(item), [by_key[k] for k in keys])
                outcomes += [Outcome(key, "rejected", reason) for key in keys]
        if duplicates:
            found = steps.once("members query", lambda: self._existing_members(lookup, duplicates))
            member_ids.update(found)
        for parent in parents:
            for key in keys_by_parent[parent]:
                if parent in member_ids:
                    kept = f"{parent}:{member_ids[parent]}"
                    outcomes.append(Outcome(key, "accepted", destination_id=kept))
                elif parent in duplicates:
                    reason = "already a campaign member, but its CampaignMember id was not found"
                    outcomes.append(Outcome(key, "failed", reason))
        return outcomes

    def _insert_members(self, lookup: str, parents: Sequence[str]) -> list[dict[str, Any]]:
        """One Collections insert of CampaignMembers; Salesforce's answers, in order."""
        cfg = self.settings
        member: dict[str, Any] = {"attributes": {"type": "CampaignMember"}}
        member["CampaignId"] = cfg.campaign_id
        if cfg.member_status is not None:
            member["Status"] = cfg.member_status
        response = self.request(
            "POST",
            f"{self.api}/composite/sobjects",
            json_body={"allOrNone": False, "records": [{**member, lookup: p} for p in parents]},
        )
        return _items(self.json(response))

    def _existing_members(self, lookup: str, parents: Sequence[str]) -> dict[str, str]:
        """One SOQL query for the CampaignMember ids of records that already were members.
        Only Salesforce ids (checked) go into the query text."""
        safe = [p for p in parents if _SFID.fullmatch(p)]
        if not safe:
            return {}
        quoted = ",".join(f"'{p}'" for p in safe)
        soql = (
            f"SELECT Id, {lookup} FROM CampaignMember WHERE CampaignId = "
            f"'{self.settings.campaign_id}' AND {lookup} IN ({quoted})"
        )
        return self._ids_by(soql, lookup)

    def _ids_by(self, soql: str, field: str) -> dict[str, str]:
        """``field`` value -> ``Id`` of each row the SOQL query ``soql`` returns."""
        response = self.request("GET", f"{self.api}/query", params={"q": soql})
        body = self.json(response)
        rows = body.get("records") if isinstance(body, dict) else None
        found: dict[str, str] = {}
        for row in rows if isinstance(rows, list) else []:
            if isinstance(row, dict) and row.get("Id") and row.get(field):
                found[str(row[field])] = str(row["Id"])
        return found


def _join(parent: str, previous: str | None) -> str:
    """``parent`` plus the CampaignMember id ``previous`` already held, if any."""
    member = _member_id(previous)
    return f"{parent}:{member}" if member else parent


def _member_id(destination_id: str | None) -> str | None:
    if not destination_id or ":" not in destination_id:
        return None
    return destination_id.split(":", 1)[1] or None


def _known_member(parent: str, records: Sequence[Record]) -> str | None:
    """The member id state already holds for ``parent`` (no query needed for it)."""
    for record in records:
        stored = record.destination_id or ""
        if stored.split(":", 1)[0] == parent and _member_id(stored):
            return _member_id(stored)
    return None


def _items(body: Any) -> list[dict[str, Any]]:
    return [i if isinstance(i, dict) else {} for i in body] if isinstance(body, list) else []


def _codes(item: Mapping[str, Any]) -> set[str]:
    errors = item.get("errors")
    return {
        str(e.get("statusCode") or e.get("errorCode"))
        for e in (errors if isinstance(errors, list) else [])
        if isinstance(e, dict)
    }


def _errors_text(item: Mapping[str, Any]) -> str:
    """``STATUS_CODE: message (fields)`` of the first error, as Salesforce gave it."""
    errors = item.get("errors")
    first = errors[0] if isinstance(errors, list) and errors else None
    if not isinstance(first, dict):
        return "rejected by Salesforce"
    text = f"{first.get('statusCode') or first.get('errorCode')}: {first.get('message') or ''}"
    fields = first.get("fields")
    if isinstance(fields, list) and fields:
        text += f" (fields {', '.join(map(str, fields))})"
    return text.strip()


def _error_codes(response: httpx.Response) -> set[str]:
    """``errorCode`` values of a top-level ``[{message, errorCode}]`` error answer."""
    try:
        body = json.loads(response.content) if response.content.strip() else None
    except (ValueError, UnicodeDecodeError):
        return set()
    items = body if isinstance(body, list) else [body]
    return {str(i.get("errorCode")) for i in items if isinstance(i, dict) and i.get("errorCode")}
