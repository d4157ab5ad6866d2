"""A stateful local Meta Graph API for Custom Audiences: one customer-list audience kept as a
set of hashed rows, ``POST``/``DELETE /{version}/{audience_id}/users`` applying them and
answering with ``num_received``/``num_invalid_entries``, the ``access_token`` parameter checked
(code 190 otherwise), Meta's error envelope for >10,000 rows and rows not matching the schema
(code 100), invalid hashes counted not added, and ``X-Business-Use-Case-Usage`` on every answer.

A person is matched by any of the strong identifiers of a row (EMAIL, PHONE, EXTERN_ID,
MADID): adding a row replaces the rows it matches, removing a row drops them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import httpx

from syncer.testing import Feature
from tests.contract import CapturedRequest
from tests.vendor_emulator import Reply, VendorEmulator, as_response

KEYS = {
    "EXTERN_ID", "EMAIL", "PHONE", "GEN", "DOBY", "DOBM", "DOBD", "LN", "FN", "FI", "CT", "ST",
    "ZIP", "MADID", "COUNTRY",
}  # fmt: skip
UNHASHED = {"EXTERN_ID", "MADID"}
STRONG = ("EMAIL", "PHONE", "EXTERN_ID", "MADID")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_ROWS = 10_000

Row = frozenset[tuple[str, str]]


def error(code: int, message: str, subcode: int | None = None, **extra: Any) -> Reply:
    body: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code}
    if subcode is not None:
        body["error_subcode"] = subcode
    body.update(extra, fbtrace_id="AxYz")
    return Reply(400, {"error": body})


def usage_header(call_count: int = 12, minutes: int = 0) -> dict[str, str]:
    entry = {
        "type": "custom_audience",
        "call_count": call_count,
        "total_cputime": 3,
        "total_time": 4,
        "estimated_time_to_regain_access": minutes,
    }
    return {"X-Business-Use-Case-Usage": json.dumps({"100200300": [entry]})}


def throttled() -> Reply:
    """Meta's throttle: HTTP 400 with code 80003, not a 429."""
    reply = error(80003, "There have been too many calls to this ad-account.", 2446079)
    reply.headers.update(usage_header(100, 0))
    return reply


def too_small() -> Reply:
    """A removal refused because the audience would get too small."""
    return error(
        2650,
        "Invalid parameter",
        1870050,
        error_user_title="Audience Size too low",
        error_user_msg="You cannot remove users from this audience because it will result in "
        "a low audience size.",
    )


class FakeMeta(VendorEmulator):
    base_url = "https://graph.facebook.fake"
    batch_cap = MAX_ROWS
    lacks: ClassVar[Mapping[Feature, str]] = {
        "record_rejects": "Meta answers a count of invalid entries, never which record",
        "field_values": "an audience keeps hashed identifiers only",
        "retry_after": "Meta throttles with HTTP 400 code 80003, never a Retry-After",
    }
    endpoints: ClassVar[list[tuple[str, str, str]]] = [
        ("GET", r"/(?P<version>v\d+\.\d+)/(?P<audience>\d+)", "get_audience"),
        ("POST", r"/(?P<version>v\d+\.\d+)/(?P<audience>\d+)/users", "add_users"),
        ("DELETE", r"/(?P<version>v\d+\.\d+)/(?P<audience>\d+)/users", "remove_users"),
        ("GET", r"/(?P<version>v\d+\.\d+)/act_(?P<account>\d+)/customaudiences", "list_audiences"),
        (
            "POST",
            r"/(?P<version>v\d+\.\d+)/act_(?P<account>\d+)/customaudiences",
            "create_audience",
        ),
    ]
    #: Audiences listed per page (Meta's ``limit`` is honoured up to this), to test paging.
    page_size = 2

    def __init__(self, token: str, audience_id: str | None, account: str = "1234567") -> None:
        super().__init__()
        self.token = token
        #: The audience whose rows are kept: the one given, else the first one created.
        self.audience_id = audience_id
        #: Ad account -> audience id -> (name, customer_file_source).
        self.account = account
        self.audiences: dict[str, tuple[str, str]] = (
            {audience_id: ("Emulated", "USER_PROVIDED_ONLY")} if audience_id else {}
        )
        #: Whether the ad account accepted the Custom Audience terms (else code 2663).
        self.terms_accepted = True
        #: Seconds the answer to a creation is held (the audience exists meanwhile).
        self.create_delay = 0.0
        self._next_audience = 23850000000000100
        self.rows: set[Row] = set()
        self._by_id: dict[tuple[str, str], Row] = {}
        self.versions: set[str] = set()

    # -- what tests look at -------------------------------------------------------------

    def audience(self) -> set[Row]:
        with self.lock:
            return set(self.rows)

    def members(self) -> dict[str, dict[str, str]]:
        """The audience's rows by their hashed EMAIL."""
        with self.lock:
            return {dict(row)["EMAIL"]: dict(row) for row in self.rows if "EMAIL" in dict(row)}

    def error(self, status: int, *, retry_after: float | None = None) -> httpx.Response:
        """Meta's envelopes: throttling and token errors come as HTTP 400 with a code."""
        if status == 429:
            return as_response(throttled())
        if status == 401:
            return as_response(error(190, "Invalid OAuth access token - Cannot parse"))
        if status in (400, 413):
            return as_response(error(100, "(#100) Data is missing or does not match schema"))
        return super().error(status, retry_after=retry_after)

    def column(self, key: str) -> set[str]:
        return {dict(row)[key] for row in self.audience() if key in dict(row)}

    # -- serving ------------------------------------------------------------------------

    def dispatch(self, req: CapturedRequest) -> Reply:
        query = parse_qs(urlsplit(req.url).query)
        if query.get("access_token") != [self.token]:
            with self.lock:
                self.requests.append(req)
            return error(190, "Invalid OAuth access token - Cannot parse access token")
        reply = super().dispatch(req)
        if reply.status == 200:
            headers = {**usage_header(), **reply.headers}
            reply = Reply(reply.status, reply.body, headers, delay=reply.delay)
        return reply

    def _audience_or_error(self, match: re.Match[str]) -> Reply | None:
        self.versions.add(match["version"])
        if match["audience"] != self.audience_id:
            return error(
                100,
                f"Unsupported get request. Object with ID '{match['audience']}' does not exist",
                33,
            )
        return None

    def list_audiences(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        """The account's audiences, ``page_size`` a page, with cursors (``paging.next``)."""
        if match["account"] != self.account:
            return error(100, f"Unsupported get request. Object with ID 'act_{match['account']}'")
        query = parse_qs(urlsplit(req.url).query)
        start = int(query.get("after", ["0"])[0])
        listed = sorted(self.audiences.items())
        page = listed[start : start + self.page_size]
        data = [{"id": i, "name": name} for i, (name, _) in page]
        paging: dict[str, Any] = {
            "cursors": {"before": str(start), "after": str(start + len(page))}
        }
        if start + len(page) < len(listed):
            paging["next"] = f"{self.base_url}{req.url.split('?')[0]}?after={start + len(page)}"
        return Reply(200, {"data": data, "paging": paging})

    def create_audience(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        body = req.json() or {}
        if match["account"] != self.account:
            return error(100, f"Unsupported post request. Object with ID 'act_{match['account']}'")
        if not self.terms_accepted:
            return error(
                2663,
                "(#2663) Terms of service has not been accepted. To accept, go to "
                f"https://www.facebook.com/customaudiences/app/tos/?act={self.account}",
            )
        source = body.get("customer_file_source")
        if body.get("subtype") == "CUSTOM" and source not in (
            "USER_PROVIDED_ONLY",
            "PARTNER_PROVIDED_ONLY",
            "BOTH_USER_AND_PARTNER_PROVIDED",
        ):
            return error(100, "(#100) Missing parameter(s): customer_file_source")
        if not body.get("name"):
            return error(100, "(#100) The parameter name is required")
        audience_id = str(self._next_audience)
        self._next_audience += 1
        self.audiences[audience_id] = (str(body["name"]), str(source))
        if self.audience_id is None:
            self.audience_id = audience_id
        return Reply(200, {"id": audience_id}, delay=self.create_delay)

    def get_audience(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        missing = self._audience_or_error(match)
        if missing is not None:
            return missing
        body = {"id": self.audience_id, "name": "Emulated", "operation_status": {"code": 200}}
        return Reply(200, body)

    def _parse(self, req: CapturedRequest) -> tuple[list[Row], int] | Reply:
        """(valid rows, invalid entries) of a users payload, or Meta's error."""
        try:
            payload = json.loads(req.body)["payload"]
            schema, data = payload["schema"], payload["data"]
        except (ValueError, KeyError, TypeError):
            return error(100, "(#100) The parameter payload is required")
        if not isinstance(schema, list) or not schema or set(schema) - KEYS:
            return error(100, "(#100) Invalid schema")
        if not isinstance(data, list) or len(data) > MAX_ROWS:
            return error(100, f"(#100) Too many rows: at most {MAX_ROWS} per request")
        rows: list[Row] = []
        invalid = 0
        for item in data:
            if not isinstance(item, list) or len(item) != len(schema):
                return error(100, "(#100) Data is missing or does not match schema")
            pairs = [(k, v) for k, v in zip(schema, item, strict=True) if v != ""]
            if any(k not in UNHASHED and not HEX64.match(v) for k, v in pairs) or not pairs:
                invalid += 1
                continue
            rows.append(frozenset(pairs))
        return rows, invalid

    def _matches(self, row: Row) -> set[Row]:
        """The rows sharing a strong identifier with ``row`` (through an index: an audience
        of 10,000 rows must not cost 10,000 comparisons per row)."""
        return {self._by_id[p] for p in row if p[0] in STRONG and p in self._by_id}

    def _drop(self, rows: set[Row]) -> None:
        for row in rows:
            self.rows.discard(row)
            for pair in row:
                if self._by_id.get(pair) == row:
                    del self._by_id[pair]

    def _keep(self, row: Row) -> None:
        self.rows.add(row)
        for pair in row:
            if pair[0] in STRONG:
                self._by_id[pair] = row

    def add_users(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        missing = self._audience_or_error(match)
        if missing is not None:
            return missing
        parsed = self._parse(req)
        if isinstance(parsed, Reply):
            return parsed
        rows, invalid = parsed
        refused = self.kit_check([dict(row).get("EMAIL", "") for row in rows])
        if refused is not None:
            return refused
        for row in rows:
            self._drop(self._matches(row))
            self._keep(row)
        return self._counts(len(rows) + invalid, invalid)

    def remove_users(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        missing = self._audience_or_error(match)
        if missing is not None:
            return missing
        parsed = self._parse(req)
        if isinstance(parsed, Reply):
            return parsed
        rows, invalid = parsed
        refused = self.kit_check([dict(row).get("EMAIL", "") for row in rows])
        if refused is not None:
            return refused
        for row in rows:
            self._drop(self._matches(row))
        return self._counts(len(rows) + invalid, invalid)

    def _counts(self, received: int, invalid: int) -> Reply:
        body = {
            "audience_id": self.audience_id,
            "session_id": "1",
            "num_received": received,
            "num_invalid_entries": invalid,
            "invalid_entry_samples": {},
        }
        return Reply(200, body)
