"""SendGrid end to end: ``syncer sync now`` against a local stateful SendGrid, over a first run,
a churn run and a retry run, with a 429 and a contact the import job refuses."""

from __future__ import annotations

from pathlib import Path

from tests.contract import spec
from tests.fake_sendgrid import FakeSendGrid
from tests.vendor_emulator import Reply, SyncRun

KEY = "SG.e2e-key-0123456789abcdef"
LIST = "5f0c1a5e-7d1b-4a8e-9b0e-3f2d6c8a9b10"
BLOCKED = "zed@suppressed.example.com"

MAPPING = """
name: sendgrid_vip
source:
  query: select email, first_name, plan from segment
  key: email
  key_type: email
mode: mirror
fields:
  email: {{column: email, type: email}}
  first_name: first_name
  plan: plan
destination:
  connector: sendgrid
  api_key: ${{SENDGRID_API_KEY}}
  list_ids: ["{list_id}"]
  custom_field_ids: {{plan: e1_T}}
  base_url: {url}
  batch_size: 10
  poll_interval: 0.05
"""


def people(numbers: range | list[int], name: str = "Name") -> list[tuple[str, str, str]]:
    return [(f"person{n:02}@example.com", f"{name}{n}", "gold") for n in numbers]


def test_churn_through_the_cli(tmp_path: Path) -> None:
    with FakeSendGrid(KEY, LIST) as vendor:
        assert isinstance(vendor, FakeSendGrid)
        vendor.blocked_domains = {"suppressed.example.com"}
        run = SyncRun(
            tmp_path,
            MAPPING.format(list_id=LIST, url=vendor.url),
            "sendgrid_vip",
            env={"SENDGRID_API_KEY": KEY},
        )
        columns = ("email", "first_name", "plan")
        first = [*people(range(24)), (BLOCKED, "Zed", "gold")]
        run.segment(columns, first)
        too_many = {"errors": [{"field": None, "message": "too many requests"}]}
        vendor.fail_next(
            r"/v3/marketing/contacts$",
            Reply(429, too_many, headers={"Retry-After": "1"}),
            method="PUT",
        )

        code, doc = run.sync()
        summary = doc["runs"][0]
        assert code == 1, doc
        assert (summary["added"], summary["rejected"]) == (24, 1)
        assert vendor.statuses[429] == 1 and vendor.pending_faults() == 0
        assert set(vendor.members()) == {row[0] for row in first} - {BLOCKED}
        proc = run.cli("run", "show", summary["run_id"], "--json")
        assert "SendGrid import job errored (1 of 5 contacts errored)" in proc.stdout
        assert BLOCKED not in proc.stdout

        churn = [
            *people(range(4, 10)),
            *people(range(10, 16), name="Renamed"),
            *people(range(16, 24)),
            *people([30, 31, 32]),
            (BLOCKED, "Zed", "gold"),
        ]
        run.segment(columns, churn)
        before = len(vendor.requests)
        code, doc = run.sync()
        summary = doc["runs"][0]
        assert code == 1, doc
        assert (summary["added"], summary["updated"], summary["removed"]) == (3, 6, 4)
        assert set(vendor.members()) == {row[0] for row in churn} - {BLOCKED}
        assert vendor.contacts["person12@example.com"]["first_name"] == "Renamed12"
        assert vendor.contacts["person12@example.com"]["custom_fields"] == {"e1_T": "gold"}
        searched = [
            e
            for r in vendor.requests[before:]
            if r.url.startswith("/v3/marketing/contacts/search")
            for e in (r.json() or {})["emails"]
        ]
        # Only contacts without a kept id are looked up: the 3 new and the refused one.
        assert sorted(searched) == sorted([BLOCKED, *(row[0] for row in people([30, 31, 32]))])
        removals = vendor.requests_to(r"/v3/marketing/lists/.*/contacts$", method="DELETE")
        assert len(removals) == 1

        vendor.blocked_domains = set()
        code, doc = run.sync()
        assert code == 0, doc
        assert doc["runs"][0]["added"] == 1
        assert set(vendor.members()) == {row[0] for row in churn}

        contacts, lists = spec("sendgrid_contacts.json"), spec("sendgrid_lists.json")
        for request in vendor.requests:
            (lists if request.url.startswith("/v3/marketing/lists") else contacts).validate(request)
