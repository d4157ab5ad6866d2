"""Mailchimp Marketing API v3.0: audience members upsert, tag or static segment membership.

Upsert is the batch subscribe call ``POST /lists/{list_id}`` (at most 500 members, 200 with a
per-record ``errors[]``). Membership is a static segment, changed 500 emails at a time with
``members_to_add``/``members_to_remove``, or a tag. A Mailchimp tag is a static segment too, so
by default (``tag_method: segment``) the tag name is resolved once per run to its segment id
(``GET /lists/{id}/segments?type=static``, created when missing) and changed in the same 500-email
calls. ``tag_method: member`` sets the tag ``active``/``inactive`` one member at a time on
``/members/{subscriber_hash}/tags`` (the hash is the MD5 of the lowercased email). Mailchimp
limits each API key to 10 connections at once and sends no rate-limit headers, so a 429 is the
only signal; the engine backs off.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import httpx
from pydantic import Field, SecretStr, model_validator

from syncer.connector import (
    BatchResult,
    Capabilities,
    ConnectorConfig,
    NamedList,
    Outcome,
    Record,
    SyncContext,
    check_named_list,
)
from syncer.declarations import BasicAuth
from syncer.errors import AuthError, BatchRejected, ConfigError
from syncer.http import Action
from syncer.rest import RestConfig, RestConnector
from syncer.steps import Steps, apply

MAX_MEMBERS = 500  # batch subscribe and each segment array [CODE]
SEGMENT_PAGE = 1000  # segments listed per request while looking a tag up (Mailchimp's max count)
_DC = re.compile(r"-([a-z]{2,5}\d{1,3})$")
_MD5 = re.compile(r"^[0-9a-f]{32}$")
_TAGS_PATH = re.compile(r"/lists/[^/]+/members/[0-9a-f]{32}/tags$")
# Batch subscribe answers that mean "this member is already there": success for a sync.
_ALREADY = re.compile(r"already (?:a )?(?:list )?member|already (?:in|on|exists)", re.I)
# Segment removals of emails that are not (or no longer) on the list: nothing left to remove.
_NOT_THERE = re.compile(
    r"not (?:a )?(?:list )?member|not (?:on|in) (?:the|this) |not subscribed|does not exist", re.I
)
_FORBIDDEN_HINT = "; if this key may not edit tags as segments, set tag_method: member"

Status = Literal["subscribed", "pending", "unsubscribed", "cleaned", "transactional"]
TagMethod = Literal["segment", "member"]


def subscriber_hash(email: str) -> str:
    """Mailchimp's URL key for a member: MD5 hex of the lowercased address."""
    return hashlib.md5(email.strip().lower().encode("utf-8"), usedforsecurity=False).hexdigest()


class MailchimpConfig(RestConfig):
    """The ``destination:`` block of a Mailchimp sync."""

    api_key: SecretStr
    list_id: str = Field(min_length=1, description="Audience (list) id.")
    #: Membership mechanism: a tag name, or a static segment id (not both).
    tag: str | None = Field(default=None, min_length=1)
    segment_id: int | None = None
    #: The static segment by name instead of ``segment_id`` (looked up once, then kept).
    segment_name: str | None = Field(default=None, min_length=1, max_length=100)
    #: Create the ``segment_name`` segment when the audience has none by that name.
    create_if_missing: bool = False
    #: How a tag is changed: ``segment`` edits the tag as the static segment it is, 500
    #: addresses per request; ``member`` sets it one request per member (for accounts that
    #: refuse segment edits, or tiny lists).
    tag_method: TagMethod = "segment"
    #: The mapping field holding the member's email; the key is used when it is absent.
    email_field: str = "email"
    #: ``status`` given to members in batch subscribe (new ones; existing ones too while
    #: ``update_existing`` is true, which Mailchimp may refuse for unsubscribed people).
    status_if_new: Status = "subscribed"
    update_existing: bool = True
    skip_merge_validation: bool = False
    batch_size: int | None = Field(default=MAX_MEMBERS, ge=1, le=MAX_MEMBERS)

    @model_validator(mode="after")
    def _one_mechanism_and_a_data_centre(self) -> MailchimpConfig:
        if self.tag is not None and (self.segment_id is not None or self.segment_name):
            raise ValueError("set either tag or segment_id (or segment_name), not both")
        check_named_list(self, id_field="segment_id", name_field="segment_name", optional=True)
        if self.tag is None and "tag_method" in self.model_fields_set:
            raise ValueError("tag_method applies to tag only")
        if self.base_url is None and not _DC.search(self.api_key.get_secret_value()):
            raise ValueError("api_key has no data-centre suffix (like -us21); set base_url instead")
        return self


class MailchimpConnector(RestConnector[MailchimpConfig]):
    """Audience members upsert plus tag or static segment membership."""

    name = "mailchimp"
    description = "Mailchimp audience members, tags and static segments"
    capabilities = Capabilities(max_batch_size=MAX_MEMBERS)
    # No published request rate; 10 simultaneous connections per API key.
    max_concurrency = 10
    # Mailchimp ignores the user name. The connection limit is per API key (the default
    # account), whatever list a sync writes to.
    auth = BasicAuth("api_key", username="syncer")
    # Membership is a tag or a static segment: membership and mirror need one.
    membership_fields = ("tag", "segment_id")

    def __init__(self, config: ConnectorConfig, context: SyncContext, http: httpx.Client) -> None:
        super().__init__(config, context, http)
        #: The tag's segment id, resolved at the first add or remove of a run (batches run on
        #: several threads: the lock makes one lookup, and at most one creation, per run).
        self._tag_id: int | None = None
        self._resolving = threading.Lock()

    @property
    def base_url(self) -> str:
        cfg = self.settings
        if cfg.base_url:
            return cfg.base_url
        match = _DC.search(cfg.api_key.get_secret_value())
        if match is None:  # the config validator refuses this already
            raise ConfigError("mailchimp: api_key has no data-centre suffix; set base_url")
        return f"https://{match.group(1)}.api.mailchimp.com/3.0"

    def classify(self, response: httpx.Response) -> Action | None:
        """A 404 on a member's tags means the member is not on the list: decided per record."""
        if response.status_code == 404 and _TAGS_PATH.search(response.request.url.path):
            return Action.IGNORE
        return super().classify(response)

    # -- static segments created when missing (the engine resolves segment_name) ----------

    def named_list(self) -> NamedList | None:
        cfg = self.settings
        if cfg.segment_id is not None or cfg.segment_name is None:
            return None
        return NamedList(
            "static segment",
            cfg.segment_name,
            "segment_id",
            create=cfg.create_if_missing,
            within=cfg.list_id,
        )

    def find_list(self, name: str) -> list[str]:
        return [str(found) for found in self._static_segments(name, "segment_name")]

    def create_list(self, name: str) -> str:
        return str(self._create_segment(name, "segment_name"))

    # -- contract -------------------------------------------------------------------------

    def check(self) -> None:
        """Read the audience (and the segment, or look the tag up): bad key -> AuthError,
        wrong id -> ConfigError. A tag that does not exist yet is fine: the first add creates
        it, and check never writes."""
        cfg = self.settings
        self.probe("GET", f"/lists/{cfg.list_id}", "list_id", params={"fields": "id,name"})
        if cfg.tag is not None and cfg.tag_method == "segment":
            self._tag_id = self._find_tag(cfg.tag)
        self.check_list_name()
        if cfg.segment_id is not None:
            response = self.probe(
                "GET", f"/lists/{cfg.list_id}/segments/{cfg.segment_id}", "segment_id"
            )
            body = self.json(response)
            kind = body.get("type") if isinstance(body, dict) else None
            if kind not in (None, "static"):
                raise ConfigError(
                    f"mailchimp: segment_id: segment is {kind!r}; only static segments take members"
                )

    def add(self, records: Sequence[Record]) -> BatchResult:
        """Upsert the members, then put the subscribed ones in the tag or segment. A retry of
        the batch (after a 429 or a 5xx on the tag call, say) resumes at the call that failed:
        the batch subscribe that succeeded is not sent again (syncer.steps)."""
        with self.progress.batch("add", records) as steps:
            subscribed = steps.once("subscribe", lambda: self._subscribe(records))
            result = apply(BatchResult(records), subscribed)
            accepted = {o.key for o in subscribed if o.status == "accepted"}
            on_list = [r for r in records if r.key in accepted]
            if on_list:
                apply(result, self._membership(on_list, steps, active=True))
            return result

    def update(self, records: Sequence[Record]) -> BatchResult:
        """Changed fields only: membership is already in place from the add."""
        return apply(BatchResult(records), self._subscribe(records))

    def remove(self, records: Sequence[Record]) -> BatchResult:
        """Take members out of the tag or segment; the audience member itself stays."""
        with self.progress.batch("remove", records) as steps:
            return apply(BatchResult(records), self._membership(list(records), steps, active=False))

    # -- upsert ---------------------------------------------------------------------------

    def email_of(self, record: Record) -> str | None:
        """The member's address: the email field, else a stored one, else an email key."""
        for value in (
            record.fields.get(self.settings.email_field),
            record.destination_id,
            record.key,
        ):
            if isinstance(value, str) and "@" in value:
                return value.strip().lower()
        return None

    def _member(self, record: Record, email: str) -> dict[str, Any]:
        cfg = self.settings
        merge = {
            name: value
            for name, value in record.fields.items()
            if name != cfg.email_field and value is not None
        }
        member: dict[str, Any] = {"email_address": email, "status": cfg.status_if_new}
        if merge:
            member["merge_fields"] = merge
        return member

    def _subscribe(self, records: Sequence[Record]) -> list[Outcome]:
        """Batch subscribe; every record's outcome (accepted ones are now on the list)."""
        cfg = self.settings
        outcomes: list[Outcome] = []
        by_email: dict[str, list[Record]] = {}
        members: list[dict[str, Any]] = []
        for record in records:
            email = self.email_of(record)
            if email is None:
                outcomes.append(Outcome(record.key, "rejected", "no email address for this member"))
                continue
            if email not in by_email:
                members.append(self._member(record, email))
            by_email.setdefault(email, []).append(record)
        if not members:
            return outcomes
        body = {"members": members, "update_existing": cfg.update_existing, "sync_tags": False}
        params = {"skip_merge_validation": "true"} if cfg.skip_merge_validation else None
        response = self.request("POST", f"/lists/{cfg.list_id}", json_body=body, params=params)
        data = self.json(response)
        refused: set[str] = set()
        for error in _items(data, "errors"):
            email = str(error.get("email_address") or "").strip().lower()
            text = str(error.get("error") or error.get("error_code") or "rejected")
            if error.get("error_code") == "ERROR_CONTACT_EXISTS" or _ALREADY.search(text):
                continue
            for record in by_email.get(email, []):
                reason = self.reason(f"mailchimp: {text}", [record])
                outcomes.append(Outcome(record.key, "rejected", reason))
                refused.add(record.key)
        for email, group in by_email.items():
            for record in group:
                if record.key not in refused:
                    remembered = self._remembered(email)
                    outcomes.append(Outcome(record.key, "accepted", destination_id=remembered))
        return outcomes

    def _by_address(self) -> bool:
        """Membership changed through segment calls, which take addresses."""
        cfg = self.settings
        return cfg.segment_id is not None or (cfg.tag is not None and cfg.tag_method == "segment")

    def _remembered(self, email: str) -> str:
        """What state keeps for removal: the email for segment calls (members_to_remove takes
        addresses), the hash otherwise (the per-member tag URL needs no address)."""
        return email if self._by_address() else subscriber_hash(email)

    # -- membership -----------------------------------------------------------------------

    def _membership(self, records: list[Record], steps: Steps, *, active: bool) -> list[Outcome]:
        """The records' outcomes of going into (or out of) the tag or segment; each request is
        a step of the batch, so a retry sends only those that did not succeed yet."""
        cfg = self.settings
        if cfg.segment_id is not None:
            return self._segment(records, cfg.segment_id, steps, active=active, label="segment")
        if cfg.tag is None:
            return []
        tag = partial(self._tag, tag=cfg.tag, active=active)
        if cfg.tag_method == "member":
            return steps.each("member tag", records, tag)
        outcomes: list[Outcome] = []
        addressed = [r for r in records if self.email_of(r) is not None]
        if addressed:
            segment_id = self._tag_segment_id(cfg.tag)
            outcomes += self._segment(addressed, segment_id, steps, active=active, label="tag")
        # Only a subscriber hash in state (written by tag_method: member) and no email key:
        # the per-member call is the one way to reach these members.
        hashed = [r for r in records if self.email_of(r) is None]
        return outcomes + steps.each("member tag", hashed, tag)

    # -- tag as a static segment ----------------------------------------------------------

    def _tag_segment_id(self, tag: str) -> int:
        """The tag's segment id: looked up once per run, created when the tag does not exist."""
        with self._resolving:
            if self._tag_id is None:
                found = self._find_tag(tag)
                self._tag_id = found if found is not None else self._create_tag(tag)
            return self._tag_id

    def _find_tag(self, tag: str) -> int | None:
        """The id of the static segment named exactly ``tag``."""
        found = self._static_segments(tag, "tag")
        return found[0] if found else None

    def _static_segments(self, name: str, what: str) -> list[int]:
        """The ids of the static segments named exactly ``name``, paging through them all."""
        path = f"/lists/{self.settings.list_id}/segments"
        ids: list[int] = []
        offset = 0
        while True:
            params: dict[str, str | int] = {
                "type": "static",
                "count": SEGMENT_PAGE,
                "offset": offset,
                "fields": "segments.id,segments.name,total_items",
            }
            try:
                response = self.request("GET", path, params=params)
            except BatchRejected as exc:
                raise ConfigError(
                    f"mailchimp: {what}: cannot list the audience's segments and tags: {exc}"
                ) from None
            data = self.json(response)
            page = _items(data, "segments")
            for segment in page:
                found = _int_id(segment.get("id"))
                if segment.get("name") == name and found is not None:
                    ids.append(found)
            offset += len(page)
            total = data.get("total_items") if isinstance(data, dict) else None
            if not page or not isinstance(total, int) or offset >= total:
                return ids

    def _create_tag(self, tag: str) -> int:
        return self._create_segment(tag, "tag")

    def _create_segment(self, name: str, what: str) -> int:
        """A new static segment (a tag is one) named ``name``: its id."""
        path = f"/lists/{self.settings.list_id}/segments"
        try:
            response = self.request("POST", path, json_body={"name": name, "static_segment": []})
        except AuthError as exc:
            raise AuthError(f"{exc}{_FORBIDDEN_HINT}") from None
        except BatchRejected as exc:
            noun = "tag" if what == "tag" else "static segment"
            raise ConfigError(
                f"mailchimp: {what}: cannot create the {noun} {name!r}: {exc}"
            ) from None
        data = self.json(response)
        created = _int_id(data.get("id") if isinstance(data, dict) else None)
        if created is None:
            raise ConfigError(f"mailchimp: {what}: creating {name!r} returned no segment id")
        return created

    def _hash_of(self, record: Record) -> str | None:
        stored = record.destination_id
        if stored and _MD5.match(stored):
            return stored
        email = self.email_of(record)
        return subscriber_hash(email) if email else None

    def _tag(self, record: Record, *, tag: str, active: bool) -> Outcome:
        """One member's tag on or off through the member's own tags endpoint."""
        member = self._hash_of(record)
        if member is None:
            return Outcome(record.key, "rejected", "no email address or subscriber hash")
        path = f"/lists/{self.settings.list_id}/members/{member}/tags"
        body = {"tags": [{"name": tag, "status": "active" if active else "inactive"}]}
        try:
            response = self.request("POST", path, json_body=body)
        except BatchRejected as exc:  # one member, so one record's refusal
            return Outcome(record.key, "rejected", self.reason(f"mailchimp tag: {exc}", [record]))
        if response.status_code == 404:
            if active:
                return Outcome(record.key, "rejected", "mailchimp tag: member not found")
            return Outcome(record.key, "accepted")  # not on the list at all: not tagged either
        return Outcome(record.key, "accepted", destination_id=member)

    def _segment(
        self,
        records: list[Record],
        segment_id: int,
        steps: Steps,
        *,
        active: bool,
        label: str,
    ) -> list[Outcome]:
        """Segment members in one call per 500 addresses (one step each); errors[] mapped
        back by address.

        Mailchimp ignores addresses that are not on the list: on removal that is success
        (nothing to remove), on add an error saying so rejects the record, as it was never
        subscribed."""
        outcomes: list[Outcome] = []
        by_email: dict[str, list[Record]] = {}
        for record in records:
            email = self.email_of(record)
            if email is None:
                reason = "no email address stored for this member"
                outcomes.append(Outcome(record.key, "rejected", reason))
                continue
            by_email.setdefault(email, []).append(record)
        call = partial(self._segment_call, segment_id, by_email, active=active, label=label)
        for answer in steps.each(label, _chunked(list(by_email), MAX_MEMBERS), call):
            outcomes += answer
        return outcomes

    def _segment_call(
        self,
        segment_id: int,
        by_email: dict[str, list[Record]],
        chunk: list[str],
        *,
        active: bool,
        label: str,
    ) -> list[Outcome]:
        """One ``members_to_add``/``members_to_remove`` call; the records it refused."""
        path = f"/lists/{self.settings.list_id}/segments/{segment_id}"
        array = "members_to_add" if active else "members_to_remove"
        try:
            response = self.request("POST", path, json_body={array: chunk})
        except AuthError as exc:
            if label != "tag":
                raise
            raise AuthError(f"{exc}{_FORBIDDEN_HINT}") from None
        refused: list[Outcome] = []
        for error in _items(self.json(response), "errors"):
            text = str(error.get("error") or "rejected")
            if (_ALREADY if active else _NOT_THERE).search(text):
                continue
            if active and _NOT_THERE.search(text):
                text = f"not in the audience (not subscribed), so not added: {text}"
            addresses = error.get("email_addresses") or []
            for email in addresses if isinstance(addresses, list) else []:
                for record in by_email.get(str(email).strip().lower(), []):
                    reason = self.reason(f"mailchimp {label}: {text}", [record])
                    refused.append(Outcome(record.key, "rejected", reason))
        return refused


def _items(data: Any, name: str) -> list[dict[str, Any]]:
    value = data.get(name) if isinstance(data, dict) else None
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _int_id(value: Any) -> int | None:
    """A segment id as Mailchimp sends it (an integer; a digit string is tolerated)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _chunked(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
