"""Benchmark of the sync engine on a synthetic segment (SQLite warehouse and state).

For each size it runs, each phase in a fresh process so peak RSS is per phase:
  first run (everything added), no-change run, 1% churn run (adds, removes, field updates).
The run's own time (``wall s``) is shown beside its process's, from start to exit (``whole s``:
interpreter start, imports, state setup, the run, exit). Before each phase a process of its own
times three plain streamed reads of the same query: the floor (SQLAlchemy rows, as the issue
defines it), the driver-cursor read through SQLAlchemy the engine itself uses (``raw``), and the
stdlib ``sqlite3`` driver alone (``sqlite3``), so all three ratios are shown.
The destination accepts everything and does no I/O, so the numbers are the engine's own.
Peak RSS is shown for the run's process and, apart, for its forked warehouse reader.
``bench/peers_bench.py`` times whole ``syncer`` processes against a webhook, beside drt-core.

    .venv/bin/python bench/sync_bench.py               # 100k and 1M
    .venv/bin/python bench/sync_bench.py --sizes 100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segment import (
    QUERY,
    build_warehouse,
    churn,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def floors(warehouse: Path) -> dict[str, float | int]:
    """Runs in a child process of its own: three plain streamed reads of the same query."""
    from sqlalchemy import create_engine, text

    url = f"sqlite:///{warehouse}"
    engine = create_engine(url)
    t0 = time.perf_counter()
    rows = 0
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True).execute(text(QUERY)).yield_per(10_000)
        for part in result.partitions():
            rows += len(part)
    floor = time.perf_counter() - t0
    # The engine reads SQLite through the driver's cursor (no Row objects), which is cheaper
    # than the floor above; this second floor shows what that read alone costs.
    t0 = time.perf_counter()
    with engine.connect() as conn:
        cursor = conn.execution_options(stream_results=True).execute(text(QUERY)).cursor
        while cursor.fetchmany(10_000):
            pass
    raw_floor = time.perf_counter() - t0
    engine.dispose()
    # And the stdlib driver alone, without SQLAlchemy's connection around it.
    t0 = time.perf_counter()
    conn = sqlite3.connect(warehouse)
    cursor = conn.execute(QUERY)
    while cursor.fetchmany(10_000):
        pass
    conn.close()
    sqlite3_floor = time.perf_counter() - t0
    return {
        "rows": rows,
        "floor_s": round(floor, 3),
        "raw_floor_s": round(raw_floor, 3),
        "sqlite3_floor_s": round(sqlite3_floor, 3),
    }


def phase(warehouse: Path, state: Path, mappings: Path) -> dict[str, float | int | str]:
    """Runs in a child process of its own: one sync run, nothing else."""
    from connectors.file import FileConnector  # noqa: F401  (entry points import connectors)
    from syncer.connector import BatchResult, Capabilities, Connector, ConnectorConfig, Record
    from syncer.engine import SyncEngine
    from syncer.mapping import LoadedSync, SyncDefinition
    from syncer.settings import Settings

    class AcceptAll(Connector):
        name = "accept-all"
        capabilities = Capabilities(max_batch_size=1000)
        sent = 0

        def _ok(self, records: Sequence[Record]) -> BatchResult:
            AcceptAll.sent += len(records)
            return BatchResult.all_accepted(records)

        add = remove = update = _ok

    definition = SyncDefinition.model_validate(
        {
            "name": "bench",
            "source": {"query": QUERY, "key": "email"},
            "mode": "mirror",
            "fields": {"email": "email", "first_name": "first_name", "ltv": "ltv"},
            "destination": {"connector": "accept-all"},
            "guards": {"max_remove_pct": 100},
            # --holdout PCT: the same sync with an experiment (syncer.holdout).
            **(
                {"experiment": {"holdout_percent": float(os.environ["BENCH_HOLDOUT"])}}
                if os.environ.get("BENCH_HOLDOUT")
                else {}
            ),
        }
    )
    sync = LoadedSync(definition, mappings / "bench.yaml", AcceptAll, ConnectorConfig())
    url = f"sqlite:///{warehouse}"
    settings = Settings(warehouse_url=url, state_url=f"sqlite:///{state}")
    t0 = time.perf_counter()
    result = SyncEngine(settings).run(sync)
    wall = time.perf_counter() - t0
    return {
        "wall_s": round(wall, 3),
        "sent": AcceptAll.sent,
        "status": result.status,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        # The forked warehouse reader (syncer.reader), a process of its own.
        "reader_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        **{k: result.counts.get(k, 0) for k in ("added", "removed", "updated", "unchanged")},
    }


def run_child(*args: str) -> tuple[dict[str, Any], float]:
    """One child process; its JSON answer and its wall time from start to exit."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1]), time.perf_counter() - t0


def run_phase(warehouse: Path, state: Path, tmp: Path) -> dict[str, Any]:
    """The floors in one process, then the run in a process of its own (timed whole too)."""
    floor, _ = run_child("--floors", str(warehouse))
    run, whole = run_child("--child", str(warehouse), str(state), str(tmp))
    wall = run["wall_s"]
    return {
        **floor,
        **run,
        "whole_s": round(whole, 3),
        "ratio": round(wall / floor["floor_s"], 2),
        "raw_ratio": round(wall / floor["raw_floor_s"], 2),
        "sqlite3_ratio": round(wall / floor["sqlite3_floor_s"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument(
        "--holdout",
        type=float,
        default=None,
        help="give the sync an experiment holding out this percent (default: none)",
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--floors", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.holdout is not None:
        os.environ["BENCH_HOLDOUT"] = str(args.holdout)  # read by each child's phase()
    if args.child:
        print(json.dumps(phase(*(Path(p) for p in args.child))))
        return
    if args.floors:
        print(json.dumps(floors(Path(args.floors))))
        return
    print(
        f"{'size':>9} {'phase':<10} {'wall s':>8} {'whole s':>8} {'floor s':>8} {'ratio':>6} "
        f"{'raw s':>6} {'raw x':>6} {'sqlite3 s':>9} {'sqlite3 x':>9} "
        f"{'peak MB':>8} {'reader MB':>9} {'sent':>8}  counts"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            warehouse, state = tmp / "warehouse.db", tmp / "state.db"
            build_warehouse(warehouse, size)
            for name in ("first", "no-change", "churn-1%"):
                if name == "churn-1%":
                    churn(warehouse, warehouse, size)
                r = run_phase(warehouse, state, tmp)
                counts = f"+{r['added']} -{r['removed']} ~{r['updated']} ={r['unchanged']}"
                print(
                    f"{size:>9} {name:<10} {r['wall_s']:>8} {r['whole_s']:>8} {r['floor_s']:>8} "
                    f"{r['ratio']:>6} {r['raw_floor_s']:>6} {r['raw_ratio']:>6} "
                    f"{r['sqlite3_floor_s']:>9} {r['sqlite3_ratio']:>9} "
                    f"{r['peak_rss_mb']:>8} {r['reader_rss_mb']:>9} {r['sent']:>8}  {counts}",
                    flush=True,
                )


if __name__ == "__main__":
    os.environ.setdefault("SYNCER_LOG_LEVEL", "warning")
    main()
