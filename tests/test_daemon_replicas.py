"""Three (then four) daemon replicas on one Postgres state database, one-second ticks.

Over about two minutes (three phases of ``PHASE`` seconds): one replica is SIGKILLed, one
stopped with SIGTERM, a new one joins, and the segment changes halfway. Every tick must be
claimed exactly once while a replica lives, no tick may run twice (checked in the claim table,
the runs table and the replicas' own logs), and the destination must end up holding the segment.
"""

from __future__ import annotations

import collections
import math
import os
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.fake_destination import harness, members_of, people
from tests.test_daemon_process import DaemonProc

# Seconds between events: 40 gives two minutes of one-second ticks in every CI run;
# SYNCER_TEST_REPLICA_PHASE=100 runs it for five.
PHASE = float(os.environ.get("SYNCER_TEST_REPLICA_PHASE", "40"))


@pytest.mark.postgres
def test_replicas_run_each_tick_exactly_once(tmp_path: Path, postgres_url: str) -> None:
    first_rows, second_rows = people(20), people(25, start=10)
    with harness(tmp_path, postgres_url, extra="schedule: every 1s\n") as h:
        h.segment(first_rows)
        env = {"SYNCER_SHUTDOWN_GRACE": "20", "SYNCER_LEASE_TTL": "10"}
        replicas = {tag: DaemonProc(h, env, tag) for tag in "abc"}
        try:
            for d in replicas.values():
                d.wait_ready(60)
            start = time.time()
            time.sleep(PHASE)
            replicas["a"].kill()  # SIGKILL: no clean-up at all
            killed_at = time.time()
            time.sleep(PHASE)
            h.segment(second_rows)
            assert replicas["b"].stop()[0] == 0
            replicas["d"] = DaemonProc(h, env, "d")
            replicas["d"].wait_ready(60)
            time.sleep(PHASE)
            end = time.time()
            codes = {tag: replicas[tag].stop()[0] for tag in ("c", "d")}
        finally:
            for d in replicas.values():
                d.kill()
        assert codes == {"c": 0, "d": 0}, {t: replicas[t].stderr()[-2000:] for t in codes}

        engine = sa.create_engine(postgres_url)
        with engine.connect() as conn:
            claims = conn.execute(
                sa.text("select tick, holder, run_id, status from syncer_ticks where sync = 'vip'")
            ).all()
            run_ids = [
                r[0]
                for r in conn.execute(
                    sa.text(
                        "select id from syncer_runs where sync = 'vip' and trigger = 'schedule'"
                    )
                ).all()
            ]
        engine.dispose()

        expected = set(range(math.ceil(start) + 1, math.floor(end)))
        claimed = collections.Counter(row.tick for row in claims)
        started = collections.Counter(
            e["tick"] for d in replicas.values() for e in d.events("tick.started")
        )
        lost = sorted(expected - set(claimed))
        duplicated_claims = [t for t, n in claimed.items() if n > 1]
        duplicated_runs = [t for t, n in started.items() if n > 1]
        claim_runs = [row.run_id for row in claims if row.run_id]
        by_holder = collections.Counter(row.holder.rsplit(":", 1)[1] for row in claims)
        statuses = collections.Counter(row.status for row in claims)
        after_kill = [t for t in expected if t > killed_at + 1]
        print(
            f"\n[replicas] {len(expected)} ticks expected over {end - start:.0f}s,"
            f" {len(expected & set(claimed))} claimed, {len(duplicated_claims)} claimed twice,"
            f" {len(duplicated_runs)} started twice, {len(lost)} lost {lost[:10]};"
            f" runs recorded {len(run_ids)}, statuses {dict(statuses)},"
            f" ticks per replica pid {dict(by_holder)}"
        )
        assert not duplicated_claims and not duplicated_runs
        assert not lost
        assert all(t in claimed for t in after_kill)  # the survivors carried on
        assert len(set(claim_runs)) == len(claim_runs)  # one run per tick, one tick per run
        assert set(claim_runs) <= set(run_ids)
        # Runs without a finished claim: only the replica killed mid-run may leave one behind.
        assert len(set(run_ids) - set(claim_runs)) <= 1
        assert len(by_holder) >= 3  # the work was spread, and the late joiner took part
        assert h.dest.members_now() == members_of(second_rows)
