"""HubSpot end to end: the real CLI drives the connector against a local emulated HubSpot over
a churn scenario with a scripted 429 and one contact HubSpot refuses; at the end the emulated
list holds exactly the segment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tests.fake_hubspot import FakeHubSpot
from tests.vendor_emulator import Reply, SyncRun

TOKEN = "pat-na1-e2e-secret-token"
MAPPING = """
name: crm_vip
source:
  query: select email, first_name, ltv from segment
  key: email
  key_type: email
mode: mirror
fields:
  email: {column: email, type: email}
  firstname: first_name
  ltv: {column: ltv, type: number}
destination:
  connector: hubspot
  token: ${HUBSPOT_TOKEN}
  base_url: ${HUBSPOT_BASE_URL}
  list_id: "77"
  batch_size: 4
guards:
  max_remove_pct: 50
"""
COLUMNS = ("email", "first_name", "ltv")
BAD = "broken@example.com"


def people(names: list[str]) -> list[tuple[str, str, str]]:
    return [(f"{n}@example.com", n.title(), str(len(n) * 10)) for n in names]


def synced_keys(run: SyncRun) -> dict[str, str | None]:
    engine = sa.create_engine(run.env["SYNCER_STATE_URL"])
    with engine.connect() as conn:
        rows = conn.execute(sa.text("select key, destination_id from syncer_records")).all()
    engine.dispose()
    return {k: d for k, d in rows}


def sync(run: SyncRun) -> tuple[int, dict[str, Any]]:
    """``sync now --json``: the exit code and the one run's summary."""
    code, doc = run.sync()
    return code, doc["runs"][0]


def test_churn_with_429_and_a_rejected_contact(tmp_path: Path) -> None:
    with FakeHubSpot(TOKEN) as vendor:
        run = SyncRun(
            tmp_path,
            MAPPING,
            "crm_vip",
            env={"HUBSPOT_TOKEN": TOKEN, "HUBSPOT_BASE_URL": vendor.url},
        )
        first = [*people(["ada", "bob", "cy", "dee", "eve", "fay", "gus", "hal", "ivy", "jo"])]
        first.append((BAD, "Broken", "1"))
        vendor.reject.add(BAD)
        run.segment(COLUMNS, first)
        proc = run.cli("check", "crm_vip", "--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr

        vendor.fail_next(
            r"/batch/upsert$",
            Reply(429, {"policyName": "TEN_SECONDLY_ROLLING"}, headers={"Retry-After": "1"}),
        )
        code, doc = sync(run)
        assert code == 1, doc
        assert doc["added"] == 10 and doc["rejected"] == 1
        assert vendor.statuses[429] == 1 and vendor.pending_faults() == 0
        assert set(vendor.members()) == {row[0] for row in first} - {BAD}

        shown = json.loads(run.cli("run", "show", doc["run_id"], "--json").stdout)["run"]
        reasons = [p["reason"] for p in shown["problems"] if p["outcome"] == "rejected"]
        assert reasons == ["VALIDATION_ERROR: Email address *** is invalid"]
        state = synced_keys(run)
        assert BAD not in state
        assert state["ada@example.com"] == vendor.by_email["ada@example.com"]

        # Churn: three leave, three join, two change fields.
        second = [r for r in first if r[0] not in {"bob@example.com", "cy@example.com"}]
        second = [r for r in second if r[0] != "dee@example.com"]
        second = [
            (e, f"{n}!", ltv) if e in {"eve@example.com", "fay@example.com"} else (e, n, ltv)
            for e, n, ltv in second
        ]
        second += people(["kim", "lou", "max"])
        run.segment(COLUMNS, second)
        before = len(vendor.requests_to(r"/search|/batch/read"))
        code, doc = sync(run)
        assert code == 1, doc
        assert (doc["added"], doc["removed"], doc["updated"], doc["rejected"]) == (3, 3, 2, 1)
        assert len(vendor.requests_to(r"/search|/batch/read")) == before == 0
        removal = vendor.requests_to(r"/memberships/remove$", "PUT")
        assert sorted(json.loads(removal[0].body)) == sorted(
            vendor.by_email[e] for e in ("bob@example.com", "cy@example.com", "dee@example.com")
        )
        assert vendor.contacts[vendor.by_email["eve@example.com"]]["firstname"] == "Eve!"
        assert set(vendor.members()) == {row[0] for row in second} - {BAD}

        # HubSpot accepts the address now: the next run adds it and exits 0.
        vendor.reject.clear()
        code, doc = sync(run)
        assert code == 0, doc
        assert doc["added"] == 1
        assert set(vendor.members()) == {row[0] for row in second}
        assert set(synced_keys(run)) == {row[0] for row in second}
