"""End to end through the real CLI: warehouse -> diff -> webhook destination -> state + audit.

Each backend runs the same story: first run, no-change run, churn run, with `plan` checked
against what `sync now` then sends.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import run_cli, write_table
from tests.fake_destination import DestinationState, fake_destination, members_of, people

COLUMNS = ("email", "first_name", "ltv")
SECRET = "s3cret-signing-key"


@dataclass
class Story:
    """One sync wired to a warehouse, a state store and a live destination."""

    warehouse: str
    env: dict[str, str]
    destination: DestinationState

    def segment(self, rows: list[tuple[str, str, str]]) -> None:
        write_table(self.warehouse, "segment_vip", COLUMNS, rows)

    def cli(self, *args: str) -> tuple[int, Any, str]:
        proc = run_cli(*args, env=self.env)
        document = json.loads(proc.stdout) if "--json" in args and proc.stdout.strip() else None
        return proc.returncode, document, proc.stdout + proc.stderr


MAPPING = """
name: vip
source:
  warehouse: default
  query: select email, first_name, ltv from segment_vip
  key: email
  key_type: email
mode: {mode}
fields:
  email: email
  first_name: first_name
  ltv: {{column: ltv, type: number}}
destination:
  connector: webhook
  url: ${{VIP_WEBHOOK_URL}}
  secret: ${{VIP_WEBHOOK_SECRET}}
  batch_size: 7
guards:
  max_remove_pct: {guard}
"""


def write_mapping(directory: Path, mode: str = "mirror", guard: int = 50) -> None:
    directory.mkdir(exist_ok=True)
    (directory / "vip.yaml").write_text(MAPPING.format(mode=mode, guard=guard))


def _story(tmp_path: Path, warehouse: str, state: str, **extra: str) -> Iterator[Story]:
    write_mapping(tmp_path / "mappings")
    with fake_destination(secret=SECRET) as (url, destination):
        env = {
            "SYNCER_WAREHOUSE_URL": warehouse,
            "SYNCER_STATE_URL": state,
            "SYNCER_MAPPINGS_DIR": str(tmp_path / "mappings"),
            "VIP_WEBHOOK_URL": url,
            "VIP_WEBHOOK_SECRET": SECRET,
            **extra,
        }
        yield Story(warehouse, env, destination)


# SQLite and PostgreSQL warehouses are read by a forked reader process by default (Linux);
# "sqlite-in-process" runs the same story with the reader switched off, as DuckDB always is.
@pytest.fixture(params=["sqlite", "sqlite-in-process", "duckdb", "postgres"])
def story(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Story]:
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        yield from _story(tmp_path, url, url)
        return
    warehouse = (
        f"duckdb:///{tmp_path / 'shop.duckdb'}"
        if request.param == "duckdb"
        else f"sqlite:///{tmp_path / 'shop.db'}"
    )
    extra = {"SYNCER_READ_PROCESS": "false"} if request.param == "sqlite-in-process" else {}
    yield from _story(tmp_path, warehouse, f"sqlite:///{tmp_path / 'state.db'}", **extra)


def test_first_no_change_and_churn_runs(story: Story) -> None:
    rows = people(40)
    story.segment(rows)

    code, doc, out = story.cli("sync", "now", "vip", "--json")
    assert code == 0, out
    (run,) = doc["runs"]
    assert (run["status"], run["added"], run["removed"], run["updated"]) == ("succeeded", 40, 0, 0)
    assert story.destination.members == members_of(rows)
    assert len(story.destination.requests) == 6  # 40 records in batches of 7

    sent_before = len(story.destination.requests)
    code, doc, out = story.cli("sync", "now", "vip", "--json")
    assert code == 0, out
    assert doc["runs"][0]["unchanged"] == 40
    assert len(story.destination.requests) == sent_before, "a no-change run sent something"

    churned = rows[3:] + people(4, start=100)  # 3 leave, 4 join
    churned[0] = (churned[0][0], "Renamed", churned[0][2])  # 1 field update
    churned[1] = (churned[1][0], churned[1][1], "999.99")  # 1 more
    story.segment(churned)

    code, plan, out = story.cli("plan", "vip", "--json")
    assert code == 0, out
    assert (plan["add"], plan["update"], plan["remove"], plan["unchanged"]) == (4, 2, 3, 35)

    code, doc, out = story.cli("sync", "now", "vip", "--json")
    assert code == 0, out
    run = doc["runs"][0]
    assert (run["added"], run["updated"], run["removed"], run["unchanged"]) == (4, 2, 3, 35)
    assert story.destination.members == members_of(churned)
    new = story.destination.requests[sent_before:]
    assert sorted(r["operation"] for r in new) == ["add", "remove", "update"]

    code, doc, out = story.cli("runs", "--sync", "vip", "--json")
    assert code == 0, out
    assert [r["added"] for r in doc["runs"]] == [4, 0, 40]
    assert all(r["status"] == "succeeded" for r in doc["runs"])


def test_plan_predicts_exactly_what_sync_now_sends(tmp_path: Path) -> None:
    """Invariant 3, with plain string keys so sample keys can be compared one by one."""
    warehouse = f"sqlite:///{tmp_path / 'shop.db'}"
    mapping = tmp_path / "mappings" / "ids.yaml"
    mapping.parent.mkdir()
    mapping.write_text(
        "source: {query: 'select id, name from ids', key: id}\n"
        "mode: mirror\nfields: {name: name}\n"
        "destination: {connector: webhook, url: '${URL}', batch_size: 3}\n"
        "guards: {max_remove_pct: 100}\n"
    )
    write_table(warehouse, "ids", ("id", "name"), [(f"c{i:03}", f"n{i}") for i in range(20)])
    with fake_destination() as (url, dest):
        env = {
            "SYNCER_WAREHOUSE_URL": warehouse,
            "SYNCER_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
            "SYNCER_MAPPINGS_DIR": str(mapping.parent),
            "URL": url,
        }
        assert run_cli("sync", "now", "ids", env=env).returncode == 0
        rows = [(f"c{i:03}", f"n{i}" if i % 4 else "changed") for i in range(6, 30)]
        write_table(warehouse, "ids", ("id", "name"), rows)
        before = len(dest.requests)
        plan = json.loads(run_cli("plan", "ids", "--json", env=env).stdout)
        assert len(dest.requests) == before, "plan must not send anything"
        assert json.loads(run_cli("plan", "ids", "--json", env=env).stdout) == plan
        proc = run_cli("sync", "now", "ids", "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        sent: dict[str, list[str]] = {"add": [], "update": [], "remove": []}
        for request in dest.requests[before:]:
            sent[request["operation"]] += [r["key"] for r in request["records"]]
    for op in ("add", "update", "remove"):
        assert plan[op] == len(sent[op]), op
        assert plan["samples"][op] == sorted(sent[op])[:5], op  # batches run concurrently


Events = dict[tuple[str, str], set[str]]


def audit_and_state(story: Story, run_id: str) -> tuple[Events, dict[str, int]]:
    """The run's audit events as {(operation, outcome): keys}, and state as {key: unsure}."""
    engine = sa.create_engine(story.env["SYNCER_STATE_URL"])
    try:
        with engine.connect() as conn:
            events: Events = {}
            for op, outcome, key in conn.execute(
                sa.text("SELECT operation, outcome, key FROM syncer_events WHERE run_id = :r"),
                {"r": run_id},
            ):
                events.setdefault((op, outcome), set()).add(key)
            query = "SELECT key, unsure FROM syncer_records WHERE sync = 'vip'"
            rows = conn.execute(sa.text(query))
            state = {key: unsure for key, unsure in rows}
    finally:
        engine.dispose()
    return events, state


def sha(emails: Iterable[str]) -> set[str]:
    return {hashlib.sha256(e.encode()).hexdigest() for e in emails}


def test_every_record_sent_has_its_audit_event_and_confirmed_state(story: Story) -> None:
    # Batches of 7 in pages of eight batches: whole pages are marked, confirmed and audited by
    # one statement each (syncer.ledger); what a user reads must be one event per record.
    rows = people(130)
    story.segment(rows)
    code, doc, out = story.cli("sync", "now", "vip", "--json")
    assert code == 0, out
    events, state = audit_and_state(story, doc["runs"][0]["run_id"])
    assert events == {("add", "accepted"): sha(r[0] for r in rows)}
    assert state == dict.fromkeys((r[0] for r in rows), 0), "every member confirmed"

    churned = rows[10:] + people(9, start=500)  # 10 leave, 9 join
    churned[5] = (churned[5][0], "Renamed", churned[5][2])
    story.segment(churned)
    code, doc, out = story.cli("sync", "now", "vip", "--json")
    assert code == 0, out
    events, state = audit_and_state(story, doc["runs"][0]["run_id"])
    assert events == {
        ("add", "accepted"): sha(r[0] for r in people(9, start=500)),
        ("update", "accepted"): sha([churned[5][0]]),
        ("remove", "accepted"): sha(r[0] for r in rows[:10]),
    }
    assert state == dict.fromkeys((r[0] for r in churned), 0)
    assert story.destination.members == members_of(churned)


def test_invalid_rows_are_counted_kept_and_never_sent(story: Story) -> None:
    rows = people(10)
    rows += [(None, "NoKey", "1"), ("not-an-email", "Bad", "1"), (rows[2][0], "Dup", "2")]
    rows += [("fine@example.com", "Fine", "not a number")]
    story.segment(rows)  # type: ignore[arg-type]
    code, doc, out = story.cli("sync", "now", "vip", "--json")
    assert code == 1, out  # finished, but something was invalid
    run = doc["runs"][0]
    assert (run["status"], run["added"], run["invalid"]) == ("partial", 9, 5)
    assert rows[2][0] not in story.destination.members  # duplicated key: neither row is sent
    assert "fine@example.com" not in story.destination.members

    code, detail, out = story.cli("run", "show", run["run_id"], "--json")
    assert code == 0, out
    reasons = sorted(p["reason"] for p in detail["run"]["problems"])
    assert any("null key" in r for r in reasons)
    assert any("not a valid email" in r for r in reasons)
    assert sum("duplicate key" in r for r in reasons) == 2
    assert any("field ltv: not a number" in r for r in reasons)
    assert "not-an-email" not in out and "person2@example.com" not in out
    keys = [p["key"] for p in detail["run"]["problems"] if p["key"]]
    assert keys and all(len(k) == 64 for k in keys), "audit keys are SHA-256 by default"


def test_members_whose_rows_turn_invalid_are_neither_removed_nor_updated(story: Story) -> None:
    rows = people(20)
    story.segment(rows)
    assert story.cli("sync", "now", "vip")[0] == 0
    held = dict(story.destination.members)
    # Still in the segment but unsendable this time: a duplicated key, a bad field. Rows
    # 12-19 left; one new member joined; row 3 changed.
    now = [*rows[:12], (rows[0][0], "Twin", "5"), ("joined@example.com", "New", "1")]
    now[1] = (rows[1][0], "Bad", "not a number")
    now[3] = (rows[3][0], "Renamed", rows[3][2])
    story.segment(now)
    code, doc, out = story.cli("sync", "now", "vip", "--json")
    assert code == 1, out  # invalid rows make the run partial
    run = doc["runs"][0]
    assert (run["added"], run["updated"], run["removed"], run["invalid"]) == (1, 1, 8, 3)
    members = story.destination.members
    assert members[rows[0][0]] == held[rows[0][0]]  # the duplicated key is left as it was
    assert members[rows[1][0]] == held[rows[1][0]]  # so is the row with a bad field
    assert members[rows[3][0]]["first_name"] == "Renamed"
    assert set(members) == {r[0] for r in rows[:12]} | {"joined@example.com"}


def test_rejected_records_are_retried_on_the_next_run(story: Story) -> None:
    rows = people(12)
    story.segment(rows)
    story.destination.reject_keys = {rows[4][0]: "contact is unsubscribed"}
    code, doc, out = story.cli("sync", "now", "vip", "--json")
    assert code == 1, out
    run = doc["runs"][0]
    assert (run["added"], run["rejected"]) == (11, 1)
    code, detail, _ = story.cli("run", "show", run["run_id"], "--json")
    assert [p["reason"] for p in detail["run"]["problems"]] == ["contact is unsubscribed"]

    story.destination.reject_keys = {}
    code, doc, out = story.cli("sync", "now", "vip", "--json")
    assert code == 0, out
    assert doc["runs"][0]["added"] == 1
    assert story.destination.members == members_of(rows)


def test_failed_batch_stays_unsynced_and_exits_75(story: Story) -> None:
    rows = people(20)
    story.segment(rows)
    story.env["SYNCER_RETRY_ATTEMPTS"] = "1"  # no retry in this run: the batch is left over
    story.destination.fail_with = [503]
    code, doc, out = story.cli("sync", "now", "vip", "--json")
    assert code == 75, out
    run = doc["runs"][0]
    # Batches of 7, 7 and 6 go out concurrently: whichever met the 503 is left over.
    assert run["failed"] in (6, 7) and run["added"] + run["failed"] == 20
    code, doc, out = story.cli("sync", "now", "vip", "--json")
    assert code == 0, out
    assert doc["runs"][0]["added"] == run["failed"]
    assert story.destination.members == members_of(rows)


def test_a_503_burst_is_retried_within_the_run(story: Story) -> None:
    rows = people(20)
    story.segment(rows)
    story.destination.fail_with = [503, 502]
    code, doc, out = story.cli("sync", "now", "vip", "--json")
    assert code == 0, out
    assert doc["runs"][0]["added"] == 20
    assert story.destination.members == members_of(rows)


def test_guard_blocks_mass_removal_unless_forced(story: Story) -> None:
    rows = people(10)
    story.segment(rows)
    assert story.cli("sync", "now", "vip")[0] == 0
    story.segment(rows[:4])  # would remove 60% > 50%
    code, plan, _ = story.cli("plan", "vip", "--json")
    assert plan["blocked"] and "max_remove_pct" in plan["blocked_reason"]
    code, doc, out = story.cli("sync", "now", "vip", "--json")
    assert code == 1, out
    assert doc["runs"][0]["status"] == "blocked"
    assert len(story.destination.members) == 10
    story.segment([])
    code, doc, out = story.cli("sync", "now", "vip", "--json")
    assert code == 1 and "no valid rows" in doc["runs"][0]["message"]
    story.segment(rows[:4])
    code, doc, out = story.cli("sync", "now", "vip", "--force", "--json")
    assert code == 0, out
    assert story.destination.members == members_of(rows[:4])


def test_full_resync_sends_every_member_again(story: Story) -> None:
    rows = people(9)
    story.segment(rows)
    assert story.cli("sync", "now", "vip")[0] == 0
    sent = story.destination.records_sent()
    code, doc, _ = story.cli("sync", "now", "vip", "--full-resync", "--json")
    assert code == 0
    assert story.destination.records_sent() - sent == 9
    assert doc["runs"][0]["updated"] == 9  # mirror mode: existing members are updates


def test_unknown_column_is_a_config_error_naming_file_and_column(story: Story) -> None:
    story.segment(people(3))
    mapping = Path(story.env["SYNCER_MAPPINGS_DIR"]) / "vip.yaml"
    mapping.write_text(mapping.read_text().replace("first_name: first_name", "first_name: fname"))
    code, _, out = story.cli("sync", "now", "vip")
    assert code == 78, out
    assert "vip.yaml" in out and "fname" in out and "fields.first_name" in out
    assert story.destination.requests == []


def test_unknown_table_is_a_config_error(story: Story) -> None:
    write_table(story.warehouse, "something_else", ("a",), [("1",)])
    code, _, out = story.cli("sync", "now", "vip")
    assert code == 78, out
    assert "vip.yaml" in out and "source.query failed" in out


def test_secret_never_printed(story: Story) -> None:
    story.segment(people(3))
    story.destination.secret = "another-secret"  # our signature is now wrong: 401
    code, _, out = story.cli("sync", "now", "vip", "--json")
    assert code == 78, out
    assert SECRET not in out
    assert "person0@example.com" not in out
    code, _, out = story.cli("runs", "--json")
    assert SECRET not in out
