"""The reject policy (``rejects:`` in a mapping, ``syncer rejects``) through the real CLI.

A record the destination refuses run after run (a bounced address) stops being sent once the
sync's policy says so, without making every later run exit 1; it is listed by ``syncer
rejects`` with its reason and first and last attempt; it is tried again as soon as its source
row changes, and forgotten once accepted. Without a policy nothing changes: it is retried, and
the run exits 1, every time.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.fake_destination import Harness, harness, members_of, people

BOUNCED = "mailbox does not exist"


def policy(h: Harness, **settings: float) -> None:
    """Give the sync a ``rejects:`` block (top level of the mapping)."""
    path = h.mappings / f"{h.name}.yaml"
    lines = "".join(f"  {name}: {value}\n" for name, value in settings.items())
    path.write_text(path.read_text() + "rejects:\n" + lines)


def run(h: Harness, *args: str) -> tuple[int, dict[str, Any]]:
    code, doc, proc = h.sync(*args)
    assert doc is not None, proc.stderr
    (result,) = doc["runs"]
    return code, result


def listed(h: Harness, *args: str) -> dict[str, Any]:
    proc = h.cli("rejects", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def sent_keys(h: Harness, since: int) -> list[str]:
    """Keys the destination received in requests since the ``since``-th one."""
    return [r["key"] for req in h.dest.requests[since:] for r in req["records"]]


def test_a_record_refused_on_two_runs_is_parked_and_no_longer_sent(tmp_path: Path) -> None:
    rows = people(10)
    bounced = rows[4][0]
    with harness(tmp_path, reject_keys={bounced: BOUNCED}) as h:
        policy(h, park_after_runs=2)
        h.segment(rows)
        code, first = run(h)
        assert (code, first["rejected"], first["added"], first["parked"]) == (1, 1, 9, 0)
        code, second = run(h)  # sent again, refused again: now parked
        assert (code, second["rejected"], second["parked"]) == (1, 1, 0)
        before = len(h.dest.requests)
        code, third = run(h)
        assert code == 0, third
        assert (third["status"], third["rejected"], third["parked"]) == ("succeeded", 0, 1)
        assert bounced not in sent_keys(h, before)  # not sent at all
        assert "parked" in third["message"] and "syncer rejects vip" in third["message"]
        doc = listed(h, "vip")
        (row,) = doc["rejects"]
        assert row["parked"] is True and row["attempts"] == 2
        assert (row["outcome"], row["operation"], row["reason"]) == ("rejected", "add", BOUNCED)
        assert row["first_run_id"] == first["run_id"] and row["last_run_id"] == second["run_id"]
        assert row["first_at"] < row["last_at"]
        assert row["key"] != bounced and row["key"].startswith("p***@")  # masked as plan does
        # Seen in `runs` and the table form too.
        (latest, *_) = h.runs()
        assert latest["parked"] == 1
        table = h.cli("rejects", "vip")
        shown = " ".join(table.stdout.split())  # the reason may fold inside its column
        assert table.returncode == 0 and BOUNCED in shown and "p***@" in table.stdout
        assert bounced not in table.stdout


def test_a_parked_record_whose_row_changes_is_sent_again_and_forgotten_once_accepted(
    tmp_path: Path,
) -> None:
    rows = people(6)
    bounced = rows[2][0]
    with harness(tmp_path, reject_keys={bounced: BOUNCED}) as h:
        policy(h, park_after_runs=1)
        h.segment(rows)
        assert run(h)[0] == 1  # refused once: parked at once
        assert listed(h, "vip", "--parked")["total"] == 1
        code, quiet = run(h)
        assert (code, quiet["parked"]) == (0, 1)
        # The source row changes (a corrected name): tried again, refused again, parked again
        # with its count started over.
        changed = [r if r[0] != bounced else (bounced, "Fixed", r[2]) for r in rows]
        h.segment(changed)
        before = len(h.dest.requests)
        code, retried = run(h)
        assert bounced in sent_keys(h, before)
        assert (code, retried["rejected"], retried["parked"]) == (1, 1, 0)
        (row,) = listed(h, "vip")["rejects"]
        assert row["attempts"] == 1 and row["first_run_id"] == retried["run_id"]
        # The destination takes it now (the address was fixed): accepted, the row is gone.
        h.dest.reject_keys.clear()
        h.segment([r if r[0] != bounced else (bounced, "Fixed again", r[2]) for r in rows])
        code, accepted = run(h)
        assert (code, accepted["added"], accepted["parked"]) == (0, 1, 0)
        assert listed(h, "vip")["rejects"] == []
        assert h.dest.members_now()[bounced]["first_name"] == "Fixed again"


def test_without_a_policy_a_refused_record_is_retried_every_run(tmp_path: Path) -> None:
    rows = people(5)
    bounced = rows[0][0]
    with harness(tmp_path, reject_keys={bounced: BOUNCED}) as h:
        h.segment(rows)
        for _ in range(3):
            before = len(h.dest.requests)
            code, result = run(h)
            assert (code, result["rejected"], result["parked"]) == (1, 1, 0)
            assert bounced in sent_keys(h, before)
        (row,) = listed(h)["rejects"]  # counted all the same, never parked
        assert (row["attempts"], row["parked"]) == (3, False)


def test_park_after_days_counts_from_the_first_refusal(tmp_path: Path) -> None:
    rows = people(4)
    bounced = rows[1][0]
    with harness(tmp_path, reject_keys={bounced: BOUNCED}) as h:
        policy(h, park_after_days=7)
        h.segment(rows)
        assert run(h)[0] == 1
        assert run(h)[0] == 1  # refused again the same day: not parked yet
        assert listed(h)["rejects"][0]["parked"] is False
        # Eight days pass since the first refusal (the clock is the database's timestamps).
        engine = sa.create_engine(h.state_url)
        with engine.begin() as conn:
            earlier = dt.datetime.now(dt.UTC) - dt.timedelta(days=8)
            conn.execute(sa.text("UPDATE syncer_rejects SET first_at = :t"), {"t": earlier})
        engine.dispose()
        assert run(h)[0] == 1  # refused again, now 8 days after the first time: parked
        (row,) = listed(h, "vip", "--parked")["rejects"]
        assert row["attempts"] == 3
        before = len(h.dest.requests)
        code, result = run(h)
        assert (code, result["parked"]) == (0, 1)
        assert bounced not in sent_keys(h, before)


def test_a_member_leaving_the_segment_is_forgotten(tmp_path: Path) -> None:
    rows = people(5)
    bounced = rows[3][0]
    with harness(tmp_path, reject_keys={bounced: BOUNCED}) as h:
        policy(h, park_after_runs=1)
        h.segment(rows)
        assert run(h)[0] == 1
        h.segment([r for r in rows if r[0] != bounced])
        code, result = run(h)
        assert (code, result["parked"]) == (0, 0)
        assert listed(h)["total"] == 0


def test_an_invalid_row_is_parked_too_and_tried_again_once_fixed(tmp_path: Path) -> None:
    rows = [*people(4), ("person9@example.com", "Broken", "not a number")]
    with harness(tmp_path) as h:
        policy(h, park_after_runs=2)
        h.segment(rows)
        assert run(h)[0] == 1
        code, second = run(h)
        assert (code, second["invalid"]) == (1, 1)
        (row,) = listed(h, "vip")["rejects"]
        assert (row["outcome"], row["operation"], row["parked"]) == ("invalid", "validate", True)
        assert "ltv" in row["reason"]
        code, third = run(h)
        assert (code, third["invalid"], third["parked"]) == (0, 0, 1)
        plan = h.cli("plan", "vip", "--json")
        assert json.loads(plan.stdout)["parked"] == 1 and json.loads(plan.stdout)["invalid"] == 0
        repaired = [*people(4), ("person9@example.com", "Fixed", "9.50")]
        h.segment(repaired)
        code, fixed = run(h)
        assert (code, fixed["added"], fixed["parked"]) == (0, 1, 0)
        assert h.dest.members_now() == members_of(repaired)
        assert listed(h)["total"] == 0


@pytest.mark.parametrize(
    ("block", "field"),
    [
        ("  park_after_runs: 0\n", "park_after_runs"),
        ("  park_after_days: -1\n", "park_after_days"),
        ("  park_after_runs: often\n", "park_after_runs"),
        ("  park_after_tries: 3\n", "park_after_tries"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_file_and_field(
    tmp_path: Path, block: str, field: str
) -> None:
    with harness(tmp_path) as h:
        path = h.mappings / f"{h.name}.yaml"
        path.write_text(path.read_text() + "rejects:\n" + block)
        h.segment(people(2))
        proc = h.cli("sync", "now", h.name)
        assert proc.returncode == 78, proc.stderr
        assert "vip.yaml" in proc.stderr and f"rejects.{field}" in proc.stderr, proc.stderr
        assert h.dest.members_now() == {}


def test_rejects_for_an_unknown_sync_is_a_usage_error_naming_near_ones(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        proc = h.cli("rejects", "vpi")
        assert proc.returncode == 2, proc.stderr
        assert "vpi" in proc.stderr and "vip" in proc.stderr


def test_a_refused_update_and_a_refused_removal_are_parked_too(tmp_path: Path) -> None:
    rows = people(5)
    stuck, leaving = rows[1][0], rows[3][0]
    with harness(tmp_path) as h:
        policy(h, park_after_runs=1)
        h.segment(rows)
        assert run(h)[0] == 0  # all accepted
        # The destination starts refusing both; one's name changes, the other leaves.
        h.dest.reject_keys.update({stuck: "field locked", leaving: "cannot remove"})
        changed = [(k, "Renamed" if k == stuck else n, v) for k, n, v in rows if k != leaving]
        h.segment(changed)
        code, refused = run(h)
        assert (code, refused["rejected"], refused["parked"]) == (1, 2, 0)
        by_op = {r["operation"]: r for r in listed(h, "vip", "--parked")["rejects"]}
        assert set(by_op) == {"update", "remove"}
        before = len(h.dest.requests)
        code, quiet = run(h)
        assert (code, quiet["updated"], quiet["removed"], quiet["parked"]) == (0, 0, 0, 2)
        assert h.dest.requests[before:] == []  # nothing sent at all
        plan = json.loads(h.cli("plan", "vip", "--json").stdout)
        assert (plan["update"], plan["remove"], plan["parked"]) == (0, 0, 2)
        # The member comes back as it is at the destination: its parked removal is moot.
        back = [*changed, next(r for r in rows if r[0] == leaving)]
        h.segment(back)
        code, result = run(h)
        assert (code, result["parked"]) == (0, 1)
        ((row),) = listed(h)["rejects"]
        assert row["operation"] == "update"


def test_a_full_resync_tries_parked_records_again(tmp_path: Path) -> None:
    rows = people(3)
    bounced = rows[0][0]
    with harness(tmp_path, reject_keys={bounced: BOUNCED}) as h:
        policy(h, park_after_runs=1)
        h.segment(rows)
        assert run(h)[0] == 1
        assert run(h)[1]["parked"] == 1
        h.dest.reject_keys.clear()  # fixed at the destination's end
        code, result = run(h, "--full-resync")
        assert (code, result["parked"]) == (0, 0)
        assert h.dest.members_now() == members_of(rows)
        assert listed(h)["total"] == 0


def test_parked_invalid_rows_do_not_hide_an_empty_source_from_the_guard(tmp_path: Path) -> None:
    rows = people(4)
    with harness(tmp_path) as h:
        policy(h, park_after_runs=1)
        h.segment(rows)
        assert run(h)[0] == 0
        # Every row left turns invalid and one member is gone: no valid row at all.
        h.segment([(k, n, "not a number") for k, n, _ in rows[:3]])
        for _ in range(2):  # the invalid rows are parked after the first; still blocked
            code, result = run(h)
            assert (code, result["status"], result["removed"]) == (1, "blocked", 0)
        assert result["parked"] == 3
        assert h.dest.members_now() == members_of(rows)


def test_every_kind_of_refusal_is_parked_on_a_postgres_state_database(
    tmp_path: Path, postgres_url: str
) -> None:
    """Postgres diffs by joins, not SQLite's merges: the same parking, by the same rules."""
    rows = people(6)
    bounced, stuck, leaving = rows[0][0], rows[1][0], rows[2][0]
    with harness(tmp_path, postgres_url) as h:
        policy(h, park_after_runs=1)
        h.segment(rows)
        assert run(h)[0] == 0
        h.dest.reject_keys.update({stuck: "locked", leaving: "cannot remove", bounced: BOUNCED})
        h.dest.members.pop(bounced)  # the destination dropped it; it refuses it back
        segment = [
            *[(k, "Renamed" if k == stuck else n, v) for k, n, v in rows if k != leaving],
            ("person9@example.com", "Broken", "not a number"),
        ]
        h.segment(segment)
        code, refused = run(h, "--full-resync")  # the full resync sends the bounced one too
        assert (code, refused["rejected"], refused["invalid"]) == (1, 3, 1)
        assert listed(h, "vip", "--parked")["total"] == 4
        before = len(h.dest.requests)
        code, quiet = run(h, "--full-resync")  # a full resync tries parked members again
        assert code == 1 and h.dest.requests[before:] != []
        before = len(h.dest.requests)
        code, quiet = run(h)
        assert (code, quiet["rejected"], quiet["invalid"], quiet["parked"]) == (0, 0, 0, 4)
        assert h.dest.requests[before:] == []
        h.dest.reject_keys.clear()
        h.segment([(k, "Fixed", v) for k, _, v in rows])  # every row changes, leaving is back
        code, fixed = run(h)
        assert (code, fixed["parked"]) == (0, 0)
        assert h.dest.members_now() == members_of([(k, "Fixed", v) for k, _, v in rows])
        assert listed(h)["total"] == 0


@pytest.mark.parametrize(
    "reason",
    [
        "row 12: field ltv: not a number",
        "row 3: duplicate key (email)",
        "row : odd",
        "rows 4: not a prefix",
        "field phone: not a phone number",
        "row 7 without a colon",
    ],
)
def test_the_row_number_is_set_aside_alike_in_python_and_sql(reason: str) -> None:
    """An invalid row's refusal is the same one when only its row number moved: the count
    kept in Python and the parking matched in SQL must read reasons alike."""
    from syncer.diff import _strip_row_sql, strip_row

    engine = sa.create_engine("sqlite://")
    with engine.connect() as conn:
        sql = _strip_row_sql(":r", "sqlite")
        assert conn.execute(sa.text(f"SELECT {sql}"), {"r": reason}).scalar() == strip_row(reason)
    engine.dispose()


def test_removing_the_policy_retries_parked_records_as_before(tmp_path: Path) -> None:
    rows = people(3)
    bounced = rows[2][0]
    with harness(tmp_path, reject_keys={bounced: BOUNCED}) as h:
        mapping = h.mappings / f"{h.name}.yaml"
        strict = mapping.read_text()
        policy(h, park_after_runs=1)
        h.segment(rows)
        assert run(h)[0] == 1
        assert run(h)[1]["parked"] == 1
        mapping.write_text(strict)  # the policy is gone: back to retrying on every run
        plan = json.loads(h.cli("plan", "vip", "--json").stdout)
        assert (plan["add"], plan["parked"]) == (1, 0)
        before = len(h.dest.requests)
        code, result = run(h)
        assert (code, result["rejected"], result["parked"]) == (1, 1, 0)
        assert bounced in sent_keys(h, before)
        (row,) = listed(h)["rejects"]
        assert (row["parked"], row["attempts"]) == (False, 2)
