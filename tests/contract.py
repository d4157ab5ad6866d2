"""Contract checks: every request a connector builds is validated against the vendor's own
OpenAPI document (``../shared/specs/``), with ``openapi-core``.

``spec("sendgrid_contacts.json")`` gives a checker, or skips the test with a reason when the
specs folder is not beside the project. ``checker.validate(request)`` takes an ``httpx.Request``
(respx calls) or a :class:`CapturedRequest` (what an emulator received) and raises with the
vendor schema's own complaint. The server part of the URL is ignored, so requests sent to a
test base_url are checked against the vendor's paths.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

SPECS = Path(__file__).resolve().parents[2] / "shared" / "specs"


@dataclass
class CapturedRequest:
    """A request as a server saw it (method, full path with query, headers, body)."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class _OpenAPIRequest:
    """openapi-core's Request protocol over an httpx request or a captured one."""

    def __init__(self, method: str, url: str, headers: dict[str, str], body: bytes | None) -> None:
        from openapi_core.datatypes import RequestParameters
        from werkzeug.datastructures import Headers, ImmutableMultiDict

        parts = urlsplit(url)
        self._path = parts.path
        self.method = method.lower()
        self.body = body or None
        self.content_type = headers.get("content-type", headers.get("Content-Type", ""))
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(parse_qs(parts.query)),
            header=Headers(headers),
            cookie=ImmutableMultiDict({}),
        )
        self._server = ""

    @property
    def host_url(self) -> str:
        return self._server

    @property
    def path(self) -> str:
        return self._path


class Contract:
    """One vendor OpenAPI document, loaded once per test session."""

    def __init__(self, path: Path) -> None:
        from openapi_core import Config, OpenAPI

        self.path = path
        document = json.loads(path.read_text(encoding="utf-8"))
        servers = document.get("servers") or [{"url": ""}]
        self.server = str(servers[0]["url"]).rstrip("/")
        # The documents are the vendors' own and not all pass strict spec validation (Klaviyo's
        # has an ambiguous oneOf in an unrelated schema): check requests, not the document.
        self.api = OpenAPI.from_dict(document, config=Config(spec_validator_cls=None))

    def validate(self, request: httpx.Request | CapturedRequest) -> None:
        if isinstance(request, httpx.Request):
            method, url = request.method, str(request.url)
            headers, body = dict(request.headers), request.content
        else:
            method, url, headers, body = request.method, request.url, request.headers, request.body
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        wrapped = _OpenAPIRequest(method, target, headers, body)
        # Match against the vendor's own server, whatever base_url the test used.
        wrapped._server = self.server
        self.api.validate_request(wrapped)


@functools.cache
def _load(name: str) -> Contract:
    return Contract(SPECS / name)


def spec(name: str) -> Contract:
    """The checker for ``../shared/specs/<name>``; skips the test when the file is absent."""
    if not (SPECS / name).is_file():
        pytest.skip(f"vendor OpenAPI document {name} not found in {SPECS}")
    return _load(name)
