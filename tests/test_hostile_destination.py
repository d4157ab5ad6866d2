"""A destination that trickles its answer or sends an endless one, through the real CLI.

httpx's timeouts are per phase and per read, so an answer sent one byte a second never trips
them: before the fix such a destination held a run past the HTTP timeout and the batch time
budget, the first SIGTERM was never honoured, and ``--json`` printed nothing. Now every request
has an overall deadline, the batch budget bounds each batch in real time, a stop request
abandons a request still unanswered after a short grace, and an answer is read up to a size
limit only. Durations are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from syncer.http import STOP_GRACE
from tests.fake_destination import (
    Fault,
    Harness,
    fake_destination,
    harness,
    members_of,
    people,
)

TRICKLE = 1.0  # seconds per byte: the fake's trickled answer would take about 28 hours


def wait_for(what: str, condition: Any, proc: subprocess.Popen[str], h: Harness) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert proc.poll() is None, h.output(proc)
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.02)


def failure_reasons(h: Harness, run_id: str) -> set[str]:
    proc = h.cli("run", "show", run_id, "--json")
    assert proc.returncode == 0, proc.stderr
    return {p["reason"] for p in json.loads(proc.stdout)["run"]["problems"]}


def test_first_sigterm_ends_a_run_stuck_on_a_trickling_answer(tmp_path: Path) -> None:
    rows = people(5)
    # A long HTTP timeout and budget: only the stop request can end this run early.
    env = {"SYNCER_HTTP_TIMEOUT": "3600", "SYNCER_BATCH_TIME_BUDGET": "3600"}
    with harness(tmp_path, batch_size=7, env=env) as h:
        h.segment(rows)
        h.dest.script(Fault(trickle=TRICKLE))
        started = time.monotonic()
        proc = h.popen()
        # Signal once the request is at the server and its answer has begun to trickle.
        wait_for("the answer start", lambda: h.dest.streamed and h.dest.streamed[0] > 0, proc, h)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("the first SIGTERM was not honoured within 60 s") from None
        stopped_after = time.monotonic() - signalled
        out, err = h.output(proc)
        print(
            f"\n[hostile] trickling answer, SIGTERM: exited {stopped_after:.2f}s after the"
            f" signal ({time.monotonic() - started:.2f}s in all; grace {STOP_GRACE:g} s)"
        )
        assert code == 75, out + err
        doc = json.loads(out)  # --json printed its document
        assert doc["status"] == "tempfail" and doc["exit_code"] == 75
        (run,) = doc["runs"]
        assert run["status"] == "interrupted" and run["failed"] == len(rows), run
        assert stopped_after < STOP_GRACE + 10, "the trickle itself would take hours"
        assert {r["id"]: r["status"] for r in h.runs()}[run["run_id"]] == "interrupted"
        reasons = failure_reasons(h, run["run_id"])
        assert any("abandoned" in r and "stop request" in r for r in reasons), reasons
        assert h.state_keys() == set()  # nothing unacknowledged was recorded

        assert h.converge(max_runs=1) == [0]
        assert h.dest.members == members_of(rows)


def test_a_trickling_answer_is_cut_at_the_http_timeout(tmp_path: Path) -> None:
    rows = people(5)
    env = {"SYNCER_HTTP_TIMEOUT": "2", "SYNCER_RETRY_ATTEMPTS": "2"}
    with harness(tmp_path, batch_size=7, env=env) as h:
        h.segment(rows)
        h.dest.script(Fault(trickle=TRICKLE), Fault(trickle=TRICKLE))
        started = time.monotonic()
        code, doc, proc = h.sync(timeout=120)
        took = time.monotonic() - started
        print(f"\n[hostile] two trickled tries with a 2 s HTTP timeout: run took {took:.2f}s")
        assert code == 75, proc.stdout + proc.stderr
        assert doc is not None
        (run,) = doc["runs"]
        assert run["status"] == "partial" and run["failed"] == len(rows)
        assert took < 30, "each try must end at 2 s, whatever the destination trickles"
        reasons = failure_reasons(h, run["run_id"])
        assert any("no complete answer within 2 s" in r for r in reasons), reasons
        assert h.converge(max_runs=1) == [0]
        assert h.dest.members == members_of(rows)


def test_the_batch_time_budget_bounds_a_trickling_batch(tmp_path: Path) -> None:
    rows = people(5)
    env = {"SYNCER_HTTP_TIMEOUT": "600", "SYNCER_BATCH_TIME_BUDGET": "3"}
    with harness(tmp_path, batch_size=7, env=env) as h:
        h.segment(rows)
        h.dest.script(Fault(trickle=TRICKLE))
        started = time.monotonic()
        code, doc, proc = h.sync(timeout=120)
        took = time.monotonic() - started
        print(f"\n[hostile] trickle, 600 s HTTP timeout, 3 s budget: run took {took:.2f}s")
        assert code == 75, proc.stdout + proc.stderr
        assert doc is not None
        (run,) = doc["runs"]
        assert run["failed"] == len(rows)
        assert took < 20, "the budget, not the 600 s HTTP timeout, must end the batch"
        reasons = failure_reasons(h, run["run_id"])
        assert any("time budget ran out" in r for r in reasons), reasons


def test_an_endless_answer_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    rows = people(5)
    huge = 1024**3  # 1 GiB, far above the 16 MiB syncer reads
    with harness(tmp_path, batch_size=7, env={"SYNCER_RETRY_ATTEMPTS": "1"}) as h:
        h.segment(rows)
        h.dest.script(Fault(huge=huge))
        code, doc, proc = h.sync(timeout=120)
        assert code == 75, proc.stdout + proc.stderr
        assert doc is not None
        (run,) = doc["runs"]
        assert run["failed"] == len(rows)
        reasons = failure_reasons(h, run["run_id"])
        assert any("answer larger than 16 MiB" in r for r in reasons), reasons
        h.dest.wait_idle()
        sent = h.dest.streamed[0]
        print(f"\n[hostile] 1 GiB answer: {sent / 2**20:.1f} MiB sent before syncer hung up")
        assert sent < 64 * 1024**2
        assert h.converge(max_runs=1) == [0]
        assert h.dest.members == members_of(rows)


def test_a_trickling_alert_webhook_cannot_hold_a_daemon_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from syncer import alerts
    from syncer.state import state_engine

    monkeypatch.setattr(alerts, "ALERT_TIMEOUT", 1.0)
    engine = state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    with fake_destination() as (url, dest):
        dest.script(Fault(trickle=TRICKLE))
        alerter = alerts.Alerter(lambda: engine, url, 0.1)
        started = time.monotonic()
        assert alerter.observe("vip", "failed", {}, "run1") is None  # not sent: tried again
        took = time.monotonic() - started
        assert took < 15, f"the alert post took {took:.1f}s; its timeout is 1 s"
        assert dest.streamed and dest.streamed[0] > 0  # it really was trickling
