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


def wait_for_hits(h: Harness, proc: subprocess.Popen[str], n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while h.dest.hits < n:
        assert proc.poll() is None, h.output(proc)
        assert time.monotonic() < deadline, f"only {h.dest.hits} requests arrived"
        time.sleep(0.01)


def wait_for_stderr(
    h: Harness, proc: subprocess.Popen[str], text: str, timeout: float = 60
) -> None:
    """Until the process has said ``text`` on stderr (it handled the signal)."""
    deadline = time.monotonic() + timeout
    while text not in h.stderr_so_far(proc):
        assert proc.poll() is None, h.output(proc)
        assert time.monotonic() < deadline, f"never said {text!r}"
        time.sleep(0.01)


def test_first_sigterm_finishes_in_flight_batches_and_stops(tmp_path: Path) -> None:
    rows = people(200)  # 100 batches of 2
    with harness(tmp_path, batch_size=2) as h:
        h.segment(rows)
        h.dest.gate.clear()  # requests wait at the destination until the test lets them in
        proc = h.popen()
        wait_for_hits(h, proc, CONCURRENCY)  # every slot is taken by a held request
        proc.send_signal(signal.SIGTERM)
        wait_for_stderr(h, proc, "SIGTERM: finishing in-flight batches")
        h.dest.gate.set()  # the in-flight batches get their answers now
        code = proc.wait(timeout=120)
        out, err = h.output(proc)
        print(f"\n[stop] SIGTERM: {h.dest.summary()}")
        assert code == 75, out + err
        (run,) = json.loads(out)["runs"]
        assert run["status"] == "interrupted", run
        # No batch was started after the signal: only the four held ones were ever sent.
        assert h.dest.hits == CONCURRENCY
        # In-flight batches finished and were committed: state is exactly what the server has.
        assert h.state_keys() == set(h.dest.members)
        assert run["added"] == len(h.dest.members) == 2 * CONCURRENCY

        code, doc, proc2 = h.sync()
        assert code == 0, proc2.stdout + proc2.stderr
        assert doc is not None and doc["runs"][0]["added"] == len(rows) - run["added"]
        assert h.dest.members == members_of(rows)
        statuses = {r["id"]: r["status"] for r in h.runs()}
        assert statuses[run["run_id"]] == "interrupted"


def test_second_signal_stops_at_once_without_recording_unacknowledged_work(
    tmp_path: Path,
) -> None:
    rows = people(40)
    with harness(tmp_path, batch_size=1) as h:
        h.segment(rows)
        h.dest.gate.clear()  # the in-flight requests are never answered while the test waits
        proc = h.popen()
        wait_for_hits(h, proc, CONCURRENCY)
        proc.send_signal(signal.SIGTERM)
        wait_for_stderr(h, proc, "SIGTERM: finishing in-flight batches")
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=120)  # it must not wait for answers that never come
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("the second signal waited for in-flight requests") from None
        out, err = h.output(proc)
        assert code == 75, out + err
        assert "stopped at once" in err
        assert sum(h.dest.statuses.values()) == 0, "no request had been answered yet"
        assert h.state_keys() == set(), "recorded as synced but never acknowledged"

        h.dest.gate.set()  # the server now applies the requests the process gave up on
        h.dest.wait_idle(60)
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
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=25)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("SIGTERM waited out a 30 s Retry-After cool-down") from None
        stopped_after = time.monotonic() - signalled
        out, err = h.output(proc)
        print(f"\n[stop] SIGTERM during a 30 s cool-down: exited after {stopped_after:.2f}s")
        assert code == 75, out + err
        assert stopped_after < 25, "it sat out the 30 s cool-down"
        assert h.state_keys() <= set(h.dest.members_now())
        h.dest.wait_idle()
        assert h.converge(max_runs=1) == [0]
        assert h.dest.members == members_of(rows)
