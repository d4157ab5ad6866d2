"""SendGrid destination: Marketing Campaigns contacts upsert and list membership (v3).

Upsert: ``PUT /v3/marketing/contacts`` with ``list_ids`` and the batch's contacts is
asynchronous (202 + ``job_id``): the job is polled at ``GET /v3/marketing/contacts/imports/{id}``
with ``self.pause`` until it is ``completed``, ``errored`` or ``failed``. SendGrid does not answer
with contact ids, so afterwards the contacts still without a known id are looked up with
``POST /v3/marketing/contacts/search/emails`` (100 emails a call); each found id is returned as
the record's destination id and kept by the engine. A contact the finished job did not create is
rejected with the job's own counts as the reason (the per-contact ``errors_url`` file has no
documented format, so it is not read).

Removal: ``DELETE /v3/marketing/lists/{id}/contacts?contact_ids=...`` (100 ids a call) with the
kept ids, so no search is needed; it is asynchronous too (202 + ``job_id``) and SendGrid
documents no status endpoint for it, so the 202 is the acknowledgement.

Rate limits: SendGrid publishes no numbers; ``X-RateLimit-Remaining: 0`` on an answer holds the
account until ``X-RateLimit-Reset`` (epoch seconds), which a 429 without ``Retry-After`` also uses.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from pydantic import Field, SecretStr, field_validator, model_validator

from syncer.connector import BatchResult, Capabilities, NamedList, Record, check_named_list
from syncer.declarations import CLIENT_ERRORS, BearerAuth, RateLimitHeaders
from syncer.errors import BatchRejected, ConfigError, TransientError
from syncer.rest import JobPolling, RestConnector, chunks, dig
from syncer.steps import Steps

#: Most contacts in one upsert (SendGrid also caps the body at 6 MB).
MAX_CONTACTS = 30_000
#: Most emails per search/emails call, and ids per list-removal call (as Segment sends them).
SEARCH_CHUNK = 100
REMOVE_CHUNK = 100
#: Lists per page while looking one up by name (SendGrid's largest page).
LIST_PAGE = 1000
#: Reserved contact fields; every other mapped field is a custom field.
RESERVED_FIELDS = frozenset(
    {
        "email",
        "phone_number_id",
        "external_id",
        "anonymous_id",
        "alternate_emails",
        "first_name",
        "last_name",
        "address_line_1",
        "address_line_2",
        "city",
        "state_province_region",
        "postal_code",
        "country",
    }
)
_CONTACT_INDEX = re.compile(r"contacts\[(\d+)\]")


class SendGridConfig(JobPolling):
    """Settings of the ``sendgrid`` destination."""

    api_key: SecretStr = Field(description="API key with Marketing scopes, from the environment.")
    list_ids: list[str] = Field(default_factory=list, description="Marketing list ids (UUIDs).")
    list_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="The list by name instead of list_ids (looked up once, then kept).",
    )
    create_if_missing: bool = Field(
        default=False, description="Create the list_name list when the account has none."
    )
    custom_field_ids: dict[str, str] = Field(
        default_factory=dict, description="Mapped field name -> SendGrid custom field id."
    )
    poll_interval: float = Field(default=2.0, gt=0, description="First wait between polls.")
    batch_size: int | None = Field(default=1_000, ge=1, le=MAX_CONTACTS)

    @field_validator("list_ids")
    @classmethod
    def _uuids(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                uuid.UUID(item)
            except ValueError:
                raise ValueError("list_ids must be SendGrid list UUIDs") from None
        return value

    @model_validator(mode="after")
    def _lists_by_id_or_name(self) -> SendGridConfig:
        check_named_list(self, id_field="list_ids", name_field="list_name")
        return self


class SendGridConnector(RestConnector[SendGridConfig]):
    """Upsert SendGrid Marketing contacts onto lists and take them off again by contact id."""

    name = "sendgrid"
    description = "SendGrid Marketing contacts (async upsert) and list membership"
    capabilities = Capabilities(max_batch_size=MAX_CONTACTS)
    default_base_url = "https://api.sendgrid.com"
    max_concurrency = 2
    # SendGrid counts per account and API key (the default account), whatever lists a sync
    # writes to.
    auth = BearerAuth("api_key")
    # A spent window (or a 429 without Retry-After) waits for X-RateLimit-Reset (Unix time).
    rate_limit_headers = RateLimitHeaders(
        "X-RateLimit-Remaining", reset="X-RateLimit-Reset", reset_unit="epoch"
    )
    # 4xx answers come back to the connector: their ``errors[]`` become reasons.
    parsed_statuses = CLIENT_ERRORS

    # -- lists created when missing (the engine resolves list_name) ----------------------

    def named_list(self) -> NamedList | None:
        cfg = self.settings
        if cfg.list_ids or cfg.list_name is None:
            return None
        return NamedList("list", cfg.list_name, "list_ids", create=cfg.create_if_missing)

    def find_list(self, name: str) -> list[str]:
        """``GET /v3/marketing/lists`` (1,000 a page, ``_metadata.next``): ids named so."""
        ids: list[str] = []
        path = "/v3/marketing/lists"
        params: dict[str, str] | None = {"page_size": str(LIST_PAGE)}
        while True:
            response = self.request("GET", path, params=params)
            self.expect(response, "list_name", error=ConfigError)
            data = self.json(response)
            items = dig(data, "result")
            for item in items if isinstance(items, list) else []:
                if dig(item, "name") == name and isinstance(dig(item, "id"), str):
                    ids.append(str(dig(item, "id")))
            following = dig(data, "_metadata", "next")
            if not isinstance(following, str) or not following:
                return ids
            parts = urlsplit(following)  # followed on our own base URL, with its query
            path, params = parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}

    def create_list(self, name: str) -> str:
        """``POST /v3/marketing/lists``: its id from the 201."""
        response = self.request("POST", "/v3/marketing/lists", json_body={"name": name})
        self.expect(response, "create list", error=ConfigError)
        list_id = dig(self.json(response), "id")
        if not isinstance(list_id, str) or not list_id:
            raise TransientError("sendgrid: list created without an id")
        return list_id

    # -- contract -----------------------------------------------------------------------

    def check(self) -> None:
        """``GET /v3/marketing/lists/{id}`` for every list: authenticated and cheap."""
        if self.check_list_name():
            return
        for list_id in self.settings.list_ids:
            response = self.request("GET", f"/v3/marketing/lists/{list_id}")
            if response.status_code == 404:
                raise ConfigError(f"sendgrid: list_ids: no list {list_id!r} in this account")
            self.expect(response, "list_ids", error=ConfigError)

    def add(self, records: Sequence[Record]) -> BatchResult:
        return self._upsert("add", records, self.settings.list_ids)

    def update(self, records: Sequence[Record]) -> BatchResult:
        return self._upsert("update", records, [])

    def remove(self, records: Sequence[Record]) -> BatchResult:
        """Take contacts off every configured list by the ids kept from their upsert. A record
        without a kept id (synced before ids were kept) is searched for once by email; no
        contact means it is on no list. A retry of the batch resumes: searches and removals
        that succeeded are not sent again."""
        with self.progress.batch("remove", records) as steps:
            ids = [str(r.destination_id) for r in records if r.destination_id]
            unknown = [r for r in records if not r.destination_id]
            if unknown:
                ids += list(self._find_ids(unknown, steps).values())
            for list_id in self.settings.list_ids:
                parts = [list(part) for part in chunks(ids, REMOVE_CHUNK)]
                steps.each(f"remove {list_id}", parts, partial(self._remove_from_list, list_id))
        return BatchResult(records)

    # -- upsert -------------------------------------------------------------------------

    def contact(self, record: Record) -> dict[str, Any]:
        """One contact: reserved fields as they are, the rest under ``custom_fields`` by id;
        the sync's key is the email (SendGrid lowercases it)."""
        contact: dict[str, Any] = {}
        custom: dict[str, Any] = {}
        for name, value in record.fields.items():
            if value is None:
                continue  # an omitted field keeps its value; null is not a valid string
            if name in RESERVED_FIELDS:
                contact[name] = value
            else:
                custom[self.settings.custom_field_ids.get(name, name)] = value
        contact.setdefault("email", record.key)
        if custom:
            contact["custom_fields"] = custom
        return contact

    def _upsert(
        self, operation: str, records: Sequence[Record], list_ids: list[str]
    ) -> BatchResult:
        """PUT the contacts, wait for the import job, find the new contacts' ids. Each is a
        step: a retry of the batch polls the same job instead of importing again."""
        with self.progress.batch(operation, records) as steps:
            result = BatchResult(records)
            sending = list(records)
            job_id, bad = steps.once("upsert", lambda: self._submit(sending, list_ids))
            if job_id is None:
                # Validation errors name the contact (``contacts[3].email``): reject those and
                # send the others once more.
                for index, reason in bad.items():
                    result.reject(sending[index].key, reason)
                sending = [r for i, r in enumerate(sending) if i not in bad]
                if not sending:
                    return result
                rest = sending
                job_id = steps.once("upsert the rest", lambda: self._resubmit(rest, list_ids))
            final = job_id
            job = steps.once("import job", lambda: self._wait_for_job(final, steps))
            ids = {r.key: r.destination_id for r in sending if r.destination_id}
            ids.update(self._find_ids([r for r in sending if not r.destination_id], steps))
            status = job.get("status")
            for record in sending:
                contact_id = ids.get(record.key)
                if contact_id:
                    result.accept(record.key, destination_id=contact_id)
                elif status in ("errored", "failed"):
                    result.reject(record.key, self._job_reason(job))
                else:
                    result.fail(record.key, "contact not found by email after the import job")
            return result

    def _submit(
        self, records: Sequence[Record], list_ids: list[str]
    ) -> tuple[str | None, dict[int, str]]:
        """One upsert: (the import job id, {}), or (None, index -> reason) when SendGrid
        refused contacts it names; any other refusal refuses the batch."""
        response = self._put_contacts(records, list_ids)
        if response.status_code >= 400:
            bad = self._contact_errors(response, records)
            if not bad:
                self.expect(response, "upsert", records=records)
            return None, bad
        return self._job_id(response), {}

    def _resubmit(self, records: Sequence[Record], list_ids: list[str]) -> str:
        """The upsert without the contacts SendGrid named; a refusal now refuses the batch."""
        response = self._put_contacts(records, list_ids)
        self.expect(response, "upsert", records=records)
        return self._job_id(response)

    def _job_id(self, response: httpx.Response) -> str:
        job_id = dig(self.json(response), "job_id")
        if not isinstance(job_id, str) or not job_id:
            raise TransientError("sendgrid: upsert accepted without a job_id")
        return job_id

    def _put_contacts(self, records: Sequence[Record], list_ids: list[str]) -> httpx.Response:
        body: dict[str, Any] = {"contacts": [self.contact(r) for r in records]}
        if list_ids:
            body["list_ids"] = list_ids
        return self.request("PUT", "/v3/marketing/contacts", json_body=body)

    def _wait_for_job(self, job_id: str, steps: Steps) -> Mapping[str, Any]:
        """Poll the import job until it finished; a timeout leaves the batch unsynced."""

        def poll() -> Mapping[str, Any] | None:
            response = self.request("GET", f"/v3/marketing/contacts/imports/{job_id}")
            self.expect(response, "import job", error=TransientError)
            job = self.json(response)
            steps.advanced()  # the job is there: a later 503 is no failed attempt
            if isinstance(job, dict) and job.get("status") in ("completed", "errored", "failed"):
                return job
            return None

        return self.wait_for_job(f"import job {job_id}", poll)

    def _find_ids(self, records: Sequence[Record], steps: Steps) -> dict[str, str]:
        """Record key -> contact id, by email, 100 emails a call (a step each)."""
        found: dict[str, str] = {}
        for part in steps.each("search", chunks(records, SEARCH_CHUNK), self._search):
            found.update(part)
        return found

    def _search(self, records: Sequence[Record]) -> dict[str, str]:
        emails = {_email(r): r.key for r in records}
        body = {"emails": list(emails)}
        response = self.request("POST", "/v3/marketing/contacts/search/emails", json_body=body)
        if response.status_code == 404:  # none of them matched
            return {}
        self.expect(response, "contact search", records=records, error=TransientError)
        found: dict[str, str] = {}
        result = dig(self.json(response), "result")
        for email, item in (result or {}).items() if isinstance(result, dict) else ():
            contact_id = dig(item, "contact", "id")
            key = emails.get(str(email).lower())
            if key is not None and isinstance(contact_id, str) and contact_id:
                found[key] = contact_id
        return found

    def _job_reason(self, job: Mapping[str, Any]) -> str:
        results = job.get("results") if isinstance(job.get("results"), dict) else {}
        assert isinstance(results, dict)
        errored, requested = results.get("errored_count"), results.get("requested_count")
        counts = f" ({errored} of {requested} contacts errored)" if errored is not None else ""
        return self.reason(f"SendGrid import job {job.get('status')}{counts}; contact not saved")

    # -- list removal -------------------------------------------------------------------

    def _remove_from_list(self, list_id: str, contact_ids: list[str], probed: bool = False) -> None:
        """One DELETE; on 404 tell a missing list (ConfigError) from contacts SendGrid no
        longer has (not on the list either: done), then retry the others one id at a time."""
        path = f"/v3/marketing/lists/{list_id}/contacts"
        response = self.request("DELETE", path, params={"contact_ids": ",".join(contact_ids)})
        if response.status_code != 404:
            self.expect(response, "list removal", error=BatchRejected)
            return
        if not probed:
            probe = self.request("GET", f"/v3/marketing/lists/{list_id}")
            if probe.status_code == 404:
                raise ConfigError(f"sendgrid: list_ids: no list {list_id!r} in this account")
        if len(contact_ids) > 1:
            for contact_id in contact_ids:
                self._remove_from_list(list_id, [contact_id], probed=True)

    # -- errors -------------------------------------------------------------------------

    def _contact_errors(
        self, response: httpx.Response, records: Sequence[Record]
    ) -> dict[int, str]:
        """Index in the batch -> reason, for ``errors[]`` whose ``field`` names a contact."""
        found: dict[int, str] = {}
        for error in self._errors(response):
            match = _CONTACT_INDEX.search(str(error.get("field") or ""))
            if match and int(match[1]) < len(records):
                index = int(match[1])
                found[index] = self.reason(_describe(error), [records[index]])
        return found

    def _errors(self, response: httpx.Response) -> list[dict[str, Any]]:
        try:
            data = self.json(response)
        except TransientError:
            return []
        errors = dig(data, "errors")
        return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []

    def error_text(self, response: httpx.Response) -> str:
        """SendGrid's ``errors[]`` as one line (field: message; ...)."""
        return "; ".join(p for p in (_describe(e) for e in self._errors(response)) if p)


def _describe(error: Mapping[str, Any]) -> str:
    field, message = error.get("field"), error.get("message")
    return ": ".join(str(p) for p in (field, message) if p)


def _email(record: Record) -> str:
    return str(record.fields.get("email") or record.key).strip().lower()
