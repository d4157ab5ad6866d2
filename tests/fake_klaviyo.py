"""A stateful local Klaviyo: profiles, one static list (the one given, or else the first one
created through ``POST /api/lists``; other lists are kept by name only, to be found), bulk
import jobs (queued -> processing ->
complete, with import errors), the required ``revision`` header, JSON:API error envelopes,
``RateLimit-*`` headers on every 2xx and at most 1,000 ids per list-relationship call."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from tests.contract import CapturedRequest
from tests.vendor_emulator import Reply, VendorEmulator

PAGE = 100


def error(status: int, code: str, detail: str) -> Reply:
    item = {"id": "e-1", "code": code, "title": code.replace("_", " "), "detail": detail}
    return Reply(status, {"errors": [item]}, headers={"Content-Type": "application/vnd.api+json"})


class FakeKlaviyo(VendorEmulator):
    base_url = "https://klaviyo.fake"
    batch_cap = 10_000  # profiles per bulk import job (list relationships: 1,000 ids)
    endpoints: ClassVar[list[tuple[str, str, str]]] = [
        ("GET", r"/api/lists", "find_lists"),
        ("POST", r"/api/lists", "create_list"),
        ("GET", r"/api/lists/(?P<list_id>[^/]+)", "get_list"),
        ("POST", r"/api/lists/(?P<list_id>[^/]+)/relationships/profiles", "list_add"),
        ("DELETE", r"/api/lists/(?P<list_id>[^/]+)/relationships/profiles", "list_remove"),
        ("POST", r"/api/profile-import", "profile_import"),
        ("POST", r"/api/profile-bulk-import-jobs", "create_job"),
        ("GET", r"/api/profile-bulk-import-jobs/(?P<job>[^/]+)", "get_job"),
        ("GET", r"/api/profile-bulk-import-jobs/(?P<job>[^/]+)/import-errors", "job_errors"),
        ("GET", r"/api/profile-bulk-import-jobs/(?P<job>[^/]+)/profiles", "job_profiles"),
    ]

    def __init__(self, api_key: str, list_id: str | None, list_name: str = "Newsletter") -> None:
        super().__init__()
        self.api_key = api_key
        self.list_id = list_id
        #: Every list: id -> name (``find_lists`` filters on the name).
        self.lists: dict[str, str] = {list_id: list_name} if list_id else {}
        #: Seconds the answer to a list creation is held (the list exists meanwhile).
        self.create_delay = 0.0
        self.profiles: dict[str, dict[str, Any]] = {}  # id -> attributes
        self.by_email: dict[str, str] = {}
        self.listed: set[str] = set()  # profile ids on the list
        self.jobs: dict[str, dict[str, Any]] = {}
        self.blocked_domains: set[str] = set()
        self._ids = itertools.count(1)

    # -- helpers ------------------------------------------------------------------------

    def rate_limited(self, wait: float) -> Reply:
        """Klaviyo's 429: a JSON:API error with ``Retry-After`` in whole seconds."""
        detail = f"Request was throttled. Expected available in {wait:.0f} seconds."
        reply = error(429, "throttled", detail)
        reply.headers["Retry-After"] = f"{wait:.0f}"
        return reply

    def members(self) -> dict[str, dict[str, Any]]:
        """The list's profiles: email to attributes."""
        with self.lock:
            return {self.profiles[p]["email"]: dict(self.profiles[p]) for p in self.listed}

    def member_emails(self) -> set[str]:
        return {self.profiles[pid]["email"] for pid in self.listed}

    def dispatch(self, req: CapturedRequest) -> Reply:
        headers = {k.lower(): v for k, v in req.headers.items()}
        if headers.get("authorization") != f"Klaviyo-API-Key {self.api_key}":
            with self.lock:
                self.requests.append(req)
            return error(401, "not_authenticated", "Missing or invalid private key.")
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", headers.get("revision", "")):
            with self.lock:
                self.requests.append(req)
            return error(400, "invalid", "The revision header is required.")
        reply = super().dispatch(req)
        if 200 <= reply.status < 300:
            reply.headers = {
                "RateLimit-Limit": "150",
                "RateLimit-Remaining": "149",
                "RateLimit-Reset": "60",
                **reply.headers,
            }
        return reply

    def _upsert(self, attributes: dict[str, Any]) -> tuple[str | None, str | None]:
        """(profile id, None) or (None, reason) for one profile's attributes."""
        email = str(attributes.get("email") or "").lower()
        if "@" not in email:
            return None, "A profile needs an email address."
        if email.rsplit("@", 1)[1] in self.blocked_domains or self.record_refused(email):
            return None, f"{email} is on a suppressed domain"
        profile_id = self.by_email.get(email)
        if profile_id is None:
            profile_id = f"01KLAV{next(self._ids):06d}"
            self.by_email[email] = profile_id
            self.profiles[profile_id] = {}
        current = self.profiles[profile_id]
        current.update({k: v for k, v in attributes.items() if k != "properties"})
        current["email"] = email
        current.setdefault("properties", {}).update(attributes.get("properties") or {})
        return profile_id, None

    def _ids_in(self, req: CapturedRequest) -> list[str] | Reply:
        data = (req.json() or {}).get("data")
        if not isinstance(data, list) or len(data) > 1000:
            return error(400, "invalid", "Between 1 and 1000 profiles are allowed.")
        ids = [item["id"] for item in data]
        if any(pid not in self.profiles for pid in ids):
            return error(404, "not_found", "A profile was not found.")
        refused = self.kit_check([self.profiles[pid]["email"] for pid in ids])
        return ids if refused is None else refused

    # -- routes -------------------------------------------------------------------------

    def find_lists(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        """``filter=equals(name,"...")``, one page of at most 10 (a ``links.next`` after)."""
        query = parse_qs(urlsplit(req.url).query)
        wanted = re.fullmatch(r'equals\(name,"(.*)"\)', query.get("filter", [""])[0])
        names = sorted(self.lists.items())
        found = [(i, n) for i, n in names if wanted is None or n == json.loads(f'"{wanted[1]}"')]
        start = int(query.get("page[cursor]", ["0"])[0])
        page = found[start : start + 10]
        data = [{"type": "list", "id": i, "attributes": {"name": n}} for i, n in page]
        more = start + 10 < len(found)
        following = f"{self.base_url}/api/lists/?page%5Bcursor%5D={start + 10}" if more else None
        return Reply(200, {"data": data, "links": {"self": req.url, "next": following}})

    def create_list(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        name = (req.json() or {}).get("data", {}).get("attributes", {}).get("name")
        if not isinstance(name, str) or not name:
            return error(400, "invalid", "A list needs a name.")
        list_id = f"NEW{next(self._ids):04d}"
        self.lists[list_id] = name
        if self.list_id is None:
            self.list_id = list_id
        data = {"type": "list", "id": list_id, "attributes": {"name": name}}
        return Reply(201, {"data": data}, delay=self.create_delay)

    def get_list(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        if match["list_id"] != self.list_id:
            return error(404, "not_found", "A list with id was not found.")
        return Reply(200, {"data": {"type": "list", "id": self.list_id, "attributes": {}}})

    def list_add(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        if match["list_id"] != self.list_id:
            return error(404, "not_found", "A list with id was not found.")
        ids = self._ids_in(req)
        if isinstance(ids, Reply):
            return ids
        self.listed.update(ids)
        return Reply(204)

    def list_remove(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        if match["list_id"] != self.list_id:
            return error(404, "not_found", "A list with id was not found.")
        ids = self._ids_in(req)
        if isinstance(ids, Reply):
            return ids
        self.listed.difference_update(ids)
        return Reply(204)

    def profile_import(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        attributes = (req.json() or {}).get("data", {}).get("attributes", {})
        refused = self.kit_check([str(attributes.get("email") or "").lower()])
        if refused is not None:
            return refused
        existed = str(attributes.get("email") or "").lower() in self.by_email
        profile_id, reason = self._upsert(attributes)
        if profile_id is None:
            return error(400, "invalid", reason or "invalid")
        data = {"type": "profile", "id": profile_id, "attributes": self.profiles[profile_id]}
        return Reply(200 if existed else 201, {"data": data})

    def create_job(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        data = (req.json() or {}).get("data", {})
        profiles = data.get("attributes", {}).get("profiles", {}).get("data", [])
        if not profiles or len(profiles) > 10_000:
            return error(400, "invalid", "Between 1 and 10000 profiles are allowed.")
        refused = self.kit_check(
            [str(p.get("attributes", {}).get("email") or "").lower() for p in profiles]
        )
        if refused is not None:
            return refused
        lists = [
            item["id"] for item in data.get("relationships", {}).get("lists", {}).get("data", [])
        ]
        job_id = f"JOB{len(self.jobs) + 1}"
        self.jobs[job_id] = {
            "profiles": profiles,
            "lists": lists,
            "polls": 0,
            "status": "queued",
            "errors": [],
            "ids": [],
        }
        return Reply(202, {"data": self._job_doc(job_id)})

    def _job_doc(self, job_id: str) -> dict[str, Any]:
        job = self.jobs[job_id]
        attributes = {
            "status": job["status"],
            "created_at": "2026-11-01T00:00:00+00:00",
            "total_count": len(job["profiles"]),
            "completed_count": len(job["ids"]),
            "failed_count": len(job["errors"]),
        }
        return {
            "type": "profile-bulk-import-job",
            "id": job_id,
            "attributes": attributes,
            "links": {"self": f"/api/profile-bulk-import-jobs/{job_id}"},
        }

    def get_job(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        job = self.jobs.get(match["job"])
        if job is None:
            return error(404, "not_found", "Job not found.")
        job["polls"] += 1
        if job["status"] == "queued":
            job["status"] = "processing"
        elif job["status"] == "processing":
            self._run(job)
            job["status"] = "complete"
        return Reply(200, {"data": self._job_doc(match["job"])})

    def _run(self, job: dict[str, Any]) -> None:
        for index, profile in enumerate(job["profiles"]):
            profile_id, reason = self._upsert(profile.get("attributes", {}))
            if profile_id is None:
                pointer = f"/data/attributes/profiles/data/{index}/attributes/email"
                job["errors"].append(
                    {
                        "code": "invalid",
                        "title": "Invalid profile",
                        "detail": reason,
                        "source": {"pointer": pointer},
                        "original_payload": profile.get("attributes"),
                    }
                )
                continue
            job["ids"].append(profile_id)
            if self.list_id in job["lists"]:
                self.listed.add(profile_id)

    def _page(self, req: CapturedRequest, items: list[dict[str, Any]]) -> Reply:
        query = dict(
            re.findall(r"([^?&=]+)=([^&]*)", req.url.split("?", 1)[1] if "?" in req.url else "")
        )
        start = int(query.get("page%5Bcursor%5D", query.get("page[cursor]", "0")))
        size = min(int(query.get("page%5Bsize%5D", query.get("page[size]", "20"))), PAGE)
        links = {"self": req.url}
        if start + size < len(items):
            links["next"] = (
                f"https://a.klaviyo.com{req.url.split('?')[0]}?page%5Bcursor%5D={start + size}"
            )
        return Reply(200, {"data": items[start : start + size], "links": links})

    def job_errors(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        job = self.jobs.get(match["job"])
        if job is None:
            return error(404, "not_found", "Job not found.")
        items = [
            {"type": "import-error", "id": f"{match['job']}-{i}", "attributes": e}
            for i, e in enumerate(job["errors"])
        ]
        return self._page(req, items)

    def job_profiles(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        job = self.jobs.get(match["job"])
        if job is None:
            return error(404, "not_found", "Job not found.")
        items = [
            {"type": "profile", "id": pid, "attributes": {"email": self.profiles[pid]["email"]}}
            for pid in job["ids"]
        ]
        return self._page(req, items)
