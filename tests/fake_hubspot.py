"""A local HubSpot that keeps contacts, record ids and one static list, for end-to-end tests.

It follows ../shared/reference/destinations.md sections 1 and 14: batch upsert by a unique
property answers 207 with ``results[]`` and ``errors[]`` when some inputs fail, a duplicate id
inside one batch is a 400, list membership PUTs ignore already-present ids and report unknown
ones in ``recordIdsMissing``, a DYNAMIC list refuses membership changes with a 400, and every
answer carries ``X-HubSpot-RateLimit-*`` headers from a per-10-second and a daily counter
(429 with ``policyName`` once the window is spent).
"""

from __future__ import annotations

import re
import time
from typing import Any, ClassVar

from tests.contract import CapturedRequest
from tests.vendor_emulator import Reply, VendorEmulator

_LIST = r"/crm/v3/lists/(?P<list_id>[^/]+)"


class FakeHubSpot(VendorEmulator):
    """Contacts by id and by email, one list per id; ``reject`` holds emails HubSpot refuses."""

    base_url = "https://hubspot.fake"
    batch_cap = 100  # batch upsert inputs [reference: HubSpot v3 batch limit]

    endpoints: ClassVar[list[tuple[str, str, str]]] = [
        ("POST", r"/crm/v3/objects/contacts/batch/upsert", "upsert"),
        ("POST", r"/crm/v3/objects/contacts/batch/read", "batch_read"),
        ("GET", r"/crm/v3/objects/contacts", "read_contacts"),
        ("POST", r"/crm/v3/lists/search", "search_lists"),
        ("POST", r"/crm/v3/lists", "create_list"),
        ("GET", _LIST, "get_list"),
        ("PUT", _LIST + r"/memberships/(?P<action>add|remove)", "membership"),
    ]

    def __init__(self, token: str, list_id: str = "77", per_10s: int = 1000) -> None:
        super().__init__()
        self.token = token
        self.contacts: dict[str, dict[str, str]] = {}  # record id -> properties
        self.by_email: dict[str, str] = {}
        self.lists: dict[str, dict[str, Any]] = {
            list_id: {"processingType": "MANUAL", "members": set(), "name": "segment"}
        }
        #: Seconds the answer to a list creation is held (the list exists meanwhile).
        self.create_delay = 0.0
        #: Lists per page of ``/lists/search`` (HubSpot's up to 500), to test paging.
        self.page_size = 2
        self.reject: set[str] = set()
        self.per_10s = per_10s
        self.daily = 250_000
        self._window: list[float] = []
        self._used_today = 0
        self._next_id = 101

    # -- helpers ------------------------------------------------------------------------

    def members(self, list_id: str = "77") -> dict[str, dict[str, str]]:
        """The list's members: email to the contact's properties."""
        with self.lock:
            ids = self.lists[list_id]["members"]
            return {self.contacts[i]["email"]: dict(self.contacts[i]) for i in ids}

    def dispatch(self, req: CapturedRequest) -> Reply:
        """Auth and rate limits first, then the route; headers on every answer."""
        if self.is_token_request(req):
            return VendorEmulator.dispatch(self, req)
        with self.lock:
            if not self.accepts(req.headers.get("Authorization")):
                self.requests.append(req)
                return Reply(401, {"status": "error", "category": "INVALID_AUTHENTICATION"})
            now = time.monotonic()
            self._window = [t for t in self._window if now - t < 10]
            if len(self._window) >= self.per_10s:
                self.requests.append(req)
                return Reply(
                    429,
                    {
                        "status": "error",
                        "message": "You have reached your ten_secondly_rolling limit.",
                        "errorType": "RATE_LIMIT",
                        "policyName": "TEN_SECONDLY_ROLLING",
                    },
                    headers=self._limit_headers(),
                )
            self._window.append(now)
            self._used_today += 1
            reply = super().dispatch(req)
            reply.headers = {**self._limit_headers(), **reply.headers}
            return reply

    def _limit_headers(self) -> dict[str, str]:
        return {
            "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
            "X-HubSpot-RateLimit-Max": str(self.per_10s),
            "X-HubSpot-RateLimit-Remaining": str(max(0, self.per_10s - len(self._window))),
            "X-HubSpot-RateLimit-Daily": str(self.daily),
            "X-HubSpot-RateLimit-Daily-Remaining": str(max(0, self.daily - self._used_today)),
        }

    def __enter__(self) -> FakeHubSpot:
        super().__enter__()
        return self

    # -- routes -------------------------------------------------------------------------

    def upsert(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        inputs = (req.json() or {}).get("inputs") or []
        ids = [str(i.get("id", "")).lower() for i in inputs]
        refused = self.kit_check(ids)
        if refused is not None:
            return refused
        if len(set(ids)) != len(ids):
            return Reply(400, {"category": "VALIDATION_ERROR", "message": "Duplicate IDs found"})
        results: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for item in inputs:
            if item.get("idProperty") != "email" or "properties" not in item:
                return Reply(400, {"category": "VALIDATION_ERROR", "message": "bad input"})
            email = str(item["id"]).lower()
            if email in self.reject or self.record_refused(email):
                errors.append(
                    {
                        "status": "error",
                        "category": "VALIDATION_ERROR",
                        "message": f"Email address {email} is invalid",
                        "context": {"ids": [email]},
                        "errors": [{"message": "invalid email", "code": "INVALID_EMAIL"}],
                    }
                )
                continue
            new = email not in self.by_email
            if new:
                self.by_email[email] = str(self._next_id)
                self._next_id += 1
                self.contacts[self.by_email[email]] = {"email": email}
            record_id = self.by_email[email]
            self.contacts[record_id].update(item["properties"])
            results.append(
                {
                    "id": record_id,
                    "new": new,
                    "archived": False,
                    "properties": dict(self.contacts[record_id]),
                    "objectWriteTraceId": item.get("objectWriteTraceId"),
                }
            )
        body: dict[str, Any] = {"status": "COMPLETE", "results": results}
        if errors:
            body.update(numErrors=len(errors), errors=errors)
        return Reply(207 if errors else 200, body)

    def batch_read(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        """Contacts by email; the ones that do not exist are errors of a 207, as HubSpot does."""
        body = req.json() or {}
        if body.get("idProperty") != "email":
            return Reply(400, {"category": "VALIDATION_ERROR", "message": "bad idProperty"})
        results, missing = [], []
        for item in body.get("inputs") or []:
            email = str(item.get("id", "")).lower()
            record_id = self.by_email.get(email)
            if record_id is None:
                missing.append(email)
            else:
                results.append({"id": record_id, "properties": dict(self.contacts[record_id])})
        answer: dict[str, Any] = {"status": "COMPLETE", "results": results}
        if missing:
            error = {
                "status": "error",
                "category": "OBJECT_NOT_FOUND",
                "message": "Could not get some CONTACT objects, they may be deleted or not exist.",
                "context": {"ids": missing},
            }
            answer.update(numErrors=len(missing), errors=[error])
        return Reply(207 if missing else 200, answer)

    def read_contacts(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        return Reply(200, {"results": []})

    def search_lists(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        """Lists whose name contains ``query``, ``count`` (at most ``page_size``) a page."""
        body = req.json() or {}
        query = str(body.get("query") or "").lower()
        offset = int(body.get("offset") or 0)
        count = min(int(body.get("count") or 20), self.page_size)
        found = [
            {"listId": i, "name": f.get("name", ""), "processingType": f["processingType"]}
            for i, f in sorted(self.lists.items(), key=lambda item: int(item[0]))
            if query in str(f.get("name", "")).lower()
        ]
        page = found[offset : offset + count]
        more = offset + count < len(found)
        return Reply(
            200, {"lists": page, "hasMore": more, "offset": offset + len(page), "total": len(found)}
        )

    def create_list(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        body = req.json() or {}
        name = body.get("name")
        if (
            not name
            or body.get("objectTypeId") != "0-1"
            or body.get("processingType")
            not in (
                "MANUAL",
                "SNAPSHOT",
                "DYNAMIC",
            )
        ):
            return Reply(400, {"category": "VALIDATION_ERROR", "message": "invalid list"})
        if any(f.get("name") == name for f in self.lists.values()):
            return Reply(400, {"category": "VALIDATION_ERROR", "message": "name already used"})
        list_id = str(max((int(i) for i in self.lists), default=100) + 1)
        self.lists[list_id] = {
            "processingType": body["processingType"],
            "members": set(),
            "name": name,
        }
        info = {"listId": list_id, "name": name, "processingType": body["processingType"]}
        return Reply(200, {"list": {**info, "objectTypeId": "0-1"}}, delay=self.create_delay)

    def get_list(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        found = self.lists.get(match["list_id"])
        if found is None:
            return Reply(404, {"category": "OBJECT_NOT_FOUND", "message": "list not found"})
        info = {"listId": match["list_id"], "processingType": found["processingType"]}
        return Reply(200, {"list": {**info, "objectTypeId": "0-1", "name": "segment"}})

    def membership(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        found = self.lists.get(match["list_id"])
        if found is None:
            return Reply(404, {"category": "OBJECT_NOT_FOUND", "message": "list not found"})
        if found["processingType"] == "DYNAMIC":
            return Reply(400, {"category": "VALIDATION_ERROR", "message": "list is DYNAMIC"})
        ids = [str(i) for i in (req.json() or [])]
        refused = self.kit_check([self.contacts.get(i, {}).get("email", i) for i in ids])
        if refused is not None:
            return refused
        members: set[str] = found["members"]
        missing = [i for i in ids if i not in self.contacts]
        known = [i for i in ids if i in self.contacts]
        if match["action"] == "add":
            added = [i for i in known if i not in members]
            members.update(known)
            return Reply(
                200, {"recordsIdsAdded": added, "recordIdsRemoved": [], "recordIdsMissing": missing}
            )
        removed = [i for i in known if i in members]
        members.difference_update(known)
        return Reply(
            200, {"recordsIdsAdded": [], "recordIdsRemoved": removed, "recordIdsMissing": missing}
        )
