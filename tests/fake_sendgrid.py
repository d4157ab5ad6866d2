"""A stateful local SendGrid Marketing API: contacts (ids are UUIDs), lists, async upsert jobs
(pending -> completed/errored), email search capped at 100, list removal by contact id (404 for
an unknown id), ``X-RateLimit-*`` headers on every answer."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from tests.contract import CapturedRequest
from tests.vendor_emulator import Reply, VendorEmulator


def errors(status: int, message: str, field: str | None = None) -> Reply:
    return Reply(status, {"errors": [{"field": field, "message": message}]})


class FakeSendGrid(VendorEmulator):
    base_url = "https://sendgrid.fake"
    batch_cap = 30_000  # contacts per upsert
    endpoints: ClassVar[list[tuple[str, str, str]]] = [
        ("PUT", r"/v3/marketing/contacts", "upsert"),
        ("GET", r"/v3/marketing/contacts/imports/(?P<job>[^/]+)", "get_job"),
        ("POST", r"/v3/marketing/contacts/search/emails", "search"),
        ("GET", r"/v3/marketing/lists", "find_lists"),
        ("POST", r"/v3/marketing/lists", "create_list"),
        ("GET", r"/v3/marketing/lists/(?P<list_id>[^/]+)", "get_list"),
        ("DELETE", r"/v3/marketing/lists/(?P<list_id>[^/]+)/contacts", "list_remove"),
    ]

    #: Lists per page of ``GET /v3/marketing/lists`` (SendGrid's is up to 1,000): paging.
    page_size = 2

    def __init__(self, api_key: str, list_id: str | None) -> None:
        super().__init__()
        self.api_key = api_key
        #: The list whose members are kept: the one given, else the first one created.
        self.list_id = list_id
        #: Every list: id -> name.
        self.lists: dict[str, str] = {list_id: "VIP"} if list_id else {}
        #: Seconds the answer to a list creation is held (the list exists meanwhile).
        self.create_delay = 0.0
        self.contacts: dict[str, dict[str, Any]] = {}  # email -> contact
        self.jobs: dict[str, dict[str, Any]] = {}
        self.blocked_domains: set[str] = set()

    def members(self) -> dict[str, dict[str, Any]]:
        """The list's contacts: email to the contact."""
        with self.lock:
            return {e: dict(c) for e, c in self.contacts.items() if self.list_id in c["list_ids"]}

    def dispatch(self, req: CapturedRequest) -> Reply:
        auth = {k.lower(): v for k, v in req.headers.items()}.get("authorization")
        if auth != f"Bearer {self.api_key}":
            with self.lock:
                self.requests.append(req)
            return errors(401, "authorization required")
        reply = super().dispatch(req)
        reply.headers = {
            "X-RateLimit-Limit": "600",
            "X-RateLimit-Remaining": "599",
            "X-RateLimit-Reset": str(int(time.time()) + 60),
            **reply.headers,
        }
        return reply

    def upsert(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        body = req.json() or {}
        contacts, list_ids = body.get("contacts") or [], body.get("list_ids") or []
        if not contacts or len(contacts) > 30_000 or len(req.body) > 6 * 1024 * 1024:
            return errors(400, "between 1 and 30000 contacts, at most 6 MB", "contacts")
        if any(list_id != self.list_id for list_id in list_ids):
            return errors(400, "list does not exist", "list_ids")
        refused = self.kit_check([str(c.get("email", "")).lower() for c in contacts])
        if refused is not None:
            return refused
        job_id = str(uuid.uuid4())
        self.jobs[job_id] = {"contacts": contacts, "list_ids": list_ids, "status": "pending"}
        return Reply(202, {"job_id": job_id})

    def get_job(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        job = self.jobs.get(match["job"])
        if job is None:
            return errors(404, "job not found")
        if job["status"] == "pending":
            job["errored"] = self._run(job)
            job["status"] = "errored" if job["errored"] else "completed"
            return Reply(200, {"id": match["job"], "status": "pending", "job_type": "upsert"})
        results = {"requested_count": len(job["contacts"]), "errored_count": job["errored"]}
        return Reply(
            200,
            {"id": match["job"], "status": job["status"], "job_type": "upsert", "results": results},
        )

    def _run(self, job: dict[str, Any]) -> int:
        errored = 0
        for contact in job["contacts"]:
            email = str(contact.get("email", "")).lower()
            if email.rsplit("@", 1)[-1] in self.blocked_domains or self.record_refused(email):
                errored += 1
                continue
            current = self.contacts.setdefault(
                email, {"id": str(uuid.uuid4()), "list_ids": set(), "custom_fields": {}}
            )
            current.update({k: v for k, v in contact.items() if k != "custom_fields"})
            current["email"] = email
            current["custom_fields"].update(contact.get("custom_fields") or {})
            current["list_ids"].update(job["list_ids"])
        return errored

    def search(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        emails = (req.json() or {}).get("emails") or []
        if len(emails) > 100:
            return errors(400, "at most 100 emails", "emails")
        result: dict[str, Any] = {}
        for email in emails:
            contact = self.contacts.get(email.lower())
            if contact is None:
                result[email] = {"error": "contact not found"}
            else:
                shown = {k: v for k, v in contact.items() if k != "list_ids"}
                result[email] = {"contact": {**shown, "list_ids": sorted(contact["list_ids"])}}
        if not any("contact" in item for item in result.values()):
            return errors(404, "no contacts found")
        return Reply(200, {"result": result})

    def find_lists(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        query = parse_qs(urlsplit(req.url).query)
        start = int(query.get("page_token", ["0"])[0])
        listed = sorted(self.lists.items())
        page = listed[start : start + self.page_size]
        result = [{"id": i, "name": n, "contact_count": 0} for i, n in page]
        metadata: dict[str, Any] = {"count": len(listed)}
        if start + len(page) < len(listed):
            metadata["next"] = (
                f"{self.base_url}/v3/marketing/lists?page_size={self.page_size}"
                f"&page_token={start + len(page)}"
            )
        return Reply(200, {"result": result, "_metadata": metadata})

    def create_list(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        name = (req.json() or {}).get("name")
        if not isinstance(name, str) or not name or len(name) > 100:
            return errors(400, "name is required and at most 100 characters", "name")
        list_id = str(uuid.uuid4())
        self.lists[list_id] = name
        if self.list_id is None:
            self.list_id = list_id
        body = {"id": list_id, "name": name, "contact_count": 0}
        return Reply(201, body, delay=self.create_delay)

    def get_list(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        if match["list_id"] != self.list_id:
            return errors(404, "list not found")
        count = len(self.members())
        return Reply(200, {"id": self.list_id, "name": "VIP", "contact_count": count})

    def list_remove(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        if match["list_id"] != self.list_id:
            return errors(404, "list not found")
        query = parse_qs(urlsplit(req.url).query)
        ids = ",".join(query.get("contact_ids", [])).split(",")
        by_id = {c["id"]: c for c in self.contacts.values()}
        if not ids or any(i not in by_id for i in ids):
            return errors(404, "one or more contact ids do not exist")
        refused = self.kit_check([by_id[i]["email"] for i in ids])
        if refused is not None:
            return refused
        for contact_id in ids:
            by_id[contact_id]["list_ids"].discard(self.list_id)
        return Reply(202, {"job_id": str(uuid.uuid4())})
