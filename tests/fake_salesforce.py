"""A local Salesforce org that keeps Contacts (by external id) and CampaignMembers.

It follows ../shared/reference/destinations.md sections 2 and 14: sObject Collections answer
200 with an ordered ``[{id, success, errors, created}]``, more than 200 records is a 400, a
second CampaignMember for the same contact fails with ``DUPLICATE_VALUE``, every answer carries
``Sforce-Limit-Info: api-usage=N/M``, and a spent allocation is 403 ``REQUEST_LIMIT_EXCEEDED``.
A SOQL query on CampaignMember by CampaignId and ContactId is understood (enough for the
duplicate look-up). Bulk API 2.0 is not emulated: the connector does not use it.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from tests.contract import CapturedRequest
from tests.vendor_emulator import Reply, VendorEmulator

V = r"/services/data/v(?P<version>\d+\.\d)"
_CAMPAIGN_BY_NAME = re.compile(
    r"SELECT Id, Name FROM Campaign WHERE Name = '(?P<name>(?:[^'\\]|\\.)*)'"
)
_IN = re.compile(r"ContactId IN \(([^)]*)\)")
_BY_EXTERNAL = re.compile(
    r"SELECT Id, (?P<field>\w+) FROM Contact WHERE (?P=field) IN \((?P<values>.*)\)"
)
_SOQL_STRING = re.compile(r"'((?:[^'\\]|\\.)*)'")


def _unquote(literal: str) -> str:
    return re.sub(r"\\(.)", r"\1", literal)


class FakeSalesforce(VendorEmulator):
    """``reject_last_names`` holds LastName values the org's validation rule refuses."""

    base_url = "https://salesforce.fake"
    batch_cap = 200  # sObject Collections

    endpoints: ClassVar[list[tuple[str, str, str]]] = [
        ("PATCH", V + r"/composite/sobjects/(?P<sobject>\w+)/(?P<field>\w+)", "upsert"),
        ("POST", V + r"/composite/sobjects", "insert"),
        ("DELETE", V + r"/composite/sobjects", "delete"),
        ("GET", V + r"/query", "query"),
        ("GET", V + r"/query/01g-(?P<cursor>\d+)", "query_more"),
        ("GET", V + r"/sobjects/(?P<sobject>\w+)/describe", "describe"),
        ("GET", V + r"/sobjects/Campaign/(?P<id>\w+)", "campaign"),
        ("POST", V + r"/sobjects/Campaign", "create_campaign"),
    ]

    def __init__(self, token: str, campaign_id: str | None, allocation: int = 100_000) -> None:
        super().__init__()
        self.token = token
        #: The campaign whose members are kept: the one given, else the first one created.
        self.campaign_id = campaign_id
        #: Every campaign: Id -> Name (names need not be unique in Salesforce).
        self.campaigns: dict[str, str] = {campaign_id: "Emulated"} if campaign_id else {}
        #: Seconds the answer to a campaign creation is held (it exists meanwhile).
        self.create_delay = 0.0
        #: Rows per page of a campaign query (``nextRecordsUrl`` beyond), to test paging.
        self.page_size = 2
        self._cursors: dict[str, tuple[list[dict[str, Any]], str]] = {}
        self.contacts: dict[str, dict[str, Any]] = {}  # Id -> fields
        self.by_external: dict[str, str] = {}
        # member Id -> (CampaignId, ContactId)
        self.campaign_members: dict[str, tuple[str, str]] = {}
        self.reject_last_names: set[str] = set()
        self.allocation = allocation
        self.used = 0
        self._seq = 0

    def _id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}xx{self._seq:013d}"[:18].ljust(18, "A")

    def members(self) -> dict[str, dict[str, Any]]:
        """The campaign's members: external id to the contact's fields."""
        with self.lock:
            external = {cid: ext for ext, cid in self.by_external.items()}
            return {
                external[contact]: dict(self.contacts[contact])
                for campaign, contact in self.campaign_members.values()
                if campaign == self.campaign_id
            }

    def _external(self, contact_id: str) -> str:
        """The external id of a contact (its own id when unknown), for the kit's knobs."""
        for ext, cid in self.by_external.items():
            if cid == contact_id:
                return ext
        return contact_id

    def campaign_contacts(self) -> set[str]:
        """External ids of the campaign's members."""
        with self.lock:
            external = {cid: ext for ext, cid in self.by_external.items()}
            return {
                external[contact]
                for campaign, contact in self.campaign_members.values()
                if campaign == self.campaign_id
            }

    def dispatch(self, req: CapturedRequest) -> Reply:
        if self.is_token_request(req):
            return VendorEmulator.dispatch(self, req)
        with self.lock:
            if not self.accepts(req.headers.get("Authorization")):
                self.requests.append(req)
                return Reply(
                    401,
                    [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}],
                )
            self.used += 1
            if self.used > self.allocation:
                self.requests.append(req)
                return Reply(
                    403,
                    [
                        {
                            "message": "TotalRequests Limit exceeded.",
                            "errorCode": "REQUEST_LIMIT_EXCEEDED",
                        }
                    ],
                )
            reply = super().dispatch(req)
            usage = f"api-usage={self.used}/{self.allocation}; api-bursts=1/750"
            reply.headers = {"Sforce-Limit-Info": usage, **reply.headers}
            return reply

    def __enter__(self) -> FakeSalesforce:
        super().__enter__()
        return self

    # -- routes -------------------------------------------------------------------------

    def _records(self, req: CapturedRequest) -> list[dict[str, Any]] | Reply:
        body = req.json() or {}
        records = body.get("records")
        if not isinstance(records, list) or body.get("allOrNone") is not False:
            return Reply(400, [{"errorCode": "JSON_PARSER_ERROR", "message": "bad body"}])
        if len(records) > 200:
            return Reply(
                400, [{"errorCode": "EXCEEDED_ID_LIMIT", "message": "record limit is 200"}]
            )
        return records

    def upsert(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        records = self._records(req)
        if isinstance(records, Reply):
            return records
        field = match["field"]
        refused = self.kit_check([str(r.get(field) or "") for r in records])
        if refused is not None:
            return refused
        out: list[dict[str, Any]] = []
        for record in records:
            if record.get("attributes", {}).get("type") != match["sobject"] or "Id" in record:
                return Reply(400, [{"errorCode": "INVALID_TYPE", "message": "bad record"}])
            external = str(record.get(field) or "")
            values = {k: v for k, v in record.items() if k != "attributes"}
            if not values.get("LastName") and external not in self.by_external:
                out.append(
                    _error("REQUIRED_FIELD_MISSING", "Required fields are missing: [LastName]")
                )
                continue
            if values.get("LastName") in self.reject_last_names or self.record_refused(external):
                out.append(_error("FIELD_CUSTOM_VALIDATION_EXCEPTION", "Last name is not allowed"))
                continue
            created = external not in self.by_external
            if created:
                self.by_external[external] = self._id("003")
            contact = self.by_external[external]
            self.contacts.setdefault(contact, {}).update(values)
            out.append({"id": contact, "success": True, "errors": [], "created": created})
        return Reply(200, out)

    def insert(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        records = self._records(req)
        if isinstance(records, Reply):
            return records
        contacts = [str(r.get("ContactId")) for r in records]
        refused = self.kit_check([self._external(c) for c in contacts])
        if refused is not None:
            return refused
        out: list[dict[str, Any]] = []
        for record in records:
            if record.get("attributes", {}).get("type") != "CampaignMember":
                return Reply(400, [{"errorCode": "INVALID_TYPE", "message": "bad record"}])
            pair = (record.get("CampaignId"), record.get("ContactId"))
            if pair[0] != self.campaign_id or pair[1] not in self.contacts:
                out.append(_error("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id"))
            elif pair in self.campaign_members.values():
                out.append(_error("DUPLICATE_VALUE", "Already a campaign member."))
            else:
                member = self._id("00v")
                self.campaign_members[member] = (str(pair[0]), str(pair[1]))
                out.append({"id": member, "success": True, "errors": []})
        return Reply(200, out)

    def delete(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        query = parse_qs(urlsplit(req.url).query)
        ids = query.get("ids", [""])[0].split(",")
        if query.get("allOrNone") != ["false"] or len(ids) > 200:
            return Reply(400, [{"errorCode": "INVALID_QUERY", "message": "bad delete"}])
        pairs = [self.campaign_members.get(m) for m in ids]
        refused = self.kit_check(
            [self._external(p[1]) if p else m for p, m in zip(pairs, ids, strict=True)]
        )
        if refused is not None:
            return refused
        out: list[dict[str, Any]] = []
        for member in ids:
            if self.campaign_members.pop(member, None) is None:
                out.append({"id": member, **_error("ENTITY_IS_DELETED", "entity is deleted")})
            else:
                out.append({"id": member, "success": True, "errors": []})
        return Reply(200, out)

    def query(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        soql = parse_qs(urlsplit(req.url).query).get("q", [""])[0]
        by_external = _BY_EXTERNAL.fullmatch(soql)
        if by_external is not None:  # contacts by their external id (SOQL strings)
            wanted = {_unquote(v) for v in _SOQL_STRING.findall(by_external["values"])}
            rows = [
                {"attributes": {"type": "Contact"}, "Id": contact, by_external["field"]: ext}
                for ext, contact in self.by_external.items()
                if ext in wanted
            ]
            return Reply(200, {"totalSize": len(rows), "done": True, "records": rows})
        named = _CAMPAIGN_BY_NAME.fullmatch(soql)
        if named is not None:
            wanted = _unquote(named["name"])
            rows = [
                {"attributes": {"type": "Campaign"}, "Id": i, "Name": n}
                for i, n in sorted(self.campaigns.items())
                if n == wanted
            ]
            return self._page(rows, 0, soql)
        found = _IN.search(soql)
        if not soql.startswith("SELECT Id, ContactId FROM CampaignMember") or not found:
            return Reply(400, [{"errorCode": "MALFORMED_QUERY", "message": "unsupported"}])
        wanted = {part.strip().strip("'") for part in found[1].split(",")}
        rows = [
            {"attributes": {"type": "CampaignMember"}, "Id": member, "ContactId": contact}
            for member, (campaign, contact) in self.campaign_members.items()
            if campaign == self.campaign_id and contact in wanted
        ]
        return Reply(200, {"totalSize": len(rows), "done": True, "records": rows})

    def _page(self, rows: list[dict[str, Any]], start: int, soql: str) -> Reply:
        """``page_size`` rows from ``start``, with a ``nextRecordsUrl`` while more remain."""
        page = rows[start : start + self.page_size]
        body: dict[str, Any] = {
            "totalSize": len(rows),
            "done": start + len(page) >= len(rows),
            "records": page,
        }
        if not body["done"]:
            self._cursors[str(start + len(page))] = (rows, soql)
            body["nextRecordsUrl"] = f"/services/data/v53.0/query/01g-{start + len(page)}"
        return Reply(200, body)

    def query_more(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        rows, soql = self._cursors[match["cursor"]]
        return self._page(rows, int(match["cursor"]), soql)

    def create_campaign(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        body = req.json() or {}
        name = body.get("Name")
        if not isinstance(name, str) or not name:
            return Reply(
                400, [_error("REQUIRED_FIELD_MISSING", "Required fields are missing: [Name]")]
            )
        campaign_id = self._id("701")
        self.campaigns[campaign_id] = name
        if self.campaign_id is None:
            self.campaign_id = campaign_id
        reply = {"id": campaign_id, "success": True, "errors": []}
        return Reply(201, reply, delay=self.create_delay)

    def describe(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        fields = [
            {"name": "Id", "externalId": False, "idLookup": True},
            {"name": "Email", "externalId": False},
            {"name": "LastName", "externalId": False},
            {"name": "Warehouse_Id__c", "externalId": True, "idLookup": True},
        ]
        return Reply(200, {"name": match["sobject"], "fields": fields})

    def campaign(self, req: CapturedRequest, match: re.Match[str]) -> Reply:
        if match["id"] != self.campaign_id:
            return Reply(
                404,
                [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}],
            )
        return Reply(200, {"attributes": {"type": "Campaign"}, "Id": self.campaign_id})


def _error(code: str, message: str) -> dict[str, Any]:
    return {"success": False, "errors": [{"statusCode": code, "message": message, "fields": []}]}
