"""Database connections cut mid-run (Postgres): the next run finishes the job, nothing is lost.

The CLI's connections carry their own application name (libpq's PGAPPNAME), so the test can
terminate exactly those from the server side, as a failover or a network cut would.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.fake_destination import harness, members_of, people

APP = "syncer-under-test"


def _wait_for_query(url: str, fragment: str, timeout: float = 60.0) -> None:
    """Until one of the CLI's connections is reading the query containing ``fragment``: running
    it, or fetching from its server-side cursor (``FETCH ...``) between rows."""
    engine = sa.create_engine(url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.connect() as conn:
                running = conn.execute(
                    sa.text(
                        "select count(*) from pg_stat_activity where application_name = :app"
                        " and (position(:fragment in query) > 0 or query ilike 'fetch%')"
                    ),
                    {"app": APP, "fragment": fragment},
                ).scalar_one()
            if running:
                return
            assert time.monotonic() < deadline, f"no query with {fragment!r} started"
            time.sleep(0.02)
    finally:
        engine.dispose()


def _terminate(url: str, min_killed: int = 1, timeout: float = 60.0) -> int:
    """Kill the CLI's backends once it has some; returns how many were terminated."""
    engine = sa.create_engine(url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                killed = conn.execute(
                    sa.text(
                        "select count(*) filter (where pg_terminate_backend(pid))"
                        " from pg_stat_activity where application_name = :app"
                    ),
                    {"app": APP},
                ).scalar_one()
            if killed >= min_killed:
                return int(killed)
            time.sleep(0.02)
    finally:
        engine.dispose()
    return 0


def test_state_database_cut_mid_run(tmp_path: Path, postgres_url: str) -> None:
    rows = people(300)
    with harness(tmp_path, postgres_url, batch_size=5, latency=0.05) as h:
        h.segment(rows)
        proc = h.popen(env={"PGAPPNAME": APP})
        deadline = time.monotonic() + 60
        while len(h.dest.requests) < 8:
            assert proc.poll() is None, h.output(proc)
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.01)
        assert _terminate(postgres_url) >= 1
        code = proc.wait(timeout=60)
        out, err = h.output(proc)
        assert code == 75, out + err  # worth retrying later
        assert set(h.state_keys()) <= set(h.dest.members_now()), "state claims unsent records"
        h.dest.wait_idle()
        assert h.converge() == [0]
        assert h.dest.members_now() == members_of(rows)
        assert set(h.state_keys()) == set(h.dest.members_now())


def test_warehouse_drops_mid_stream(tmp_path: Path, postgres_url: str) -> None:
    rows = people(400)
    with harness(tmp_path, f"sqlite:///{tmp_path / 'state.db'}") as h:
        h.warehouse = postgres_url
        h.env["SYNCER_WAREHOUSE_URL"] = postgres_url
        h.segment(rows)
        # A query that streams slowly: one millisecond per row, read 50 rows at a time.
        h.table = (
            "segment_vip cross join lateral"
            " (select pg_sleep(0.005) from (select segment_vip.email) as one) as slow"
        )
        h.mapping(batch_size=50)
        proc = h.popen(env={"PGAPPNAME": APP, "SYNCER_READ_BATCH_SIZE": "100"})
        _wait_for_query(postgres_url, "pg_sleep")  # the segment is being read
        assert _terminate(postgres_url) >= 1
        code = proc.wait(timeout=60)
        out, err = h.output(proc)
        assert code == 75, out + err
        assert "warehouse" in out + err
        assert h.dest.requests == [], "nothing may be sent from a half-read segment"
        assert h.converge() == [0]
        assert h.dest.members_now() == members_of(rows)


pytestmark = pytest.mark.postgres
