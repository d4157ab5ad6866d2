"""Klaviyo end to end: ``syncer sync now`` against a local stateful Klaviyo, over a first run,
a churn run and a retry run, with a 429 and a profile Klaviyo refuses."""

from __future__ import annotations

from pathlib import Path

from tests.contract import spec
from tests.fake_klaviyo import FakeKlaviyo
from tests.vendor_emulator import Reply, SyncRun

KEY = "pk_e2e_0123456789abcdef"
LIST = "XyZ123"
BLOCKED = "zed@suppressed.example.com"

MAPPING = """
name: klaviyo_vip
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
  connector: klaviyo
  api_key: ${{KLAVIYO_API_KEY}}
  list_id: {list_id}
  base_url: {url}
  batch_size: 10
  bulk_threshold: 5
  poll_interval: 0.05
"""


def people(numbers: range | list[int], name: str = "Name") -> list[tuple[str, str, str]]:
    return [(f"person{n:02}@example.com", f"{name}{n}", "gold") for n in numbers]


def test_churn_through_the_cli(tmp_path: Path) -> None:
    with FakeKlaviyo(KEY, LIST) as vendor:
        assert isinstance(vendor, FakeKlaviyo)
        vendor.blocked_domains = {"suppressed.example.com"}
        run = SyncRun(
            tmp_path,
            MAPPING.format(list_id=LIST, url=vendor.url),
            "klaviyo_vip",
            env={"KLAVIYO_API_KEY": KEY},
        )
        columns = ("email", "first_name", "plan")
        first = [*people(range(24)), (BLOCKED, "Zed", "gold")]
        run.segment(columns, first)
        vendor.fail_next(
            r"/api/profile-bulk-import-jobs$",
            Reply(429, headers={"Retry-After": "1"}),
            method="POST",
        )

        code, doc = run.sync()
        summary = doc["runs"][0]
        assert code == 1, doc
        assert (summary["added"], summary["rejected"]) == (24, 1)
        assert vendor.statuses[429] == 1 and vendor.pending_faults() == 0
        assert vendor.member_emails() == {row[0] for row in first} - {BLOCKED}
        proc = run.cli("run", "show", summary["run_id"], "--json")
        assert "on a suppressed domain" in proc.stdout
        assert BLOCKED not in proc.stdout

        # Churn: 4 leave, 3 join (small batch: profile-import), 6 change (a bulk job).
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
        assert summary["rejected"] == 1
        assert vendor.member_emails() == {row[0] for row in churn} - {BLOCKED}
        renamed = vendor.profiles[vendor.by_email["person12@example.com"]]
        assert renamed["first_name"] == "Renamed12"
        churn_paths = [r.url.split("?")[0] for r in vendor.requests[before:]]
        assert "/api/profiles" not in churn_paths  # removal used the kept ids: no search
        assert churn_paths.count(f"/api/lists/{LIST}/relationships/profiles") == 2  # add + remove

        # The refused profile was never marked synced: once Klaviyo takes it, it lands.
        vendor.blocked_domains = set()
        code, doc = run.sync()
        assert code == 0, doc
        assert doc["runs"][0]["added"] == 1
        assert vendor.member_emails() == {row[0] for row in churn}

        contract = spec("klaviyo_stable.json")
        for request in vendor.requests:
            contract.validate(request)
