"""A stateful local Braze REST endpoint for end-to-end tests.

It keeps users (by external_id or email) with their attributes and subscription group states,
and answers as the reference describes Braze: ``/users/track`` takes at most 75 attribute
objects (400 beyond), answers 201 ``{"message": "success", "errors": [...]}`` with an ``index``
per refused object, ``/v2/subscription/status/set`` takes at most 50 ids per entry and not
emails with phones; every answer carries ``X-RateLimit-Limit/Remaining/Reset`` (epoch seconds).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tests.contract import CapturedRequest
from tests.vendor_emulator import Reply, VendorEmulator

LIMIT = 3000
IDENTIFIERS = ("external_id", "user_alias", "braze_id", "email", "phone")


@dataclass
class User:
    attributes: dict[str, Any] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)


class FakeBraze(VendorEmulator):
    base_url = "https://rest.braze.fake"
    batch_cap = 75  # /users/track attributes (subscription status: 50 ids per entry)
    endpoints: ClassVar[list[tuple[str, str, str]]] = [
        ("POST", r"/users/track", "track"),
        ("POST", r"/v2/subscription/status/set", "status_set"),
        ("GET", r"/subscription/status/get", "status_get"),
    ]

    def __init__(self, api_key: str, group: str) -> None:
        super().__init__()
        self.api_key = api_key
        self.group = group
        self.users: dict[str, User] = {}
        #: external ids whose attributes Braze refuses, with its message.
        self.invalid: dict[str, str] = {}
        self.remaining = LIMIT
        #: Answer this many requests with ``X-RateLimit-Remaining: 0`` (reset 1 s ahead).
        self.exhaust_next = 0

    def members(self) -> dict[str, dict[str, Any]]:
        """Users subscribed to the group: id to attributes."""
        with self.lock:
            return {
                uid: dict(u.attributes)
                for uid, u in self.users.items()
                if u.groups.get(self.group) == "subscribed"
            }

    def subscribed(self) -> set[str]:
        with self.lock:
            return {
                uid for uid, u in self.users.items() if u.groups.get(self.group) == "subscribed"
            }

    # -- plumbing -----------------------------------------------------------------------

    def dispatch(self, req: CapturedRequest) -> Reply:
        headers = {k.lower(): v for k, v in req.headers.items()}
        if headers.get("authorization") != f"Bearer {self.api_key}":
            with self.lock:
                self.requests.append(req)
                self.statuses[401] += 1
            return Reply(401, {"message": "Invalid API key"})
        reply = super().dispatch(req)
        with self.lock:
            self.remaining = max(0, self.remaining - 1)
            remaining = self.remaining
            if self.exhaust_next:
                self.exhaust_next -= 1
                remaining = 0
        reset = int(time.time()) + (1 if remaining == 0 else 3)
        reply.headers = {
            **reply.headers,
            "X-RateLimit-Limit": str(LIMIT),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(reset),
        }
        return reply

    # -- routes -------------------------------------------------------------------------

    def track(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        body = req.json() or {}
        attributes = body.get("attributes") or []
        if len(attributes) > 75:
            return Reply(400, {"message": "Too many attributes: at most 75 per request"})
        refused = self.kit_check(
            [str(a.get("external_id") or a.get("email") or "") for a in attributes]
        )
        if refused is not None:
            return refused
        errors = []
        for index, item in enumerate(attributes):
            ids = [name for name in IDENTIFIERS if item.get(name)]
            if not ids:
                errors.append(
                    {
                        "type": "an identifier is required",
                        "input_array": "attributes",
                        "index": index,
                    }
                )
                continue
            uid = str(item.get("external_id") or item.get("email"))
            if uid in self.invalid or self.record_refused(uid):
                reason = self.invalid.get(uid, "invalid attribute value")
                errors.append({"type": reason, "input_array": "attributes", "index": index})
                continue
            if item.get("_update_existing_only") and uid not in self.users:
                continue
            user = self.users.setdefault(uid, User())
            for name, value in item.items():
                if name == "subscription_groups":
                    for group in value:
                        user.groups[group["subscription_group_id"]] = group["subscription_state"]
                elif name != "_update_existing_only":
                    user.attributes[name] = value
        reply: dict[str, Any] = {
            "message": "success",
            "attributes_processed": len(attributes) - len(errors),
        }
        if errors:
            reply["errors"] = errors
        return Reply(201, reply)

    def status_set(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        entries = (req.json() or {}).get("subscription_groups") or []
        every = [
            str(uid)
            for entry in entries
            for uid in entry.get("external_ids") or entry.get("emails") or []
        ]
        refused = self.kit_check(every)
        if refused is not None:
            return refused
        for entry in entries:
            if entry.get("emails") and entry.get("phones"):
                return Reply(400, {"message": "emails and phones cannot be sent together"})
            ids = entry.get("external_ids") or entry.get("emails") or entry.get("phones") or []
            if len(ids) > 50:
                return Reply(400, {"message": "at most 50 ids per subscription group"})
            if entry.get("subscription_group_id") != self.group:
                return Reply(400, {"message": "Invalid subscription group"})
            state = entry["subscription_state"]
            if state not in ("subscribed", "unsubscribed"):
                return Reply(400, {"message": "Invalid subscription_state"})
            for uid in ids:
                self.users.setdefault(str(uid), User()).groups[self.group] = state
        return Reply(201, {"message": "success"})

    def status_get(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        query = req.url.partition("?")[2]
        params = dict(part.split("=", 1) for part in query.split("&") if "=" in part)
        if params.get("subscription_group_id") != self.group:
            return Reply(400, {"message": "Invalid subscription group"})
        return Reply(200, {"status": {}, "message": "success"})
