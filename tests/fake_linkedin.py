"""A stateful local LinkedIn Marketing API for DMP user segments (reference section 10/14).

It keeps each segment's members as the ids it was sent (``SHA256_EMAIL`` hashes, ``GOOGLE_AID``
values), answers ``BATCH_CREATE`` calls with one status per element (201, or 400 with a
message for a malformed or refused id), refuses more than 5,000 elements, requires the
``LinkedIn-Version``, ``X-Restli-Protocol-Version`` and ``X-RestLi-Method`` headers, answers
404 while a segment is younger than ``young_for`` seconds, and sends 429 without headers.
"""

from __future__ import annotations

import re
import time
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from tests.contract import CapturedRequest
from tests.vendor_emulator import Reply, VendorEmulator

SHA256 = re.compile(r"^[0-9a-f]{64}$")
ID_TYPES = ("SHA256_EMAIL", "SHA512_EMAIL", "GOOGLE_AID")


def error(status: int, message: str) -> Reply:
    return Reply(status, {"status": status, "message": message})


class FakeLinkedIn(VendorEmulator):
    base_url = "https://api.linkedin.fake"
    batch_cap = 5_000  # elements per BATCH_CREATE
    endpoints: ClassVar[list[tuple[str, str, str]]] = [
        ("GET", r"/rest/dmpSegments", "find_segments"),
        ("POST", r"/rest/dmpSegments", "create_segment"),
        ("GET", r"/rest/dmpSegments/(?P<id>\d+)", "get_segment"),
        ("POST", r"/rest/dmpSegments/(?P<id>\d+)/users", "users"),
    ]

    #: Segments per page of ``GET /rest/dmpSegments`` (LinkedIn's count), to test paging.
    page_size = 2

    def __init__(
        self, token: str, segment_id: str | None, young_for: float = 0.0, account: str = "5005"
    ) -> None:
        super().__init__()
        self.token = token
        #: The segment whose members are kept: the one given, else the first one created.
        self.segment_id = segment_id
        self.account = account
        #: Every segment of the account: id -> name.
        self.segments: dict[str, str] = {segment_id: "Emulated"} if segment_id else {}
        #: The ``sourcePlatform`` values this app may create segments with.
        self.platforms = {"SYNCER_TEST"}
        #: Seconds the answer to a segment creation is held (the segment exists meanwhile).
        self.create_delay = 0.0
        self._next_segment = 880000
        self.created = time.monotonic()
        self.young_for = young_for
        self.ids: set[tuple[str, str]] = set()  # (idType, idValue)
        self.hints: dict[str, dict[str, str]] = {}  # email hash -> names/country last sent
        self.refused: set[str] = set()  # id values LinkedIn cannot process

    def members(self) -> dict[str, dict[str, str]]:
        """Members by email hash, with the hints last sent under the mapping's field names."""
        names = {"firstName": "first_name", "lastName": "last_name", "country": "country"}
        with self.lock:
            return {
                value: {names[k]: v for k, v in self.hints.get(value, {}).items()}
                for kind, value in self.ids
                if kind == "SHA256_EMAIL"
            }

    def email_hashes(self) -> set[str]:
        return {value for kind, value in self.ids if kind == "SHA256_EMAIL"}

    def dispatch(self, req: CapturedRequest) -> Reply:
        if self.is_token_request(req):
            return VendorEmulator.dispatch(self, req)
        headers = {k.lower(): v for k, v in req.headers.items()}
        if not self.accepts(headers.get("authorization")):
            with self.lock:
                self.requests.append(req)
            return error(401, "Invalid access token")
        if not re.fullmatch(r"\d{6}", headers.get("linkedin-version", "")):
            with self.lock:
                self.requests.append(req)
            return error(400, "A version must be present")
        if headers.get("x-restli-protocol-version") != "2.0.0":
            with self.lock:
                self.requests.append(req)
            return error(400, "Restli protocol 2.0.0 required")
        return super().dispatch(req)

    def _segment_visible(self, segment_id: str) -> bool:
        young = time.monotonic() - self.created < self.young_for
        return segment_id == self.segment_id and not young

    def find_segments(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        query = parse_qs(urlsplit(req.url).query)
        if query.get("q") != ["account"]:
            return error(400, "q=account required")
        if query.get("account") != [f"urn:li:sponsoredAccount:{self.account}"]:
            return error(403, "Not enough permissions to access the account")
        start = int(query.get("start", ["0"])[0])
        count = min(int(query.get("count", ["10"])[0]), self.page_size)
        listed = sorted(self.segments.items())
        page = [
            {"id": int(i), "name": n, "type": "USER", "status": "READY"}
            for i, n in listed[start : start + count]
        ]
        paging = {"start": start, "count": count, "total": len(listed)}
        return Reply(200, {"elements": page, "paging": paging})

    def create_segment(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        body = req.json() or {}
        if body.get("account") != f"urn:li:sponsoredAccount:{self.account}":
            return error(403, "Not enough permissions to access the account")
        if body.get("sourcePlatform") not in self.platforms:
            return error(400, "sourcePlatform is not allowed for this application")
        if body.get("type") != "USER" or not body.get("name"):
            return error(400, "name and type are required")
        self._next_segment += 1
        segment_id = str(self._next_segment)
        self.segments[segment_id] = str(body["name"])
        if self.segment_id is None:
            self.segment_id = segment_id
            self.created = time.monotonic()
        headers = {"x-restli-id": segment_id}
        return Reply(201, None, headers=headers, delay=self.create_delay)

    def get_segment(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        if not self._segment_visible(match["id"]):
            return error(404, "Not found")
        return Reply(200, {"id": int(self.segment_id), "type": "USER", "status": "READY"})

    def users(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        if not self._segment_visible(match["id"]):
            return error(404, "Not found")
        if {k.lower(): v for k, v in req.headers.items()}.get("x-restli-method") != "BATCH_CREATE":
            return error(400, "X-RestLi-Method BATCH_CREATE required")
        elements = (req.json() or {}).get("elements")
        if not isinstance(elements, list) or len(elements) > 5_000:
            return error(400, "elements: between 0 and 5000 required")
        refused = self.kit_check(
            [
                str(u.get("idValue"))
                for e in elements
                if isinstance(e, dict)
                for u in e.get("userIds") or []
                if u.get("idType") == "SHA256_EMAIL"
            ]
        )
        if refused is not None:
            return refused
        return Reply(200, {"elements": [self._apply(e) for e in elements]})

    def _apply(self, element: Any) -> dict[str, Any]:
        if not isinstance(element, dict) or element.get("action") not in ("ADD", "REMOVE"):
            return {"status": 400, "error": {"message": "action must be ADD or REMOVE"}}
        ids: list[tuple[str, str]] = []
        for user_id in element.get("userIds") or []:
            kind, value = user_id.get("idType"), str(user_id.get("idValue", ""))
            if kind not in ID_TYPES or (kind == "SHA256_EMAIL" and not SHA256.match(value)):
                return {"status": 400, "error": {"message": f"Invalid userId of type {kind}"}}
            if value in self.refused or self.record_refused(value):
                return {"status": 400, "error": {"message": "Member data could not be processed"}}
            ids.append((kind, value))
        if not ids:
            return {"status": 400, "error": {"message": "userIds must not be empty"}}
        if element["action"] == "ADD":
            self.ids.update(ids)
            hints = {k: element[k] for k in ("firstName", "lastName", "country") if k in element}
            for kind, value in ids:
                if kind == "SHA256_EMAIL":
                    self.hints[value] = hints
        else:
            self.ids.difference_update(ids)
        return {"status": 201}
