"""Klaviyo destination: profile upsert and static list membership (API revision 2026-07-15).

Upsert: a batch of fewer than ``bulk_threshold`` records is sent one profile at a time to
``POST /api/profile-import`` (fast, answers with the profile id at once); a larger batch becomes
one bulk import job (``POST /api/profile-bulk-import-jobs``, up to 10,000 profiles), polled with
``self.pause`` until ``complete``, after which its import errors give the rejected records and
its profiles (``GET .../profiles``) give each imported record's profile id. On ``add`` with a
list configured, the job itself adds the imported profiles to the list (``relationships.lists``).

Membership: ``POST``/``DELETE /api/lists/{id}/relationships/profiles`` with at most 1,000
profile ids (204). The profile id learnt on upsert is returned as the record's destination id,
so the engine keeps it and a removal never needs a search.

Answers are JSON:API; error envelopes (``{"errors": [{"code", "title", "detail"}]}``) become the
reasons kept in the audit log. ``RateLimit-Remaining``/``RateLimit-Reset`` on 2xx answers slow
the account down before Klaviyo sends a 429; a 429's ``Retry-After`` is honoured by the engine.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import httpx
from pydantic import Field, SecretStr, model_validator

from syncer.connector import BatchResult, Capabilities, NamedList, Record, check_named_list
from syncer.declarations import CLIENT_ERRORS, HeaderAuth, RateLimitHeaders
from syncer.errors import ConfigError, TransientError
from syncer.ratelimit import RateLimit
from syncer.rest import JobPolling, RestConnector, chunks, dig
from syncer.steps import Steps

DEFAULT_REVISION = "2026-07-15"
JSON_API = "application/vnd.api+json"
#: Most profiles in one bulk import job, and most profile ids per list-relationship call.
MAX_JOB_PROFILES = 10_000
MAX_LIST_IDS = 1_000
#: Largest page the job result endpoints serve.
PAGE_SIZE = 100
#: Profile attributes Klaviyo knows; every other mapped field goes into ``properties``.
STANDARD_ATTRIBUTES = frozenset(
    {
        "email",
        "phone_number",
        "external_id",
        "first_name",
        "last_name",
        "organization",
        "locale",
        "title",
        "image",
    }
)
LOCATION_ATTRIBUTES = frozenset(
    {
        "address1",
        "address2",
        "city",
        "country",
        "latitude",
        "longitude",
        "region",
        "zip",
        "timezone",
        "ip",
    }
)
Identifier = Literal["email", "phone_number", "external_id"]


class _Cancelled(TransientError):
    """Klaviyo cancelled the batch's import job: retrying means a new job."""


class KlaviyoConfig(JobPolling):
    """Settings of the ``klaviyo`` destination."""

    api_key: SecretStr = Field(description="Private API key (pk_...), from the environment.")
    list_id: str | None = Field(
        default=None, min_length=1, description="Static list for membership; needed to remove."
    )
    list_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="The static list by name instead of list_id (looked up once, then kept).",
    )
    create_if_missing: bool = Field(
        default=False, description="Create the list_name list when Klaviyo has none by that name."
    )
    revision: str = Field(default=DEFAULT_REVISION, pattern=r"^\d{4}-\d{2}-\d{2}(\.\w+)?$")
    identifier: Identifier = Field(
        default="email", description="Which profile identifier the sync's key fills."
    )
    bulk_threshold: int = Field(
        default=50,
        ge=1,
        le=MAX_JOB_PROFILES,
        description="Batches with at least this many records use a bulk import job.",
    )
    batch_size: int | None = Field(default=1_000, ge=1, le=MAX_JOB_PROFILES)

    @model_validator(mode="after")
    def _list_by_id_or_name(self) -> KlaviyoConfig:
        check_named_list(self, id_field="list_id", name_field="list_name", optional=True)
        return self


class KlaviyoConnector(RestConnector[KlaviyoConfig]):
    """Upsert Klaviyo profiles and keep a static list equal to the segment."""

    name = "klaviyo"
    description = "Klaviyo profiles (import / bulk import jobs) and list membership"
    capabilities = Capabilities(max_batch_size=MAX_JOB_PROFILES)
    default_base_url = "https://a.klaviyo.com"
    # The strictest tier among the endpoints used (bulk jobs and list relationships: burst
    # 10/s, steady 150/m); profile-import alone would allow 75/s and 750/m.
    rate_limits = (RateLimit(10, 1), RateLimit(150, 60))
    max_concurrency = 3
    # Klaviyo counts per account, which the private key belongs to (the default account):
    # every list one key writes to shares one limiter.
    auth = HeaderAuth("Authorization", "api_key", prefix="Klaviyo-API-Key ")
    # ``RateLimit-Remaining: 0`` on a 2xx holds the account until ``RateLimit-Reset``.
    rate_limit_headers = RateLimitHeaders("RateLimit-Remaining", reset="RateLimit-Reset")
    # 4xx answers come back to the connector: the JSON:API error envelope becomes the
    # record's reason instead of a raw excerpt.
    parsed_statuses = CLIENT_ERRORS
    membership_fields = ("list_id",)

    # -- HTTP hooks ---------------------------------------------------------------------

    def default_headers(self) -> dict[str, str]:
        return {"revision": self.settings.revision, "Accept": JSON_API, "Content-Type": JSON_API}

    # -- contract -----------------------------------------------------------------------

    def check(self) -> None:
        """``GET /api/lists/{id}`` (or the job list when no list is set): cheap, authenticated."""
        cfg = self.settings
        if self.check_list_name():
            return
        if cfg.list_id is None:
            response = self.request("GET", "/api/profile-bulk-import-jobs")
            self.expect(response, "api_key", error=ConfigError)
            return
        response = self.request("GET", f"/api/lists/{cfg.list_id}")
        if response.status_code == 404:
            raise ConfigError(f"klaviyo: list_id: no list {cfg.list_id!r} in this account")
        self.expect(response, "list_id", error=ConfigError)

    # -- lists created when missing (the engine resolves list_name: syncer.destinations) --

    def named_list(self) -> NamedList | None:
        cfg = self.settings
        if cfg.list_id is not None or cfg.list_name is None:
            return None
        return NamedList("list", cfg.list_name, "list_id", create=cfg.create_if_missing)

    def find_list(self, name: str) -> list[str]:
        """``GET /api/lists?filter=equals(name,"...")``, every page: the ids of that name."""
        params = {"filter": f"equals(name,{json.dumps(name)})", "fields[list]": "name"}
        ids: list[str] = []
        cursor: str | None = None
        while True:
            query = dict(params) if cursor is None else {**params, "page[cursor]": cursor}
            response = self.request("GET", "/api/lists", params=query)
            self.expect(response, "list_name", error=ConfigError)
            data = self.json(response)
            items = dig(data, "data")
            for item in items if isinstance(items, list) else []:
                if dig(item, "attributes", "name") == name and isinstance(dig(item, "id"), str):
                    ids.append(str(dig(item, "id")))
            cursor = _next_cursor(dig(data, "links", "next"))
            if cursor is None:
                return ids

    def create_list(self, name: str) -> str:
        """``POST /api/lists``: a static list; its id from the 201."""
        body = {"data": {"type": "list", "attributes": {"name": name}}}
        response = self.request("POST", "/api/lists", json_body=body)
        self.expect(response, "create list", error=ConfigError)
        list_id = dig(self.json(response), "data", "id")
        if not isinstance(list_id, str) or not list_id:
            raise TransientError("klaviyo: list created without an id")
        return list_id

    def add(self, records: Sequence[Record]) -> BatchResult:
        return self._upsert("add", records, to_list=self.settings.list_id is not None)

    def update(self, records: Sequence[Record]) -> BatchResult:
        return self._upsert("update", records, to_list=False)

    def remove(self, records: Sequence[Record]) -> BatchResult:
        """Take profiles off the list by the ids kept from their upsert. A record without a
        kept id (synced before ids were kept) is looked up once; no profile means not a member.
        A retry of the batch resumes: lookups and list calls that succeeded are not repeated."""
        with self.progress.batch("remove", records) as steps:
            known = [r for r in records if r.destination_id]
            unknown = [r for r in records if not r.destination_id]
            if unknown:
                found = self._lookup_ids(unknown, steps)
                known += [Record(r.key, r.fields, found[r.key]) for r in unknown if r.key in found]
            steps.each(
                "list remove",
                chunks(known, MAX_LIST_IDS),
                lambda part: self._list_relationship("DELETE", part),
            )
        return BatchResult(records)

    def _lookup_ids(self, records: Sequence[Record], steps: Steps) -> dict[str, str]:
        """Record key -> profile id via ``GET /api/profiles?filter=any(...)``, 100 a call."""
        ident = self.settings.identifier
        found: dict[str, str] = {}
        for index, part in enumerate(chunks(records, PAGE_SIZE)):
            by_value = {self._identity(r): r.key for r in part}
            values = json.dumps(list(by_value), separators=(",", ":"))
            params = {"filter": f"any({ident},{values})", "fields[profile]": ident}
            for item in steps.pages(
                f"lookup {index}", partial(self._page, "/api/profiles", params)
            ):
                value = _normal(ident, dig(item, "attributes", ident))
                profile_id = dig(item, "id")
                if value in by_value and isinstance(profile_id, str):
                    found[by_value[value]] = profile_id
        return found

    # -- upsert -------------------------------------------------------------------------

    def _upsert(self, operation: str, records: Sequence[Record], *, to_list: bool) -> BatchResult:
        """Import the profiles (and add them to the list); a retry of the batch resumes at the
        step that failed: no second import job, no second import of a profile."""
        with self.progress.batch(operation, records) as steps:
            if len(records) >= self.settings.bulk_threshold:
                return self._bulk_import(records, steps, to_list=to_list)
            result = BatchResult(records)
            imported: list[Record] = []
            answers = steps.each("profile-import", records, self._import_one)
            for record, (profile_id, reason) in zip(records, answers, strict=True):
                if profile_id is None:
                    result.reject(record.key, reason or "rejected")
                else:
                    imported.append(Record(record.key, record.fields, profile_id))
            if to_list and imported:
                steps.once("list add", lambda: self._list_relationship("POST", imported))
            for record in imported:
                result.accept(record.key, destination_id=record.destination_id)
            return result

    def _import_one(self, record: Record) -> tuple[str | None, str | None]:
        """One ``profile-import``: (the profile id, None), or (None, Klaviyo's reason)."""
        body = {"data": self.profile(record)}
        response = self.request("POST", "/api/profile-import", json_body=body)
        if response.status_code >= 400:
            return None, self.reason(self.error_text(response), [record])
        data = self.json(response)
        profile_id = dig(data, "data", "id")
        if not isinstance(profile_id, str) or not profile_id:
            raise TransientError("klaviyo: profile-import answered without a profile id")
        return profile_id, None

    def _bulk_import(
        self, records: Sequence[Record], steps: Steps, *, to_list: bool
    ) -> BatchResult:
        """One bulk import job: create, poll to completion, read errors and profile ids. Each
        is a step: a retry polls the same job and reads only the pages not read yet."""
        job_id = steps.once("create job", lambda: self._create_job(records, to_list=to_list))
        try:
            attributes = steps.once("job complete", lambda: self._wait_for_job(job_id, steps))
        except _Cancelled:
            steps.forget("create job")  # that job will never run: the retry makes a new one
            raise
        result = BatchResult(records)
        rejected: set[str] = set()
        if int(attributes.get("failed_count") or 0) > 0:
            for index, reason in self._import_errors(job_id, records, steps):
                record = records[index]
                rejected.add(record.key)
                result.reject(record.key, self.reason(reason, [record]))
        # Ids already kept (updates, re-adds) need no listing of the job's profiles.
        missing = [r for r in records if not r.destination_id and r.key not in rejected]
        ids = self._job_profile_ids(job_id, missing, steps) if missing else {}
        for record in records:
            if record.key in rejected:
                continue
            profile_id = record.destination_id or ids.get(self._identity(record))
            if profile_id is None:
                result.fail(record.key, "not in the bulk import job's profiles")
            else:
                result.accept(record.key, destination_id=profile_id)
        return result

    def _create_job(self, records: Sequence[Record], *, to_list: bool) -> str:
        cfg = self.settings
        job: dict[str, Any] = {
            "type": "profile-bulk-import-job",
            "attributes": {"profiles": {"data": [self.profile(r) for r in records]}},
        }
        if to_list and cfg.list_id is not None:
            job["relationships"] = {"lists": {"data": [{"type": "list", "id": cfg.list_id}]}}
        response = self.request("POST", "/api/profile-bulk-import-jobs", json_body={"data": job})
        self.expect(response, "bulk import", records=records)
        job_id = dig(self.json(response), "data", "id")
        if not isinstance(job_id, str) or not job_id:
            raise TransientError("klaviyo: bulk import job created without an id")
        return job_id

    def _wait_for_job(self, job_id: str, steps: Steps) -> Mapping[str, Any]:
        """Poll until ``complete``; ``cancelled`` or a timeout leaves the batch unsynced."""

        def poll() -> Mapping[str, Any] | None:
            response = self.request("GET", f"/api/profile-bulk-import-jobs/{job_id}")
            self.expect(response, "bulk import job", error=TransientError)
            attributes = dig(self.json(response), "data", "attributes")
            status = attributes.get("status") if isinstance(attributes, dict) else None
            if status == "cancelled":
                raise _Cancelled(f"klaviyo: bulk import job {job_id} was cancelled")
            steps.advanced()  # the job is there and running: a later 503 is no failed attempt
            return attributes if status == "complete" and isinstance(attributes, dict) else None

        return self.wait_for_job(f"bulk import job {job_id}", poll)

    def _import_errors(
        self, job_id: str, records: Sequence[Record], steps: Steps
    ) -> Iterator[tuple[int, str]]:
        """(index of the record in the batch, reason) for each import error we can place."""
        by_identity = {self._identity(r): i for i, r in enumerate(records)}
        path = f"/api/profile-bulk-import-jobs/{job_id}/import-errors"
        for item in steps.pages("import errors", partial(self._page, path, None)):
            attributes = item.get("attributes") if isinstance(item, dict) else None
            if not isinstance(attributes, dict):
                continue
            index = _pointer_index(dig(attributes, "source", "pointer"), len(records))
            if index is None:
                payload = attributes.get("original_payload")
                value = dig(payload, self.settings.identifier) or dig(
                    payload, "attributes", self.settings.identifier
                )
                index = by_identity.get(_normal(self.settings.identifier, value))
            if index is not None:
                yield index, _describe_error(attributes)

    def _job_profile_ids(
        self, job_id: str, records: Sequence[Record], steps: Steps
    ) -> dict[str, str]:
        """Identity value -> profile id, from the job's imported profiles."""
        ident = self.settings.identifier
        wanted = {self._identity(r) for r in records}
        found: dict[str, str] = {}
        path = f"/api/profile-bulk-import-jobs/{job_id}/profiles"
        fetch = partial(self._page, path, {"fields[profile]": ident})
        for item in steps.pages("job profiles", fetch):
            profile_id = item.get("id") if isinstance(item, dict) else None
            value = _normal(ident, dig(item, "attributes", ident))
            if isinstance(profile_id, str) and value in wanted:
                found[value] = profile_id
        return found

    def _page(
        self, path: str, params: Mapping[str, str] | None, cursor: str | None
    ) -> tuple[list[Any], str | None]:
        """One page (100 items) of a cursor-paginated JSON:API collection, and the cursor of
        the next page (None after the last)."""
        query: dict[str, str] = {"page[size]": str(PAGE_SIZE), **(params or {})}
        if cursor is not None:
            query["page[cursor]"] = cursor
        response = self.request("GET", path, params=query)
        self.expect(response, "listing", error=TransientError)
        data = self.json(response)
        items = dig(data, "data")
        return (list(items) if isinstance(items, list) else []), _next_cursor(
            dig(data, "links", "next")
        )

    # -- list membership ----------------------------------------------------------------

    def _list_relationship(self, method: str, records: Sequence[Record]) -> None:
        """Add or remove up to 1,000 profile ids; 204 is the only success (set semantics)."""
        list_id = self.settings.list_id
        if list_id is None:
            raise ConfigError("klaviyo: list_id is required to change list membership")
        body = {"data": [{"type": "profile", "id": r.destination_id} for r in records]}
        path = f"/api/lists/{list_id}/relationships/profiles"
        response = self.request(method, path, json_body=body)
        if response.status_code == 404:
            raise ConfigError(f"klaviyo: list_id: no list {list_id!r} in this account")
        self.expect(response, "list membership", records=records)

    # -- shapes -------------------------------------------------------------------------

    def profile(self, record: Record) -> dict[str, Any]:
        """A JSON:API profile resource: known attributes, ``location.*``, the rest as
        custom ``properties``; the sync's key fills the configured identifier."""
        attributes: dict[str, Any] = {}
        location: dict[str, Any] = {}
        properties: dict[str, Any] = {}
        for name, value in record.fields.items():
            if name in STANDARD_ATTRIBUTES:
                attributes[name] = value
            elif name.startswith("location.") and name[9:] in LOCATION_ATTRIBUTES:
                location[name[9:]] = value
            else:
                properties[name] = value
        attributes.setdefault(self.settings.identifier, record.key)
        if location:
            attributes["location"] = location
        if properties:
            attributes["properties"] = properties
        return {"type": "profile", "attributes": attributes}

    def _identity(self, record: Record) -> str:
        ident = self.settings.identifier
        return _normal(ident, record.fields.get(ident, record.key))

    def error_text(self, response: httpx.Response) -> str:
        """The JSON:API error envelope as one line (codes, titles, details)."""
        try:
            data = self.json(response)
        except TransientError:
            data = None
        errors = dig(data, "errors")
        listed = errors if isinstance(errors, list) else []
        parts = [_describe_error(e) for e in listed if isinstance(e, dict)]
        return "; ".join(p for p in parts if p) or f"HTTP {response.status_code}"


def _describe_error(error: Mapping[str, Any]) -> str:
    code, detail = error.get("code"), error.get("detail") or error.get("title")
    return ": ".join(str(p) for p in (code, detail) if p)


def _normal(identifier: str, value: Any) -> str:
    text = "" if value is None else str(value).strip()
    return text.lower() if identifier == "email" else text


def _pointer_index(pointer: Any, size: int) -> int | None:
    """``/data/attributes/profiles/data/3/...`` -> 3 (when it is a position in the batch)."""
    if not isinstance(pointer, str):
        return None
    parts = pointer.strip("/").split("/")
    for i in range(len(parts) - 1):
        if parts[i] == "profiles" and parts[i + 1] == "data" and i + 2 < len(parts):
            token = parts[i + 2]
            if token.isdigit() and int(token) < size:
                return int(token)
    return None


def _next_cursor(link: Any) -> str | None:
    """The ``page[cursor]`` of a ``links.next`` URL: we follow it on our own base URL."""
    if not isinstance(link, str) or not link:
        return None
    values = parse_qs(urlsplit(link).query).get("page[cursor]")
    return values[0] if values else None
