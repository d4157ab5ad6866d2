"""``syncer forget`` against a destination that keeps only hashed keys and applies changes in
vendor jobs (Google Ads Customer Match, emulated locally), through the real CLI.

State holds the SHA-256 of the customer id, never the id: forget hashes the typed key the same
way to find it. The removal goes into a job, so the first forget reports it pending (exit 75)
and keeps everything; a later one settles the job, confirms the removal and erases the rest.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from tests.fake_google_ads import FakeGoogleAds
from tests.test_e2e_google_ads import CID, DEV, LIST, MAPPING, TOKEN, email_hash, people
from tests.vendor_emulator import SyncRun


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def forget(run: SyncRun, key: str) -> tuple[int, dict[str, Any], str]:
    proc = run.cli("forget", "--key", key, "--yes", "--json")
    assert proc.stdout.strip(), proc.stderr
    (result,) = json.loads(proc.stdout)["syncs"]
    return proc.returncode, result, proc.stdout + proc.stderr


def test_forget_finds_a_hashed_key_and_waits_for_the_vendor_job(tmp_path: Path) -> None:
    with FakeGoogleAds(TOKEN, DEV, CID, LIST) as vendor:
        assert isinstance(vendor, FakeGoogleAds)
        # The sync's job is done at its first poll; forget's still runs at its first.
        vendor.script = [[], ["RUNNING"]]
        run = SyncRun(
            tmp_path,
            MAPPING.format(list_id=LIST, url=vendor.url),
            "google_vip",
            env={"GOOGLE_ADS_ACCESS_TOKEN": TOKEN, "GOOGLE_ADS_DEVELOPER_TOKEN": DEV},
        )
        rows = people(range(5))
        run.segment(("customer_id", "email", "phone"), rows)
        assert run.sync()[0] == 0  # the job is submitted
        assert run.sync()[0] == 0  # and confirmed: all five on the list
        assert vendor.hashes() == {email_hash(r) for r in rows}
        state = tmp_path / "state.db"
        with closing(sqlite3.connect(state)) as db:
            keys = {k for (k,) in db.execute("select key from syncer_records")}
        assert sha("c002") in keys and "c002" not in keys

        code, result, output = forget(run, " c002 ")
        assert code == 75, output
        assert result["status"] == "pending"
        assert "run forget again" in result["reason"]
        with closing(sqlite3.connect(state)) as db:  # kept until the job confirms it
            assert db.execute(
                "select count(*) from syncer_records where key = ?", (sha("c002"),)
            ).fetchall() == [(1,)]

        code, result, output = forget(run, "c002")  # the job still runs: nothing sent
        assert code == 75, output
        assert result["status"] == "failed" and "waiting for vendor job" in result["reason"]
        assert email_hash(rows[2]) in vendor.hashes()

        code, result, output = forget(run, "c002")
        assert code == 0, output
        assert result["status"] == "removed"
        assert vendor.hashes() == {email_hash(r) for r in rows if r[0] != "c002"}
        blob = b"".join(p.read_bytes() for p in tmp_path.glob("state.db*"))
        for form in (sha("c002"), sha(sha("c002"))):  # the state key and its audit hash
            assert form.encode() not in blob
            assert form not in output

        code, result, output = forget(run, "c002")
        assert (code, result["status"]) == (0, "not held")
