"""The daemon's tick logic on a fake clock: load, claim once across replicas, coalesce, skip.

The engine is replaced by a recorder here (the real one runs in test_daemon_process.py), so the
tests are about scheduling decisions: which replica runs which tick, and when nothing runs.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from syncer.claims import Claims
from syncer.daemon import Daemon, load_definitions
from syncer.engine import RunResult
from syncer.errors import ConfigError
from syncer.mapping import LoadedSync
from syncer.settings import Settings
from syncer.state import state_engine, ticks_table
from tests.fake_destination import MAPPING

T0 = 1_800_000_000  # a whole number of 10 s intervals since the epoch


class RecordingEngine:
    """Stands in for SyncEngine: records runs, answers with a chosen status."""

    def __init__(self, status: str = "succeeded") -> None:
        self.stop = threading.Event()
        self.status = status
        self.runs: list[tuple[str, str]] = []
        self.gate: threading.Event | None = None

    def run(self, sync: LoadedSync, *, trigger: str) -> RunResult:
        self.runs.append((sync.name, trigger))
        if self.gate is not None:
            self.gate.wait(10)
        run_id = None if self.status == "locked" else f"run{len(self.runs):04d}"
        counts = {} if run_id is None else {"added": 3, "rejected": 0}
        return RunResult(run_id, sync.name, self.status, counts, None, 0, 0.01)


def write_sync(directory: Path, name: str, schedule: str | None) -> None:
    extra = f"schedule: {schedule!r}\n" if schedule is not None else ""
    text = MAPPING.format(name=name, table="segment", batch_size=10, extra=extra)
    (directory / f"{name}.yaml").write_text(text)


@pytest.fixture
def env(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("HOOK_URL", "http://127.0.0.1:9/hook")
    monkeypatch.setenv("HOOK_SECRET", "whsec-test")
    (isolated / "mappings").mkdir()
    return Settings(
        state_url=f"sqlite:///{isolated / 'state.db'}",  # type: ignore[arg-type]
        mappings_dir=isolated / "mappings",
    )


def replica(settings: Settings, name: str, now: list[float], engine: Any = None) -> Daemon:
    daemon = Daemon(
        settings, engine or RecordingEngine(), clock=lambda: now[0], holder=f"host-{name}:1"
    )
    daemon.load()
    return daemon


def claims_of(settings: Settings) -> list[Any]:
    engine = state_engine(settings.state_url.get_secret_value())
    with engine.connect() as conn:
        return list(conn.execute(select(ticks_table).order_by(ticks_table.c.tick)).all())


def test_only_syncs_with_a_schedule_are_scheduled(env: Settings) -> None:
    write_sync(env.mappings_dir, "nightly", "0 3 * * *")
    write_sync(env.mappings_dir, "on_demand", None)
    syncs, schedules = load_definitions(env.mappings_dir, None)
    assert set(syncs) == {"nightly", "on_demand"}
    assert set(schedules) == {"nightly"}


def test_a_bad_schedule_names_the_file_and_the_field(env: Settings) -> None:
    write_sync(env.mappings_dir, "good", "every 10m")
    write_sync(env.mappings_dir, "typo", "every 10 lightyears")
    with pytest.raises(ConfigError) as info:
        load_definitions(env.mappings_dir, None)
    message = str(info.value)
    assert "typo.yaml: schedule:" in message and "not an interval" in message
    assert "lightyears" not in message  # errors quote the key, never the value
    assert "good.yaml" not in message


def test_each_tick_runs_on_exactly_one_of_several_replicas(env: Settings) -> None:
    write_sync(env.mappings_dir, "vip", "every 10s")
    now = [T0 + 0.2]
    replicas = [replica(env, name, now) for name in "abc"]
    for step in range(6):
        now[0] = T0 + 10 * step + 0.2
        for daemon in replicas[step % 3 :] + replicas[: step % 3]:  # a different one is first
            daemon._fire(name="vip", expr="every 10s")
    runs = [len(d.engine.runs) for d in replicas]
    assert sum(runs) == 6 and runs == [2, 2, 2]
    rows = claims_of(env)
    assert [r.tick for r in rows] == [T0 + 10 * i for i in range(6)]
    assert {r.status for r in rows} == {"succeeded"}
    assert all(r.run_id for r in rows)


def test_missed_ticks_coalesce_into_one_run(env: Settings) -> None:
    write_sync(env.mappings_dir, "vip", "every 10s")
    now = [T0 + 0.1]
    daemon = replica(env, "a", now)
    daemon._fire(name="vip", expr="every 10s")
    now[0] = T0 + 47.5  # asleep (or every replica down) for four ticks
    daemon._fire(name="vip", expr="every 10s")
    daemon._fire(name="vip", expr="every 10s")  # APScheduler coalesced too: still one run
    assert len(daemon.engine.runs) == 2
    assert [r.tick for r in claims_of(env)] == [T0, T0 + 40]


def test_a_tick_while_the_sync_still_runs_here_is_skipped_not_queued(env: Settings) -> None:
    write_sync(env.mappings_dir, "vip", "every 10s")
    now = [T0 + 0.1]
    engine = RecordingEngine()
    engine.gate = threading.Event()
    daemon = replica(env, "a", now, engine)
    first = threading.Thread(target=daemon.run_tick, args=("vip", T0))
    first.start()
    while not engine.runs:
        threading.Event().wait(0.01)
    assert daemon.run_tick("vip", T0 + 10) == "locked"
    engine.gate.set()
    first.join()
    assert len(engine.runs) == 1
    assert [(r.tick, r.status) for r in claims_of(env)] == [
        (T0, "succeeded"),
        (T0 + 10, "locked"),
    ]


def test_a_lease_held_elsewhere_is_recorded_on_the_claim(env: Settings) -> None:
    write_sync(env.mappings_dir, "vip", "every 10s")
    daemon = replica(env, "a", [T0 + 0.1], RecordingEngine(status="locked"))
    assert daemon.run_tick("vip", T0) == "locked"
    (row,) = claims_of(env)
    assert row.status == "locked" and row.run_id is None


def test_removed_syncs_and_stopping_daemons_run_nothing(env: Settings) -> None:
    write_sync(env.mappings_dir, "vip", "every 10s")
    daemon = replica(env, "a", [T0 + 0.1])
    (env.mappings_dir / "vip.yaml").unlink()
    write_sync(env.mappings_dir, "other", None)
    assert daemon.reload("test")
    assert daemon.run_tick("vip", T0) is None
    write_sync(env.mappings_dir, "vip", "every 10s")
    daemon.reload("test")
    daemon.stopping.set()
    assert daemon.run_tick("vip", T0) is None
    assert daemon.engine.runs == [] and claims_of(env) == []


def test_a_broken_file_at_reload_keeps_the_previous_definitions(env: Settings) -> None:
    write_sync(env.mappings_dir, "vip", "every 10s")
    daemon = replica(env, "a", [T0 + 0.1])
    (env.mappings_dir / "vip.yaml").write_text("name: vip\nsource: [unclosed\n")
    assert not daemon.reload("test")
    assert set(daemon.schedules) == {"vip"}
    assert daemon.run_tick("vip", T0) == "succeeded"


def test_old_claims_are_pruned(env: Settings) -> None:
    engine = state_engine(env.state_url.get_secret_value())
    old = Claims(engine, holder="h:1", clock=lambda: float(T0))
    assert old.claim("vip", T0 - 8 * 86400) and old.claim("vip", T0 - 10)
    assert not old.claim("vip", T0 - 10)
    assert old.prune() == 1
    assert old.last_tick("vip") == T0 - 10


def test_a_tick_claimed_as_the_daemon_stops_is_recorded_and_not_run(env: Settings) -> None:
    """SIGTERM landing between a tick's claim and its run: the run would start after
    ``shutdown`` found nothing running, and the process would wait on it at exit."""
    write_sync(env.mappings_dir, "vip", "every 10s")
    now = [T0 + 0.1]
    daemon = replica(env, "a", now)

    class SignalledWhileClaiming(Claims):
        def claim(self, sync: str, tick: int) -> bool:
            won = super().claim(sync, tick)
            daemon.stopping.set()  # the signal handler ran meanwhile
            return won

    daemon.claims = lambda: SignalledWhileClaiming(  # type: ignore[method-assign]
        daemon.state(), holder=daemon.holder, clock=daemon.clock
    )
    assert daemon.run_tick("vip", T0) is None
    assert daemon.engine.runs == []
    assert daemon.running() == 0
    assert [(r.tick, r.status, r.run_id) for r in claims_of(env)] == [(T0, "interrupted", None)]
