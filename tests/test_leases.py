"""One run per sync at a time: a second `sync now` is refused and says who is running it.

Two real CLI processes share a state database (SQLite file, or PostgreSQL); the destination is
slow so the first run is still going when the second starts. A lease whose process died on this
host is taken over at once; a lease from another host blocks until it expires.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.fake_destination import Harness, harness, members_of, people


def wait_for_first_request(h: Harness, proc: subprocess.Popen[str], timeout: float = 20) -> None:
    """Block until ``proc`` has sent something: then it surely holds the lease."""
    deadline = time.monotonic() + timeout
    while h.dest.hits == 0:
        assert proc.poll() is None, h.output(proc)
        assert time.monotonic() < deadline, "the first run never reached the destination"
        time.sleep(0.02)


def assert_refused_naming(proc: subprocess.CompletedProcess[str], host: str, pid: int) -> None:
    assert proc.returncode == 75, proc.stdout + proc.stderr
    assert f"already running on {host} (pid {pid}) since" in proc.stderr, proc.stderr


@pytest.fixture(params=["sqlite", "postgres"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite:///{tmp_path / 'state.db'}"


def test_second_run_of_a_running_sync_exits_75_naming_the_holder(
    tmp_path: Path, state_url: str
) -> None:
    rows = people(84)  # 12 batches of 7
    with harness(tmp_path, state_url, batch_size=7) as h:
        h.segment(rows)
        h.dest.gate.clear()  # the first run's requests wait at the destination: it stays running
        first = h.popen()
        wait_for_first_request(h, first)
        second = h.cli("sync", "now", h.name)
        assert first.poll() is None, "the first run ended before the second was refused"
        assert_refused_naming(second, socket.gethostname(), first.pid)
        locked = h.cli("sync", "now", h.name, "--json")
        assert locked.returncode == 75
        assert f"pid {first.pid}" in locked.stdout + locked.stderr
        assert first.poll() is None, "the first run ended before the last refusal"

        h.dest.gate.set()
        assert first.wait(timeout=120) == 0, h.output(first)
        assert h.dest.hits == 12, "a refused run sent something"
        assert h.dest.members == members_of(rows)
        code, doc, proc = h.sync()
        assert code == 0, proc.stdout + proc.stderr
        assert doc is not None and doc["runs"][0]["unchanged"] == 84


def test_lease_of_a_killed_run_is_taken_over_at_once(tmp_path: Path) -> None:
    rows = people(84)
    with harness(tmp_path, batch_size=7, latency=1.0) as h:  # lease TTL: default 60 s
        h.segment(rows)
        first = h.popen()
        wait_for_first_request(h, first)
        first.send_signal(signal.SIGKILL)
        assert first.wait() == -signal.SIGKILL
        h.dest.latency = 0.0
        started = time.monotonic()
        code, _, proc = h.sync()
        elapsed = time.monotonic() - started
        assert code == 0, proc.stdout + proc.stderr
        assert elapsed < 20, f"waited {elapsed:.0f}s for a dead process's lease"
        h.dest.wait_idle()
        assert h.dest.members == members_of(rows)
        killed = [r for r in h.runs() if r["pid"] == first.pid]
        assert [r["status"] for r in killed] == ["interrupted"]


def heartbeats(h: Harness) -> tuple[float, float] | None:
    """(acquired_at, heartbeat_at) of the sync's lease, or None when nobody holds it."""
    engine = sa.create_engine(h.state_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.text("select acquired_at, heartbeat_at from syncer_leases where sync = :s"),
                {"s": h.name},
            ).first()
    finally:
        engine.dispose()
    return (row[0], row[1]) if row is not None else None


def test_heartbeats_keep_a_long_run_holding_its_lease(tmp_path: Path) -> None:
    rows = people(112)
    ttl = 2.0
    with harness(tmp_path, batch_size=7, env={"SYNCER_LEASE_TTL": str(ttl)}) as h:
        h.segment(rows)
        h.dest.gate.clear()  # the run stays in progress until the gate opens
        first = h.popen()
        wait_for_first_request(h, first)
        # Wait until the lease has been renewed for three of its lifetimes.
        deadline = time.monotonic() + 120
        while (lease := heartbeats(h)) is None or lease[1] - lease[0] < 3 * ttl:
            assert first.poll() is None, h.output(first)
            assert time.monotonic() < deadline, f"the lease was not renewed: {lease}"
            time.sleep(0.05)
        second = h.cli("sync", "now", h.name)
        assert first.poll() is None
        assert_refused_naming(second, socket.gethostname(), first.pid)
        h.dest.gate.set()
        assert first.wait(timeout=120) == 0, h.output(first)
        assert h.dest.members == members_of(rows)
        (run,) = h.runs()
        assert run["status"] == "succeeded"


def _free_pid() -> int:
    """A pid no process here has, so only the host decides whether the lease is dead."""
    for pid in range(4_000_000, 4_000_100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            continue
    pytest.skip("no free pid found")


def test_lease_from_another_host_blocks_until_it_expires(tmp_path: Path) -> None:
    rows = people(10)
    with harness(tmp_path, batch_size=7) as h:
        h.segment(rows[:5])
        assert h.converge(max_runs=1) == [0]  # creates the state database
        h.segment(rows)
        pid = _free_pid()
        now = time.time()
        engine = sa.create_engine(h.state_url)
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "insert into syncer_leases"
                    " (sync, holder, host, pid, acquired_at, heartbeat_at, expires_at)"
                    " values (:s, :holder, 'other-host', :pid, :t, :t, :exp)"
                ),
                {"s": h.name, "holder": uuid.uuid4().hex, "pid": pid, "t": now, "exp": now + 300},
            )
        hits = h.dest.hits
        assert_refused_naming(h.cli("sync", "now", h.name), "other-host", pid)
        assert h.dest.hits == hits, "a refused run sent something"

        with engine.begin() as conn:  # its heartbeat stopped long ago
            conn.execute(
                sa.text("update syncer_leases set expires_at = :exp where sync = :s"),
                {"s": h.name, "exp": now - 1},
            )
        engine.dispose()
        code, doc, proc = h.sync()
        assert code == 0, proc.stdout + proc.stderr
        assert doc is not None and doc["runs"][0]["added"] == 5
        assert h.dest.members == members_of(rows)
