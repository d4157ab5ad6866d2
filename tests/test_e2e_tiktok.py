"""TikTok end to end: ``syncer sync now`` against a local stateful TikTok custom audience, over a
first run, a churn run (adds, removes, changed emails and phones) and a retry run, with a rate
limit reported inside an HTTP 200 and a member TikTok refuses. The emulated audience must end
equal to the hashed segment, and no raw email or phone may reach the state database, the audit
log or the CLI's output."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from tests.fake_tiktok import FakeTikTok
from tests.vendor_emulator import Reply, SyncRun

TOKEN = "tt-e2e-access-token-0123456789"
ADVERTISER = "7000123"
AUDIENCE = "123456"
REFUSED = "refused@example.com"

MAPPING = """
name: tiktok_vip
source:
  query: select customer_id, email, phone from segment
  key: customer_id
mode: mirror
fields:
  email: email
  phone: phone
destination:
  connector: tiktok
  access_token: ${{TIKTOK_ACCESS_TOKEN}}
  advertiser_id: "{advertiser}"
  audience_id: "{audience}"
  region: US
  base_url: {url}/open_api/v1.3
  batch_size: 10
"""

Row = tuple[str, str, str]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def people(numbers: range | list[int], domain: str = "example.com", area: str = "657") -> list[Row]:
    return [(f"c{n:02}", f"Person{n:02}+ads@{domain}", f"({area}) 555-01{n:02}") for n in numbers]


def expected(rows: list[Row], refused: set[str]) -> tuple[set[str], set[str]]:
    """The audience as TikTok should hold it, hashed here independently of the connector:
    emails lowercased without their +tag, phones as 1 + ten digits."""
    emails, phones = set(), set()
    for _, email, phone in rows:
        if email in refused:
            continue
        local, domain = email.lower().split("@")
        emails.add(sha(f"{local.split('+')[0]}@{domain}"))
        phones.add(sha("1" + "".join(ch for ch in phone if ch.isdigit())))
    return emails, phones


def synced(root: Path) -> dict[str, str]:
    with sqlite3.connect(root / "state.db") as conn:
        rows = conn.execute("select key, destination_id from syncer_records").fetchall()
    return {str(k): str(d) for k, d in rows}


def test_churn_through_the_cli(tmp_path: Path) -> None:
    with FakeTikTok(TOKEN, ADVERTISER, AUDIENCE) as vendor:
        assert isinstance(vendor, FakeTikTok)
        vendor.refused = {sha(REFUSED)}
        run = SyncRun(
            tmp_path,
            MAPPING.format(advertiser=ADVERTISER, audience=AUDIENCE, url=vendor.url),
            "tiktok_vip",
            env={"TIKTOK_ACCESS_TOKEN": TOKEN},
        )
        columns = ("customer_id", "email", "phone")
        first = [*people(range(24)), ("c99", REFUSED, "(657) 555-0199")]
        run.segment(columns, first)
        throttled = {"code": 40100, "message": "Too many requests", "request_id": "x"}
        vendor.fail_next(r"/segment/mapping/$", Reply(200, throttled), method="POST")
        outputs: list[str] = []

        checked = run.cli("check", "tiktok_vip")
        outputs += [checked.stdout, checked.stderr]
        assert checked.returncode == 0, checked.stderr

        code, doc = run.sync()
        outputs.append(str(doc))
        summary = doc["runs"][0]
        assert code == 1, doc
        assert (summary["added"], summary["rejected"]) == (24, 1)
        assert vendor.pending_faults() == 0
        assert (vendor.hashes("EMAIL_SHA256"), vendor.hashes("PHONE_SHA256")) == expected(
            first, {REFUSED}
        )
        shown = run.cli("run", "show", summary["run_id"], "--json")
        outputs += [shown.stdout, shown.stderr]
        assert "tiktok: mapping: code 40002: batch_data: invalid user data" in shown.stdout
        kept = synced(tmp_path)
        assert sha("c99") not in kept and len(kept) == 24

        churn = [
            *people(range(4, 10)),
            *people([10, 11], domain="new.example.com"),  # changed emails
            *people([12, 13], area="415"),  # changed phones
            *people(range(14, 24)),
            *people([30, 31, 32]),
            ("c99", REFUSED, "(657) 555-0199"),
        ]
        run.segment(columns, churn)
        code, doc = run.sync()
        outputs.append(str(doc))
        summary = doc["runs"][0]
        assert code == 1, doc
        assert (summary["added"], summary["updated"], summary["removed"]) == (3, 4, 4)
        assert (vendor.hashes("EMAIL_SHA256"), vendor.hashes("PHONE_SHA256")) == expected(
            churn, {REFUSED}
        )

        vendor.refused = set()
        code, doc = run.sync()
        outputs.append(str(doc))
        assert code == 0, doc
        assert doc["runs"][0]["added"] == 1
        assert (vendor.hashes("EMAIL_SHA256"), vendor.hashes("PHONE_SHA256")) == expected(
            churn, set()
        )

        for request in vendor.requests:
            assert b"@example.com" not in request.body and b"555" not in request.body
        state = b"".join(p.read_bytes() for p in tmp_path.glob("state.db*"))
        for _, email, phone in churn:
            for raw in (email, email.lower(), email.lower().replace("+ads", ""), phone):
                assert raw.encode() not in state
                assert all(raw not in text for text in outputs)
            digits = "".join(ch for ch in phone if ch.isdigit())
            assert digits.encode() not in state
