"""Google Ads Customer Match destination: a CRM-based user list fed by offline user data jobs.

One run is one ``OfflineUserDataJob`` (type ``CUSTOMER_MATCH_USER_LIST``), created lazily at
the first batch (``POST /{version}/customers/{cid}/offlineUserDataJobs:create``). Every batch
is one ``{job}:addOperations`` call (``enablePartialFailure: true``): a ``create`` operation
per member added, a ``remove`` per member removed. Errors Google places on an operation
(``partialFailureError``, operation index in ``fieldPathElements``) reject that record; the
others are *pending* in the job. ``close()`` runs the job (``{job}:run``); jobs take hours,
so a later run polls it (``googleAds:search`` on ``offline_user_data_job``) and only then
the engine marks those members synced, with the job's match-rate range as stats.

Identifiers are normalised and hashed by :mod:`syncer.identifiers` (platform ``google``):
``hashedEmail``, ``hashedPhoneNumber`` (E.164 with ``+``), ``addressInfo`` (hashed first and
last name, country and postal code in clear), ``mobileId`` and ``thirdPartyUserId``. The
identifiers sent are kept as the record's destination id, which is all a removal needs.

``DatabaseError.CONCURRENT_MODIFICATION`` (HTTP 400: another job touches the same list) is
retried; a 429 / ``RESOURCE_EXHAUSTED`` honours the ``retryDelay`` Google puts in the body.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import httpx
from pydantic import Field, SecretStr, field_validator, model_validator

from syncer.connector import (
    BatchResult,
    Capabilities,
    ConnectorConfig,
    JobStatus,
    NamedList,
    Operation,
    Record,
    SyncContext,
    check_named_list,
)
from syncer.declarations import BearerAuth, HeaderAuth
from syncer.errors import BatchRejected, ConfigError, RateLimited, TransientError
from syncer.http import MAX_RETRY_AFTER, Action
from syncer.identifiers import SUPPORTED, Kind, identifier
from syncer.normalize import InvalidValue
from syncer.oauth import RefreshCredentials
from syncer.ratelimit import RateLimit
from syncer.rest import RestConfig, RestConnector, dig, quoted_literal

DEFAULT_VERSION = "v22"
#: Google's OAuth 2.0 token endpoint (``token_url`` overrides it); tokens live an hour.
TOKEN_URL = "https://oauth2.googleapis.com/token"
PLATFORM: Literal["google"] = "google"
#: Records per batch (one addOperations call). A record carries at most 5 identifiers, so a
#: full batch stays far below Google's 100,000 identifiers per request.
MAX_BATCH = 10_000
MAX_IDENTIFIERS_PER_REQUEST = 100_000
ADDRESS_KINDS: tuple[Kind, ...] = ("first_name", "last_name", "country", "postcode")
#: A Customer Match list has one upload key type: contact info, a CRM id or a mobile id.
KEY_TYPES: dict[str, frozenset[str]] = {
    "CONTACT_INFO": frozenset({"email", "phone", *ADDRESS_KINDS}),
    "CRM_ID": frozenset({"external_id"}),
    "MOBILE_ADVERTISING_ID": frozenset({"maid"}),
}
Consent = Literal["GRANTED", "DENIED"]
_DIGITS = re.compile(r"^\d+$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
#: Customer Match membership life span: at most 540 days, or 10000 for "no expiry".
MAX_LIFE_SPAN = 540
UNLIMITED_LIFE_SPAN = 10_000
LIFE_SPAN_CHOICES = (
    f"days a member stays on the list, 1 to {MAX_LIFE_SPAN}, or {UNLIMITED_LIFE_SPAN} for"
    " no expiry (Google's default for Customer Match lists is 540)"
)
#: ``MATCH_RANGE_20_TO_30`` -> (20, 30); ``MATCH_RANGE_LESS_THAN_20`` -> (0, 19).
_RANGE = re.compile(r"^MATCH_RANGE_(\d+)_TO_(\d+)$")


class GoogleAdsConfig(RestConfig, RefreshCredentials):
    """Settings of the ``google_ads`` destination."""

    access_token: SecretStr | None = Field(
        default=None,
        description="Static OAuth access token (adwords scope); or client_id, client_secret"
        " and refresh_token, and syncer renews tokens itself.",
    )
    developer_token: SecretStr = Field(description="Google Ads API developer token.")
    customer_id: str = Field(description="Account owning the list (digits; dashes allowed).")
    login_customer_id: str | None = Field(
        default=None, description="Manager account id, when acting through a manager."
    )
    user_list_id: str | None = Field(
        default=None, description="The Customer Match (CRM-based) user list id."
    )
    user_list_name: str | None = Field(
        default=None,
        min_length=1,
        description="The user list by name instead of user_list_id (looked up once, then kept).",
    )
    create_if_missing: bool = Field(
        default=False, description="Create the user_list_name list when the customer has none."
    )
    membership_life_span: int | None = Field(
        default=None,
        ge=1,
        description="Days a member stays on a list syncer creates (required to create it):"
        f" 1 to {MAX_LIFE_SPAN}, or {UNLIMITED_LIFE_SPAN} for no expiry.",
    )
    user_list_description: str | None = Field(
        default=None, description="Description of a user list syncer creates."
    )
    api_version: str = Field(default=DEFAULT_VERSION, pattern=r"^v\d+$")
    ad_user_data: Consent | None = Field(
        default=None, description="Consent for ad user data, sent on the job (EEA users)."
    )
    ad_personalization: Consent | None = Field(
        default=None, description="Consent for ad personalisation, sent on the job."
    )
    region: str | None = Field(
        default=None, min_length=2, max_length=2, description="Default phone region."
    )
    prehashed: list[Kind] = Field(default_factory=list, description="Columns already SHA-256.")
    gmail_dots: bool = Field(
        default=False, description="Strip dots before @gmail.com (off: Customer Match sample)."
    )
    batch_size: int | None = Field(default=MAX_BATCH, ge=1, le=MAX_BATCH)

    @model_validator(mode="after")
    def _list_by_id_or_name(self) -> GoogleAdsConfig:
        check_named_list(
            self,
            id_field="user_list_id",
            name_field="user_list_name",
            required={"membership_life_span": LIFE_SPAN_CHOICES},
        )
        span = self.membership_life_span
        if span is not None and span > MAX_LIFE_SPAN and span != UNLIMITED_LIFE_SPAN:
            raise ValueError(f"membership_life_span must be {LIFE_SPAN_CHOICES}")
        return self

    @field_validator("customer_id", "login_customer_id", "user_list_id")
    @classmethod
    def _digits(cls, value: str | None) -> str | None:
        if value is None:
            return None
        compact = value.replace("-", "").strip()
        if not _DIGITS.match(compact):
            raise ValueError("must be a numeric Google Ads id (dashes allowed)")
        return compact


class GoogleAdsConnector(RestConnector[GoogleAdsConfig]):
    """Keep a Google Ads Customer Match list equal to the segment, through offline jobs."""

    name = "google_ads"
    description = "Google Ads Customer Match user list (offline user data jobs)"
    capabilities = Capabilities(
        modes=frozenset({"membership", "upsert", "mirror"}),
        max_batch_size=MAX_BATCH,
        hashed_keys=True,
        async_jobs=True,
    )
    default_base_url = "https://googleads.googleapis.com"
    default_token_url = TOKEN_URL
    # Google publishes no fixed QPS (token buckets per developer token and customer, 429 with
    # retryDelay when spent): a modest pace; operations on one job are serialised anyway.
    rate_limits = (RateLimit(5, 1),)
    max_concurrency = 1
    auth = (BearerAuth("access_token"), HeaderAuth("developer-token", "developer_token"))
    # The customer (account) and the developer token, not the user list; never the OAuth
    # access token, which is refreshed every hour.
    account_fields = ("customer_id", "developer_token")

    def __init__(self, config: ConnectorConfig, context: SyncContext, http: httpx.Client) -> None:
        super().__init__(config, context, http)
        self._lock = threading.Lock()
        self._job: str | None = None
        self._operations = 0
        self._local = threading.local()

    @property
    def job(self) -> str | None:
        """Resource name of this run's job, once the first batch created it."""
        return self._job

    # -- HTTP hooks ---------------------------------------------------------------------

    def default_headers(self) -> dict[str, str]:
        login = self.settings.login_customer_id
        return {"login-customer-id": login} if login else {}

    def classify(self, response: httpx.Response) -> Action | None:
        """429 / RESOURCE_EXHAUSTED is rate limiting (hold the account for ``retryDelay``);
        ``CONCURRENT_MODIFICATION`` (HTTP 400, another job on the list) is worth a retry."""
        status = response.status_code
        if status < 400 or status in (401, 403):
            return None
        body = _body(response)
        if status == 429 or _error_status(body) == "RESOURCE_EXHAUSTED":
            delay = _retry_delay(body)
            if delay is not None:
                self._local.delay = delay
                self.slow_down(delay)
            return Action.RATE_LIMITED
        if status == 400 and "CONCURRENT_MODIFICATION" in _error_codes(body):
            return Action.RETRY
        return super().classify(response)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """As the base, but a 429 waits Google's ``retryDelay`` when it gave one."""
        self._local.delay = None
        try:
            return super().request(method, path, **kwargs)
        except RateLimited as exc:
            delay: float | None = getattr(self._local, "delay", None)
            if delay is not None and (exc.retry_after is None or exc.retry_after < delay):
                raise RateLimited(str(exc), retry_after=min(delay, MAX_RETRY_AFTER)) from None
            raise

    # -- user lists created when missing (the engine resolves user_list_name) -----------

    def named_list(self) -> NamedList | None:
        cfg = self.settings
        if cfg.user_list_id is not None or cfg.user_list_name is None:
            return None
        return NamedList(
            "user list",
            cfg.user_list_name,
            "user_list_id",
            create=cfg.create_if_missing,
            within=cfg.customer_id,
        )

    def find_list(self, name: str) -> list[str]:
        """GAQL on ``user_list`` by name, every page: the ids of the lists named so."""
        query = (
            "SELECT user_list.id, user_list.name FROM user_list"
            f" WHERE user_list.name = {quoted_literal(name)}"
        )
        body: dict[str, Any] = {"query": query}
        ids: list[str] = []
        while True:
            response = self.probe(
                "POST", self._path("googleAds:search"), "user_list_name", json_body=body
            )
            data = self.json(response)
            for row in _results(data):
                list_id = dig(row, "userList", "id")
                if dig(row, "userList", "name") == name and list_id is not None:
                    ids.append(str(list_id))
            token = dig(data, "nextPageToken")
            if not isinstance(token, str) or not token:
                return ids
            body = {"query": query, "pageToken": token}

    def create_list(self, name: str) -> str:
        """``userLists:mutate`` creating a CRM-based list for the upload key type the
        mapping's fields use, with the life span the user chose. A customer that has not
        accepted Google's customer data terms gets a ConfigError saying so."""
        cfg = self.settings
        names = set(self.context.field_names)
        key_type = next((k for k, kinds in KEY_TYPES.items() if names & kinds), "CONTACT_INFO")
        user_list: dict[str, Any] = {
            "name": name,
            "membershipLifeSpan": str(cfg.membership_life_span),
            "crmBasedUserList": {"uploadKeyType": key_type, "dataSourceType": "FIRST_PARTY"},
        }
        if cfg.user_list_description:
            user_list["description"] = cfg.user_list_description
        try:
            response = self.request(
                "POST",
                self._path("userLists:mutate"),
                json_body={"operations": [{"create": user_list}]},
            )
        except BatchRejected as exc:
            raise ConfigError(_creation_refused(str(exc))) from None
        results = _results(self.json(response))
        resource = dig(results[0], "resourceName") if results else None
        if not isinstance(resource, str) or "/userLists/" not in resource:
            raise TransientError("google_ads: user list created without a resource name")
        return resource.rsplit("/", 1)[1]

    # -- contract -----------------------------------------------------------------------

    def check(self) -> None:
        """Read the user list with GAQL: proves token, developer token, customer and list."""
        cfg = self.settings
        if self.check_list_name():
            return
        query = (
            "SELECT user_list.id, user_list.name, user_list.type FROM user_list "
            f"WHERE user_list.resource_name = '{self.user_list}'"
        )
        response = self.probe(
            "POST", self._path("googleAds:search"), "customer_id", json_body={"query": query}
        )
        rows = _results(self.json(response))
        if not rows:
            raise ConfigError(
                f"google_ads: user_list_id: no user list {cfg.user_list_id!r} "
                f"in customer {cfg.customer_id}"
            )
        kind = dig(rows[0], "userList", "type")
        if kind not in (None, "CRM_BASED"):
            raise ConfigError(
                f"google_ads: user_list_id: list {cfg.user_list_id!r} is {kind}, "
                "not a Customer Match (CRM_BASED) list"
            )

    def open(self) -> None:
        """Refuse fields Google does not take, and mixes of upload key types."""
        super().open()
        names = set(self.context.field_names)
        unknown = sorted(names - SUPPORTED[PLATFORM])
        if unknown:
            raise ConfigError(
                f"google_ads: field {unknown[0]!r} is not a Customer Match identifier "
                f"(use {', '.join(sorted(SUPPORTED[PLATFORM]))})"
            )
        used = [key for key, kinds in KEY_TYPES.items() if names & kinds]
        if len(used) > 1:
            raise ConfigError(
                "google_ads: fields mix upload key types "
                f"({' and '.join(used)}); a Customer Match list takes one"
            )
        partial = names & set(ADDRESS_KINDS)
        if partial and partial != set(ADDRESS_KINDS):
            # addressInfo needs all four; a lone first_name would be silently ignored.
            missing = sorted(set(ADDRESS_KINDS) - partial)
            raise ConfigError(f"google_ads: address matching also needs field {missing[0]!r}")

    def add(self, records: Sequence[Record]) -> BatchResult:
        return self._send(records, "add")

    def update(self, records: Sequence[Record]) -> BatchResult:
        return self._send(records, "update")

    def remove(self, records: Sequence[Record]) -> BatchResult:
        return self._send(records, "remove")

    def close(self, success: bool) -> None:
        """Run the job if it has operations: records pending in it are polled from now on,
        so it runs even after an early stop."""
        with self._lock:
            job, count = self._job, self._operations
        if job is not None and count:
            response = self.request("POST", f"/{self.settings.api_version}/{job}:run", json_body={})
            self.json(response)  # a long-running Operation; nothing in it we need

    def poll_job(self, job: str) -> JobStatus:
        """Status of ``job`` via GAQL: PENDING/RUNNING -> running, SUCCESS -> succeeded with
        the match-rate range, FAILED -> failed with Google's failure reason."""
        row = self._job_row(job)
        if row is None:
            return JobStatus("failed", reason="google_ads: job not found")
        status = row.get("status")
        if status == "SUCCESS":
            return JobStatus("succeeded", stats=_match_stats(row))
        if status == "FAILED":
            reason = row.get("failureReason") or "FAILURE_REASON_UNSPECIFIED"
            return JobStatus("failed", reason=self.reason(f"job failed: {reason}"))
        if status == "PENDING":
            self._rerun(job)
        return JobStatus("running")

    # -- operations ---------------------------------------------------------------------

    @property
    def user_list(self) -> str:
        cfg = self.settings
        if cfg.user_list_id is None:  # the engine fills it in from user_list_name first
            raise ConfigError("google_ads: user_list_id is not known (user_list_name not resolved)")
        return f"customers/{cfg.customer_id}/userLists/{cfg.user_list_id}"

    def _path(self, tail: str, customer: str | None = None) -> str:
        cid = customer or self.settings.customer_id
        return f"/{self.settings.api_version}/customers/{cid}/{tail}"

    def _send(self, records: Sequence[Record], operation: str) -> BatchResult:
        """One addOperations call for the batch; per-operation errors reject their record."""
        result = BatchResult(records)
        operations: list[dict[str, Any]] = []
        owners: list[Record] = []
        kept: dict[str, str] = {}
        for record in records:
            ops, destination_id = self._operations_for(record, operation, result)
            operations += ops
            owners += [record] * len(ops)
            if destination_id is not None:
                kept[record.key] = destination_id
        if not operations:
            for record in records:  # nothing to change (identical re-sync): done
                if record.key in kept:
                    result.accept(record.key, destination_id=kept[record.key])
            return result
        identifiers = sum(len(_identifiers_of(op)) for op in operations)
        if identifiers > MAX_IDENTIFIERS_PER_REQUEST:
            raise BatchRejected(f"google_ads: {identifiers} identifiers exceed one request")
        job = self._ensure_job()
        body = {"enablePartialFailure": True, "operations": operations}
        with self._lock:  # operations on one job go one request at a time
            response = self.request(
                "POST", f"/{self.settings.api_version}/{job}:addOperations", json_body=body
            )
            errors = self._placed_errors(self.json(response), owners)
            # Only operations Google took count: a job of refused ones is never run.
            self._operations += sum(r.key not in errors for r in owners)
        sent = {r.key for r in owners}
        for record in records:
            if record.key in errors:
                result.reject(record.key, errors[record.key])
            elif record.key in sent:
                result.pending(record.key, job, destination_id=kept[record.key])
            elif record.key in kept:  # unchanged identifiers: nothing went into the job
                result.accept(record.key, destination_id=kept[record.key])
        self.report(operations_sent=len(operations), operations_failed=len(errors))
        return result

    def _operations_for(
        self, record: Record, operation: str, result: BatchResult
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The operations for one record and the identifiers to keep for its removal."""
        if operation == "remove":
            old = _stored(record.destination_id)
            if old is None:
                result.reject(record.key, "no stored identifiers to remove this member with")
                return [], None
            return [{"remove": {"userIdentifiers": old}}], record.destination_id
        try:
            new = self.user_identifiers(record.fields)
        except InvalidValue as exc:
            result.reject(record.key, self.reason(str(exc), [record]))
            return [], None
        if not new:
            result.reject(record.key, "no usable identifier (address needs all four parts)")
            return [], None
        kept = _compact(new)
        if operation == "update" and kept == record.destination_id:
            return [], kept
        # Identifiers kept that the member no longer has (they changed in mirror mode, or a
        # send whose answer never arrived used others) are taken off before adding.
        gone = [ident for ident in _stored(record.destination_id) or [] if ident not in new]
        ops: list[dict[str, Any]] = [{"remove": {"userIdentifiers": gone}}] if gone else []
        ops.append({"create": {"userIdentifiers": new}})
        return ops, kept

    def expected_destination_id(self, operation: Operation, record: Record) -> str | None:
        """The identifiers already kept plus those this send adds: if it never lands in a
        job that runs, the member may be in the list under either, and a removal sends all."""
        try:
            new = self.user_identifiers(record.fields)
        except InvalidValue:
            return None  # refused before sending: nothing new can land
        old = _stored(record.destination_id) or []
        return _compact([*old, *(ident for ident in new if ident not in old)]) if new else None

    def user_identifiers(self, fields: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Google ``UserIdentifier`` objects (one oneof field each) for a record's fields."""
        cfg = self.settings
        values: dict[str, str] = {}
        for kind in sorted(SUPPORTED[PLATFORM]):
            value = fields.get(kind)
            if value is None or (isinstance(value, str) and not value.strip()):
                continue
            try:
                values[kind] = identifier(
                    PLATFORM,
                    kind,
                    value,
                    region=cfg.region,
                    prehashed=kind in cfg.prehashed,
                    gmail_dots=cfg.gmail_dots,
                )
            except InvalidValue as exc:
                raise InvalidValue(f"{kind}: {exc}") from None
        found: list[dict[str, Any]] = []
        if "email" in values:
            found.append({"hashedEmail": values["email"]})
        if "phone" in values:
            found.append({"hashedPhoneNumber": values["phone"]})
        if all(kind in values for kind in ADDRESS_KINDS):
            address = {
                "hashedFirstName": values["first_name"],
                "hashedLastName": values["last_name"],
                "countryCode": values["country"],
                "postalCode": values["postcode"],
            }
            found.append({"addressInfo": address})
        if "maid" in values:
            found.append({"mobileId": values["maid"]})
        if "external_id" in values:
            found.append({"thirdPartyUserId": values["external_id"]})
        return found  # at most 5, below Google's 20 per operation

    def _ensure_job(self) -> str:
        """This run's job, created at the first batch that needs it."""
        with self._lock:
            if self._job is None:
                self._job = self._create_job()
            return self._job

    def _create_job(self) -> str:
        cfg = self.settings
        metadata: dict[str, Any] = {"userList": self.user_list}
        consent = {
            name: value
            for name, value in (
                ("adUserData", cfg.ad_user_data),
                ("adPersonalization", cfg.ad_personalization),
            )
            if value is not None
        }
        if consent:
            metadata["consent"] = consent
        body = {
            "job": {"type": "CUSTOMER_MATCH_USER_LIST", "customerMatchUserListMetadata": metadata}
        }
        try:
            response = self.request(
                "POST", self._path("offlineUserDataJobs:create"), json_body=body
            )
        except BatchRejected as exc:  # the list is wrong, not the records
            raise ConfigError(f"google_ads: user_list_id: job not created: {exc}") from None
        name = dig(self.json(response), "resourceName")
        if not isinstance(name, str) or "/offlineUserDataJobs/" not in name:
            raise TransientError("google_ads: job created without a resource name")
        return name

    def _placed_errors(self, data: Any, owners: Sequence[Record]) -> dict[str, str]:
        """Record key -> reason, from ``partialFailureError`` (operation index per error)."""
        failure = dig(data, "partialFailureError")
        if not isinstance(failure, dict):
            return {}
        reasons: dict[str, list[str]] = {}
        unplaced: list[str] = []
        for error in _failure_errors(failure):
            index = _operation_index(error)
            text = _describe(error)
            if index is None or not 0 <= index < len(owners):
                unplaced.append(text)
                continue
            reasons.setdefault(owners[index].key, []).append(text)
        if unplaced and not reasons:
            # Google could not say which operation: let the engine halve the batch.
            raise BatchRejected(f"google_ads: partial failure: {self.reason(unplaced[0], owners)}")
        by_key = {r.key: r for r in owners}
        return {
            key: self.reason("; ".join(dict.fromkeys(texts)), [by_key[key]])
            for key, texts in reasons.items()
        }

    # -- jobs ---------------------------------------------------------------------------

    def _job_row(self, job: str) -> dict[str, Any] | None:
        customer = _customer_of(job) or self.settings.customer_id
        if not re.fullmatch(r"customers/\d+/offlineUserDataJobs/\d+", job):
            raise ConfigError("google_ads: not an offline user data job resource name")
        query = (
            "SELECT offline_user_data_job.resource_name, offline_user_data_job.status, "
            "offline_user_data_job.failure_reason, "
            "offline_user_data_job.operation_metadata.match_rate_range "
            f"FROM offline_user_data_job WHERE offline_user_data_job.resource_name = '{job}'"
        )
        response = self.request(
            "POST", self._path("googleAds:search", customer), json_body={"query": query}
        )
        for row in _results(self.json(response)):
            found = dig(row, "offlineUserDataJob")
            if isinstance(found, dict):
                return found
        return None

    def _rerun(self, job: str) -> None:
        """A PENDING job was never started (a run whose ``:run`` call failed): start it.
        Google refusing (already running) is fine: it runs either way."""
        # Refused (already started) or not now: either way the next poll asks again.
        with contextlib.suppress(BatchRejected, TransientError):
            self.request("POST", f"/{self.settings.api_version}/{job}:run", json_body={})


# -- helpers ----------------------------------------------------------------------------


def _compact(identifiers: list[dict[str, Any]]) -> str:
    return json.dumps(identifiers, separators=(",", ":"), sort_keys=True)


def _stored(destination_id: str | None) -> list[dict[str, Any]] | None:
    """The identifiers kept for a member (what its removal sends), or None."""
    if not destination_id:
        return None
    try:
        value = json.loads(destination_id)
    except ValueError:
        return None
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return value
    return None


def _identifiers_of(operation: Mapping[str, Any]) -> list[Any]:
    for verb in ("create", "remove"):
        body = operation.get(verb)
        if isinstance(body, dict):
            found = body.get("userIdentifiers")
            return found if isinstance(found, list) else []
    return []


def _creation_refused(message: str) -> str:
    """Why Google refused to create the list; its terms are a choice only a person makes."""
    if "TERMS" in message.upper():
        return (
            "google_ads: the customer has not accepted Google's customer data terms for"
            " Customer Match; a person with access must accept them in Google Ads (Tools,"
            f" Audience manager), then run again ({message})"
        )
    return f"google_ads: user_list_name: list not created: {message}"


def _body(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content) if response.content else None
    except (ValueError, UnicodeDecodeError, httpx.ResponseNotRead):
        return None


def _results(data: Any) -> list[Any]:
    rows = dig(data, "results")
    return rows if isinstance(rows, list) else []


def _error_status(body: Any) -> str | None:
    status = dig(body, "error", "status")
    return status if isinstance(status, str) else None


def _failure_errors(failure: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every ``GoogleAdsFailure.errors[]`` entry inside an RPC status's ``details``."""
    details = failure.get("details")
    for detail in details if isinstance(details, list) else ():
        errors = detail.get("errors") if isinstance(detail, dict) else None
        for error in errors if isinstance(errors, list) else ():
            if isinstance(error, dict):
                yield error


def _error_codes(body: Any) -> set[str]:
    """Error code values (``CONCURRENT_MODIFICATION``...) of an error response."""
    error = dig(body, "error")
    if not isinstance(error, dict):
        return set()
    codes: set[str] = set()
    for item in _failure_errors(error):
        code = item.get("errorCode")
        if isinstance(code, dict):
            codes.update(str(v) for v in code.values())
    return codes


def _retry_delay(body: Any) -> float | None:
    """Seconds from the first ``retryDelay`` ("30s") anywhere in the error body."""
    if isinstance(body, dict):
        value = body.get("retryDelay")
        if isinstance(value, str):
            match = _DURATION.match(value)
            if match:
                return float(match.group(1))
        items: Iterator[Any] = iter(body.values())
    elif isinstance(body, list):
        items = iter(body)
    else:
        return None
    for item in items:
        found = _retry_delay(item)
        if found is not None:
            return found
    return None


def _operation_index(error: Mapping[str, Any]) -> int | None:
    elements = dig(error, "location", "fieldPathElements")
    for element in elements if isinstance(elements, list) else ():
        if isinstance(element, dict) and element.get("fieldName") == "operations":
            index = element.get("index")
            return index if isinstance(index, int) else None
    return None


def _describe(error: Mapping[str, Any]) -> str:
    """``userDataError.TOO_MANY_USER_IDENTIFIERS: message``."""
    code = error.get("errorCode")
    name = ""
    if isinstance(code, dict) and code:
        kind, value = next(iter(code.items()))
        name = f"{kind}.{value}"
    message = error.get("message")
    return ": ".join(str(p) for p in (name, message) if p) or "rejected"


def _match_stats(row: Mapping[str, Any]) -> dict[str, int]:
    """The job's match-rate range as two integers (percent), when Google gives one."""
    value = dig(row, "operationMetadata", "matchRateRange")
    if not isinstance(value, str):
        return {}
    if value == "MATCH_RANGE_LESS_THAN_20":
        return {"match_rate_min_pct": 0, "match_rate_max_pct": 19}
    match = _RANGE.match(value)
    if match is None:
        return {}
    return {"match_rate_min_pct": int(match.group(1)), "match_rate_max_pct": int(match.group(2))}


def _customer_of(job: str) -> str | None:
    match = re.match(r"^customers/(\d+)/", job)
    return match.group(1) if match else None
