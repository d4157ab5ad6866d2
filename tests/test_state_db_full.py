"""The state database fills up in the middle of a run: the run's counters, its audit events and
the state rows still agree, and nothing unacknowledged is claimed.

The real CLI runs with a small file-size limit (``RLIMIT_FSIZE``, set by a ``sitecustomize``
module, with ``SIGXFSZ`` ignored so a write past it fails instead of killing the process): the
state database's write-ahead log soon cannot grow, and a commit fails part-way through the
run, as on a full disk.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlalchemy as sa

from tests.fake_destination import harness, members_of, people

SITECUSTOMIZE = """
import os
import resource
import signal

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
_limit = int(os.environ["TEST_MAX_FILE_BYTES"])
resource.setrlimit(resource.RLIMIT_FSIZE, (_limit, _limit))
"""


def test_a_full_state_database_never_makes_counters_claim_more_than_was_committed(
    tmp_path: Path,
) -> None:
    rows = people(400)
    state = tmp_path / "state.db"
    with harness(tmp_path, f"sqlite:///{state}", batch_size=5) as h:
        h.segment(rows[:5])
        assert h.sync()[0] == 0  # creates the schema
        with sqlite3.connect(state) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # an empty log to grow
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        full = {"PYTHONPATH": str(site), "TEST_MAX_FILE_BYTES": str(200 * 1024)}
        h.segment(rows)
        code, doc, proc = h.sync(env=full)
        assert code == 75, proc.stdout + proc.stderr  # a state database error: retry later
        assert "state database" in proc.stderr

        engine = sa.create_engine(f"sqlite:///{state}")
        with engine.connect() as conn:
            run = conn.execute(
                sa.text("select id, added, status from syncer_runs order by started_at desc")
            ).first()
            assert run is not None
            events = conn.execute(
                sa.text(
                    "select count(*) from syncer_events"
                    " where run_id = :r and operation = 'add' and outcome = 'accepted'"
                ),
                {"r": run.id},
            ).scalar_one()
            confirmed = conn.execute(
                sa.text("select count(*) from syncer_records where unsure = 0")
            ).scalar_one()
        engine.dispose()
        # Some batches were committed before the database filled up, not all of them.
        assert 0 < events < len(rows) - 5
        # What `sync now` printed and what the run row says both count only what committed.
        assert doc is not None and doc["runs"][0]["added"] == events, (doc, events)
        assert run.added == events, (run.added, events)
        assert confirmed == 5 + events
        # What state claims, the destination has.
        assert set(h.state_keys()) <= set(h.dest.members_now())

        # With room again, the next run finishes the job.
        code, _, proc = h.sync()
        assert code == 0, proc.stdout + proc.stderr
        assert h.dest.members == members_of(rows)
