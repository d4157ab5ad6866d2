"""Google Ads Customer Match end to end: ``syncer sync now`` against a local stateful Google
Ads API whose offline user data jobs take several polls. A first run submits a job, the next
run only polls it (still running: ``waiting``), the one after sees SUCCESS and marks the
members synced; a churn run (joins, leavers, changed phones) goes through a second job that
lags in PENDING. Along the way: a 429 with retryDelay, a CONCURRENT_MODIFICATION retried,
and one member Google refuses. The list ends equal to the hashed segment (hashes computed
here with hashlib), and no raw email or phone is stored, logged or printed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tests.fake_google_ads import FakeGoogleAds, concurrent_modification, rate_limited
from tests.vendor_emulator import SyncRun

TOKEN = "ya29.e2e-oauth-token-0123456789"
DEV = "dev-e2e-token-ABCDEF"
CID = "1234567890"
LIST = "4567"
REFUSED = "refused.person@example.com"
ADD_OPS = r":addOperations$"

MAPPING = """
name: google_vip
source:
  query: select customer_id, email, phone from segment
  key: customer_id
mode: mirror
fields:
  email: email
  phone: phone
destination:
  connector: google_ads
  access_token: ${{GOOGLE_ADS_ACCESS_TOKEN}}
  developer_token: ${{GOOGLE_ADS_DEVELOPER_TOKEN}}
  customer_id: "123-456-7890"
  user_list_id: "{list_id}"
  base_url: {url}
  region: US
  ad_user_data: GRANTED
  ad_personalization: GRANTED
  batch_size: 6
"""


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def people(numbers: range | list[int], exchange: int = 253) -> list[tuple[str, str, str]]:
    return [(f"c{n:03}", f" Person.{n}@Example.com", f"(650) {exchange}-{n:04}") for n in numbers]


def email_hash(row: tuple[str, str, str]) -> str:
    return sha(row[1].strip().lower())


def phone_hash(row: tuple[str, str, str]) -> str:
    digits = "".join(ch for ch in row[2] if ch.isdigit())
    return sha(f"+1{digits}")


def raw_values(rows: list[tuple[str, str, str]]) -> set[str]:
    found = set()
    for _, email, phone in rows:
        found.add(email.strip().lower())
        found.add(email.strip())
        found.add("".join(ch for ch in phone if ch.isdigit()))
    return found


def run_once(run: SyncRun, expected_code: int, outputs: list[str]) -> dict[str, Any]:
    proc = run.cli("sync", "now", run.name, "--json")
    outputs += [proc.stdout, proc.stderr]
    assert proc.returncode == expected_code, (proc.stdout, proc.stderr)
    summary: dict[str, Any] = json.loads(proc.stdout)["runs"][0]
    return summary


def test_job_lifecycle_and_churn_through_the_cli(tmp_path: Path) -> None:
    with FakeGoogleAds(TOKEN, DEV, CID, LIST) as vendor:
        assert isinstance(vendor, FakeGoogleAds)
        vendor.refused = {sha(REFUSED)}
        vendor.script = [["RUNNING"], ["PENDING"]]  # job 1: one poll running; job 2: lagging
        run = SyncRun(
            tmp_path,
            MAPPING.format(list_id=LIST, url=vendor.url),
            "google_vip",
            env={"GOOGLE_ADS_ACCESS_TOKEN": TOKEN, "GOOGLE_ADS_DEVELOPER_TOKEN": DEV},
        )
        columns = ("customer_id", "email", "phone")
        first = [*people(range(20)), ("c999", REFUSED, "")]
        run.segment(columns, first)
        vendor.fail_next(ADD_OPS, rate_limited("1s"))
        outputs: list[str] = []

        # Run 1: one job, 4 batches of operations, then :run. Nothing is synced yet.
        summary = run_once(run, 1, outputs)
        first_run = summary["run_id"]
        assert summary["rejected"] == 1 and summary["added"] == 0
        assert vendor.statuses[429] == 1 and vendor.pending_faults() == 0
        assert len(vendor.jobs) == 1
        (job,) = vendor.jobs.values()
        assert job["consent"] == {"adUserData": "GRANTED", "adPersonalization": "GRANTED"}
        assert job["status"] == "RUNNING" and len(job["operations"]) == 20
        assert vendor.identifiers == set()
        assert len(vendor.requests_to(ADD_OPS)) == 4 + 1  # 21 records / 6, plus the 429
        proc = run.cli("run", "show", first_run, "--json")
        outputs += [proc.stdout, proc.stderr]
        assert "offlineUserDataJobError.DATA_POLICY_VIOLATION" in proc.stdout
        assert REFUSED not in proc.stdout

        # Run 2: the job still runs: poll only, send nothing, exit 0 with status waiting.
        before = len(vendor.requests)
        summary = run_once(run, 0, outputs)
        assert summary["status"] == "waiting"
        paths = [r.url for r in vendor.requests[before:]]
        assert all("googleAds:search" in p for p in paths), paths

        # Run 3: SUCCESS: the 20 become synced; the refused one is tried again and refused.
        summary = run_once(run, 1, outputs)
        assert summary["rejected"] == 1
        assert vendor.hashes() == {email_hash(r) for r in first[:20]}
        assert vendor.hashes("hashedPhoneNumber") == {phone_hash(r) for r in first[:20]}
        proc = run.cli("run", "show", first_run, "--json")
        outputs += [proc.stdout, proc.stderr]
        assert "match_rate_min_pct" in proc.stdout  # the job's stats, kept with run 1

        # Churn: 4 leave, 3 join, 3 change phone; a CONCURRENT_MODIFICATION is retried.
        churn = [
            *people(range(4, 10)),
            *people(range(10, 13), exchange=254),
            *people(range(13, 20)),
            *people([40, 41, 42]),
            ("c999", REFUSED, ""),
        ]
        run.segment(columns, churn)
        vendor.fail_next(ADD_OPS, concurrent_modification())
        before = len(vendor.requests)
        run_once(run, 1, outputs)
        assert vendor.statuses[400] >= 1 and vendor.pending_faults() == 0
        churn_paths = [r.url for r in vendor.requests[before:]]
        # Removal used the identifiers kept in state: no lookup of any kind.
        assert [p for p in churn_paths if "googleAds:search" in p] == []
        job2 = vendor.jobs[sorted(vendor.jobs)[-1]]
        verbs = [next(iter(op)) for op in job2["operations"]]
        assert verbs.count("create") == 6 and verbs.count("remove") == 4 + 3

        summary = run_once(run, 0, outputs)  # job 2 lags in PENDING: still waiting
        assert summary["status"] == "waiting"
        summary = run_once(run, 1, outputs)  # SUCCESS; the refused member is refused once more
        members = churn[:-1]
        assert vendor.hashes() == {email_hash(r) for r in members}
        assert vendor.hashes("hashedPhoneNumber") == {phone_hash(r) for r in members}
        assert sha(REFUSED) not in vendor.hashes()

        # No raw identifier anywhere: state database (audit log included), CLI output.
        proc = run.cli("runs", "--json")
        outputs += [proc.stdout, proc.stderr]
        assert proc.returncode == 0
        proc = run.cli("check", "google_vip")  # reads the user list with GAQL
        outputs += [proc.stdout, proc.stderr]
        assert proc.returncode == 0, proc.stdout + proc.stderr
        state = (tmp_path / "state.db").read_bytes().decode("latin-1").lower()
        text = "\n".join(outputs).lower()
        for raw in raw_values([*first, *churn]):
            if raw:
                assert raw.lower() not in state, raw
                assert raw.lower() not in text, raw
        bodies = [json.loads(r.body) for r in vendor.requests if r.body]
        assert not any("example.com" in json.dumps(b) for b in bodies)
