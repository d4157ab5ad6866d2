"""How long write-back to the warehouse takes, and how much memory it holds (issue 16).

Two cases, on each warehouse dialect asked for (SQLite, DuckDB, PostgreSQL):

- ``first``: one run that entered ``--members`` members (a first run): as many membership
  rows, entries and audit events to write.
- ``history``: write-back turned on for a sync with ``--runs`` old small runs (10 members
  in and out each): every one is written, one transaction each.

The state database is SQLite, built directly (no sends). Peak RSS is the process's high-water
mark after building state, then after each write-back: flat means pages, not the whole run.

    .venv/bin/python bench/writeback_bench.py --members 1000000 --runs 1000
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

from syncer.mapping import SyncDefinition
from syncer.settings import Settings
from syncer.state import state_engine
from syncer.writeback import write_pending

PG = os.environ.get("SYNCER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
STAMP = "2026-12-01 08:00:00.000000"


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_state(path: Path, members: int, runs: int) -> None:
    state_engine(f"sqlite:///{path}").dispose()  # creates the schema
    db = sqlite3.connect(path)
    run_sql = (
        "insert into syncer_runs (id, sync, status, trigger, mode, full_resync, started_at,"
        " finished_at, source_rows, added, removed, updated, unchanged, rejected, invalid,"
        " failed, pending) values (?, 'vip', 'succeeded', 'cli', 'mirror', 0, ?, ?, ?, ?, 0,"
        " 0, 0, 0, 0, 0, 0)"
    )

    def member_rows(run_id: str, start: int, n: int) -> Iterator[tuple[object, ...]]:
        for i in range(start, start + n):
            key = f"person{i}@example.com"
            grp = "holdout" if i % 10 == 0 else "treated"
            yield ("vip", key, hashlib.sha256(key.encode()).hexdigest(), 1, grp, STAMP, run_id)

    def audit_rows(run_id: str, start: int, n: int) -> Iterator[tuple[object, ...]]:
        for i in range(start, start + n):
            key = hashlib.sha256(f"person{i}@example.com".encode()).hexdigest()
            yield (run_id, key, "add", "accepted", None, STAMP)

    membership = (
        "insert into syncer_membership (sync, member_key, key, phase, grp, entered_at,"
        " entered_run) values (?, ?, ?, ?, ?, ?, ?)"
    )
    audit = (
        "insert into syncer_events (run_id, key, operation, outcome, reason, at)"
        " values (?, ?, ?, ?, ?, ?)"
    )
    with db:
        for r in range(runs):  # old small runs first (written oldest first)
            run_id = f"old{r:013d}"
            stamp = f"2026-11-{1 + r % 28:02d} 00:{r % 60:02d}:00.000000"
            db.execute(run_sql, (run_id, stamp, stamp, 10, 10))
            db.executemany(membership, member_rows(run_id, 10_000_000 + r * 10, 10))
            db.executemany(audit, audit_rows(run_id, 10_000_000 + r * 10, 10))
        if members:
            db.execute(run_sql, ("first0000000000", STAMP, STAMP, members, members))
            db.executemany(membership, member_rows("first0000000000", 0, members))
            db.executemany(audit, audit_rows("first0000000000", 0, members))
    db.close()


def warehouse(dialect: str, tmp: Path) -> tuple[str, str | None]:
    if dialect == "sqlite":
        path = tmp / "shop.db"
        sqlite3.connect(path).close()
        return f"sqlite:///{path}", None
    if dialect == "duckdb":
        import duckdb

        path = tmp / "shop.duckdb"
        duckdb.connect(str(path)).close()
        return f"duckdb:///{path}", None
    return PG, f"wb_bench_{uuid.uuid4().hex[:8]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--dialects", default="sqlite,duckdb,postgres")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        started = time.perf_counter()
        state_path = tmp / "state.db"
        build_state(state_path, args.members, args.runs)
        print(
            f"state: {args.members:,} members in one run + {args.runs:,} small runs built in"
            f" {time.perf_counter() - started:.1f}s; peak RSS {peak_mb():.0f} MB"
        )
        state = state_engine(f"sqlite:///{state_path}")
        definition = SyncDefinition.model_validate(
            {
                "name": "vip",
                "source": {"query": "select 1 as k", "key": "k"},
                "destination": {"connector": "file", "path": "x.csv"},
                "writeback": {"enabled": True},
            }
        )
        for dialect in args.dialects.split(","):
            url, schema = warehouse(dialect, tmp)
            settings = Settings(warehouse_url=url, writeback_schema=schema or "syncer")
            with state.begin() as conn:
                conn.execute(sa.text("delete from syncer_writeback"))
            started = time.perf_counter()
            report = write_pending(settings, state, definition)
            took = time.perf_counter() - started
            assert report.error is None, report.error
            print(
                f"{dialect:>8}: {report.runs:,} runs, {report.rows} in {took:.1f}s;"
                f" peak RSS {peak_mb():.0f} MB"
            )
            if schema:
                admin = sa.create_engine(PG)
                with admin.begin() as conn:
                    conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
                admin.dispose()


if __name__ == "__main__":
    main()
