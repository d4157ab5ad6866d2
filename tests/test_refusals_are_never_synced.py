"""A record the destination refused never counts as synced, in any mode or path.

Through the real CLI: a sync is pointed at a new, empty destination and fully resynced; the
destination refuses one member that the old destination had acknowledged. That member must
not be left claimed as synced: `plan` shows it as an add, and the next run sends it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fake_destination import fake_destination, harness, members_of, people


@pytest.mark.parametrize("mode", ["mirror", "membership", "upsert"])
def test_a_refusal_during_a_full_resync_is_sent_again(tmp_path: Path, mode: str) -> None:
    rows = people(30)
    refused = rows[11][0]
    with harness(tmp_path, batch_size=7) as h:
        mapping = h.mappings / f"{h.name}.yaml"
        mapping.write_text(mapping.read_text().replace("mode: mirror", f"mode: {mode}"))
        h.segment(rows)
        code, _, proc = h.sync()
        assert code == 0, proc.stderr
        assert h.dest.members == members_of(rows)

        # The operator moves the sync to a new (empty) destination and resyncs everything;
        # the new destination refuses one member.
        with fake_destination(secret=h.env["HOOK_SECRET"]) as (new_url, new_dest):
            h.env["HOOK_URL"] = new_url
            new_dest.reject_keys[refused] = "list is closed to this address"
            code, doc, proc = h.sync("--full-resync")
            assert code == 1, proc.stdout + proc.stderr
            assert doc is not None and doc["runs"][0]["rejected"] == 1
            assert refused not in new_dest.members

            plan = h.cli("plan", h.name, "--json")
            assert plan.returncode == 0, plan.stderr
            planned = json.loads(plan.stdout)
            # The refused member is to be sent again (as an add: it may be absent), and it
            # is no longer counted as unchanged.
            assert planned["add"] == 1, planned
            assert planned["update"] == 0 and planned["remove"] == 0
            assert planned["unchanged"] == len(rows) - 1
            assert planned["unconfirmed"] == 1

            # The next run (refusal still in force) tries it again and reports it again.
            code, doc, _ = h.sync()
            assert code == 1 and doc is not None and doc["runs"][0]["rejected"] == 1

            # Once the destination accepts it, the destination equals the segment.
            del new_dest.reject_keys[refused]
            code, doc, proc = h.sync()
            assert code == 0, proc.stdout + proc.stderr
            assert doc is not None and doc["runs"][0]["added"] == 1
            assert new_dest.members == members_of(rows)
            final = json.loads(h.cli("plan", h.name, "--json").stdout)
            assert (final["add"], final["update"], final["remove"]) == (0, 0, 0)
            assert final["unconfirmed"] == 0


def test_a_refused_update_keeps_the_old_values_and_is_tried_again(tmp_path: Path) -> None:
    rows = people(10)
    with harness(tmp_path, batch_size=4) as h:
        h.segment(rows)
        assert h.sync()[0] == 0
        changed = [
            (e, f"{n}-new", ltv) if i == 3 else (e, n, ltv) for i, (e, n, ltv) in enumerate(rows)
        ]
        h.segment(changed)
        h.dest.reject_keys[rows[3][0]] = "field is read-only"
        code, doc, _ = h.sync()
        assert code == 1 and doc is not None and doc["runs"][0]["rejected"] == 1
        assert h.dest.members[rows[3][0]]["first_name"] == rows[3][1]  # untouched
        planned = json.loads(h.cli("plan", h.name, "--json").stdout)
        assert (planned["add"], planned["update"]) == (0, 1)
        del h.dest.reject_keys[rows[3][0]]
        assert h.sync()[0] == 0
        assert h.dest.members == members_of(changed)


def test_a_refused_removal_is_tried_again(tmp_path: Path) -> None:
    rows = people(10)
    with harness(tmp_path, batch_size=4) as h:
        h.segment(rows)
        assert h.sync()[0] == 0
        h.segment(rows[:8])
        h.dest.reject_keys[rows[9][0]] = "member is locked"
        code, doc, _ = h.sync()
        assert code == 1 and doc is not None
        assert (doc["runs"][0]["removed"], doc["runs"][0]["rejected"]) == (1, 1)
        planned = json.loads(h.cli("plan", h.name, "--json").stdout)
        assert (planned["add"], planned["remove"], planned["unconfirmed"]) == (0, 1, 0)
        del h.dest.reject_keys[rows[9][0]]
        assert h.sync()[0] == 0
        assert h.dest.members == members_of(rows[:8])
