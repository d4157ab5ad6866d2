"""LinkedIn Matched Audiences: keep a DMP user segment equal to a warehouse segment.

Members are added and removed with ``POST /dmpSegments/{id}/users`` (header
``X-RestLi-Method: BATCH_CREATE``): one ``elements[]`` entry per member, ``action`` ``ADD`` or
``REMOVE``, ``userIds`` of ``SHA256_EMAIL`` (normalised and hashed by
:mod:`syncer.identifiers`) and ``GOOGLE_AID`` (the mobile advertiser id), and on ``ADD`` the
plain ``firstName``/``lastName``/``country`` profile hints. LinkedIn answers with one status per
element, in order: a 2xx element is accepted, a 4xx one rejected with LinkedIn's message, any
other (5xx, 429) failed so the next run sends it again.

The engine keeps only SHA-256 of each key (``hashed_keys``); the ids a removal needs (email
hash, advertiser id) are kept as the record's destination id, compact JSON ``{kind: value}``,
so a removal needs no lookup and no raw identifier is ever stored. Names and country are sent
on ADD only and never kept.

The segment is given by id, or by name (``segment_name``, with ``ad_account_id``): the engine
looks it up among the account's segments, or creates it (``create_if_missing``, with the
``source_platform`` LinkedIn approved for the app). A 404 from the users endpoint is retried:
LinkedIn answers 404 for a segment younger than about 5 s.

Rate limits: 600 requests a minute per member (the token's owner) on ``/users``; LinkedIn
answers 429 without headers, which the engine's growing default cool-down handles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
from syncer.declarations import BearerAuth
from syncer.errors import ConfigError, TransientError
from syncer.http import Action
from syncer.identifiers import (
    Kind,
    check_mapped_kinds,
    expected_kept_ids,
    kept_ids,
    normalize,
    prehashed_kinds,
    read_kept_id_sets,
    record_identifiers,
    stale_id_sets,
)
from syncer.normalize import InvalidValue
from syncer.oauth import RefreshCredentials
from syncer.ratelimit import RateLimit
from syncer.rest import RestConfig, RestConnector, dig

#: Most elements per users call: LinkedIn documents 5,000 for the companies endpoint; the
#: users endpoint's maximum is unverified and assumed the same (``batch_size`` lowers it).
MAX_ELEMENTS = 5_000
DEFAULT_VERSION = "202604"  # what Segment's production integration pins
#: LinkedIn's OAuth 2.0 token endpoint (``token_url`` overrides it); programmatic refresh
#: tokens must be enabled for the app.
TOKEN_URL = "https://www.linkedin.com/oauth/v2/accessToken"
#: Identifier kinds that identify a member (``userIds``), with LinkedIn's id type.
ID_KINDS: tuple[Kind, ...] = ("email", "maid")
ID_TYPES: Mapping[str, str] = {"email": "SHA256_EMAIL", "maid": "GOOGLE_AID"}
#: Plain profile hints sent on ADD only.
HINTS: Mapping[Kind, str] = {
    "first_name": "firstName",
    "last_name": "lastName",
    "country": "country",
}
#: Segment statuses LinkedIn will not target (check() refuses them).
DEAD_STATUSES = frozenset({"EXPIRED", "FAILED", "ERROR"})

ElementAction = Literal["ADD", "REMOVE"]
#: What ``source_platform`` takes (LinkedIn refuses a platform not approved for the app).
SOURCE_PLATFORM_CHOICE = (
    "the sourcePlatform LinkedIn approved for your app in its Audiences program (ask your"
    " LinkedIn partner contact; syncer cannot choose it)"
)
#: Segments listed per page while looking one up by name.
SEGMENT_PAGE = 100


class LinkedInConfig(RestConfig, RefreshCredentials):
    """Settings of the ``linkedin`` destination."""

    access_token: SecretStr | None = Field(
        default=None,
        description="3-legged OAuth access token with rw_dmp_segments, from the environment;"
        " or client_id, client_secret and refresh_token, and syncer renews tokens itself.",
    )
    segment_id: str | None = Field(
        default=None,
        pattern=r"^[0-9A-Za-z_-]+$",
        description="Id of an existing USER DMP segment.",
    )
    segment_name: str | None = Field(
        default=None,
        min_length=1,
        description="The segment by name instead of segment_id (needs ad_account_id).",
    )
    create_if_missing: bool = Field(
        default=False, description="Create a USER segment named segment_name if none exists."
    )
    ad_account_id: str | None = Field(
        default=None,
        pattern=r"^\d+$",
        description="Sponsored ad account to find or create segment_name in.",
    )
    source_platform: str | None = Field(
        default=None,
        pattern=r"^[A-Z0-9_]+$",
        description="Required to create a segment: the sourcePlatform LinkedIn approved for"
        " your app in its Audiences program (a partner name such as SEGMENT).",
    )
    api_version: str = Field(
        default=DEFAULT_VERSION,
        pattern=r"^\d{6}(\.\d{2})?$",
        description="LinkedIn-Version header (YYYYMM).",
    )
    prehashed: list[Kind] = Field(
        default_factory=list, description="Kinds whose columns already hold SHA-256 hex."
    )
    batch_size: int | None = Field(default=MAX_ELEMENTS, ge=1, le=MAX_ELEMENTS)

    @model_validator(mode="after")
    def _segment_by_id_or_name(self) -> LinkedInConfig:
        check_named_list(
            self,
            id_field="segment_id",
            name_field="segment_name",
            required={"source_platform": SOURCE_PLATFORM_CHOICE},
        )
        if self.segment_name is not None and self.ad_account_id is None:
            raise ValueError("segment_name needs ad_account_id: the account to look it up in")
        return self

    @field_validator("prehashed")
    @classmethod
    def _hashed_kinds(cls, value: list[Kind]) -> list[Kind]:
        return prehashed_kinds("linkedin", value)


@dataclass(slots=True)
class _Member:
    """One record as elements of the users call (an update is a REMOVE and an ADD)."""

    record: Record
    elements: list[dict[str, Any]] = field(default_factory=list)
    destination_id: str | None = None


class LinkedInConnector(RestConnector[LinkedInConfig]):
    """Add members to and remove them from a LinkedIn DMP user segment, by hashed email."""

    name = "linkedin"
    description = "LinkedIn Matched Audiences (DMP segment users)"
    capabilities = Capabilities.ad_audience(MAX_ELEMENTS)
    default_base_url = "https://api.linkedin.com/rest"
    default_token_url = TOKEN_URL
    rate_limits = (RateLimit(600, 60),)
    max_concurrency = 4
    # LinkedIn counts per member and app, that is per access token (the default account).
    auth = BearerAuth("access_token")

    # -- HTTP hooks ---------------------------------------------------------------------

    def default_headers(self) -> dict[str, str]:
        return {
            "LinkedIn-Version": self.settings.api_version,
            "X-Restli-Protocol-Version": "2.0.0",
        }

    def classify(self, response: httpx.Response) -> Action | None:
        """409/423 are retryable (as Segment treats them); a 404 from the users endpoint is a
        segment not visible yet (LinkedIn: wait 5 s after creating it), so it is retried
        rather than halving the batch into one rejection per member."""
        status = response.status_code
        if status in (409, 423):
            return Action.RETRY
        if status == 404 and response.request.method == "POST":
            return Action.RETRY
        return super().classify(response)

    # -- segments created when missing (the engine resolves segment_name) ----------------

    def named_list(self) -> NamedList | None:
        cfg = self.settings
        if cfg.segment_id is not None or cfg.segment_name is None:
            return None
        return NamedList(
            "DMP segment",
            cfg.segment_name,
            "segment_id",
            create=cfg.create_if_missing,
            within=cfg.ad_account_id or "",
        )

    def find_list(self, name: str) -> list[str]:
        """``GET /dmpSegments?q=account&account=urn:li:sponsoredAccount:{id}``, every page:
        the USER segments named exactly ``name``."""
        ids: list[str] = []
        start = 0
        while True:
            params = {
                "q": "account",
                "account": self._account_urn(),
                "start": str(start),
                "count": str(SEGMENT_PAGE),
            }
            response = self.probe("GET", "/dmpSegments", "segment_name", params=params)
            data = self.json(response)
            elements = data.get("elements") if isinstance(data, dict) else None
            page = elements if isinstance(elements, list) else []
            for item in page:
                if not isinstance(item, dict) or item.get("name") != name:
                    continue
                if item.get("type") in (None, "USER") and item.get("id") is not None:
                    ids.append(str(item["id"]))
            total = dig(data, "paging", "total")
            start += len(page)
            if not page or not isinstance(total, int) or start >= total:
                return ids

    def create_list(self, name: str) -> str:
        """``POST /dmpSegments``: a USER segment for LinkedIn ads; its id from the
        ``x-restli-id`` header (201). LinkedIn needs about 5 s before the segment takes
        users: the users call's 404 meanwhile is retried (see ``classify``)."""
        cfg = self.settings
        body = {
            "name": name,
            "sourcePlatform": cfg.source_platform,
            "sourceSegmentId": name,
            "account": self._account_urn(),
            "type": "USER",
            "destinations": [{"destination": "LINKEDIN"}],
        }
        response = self.probe("POST", "/dmpSegments", "segment_name", json_body=body)
        created: str | None = response.headers.get("x-restli-id") or response.headers.get(
            "x-linkedin-id"
        )
        if not created:
            data = self.json(response)
            found = data.get("id") if isinstance(data, dict) else None
            created = str(found) if found is not None else None
        if not created:
            raise TransientError("linkedin: segment created without an id")
        return created.rsplit(":", 1)[-1]  # a urn (urn:li:dmpSegment:123) or the bare id

    def _account_urn(self) -> str:
        return f"urn:li:sponsoredAccount:{self.settings.ad_account_id}"

    # -- contract -----------------------------------------------------------------------

    def open(self) -> None:
        """Refuse mapped fields LinkedIn cannot take, and a mapping with nothing to match."""
        super().open()
        check_mapped_kinds("linkedin", self.context.field_names, ID_KINDS)

    def check(self) -> None:
        """``GET /dmpSegments/{id}``: authenticated, cheap, and proves the segment exists and
        can take users (a USER segment that is not expired or failed). By name: the
        account's segments, and the name there once, or creatable."""
        if self.check_list_name():
            return
        segment_id = self.settings.segment_id
        response = self.probe("GET", f"/dmpSegments/{segment_id}", "segment_id")
        data = self.json(response)
        if not isinstance(data, dict):
            return
        kind, status = data.get("type"), data.get("status")
        if kind not in (None, "USER"):
            raise ConfigError(f"linkedin: segment_id: segment {segment_id} is a {kind} segment")
        if status in DEAD_STATUSES:
            raise ConfigError(f"linkedin: segment_id: segment {segment_id} is {status}")

    def write(self, operation: Operation, records: Sequence[Record]) -> BatchResult:
        result = BatchResult(records)
        members: list[_Member] = []
        for record in records:
            try:
                member = self._member(operation, record)
            except InvalidValue as exc:
                result.reject(record.key, self.reason(exc, [record]))
                continue
            if member.elements:
                members.append(member)
            else:
                result.accept(record.key, destination_id=member.destination_id)
        if members:
            self._send(members, result)
        return result

    # -- building elements --------------------------------------------------------------

    def _member(self, operation: Operation, record: Record) -> _Member:
        member = _Member(record)
        if operation == "remove":
            # Every id set kept: one, or several while a send is unconfirmed.
            kept = read_kept_id_sets(record.destination_id, ID_TYPES)
            if not kept:
                raise InvalidValue("no kept identifiers to remove this member by")
            member.elements.extend(_element("REMOVE", ids) for ids in kept)
            return member
        ids = self._ids(record)
        if not ids:
            raise InvalidValue("no email or mobile advertiser id to match on")
        member.destination_id = kept_ids(ids)
        # Ids kept that the member no longer has (its ids changed in mirror mode, or a send
        # whose answer never arrived used others): take them off, then add anew.
        for stale in stale_id_sets(record.destination_id, ID_TYPES, ids):
            member.elements.append(_element("REMOVE", stale))
        member.elements.append({**_element("ADD", ids), **self._hints(record)})
        return member

    def expected_destination_id(self, operation: Operation, record: Record) -> str | None:
        """The ids this send adds, beside those already kept (see ``expected_kept_ids``)."""
        return expected_kept_ids(record.destination_id, ID_TYPES, partial(self._ids, record))

    def _ids(self, record: Record) -> dict[str, str]:
        """Kind -> what LinkedIn matches on (email hashed, advertiser id in one case)."""
        return record_identifiers(
            "linkedin", record.fields, ID_KINDS, prehashed=self.settings.prehashed
        )

    def _hints(self, record: Record) -> dict[str, str]:
        hints: dict[str, str] = {}
        for kind, name in HINTS.items():
            value = record.fields.get(kind)
            if _blank(value):
                continue
            try:
                hints[name] = normalize("linkedin", kind, value)
            except InvalidValue as exc:
                raise InvalidValue(f"{kind}: {exc}") from None
        return hints

    # -- sending ------------------------------------------------------------------------

    def _send(self, members: list[_Member], result: BatchResult) -> None:
        elements = [e for m in members for e in m.elements]
        if self.settings.segment_id is None:  # the engine fills it in from segment_name
            raise ConfigError("linkedin: segment_id is not known (segment_name not resolved)")
        path = f"/dmpSegments/{self.settings.segment_id}/users"
        response = self.request(
            "POST",
            path,
            json_body={"elements": elements},
            headers={"X-RestLi-Method": "BATCH_CREATE"},
        )
        statuses = self._statuses(response, len(elements))
        position = 0
        for member in members:
            answers = statuses[position : position + len(member.elements)]
            position += len(member.elements)
            self._settle(member, answers, result)

    def _statuses(self, response: httpx.Response, sent: int) -> list[Mapping[str, Any]]:
        """One status per element sent; no body means LinkedIn reported no problem."""
        data = self.json(response)
        listed = data.get("elements") if isinstance(data, dict) else None
        if listed is None:
            return [{"status": response.status_code}] * sent
        if not isinstance(listed, list) or len(listed) != sent:
            # We cannot tell which members landed: resend (ADD and REMOVE are idempotent).
            raise TransientError(
                f"linkedin: answer lists {len(listed) if isinstance(listed, list) else 'no'}"
                f" statuses for {sent} elements"
            )
        return [item if isinstance(item, dict) else {} for item in listed]

    def _settle(
        self, member: _Member, answers: list[Mapping[str, Any]], result: BatchResult
    ) -> None:
        key = member.record.key
        for answer in answers:
            status = _status(answer)
            if 200 <= status < 300:
                continue
            message = _message(answer) or f"element status {status}"
            reason = self.reason(f"LinkedIn: {message}", [member.record])
            if 400 <= status < 500 and status not in (408, 409, 423, 429):
                result.reject(key, reason)
            else:
                result.fail(key, reason)
            return
        result.accept(key, destination_id=member.destination_id)


def _element(action: ElementAction, ids: Mapping[str, str]) -> dict[str, Any]:
    user_ids = [{"idType": ID_TYPES[k], "idValue": v} for k, v in sorted(ids.items())]
    return {"action": action, "userIds": user_ids}


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _status(answer: Mapping[str, Any]) -> int:
    status = answer.get("status")
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


def _message(answer: Mapping[str, Any]) -> str:
    error = answer.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error.get("code") or "")
    return ""
