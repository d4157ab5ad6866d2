"""Benchmark of ``syncer prune`` on a big audit log, alone and beside a running sync.

It builds a SQLite state database holding ``--events`` audit events (default 10 million, in
runs of 10,000 that started 100 to 400 days ago: every one older than 90 days), inserted
directly with ``executemany``, and a SQLite warehouse of ``--members`` members synced to a
local webhook receiver (a process of its own that answers 200 to every POST). Then:

1. **Prune alone**, on a copy of that database: ``syncer prune --older-than 90d --json`` as a
   whole process: wall time from start to exit, rows removed per table, peak RSS.
2. **A sync beside it**: ``syncer sync now bench --full-resync`` (every member sent again:
   100,000 state rows and audit events written per run, the heaviest write load a run makes)
   is timed ``--reps`` times alone, then over and over while the same prune runs on the
   original database, then ``--reps`` times alone again. The ratio is the median time of the
   syncs that ran wholly during the prune over the median time of those that ran alone.

    .venv/bin/python bench/prune_bench.py                         # 10M events, 100k members
    .venv/bin/python bench/prune_bench.py --events 1000000 --reps 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from segment import QUERY, build_warehouse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EVENTS_PER_RUN = 10_000
STAMP = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy stores a DateTime in SQLite


def build_state(path: Path, events: int) -> dict[str, Any]:
    """The schema through syncer (so it is exactly syncer's), then the rows straight in."""
    from syncer.state import state_engine

    state_engine(f"sqlite:///{path}").dispose()
    t0 = time.perf_counter()
    now = dt.datetime.now(dt.UTC)
    runs = max(1, events // EVENTS_PER_RUN)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    run_rows = []
    for r in range(runs):
        started = (now - dt.timedelta(days=400 - 300 * r / runs)).strftime(STAMP)
        run_rows.append((f"old{r:010d}", "history", started, started))
    # The sync's latest run is recent: it stays whatever the age.
    recent = (now - dt.timedelta(days=1)).strftime(STAMP)
    run_rows.append(("recent", "history", recent, recent))
    conn.executemany(
        "INSERT INTO syncer_runs (id, sync, status, trigger, mode, full_resync, started_at,"
        " finished_at, source_rows, added, removed, updated, unchanged, rejected, invalid,"
        " failed, pending) VALUES (?, ?, 'succeeded', 'schedule', 'mirror', 0, ?, ?,"
        f" {EVENTS_PER_RUN}, {EVENTS_PER_RUN}, 0, 0, 0, 0, 0, 0, 0)",
        run_rows,
    )
    sql = (
        "INSERT INTO syncer_events (run_id, key, operation, outcome, reason, at)"
        " VALUES (?, ?, 'add', ?, ?, ?)"
    )
    n = 0
    for r, (run_id, _sync, started, _) in enumerate(run_rows[:-1]):
        size = EVENTS_PER_RUN if r < runs - 1 else events - n
        rows = [
            (
                run_id,
                f"{n + i:064x}",  # the length of the SHA-256 hex keys the audit log stores
                "rejected" if i % 1000 == 0 else "accepted",
                "mailbox does not exist" if i % 1000 == 0 else None,
                started,
            )
            for i in range(size)
        ]
        conn.executemany(sql, rows)
        n += size
        if r % 50 == 49:
            conn.commit()
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return {
        "events": n,
        "runs": len(run_rows),
        "build_s": round(time.perf_counter() - t0, 1),
        "db_mb": round(path.stat().st_size / 1e6),
    }


def serve() -> None:
    """The receiver: 200 to every POST, nothing parsed."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


class Proc:
    """A whole ``syncer`` process: wall time from start to exit, peak RSS, output."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.out = tempfile.TemporaryFile("w+")  # noqa: SIM115 (read once the process ended)
        self.err = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self.start = time.perf_counter()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "syncer", *args],
            cwd=cwd,
            env=env,
            stdout=self.out,
            stderr=self.err,
            text=True,
        )
        self.end: float | None = None
        self.code: int | None = None
        self.rss_mb = 0.0

    def poll(self) -> bool:
        """True once it ended (and its rusage was collected)."""
        if self.end is not None:
            return True
        pid, status, usage = os.wait4(self.popen.pid, os.WNOHANG)
        if pid == 0:
            return False
        self._ended(status, usage)
        return True

    def wait(self) -> Proc:
        if self.end is None:
            _, status, usage = os.wait4(self.popen.pid, 0)
            self._ended(status, usage)
        return self

    def _ended(self, status: int, usage: Any) -> None:
        self.end = time.perf_counter()
        self.code = os.waitstatus_to_exitcode(status)
        self.popen.returncode = self.code
        self.rss_mb = usage.ru_maxrss / 1024  # kB on Linux
        if self.code != 0:
            self.err.seek(0)
            raise SystemExit(f"syncer exited {self.code}: {self.err.read()[-3000:]}")

    @property
    def wall(self) -> float:
        assert self.end is not None
        return self.end - self.start

    def json(self) -> Any:
        self.out.seek(0)
        return json.loads(self.out.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=3, help="syncs timed alone, before and after")
    parser.add_argument("--batch-size", type=int, default=10_000, help="prune --batch-size")
    parser.add_argument("--pace", type=float, default=3.0, help="prune --pace")
    parser.add_argument("--skip-alone", action="store_true", help="skip the prune alone")
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    args = parser.parse_args()

    work = Path(args.dir or tempfile.mkdtemp(prefix="prune-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    state = work / "state.db"
    for leftover in work.glob("*.db*"):
        leftover.unlink()
    receiver = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    assert receiver.stdout is not None
    port = int(receiver.stdout.readline())
    try:
        results = run(args, work, state, port)
    finally:
        receiver.terminate()
        receiver.wait(10)
    print(json.dumps(results, indent=2))
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path, state: Path, port: int) -> dict[str, Any]:
    results: dict[str, Any] = {"command": " ".join([Path(sys.executable).name, *sys.argv])}
    built = build_state(state, args.events)
    results["state"] = built
    print(f"state: {built}", file=sys.stderr, flush=True)
    warehouse = work / "warehouse.db"
    build_warehouse(warehouse, args.members)
    mappings = work / "mappings"
    mappings.mkdir(exist_ok=True)
    (mappings / "bench.yaml").write_text(
        json.dumps(
            {
                "name": "bench",
                "source": {"query": QUERY, "key": "email", "key_type": "email"},
                "mode": "mirror",
                "fields": {"email": "email", "first_name": "first_name", "ltv": "ltv"},
                "destination": {
                    "connector": "webhook",
                    "url": f"http://127.0.0.1:{port}/hook",
                    "batch_size": 500,
                },
                "guards": {"max_remove_pct": 100},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCER_")}
    env.update(
        SYNCER_WAREHOUSE_URL=f"sqlite:///{warehouse}",
        SYNCER_MAPPINGS_DIR=str(mappings),
        SYNCER_STATE_URL=f"sqlite:///{state}",
    )
    prune_args = ["prune", "--older-than", "90d", "--json", "--batch-size", str(args.batch_size)]
    prune_args += ["--pace", str(args.pace)]
    Proc(["sync", "now", "bench"], env, work).wait()  # the first run: everything added

    if not args.skip_alone:
        copy = work / "alone.db"
        shutil.copyfile(state, copy)
        alone = Proc(prune_args, {**env, "SYNCER_STATE_URL": f"sqlite:///{copy}"}, work).wait()
        results["prune_alone"] = {
            "whole_s": round(alone.wall, 2),
            "removed": alone.json()["removed"],
            "peak_rss_mb": round(alone.rss_mb, 1),
        }
        print(f"prune alone: {results['prune_alone']}", file=sys.stderr, flush=True)
        for leftover in work.glob("alone.db*"):
            leftover.unlink()

    sync_args = ["sync", "now", "bench", "--full-resync"]

    def alone_syncs() -> list[float]:
        return [round(Proc(sync_args, env, work).wait().wall, 2) for _ in range(args.reps)]

    before = alone_syncs()
    print(f"sync alone: {before}", file=sys.stderr, flush=True)
    pruning = Proc(prune_args, env, work)
    during: list[float] = []
    while not pruning.poll():
        sync = Proc(sync_args, env, work)
        while not sync.poll():
            pruning.poll()
            time.sleep(0.01)
        if pruning.end is None or pruning.end > sync.end:  # type: ignore[operator]
            during.append(round(sync.wall, 2))  # it ran wholly while the prune ran
    after = alone_syncs()
    baseline = before + after
    results["prune_beside_syncs"] = {
        "whole_s": round(pruning.wall, 2),
        "removed": pruning.json()["removed"],
        "peak_rss_mb": round(pruning.rss_mb, 1),
    }
    results["sync"] = {
        "members": args.members,
        "alone_s": baseline,
        "during_prune_s": during,
        "median_alone_s": round(statistics.median(baseline), 2),
        "median_during_prune_s": round(statistics.median(during), 2) if during else None,
        "ratio": round(statistics.median(during) / statistics.median(baseline), 3)
        if during
        else None,
    }
    return results


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        main()
