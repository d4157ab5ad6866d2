"""A member whose add was sent but never confirmed, and who then left the segment, is removed
at destinations that assign their own ids (HubSpot record ids, Salesforce CampaignMember ids).

A process killed between a send and its answer leaves the record marked in the state database
(``unsure`` 1, no destination id: syncer never learnt the vendor's id), while the vendor did
apply it. The tests set that state directly, as such a kill leaves it (tests/test_crash.py
shows the kills do), with the member already at the emulated vendor. The next run, the real
CLI, must find it by its key and remove it.
"""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa

from tests.fake_hubspot import FakeHubSpot
from tests.fake_salesforce import FakeSalesforce
from tests.test_e2e_hubspot import COLUMNS as HS_COLUMNS
from tests.test_e2e_hubspot import MAPPING as HS_MAPPING
from tests.test_e2e_hubspot import TOKEN as HS_TOKEN
from tests.test_e2e_hubspot import people as hs_people
from tests.test_e2e_salesforce import CAMPAIGN
from tests.test_e2e_salesforce import COLUMNS as SF_COLUMNS
from tests.test_e2e_salesforce import MAPPING as SF_MAPPING
from tests.test_e2e_salesforce import TOKEN as SF_TOKEN
from tests.test_e2e_salesforce import people as sf_people
from tests.vendor_emulator import SyncRun


def forget_the_answer(run: SyncRun, key: str) -> None:
    """What a kill between the send of ``key``'s add and its answer leaves in state."""
    engine = sa.create_engine(run.env["SYNCER_STATE_URL"])
    with engine.begin() as conn:
        changed = conn.execute(
            sa.text("update syncer_records set unsure = 1, destination_id = null where key = :k"),
            {"k": key},
        ).rowcount
    engine.dispose()
    assert changed == 1


def plan(run: SyncRun) -> dict[str, int]:
    proc = run.cli("plan", run.name, "--json")
    assert proc.returncode == 0, proc.stderr
    document: dict[str, int] = json.loads(proc.stdout)
    return document


def test_hubspot_finds_the_contact_by_email_and_takes_it_off_the_list(tmp_path: Path) -> None:
    with FakeHubSpot(HS_TOKEN) as vendor:
        env = {"HUBSPOT_TOKEN": HS_TOKEN, "HUBSPOT_BASE_URL": vendor.url}
        run = SyncRun(tmp_path, HS_MAPPING, "crm_vip", env=env)
        rows = hs_people(["ada", "bob", "cy", "dee"])
        run.segment(HS_COLUMNS, rows)
        assert run.sync()[0] == 0
        assert set(vendor.members()) == {r[0] for r in rows}

        forget_the_answer(run, "cy@example.com")
        run.segment(HS_COLUMNS, [r for r in rows if r[0] != "cy@example.com"])
        planned = plan(run)
        assert (planned["remove"], planned["unconfirmed"]) == (1, 1)

        code, doc = run.sync()
        assert code == 0, doc
        assert doc["runs"][0]["removed"] == 1
        assert set(vendor.members()) == {"ada@example.com", "bob@example.com", "dee@example.com"}
        reads = [r for r in vendor.requests if r.url.endswith("/batch/read")]
        assert len(reads) == 1 and reads[0].json()["inputs"] == [{"id": "cy@example.com"}]


def test_salesforce_finds_the_member_by_external_id_and_deletes_it(tmp_path: Path) -> None:
    with FakeSalesforce(SF_TOKEN, CAMPAIGN) as vendor:
        env = {"SALESFORCE_ACCESS_TOKEN": SF_TOKEN, "SALESFORCE_INSTANCE_URL": vendor.url}
        run = SyncRun(tmp_path, SF_MAPPING, "sf_vip", env=env)
        rows = sf_people(range(1, 6))
        run.segment(SF_COLUMNS, rows)
        assert run.sync()[0] == 0
        assert vendor.campaign_contacts() == {r[0] for r in rows}

        forget_the_answer(run, "w-03")
        run.segment(SF_COLUMNS, [r for r in rows if r[0] != "w-03"])
        assert plan(run)["remove"] == 1

        code, doc = run.sync()
        assert code == 0, doc
        assert doc["runs"][0]["removed"] == 1
        assert vendor.campaign_contacts() == {"w-01", "w-02", "w-04", "w-05"}
