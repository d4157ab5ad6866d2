"""Salesforce end to end: the real CLI drives the connector against a local emulated org over a
churn scenario with a 403 REQUEST_LIMIT_EXCEEDED, a 429, a contact that was already a campaign
member and one contact the org's validation refuses; at the end the campaign equals the segment.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tests.fake_salesforce import FakeSalesforce
from tests.vendor_emulator import Reply, SyncRun

TOKEN = "00Dxx0000001gPL!e2e-access-token"
CAMPAIGN = "701xx000000AbCdAAK"
MAPPING = f"""
name: sf_vip
source:
  query: select id, email, first_name, last_name from segment
  key: id
mode: mirror
fields:
  Email: {{column: email, type: email}}
  FirstName: first_name
  LastName: last_name
destination:
  connector: salesforce
  base_url: ${{SALESFORCE_INSTANCE_URL}}
  access_token: ${{SALESFORCE_ACCESS_TOKEN}}
  external_id_field: Warehouse_Id__c
  campaign_id: {CAMPAIGN}
  batch_size: 4
guards:
  max_remove_pct: 50
"""
COLUMNS = ("id", "email", "first_name", "last_name")
BAD = "w-99"


def people(numbers: range) -> list[tuple[str, str, str, str]]:
    return [(f"w-{n:02d}", f"p{n}@example.com", f"P{n}", f"Last{n}") for n in numbers]


def sync(run: SyncRun) -> tuple[int, dict[str, Any]]:
    code, doc = run.sync()
    return code, doc["runs"][0]


def synced(run: SyncRun) -> dict[str, str | None]:
    engine = sa.create_engine(run.env["SYNCER_STATE_URL"])
    with engine.connect() as conn:
        rows = conn.execute(sa.text("select key, destination_id from syncer_records")).all()
    engine.dispose()
    return {k: d for k, d in rows}


def test_churn_with_rate_limits_duplicates_and_a_rejected_contact(tmp_path: Path) -> None:
    with FakeSalesforce(TOKEN, CAMPAIGN) as org:
        # w-01 already exists in the org and is already a campaign member.
        org.by_external["w-01"] = existing = "003xx9999999999AAA"
        org.contacts[existing] = {"LastName": "Old"}
        org.campaign_members["00vxx9999999999AAA"] = (CAMPAIGN, existing)
        org.reject_last_names.add("Forbidden")
        run = SyncRun(
            tmp_path,
            MAPPING,
            "sf_vip",
            env={"SALESFORCE_ACCESS_TOKEN": TOKEN, "SALESFORCE_INSTANCE_URL": org.url},
        )
        first = [*people(range(1, 11)), (BAD, "bad@example.com", "Bad", "Forbidden")]
        run.segment(COLUMNS, first)
        proc = run.cli("check", "sf_vip", "--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr

        limit = [
            {"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}
        ]
        org.fail_next(r"/composite/sobjects/Contact/", Reply(403, limit), method="PATCH")
        org.fail_next(
            r"/composite/sobjects$", Reply(429, None, headers={"Retry-After": "1"}), method="POST"
        )
        code, doc = sync(run)
        assert code == 1, doc
        assert (doc["added"], doc["rejected"]) == (10, 1)
        assert org.statuses[403] == 1 and org.statuses[429] == 1 and org.pending_faults() == 0
        assert org.campaign_contacts() == {r[0] for r in first} - {BAD}
        # Only the duplicate was looked up, once.
        queries = org.requests_to(r"/query$")
        assert len(queries) == 1 and existing in queries[0].url

        shown = json.loads(run.cli("run", "show", doc["run_id"], "--json").stdout)["run"]
        reasons = [p["reason"] for p in shown["problems"] if p["outcome"] == "rejected"]
        assert reasons == ["FIELD_CUSTOM_VALIDATION_EXCEPTION: Last name is not allowed"]
        state = synced(run)
        assert BAD not in state
        assert state["w-01"] == f"{existing}:00vxx9999999999AAA"
        member_of = {contact: member for member, (_, contact) in org.campaign_members.items()}
        for key, stored in state.items():
            contact, member = (stored or "").split(":")
            assert org.by_external[key] == contact and member_of[contact] == member

        # Churn: three leave, three join, two change fields.
        second = [r for r in first if r[0] not in {"w-02", "w-03", "w-04"}]
        second = [
            (i, e, f"{f}!", ln) if i in {"w-05", "w-06"} else (i, e, f, ln)
            for i, e, f, ln in second
        ]
        second += people(range(11, 14))
        run.segment(COLUMNS, second)
        code, doc = sync(run)
        assert code == 1, doc
        assert (doc["added"], doc["removed"], doc["updated"], doc["rejected"]) == (3, 3, 2, 1)
        assert len(org.requests_to(r"/query$")) == 1  # removal never searched
        deletes = org.requests_to(r"/composite/sobjects$", "DELETE")
        assert len(deletes) == 1
        assert org.contacts[org.by_external["w-05"]]["FirstName"] == "P5!"
        assert org.campaign_contacts() == {r[0] for r in second} - {BAD}

        # The validation rule is lifted: the next run adds the contact and exits 0.
        org.reject_last_names.clear()
        code, doc = sync(run)
        assert code == 0, doc
        assert doc["added"] == 1
        assert org.campaign_contacts() == {r[0] for r in second}
        assert set(synced(run)) == {r[0] for r in second}
