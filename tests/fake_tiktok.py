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
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from tests.contract import CapturedRequest
from tests.vendor_emulator import Reply, VendorEmulator

SHA256 = re.compile(r"^[0-9a-f]{64}$")
SCHEMAS = frozenset({"EMAIL_SHA256", "PHONE_SHA256", "MAID_SHA256", "IDFA_SHA256"})
PREFIX = "/open_api/v1.3"


def answer(code: int = 0, message: str = "OK", data: Any = None) -> Reply:
    body = {"code": code, "message": message, "request_id": uuid.uuid4().hex, "data": data or {}}
    return Reply(200, body)


class FakeTikTok(VendorEmulator):
    endpoints: ClassVar[list[tuple[str, str, str]]] = [
        ("POST", rf"{PREFIX}/segment/mapping/", "mapping"),
        ("GET", rf"{PREFIX}/advertiser/info/", "advertiser_info"),
        ("GET", rf"{PREFIX}/dmp/custom_audience/get/", "audience_get"),
    ]

    def __init__(self, token: str, advertiser_id: str, audience_id: str) -> None:
        super().__init__()
        self.token = token
        self.advertiser_id = advertiser_id
        self.audience_id = audience_id
        self.members: set[tuple[str, str]] = set()  # (schema, hash)
        self.refused: set[str] = set()  # hashes TikTok refuses (the whole call fails)
        self.max_users = 10_000

    def hashes(self, schema: str) -> set[str]:
        return {value for kind, value in self.members if kind == schema}

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

    def audience_get(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        query = parse_qs(urlsplit(req.url).query)
        if query.get("advertiser_id") != [self.advertiser_id]:
            return answer(40001, "No permission to operate advertiser")
        ids = json.loads(query.get("custom_audience_ids", ["[]"])[0])
        if ids != [self.audience_id]:
            return answer(40002, "Custom audience does not exist")
        detail = {"audience_id": self.audience_id, "cover_num": len(self.members)}
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
            self.members.update(found)
        else:
            self.members.difference_update(found)
        return answer()
