"""One sync run in-process by the real engine, against a local vendor emulator, on fake or
scaled time, for tests that count requests step by step (see test_step_faults.py and
test_e2e_convergence.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from syncer.engine import RunResult, SyncEngine
from syncer.mapping import load_file
from syncer.settings import Settings
from tests.conftest import write_table


class FakeTime:
    """A clock that moves only when someone sleeps: backoffs, cool-downs, pacing and job polls
    cost no real time. Threads share it, so waits on several threads add up (time runs fast,
    never slow: nothing is ever sent earlier than the engine meant to)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0.0
        self._lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.now += max(0.0, seconds)
            self.slept += max(0.0, seconds)


class ScaledTime:
    """Real time running ``factor`` times faster: ``clock()`` is monotonic seconds times
    ``factor`` and ``sleep(s)`` sleeps ``s / factor``. Engine, limiter and the vendor's rate
    limit share it, so a vendor allowing one request a second behaves as it would, only
    ``factor`` times sooner; threads really run concurrently (unlike FakeTime)."""

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self._start = time.monotonic()

    def clock(self) -> float:
        return (time.monotonic() - self._start) * self.factor

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds) / self.factor)


class World:
    """A mapping file, a SQLite warehouse table ``segment``, a state database and an engine.

    ``env`` goes into ``.env`` beside the mapping (the ``${VAR}`` secrets); the test's working
    directory must be ``root`` (the ``isolated`` fixture does that).
    """

    def __init__(
        self,
        root: Path,
        mapping: str,
        env: dict[str, str],
        *,
        timing: FakeTime | ScaledTime | None = None,
        **settings: Any,
    ) -> None:
        self.root = root
        self.path = root / "sync.yaml"
        self.path.write_text(mapping, encoding="utf-8")
        (root / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        self.warehouse = f"sqlite:///{root / 'warehouse.db'}"
        self.time = timing or FakeTime()
        self.engine = SyncEngine(
            Settings(
                warehouse_url=self.warehouse,
                state_url=f"sqlite:///{root / 'state.db'}",
                **{"http_timeout": 10.0, **settings},
            ),
            sleep=self.time.sleep,
            clock=self.time.clock,
            fork_reader=False,
        )

    def segment(self, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        write_table(self.warehouse, "segment", columns, rows)

    def run(self) -> RunResult:
        return self.engine.run(load_file(self.path, env_file=self.root / ".env"))
