"""Webhook destination: POSTs each batch as signed JSON to a URL the user controls.

Body: ``{"operation": ..., "records": [{"key": ..., "fields": {...}}], "sync": ...}`` serialised
with sorted keys, so the same batch always yields the same bytes. That makes the
``Idempotency-Key`` (sha256 of the body) stable when the engine re-sends a batch after a crash,
and lets receivers verify ``X-Syncer-Signature: sha256=<HMAC-SHA256(secret, body)>``.

Error messages name the URL without credentials, query or fragment and never carry the
secret, header values or record data: they end up in logs and run reports.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, NoReturn
from urllib.parse import parse_qsl, urlsplit

import httpx
from pydantic import ConfigDict, Field, SecretStr, field_validator
from pydantic_core import to_jsonable_python

from syncer.connector import (
    BatchResult,
    Capabilities,
    Connector,
    ConnectorConfig,
    Operation,
    Record,
)
from syncer.errors import AuthError, BatchRejected, ConfigError, TransientError

MAX_BATCH = 10_000
DEFAULT_BATCH = 500
# Headers the connector sets itself; letting config override them would break signing.
RESERVED_HEADERS = frozenset({"content-type", "x-syncer-signature", "idempotency-key"})
_EMAIL = re.compile(r"[^\s@\"'<>,;:]+@[^\s@\"'<>,;:]+\.[A-Za-z]{2,}")
_TEXT_LIMIT = 200
_SCRUB_LIMIT = 64 * 1024
# Request headers httpx or this connector set that carry no credentials.
_PLAIN_HEADERS = frozenset(
    {"host", "accept", "accept-encoding", "connection", "user-agent", "content-length"}
    | RESERVED_HEADERS
)


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
    timeout: float = Field(default=30.0, gt=0)
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


def encode_batch(sync: str, operation: Operation, records: Sequence[Record]) -> bytes:
    """The exact request body; deterministic so the idempotency key and signature are too."""
    payload = {
        "sync": sync,
        "operation": operation,
        "records": [{"key": r.key, "fields": dict(r.fields)} for r in records],
    }
    text = json.dumps(
        payload,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=lambda v: to_jsonable_python(v, fallback=str),
    )
    return text.encode("utf-8")


def sign(secret: str, body: bytes) -> str:
    """Value of ``X-Syncer-Signature`` for ``body``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), else None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class WebhookConnector(Connector):
    """POST batches of records as signed JSON to an HTTP endpoint."""

    name: ClassVar[str] = "webhook"
    description: ClassVar[str] = "POST each batch as signed JSON to an HTTP(S) endpoint"
    config_model: ClassVar[type[ConnectorConfig]] = WebhookConfig
    capabilities: ClassVar[Capabilities] = Capabilities(max_batch_size=MAX_BATCH)

    @property
    def settings(self) -> WebhookConfig:
        if not isinstance(self.config, WebhookConfig):  # engine builds it from config_model
            raise ConfigError("webhook connector needs a WebhookConfig")
        return self.config

    # -- contract -----------------------------------------------------------------------

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
        target = safe_url(cfg.check_url)
        response = self._send("GET", cfg.check_url, target, headers=self._base_headers())
        if not response.is_success:
            self._raise_for_status(response, target, check=True)

    def add(self, records: Sequence[Record]) -> BatchResult:
        return self._post("add", records)

    def remove(self, records: Sequence[Record]) -> BatchResult:
        return self._post("remove", records)

    def update(self, records: Sequence[Record]) -> BatchResult:
        return self._post("update", records)

    # -- internals ----------------------------------------------------------------------

    def _base_headers(self) -> dict[str, str]:
        return {name: value.get_secret_value() for name, value in self.settings.headers.items()}

    def _post(self, operation: Operation, records: Sequence[Record]) -> BatchResult:
        cfg = self.settings
        body = encode_batch(self.context.sync_name, operation, records)
        headers = self._base_headers()
        headers["Content-Type"] = "application/json"
        headers["Idempotency-Key"] = hashlib.sha256(body).hexdigest()
        if cfg.secret is not None:
            headers["X-Syncer-Signature"] = sign(cfg.secret.get_secret_value(), body)
        target = safe_url(cfg.url)
        response = self._send("POST", cfg.url, target, headers=headers, content=body)
        if not response.is_success:
            self._raise_for_status(response, target, check=False, records=records)
        return self._parse_rejections(response, records)

    def _send(self, method: str, url: str, target: str, **kwargs: Any) -> httpx.Response:
        """One request; transport failures become TransientError without leaking details."""
        try:
            # Never follow redirects: httpx would turn a redirected POST into a GET and
            # a 2xx from that would look like an acknowledged batch.
            return self.http.request(
                method, url, timeout=self.settings.timeout, follow_redirects=False, **kwargs
            )
        except httpx.TimeoutException:
            raise TransientError(
                f"webhook {target} timed out after {self.settings.timeout:g}s"
            ) from None
        except httpx.RequestError as exc:
            raise TransientError(
                f"webhook {target} unreachable ({type(exc).__name__}: {self._scrub(str(exc))})"
            ) from None

    def _raise_for_status(
        self,
        response: httpx.Response,
        target: str,
        *,
        check: bool,
        records: Sequence[Record] = (),
    ) -> NoReturn:
        status = response.status_code
        if status in (401, 403):
            raise AuthError(f"webhook {target} refused the credentials (HTTP {status})")
        if status in (408, 429) or status >= 500:
            raise TransientError(
                f"webhook {target} is unavailable (HTTP {status})",
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        if 300 <= status < 400:
            raise ConfigError(
                f"webhook {target} redirected (HTTP {status}); configure the final URL"
            )
        detail = self._short_text(response, records)
        suffix = f": {detail}" if detail else ""
        if check:
            raise ConfigError(f"webhook check {target} failed (HTTP {status}){suffix}")
        raise BatchRejected(f"webhook {target} rejected the batch (HTTP {status}){suffix}")

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
        for item in rejected:
            key, reason = (
                (item.get("key"), item.get("reason")) if isinstance(item, dict) else (item, None)
            )
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                continue
            record = by_key.get(str(key))
            if record is None:  # the vendor talking about records we never sent
                continue
            text = _clip(self._scrub(_cap(str(reason)), _record_text([record]))) if reason else ""
            result.reject(record.key, text or "rejected by webhook")
        return result

    def _short_text(self, response: httpx.Response, records: Sequence[Record]) -> str:
        """Start of the response body for an error message, scrubbed and on one line."""
        try:
            text = response.text
        except (UnicodeDecodeError, LookupError):
            return ""
        extra = _record_text(records) + _header_secrets(response.request.headers)
        return _clip(self._scrub(_cap(text), extra))

    def _scrub(self, text: str, extra: Sequence[str] = ()) -> str:
        """Remove configured secrets, ``extra`` strings and e-mail addresses from ``text``."""
        cfg = self.settings
        secrets = [*extra, *_header_secrets(self._base_headers(), every=True)]
        if cfg.secret is not None:
            secrets.append(cfg.secret.get_secret_value())
        for url in (cfg.url, cfg.check_url):
            if url:
                parts = urlsplit(url)
                secrets += [parts.password or "", parts.query]
                secrets += [v for _, v in parse_qsl(parts.query)]
        for secret in sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True):
            text = text.replace(secret, "***")
        return _EMAIL.sub("<email>", text)


def _cap(text: str) -> str:
    """Bound the text we scrub; the cut-off last word is dropped as it may be half a secret."""
    return text if len(text) <= _SCRUB_LIMIT else text[:_SCRUB_LIMIT].rsplit(None, 1)[0]


def _clip(text: str) -> str:
    """One line of at most ``_TEXT_LIMIT`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= _TEXT_LIMIT else text[: _TEXT_LIMIT - 1] + "…"


def _header_secrets(headers: Mapping[str, str], every: bool = False) -> list[str]:
    """Values of credential-bearing headers (all if ``every``), whole and word by word."""
    found: list[str] = []
    for name, value in headers.items():
        if every or name.lower() not in _PLAIN_HEADERS:
            found += [value, *value.split()]
    return found


def _record_text(records: Sequence[Record]) -> list[str]:
    """Keys and string field values of ``records``: record data never goes into messages."""
    found: list[str] = []
    for record in records:
        found.append(record.key)
        found += [v for v in record.fields.values() if isinstance(v, str)]
    return found
