"""``syncer forget`` through the real CLI, against two fake webhook destinations.

A privacy request: the person leaves every destination that holds them, their state goes,
their audit events keep every run's counts but lose the key (raw or hashed: neither is left
in the state database's bytes), a refused removal keeps everything for that destination so
running again retries it, and running again after success changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.fake_destination import (
    SECRET,
    DestinationState,
    Harness,
    cli_env,
    fake_destination,
    harness,
    people,
)

PERSON = "person2@example.com"
TYPED = "  Person2@Example.COM "  # as someone types it: normalised as the key column is

NEWS = """\
name: news
source:
  query: select email, first_name from segment_vip
  key: email
  key_type: email
mode: membership
fields:
  first_name: first_name
destination:
  connector: webhook
  url: ${NEWS_URL}
  secret: ${HOOK_SECRET}
"""


@contextmanager
def two_syncs(
    root: Path, state_url: str | None = None, **env: str
) -> Iterator[tuple[Harness, DestinationState]]:
    """``vip`` (mirror) and ``news`` (membership), both holding people(5), each at its own
    fake destination."""
    with (
        fake_destination(secret=SECRET) as (url, news),
        harness(root, state_url, env={"NEWS_URL": url, **env}) as h,
    ):
        (h.mappings / "news.yaml").write_text(NEWS)
        h.segment(people(5))
        proc = h.cli("sync", "now", "--all", "--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert PERSON in h.dest.members_now() and PERSON in news.members_now()
        yield h, news


def forget(h: Harness, *args: str) -> tuple[int, dict[str, Any], subprocess.CompletedProcess[str]]:
    proc = h.cli("forget", "--key", TYPED, "--yes", "--json", *args)
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout), proc


def by_sync(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["sync"]: r for r in doc["syncs"]}


def rows(h: Harness, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(h.root / "state.db")) as db:
        return db.execute(sql, params).fetchall()


def events_per_run(h: Harness) -> dict[tuple[str, str, str], int]:
    """How many audit events each run has, per operation and outcome."""
    found = rows(
        h,
        "select run_id, operation, outcome, count(*) from syncer_events group by 1, 2, 3",
    )
    return {(run, op, outcome): n for run, op, outcome, n in found}


def database_bytes(h: Harness) -> bytes:
    """The state database's files as they are on disk (no VACUUM first)."""
    return b"".join(p.read_bytes() for p in h.root.glob("state.db*"))


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize("plain", [False, True], ids=["hashed-audit-keys", "plain-audit-keys"])
def test_forget_removes_the_person_everywhere_and_keeps_only_counts(
    tmp_path: Path, plain: bool
) -> None:
    env = {"SYNCER_AUDIT_PLAIN_KEYS": "true"} if plain else {}
    with two_syncs(tmp_path, **env) as (h, news):
        audit_form = PERSON if plain else sha256(PERSON)
        assert rows(h, "select count(*) from syncer_events where key = ?", audit_form) == [(2,)]
        counts_before = events_per_run(h)
        # Another process keeps the database open throughout (a daemon would).
        other = sqlite3.connect(h.root / "state.db")
        other.execute("select count(*) from syncer_runs").fetchall()

        code, doc, proc = forget(h)

        assert code == 0, proc.stderr
        assert doc["found"] is True
        results = by_sync(doc)
        assert {name: r["status"] for name, r in results.items()} == {
            "news": "removed",
            "vip": "removed",
        }
        # Its add, and the removal just sent (recorded, then forgotten with the rest).
        assert all(r["events_forgotten"] == 2 for r in results.values())
        # Gone from both destinations, and only them.
        assert PERSON not in h.dest.members_now() and len(h.dest.members_now()) == 4
        assert PERSON not in news.members_now() and len(news.members_now()) == 4
        removals = [r for r in h.dest.requests if r["operation"] == "remove"]
        assert [[rec["key"] for rec in r["records"]] for r in removals] == [[PERSON]]
        # State forgotten; every earlier run's events still count the same.
        assert rows(h, "select count(*) from syncer_records where key = ?", PERSON) == [(0,)]
        assert rows(h, "select count(*) from syncer_records") == [(8,)]
        after = events_per_run(h)
        assert {k: n for k, n in after.items() if k in counts_before} == counts_before
        # The removal is a run of each sync, recorded with its own (forgotten) event.
        forget_runs = rows(
            h, "select sync, status, removed from syncer_runs where trigger = 'forget'"
        )
        assert sorted(forget_runs) == [("news", "succeeded", 1), ("vip", "succeeded", 1)]
        assert rows(h, "select count(*) from syncer_events where key is null") == [(4,)]
        assert rows(h, "select distinct reason from syncer_events where key is null") == [
            ("forgotten",)
        ]
        # Neither the key nor its hash is anywhere in the database's bytes, nor in the output.
        blob = database_bytes(h)
        for secret in (PERSON, sha256(PERSON)):
            assert secret.encode() not in blob
            assert secret not in proc.stdout + proc.stderr
        assert b"person1@example.com" in blob  # the others are still there
        other.close()
        # What it cannot do is said: the source still returns them.
        assert "next run adds them again" in proc.stderr

        # Idempotent: nothing held any more, nothing sent, exit 0.
        sent = len(h.dest.requests) + len(news.requests)
        code, doc, proc = forget(h)
        assert code == 0, proc.stderr
        assert doc["found"] is False
        assert {r["status"] for r in doc["syncs"]} == {"not held"}
        assert len(h.dest.requests) + len(news.requests) == sent
        assert "not found" in proc.stderr


def test_a_refused_removal_keeps_that_destination_for_a_retry(tmp_path: Path) -> None:
    with two_syncs(tmp_path) as (h, news):
        h.dest.reject_keys[PERSON] = "member is locked"

        code, doc, proc = forget(h)

        assert code == 1, proc.stderr
        results = by_sync(doc)
        assert results["news"]["status"] == "removed"
        assert results["vip"]["status"] == "failed"
        assert "member is locked" in results["vip"]["reason"]
        assert "vip: failed" in proc.stderr
        assert PERSON not in news.members_now()
        assert PERSON in h.dest.members_now()
        # vip keeps its state (confirmed as before) and its audit events keep the key.
        assert rows(h, "select sync, unsure from syncer_records where key = ?", PERSON) == [
            ("vip", 0)
        ]
        assert rows(
            h,
            "select r.sync, count(*) from syncer_events e join syncer_runs r on r.id = e.run_id"
            " where e.key = ? group by 1",
            sha256(PERSON),
        ) == [("vip", 2)]  # the add and the refused removal
        assert rows(h, "select status from syncer_runs where trigger = 'forget' and sync = 'vip'")
        # An ordinary run does not bring the refused removal back as a change of its own.
        code_sync, doc_sync, _ = h.sync()
        assert code_sync == 0 and doc_sync is not None
        assert doc_sync["runs"][0]["removed"] == 0

        # The vendor unlocks the member: running forget again finishes the job.
        del h.dest.reject_keys[PERSON]
        code, doc, proc = forget(h)
        assert code == 0, proc.stderr
        results = by_sync(doc)
        assert results["vip"]["status"] == "removed"
        assert results["vip"]["events_forgotten"] == 3
        assert results["news"]["status"] == "not held"
        assert PERSON not in h.dest.members_now()
        assert sha256(PERSON).encode() not in database_bytes(h)


def test_only_the_named_syncs_are_touched(tmp_path: Path) -> None:
    with two_syncs(tmp_path) as (h, news):
        code, doc, proc = forget(h, "--sync", "news")
        assert code == 0, proc.stderr
        assert [(r["sync"], r["status"]) for r in doc["syncs"]] == [("news", "removed")]
        assert PERSON in h.dest.members_now() and PERSON not in news.members_now()
        assert rows(h, "select sync from syncer_records where key = ?", PERSON) == [("vip",)]


def test_a_key_no_sync_knows_is_reported_not_found_with_exit_0(tmp_path: Path) -> None:
    with two_syncs(tmp_path) as (h, news):
        before = events_per_run(h)
        for key in ("nobody@example.com", "not an email"):
            proc = h.cli("forget", "--key", key, "--yes", "--json")
            assert proc.returncode == 0, proc.stderr
            doc = json.loads(proc.stdout)
            assert doc["found"] is False
            assert {r["status"] for r in doc["syncs"]} == {"not held"}
            assert "not found" in proc.stderr
            assert key not in proc.stdout + proc.stderr or key == "not an email"
        assert "not a valid email key" in proc.stdout  # why it cannot be these syncs' key
        assert events_per_run(h) == before
        assert len(h.dest.members_now()) == 5 and len(news.members_now()) == 5
        assert rows(h, "select count(*) from syncer_runs where trigger = 'forget'") == [(0,)]


def test_forget_asks_first_and_refuses_to_guess_without_a_terminal(tmp_path: Path) -> None:
    with two_syncs(tmp_path) as (h, news):
        proc = h.cli("forget", "--key", PERSON)  # stdin is not a terminal here
        assert proc.returncode == 2, proc.stderr
        assert "--yes" in proc.stderr
        proc = h.cli("forget", "--key", "   ", "--yes")
        assert proc.returncode == 2 and "empty" in proc.stderr
        assert PERSON in h.dest.members_now() and PERSON in news.members_now()
        # --key - reads it from stdin (out of shell history and the process list).
        proc = subprocess.run(
            [sys.executable, "-m", "syncer", "forget", "--key", "-", "--yes", "--json"],
            input=TYPED + "\n",
            cwd=h.root,
            env=cli_env(h.env),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert {r["status"] for r in json.loads(proc.stdout)["syncs"]} == {"removed"}


UPSERT = """\
name: crm
source:
  query: select email, first_name from segment_vip
  key: email
  key_type: email
mode: upsert
fields:
  first_name: first_name
destination:
  connector: webhook
  url: ${HOOK_URL}
  secret: ${HOOK_SECRET}
"""


def test_a_sync_that_never_removes_forgets_locally_and_says_the_vendor_keeps_them(
    tmp_path: Path,
) -> None:
    with harness(tmp_path) as h:
        (h.mappings / "vip.yaml").unlink()
        (h.mappings / "crm.yaml").write_text(UPSERT)
        h.segment(people(3))
        assert h.cli("sync", "now", "crm").returncode == 0
        code, doc, proc = forget(h)
        assert code == 0, proc.stderr
        (result,) = doc["syncs"]
        assert result["status"] == "kept at vendor"
        assert "mode upsert never removes" in result["reason"]
        assert PERSON in h.dest.members_now()  # nothing was sent
        assert not [r for r in h.dest.requests if r["operation"] == "remove"]
        assert rows(h, "select count(*) from syncer_records where key = ?", PERSON) == [(0,)]
        assert sha256(PERSON).encode() not in database_bytes(h)


def test_on_a_terminal_it_shows_what_it_holds_and_asks_first(tmp_path: Path) -> None:
    with two_syncs(tmp_path) as (h, news):

        def answer(text: str) -> subprocess.CompletedProcess[str]:
            terminal, stdin = pty.openpty()
            try:
                os.write(terminal, text.encode())  # typed ahead: the terminal keeps it
                return subprocess.run(
                    [sys.executable, "-m", "syncer", "forget", "--key", PERSON],
                    stdin=stdin,
                    cwd=h.root,
                    env=cli_env(h.env),
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
            finally:
                os.close(stdin)
                os.close(terminal)

        proc = answer("n\n")
        assert proc.returncode == 1, proc.stderr
        assert "what syncer holds of p***@e***.com" in proc.stderr
        assert "sent by syncer" in proc.stderr and PERSON not in proc.stderr
        assert "nothing was changed" in proc.stderr
        assert PERSON in h.dest.members_now() and PERSON in news.members_now()
        assert rows(h, "select count(*) from syncer_runs where trigger = 'forget'") == [(0,)]

        proc = answer("y\n")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count("removed") == 2
        assert PERSON not in h.dest.members_now() and PERSON not in news.members_now()


def test_a_sync_that_is_running_is_left_alone_and_retried_later(tmp_path: Path) -> None:
    with two_syncs(tmp_path) as (h, news):
        h.segment(people(6))  # the running sync has a new member to add
        h.dest.gate.clear()  # and the destination holds its request at the door
        running = h.popen()
        try:
            deadline = time.monotonic() + 60
            while h.dest.hits == 0:
                assert time.monotonic() < deadline, h.stderr_so_far(running)
                time.sleep(0.02)
            code, doc, proc = forget(h)
        finally:
            h.dest.gate.set()
        assert running.wait(timeout=120) == 0, h.output(running)
        assert code == 75, proc.stderr
        results = by_sync(doc)
        assert results["vip"]["status"] == "failed"
        assert "vip" in results["vip"]["reason"]  # the lease holder's message names the sync
        assert results["news"]["status"] == "removed"
        assert PERSON in h.dest.members_now() and PERSON not in news.members_now()
        code, doc, proc = forget(h)
        assert code == 0, proc.stderr
        assert by_sync(doc)["vip"]["status"] == "removed"
        assert PERSON not in h.dest.members_now()


def test_syncs_whose_mapping_is_gone_are_named_as_not_looked_at(tmp_path: Path) -> None:
    with two_syncs(tmp_path) as (h, news):
        (h.mappings / "news.yaml").unlink()
        code, doc, proc = forget(h)
        assert code == 0, proc.stderr
        assert [r["sync"] for r in doc["syncs"]] == ["vip"]
        assert doc["not_looked_at"] == ["news"]
        assert "not looked at: news" in proc.stderr
        assert PERSON in news.members_now()


def test_forget_on_a_postgres_state_database(tmp_path: Path, postgres_url: str) -> None:
    import sqlalchemy as sa

    with two_syncs(tmp_path, postgres_url) as (h, news):
        h.dest.reject_keys[PERSON] = "member is locked"
        code, doc, proc = forget(h)
        assert code == 1, proc.stderr
        assert {r["sync"]: r["status"] for r in doc["syncs"]} == {
            "news": "removed",
            "vip": "failed",
        }
        del h.dest.reject_keys[PERSON]
        code, doc, proc = forget(h)
        assert code == 0, proc.stderr
        assert PERSON not in h.dest.members_now() and PERSON not in news.members_now()
        engine = sa.create_engine(postgres_url)
        try:
            with engine.connect() as conn:
                left = conn.execute(
                    sa.text(
                        "select (select count(*) from syncer_records where key = :k)"
                        " + (select count(*) from syncer_events where key in (:k, :h))"
                    ),
                    {"k": PERSON, "h": sha256(PERSON)},
                ).scalar_one()
                forgotten = conn.execute(
                    sa.text("select count(*) from syncer_events where reason = 'forgotten'")
                ).scalar_one()
        finally:
            engine.dispose()
        assert (left, forgotten) == (0, 5)  # news: add, remove; vip: add, refused, remove


def test_a_broken_mapping_stops_forget_before_anything_changes(tmp_path: Path) -> None:
    with two_syncs(tmp_path) as (h, news):
        (h.mappings / "broken.yaml").write_text("name: broken\nsource: [\n")
        code, doc, proc = forget(h)
        assert code == 78, proc.stderr
        assert doc["status"] == "error" and "broken.yaml" in doc["error"]
        assert PERSON in h.dest.members_now() and PERSON in news.members_now()
        assert rows(h, "select count(*) from syncer_events where key is null") == [(0,)]
        # Named syncs load on their own, as for sync now: a broken neighbour does not stop them.
        code, doc, proc = forget(h, "--sync", "vip")
        assert code == 0, proc.stderr
        assert PERSON not in h.dest.members_now() and PERSON in news.members_now()


def test_debug_logs_of_a_forget_never_show_the_key(tmp_path: Path) -> None:
    with two_syncs(tmp_path) as (h, _news):
        h.dest.reject_keys[PERSON] = "member is locked"
        proc = h.cli("--log-level", "debug", "forget", "--key", TYPED, "--yes")
        assert proc.returncode == 1, proc.stderr
        assert "forget.started" in proc.stderr and "member is locked" in proc.stderr
        for form in (PERSON, TYPED.strip(), sha256(PERSON)):
            assert form not in proc.stdout + proc.stderr


def test_a_refusal_quoting_the_person_is_reported_masked(tmp_path: Path) -> None:
    """The run's message and stderr outlive the forget: a vendor's refusal that quotes the
    address must not put it there."""
    with two_syncs(tmp_path) as (h, _news):
        h.dest.reject_keys[PERSON] = f"member {PERSON} is locked"

        code, doc, proc = forget(h)

        assert code == 1, proc.stderr
        reason = by_sync(doc)["vip"]["reason"]
        assert "is locked" in reason and PERSON not in reason
        assert PERSON not in proc.stderr + proc.stdout
        messages = rows(h, "select message from syncer_runs where trigger = 'forget'")
        assert messages and not any(PERSON in (m or "") for (m,) in messages)


def test_a_refused_batch_echoing_the_person_is_reported_masked(tmp_path: Path) -> None:
    """A vendor whose 400 echoes the request body: however the refusal reaches forget (an
    outcome or a raised error), the address stays out of its message, output and runs."""
    with two_syncs(tmp_path) as (h, _news):
        h.dest.poison_keys.add(PERSON)
        h.dest.poison_echo = True

        code, doc, proc = forget(h)

        assert code != 0, proc.stderr
        assert PERSON not in json.dumps(doc) and PERSON not in proc.stderr + proc.stdout
        messages = rows(h, "select message from syncer_runs where trigger = 'forget'")
        assert messages and not any(PERSON in (m or "") for (m,) in messages)
