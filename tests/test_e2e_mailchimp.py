"""Mailchimp end to end: ``syncer sync now`` against a stateful local Mailchimp, for every
membership mechanism (a tag changed as a static segment, a tag set per member, a static segment
id), over first run, churn and a quiet run, with a bare 429 and one address Mailchimp refuses.
At the end the tag/segment holds exactly the segment. In tag mode the tag does not exist
before the first run: it is created once, then found (on a later page) by the next run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fake_mailchimp import FakeMailchimp
from tests.vendor_emulator import Reply, SyncRun

KEY = "e2e0123456789abcdef0123456789ab-us21"
LIST = "aud123"
BAD = "bad@invalid.example"
COLUMNS = ("email", "first_name")

MAPPING = """
name: mc_vip
source:
  query: select email, first_name from segment
  key: email
  key_type: email
mode: mirror
fields:
  email: {{column: email, type: email}}
  FNAME: first_name
destination:
  connector: mailchimp
  api_key: ${{MAILCHIMP_API_KEY}}
  base_url: {url}/3.0
  list_id: {list_id}
  {mechanism}
  batch_size: 4
guards:
  max_remove_pct: 100
"""


def people(numbers: range, name: str = "P") -> list[tuple[str, str]]:
    return [(f"p{i}@example.com", f"{name}{i}") for i in numbers]


MECHANISMS = {
    "tag-segment": "tag: vip",
    "tag-member": "tag: vip\n  tag_method: member",
    "segment-id": "segment_id: 42",
}
TAGS = r"/members/[0-9a-f]{32}/tags$"
SEGMENT_CALLS = r"/segments/\d+$"


@pytest.mark.parametrize("mechanism", MECHANISMS.values(), ids=list(MECHANISMS))
def test_churn_with_429_and_a_rejected_address(tmp_path: Path, mechanism: str) -> None:
    by_segment = "tag_method" not in mechanism
    with FakeMailchimp(KEY, LIST) as vendor:
        assert isinstance(vendor, FakeMailchimp)
        vendor.invalid[BAD] = "This email address looks fake or invalid."
        for name in ("newsletter", "VIP", "vip-old"):  # near misses: the name must match exactly
            vendor.add_segment(name)
        vendor.max_count = 2  # so the tag lookup has to page
        run = SyncRun(
            tmp_path,
            MAPPING.format(url=vendor.url, list_id=LIST, mechanism=mechanism),
            "mc_vip",
            env={"MAILCHIMP_API_KEY": KEY},
        )

        def members() -> set[str]:
            return vendor.tagged("vip") if mechanism.startswith("tag") else vendor.segment_members()

        # First run: 12 people plus one refused address; one bare 429 on batch subscribe.
        run.segment(COLUMNS, [*people(range(12)), (BAD, "Bad")])
        check = run.cli("check", "mc_vip", "--json")
        assert check.returncode == 0, check.stdout + check.stderr
        assert not vendor.requests_to(r"/segments$", "POST")  # a missing tag is fine; no writes
        vendor.fail_next(
            r"/lists/[^/]+$", Reply(429, {"title": "Too Many Requests"}), method="POST"
        )
        code, doc = run.sync()
        first = doc["runs"][0]
        assert code == 1, doc
        assert first["added"] == 12 and first["rejected"] == 1
        assert vendor.pending_faults() == 0 and vendor.statuses[429] == 1
        assert members() == {f"p{i}@example.com" for i in range(12)}
        if mechanism.startswith("tag"):
            assert vendor.tag_segment("vip") is not None
            created = vendor.requests_to(r"/segments$", "POST")
            assert [r.json() for r in created] == (
                [{"name": "vip", "static_segment": []}] if by_segment else []
            )
        # One membership call per answered batch with someone subscribed, or one per member.
        batches = {
            tuple(m["email_address"] for m in r.json()["members"] if m["email_address"] != BAD)
            for r in vendor.requests_to(r"/lists/[^/]+$", "POST")
        } - {()}
        assert len(batches) == 4  # 13 rows, 4 a batch
        assert len(vendor.requests_to(TAGS)) == (0 if by_segment else 12)
        segment_calls = vendor.requests_to(SEGMENT_CALLS, "POST")
        assert len(segment_calls) == (len(batches) if by_segment else 0)
        assert {tuple(r.json()["members_to_add"]) for r in segment_calls} <= batches
        first_requests = len(vendor.requests)

        shown = run.cli("run", "show", first["run_id"], "--json")
        problems = json.loads(shown.stdout)["run"]["problems"]
        assert [p["outcome"] for p in problems] == ["rejected"]
        assert "looks fake or invalid" in problems[0]["reason"]
        assert BAD not in shown.stdout

        # Churn: 0-2 leave, 12-14 join, 3-4 change their name, the refused address leaves.
        rows = people(range(3, 15))
        rows = [(e, "Changed" if e in ("p3@example.com", "p4@example.com") else n) for e, n in rows]
        run.segment(COLUMNS, rows)
        code, doc = run.sync()
        churn = doc["runs"][0]
        assert code == 0, doc
        assert (churn["added"], churn["removed"], churn["updated"]) == (3, 3, 2)
        assert churn["rejected"] == 0

        expected = {f"p{i}@example.com" for i in range(3, 15)}
        assert members() == expected
        churn_requests = vendor.requests[first_requests:]
        lookups = [r for r in churn_requests if r.method == "GET" and "/segments?" in r.url]
        if mechanism == "tag: vip":  # found again on the third page: 4 segments before it, 2 a page
            assert [r.url.split("offset=")[1].split("&")[0] for r in lookups] == ["0", "2", "4"]
        else:
            assert not lookups
        assert len(vendor.requests_to(r"/segments$", "POST")) == (
            1 if mechanism == "tag: vip" else 0
        )
        hashes = {m.email: m for m in vendor.audience.values()}
        assert hashes["p3@example.com"].merge_fields == {"FNAME": "Changed"}
        assert hashes["p14@example.com"].merge_fields == {"FNAME": "P14"}
        assert BAD not in hashes

        # Quiet run: nothing to send.
        before = len(vendor.requests)
        code, doc = run.sync()
        assert code == 0 and len(vendor.requests) == before
        assert vendor.peak_inflight <= 10
        # No OpenAPI document for Mailchimp: the captured shapes, field by field (reference 3).
        for req in vendor.requests_to(r"/lists/[^/]+$", "POST"):
            sent = req.json()
            assert (sent["update_existing"], sent["sync_tags"]) == (True, False)
            assert 1 <= len(sent["members"]) <= 4
            for member in sent["members"]:
                assert member["status"] == "subscribed" and "@" in member["email_address"]
                assert set(member) <= {"email_address", "status", "merge_fields"}
        assert members() == expected


def test_check_tells_bad_key_and_wrong_list_apart(tmp_path: Path) -> None:
    with FakeMailchimp(KEY, LIST) as vendor:
        wrong_list = SyncRun(
            tmp_path / "list",
            MAPPING.format(url=vendor.url, list_id="nope", mechanism="tag: vip"),
            "mc_vip",
            env={"MAILCHIMP_API_KEY": KEY},
        )
        wrong_list.segment(COLUMNS, people(range(2)))
        proc = wrong_list.cli("check", "mc_vip", "--json")
        assert proc.returncode == 78 and "list_id" in proc.stdout

        bad_key = SyncRun(
            tmp_path / "key",
            MAPPING.format(url=vendor.url, list_id=LIST, mechanism="tag: vip"),
            "mc_vip",
            env={"MAILCHIMP_API_KEY": "wrong-us21"},
        )
        bad_key.segment(COLUMNS, people(range(2)))
        proc = bad_key.cli("check", "mc_vip", "--json")
        assert proc.returncode == 78 and "credentials" in proc.stdout
        assert "wrong-us21" not in proc.stdout
