"""Edges of a run that users meet: buggy plugins, env files, missing syncs, capabilities."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from syncer.connector import (
    BatchResult,
    Capabilities,
    Connector,
    ConnectorConfig,
    Outcome,
    Record,
)
from syncer.engine import SyncEngine
from syncer.errors import AuthError, ConfigError
from syncer.mapping import LoadedSync, SyncDefinition, load_all, load_file, load_named
from syncer.settings import Settings
from tests.conftest import run_cli


def _warehouse(path: Path, n: int) -> str:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE members (id TEXT, name TEXT)")
        conn.executemany("INSERT INTO members VALUES (?, ?)", [(f"m{i}", "x") for i in range(n)])
    return f"sqlite:///{path}"


class Crashes(Connector):
    """A plugin with a bug: its add() dies with an exception that quotes a record."""

    name = "crashes"
    capabilities = Capabilities(max_batch_size=2)
    max_concurrency = 1  # one batch at a time, so "the second call" is well defined
    calls = 0

    def add(self, records: Sequence[Record]) -> BatchResult:
        Crashes.calls += 1
        if Crashes.calls == 2:
            raise KeyError(f"secret-member-{records[0].key}")
        return BatchResult.all_accepted(records)


def _sync(tmp_path: Path, cls: type[Connector]) -> LoadedSync:
    definition = SyncDefinition.model_validate(
        {
            "name": "members",
            "source": {"query": "select id, name from members", "key": "id"},
            "fields": {"name": "name"},
            "destination": {"connector": cls.name},
        }
    )
    return LoadedSync(definition, tmp_path / "members.yaml", cls, ConnectorConfig())


def test_a_crashing_connector_fails_its_run_without_saving_or_leaking(tmp_path: Path) -> None:
    settings = Settings(
        warehouse_url=_warehouse(tmp_path / "w.db", 6), state_url=f"sqlite:///{tmp_path}/s.db"
    )
    engine = SyncEngine(settings)
    result = engine.run(_sync(tmp_path, Crashes))
    assert result.status == "failed" and result.exit_code == 1
    assert result.message is not None and "KeyError" in result.message
    assert "secret-member" not in result.message
    assert result.counts["added"] == 2, "the acknowledged first batch is kept"
    (run,) = engine.runs("members")
    assert run["status"] == "failed"
    # The next run resumes with what was not acknowledged.
    Crashes.calls = 10
    assert engine.run(_sync(tmp_path, Crashes)).counts["added"] == 4


class RefusesCredentials(Connector):
    """A destination whose every answer says the credentials are wrong."""

    name = "refuses-credentials"
    capabilities = Capabilities(max_batch_size=1)
    max_concurrency = 4
    calls = 0
    lock = threading.Lock()

    def add(self, records: Sequence[Record]) -> BatchResult:
        with RefusesCredentials.lock:
            RefusesCredentials.calls += 1
        raise AuthError("HTTP 401 from the destination: check the token")


def test_after_a_batch_fails_for_good_no_queued_batch_is_sent(tmp_path: Path) -> None:
    """Batches wait in a queue for the senders: once one fails for good (wrong
    credentials), the ones still queued are not sent, and stay unacknowledged."""
    settings = Settings(
        warehouse_url=_warehouse(tmp_path / "w.db", 40), state_url=f"sqlite:///{tmp_path}/s.db"
    )
    engine = SyncEngine(settings)
    result = engine.run(_sync(tmp_path, RefusesCredentials))
    assert result.status == "failed" and result.exit_code == 78
    # At most one request per sender had started when the first answer came back.
    assert 1 <= RefusesCredentials.calls <= RefusesCredentials.max_concurrency
    assert result.counts["added"] == 0


def test_a_batch_nothing_was_said_about_is_accepted_whole() -> None:
    records = [Record("a", {"n": 1}), Record("b", {"n": 2})]
    plain = BatchResult(records)
    assert plain.outcomes() == [Outcome("a", "accepted"), Outcome("b", "accepted")]
    assert plain.settled() == plain.outcomes() and len(plain.settled()) == 2
    assert list(plain.settled()[1:]) == [Outcome("b", "accepted")]
    said = BatchResult(records)
    said.reject("b", "invalid email")
    assert said.settled() == [Outcome("a", "accepted"), Outcome("b", "rejected", "invalid email")]


class AddOnly(Connector):
    name = "add-only"
    capabilities = Capabilities(operations=frozenset({"add"}))


def test_mode_needing_an_unsupported_operation_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("syncer.mapping.load_connector", lambda name: AddOnly)
    path = tmp_path / "m.yaml"
    path.write_text(
        "source: {query: 'select 1 as id', key: id}\nmode: mirror\n"
        "destination: {connector: add-only}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_file(path)
    assert "m.yaml: mode" in str(err.value) and "remove" in str(err.value)


def test_env_file_option_resolves_mapping_variables(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "out.yaml").write_text(
        "source: {query: 'select id, name from members', key: id}\nfields: {name: name}\n"
        "destination: {connector: file, path: '${OUT_PATH}'}\n"
    )
    env_file = tmp_path / "prod.env"
    env_file.write_text(
        f"SYNCER_WAREHOUSE_URL={_warehouse(tmp_path / 'w.db', 3)}\n"
        f"SYNCER_STATE_URL=sqlite:///{tmp_path}/s.db\nSYNCER_MAPPINGS_DIR={maps}\n"
        f"OUT_PATH={tmp_path}/members.csv\n"
    )
    proc = run_cli("--env-file", str(env_file), "sync", "now", "out")
    assert proc.returncode == 0, proc.stderr
    assert len((tmp_path / "members.csv").read_text().splitlines()) == 4


def test_missing_sync_is_named_even_beside_a_broken_file(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(
        "name: renamed\nsource: {query: 'select 1 as id', key: id}\n"
        "destination: {connector: file, path: out.csv}\n"
    )
    (tmp_path / "broken.yaml").write_text("source: [unclosed\n")
    assert [s.name for s in load_named(tmp_path, ["renamed"])] == ["renamed"]
    with pytest.raises(ConfigError) as err:
        load_named(tmp_path, ["nosuch"])
    assert "no sync named 'nosuch'" in str(err.value) and "broken.yaml" in str(err.value)
    with pytest.raises(ConfigError):
        load_all(tmp_path)
