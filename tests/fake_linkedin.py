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
        ("GET", r"/rest/dmpSegments/(?P<id>\d+)", "get_segment"),
        ("POST", r"/rest/dmpSegments/(?P<id>\d+)/users", "users"),
    ]

    def __init__(self, token: str, segment_id: str, young_for: float = 0.0) -> None:
        super().__init__()
        self.token = token
        self.segment_id = segment_id
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
