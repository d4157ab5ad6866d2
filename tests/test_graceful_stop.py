"""SIGTERM/SIGINT: the first finishes what is in flight, the second leaves at once.

Either way the run exits 75, is recorded `interrupted`, nothing the server lacks is recorded
as synced, and the next run completes the job.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from tests.fake_destination import Fault, Harness, harness, members_of, people

CONCURRENCY = 4  # the webhook's default requests in flight


def wait_for_hits(h: Harness, proc: subprocess.Popen[str], n: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while h.dest.hits < n:
        assert proc.poll() is None, h.output(proc)
        assert time.monotonic() < deadline, f"only {h.dest.hits} requests arrived"
        time.sleep(0.01)


def test_first_sigterm_finishes_in_flight_batches_and_stops(tmp_path: Path) -> None:
    rows = people(200)  # 100 batches of 2, 4 at a time, 0.3 s each: ~7.5 s of sending
    with harness(tmp_path, batch_size=2, latency=0.3) as h:
        h.segment(rows)
        proc = h.popen()
        wait_for_hits(h, proc, 8)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        stopped_after = time.monotonic() - signalled
        out, err = h.output(proc)
        late = [hit for hit in h.dest.timeline if hit.arrived > signalled + 0.05]
        print(
            f"\n[stop] SIGTERM: exited after {stopped_after:.2f}s,"
            f" {len(late)} requests after the signal, {h.dest.summary()}"
        )
        assert code == 75, out + err
        (run,) = json.loads(out)["runs"]
        assert run["status"] == "interrupted", run
        assert stopped_after < 5, "the in-flight batches take 0.3 s; the rest was not waited for"
        assert len(late) <= CONCURRENCY, "new batches were started after the signal"
        # In-flight batches finished and were committed: state is exactly what the server has.
        assert h.state_keys() == set(h.dest.members)
        assert 0 < run["added"] < len(rows)
        assert run["added"] == len(h.dest.members)

        h.dest.latency = 0.0
        code, doc, proc2 = h.sync()
        assert code == 0, proc2.stdout + proc2.stderr
        assert doc is not None and doc["runs"][0]["added"] == len(rows) - run["added"]
        assert h.dest.members == members_of(rows)
        statuses = {r["id"]: r["status"] for r in h.runs()}
        assert statuses[run["run_id"]] == "interrupted"


def test_second_signal_stops_at_once_without_recording_unacknowledged_work(
    tmp_path: Path,
) -> None:
    rows = people(40)  # batches of 1 taking 5 s each: ~50 s of sending
    latency = 5.0
    with harness(tmp_path, batch_size=1, latency=latency) as h:
        h.segment(rows)
        proc = h.popen()
        wait_for_hits(h, proc, CONCURRENCY)
        first_sent = h.dest.timeline[0].arrived
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        second = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        stopped_after = time.monotonic() - second
        out, err = h.output(proc)
        in_flight_left = latency - (second - first_sent)
        print(
            f"\n[stop] second signal: exited after {stopped_after:.2f}s while in-flight requests"
            f" had {in_flight_left:.1f}s to go; {h.dest.summary()}"
        )
        assert code == 75, out + err
        assert stopped_after < min(2.5, in_flight_left), (
            f"took {stopped_after:.1f}s after the second signal: it waited for in-flight requests"
        )
        state = h.state_keys()
        assert state <= set(h.dest.members_now()), "recorded as synced but never acknowledged"

        h.dest.wait_idle(latency + 2)
        h.dest.latency = 0.0
        code, _, proc2 = h.sync()
        assert code == 0, proc2.stdout + proc2.stderr
        assert h.dest.members == members_of(rows)
        assert h.state_keys() == set(members_of(rows))
        runs = h.runs()
        assert [r["status"] for r in runs] == ["succeeded", "interrupted"]


def test_sigterm_during_a_long_rate_limit_cool_down_stops_promptly(tmp_path: Path) -> None:
    """A 429 asked for 30 s of quiet; a stop request must not sit that out."""
    rows = people(28)
    with harness(tmp_path, batch_size=7) as h:
        h.segment(rows)
        h.dest.script(Fault(429, "30"))
        proc = h.popen()
        deadline = time.monotonic() + 20
        while not h.dest.statuses[429]:
            assert proc.poll() is None, h.output(proc)
            assert time.monotonic() < deadline, "the 429 was never sent"
            time.sleep(0.01)
        time.sleep(0.5)  # every worker is now waiting on the account's cool-down
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("SIGTERM waited out a 30 s Retry-After cool-down") from None
        stopped_after = time.monotonic() - signalled
        out, err = h.output(proc)
        print(f"\n[stop] SIGTERM during a 30 s cool-down: exited after {stopped_after:.2f}s")
        assert code == 75, out + err
        assert stopped_after < 5
        assert h.state_keys() <= set(h.dest.members_now())
        h.dest.wait_idle()
        assert h.converge(max_runs=1) == [0]
        assert h.dest.members == members_of(rows)
