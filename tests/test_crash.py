"""SIGKILL at random moments, with the segment changing between kills: the destination always
ends equal to the segment, extras included.

The real CLI syncs a webhook destination (a live local server that keeps its own members) in
mirror mode. Over and over, the segment changes (members leave, join, come back, get new
field values and get their old ones back), `sync now` starts, and it is killed with SIGKILL
at a moment picked from what can be observed, never after a fixed delay: when the run row
appears, when the Nth request arrives at the destination, when the Nth batch has been
applied there (its answer not yet sent), or when the Nth answer has gone out (maybe not yet
committed). A request the killed process never saw answered may have been applied; the
next run must treat it as such. After every kill, what state confirms the destination must
hold; every few kills a run completes and the destination must equal the segment; at the end
it must equal the segment exactly and `plan` must have nothing left to do.

Seed: CRASH_SEED (default 20240611); it is printed, so a failure can be replayed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fake_destination import Harness, harness, members_of, people

SEED = int(os.environ.get("CRASH_SEED", "20240611"))
#: A killed process's requests still being handled must finish before anything else.
SETTLE = 30.0
#: How long any observable event may take on a loaded machine.
DEADLINE = 90.0


@dataclass
class Segment:
    """The warehouse segment; churn makes members leave, join, return, change and change back."""

    rows: dict[str, tuple[str, str, str]]
    next_index: int
    departed: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    original: dict[str, str] = field(default_factory=dict)
    version: int = 0

    @classmethod
    def of(cls, size: int) -> Segment:
        rows = {row[0]: row for row in people(size)}
        return cls(rows, size, original={k: v[1] for k, v in rows.items()})

    def churn(self, rng: random.Random, n: int) -> None:
        self.version += 1
        keys = sorted(self.rows)
        for key in rng.sample(keys, min(n, len(keys) // 4)):  # leave
            self.departed[key] = self.rows.pop(key)
        back = rng.sample(sorted(self.departed), min(n // 2, len(self.departed)))
        for key in back:  # come back, as they were
            self.rows[key] = self.departed.pop(key)
        for email, name, ltv in people(n, start=self.next_index):  # join
            self.rows[email] = (email, name, ltv)
            self.original[email] = name
        self.next_index += n
        for key in rng.sample(sorted(self.rows), min(2 * n, len(self.rows))):
            email, name, ltv = self.rows[key]
            if name != self.original[key] and rng.random() < 0.5:
                name = self.original[key]  # an update undone
            else:
                name = f"{self.original[key]}-v{self.version}"
            self.rows[key] = (email, name, ltv)

    def members(self) -> dict[str, dict[str, Any]]:
        return members_of(list(self.rows.values()))


@dataclass
class Tally:
    kills: int = 0
    completed: int = 0
    killed_pids: set[int] = field(default_factory=set)
    moments: dict[str, int] = field(default_factory=dict)


def run_rows(h: Harness) -> int:
    """Runs recorded in the state database (0 before the schema exists)."""
    path = h.state_url.removeprefix("sqlite:///")
    if not Path(path).exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as conn:
            return int(conn.execute("select count(*) from syncer_runs").fetchone()[0])
    except sqlite3.OperationalError:  # the schema is being created
        return 0


def moment(h: Harness, rng: random.Random, batches: int) -> tuple[str, Callable[[], bool]]:
    """A random observable moment of the run about to start, as (name, has it happened)."""
    dest = h.dest
    arrived, applied = dest.hits, len(dest.requests)
    answered = sum(dest.statuses.values())
    runs = run_rows(h)
    n = rng.randint(1, max(1, min(batches, 12)))
    kind = rng.choice(["run row", "arrived", "arrived", "applied", "applied", "answered"])
    if kind == "run row":
        return kind, lambda: run_rows(h) > runs
    if kind == "arrived":
        return f"{kind} {n}", lambda: dest.hits >= arrived + n
    if kind == "applied":
        return f"{kind} {n}", lambda: len(dest.requests) >= applied + n
    return f"{kind} {n}", lambda: sum(dest.statuses.values()) >= answered + n


def kill_at(proc: subprocess.Popen[str], happened: Callable[[], bool]) -> bool:
    """SIGKILL ``proc`` as soon as ``happened()``; False if it finished first."""
    deadline = time.monotonic() + DEADLINE
    while not happened():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "the moment to kill at never came"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()  # reap it: a zombie still counts as a live pid
    return proc.returncode == -signal.SIGKILL


def check_after_kill(h: Harness) -> None:
    """What state confirms, the destination holds (its late answers are all in by now)."""
    confirmed = h.state_keys()
    missing = confirmed - set(h.dest.members_now())
    assert not missing, f"confirmed in state but not at the destination: {sorted(missing)[:5]}"


def check_equal(h: Harness, segment: Segment) -> None:
    server = h.dest.members_now()
    wanted = segment.members()
    extra = sorted(set(server) - set(wanted))
    assert not extra, f"{len(extra)} members at the destination left the segment: {extra[:5]}"
    assert server == wanted
    assert h.state_keys() == set(wanted)


def run_to_completion(h: Harness, segment: Segment) -> None:
    code, _, proc = h.sync()
    assert code == 0, proc.stdout + proc.stderr
    h.dest.wait_idle(SETTLE)
    check_equal(h, segment)


def kill_loop(
    h: Harness, segment: Segment, rng: random.Random, kills: int, batch: int, tally: Tally
) -> None:
    target = tally.kills + kills
    while tally.kills < target:
        segment.churn(rng, max(2, len(segment.rows) // 60))
        h.segment(list(segment.rows.values()))
        name, happened = moment(h, rng, max(1, len(segment.rows) // 60 // batch + 3))
        proc = h.popen()
        if kill_at(proc, happened):
            tally.kills += 1
            tally.killed_pids.add(proc.pid)
            kind = name.split()[0]
            tally.moments[kind] = tally.moments.get(kind, 0) + 1
            h.dest.wait_idle(SETTLE)  # a killed process's requests finish at the vendor
            check_after_kill(h)
        else:
            out, err = h.output(proc)
            assert proc.returncode == 0, f"exit {proc.returncode}: {out}{err}"
            tally.completed += 1
            h.dest.wait_idle(SETTLE)
            check_equal(h, segment)
        if tally.kills and tally.kills % 8 == 0 and tally.kills < target:
            run_to_completion(h, segment)  # the recovery run: equal to the segment


def finish_and_check(h: Harness, segment: Segment, tally: Tally) -> None:
    run_to_completion(h, segment)
    plan = h.cli("plan", h.name, "--json")
    assert plan.returncode == 0, plan.stderr
    planned = json.loads(plan.stdout)
    assert (planned["add"], planned["update"], planned["remove"]) == (0, 0, 0), planned
    assert planned["unconfirmed"] == 0
    runs = h.runs()
    assert not [r for r in runs if r["status"] == "running"], "a run was left `running`"
    killed = [r for r in runs if r["pid"] in tally.killed_pids]
    wrong = [
        r
        for r in killed
        if r["status"] != "interrupted"
        and not (r["status"] == "succeeded" and r["finished_at"] is not None)
    ]
    assert not wrong, wrong
    print(
        f"[crash] {h.name}: kills={tally.kills} moments={tally.moments}"
        f" completed_before_kill={tally.completed} recorded={len(killed)}"
        f" server={h.dest.summary()}"
    )


# batch size -> (segment size, kills, server latency before / after applying a batch)
PLANS = {
    1: (240, 34, 0.004, 0.004),
    7: (3000, 34, 0.01, 0.01),
    50: (3000, 34, 0.03, 0.02),
}


@pytest.mark.parametrize("batch_size", sorted(PLANS))
def test_sigkill_while_the_segment_changes_leaves_the_destination_equal_to_it(
    tmp_path: Path, batch_size: int
) -> None:
    size, kills, latency, ack_latency = PLANS[batch_size]
    rng = random.Random(SEED * 1000 + batch_size)
    print(f"\n[crash] seed={SEED} batch_size={batch_size}")
    with harness(tmp_path, batch_size=batch_size) as h:
        segment = Segment.of(size)
        h.segment(list(segment.rows.values()))
        run_to_completion(h, segment)
        h.dest.latency, h.dest.ack_latency = latency, ack_latency
        tally = Tally()
        started = time.monotonic()
        kill_loop(h, segment, rng, kills, batch_size, tally)
        finish_and_check(h, segment, tally)
        print(f"[crash] batch_size={batch_size}: {time.monotonic() - started:.1f}s")
        assert tally.kills >= kills
