"""The no-change short-cut (syncer.unchanged): a snapshot equal to state is never staged, and
whenever it is taken or given up, plans and runs count exactly what the full diff counts."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from syncer.connector import BatchResult, Capabilities, Connector, ConnectorConfig, Record
from syncer.diff import Staging
from syncer.engine import SyncEngine
from syncer.mapping import LoadedSync, SyncDefinition
from syncer.settings import Settings
from syncer.unchanged import UnchangedCheck, digest

ROWS = 1_000  # one chunk, sampled every third row: row 1 (counted from 0) is never probed


class AcceptAll(Connector):
    name = "accept-all"
    capabilities = Capabilities(max_batch_size=500)

    def _ok(self, records: Sequence[Record]) -> BatchResult:
        return BatchResult.all_accepted(records)

    add = remove = update = _ok


class World:
    def __init__(self, root: Path, mode: str = "mirror") -> None:
        self.warehouse = root / "w.db"
        with sqlite3.connect(self.warehouse) as conn:
            conn.execute("CREATE TABLE members (id TEXT, name TEXT)")
            conn.executemany(
                "INSERT INTO members VALUES (?, ?)", ((f"m{i:05}", f"n{i}") for i in range(ROWS))
            )
        self.state = root / "s.db"
        definition = SyncDefinition.model_validate(
            {
                "name": "members",
                "source": {"query": "select id, name from members order by rowid", "key": "id"},
                "mode": mode,
                "fields": {"name": "name"},
                "destination": {"connector": "accept-all"},
                "guards": {"max_remove_pct": 100},
            }
        )
        self.sync = LoadedSync(definition, root / "members.yaml", AcceptAll, ConnectorConfig())
        self.settings = Settings(
            warehouse_url=f"sqlite:///{self.warehouse}",
            state_url=f"sqlite:///{self.state}",
            read_batch_size=ROWS,
        )

    def sql(self, db: Path, statement: str, *params: Any) -> None:
        with sqlite3.connect(db) as conn:
            conn.execute(statement, params)

    def engine(self, fork: bool) -> SyncEngine:
        return SyncEngine(self.settings, fork_reader=fork)


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each load since found the snapshot unchanged."""
    seen: list[bool] = []
    original = UnchangedCheck.unchanged

    def spy(self: UnchangedCheck) -> bool:
        result = original(self)
        seen.append(result)
        return result

    monkeypatch.setattr(UnchangedCheck, "unchanged", spy)
    return seen


def plans(world: World, monkeypatch: pytest.MonkeyPatch, fork: bool, **kw: Any) -> list[Any]:
    """The plan's dict with the short-cut allowed, then with it switched off."""
    engine = world.engine(fork)
    with_check = engine.plan(world.sync, **kw).as_dict()
    with monkeypatch.context() as patch:
        patch.setattr(Staging, "_unchanged_check", lambda self: None)
        without = engine.plan(world.sync, **kw).as_dict()
    return [with_check, without]


Change = Callable[[World], None]
CHANGES: dict[str, Change] = {
    "nothing": lambda w: None,
    "one field, in a row no probe sees": lambda w: w.sql(
        w.warehouse, "UPDATE members SET name = 'x' WHERE id = 'm00001'"
    ),
    "two unprobed rows swap their values": lambda w: w.sql(
        w.warehouse,
        "UPDATE members SET name = CASE id WHEN 'm00001' THEN 'n2' ELSE 'n1' END"
        " WHERE id IN ('m00001', 'm00002')",
    ),
    "a row gone and another twice (same count)": lambda w: w.sql(
        w.warehouse, "UPDATE members SET id = 'm00004' WHERE id = 'm00001'"
    ),
    "a null key": lambda w: w.sql(w.warehouse, "UPDATE members SET id = NULL WHERE id = 'm00001'"),
    "an unconfirmed send in state": lambda w: w.sql(
        w.state, "UPDATE syncer_records SET unsure = 2 WHERE key = 'm00001'"
    ),
    "one row more in state": lambda w: w.sql(
        w.state,
        "INSERT INTO syncer_records (sync, key, hash, synced_at, unsure)"
        " SELECT sync, 'zzz', hash, synced_at, 0 FROM syncer_records WHERE key = 'm00001'",
    ),
}


@pytest.mark.parametrize("fork", [True, False], ids=["forked", "in-process"])
@pytest.mark.parametrize("change", list(CHANGES))
def test_counts_are_those_of_the_full_diff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, taken: list[bool], change: str, fork: bool
) -> None:
    world = World(tmp_path)
    assert world.engine(fork).run(world.sync).counts["added"] == ROWS
    CHANGES[change](world)
    taken.clear()
    with_check, without = plans(world, monkeypatch, fork)
    assert with_check == without
    short_cut = change == "nothing"
    assert taken == [True] if short_cut else True not in taken
    if short_cut:
        assert with_check["unchanged"] == ROWS
        assert not any(with_check["samples"].values())
    # A run then sends what the plan said, and the next run finds nothing to do.
    result = world.engine(fork).run(world.sync)
    sent = {k: result.counts[k] for k in ("added", "updated", "removed")}
    assert sent == {
        "added": with_check["add"],
        "updated": with_check["update"],
        "removed": with_check["remove"],
    }
    assert result.counts["invalid"] == with_check["invalid"]
    again = world.engine(fork).run(world.sync).counts
    assert (again["added"], again["updated"], again["removed"]) == (0, 0, 0)


def test_a_full_resync_sends_everything_even_when_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, taken: list[bool]
) -> None:
    world = World(tmp_path)
    world.engine(True).run(world.sync)
    taken.clear()
    with_check, without = plans(world, monkeypatch, True, full_resync=True)
    assert with_check == without
    assert with_check["update"] == ROWS
    assert not taken, "a full resync never holds its chunks"
    assert world.engine(True).run(world.sync, full_resync=True).counts["updated"] == ROWS


def test_unchanged_runs_are_recorded_like_any_other(tmp_path: Path) -> None:
    world = World(tmp_path)
    engine = world.engine(True)
    engine.run(world.sync)
    result = engine.run(world.sync)
    assert result.status == "succeeded"
    assert {k: result.counts[k] for k in ("source_rows", "unchanged", "invalid")} == {
        "source_rows": ROWS,
        "unchanged": ROWS,
        "invalid": 0,
    }
    with sqlite3.connect(world.state) as conn:
        assert conn.execute("SELECT COUNT(*) FROM syncer_records").fetchone() == (ROWS,)


def test_the_digest_ignores_order_and_binds_each_hash_to_its_key() -> None:
    keys = [b"a", b"b", b"c"]
    assert digest(keys, [1, -2, 3]) == digest(keys[::-1], [3, -2, 1])
    assert digest(keys, [1, -2, 3]) != digest(keys, [-2, 1, 3])  # values swapped between keys
