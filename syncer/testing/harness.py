"""The engine wired for tests: a mapping, a SQLite warehouse and state database in a directory,
the real ``SyncEngine`` sending through a respx router, on a clock that moves only when the
engine waits (backoffs, Retry-After, cool-downs cost no real time)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import respx
import sqlalchemy as sa
import yaml
from pydantic import SecretStr

from syncer.connector import Connector
from syncer.engine import PlanResult, RunResult, SyncEngine
from syncer.errors import ConfigError
from syncer.mapping import LoadedSync, load_file
from syncer.ratelimit import AccountLimiter
from syncer.settings import Settings

#: The columns of the harness's ``segment`` table, every one text.
SEGMENT_COLUMNS: tuple[str, ...] = ("id", "email", "first_name", "last_name", "phone", "country")

#: The ``${NAME}`` a destination setting may use for the harness's directory.
ROOT_VARIABLE = "KIT_ROOT"

#: A row of the segment: column to value (missing columns are NULL).
Row = Mapping[str, str | None]


@contextmanager
def engine_client(
    router: respx.Router, *, limiter: AccountLimiter | None = None, timeout: float = 30.0
) -> Iterator[httpx.Client]:
    """The engine's HTTP client (classification, scrubbing, ``limiter``) sending to
    ``router``: what a connector gets inside a run, for tests that call it directly."""
    from syncer.http import make_client

    transport = httpx.MockTransport(router.handler)
    with make_client(timeout, transport=transport, limiter=limiter) as client:
        yield client


def status_of(result: RunResult) -> str:
    """A run's status as its word ("succeeded", "partial"...), whether the engine gives a
    string or an enum."""
    return str(getattr(result.status, "value", result.status))


def _unsettled(result: RunResult) -> bool:
    """Whether vendor jobs of the sync are still out after ``result``."""
    return status_of(result) in ("submitted", "waiting") or bool(result.counts.get("pending"))


class FakeClock:
    """The engine's clock and sleep: ``sleep`` records the wait and moves ``now``, never
    sleeping. Threads share it, so waits on several threads add up (time runs fast, never
    slow). ``forbid_zero_waits`` fails a zero wait, to catch a busy loop."""

    def __init__(self, *, forbid_zero_waits: bool = False) -> None:
        self.now = 0.0
        self.slept: list[float] = []
        self._forbid_zero = forbid_zero_waits
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert not (self._forbid_zero and seconds <= 0), "asked to wait for nothing (busy loop)"
        with self._lock:
            self.slept.append(seconds)
            self.now += max(0.0, seconds)


def mapping_yaml(
    connector: str,
    destination: Mapping[str, object],
    *,
    fields: Mapping[str, object],
    key: str = "email",
    key_type: str = "email",
    mode: str = "mirror",
    name: str = "kit",
) -> str:
    """A mapping file reading the harness's ``segment`` table into ``connector``."""
    document = {
        "name": name,
        "source": {
            "query": f"select {', '.join(SEGMENT_COLUMNS)} from segment",
            "key": key,
            "key_type": key_type,
        },
        "mode": mode,
        "fields": dict(fields),
        "destination": {"connector": connector, **destination},
        "guards": {"max_remove_pct": 100},
    }
    return yaml.safe_dump(document, sort_keys=False)


class SyncHarness:
    """One sync of ``connector`` run in-process by the real engine.

    ``destination`` is the mapping's ``destination:`` block without ``connector:``; secrets in
    it are ``${NAME}`` references resolved from ``secrets`` (written to a ``.env`` beside the
    mapping, as a user would), and ``${KIT_ROOT}`` is ``root`` (for a path setting).
    Requests go to ``router`` (made when not given): mount a ``FakeVendor`` on it, or add
    respx routes. The connector must be installed under its ``name`` in the
    ``syncer.connectors`` entry points, as the engine loads it from there.
    """

    def __init__(
        self,
        root: Path,
        connector: type[Connector],
        destination: Mapping[str, object],
        *,
        fields: Mapping[str, object],
        key: str = "email",
        key_type: str = "email",
        mode: str = "mirror",
        secrets: Mapping[str, str] | None = None,
        router: respx.Router | None = None,
        clock: FakeClock | None = None,
        retry_attempts: int = 5,
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.router = router if router is not None else respx.Router(assert_all_called=False)
        self.clock = clock if clock is not None else FakeClock()
        self.warehouse_url = f"sqlite:///{root / 'warehouse.db'}"
        self.state_url = f"sqlite:///{root / 'state.db'}"
        self.mapping_path = root / "kit.yaml"
        self.mapping_path.write_text(
            mapping_yaml(
                connector.name, destination, fields=fields, key=key, key_type=key_type, mode=mode
            ),
            encoding="utf-8",
        )
        self.env_path = root / ".env"
        env = {ROOT_VARIABLE: str(root), **(secrets or {})}
        self.env_path.write_text(
            "".join(f"{name}={value}\n" for name, value in env.items()), encoding="utf-8"
        )
        self.segment([])
        self.sync = self._load(connector)
        self.engine = SyncEngine(
            Settings(
                warehouse_url=SecretStr(self.warehouse_url),
                state_url=SecretStr(self.state_url),
                retry_attempts=retry_attempts,
                http_timeout=10.0,
            ),
            transport=httpx.MockTransport(self.router.handler),
            sleep=self.clock.sleep,
            clock=self.clock,
            fork_reader=False,
        )

    def _load(self, connector: type[Connector]) -> LoadedSync:
        try:
            sync = load_file(self.mapping_path, env_file=self.env_path)
        except ConfigError as exc:
            if "unknown connector" in str(exc):
                raise ConfigError(
                    f"{exc}\nThe kit loads connectors as the engine does, from the"
                    " 'syncer.connectors' entry points: install your package (pip install -e .)."
                ) from None
            raise
        if sync.connector_cls is not connector:
            raise ConfigError(
                f"connector {connector.name!r} is registered as {sync.connector_cls!r},"
                f" not {connector!r}: reinstall the package that declares the entry point"
            )
        return sync

    def segment(self, rows: Sequence[Row]) -> None:
        """Replace the warehouse's ``segment`` table with ``rows``."""
        engine = sa.create_engine(self.warehouse_url)
        meta = sa.MetaData()
        table = sa.Table("segment", meta, *(sa.Column(c, sa.Text()) for c in SEGMENT_COLUMNS))
        with engine.begin() as conn:
            table.drop(conn, checkfirst=True)
            table.create(conn)
            if rows:
                conn.execute(
                    table.insert(), [{c: row.get(c) for c in SEGMENT_COLUMNS} for row in rows]
                )
        engine.dispose()

    def run(self, *, full_resync: bool = False) -> RunResult:
        """One run, as ``syncer sync now`` would do it."""
        return self.engine.run(self.sync, full_resync=full_resync)

    def settle(self, *, full_resync: bool = False, runs: int = 10) -> RunResult:
        """Run, then run again while vendor jobs are still out (a later run settles them):
        the last run's result, with the counts summed over every run made."""
        results = [self.run(full_resync=full_resync)]
        while len(results) < runs and _unsettled(results[-1]):
            results.append(self.run())
        totals: dict[str, int] = {}
        for result in results:
            for name, value in result.counts.items():
                if name != "source_rows":
                    totals[name] = totals.get(name, 0) + value
        totals["source_rows"] = results[0].counts.get("source_rows", 0)
        return dataclasses.replace(results[-1], counts=totals)

    def plan(self, *, full_resync: bool = False) -> PlanResult:
        """What a run would send now; nothing is sent."""
        return self.engine.plan(self.sync, full_resync=full_resync)
