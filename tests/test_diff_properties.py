"""Property tests: applying the diff to what the destination holds yields the new segment.

The real engine, state store (SQLite) and webhook connector run in-process; only the network
is replaced by a respx router that keeps the destination's members.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncer.engine import SyncEngine
from syncer.mapping import load_file
from syncer.settings import Settings

URL = "https://destination.example/hook"

Segment = dict[str, str]  # key -> name

segments = st.dictionaries(
    keys=st.sampled_from([f"k{i:02}" for i in range(25)]),
    values=st.sampled_from(["ann", "bob", "cy", "dee"]),
    max_size=25,
)


class Destination:
    """What a well-behaved destination does with the webhook's batches."""

    def __init__(self) -> None:
        self.members: dict[str, dict[str, Any]] = {}
        self.sent: dict[str, int] = {"add": 0, "update": 0, "remove": 0}
        self.router = respx.Router(assert_all_called=False)
        self.router.post(URL).mock(side_effect=self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        doc = json.loads(request.content)
        self.sent[doc["operation"]] += len(doc["records"])
        for record in doc["records"]:
            if doc["operation"] == "remove":
                self.members.pop(record["key"], None)
            else:
                self.members[record["key"]] = record["fields"]
        return httpx.Response(200, json={"rejected": []})


class World:
    """A warehouse table, a state store and one sync definition in a fresh directory."""

    def __init__(self, root: Path, mode: str) -> None:
        root.mkdir(parents=True)
        self.warehouse = root / "warehouse.db"
        sqlite3.connect(self.warehouse).close()
        mapping = root / "segment.yaml"
        mapping.write_text(
            "source: {query: 'select id, name from segment', key: id}\n"
            f"mode: {mode}\nfields: {{name: name}}\n"
            f"destination: {{connector: webhook, url: '{URL}', batch_size: 4}}\n"
            "guards: {max_remove_pct: 100}\n"
        )
        self.sync = load_file(mapping)
        self.settings = Settings(
            warehouse_url=f"sqlite:///{self.warehouse}", state_url=f"sqlite:///{root / 'state.db'}"
        )
        self.destination = Destination()
        self.engine = SyncEngine(
            self.settings, transport=httpx.MockTransport(self.destination.router.handler)
        )

    def run(self, segment: Segment) -> dict[str, int]:
        with sqlite3.connect(self.warehouse) as conn:
            conn.execute("DROP TABLE IF EXISTS segment")
            conn.execute("CREATE TABLE segment (id TEXT, name TEXT)")
            conn.executemany("INSERT INTO segment VALUES (?, ?)", segment.items())
        before = dict(self.destination.sent)
        result = self.engine.run(self.sync, force=True)
        assert result.status == "succeeded", result.message
        return {op: self.destination.sent[op] - before[op] for op in before}


def expected(mode: str, old: Segment, new: Segment) -> dict[str, dict[str, str]]:
    if mode == "mirror":
        return {k: {"name": v} for k, v in new.items()}
    if mode == "membership":  # members who stay keep the fields they were added with
        return {k: {"name": old.get(k, v)} for k, v in new.items()}
    merged = {**old, **new}  # upsert: never removes
    return {k: {"name": v} for k, v in merged.items()}


@pytest.mark.parametrize("mode", ["mirror", "membership", "upsert"])
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(old=segments, new=segments)
def test_applying_the_diff_yields_the_new_segment(
    mode: str, old: Segment, new: Segment, tmp_path: Path
) -> None:
    world = World(tmp_path / uuid.uuid4().hex, mode)
    world.run(old)
    assert world.destination.members == {k: {"name": v} for k, v in old.items()}

    sent = world.run(new)
    assert world.destination.members == expected(mode, old, new)
    joined, left = new.keys() - old.keys(), old.keys() - new.keys()
    changed = {k for k in new.keys() & old.keys() if new[k] != old[k]}
    assert sent["add"] == len(joined)
    assert sent["remove"] == (len(left) if mode != "upsert" else 0)
    assert sent["update"] == (len(changed) if mode != "membership" else 0)

    assert world.run(new) == {"add": 0, "update": 0, "remove": 0}, "second run must send nothing"


def test_update_only_sends_updates_and_nothing_else(tmp_path: Path) -> None:
    world = World(tmp_path / "w", "update_only")
    world.run({"k01": "ann", "k02": "bob"})
    assert world.destination.sent == {"add": 0, "update": 2, "remove": 0}
    sent = world.run({"k02": "cy", "k03": "dee"})  # k01 left, k02 changed, k03 new
    assert sent == {"add": 0, "update": 2, "remove": 0}
    assert world.destination.members["k02"] == {"name": "cy"}
    assert "k01" in world.destination.members, "update_only never removes"
