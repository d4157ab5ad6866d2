"""Stress of the default SQLite state database: over 1,000 concurrent runs, zero failures wanted.

The long version of tests/test_sqlite_concurrency.py (same setup, tests/stress.py): rounds of
one `sync now` process per sync all at once, rounds of every sync on its own thread of one
engine, and the real daemon with its default workers ticking every sync each second while the
segments keep changing. Prints runs, failures and time per part; exits 1 on any failure.

    .venv/bin/python bench/sqlite_stress.py                 # 8 syncs: 504 + 256 + 300 runs
    .venv/bin/python bench/sqlite_stress.py --rounds 10 --threads-rounds 5 --daemon-runs 50
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.stress import Project, run_daemon, run_processes, run_threads  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--syncs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=63, help="rounds of processes")
    parser.add_argument("--threads-rounds", type=int, default=32)
    parser.add_argument("--daemon-runs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=20261207)
    args = parser.parse_args()
    total_runs, total_failures = 0, 0
    print(f"{'part':<10} {'runs':>6} {'failures':>9} {'seconds':>8}")
    parts = [
        ("processes", lambda p: run_processes(p, args.rounds, args.seed), None),
        ("threads", lambda p: run_threads(p, args.threads_rounds, args.seed), None),
        ("daemon", lambda p: run_daemon(p, args.daemon_runs, args.seed), "every 1s"),
    ]
    for name, part, schedule in parts:
        with tempfile.TemporaryDirectory(prefix=f"syncer-stress-{name}-") as tmp:
            project = Project(Path(tmp), syncs=args.syncs, schedule=schedule)
            started = time.monotonic()
            runs, failures = part(project)
            seconds = time.monotonic() - started
        print(f"{name:<10} {runs:>6} {len(failures):>9} {seconds:>8.1f}", flush=True)
        for failure in failures[:10]:
            print(f"    {failure}")
        total_runs += runs
        total_failures += len(failures)
    print(f"{'total':<10} {total_runs:>6} {total_failures:>9}")
    return 1 if total_failures else 0


if __name__ == "__main__":
    sys.exit(main())
