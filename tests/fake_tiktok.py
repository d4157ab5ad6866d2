"""A stateful local TikTok Marketing API for custom audiences (reference section 11/14).

It keeps the audience as the hashes it was sent per schema (``EMAIL_SHA256``...), answers every
call with HTTP 200 and a ``code`` (0 on success; 40105 for a bad ``Access-Token``, 40001 for a
foreign advertiser, 40002 for malformed or refused data, with no per-member detail), and serves
``/advertiser/info/`` and ``/dmp/custom_audience/get/`` for ``check()``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import httpx

from syncer.testing import Feature
from tests.contract import CapturedRequest
from tests.vendor_emulator import Reply, VendorEmulator, as_response

SHA256 = re.compile(r"^[0-9a-f]{64}$")
SCHEMAS = frozenset({"EMAIL_SHA256", "PHONE_SHA256", "MAID_SHA256", "IDFA_SHA256"})
PREFIX = "/open_api/v1.3"


def answer(code: int = 0, message: str = "OK", data: Any = None) -> Reply:
    body = {"code": code, "message": message, "request_id": uuid.uuid4().hex, "data": data or {}}
    return Reply(200, body)


class FakeTikTok(VendorEmulator):
    base_url = "https://business-api.tiktok.fake"
    batch_cap = 10_000  # users per mapping call
    lacks: ClassVar[Mapping[Feature, str]] = {
        "record_rejects": "TikTok fails the whole call (code 40002), with no per-member detail",
        "field_values": "an audience keeps hashed identifiers only",
        "retry_after": "TikTok throttles with code 40100 in an HTTP 200, never a Retry-After",
    }
    endpoints: ClassVar[list[tuple[str, str, str]]] = [
        ("POST", rf"{PREFIX}/segment/mapping/", "mapping"),
        ("GET", rf"{PREFIX}/advertiser/info/", "advertiser_info"),
        ("GET", rf"{PREFIX}/dmp/custom_audience/get/", "audience_get"),
        ("GET", rf"{PREFIX}/dmp/custom_audience/list/", "audience_list"),
        ("POST", rf"{PREFIX}/segment/audience/", "audience_create"),
    ]
    #: Audiences per page of ``/dmp/custom_audience/list/``, to test paging.
    page_size = 2

    def __init__(self, token: str, advertiser_id: str, audience_id: str | None) -> None:
        super().__init__()
        self.token = token
        self.advertiser_id = advertiser_id
        #: The audience whose members are kept: the one given, else the first one created.
        self.audience_id = audience_id
        #: Every audience of the advertiser: id -> name.
        self.audiences: dict[str, str] = {audience_id: "Emulated"} if audience_id else {}
        #: Seconds the answer to an audience creation is held (it exists meanwhile).
        self.create_delay = 0.0
        self._next_audience = 7100000
        self.held: set[tuple[str, str]] = set()  # (schema, hash)
        self.refused: set[str] = set()  # hashes TikTok refuses (the whole call fails)
        self.max_users = 10_000

    def members(self) -> dict[str, dict[str, str]]:
        """The audience by email hash (hashes are all it keeps)."""
        with self.lock:
            return {value: {} for kind, value in self.held if kind == "EMAIL_SHA256"}

    def error(self, status: int, *, retry_after: float | None = None) -> httpx.Response:
        """TikTok's answers: throttling, bad tokens and refused data are codes in a 200."""
        if status == 429:
            return as_response(answer(40100, "Too many requests"))
        if status == 401:
            return as_response(answer(40105, "The access token is invalid or has expired"))
        if status in (400, 413):
            return as_response(answer(40002, "batch_data: invalid user data"))
        return super().error(status, retry_after=retry_after)

    def hashes(self, schema: str) -> set[str]:
        return {value for kind, value in self.held if kind == schema}

    def dispatch(self, req: CapturedRequest) -> Reply:
        token = {k.lower(): v for k, v in req.headers.items()}.get("access-token")
        if token != self.token:
            with self.lock:
                self.requests.append(req)
            return answer(40105, "The access token is invalid or has expired")
        return super().dispatch(req)

    def advertiser_info(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        query = parse_qs(urlsplit(req.url).query)
        ids = json.loads(query.get("advertiser_ids", ["[]"])[0])
        if ids != [self.advertiser_id]:
            return answer(40001, "No permission to operate advertiser")
        return answer(data={"list": [{"advertiser_id": self.advertiser_id, "name": "Shop"}]})

    def audience_list(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        query = parse_qs(urlsplit(req.url).query)
        if query.get("advertiser_id") != [self.advertiser_id]:
            return answer(40001, "advertiser_id: no permission to operate this advertiser")
        page = int(query.get("page", ["1"])[0])
        size = min(int(query.get("page_size", ["10"])[0]), self.page_size)
        listed = sorted(self.audiences.items())
        items = [{"audience_id": i, "name": n} for i, n in listed[(page - 1) * size : page * size]]
        total_page = max(1, -(-len(listed) // size))
        info = {"page": page, "page_size": size, "total_number": len(listed)}
        return answer(data={"list": items, "page_info": {**info, "total_page": total_page}})

    def audience_create(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        body = req.json() or {}
        if body.get("advertiser_id") != self.advertiser_id:
            return answer(40001, "advertiser_id: no permission to operate this advertiser")
        if body.get("action") != "create" or not body.get("custom_audience_name"):
            return answer(40002, "custom_audience_name and action create are required")
        self._next_audience += 1
        audience_id = str(self._next_audience)
        self.audiences[audience_id] = str(body["custom_audience_name"])
        if self.audience_id is None:
            self.audience_id = audience_id
        reply = answer(data={"audience_id": audience_id})
        reply.delay = self.create_delay
        return reply

    def audience_get(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        query = parse_qs(urlsplit(req.url).query)
        if query.get("advertiser_id") != [self.advertiser_id]:
            return answer(40001, "No permission to operate advertiser")
        ids = json.loads(query.get("custom_audience_ids", ["[]"])[0])
        if ids != [self.audience_id]:
            return answer(40002, "Custom audience does not exist")
        detail = {"audience_id": self.audience_id, "cover_num": len(self.held)}
        return answer(data={"list": [{"audience_details": detail}]})

    def mapping(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        body = req.json() or {}
        if body.get("advertiser_ids") != [self.advertiser_id]:
            return answer(40001, "No permission to operate advertiser")
        action, schema = body.get("action"), body.get("id_schema") or []
        users = body.get("batch_data") or []
        if action not in ("add", "delete") or not schema or not set(schema) <= SCHEMAS:
            return answer(40002, "action or id_schema: invalid")
        if not users or len(users) > self.max_users:
            return answer(40002, f"batch_data: between 1 and {self.max_users} users")
        emails = [
            str(u[schema.index("EMAIL_SHA256")].get("id", ""))
            for u in users
            if "EMAIL_SHA256" in schema and isinstance(u, list) and len(u) == len(schema)
            if u[schema.index("EMAIL_SHA256")]
        ]
        refused = self.kit_check(emails)
        if refused is not None:
            return refused
        found: list[tuple[str, str]] = []
        for user in users:
            if not isinstance(user, list) or len(user) != len(schema):
                return answer(40002, "batch_data: every user needs one entry per id_schema")
            for kind, item in zip(schema, user, strict=True):
                if not item:
                    continue
                value = str(item.get("id", ""))
                if item.get("audience_ids") != [self.audience_id]:
                    return answer(40002, "audience_ids: custom audience does not exist")
                if not SHA256.match(value) or value in self.refused:
                    return answer(40002, "batch_data: invalid user data")
                found.append((kind, value))
        if action == "add":
            self.held.update(found)
        else:
            self.held.difference_update(found)
        return answer()
