"""Calibration of `syncer report lift` end to end, heavy version (issue 16, point 5).

Each repetition: members split by the real hash (syncer.holdout, a new salt every
``--reassign-every`` repetitions), a planted lift as outcome rows in a DuckDB (or SQLite)
warehouse, the real report path (syncer.lift_query's SQL, then syncer.lift.analyse). It
reports how often each 95% interval covers the truth (target 93-97%), how often an A/A run
is significant (about 5%), and how often the sample-ratio check alarms, without and with a
join bug that loses 3% of the holdout.

    .venv/bin/python bench/lift_e2e_calibration.py --repetitions 1000

The fast, seeded version is tests/test_lift_calibration.py.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.lift_simulation import Calibration, Tally, Truth


def _se(rate: float, n: int) -> float:
    return math.sqrt(rate * (1 - rate) / max(n, 1))


def run(args: argparse.Namespace, root: Path) -> dict[str, object]:
    out: dict[str, object] = {
        "repetitions": args.repetitions,
        "members": args.members,
        "holdout_percent": args.holdout_percent,
        "warehouse": args.warehouse,
    }
    for label, truth in (
        ("lift", Truth(p_holdout=0.05, p_treated=0.055)),
        ("a_a", Truth(p_holdout=0.05, p_treated=0.05)),
    ):
        if args.only not in (None, label):
            continue
        start = time.monotonic()
        sim = Calibration(
            root / label,
            members=args.members,
            holdout_percent=args.holdout_percent,
            warehouse=args.warehouse,
            seed=args.seed + len(label),
        )
        tally = Tally()
        for r in range(args.repetitions):
            if r and args.reassign_every and r % args.reassign_every == 0:
                sim._assign(r)
            sim.outcomes(truth)
            tally.add(sim.report(), truth)
            if (r + 1) % 50 == 0:
                print(f"{label}: {r + 1} in {time.monotonic() - start:.0f} s", file=sys.stderr)
        done = tally.runs - tally.not_enough
        out[label] = {
            "coverage": {k: round(tally.rate(tally.covered, k), 4) for k in truth.targets()},
            "significant": {
                k: round(tally.rate(tally.significant, k), 4) for k in ("conversion", "revenue")
            },
            "srm_alarms": tally.srm_alarms,
            "not_enough_data": tally.not_enough,
            "monte_carlo_se_at_95": round(_se(0.95, done), 4),
            "seconds": round(time.monotonic() - start, 1),
        }
        print(label, json.dumps(out[label]), file=sys.stderr, flush=True)
    if args.only not in (None, "srm"):
        return out
    start = time.monotonic()
    sim = Calibration(
        root / "srm",
        members=args.srm_members,
        holdout_percent=args.holdout_percent,
        warehouse=args.warehouse,
        seed=args.seed,
    )
    caught = 0
    for r in range(args.srm_repetitions):
        sim._assign(r)
        sim.drop_holdout(0.03)
        sim.outcomes(Truth())
        caught += sim.report()["srm_warning"] is not None
    out["join_bug_3pct_holdout"] = {
        "members": args.srm_members,
        "repetitions": args.srm_repetitions,
        "caught": caught,
        "seconds": round(time.monotonic() - start, 1),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repetitions", type=int, default=1000)
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--holdout-percent", type=float, default=10.0)
    parser.add_argument("--reassign-every", type=int, default=10)
    parser.add_argument("--srm-members", type=int, default=300_000)
    parser.add_argument("--srm-repetitions", type=int, default=20)
    parser.add_argument("--warehouse", choices=["duckdb", "sqlite"], default="duckdb")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--only", choices=["lift", "a_a", "srm"], help="Run one part only.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args, Path(tmp))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
