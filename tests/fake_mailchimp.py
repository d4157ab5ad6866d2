"""A stateful local Mailchimp (Marketing API 3.0) for end-to-end tests.

It keeps an audience's members by subscriber hash (MD5 of the lowercased email), their merge
fields, and static segments with ids. A tag is a static segment with the tag's name, as in
Mailchimp: ``GET /segments?type=static`` lists it (``count``/``offset`` pages, ``total_items``),
``POST /segments`` with ``name``/``static_segment`` creates it, and the segment call changes it
by id. It answers as the reference describes Mailchimp: batch subscribe takes at most 500
members and reports per-record ``errors[]`` in a 200; the per-member tags call sets a tag
``active``/``inactive`` (creating an unknown tag, 404 for someone not on the list); segment
add/remove ignores addresses not on the list; more than 10 requests at once get a bare 429 (no
headers), and so do requests over a rate set with ``limit`` (Mailchimp publishes none; the
issue's model vendor allows one a second); bad credentials get a 401.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from tests.contract import CapturedRequest
from tests.vendor_emulator import Reply, VendorEmulator

MAX_CONNECTIONS = 10


@dataclass
class Member:
    email: str
    status: str
    merge_fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Segment:
    """A static segment; a tag is one whose name is the tag."""

    id: int
    name: str
    members: set[str] = field(default_factory=set)  # subscriber hashes


def md5(email: str) -> str:
    return hashlib.md5(email.lower().encode(), usedforsecurity=False).hexdigest()


def problem(status: int, title: str, detail: str) -> Reply:
    return Reply(
        status,
        {
            "type": "https://mailchimp.com/developer/marketing/docs/errors/",
            "title": title,
            "status": status,
            "detail": detail,
            "instance": "00000000-0000-0000-0000-000000000000",
        },
        headers={"Content-Type": "application/problem+json"},
    )


class FakeMailchimp(VendorEmulator):
    base_url = "https://us21.mailchimp.fake"
    batch_cap = 500  # batch subscribe members, and each segment array
    endpoints: ClassVar[list[tuple[str, str, str]]] = [
        ("GET", r"/3\.0/lists/(?P<list>[^/]+)", "get_list"),
        ("POST", r"/3\.0/lists/(?P<list>[^/]+)", "batch_subscribe"),
        ("POST", r"/3\.0/lists/(?P<list>[^/]+)/members/(?P<hash>[0-9a-f]{32})/tags", "tags"),
        ("GET", r"/3\.0/lists/(?P<list>[^/]+)/segments", "list_segments"),
        ("POST", r"/3\.0/lists/(?P<list>[^/]+)/segments", "create_segment"),
        ("GET", r"/3\.0/lists/(?P<list>[^/]+)/segments/(?P<seg>\d+)", "get_segment"),
        ("POST", r"/3\.0/lists/(?P<list>[^/]+)/segments/(?P<seg>\d+)", "segment"),
    ]

    def __init__(self, api_key: str, list_id: str, segment_id: int = 42) -> None:
        super().__init__()
        self.api_key = api_key
        self.list_id = list_id
        self.audience: dict[str, Member] = {}
        self.segments: dict[int, Segment] = {segment_id: Segment(segment_id, "Emulated segment")}
        self._next_id = 1000
        #: Mailchimp's largest ``count`` for a listing; tests lower it to make pages.
        self.max_count = 1000
        #: Seconds the answer to a segment creation is held (the segment exists meanwhile).
        self.create_delay = 0.0
        #: Addresses batch subscribe refuses, with Mailchimp's message.
        self.invalid: dict[str, str] = {}
        self._inflight = 0
        self.peak_inflight = 0
        self._gate = threading.Lock()

    # -- what tests look at -------------------------------------------------------------

    def add_segment(self, name: str) -> Segment:
        """A new static segment (or tag) named ``name``, with the next free id."""
        with self.lock:
            self._next_id += 1
            segment = self.segments[self._next_id] = Segment(self._next_id, name)
            return segment

    def tag_segment(self, tag: str) -> Segment | None:
        with self.lock:
            return next((s for s in self.segments.values() if s.name == tag), None)

    def members(self, tag: str = "vip") -> dict[str, dict[str, Any]]:
        """Members with ``tag``: email to merge fields."""
        with self.lock:
            segment = self.tag_segment(tag)
            held = segment.members if segment else set()
            return {self.audience[h].email: dict(self.audience[h].merge_fields) for h in held}

    def tagged(self, tag: str) -> set[str]:
        with self.lock:
            segment = self.tag_segment(tag)
            return {self.audience[h].email for h in segment.members} if segment else set()

    def segment_members(self, segment_id: int = 42) -> set[str]:
        with self.lock:
            return {self.audience[h].email for h in self.segments[segment_id].members}

    # -- plumbing -----------------------------------------------------------------------

    def dispatch(self, req: CapturedRequest) -> Reply:
        """The 10-connection limit and Basic auth, before any route."""
        with self._gate:
            self._inflight += 1
            self.peak_inflight = max(self.peak_inflight, self._inflight)
            over = self._inflight > MAX_CONNECTIONS
        try:
            if over:
                with self.lock:
                    self.requests.append(req)
                    self.statuses[429] += 1
                return Reply(429, {"title": "Too Many Requests", "status": 429})
            if not self._authorised(req):
                with self.lock:
                    self.requests.append(req)
                    self.statuses[401] += 1
                return problem(401, "API Key Invalid", "Your API key may be invalid.")
            return super().dispatch(req)
        finally:
            with self._gate:
                self._inflight -= 1

    def rate_limited(self, wait: float) -> Reply:
        """Mailchimp's 429 has no Retry-After and no rate-limit headers."""
        return Reply(429, {"title": "Too Many Requests", "status": 429})

    def _authorised(self, req: CapturedRequest) -> bool:
        header = {k.lower(): v for k, v in req.headers.items()}.get("authorization", "")
        if not header.startswith("Basic "):
            return False
        _, _, key = base64.b64decode(header[6:]).decode().partition(":")
        return key == self.api_key

    def _list_ok(self, match: re.Match[str]) -> bool:
        return match.group("list") == self.list_id

    # -- routes -------------------------------------------------------------------------

    def get_list(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        if not self._list_ok(match):
            return problem(404, "Resource Not Found", "The requested resource could not be found.")
        return Reply(200, {"id": self.list_id, "name": "Emulated audience"})

    def batch_subscribe(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        if not self._list_ok(match):
            return problem(404, "Resource Not Found", "The requested resource could not be found.")
        body = req.json()
        members = body.get("members") or []
        if len(members) > 500:
            return problem(400, "Invalid Resource", "members: maximum 500 items")
        refused = self.kit_check([str(m["email_address"]).lower() for m in members])
        if refused is not None:
            return refused
        update = bool(body.get("update_existing"))
        new, updated, errors = [], [], []
        for item in members:
            email = str(item["email_address"]).lower()
            if email in self.invalid or self.record_refused(email):
                errors.append(
                    {
                        "email_address": email,
                        "error": self.invalid.get(email, "This email address looks fake."),
                        "error_code": "ERROR_GENERIC",
                        "field": "email_address",
                        "field_message": "",
                    }
                )
                continue
            key = md5(email)
            current = self.audience.get(key)
            if current is not None and not update:
                errors.append(
                    {
                        "email_address": email,
                        "error": f"{email} is already a list member",
                        "error_code": "ERROR_CONTACT_EXISTS",
                    }
                )
                continue
            if current is None:
                current = self.audience[key] = Member(email, item["status"])
                new.append({"id": key, "email_address": email})
            else:
                current.status = item["status"]
                updated.append({"id": key, "email_address": email})
            current.merge_fields.update(item.get("merge_fields") or {})
        return Reply(
            200,
            {
                "new_members": new,
                "updated_members": updated,
                "errors": errors,
                "total_created": len(new),
                "total_updated": len(updated),
                "error_count": len(errors),
            },
        )

    def tags(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        member = self.audience.get(match.group("hash")) if self._list_ok(match) else None
        if member is None:
            return problem(404, "Resource Not Found", "The requested resource could not be found.")
        refused = self.kit_check([member.email])
        if refused is not None:
            return refused
        for tag in req.json()["tags"]:
            segment = self.tag_segment(tag["name"])
            if tag["status"] == "active":
                (segment or self.add_segment(tag["name"])).members.add(match.group("hash"))
            elif segment is not None:
                segment.members.discard(match.group("hash"))
        return Reply(204)

    def list_segments(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        if not self._list_ok(match):
            return problem(404, "Resource Not Found", "The requested resource could not be found.")
        query = {k: v[-1] for k, v in parse_qs(urlsplit(req.url).query).items()}
        kind = query.get("type")
        if kind not in (None, "static"):  # no saved segments here
            return Reply(200, {"segments": [], "total_items": 0})
        count = min(int(query.get("count", "10")), self.max_count)
        offset = int(query.get("offset", "0"))
        segments = sorted(self.segments.values(), key=lambda s: s.id)
        page = [self._segment_json(s) for s in segments[offset : offset + count]]
        return Reply(200, {"segments": page, "list_id": self.list_id, "total_items": len(segments)})

    def create_segment(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        if not self._list_ok(match):
            return problem(404, "Resource Not Found", "The requested resource could not be found.")
        body = req.json()
        name = str(body.get("name") or "")
        if not name or not isinstance(body.get("static_segment"), list):
            return problem(400, "Invalid Resource", "name and static_segment are required")
        if self.tag_segment(name) is not None:
            return problem(400, "Invalid Resource", "A segment with this name already exists.")
        segment = self.add_segment(name)
        for email in body["static_segment"]:
            if md5(email) in self.audience:
                segment.members.add(md5(email))
        return Reply(200, self._segment_json(segment), delay=self.create_delay)

    def _segment_json(self, segment: Segment) -> dict[str, Any]:
        return {
            "id": segment.id,
            "name": segment.name,
            "member_count": len(segment.members),
            "type": "static",
            "list_id": self.list_id,
        }

    def get_segment(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        seg = int(match.group("seg"))
        if not self._list_ok(match) or seg not in self.segments:
            return problem(404, "Resource Not Found", "The requested resource could not be found.")
        return Reply(200, self._segment_json(self.segments[seg]))

    def segment(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        seg = int(match.group("seg"))
        if not self._list_ok(match) or seg not in self.segments:
            return problem(404, "Resource Not Found", "The requested resource could not be found.")
        body = req.json()
        adds, removes = body.get("members_to_add") or [], body.get("members_to_remove") or []
        if len(adds) > 500 or len(removes) > 500:
            return problem(400, "Invalid Resource", "at most 500 emails per array")
        for emails in (adds, removes):
            refused = self.kit_check([e.lower() for e in emails]) if emails else None
            if refused is not None:
                return refused
        members = self.segments[seg].members
        added, removed = [], []
        for email in adds:  # addresses not on the list are ignored
            key = md5(email)
            if key in self.audience and key not in members:
                members.add(key)
                added.append({"id": key, "email_address": email})
        for email in removes:
            key = md5(email)
            if key in members:
                members.discard(key)
                removed.append({"id": key, "email_address": email})
        return Reply(
            200,
            {
                "members_added": added,
                "members_removed": removed,
                "errors": [],
                "total_added": len(added),
                "total_removed": len(removed),
                "error_count": 0,
            },
        )
