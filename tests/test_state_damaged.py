"""A damaged state database is a configuration problem (exit 78) with a message that says what
to do, in every command, never a traceback and never "run again later" (75).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.fake_destination import Harness, harness, people


def damage_table(db: Path, table: str) -> None:
    """Overwrite the root page of ``table`` with garbage, as a bad disk or a copy cut short."""
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (root,) = conn.execute(
            "select rootpage from sqlite_master where name = ?", (table,)
        ).fetchone()
        (size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    with db.open("r+b") as f:
        f.seek((root - 1) * size)
        f.write(b"\xa5" * size)


def assert_damaged(proc_out: str, proc_err: str, code: int, db: Path) -> None:
    assert code == 78, proc_out + proc_err
    assert "Traceback" not in proc_err
    assert f"the state database {db} cannot be used" in proc_err
    assert "Running again will not help" in proc_err
    assert "restore it from a backup" in proc_err


@pytest.fixture
def synced(tmp_path: Path) -> tuple[Harness, Path]:
    db = tmp_path / "state.db"
    with harness(tmp_path, f"sqlite:///{db}", batch_size=5) as h:
        h.segment(people(12))
        assert h.sync()[0] == 0
        yield h, db


READERS = {
    "syncer_runs": [("sync", "now", "vip"), ("runs",), ("run", "show", "0123456789abcdef")],
    "syncer_records": [("sync", "now", "vip"), ("plan", "vip")],
}


@pytest.mark.parametrize("table", sorted(READERS))
def test_every_command_says_a_damaged_state_database_needs_a_human(
    synced: tuple[Harness, Path], table: str
) -> None:
    h, db = synced
    damage_table(db, table)
    for args in READERS[table]:  # every command that reads the damaged table
        proc = h.cli(*args)
        assert_damaged(proc.stdout, proc.stderr, proc.returncode, db)

    proc = h.cli("sync", "now", h.name, "--json")
    doc = json.loads(proc.stdout)
    assert doc["exit_code"] == 78, doc
    assert "cannot be used" in json.dumps(doc)


def test_a_file_that_is_not_a_database_at_all(synced: tuple[Harness, Path]) -> None:
    h, db = synced
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.write_bytes(b"not a database, just some text a careless script wrote here\n" * 100)
    for args in (("sync", "now", h.name), ("runs",), ("plan", h.name)):
        proc = h.cli(*args)
        assert proc.returncode == 78, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        assert "it is not a SQLite database" in proc.stderr
