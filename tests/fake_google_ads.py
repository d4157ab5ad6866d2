"""A stateful local Google Ads API for Customer Match: user lists, offline user data jobs
(PENDING -> run -> scripted statuses across polls -> SUCCESS, operations applied to the list
only then), ``addOperations`` with partial failures placed by operation index, the limits of
section 9 of the reference (20 identifiers per operation, 100,000 per request, one oneof per
identifier, SHA-256 hex), ``CONCURRENT_MODIFICATION`` when two jobs run on one list, a tiny
GAQL reader for ``googleAds:search``, and Google's error envelope."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx

from syncer.testing import Feature
from tests.contract import CapturedRequest
from tests.vendor_emulator import Reply, VendorEmulator, as_response

FAILURE_TYPE = "type.googleapis.com/google.ads.googleads.v22.errors.GoogleAdsFailure"
ONEOF = ("hashedEmail", "hashedPhoneNumber", "mobileId", "thirdPartyUserId", "addressInfo")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
JOB_PATH = r"/(?P<v>v\d+)/customers/(?P<cid>\d+)/offlineUserDataJobs/(?P<job>\d+)"


def google_error(status: int, grpc: str, code: dict[str, str], message: str) -> Reply:
    failure = {"@type": FAILURE_TYPE, "errors": [{"errorCode": code, "message": message}]}
    return Reply(
        status,
        {"error": {"code": status, "message": message, "status": grpc, "details": [failure]}},
    )


def rate_limited(delay: str = "1s") -> Reply:
    """Google's 429: RESOURCE_EXHAUSTED with the retryDelay inside the body, no header."""
    reply = google_error(429, "RESOURCE_EXHAUSTED", {"quotaError": "RESOURCE_EXHAUSTED"}, "quota")
    details = {"quotaErrorDetails": {"rateScope": "DEVELOPER", "retryDelay": delay}}
    reply.body["error"]["details"][0]["errors"][0]["details"] = details
    return reply


def concurrent_modification() -> Reply:
    return google_error(
        400,
        "INVALID_ARGUMENT",
        {"databaseError": "CONCURRENT_MODIFICATION"},
        "Multiple requests were attempting to modify the same resource at once.",
    )


class FakeGoogleAds(VendorEmulator):
    base_url = "https://googleads.fake"
    batch_cap = 10_000  # operations (members) per addOperations call, as the connector caps
    lacks: ClassVar[Mapping[Feature, str]] = {
        "field_values": "a Customer Match list keeps hashed identifiers only",
    }
    endpoints: ClassVar[list[tuple[str, str, str]]] = [
        ("POST", r"/(?P<v>v\d+)/customers/(?P<cid>\d+)/offlineUserDataJobs:create", "create"),
        ("POST", JOB_PATH + r":addOperations", "add_operations"),
        ("POST", JOB_PATH + r":run", "run"),
        ("POST", r"/(?P<v>v\d+)/customers/(?P<cid>\d+)/googleAds:search", "search"),
        ("POST", r"/(?P<v>v\d+)/customers/(?P<cid>\d+)/userLists:mutate", "mutate_user_lists"),
    ]

    def __init__(
        self, token: str, developer_token: str, customer: str, user_list: str | None
    ) -> None:
        super().__init__()
        self.token = token
        self.developer_token = developer_token
        self.customer = customer
        #: The list whose members are kept: the one given, else the first one created.
        self.user_list = user_list
        #: Every user list: id -> its fields (name, membershipLifeSpan, crmBasedUserList).
        self.user_lists: dict[str, dict[str, Any]] = (
            {user_list: {"name": "Emulated", "type": "CRM_BASED"}} if user_list else {}
        )
        #: Whether the customer accepted the customer data terms (else a creation fails).
        self.terms_accepted = True
        #: Seconds the answer to a creation is held (the list exists meanwhile).
        self.create_delay = 0.0
        self._list_ids = itertools.count(9000)
        #: Identifiers on the list, each as canonical JSON of one UserIdentifier.
        self.identifiers: set[str] = set()
        self.jobs: dict[str, dict[str, Any]] = {}
        #: Hashes Google refuses (partial failure on the operation holding them).
        self.refused: set[str] = set()
        #: Statuses a job reports on its polls after ``:run``, before SUCCESS.
        self.script: list[list[str]] = []
        self.match_range = "MATCH_RANGE_41_TO_50"
        self._ids = itertools.count(700)

    # -- what tests look at -------------------------------------------------------------

    @property
    def list_name(self) -> str:
        return f"customers/{self.customer}/userLists/{self.user_list}"

    def members(self) -> dict[str, dict[str, str]]:
        """The list by hashed email (identifiers are all it keeps)."""
        return {h: {} for h in self.hashes("hashedEmail")}

    def error(self, status: int, *, retry_after: float | None = None) -> httpx.Response:
        """Google's envelopes; its 429 says how long to wait in ``retryDelay``, not a header."""
        if status == 429:
            if retry_after is not None:
                return as_response(rate_limited(f"{retry_after:g}s"))
            return as_response(
                google_error(429, "RESOURCE_EXHAUSTED", {"quotaError": "RESOURCE_EXHAUSTED"}, "q")
            )
        if status == 401:
            code = {"authenticationError": "OAUTH_TOKEN_INVALID"}
            return as_response(google_error(401, "UNAUTHENTICATED", code, "bad token"))
        if status in (400, 413):
            code = {"requestError": "INVALID_INPUT"}
            return as_response(google_error(400, "INVALID_ARGUMENT", code, "invalid request"))
        if status >= 500:
            grpc = "UNAVAILABLE" if status == 503 else "INTERNAL"
            return as_response(google_error(status, grpc, {"internalError": grpc}, "try again"))
        return super().error(status, retry_after=retry_after)

    def hashes(self, field: str = "hashedEmail") -> set[str]:
        """The ``field`` values of the identifiers on the list."""
        found = set()
        for text in self.identifiers:
            value = json.loads(text).get(field)
            if isinstance(value, str):
                found.add(value)
        return found

    # -- dispatch -----------------------------------------------------------------------

    def dispatch(self, req: CapturedRequest) -> Reply:
        if self.is_token_request(req):
            return VendorEmulator.dispatch(self, req)
        headers = {k.lower(): v for k, v in req.headers.items()}
        if not self.accepts(headers.get("authorization")):
            with self.lock:
                self.requests.append(req)
            return google_error(
                401, "UNAUTHENTICATED", {"authenticationError": "OAUTH_TOKEN_INVALID"}, "bad token"
            )
        if headers.get("developer-token") != self.developer_token:
            with self.lock:
                self.requests.append(req)
            return google_error(
                403,
                "PERMISSION_DENIED",
                {"authorizationError": "DEVELOPER_TOKEN_NOT_APPROVED"},
                "bad developer token",
            )
        return super().dispatch(req)

    def _customer_ok(self, match: re.Match[str]) -> Reply | None:
        if match["v"] != "v22" or match["cid"] != self.customer:
            return google_error(
                400, "INVALID_ARGUMENT", {"requestError": "INVALID_CUSTOMER_ID"}, "bad customer"
            )
        return None

    # -- jobs ---------------------------------------------------------------------------

    def create(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        bad = self._customer_ok(match)
        if bad:
            return bad
        job = (req.json() or {}).get("job", {})
        metadata = job.get("customerMatchUserListMetadata", {})
        if job.get("type") != "CUSTOMER_MATCH_USER_LIST" or metadata.get("userList") != (
            self.list_name
        ):
            return google_error(
                400, "INVALID_ARGUMENT", {"userListError": "USER_LIST_NOT_FOUND"}, "no such list"
            )
        name = f"customers/{self.customer}/offlineUserDataJobs/{next(self._ids)}"
        script = self.script.pop(0) if self.script else ["RUNNING"]
        self.jobs[name] = {
            "status": "PENDING",
            "operations": [],
            "consent": metadata.get("consent"),
            "userList": metadata.get("userList"),
            "script": script,
            "polls": 0,
        }
        return Reply(200, {"resourceName": name})

    def _resource(self, list_id: str) -> str:
        return f"customers/{self.customer}/userLists/{list_id}"

    def mutate_user_lists(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        """One ``create`` of a CRM-based list (what syncer sends); checks its fields."""
        bad = self._customer_ok(match)
        if bad:
            return bad
        operations = (req.json() or {}).get("operations") or []
        if len(operations) != 1 or "create" not in operations[0]:
            return google_error(400, "INVALID_ARGUMENT", {"requestError": "INVALID_INPUT"}, "op")
        created = operations[0]["create"]
        crm = created.get("crmBasedUserList") or {}
        span = int(created.get("membershipLifeSpan") or 0)
        if crm.get("uploadKeyType") not in ("CONTACT_INFO", "CRM_ID", "MOBILE_ADVERTISING_ID"):
            code = {"userListError": "UPLOAD_KEY_TYPE_REQUIRED"}
            return google_error(400, "INVALID_ARGUMENT", code, "upload key type")
        if not (1 <= span <= 540 or span == 10000):
            code = {"userListError": "INVALID_MEMBERSHIP_LIFE_SPAN"}
            return google_error(400, "INVALID_ARGUMENT", code, "life span")
        if not self.terms_accepted:
            code = {"userListError": "CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS"}
            return google_error(400, "INVALID_ARGUMENT", code, "customer data terms")
        list_id = str(next(self._list_ids))
        self.user_lists[list_id] = {**created, "type": "CRM_BASED"}
        if self.user_list is None:
            self.user_list = list_id
        body = {"results": [{"resourceName": self._resource(list_id)}]}
        return Reply(200, body, delay=self.create_delay)

    def sent_to(self, list_id: str) -> set[str]:
        """Hashed emails on ``list_id`` once every job sent to it ran (started or not)."""
        found: set[str] = set()
        for job in self.jobs.values():
            if job.get("userList") != self._resource(list_id):
                continue
            for op in job["operations"]:
                for ident in _identifiers(op):
                    if "hashedEmail" in ident:
                        (found.add if "create" in op else found.discard)(ident["hashedEmail"])
        return found

    def _job(self, match: re.Match[str]) -> tuple[str, dict[str, Any] | None]:
        name = f"customers/{match['cid']}/offlineUserDataJobs/{match['job']}"
        return name, self.jobs.get(name)

    def add_operations(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        name, job = self._job(match)
        if job is None:
            return google_error(404, "NOT_FOUND", {"mutateError": "RESOURCE_NOT_FOUND"}, "no job")
        if job["status"] != "PENDING":
            return google_error(
                400,
                "INVALID_ARGUMENT",
                {"offlineUserDataJobError": "INVALID_JOB_STATUS"},
                "operations can only be added to a PENDING job",
            )
        if self._running_on_list(name):
            return concurrent_modification()
        data = req.json() or {}
        operations = data.get("operations") or []
        refused = self.kit_check(
            [
                str(ident.get("hashedEmail"))
                for op in operations
                for ident in _identifiers(op)[:1]
                if isinstance(ident, dict)
            ]
        )
        if refused is not None:
            return refused
        total = sum(len(_identifiers(op)) for op in operations)
        if total > 100_000:
            return google_error(
                400, "INVALID_ARGUMENT", {"userDataError": "TOO_MANY_USER_IDENTIFIERS"}, "limit"
            )
        errors: list[dict[str, Any]] = []
        for index, op in enumerate(operations):
            problem = self._problem(op)
            if problem is None:
                job["operations"].append(op)
                continue
            code, message = problem
            path = [{"fieldName": "operations", "index": index}]
            errors.append(
                {"errorCode": code, "message": message, "location": {"fieldPathElements": path}}
            )
        if not errors:
            return Reply(200, {})
        if not data.get("enablePartialFailure"):
            return google_error(400, "INVALID_ARGUMENT", errors[0]["errorCode"], "invalid")
        failure = {"@type": FAILURE_TYPE, "errors": errors}
        message = f"Multiple errors in 'details'. First error: {errors[0]['message']}"
        return Reply(
            200, {"partialFailureError": {"code": 3, "message": message, "details": [failure]}}
        )

    def _problem(self, op: Any) -> tuple[dict[str, str], str] | None:
        verbs = [v for v in ("create", "remove", "removeAll") if v in (op or {})]
        if len(verbs) != 1:
            return {"requestError": "INVALID_INPUT"}, "an operation sets exactly one of its oneof"
        idents = _identifiers(op)
        if verbs[0] != "removeAll" and not idents:
            return {"offlineUserDataJobError": "USER_IDENTIFIER_REQUIRED"}, "no identifiers"
        if len(idents) > 20:
            return {"userDataError": "TOO_MANY_USER_IDENTIFIERS"}, "Too many user identifiers."
        for ident in idents:
            if not isinstance(ident, dict) or len(ident) != 1 or next(iter(ident)) not in ONEOF:
                return {"requestError": "INVALID_INPUT"}, "one oneof field per UserIdentifier"
            for value in _hashed_values(ident):
                if not HEX64.match(value):
                    return (
                        {"offlineUserDataJobError": "INVALID_SHA256_FORMAT"},
                        "The SHA256 encoded value is malformed.",
                    )
                if value in self.refused or self.record_refused(value):
                    return (
                        {"offlineUserDataJobError": "DATA_POLICY_VIOLATION"},
                        "This user cannot be added to the list (policy).",
                    )
        return None

    def _running_on_list(self, name: str) -> bool:
        return any(n != name and j["status"] == "RUNNING" for n, j in self.jobs.items())

    def run(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        name, job = self._job(match)
        if job is None:
            return google_error(404, "NOT_FOUND", {"mutateError": "RESOURCE_NOT_FOUND"}, "no job")
        if job["status"] != "PENDING" or job.get("started"):
            return google_error(
                400,
                "INVALID_ARGUMENT",
                {"offlineUserDataJobError": "INVALID_JOB_STATUS"},
                "the job was already started",
            )
        if self._running_on_list(name):
            return concurrent_modification()
        job["started"] = True
        job["status"] = job["script"][0] if job["script"] else "RUNNING"
        return Reply(200, {"name": f"{name}/operations/1", "done": False})

    def _advance(self, job: dict[str, Any]) -> None:
        """One poll: the next scripted status, then SUCCESS (operations applied in order)."""
        if not job.get("started"):
            return
        job["polls"] += 1
        script = job["script"]
        if job["polls"] <= len(script):
            job["status"] = script[job["polls"] - 1]
            return
        if job["status"] != "SUCCESS":
            for op in job["operations"]:
                for ident in _identifiers(op):
                    text = json.dumps(ident, sort_keys=True)
                    if "create" in op:
                        self.identifiers.add(text)
                    else:
                        self.identifiers.discard(text)
            job["status"] = "SUCCESS"

    # -- GAQL ---------------------------------------------------------------------------

    def search(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        bad = self._customer_ok(match)
        if bad:
            return bad
        query = str((req.json() or {}).get("query", ""))
        where = re.search(r"resource_name = '([^']+)'", query)
        named = re.search(r"user_list\.name = '((?:[^'\\]|\\.)*)'", query)
        if " FROM user_list " in query and named:
            wanted = re.sub(r"\\(.)", r"\1", named.group(1))
            rows = [
                {"userList": {"resourceName": self._resource(i), "id": i, "name": fields["name"]}}
                for i, fields in sorted(self.user_lists.items())
                if fields["name"] == wanted
            ]
            return Reply(200, {"results": rows})
        if " FROM user_list " in query:
            if where and where.group(1) != self.list_name:
                return Reply(200, {"results": []})
            row = {"resourceName": self.list_name, "id": self.user_list, "type": "CRM_BASED"}
            return Reply(200, {"results": [{"userList": row}]})
        if " FROM offline_user_data_job " in query and where:
            job = self.jobs.get(where.group(1))
            if job is None:
                return Reply(200, {"results": []})
            self._advance(job)
            row: dict[str, Any] = {"resourceName": where.group(1), "status": job["status"]}
            if job["status"] == "SUCCESS":
                row["operationMetadata"] = {"matchRateRange": self.match_range}
            return Reply(200, {"results": [{"offlineUserDataJob": row}]})
        return google_error(
            400, "INVALID_ARGUMENT", {"queryError": "UNEXPECTED_INPUT"}, "unsupported query"
        )


def _identifiers(op: Any) -> list[Any]:
    for verb in ("create", "remove"):
        body = (op or {}).get(verb)
        if isinstance(body, dict):
            found = body.get("userIdentifiers")
            return found if isinstance(found, list) else []
    return []


def _hashed_values(ident: dict[str, Any]) -> list[str]:
    ((field, value),) = ident.items()
    if field in ("hashedEmail", "hashedPhoneNumber"):
        return [str(value)]
    if field == "addressInfo" and isinstance(value, dict):
        return [str(value.get("hashedFirstName")), str(value.get("hashedLastName"))]
    return []
