"""Webhook destination: POSTs each batch as signed JSON to a URL the user controls.

Body: ``{"operation": ..., "records": [{"key": ..., "fields": {...}}], "run": ..., "sync": ...}``
serialised with sorted keys, so one batch of one run always yields the same bytes. Headers:

* ``X-Syncer-Timestamp``: Unix seconds when this try left, after any wait for the rate
  limiter (signed then, by :class:`_Stamp`);
* ``Idempotency-Key``: sha256 hex of ``"<batch timestamp>.<body>"``, the batch timestamp being
  that of the batch's first attempt in this run. A retry of the same batch in the same run
  keeps the key (a receiver can tell it from a new batch); a later run's batch with the same
  records gets a new one (the body names the run), so a re-add after a remove is not mistaken
  for a replay of the first add;
* ``X-Syncer-Signature: sha256=<HMAC-SHA256(secret, "<timestamp>.<key>.<body>")>``, so a
  captured request cannot be replayed once the receiver's window (5 minutes in
  docs/connectors/webhook.md) is over, nor altered within it.

The HTTP layer (:mod:`syncer.http`) classifies answers and builds error messages (host and
status only, never the secret, header values, the URL's path or query, or record data); this
module builds the request and reads per-record refusals from a successful answer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Generator, Sequence
from urllib.parse import parse_qsl, urlsplit

import httpx
import orjson
from pydantic import ConfigDict, Field, SecretStr, field_validator
from pydantic_core import to_jsonable_python

from syncer.connector import (
    BatchResult,
    Capabilities,
    ConnectorConfig,
    Operation,
    Record,
    SyncContext,
)
from syncer.errors import BatchRejected, ConfigError
from syncer.http import scrub
from syncer.rest import RestConnector, record_text

MAX_BATCH = 10_000
DEFAULT_BATCH = 500
# Headers the connector sets itself; letting config override them would break signing.
RESERVED_HEADERS = frozenset(
    {"content-type", "x-syncer-signature", "x-syncer-timestamp", "idempotency-key"}
)
_TEXT_LIMIT = 200


def safe_url(url: str) -> str:
    """``url`` without userinfo, query or fragment: fit for error messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return f"{parts.scheme}://{netloc}{parts.path}"


def validate_http_url(url: str, what: str = "url") -> str:
    """Refuse anything but an absolute http(s) URL with a host; message never shows secrets."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a malformed port
    except ValueError:
        raise ValueError(f"{what} is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{what} must start with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"{what} has no host")
    return url


class WebhookConfig(ConnectorConfig):
    """Settings of the ``webhook`` destination."""

    # The URL may carry credentials: keep raw input out of pydantic's error text.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    url: str
    secret: SecretStr | None = None
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    # None: the engine's SYNCER_HTTP_TIMEOUT, set on the client it hands over.
    timeout: float | None = Field(default=None, gt=0)
    check_url: str | None = None
    batch_size: int | None = Field(default=DEFAULT_BATCH, ge=1, le=MAX_BATCH)

    @field_validator("url")
    @classmethod
    def _url_shape(cls, value: str) -> str:
        return validate_http_url(value, "url")

    @field_validator("check_url")
    @classmethod
    def _check_url_shape(cls, value: str | None) -> str | None:
        return None if value is None else validate_http_url(value, "check_url")

    @field_validator("headers")
    @classmethod
    def _no_reserved_headers(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        clash = sorted(name for name in value if name.lower() in RESERVED_HEADERS)
        if clash:
            raise ValueError(f"headers may not set {', '.join(clash)} (set by the connector)")
        return value


def encode_batch(sync: str, run: str, operation: Operation, records: Sequence[Record]) -> bytes:
    """The exact request body; deterministic, so a retried batch has the same key.

    orjson writes it (ten times faster than the json module, and it runs for every record of
    every batch); what it cannot (an integer beyond 64 bits) falls back to the json module,
    which writes the same compact, key-sorted form.
    """
    payload = {
        "sync": sync,
        "run": run,
        "operation": operation,
        "records": [{"key": r.key, "fields": r.fields} for r in records],
    }
    try:
        return orjson.dumps(payload, default=_jsonable, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        text = json.dumps(
            payload,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            default=_jsonable,
        )
        return text.encode("utf-8")


def _jsonable(value: object) -> object:
    return to_jsonable_python(value, fallback=str)


def idempotency_key(batch_timestamp: int, body: bytes) -> str:
    """Value of ``Idempotency-Key``: one per batch and run, the same for its retries."""
    return hashlib.sha256(b"%d." % batch_timestamp + body).hexdigest()


def signed_text(timestamp: int, key: str, body: bytes) -> bytes:
    """What ``X-Syncer-Signature`` signs: ``"<timestamp>.<idempotency key>.<body>"``."""
    return b"%d.%s." % (timestamp, key.encode("ascii")) + body


def sign(secret: str, timestamp: int, key: str, body: bytes) -> str:
    """Value of ``X-Syncer-Signature`` for one attempt at sending ``body``."""
    digest = hmac.new(secret.encode("utf-8"), signed_text(timestamp, key, body), hashlib.sha256)
    return "sha256=" + digest.hexdigest()


class _Stamp(httpx.Auth):
    """Timestamps and signs a request as it leaves, after any wait for the rate limiter,
    so the receiver's replay window only has to cover the request's way there."""

    def __init__(self, secret: str | None, key: str, body: bytes) -> None:
        self.secret = secret
        self.key = key
        self.body = body

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        now = int(time.time())
        request.headers["X-Syncer-Timestamp"] = str(now)
        if self.secret is not None:
            request.headers["X-Syncer-Signature"] = sign(self.secret, now, self.key, self.body)
        yield request


class WebhookConnector(RestConnector[WebhookConfig]):
    """POST batches of records as signed JSON to an HTTP endpoint."""

    name = "webhook"
    description = "POST each batch as signed JSON to an HTTP(S) endpoint"
    capabilities = Capabilities(max_batch_size=MAX_BATCH)

    def __init__(self, config: ConnectorConfig, context: SyncContext, http: httpx.Client) -> None:
        super().__init__(config, context, http)
        #: The run named in every body; outside the engine, a random id per instance.
        self.run = context.run_id or uuid.uuid4().hex[:16]
        self._stamps: dict[bytes, int] = {}  # body digest -> first attempt, per batch
        self._stamps_lock = threading.Lock()

    # -- contract -----------------------------------------------------------------------

    def account_key(self) -> str:
        """Scheme, host and port of the URL: endpoints on one server share its limits."""
        parts = urlsplit(self.settings.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"{self.name}:{parts.scheme}://{(parts.hostname or '').lower()}:{port}"

    def secret_values(self) -> tuple[str, ...]:
        """Configured secrets plus credentials the URLs may carry (password, query values)."""
        found = list(super().secret_values())
        for url in (self.settings.url, self.settings.check_url):
            if url:
                parts = urlsplit(url)
                found += [parts.password or "", parts.query]
                found += [v for _, v in parse_qsl(parts.query)]
        return tuple(dict.fromkeys(s for s in found if s))

    def check(self) -> None:
        """Validate the URL; touch the network only when ``check_url`` is configured."""
        cfg = self.settings
        for what, url in (("url", cfg.url), ("check_url", cfg.check_url)):
            if url is None:
                continue
            try:
                validate_http_url(url, what)
            except ValueError as exc:
                raise ConfigError(f"webhook: {exc}") from None
        if cfg.check_url is None:
            return
        try:
            self.request("GET", cfg.check_url, headers=self._base_headers())
        except BatchRejected as exc:  # a 4xx on the probe is a setup problem, not data
            raise ConfigError(f"webhook check failed: {exc}") from None

    def write(self, operation: Operation, records: Sequence[Record]) -> BatchResult:
        return self._post(operation, records)

    # -- internals ----------------------------------------------------------------------

    def _batch_timestamp(self, body: bytes, now: int) -> int:
        """When this batch was first sent in this run: the engine retries a batch by calling
        ``write`` again with the same records (so the same body), on any worker thread."""
        digest = hashlib.sha256(body).digest()
        with self._stamps_lock:
            return self._stamps.setdefault(digest, now)

    def _base_headers(self) -> dict[str, str]:
        return {name: value.get_secret_value() for name, value in self.settings.headers.items()}

    def _post(self, operation: Operation, records: Sequence[Record]) -> BatchResult:
        cfg = self.settings
        body = encode_batch(self.context.sync_name, self.run, operation, records)
        key = idempotency_key(self._batch_timestamp(body, int(time.time())), body)
        headers = self._base_headers()
        headers["Content-Type"] = "application/json"
        headers["Idempotency-Key"] = key
        secret = cfg.secret.get_secret_value() if cfg.secret is not None else None
        stamp = _Stamp(secret, key, body)
        response = self.request("POST", cfg.url, headers=headers, content=body, auth=stamp)
        return self._parse_rejections(response, records)

    def _parse_rejections(self, response: httpx.Response, records: Sequence[Record]) -> BatchResult:
        """Per-record refusals from ``{"rejected": [{"key", "reason"}]}``; anything else = ok."""
        result = BatchResult(records)
        try:
            data = json.loads(response.content) if response.content.strip() else None
        except (ValueError, UnicodeDecodeError):
            return result
        rejected = data.get("rejected") if isinstance(data, dict) else None
        if not isinstance(rejected, list):
            return result
        by_key = {r.key: r for r in records}
        secrets = self.secret_values()
        for item in rejected:
            key, reason = (
                (item.get("key"), item.get("reason")) if isinstance(item, dict) else (item, None)
            )
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                continue
            record = by_key.get(str(key))
            if record is None:  # the vendor talking about records we never sent
                continue
            hidden = (*secrets, *record_text([record]))
            text = scrub(str(reason), secrets=hidden, limit=_TEXT_LIMIT) if reason else ""
            result.reject(record.key, text or "rejected by webhook")
        return result
