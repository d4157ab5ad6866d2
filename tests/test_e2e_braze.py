"""Braze end to end: ``syncer sync now`` against a stateful local Braze over first run, churn
and a quiet run, with a 429, a spent X-RateLimit window and one user Braze refuses. At the end
the subscription group holds exactly the segment."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fake_braze import FakeBraze
from tests.vendor_emulator import Reply, SyncRun

KEY = "braze-e2e-rest-key-0123456789"
GROUP = "sg-vip"
BAD = "u-bad"
COLUMNS = ("user_id", "email", "first_name")

MAPPING = """
name: bz_vip
source:
  query: select user_id, email, first_name from segment
  key: user_id
mode: mirror
fields:
  email: {{column: email, type: email}}
  first_name: first_name
destination:
  connector: braze
  api_key: ${{BRAZE_API_KEY}}
  base_url: {url}
  subscription_group_id: {group}
  batch_size: 4
guards:
  max_remove_pct: 100
"""


def people(numbers: range, name: str = "P") -> list[tuple[str, str, str]]:
    return [
        (f"u{i}", f"p{i}@example.com", f"{name}{i}") for i in range(numbers.start, numbers.stop)
    ]


def test_churn_with_429_and_a_rejected_user(tmp_path: Path) -> None:
    with FakeBraze(KEY, GROUP) as vendor:
        assert isinstance(vendor, FakeBraze)
        vendor.invalid[BAD] = "'email' is not a valid email"
        run = SyncRun(
            tmp_path,
            MAPPING.format(url=vendor.url, group=GROUP),
            "bz_vip",
            env={"BRAZE_API_KEY": KEY},
        )
        run.segment(COLUMNS, [*people(range(12)), (BAD, "bad@example.com", "Bad")])
        check = run.cli("check", "bz_vip", "--json")
        assert check.returncode == 0, check.stdout + check.stderr

        vendor.fail_next(
            r"/users/track$", Reply(429, {"message": "rate limited"}, headers={"Retry-After": "1"})
        )
        vendor.exhaust_next = 2  # X-RateLimit-Remaining: 0 twice: the engine slows down
        code, doc = run.sync()
        first = doc["runs"][0]
        assert code == 1, doc
        assert first["added"] == 12 and first["rejected"] == 1
        assert vendor.pending_faults() == 0 and vendor.statuses[429] == 1
        assert vendor.subscribed() == {f"u{i}" for i in range(12)}

        shown = run.cli("run", "show", first["run_id"], "--json")
        problems = json.loads(shown.stdout)["run"]["problems"]
        assert [p["outcome"] for p in problems] == ["rejected"]
        assert "is not a valid email" in problems[0]["reason"]
        assert "bad@example.com" not in shown.stdout

        # Churn: u0-u2 leave, u12-u14 join, u3/u4 change name, the refused user leaves.
        rows = [(u, e, "Changed" if u in ("u3", "u4") else n) for u, e, n in people(range(3, 15))]
        run.segment(COLUMNS, rows)
        code, doc = run.sync()
        churn = doc["runs"][0]
        assert code == 0, doc
        assert (churn["added"], churn["removed"], churn["updated"]) == (3, 3, 2)

        expected = {f"u{i}" for i in range(3, 15)}
        assert vendor.subscribed() == expected
        assert vendor.users["u0"].groups[GROUP] == "unsubscribed"
        assert vendor.users["u3"].attributes["first_name"] == "Changed"
        assert vendor.users["u14"].attributes == {
            "external_id": "u14",
            "email": "p14@example.com",
            "first_name": "P14",
        }
        assert BAD not in vendor.users

        before = len(vendor.requests)
        code, doc = run.sync()
        assert code == 0 and len(vendor.requests) == before
        assert vendor.subscribed() == expected

        # No OpenAPI document for Braze: the captured shapes, field by field (reference 5).
        for req in vendor.requests_to(r"/users/track$", "POST"):
            attributes = req.json()["attributes"]
            assert 1 <= len(attributes) <= 4 or attributes == []
            for item in attributes:
                assert item["external_id"].startswith("u") and "_update_existing_only" in item
        for req in vendor.requests_to(r"/v2/subscription/status/set$", "POST"):
            (entry,) = req.json()["subscription_groups"]
            assert entry["subscription_group_id"] == GROUP
            assert entry["subscription_state"] == "unsubscribed"
            assert 1 <= len(entry["external_ids"]) <= 50


def test_check_tells_bad_key_and_wrong_group_apart(tmp_path: Path) -> None:
    with FakeBraze(KEY, GROUP) as vendor:
        for name, group, key, text in (
            ("group", "sg-nope", KEY, "subscription_group_id"),
            ("key", GROUP, "not-the-key", "credentials"),
        ):
            run = SyncRun(
                tmp_path / name,
                MAPPING.format(url=vendor.url, group=group),
                "bz_vip",
                env={"BRAZE_API_KEY": key},
            )
            run.segment(COLUMNS, people(range(2)))
            proc = run.cli("check", "bz_vip", "--json")
            assert proc.returncode == 78 and text in proc.stdout, proc.stdout
            assert key not in proc.stdout
