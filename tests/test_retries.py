"""The engine's retry policy, observed through an injected sleep (nothing really sleeps).

The real engine, state store and webhook connector run in-process against a respx router.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from syncer.engine import SyncEngine
from syncer.mapping import load_file
from syncer.settings import Settings

URL = "https://hooks.example/sync"


class FakeTime:
    """A clock that only moves when the engine sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 3))
        self.now += seconds

    def clock(self) -> float:
        return self.now


def setup(
    tmp_path: Path, rows: int, answers: list[Any], **settings: Any
) -> tuple[SyncEngine, Any, respx.Router, FakeTime]:
    warehouse = tmp_path / "w.db"
    with sqlite3.connect(warehouse) as conn:
        conn.execute("CREATE TABLE s (id TEXT, name TEXT)")
        conn.executemany("INSERT INTO s VALUES (?, ?)", [(f"id{i}", "n") for i in range(rows)])
    mapping = tmp_path / "s.yaml"
    mapping.write_text(
        "source: {query: 'select id, name from s', key: id}\nfields: {name: name}\n"
        f"destination: {{connector: webhook, url: '{URL}', batch_size: 100,"
        " max_concurrency: 1}\n"
    )
    router = respx.Router()
    router.post(URL).mock(side_effect=answers)
    fake = FakeTime()
    engine = SyncEngine(
        Settings(
            warehouse_url=f"sqlite:///{warehouse}",
            state_url=f"sqlite:///{tmp_path / 'state.db'}",
            **settings,
        ),
        transport=httpx.MockTransport(router.handler),
        sleep=fake.sleep,
        clock=fake.clock,
    )
    return engine, load_file(mapping), router, fake


def ok() -> httpx.Response:
    return httpx.Response(200, json={"rejected": []})


def test_5xx_is_retried_with_growing_jittered_backoff(tmp_path: Path) -> None:
    engine, sync, _router, fake = setup(
        tmp_path, 3, [httpx.Response(503), httpx.Response(502), httpx.Response(500), ok()]
    )
    result = engine.run(sync)
    assert result.status == "succeeded" and result.counts["added"] == 3
    assert len(fake.sleeps) == 3
    assert 1 <= fake.sleeps[0] <= 2 and 2 <= fake.sleeps[1] <= 3 and 4 <= fake.sleeps[2] <= 5


def test_retry_after_is_honoured_and_429_does_not_use_up_attempts(tmp_path: Path) -> None:
    limited = [httpx.Response(429, headers={"Retry-After": "7"}) for _ in range(4)]
    engine, sync, _router, fake = setup(tmp_path, 3, [*limited, ok()], retry_attempts=2)
    result = engine.run(sync)
    assert result.status == "succeeded", result.message
    assert fake.sleeps == [7, 7, 7, 7]


def test_retry_after_is_clamped(tmp_path: Path) -> None:
    answers = [httpx.Response(503, headers={"Retry-After": "86400"}), ok()]
    engine, sync, _router, fake = setup(tmp_path, 1, answers, max_retry_after=30)
    assert engine.run(sync).status == "succeeded"
    assert fake.sleeps == [30]


def test_attempts_run_out_and_the_batch_waits_for_the_next_run(tmp_path: Path) -> None:
    engine, sync, _router, fake = setup(
        tmp_path, 5, [httpx.Response(500)] * 3 + [ok()], retry_attempts=3
    )
    result = engine.run(sync)
    assert (result.status, result.exit_code, result.counts["failed"]) == ("partial", 75, 5)
    assert len(fake.sleeps) == 2
    again = engine.run(sync)
    assert (again.status, again.counts["added"]) == ("succeeded", 5)


def test_time_budget_bounds_a_throttled_batch(tmp_path: Path) -> None:
    limited = [httpx.Response(429, headers={"Retry-After": "40"})] * 50
    engine, sync, router, fake = setup(tmp_path, 2, limited, batch_time_budget=100)
    result = engine.run(sync)
    assert result.counts["failed"] == 2
    assert sum(fake.sleeps) <= 100
    assert router.calls.call_count < 10


def test_auth_failure_stops_the_sync_with_a_config_exit(tmp_path: Path) -> None:
    engine, sync, router, fake = setup(tmp_path, 250, [httpx.Response(401)] * 5)
    result = engine.run(sync)
    assert (result.status, result.exit_code) == ("failed", 78)
    assert "credentials" in (result.message or "")
    assert fake.sleeps == []  # never retried
    assert router.calls.call_count == 1


@pytest.mark.parametrize("bad", [["id13"], ["id3", "id77"]])
def test_whole_batch_400_is_split_until_bad_records_are_isolated(
    tmp_path: Path, bad: list[str]
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        keys = [r["key"] for r in json.loads(request.content)["records"]]
        if any(k in bad for k in keys):
            return httpx.Response(400, json={"error": "invalid record"})
        return ok()

    engine, sync, router, _fake = setup(tmp_path, 100, [])
    router.routes[0].side_effect = answer
    result = engine.run(sync)
    assert result.counts["added"] == 100 - len(bad)
    assert result.counts["rejected"] == len(bad)
    detail = engine.run_detail(result.run_id or "")
    assert detail is not None and all("HTTP 400" in p["reason"] for p in detail["problems"])
    assert router.calls.call_count <= 1 + 2 * 7 * len(bad)  # halving: ~2 log2(100) per bad one
