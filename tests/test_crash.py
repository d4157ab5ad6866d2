"""SIGKILL at random points never loses a change and never records one the server lacks.

The real CLI runs in a subprocess against a destination with some latency and is killed with
SIGKILL after a seeded random delay, over and over, for batch sizes 1, 7 and 500, then once more
during a churn run (adds, updates and removes). After every kill the state database may only
claim what the server really has; after the final run the server holds exactly the segment and
`syncer runs` shows every killed run as `interrupted`.

Seed: CRASH_SEED (default 20240611); it is printed, so a failure can be replayed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fake_destination import Harness, harness, members_of, people

SEED = int(os.environ.get("CRASH_SEED", "20240611"))
SIZE = 600


@dataclass
class Segment:
    """The warehouse segment, versioned so completed runs can be followed by churn."""

    rows: dict[str, tuple[str, str, str]]
    next_index: int = SIZE
    version: int = 0

    def churn(self, rng: random.Random, n: int) -> None:
        """``n`` members leave, ``n`` join and ``n`` get a new first_name."""
        self.version += 1
        keys = sorted(self.rows)
        leaving = set(rng.sample(keys, n))
        for key in leaving:
            del self.rows[key]
        for email, name, ltv in people(n, start=self.next_index):
            self.rows[email] = (email, name, ltv)
        self.next_index += n
        for key in rng.sample(sorted(set(keys) - leaving), n):
            email, name, ltv = self.rows[key]
            self.rows[key] = (email, f"{name.split('-')[0]}-v{self.version}", ltv)

    def members(self) -> dict[str, dict[str, Any]]:
        return members_of(list(self.rows.values()))


@dataclass
class Tally:
    kills: int = 0
    completed: int = 0
    killed_pids: set[int] = field(default_factory=set)


def check_after_kill(h: Harness, segment: Segment, snapshot: dict[str, Any]) -> None:
    """What state claims, the server must have; ``snapshot`` is state after the last full run."""
    state = h.state_hashes()
    server = h.dest.members_now()
    wanted = segment.members()
    # A key still in state but gone from the server is a removal whose ack the kill lost.
    unacked = {k for k in set(state) - set(server) if k not in wanted}
    missing = set(state) - set(server) - unacked
    assert not missing, f"in state but never acknowledged: {sorted(missing)}"
    for key, value in state.items():
        if key in unacked:
            continue
        if snapshot.get(key) != value:  # added or updated since the last full run
            assert server[key] == wanted[key], f"state advanced for {key}; the server has old data"
    for key in set(snapshot) - set(state):  # a removal was recorded
        assert key not in server, f"state dropped {key} but the server still has it"


def check_complete(h: Harness, segment: Segment) -> None:
    assert h.dest.members == segment.members()
    assert h.state_keys() == set(segment.rows)


def kill_loop(
    h: Harness,
    segment: Segment,
    rng: random.Random,
    kills: int,
    delays: tuple[float, float],
    tally: Tally,
) -> None:
    """Start `sync now` and SIGKILL it after a random delay until ``kills`` kills landed.

    A run that finishes before its kill is checked, then the segment churns so the next run
    has work again.
    """
    snapshot = h.state_hashes()
    target = tally.kills + kills
    while tally.kills < target:
        proc = h.popen()
        delay = rng.uniform(*delays)
        try:
            code = proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            code = proc.wait()  # reap it: a zombie still counts as a live pid
        if code == -signal.SIGKILL:
            tally.kills += 1
            tally.killed_pids.add(proc.pid)
            # Checked at once: answers the killed run never read can only add to the server.
            check_after_kill(h, segment, snapshot)
            continue
        out, err = h.output(proc)
        assert code == 0, f"exit {code}: {out}{err}"
        tally.completed += 1
        h.dest.wait_idle()
        check_complete(h, segment)
        segment.churn(rng, 40)
        h.segment(list(segment.rows.values()))
        snapshot = h.state_hashes()


def finish_and_check(h: Harness, segment: Segment, tally: Tally) -> None:
    h.dest.wait_idle()  # late answers to killed runs must not land after the final run
    codes = h.converge(max_runs=2)
    assert codes[-1] == 0, codes
    h.dest.wait_idle()
    check_complete(h, segment)
    runs = h.runs()
    assert not [r for r in runs if r["status"] == "running"], "a run was left `running`"
    killed = [r for r in runs if r["pid"] in tally.killed_pids]
    # A kill that landed before the run row was written leaves no row; the others must all
    # say interrupted, unless the kill came after the run had recorded its success.
    assert killed, "no killed run got as far as recording itself: kills are too early"
    wrong = [
        r
        for r in killed
        if r["status"] != "interrupted"
        and not (r["status"] == "succeeded" and r["finished_at"] is not None)
    ]
    assert not wrong, wrong
    interrupted = sum(r["status"] == "interrupted" for r in killed)
    print(
        f"[crash] {h.name}: kills={tally.kills} completed_before_kill={tally.completed}"
        f" runs_recorded_interrupted={interrupted}/{len(killed)}"
        f" others={[r['status'] for r in killed if r['status'] != 'interrupted']}"
        f" recovery={codes}"
        f" server={h.dest.summary()}"
    )


# batch size -> (kills, kill delay range s, server latency before / after applying a batch)
PLANS = {
    1: (7, (0.4, 1.8), 0.02, 0.01),
    7: (7, (0.4, 1.8), 0.12, 0.08),
    500: (6, (0.5, 3.5), 0.9, 0.6),
}


@pytest.mark.parametrize("batch_size", sorted(PLANS))
def test_sigkill_at_random_points_loses_nothing(tmp_path: Path, batch_size: int) -> None:
    kills, delays, latency, ack_latency = PLANS[batch_size]
    rng = random.Random(SEED * 1000 + batch_size)
    print(f"\n[crash] seed={SEED} batch_size={batch_size}")
    with harness(tmp_path, batch_size=batch_size, latency=latency, ack_latency=ack_latency) as h:
        segment = Segment({row[0]: row for row in people(SIZE)})
        h.segment(list(segment.rows.values()))
        tally = Tally()
        started = time.monotonic()
        kill_loop(h, segment, rng, kills, delays, tally)
        finish_and_check(h, segment, tally)
        print(f"[crash] batch_size={batch_size}: {time.monotonic() - started:.1f}s")
        assert tally.kills >= kills


def test_sigkill_during_churn_runs_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    print(f"\n[crash] seed={SEED} churn")
    with harness(tmp_path, batch_size=7) as h:
        segment = Segment({row[0]: row for row in people(SIZE)})
        h.segment(list(segment.rows.values()))
        assert h.converge(max_runs=1) == [0]
        h.dest.latency, h.dest.ack_latency = 0.12, 0.08
        # 120 leave, 120 join, 120 change: about 50 batches of adds, updates and removes.
        segment.churn(rng, 120)
        h.segment(list(segment.rows.values()))
        tally = Tally()
        kill_loop(h, segment, rng, 5, (0.4, 1.8), tally)
        finish_and_check(h, segment, tally)
