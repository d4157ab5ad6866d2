"""How long ``syncer forget`` spends erasing one key from a large audit log (SQLite).

The audit events have no index on their key (one would cost every run's inserts), so erasing
a person's key scans them. This builds a state database with ``--events`` events of one sync
(hashed keys, as by default), then times ``syncer.forget.erase`` for one member in one
transaction, with ``secure_delete`` on as ``forget`` has it.

    .venv/bin/python bench/forget_bench.py --events 1000000,5000000
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import sqlite3
import tempfile
import time
from pathlib import Path

from syncer.forget import erase
from syncer.state import state_engine, writing

RUN = (
    "insert into syncer_runs (id, sync, status, trigger, mode, full_resync, started_at,"
    " source_rows, added, removed, updated, unchanged, rejected, invalid, failed, pending)"
    " values ('r1', 'vip', 'succeeded', 'cli', 'mirror', 0, ?, 0, 0, 0, 0, 0, 0, 0, 0, 0)"
)
EVENT = (
    "insert into syncer_events (run_id, key, operation, outcome, reason, at)"
    " values ('r1', ?, 'add', 'accepted', NULL, ?)"
)


def one(directory: Path, events: int) -> float:
    path = directory / f"state-{events}.db"
    engine = state_engine(f"sqlite:///{path}")
    now = dt.datetime.now(dt.UTC).isoformat()
    with sqlite3.connect(path) as db:
        db.execute(RUN, (now,))
        keys = (hashlib.sha256(f"p{i}@example.com".encode()).hexdigest() for i in range(events))
        db.executemany(EVENT, ((key, now) for key in keys))
        db.execute(
            "insert into syncer_records (sync, key, hash, synced_at, unsure)"
            " values ('vip', 'p7@example.com', 1, ?, 0)",
            (now,),
        )
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA secure_delete = ON")
        conn.commit()
        start = time.perf_counter()
        with writing(conn):
            erased = erase(conn, "vip", "p7@example.com")
        took = time.perf_counter() - start
    assert erased == 1, erased
    engine.dispose()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", default="1000000", help="comma-separated sizes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.events.split(",")):
            print(f"{size:>10} events: erasing one key took {one(Path(tmp), size):.3f} s")


if __name__ == "__main__":
    main()
