"""guards.max_rejected_pct and guards.max_invalid_pct through the real CLI.

One address the destination refuses for good, or one broken row, must not turn every run of
a sync into exit 1 once the sync says it tolerates that share; by default it still does.
The rejection and the invalid row are reported and audited either way.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fake_destination import Harness, harness, members_of, people


def tolerate(h: Harness, **guards: float) -> None:
    path = h.mappings / f"{h.name}.yaml"
    path.write_text(
        path.read_text() + "".join(f"  {name}: {value}\n" for name, value in guards.items())
    )


def run(h: Harness) -> tuple[int, dict[str, object]]:
    code, doc, proc = h.sync()
    assert doc is not None, proc.stderr
    (result,) = doc["runs"]
    return code, result


@pytest.mark.parametrize(
    ("guards", "expected"),
    [
        ({}, (1, "partial")),  # the default tolerates nothing, as before
        ({"max_rejected_pct": 5}, (0, "succeeded")),  # 1 of the 20 rows: 5%, every run
        ({"max_rejected_pct": 4.9}, (1, "partial")),
    ],
)
def test_a_rejected_record_within_max_rejected_pct_is_a_success(
    tmp_path: Path, guards: dict[str, float], expected: tuple[int, str]
) -> None:
    rows = people(20)
    bounced = rows[3][0]
    with harness(tmp_path, reject_keys={bounced: "mailbox does not exist"}) as h:
        tolerate(h, **guards)
        h.segment(rows)
        code, result = run(h)
        assert (code, result["status"]) == expected
        assert result["rejected"] == 1 and result["added"] == 19
        kept = {k: v for k, v in members_of(rows).items() if k != bounced}
        assert h.dest.members_now() == kept
        shown = h.cli("run", "show", str(result["run_id"]))
        assert "mailbox does not exist" in shown.stdout  # still audited with its reason
        # The rejected record is tried again next run, the only one sent, and judged the
        # same way: as a share of the segment, not of what the run sent.
        code, again = run(h)
        assert (code, again["status"], again["rejected"]) == (*expected, 1)


@pytest.mark.parametrize(
    ("guards", "expected"),
    [
        ({}, (1, "partial")),
        ({"max_invalid_pct": 10}, (0, "succeeded")),  # 1 of 10 rows: 10%
        ({"max_invalid_pct": 9}, (1, "partial")),
        ({"max_rejected_pct": 100}, (1, "partial")),  # one guard does not cover the other
    ],
)
def test_an_invalid_row_within_max_invalid_pct_is_a_success(
    tmp_path: Path, guards: dict[str, float], expected: tuple[int, str]
) -> None:
    rows = [*people(9), ("not an email", "Broken", "1.50")]
    with harness(tmp_path) as h:
        tolerate(h, **guards)
        h.segment(rows)
        code, result = run(h)
        assert (code, result["status"]) == expected
        assert result["invalid"] == 1 and result["added"] == 9
        assert h.dest.members_now() == members_of(rows[:9])


def test_a_share_out_of_range_is_refused_naming_the_file_and_field(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        tolerate(h, max_rejected_pct=150)
        h.segment(people(3))
        proc = h.cli("sync", "now", h.name)
        assert proc.returncode == 78, proc.stderr
        assert "vip.yaml" in proc.stderr and "max_rejected_pct" in proc.stderr
        assert h.dest.members_now() == {}
