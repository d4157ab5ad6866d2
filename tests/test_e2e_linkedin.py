"""LinkedIn end to end: ``syncer sync now`` against a local stateful LinkedIn DMP segment, over a
first run, a churn run (adds, removes, changed emails and names) and a retry run, with a bare
429 and a member LinkedIn refuses. The emulated segment must end equal to the hashed segment,
and no raw email may reach the state database, the audit log or the CLI's output."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from tests.fake_linkedin import FakeLinkedIn
from tests.vendor_emulator import Reply, SyncRun

TOKEN = "AQV-e2e-linkedin-token-0123456789"
SEGMENT = "4242"
REFUSED = "refused@example.com"

MAPPING = """
name: linkedin_vip
source:
  query: select customer_id, email, first_name, country from segment
  key: customer_id
mode: mirror
fields:
  email: email
  first_name: first_name
  country: country
destination:
  connector: linkedin
  access_token: ${{LINKEDIN_ACCESS_TOKEN}}
  segment_id: "{segment}"
  base_url: {url}/rest
  batch_size: 10
"""

Row = tuple[str, str, str, str]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def people(
    numbers: range | list[int], name: str = "Name", domain: str = "example.com"
) -> list[Row]:
    return [(f"c{n:02}", f"Person{n:02}@{domain}", f"{name}{n}", "us") for n in numbers]


def audience(rows: list[Row]) -> set[str]:
    """The segment as LinkedIn should hold it: SHA-256 of each trimmed, lowercased email."""
    return {sha(row[1].strip().lower()) for row in rows} - {sha(REFUSED)}


def synced(root: Path) -> dict[str, str]:
    """Key -> destination id of every member the state database holds as synced."""
    with sqlite3.connect(root / "state.db") as conn:
        rows = conn.execute("select key, destination_id from syncer_records").fetchall()
    return {str(k): str(d) for k, d in rows}


def test_churn_through_the_cli(tmp_path: Path) -> None:
    with FakeLinkedIn(TOKEN, SEGMENT) as vendor:
        assert isinstance(vendor, FakeLinkedIn)
        vendor.refused = {sha(REFUSED)}
        run = SyncRun(
            tmp_path,
            MAPPING.format(segment=SEGMENT, url=vendor.url),
            "linkedin_vip",
            env={"LINKEDIN_ACCESS_TOKEN": TOKEN},
        )
        columns = ("customer_id", "email", "first_name", "country")
        first = [*people(range(24)), ("c99", REFUSED, "Zed", "us")]
        run.segment(columns, first)
        vendor.fail_next(r"/users$", Reply(429), method="POST")  # bare, as LinkedIn sends it
        outputs: list[str] = []
        checked = run.cli("check", "linkedin_vip")
        outputs += [checked.stdout, checked.stderr]
        assert checked.returncode == 0, checked.stderr

        code, doc = run.sync()
        outputs.append(str(doc))
        summary = doc["runs"][0]
        assert code == 1, doc
        assert (summary["added"], summary["rejected"]) == (24, 1)
        assert vendor.statuses[429] == 1 and vendor.pending_faults() == 0
        assert vendor.email_hashes() == audience(first)
        assert vendor.hints[sha("person05@example.com")] == {"firstName": "Name5", "country": "US"}
        shown = run.cli("run", "show", summary["run_id"], "--json")
        outputs += [shown.stdout, shown.stderr]
        assert "LinkedIn: Member data could not be processed" in shown.stdout
        kept = synced(tmp_path)
        assert sha("c99") not in kept and len(kept) == 24  # keys hashed; refused not synced
        assert kept[sha("c05")] == f'{{"email":"{sha("person05@example.com")}"}}'

        churn = [
            *people(range(4, 10)),
            *people([10, 11], domain="new.example.com"),  # changed emails
            *people(range(12, 15), name="Renamed"),  # changed names only
            *people(range(15, 24)),
            *people([30, 31, 32]),
            ("c99", REFUSED, "Zed", "us"),
        ]
        run.segment(columns, churn)
        code, doc = run.sync()
        outputs.append(str(doc))
        summary = doc["runs"][0]
        assert code == 1, doc
        assert (summary["added"], summary["updated"], summary["removed"]) == (3, 5, 4)
        assert summary["rejected"] == 1
        assert vendor.email_hashes() == audience(churn)
        assert sha("person10@example.com") not in vendor.email_hashes()
        assert vendor.hints[sha("person12@example.com")]["firstName"] == "Renamed12"

        vendor.refused = set()
        code, doc = run.sync()
        outputs.append(str(doc))
        assert code == 0, doc
        assert doc["runs"][0]["added"] == 1
        assert vendor.email_hashes() == audience(churn) | {sha(REFUSED)}

        code, doc = run.sync()
        assert code == 0 and doc["runs"][0]["added"] == 0, doc

        for request in vendor.requests:
            assert b"@example.com" not in request.body
        state = b"".join(p.read_bytes() for p in tmp_path.glob("state.db*"))
        for row in churn:
            email = row[1].encode()
            assert email not in state and email.lower() not in state
            assert all(row[1].lower() not in text.lower() for text in outputs)
