"""Calibration of the lift statistics (syncer.lift), the maths alone, over many experiments.

The long version of the seeded check in tests/test_lift_stats.py (same simulation,
tests/lift_sim.py: ``simulate(rng, n, holdout_share, p_holdout, lift, ...)`` returns the
treated and holdout totals of one experiment). It prints, over ``--reps`` experiments:

1. **Planted lift** (5% against 5.5% by default, lognormal order values): how often the 95%
   intervals of the conversion difference, the revenue difference and both relative lifts
   cover the truth (wanted: 93-97% at R=1000, Monte Carlo SE about 0.7 points), and how
   often the difference is significant (the power at that size).
2. **A/A** (no true lift): how often each difference is significant (wanted: about 5%), and
   the sample-ratio alarm rate (wanted: about 0.1%).
3. **A join bug** that drops 3% of the holdout: the sample-ratio alarm rate at ``--members``
   and at ``--srm-members`` (the check needs a large holdout to see a 3% shortfall).

    .venv/bin/python bench/lift_calibration.py                     # R=1000, 20,000 members
    .venv/bin/python bench/lift_calibration.py --reps 5000 --members 100000 --json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.lift_sim import Calibration, calibrate, simulate, truth  # noqa: E402

__all__ = ["calibrate", "main", "simulate", "truth"]


def _row(name: str, value: float, reps: int, wanted: str) -> str:
    se = math.sqrt(max(value * (1 - value), 1e-12) / reps)
    return f"  {name:<38} {value:7.2%}  (±{1.96 * se:.2%})   wanted {wanted}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=1000)
    parser.add_argument("--members", type=int, default=20_000, help="members per experiment")
    parser.add_argument("--holdout", type=float, default=0.1, help="holdout share (0.1 = 10%%)")
    parser.add_argument("--p", type=float, default=0.05, help="holdout conversion rate")
    parser.add_argument("--lift", type=float, default=0.10, help="true relative lift")
    parser.add_argument("--sigma", type=float, default=1.0, help="lognormal sigma of orders")
    parser.add_argument("--srm-members", type=int, default=500_000)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--end-to-end",
        action="store_true",
        help="through the warehouse: the real assignment, outcome rows in DuckDB, the report's"
        " SQL (bench/lift_e2e_calibration.py; --p, --lift and --sigma are its defaults)",
    )
    args = parser.parse_args(argv)
    if args.end_to_end:
        return _end_to_end(args)
    rng = np.random.default_rng(args.seed)
    common = {"sigma": args.sigma}
    started = time.perf_counter()
    planted = calibrate(rng, args.reps, args.members, args.holdout, args.p, args.lift, **common)
    aa = calibrate(rng, args.reps, args.members, args.holdout, args.p, 0.0, **common)
    dropped = calibrate(
        rng, args.reps, args.members, args.holdout, args.p, 0.0, drop_holdout=0.03, **common
    )
    dropped_large = calibrate(
        rng, args.reps, args.srm_members, args.holdout, args.p, 0.0, drop_holdout=0.03, **common
    )
    seconds = time.perf_counter() - started
    results: dict[str, Calibration] = {
        "planted": planted,
        "aa": aa,
        "dropped_3pct": dropped,
        "dropped_3pct_large": dropped_large,
    }
    if args.json:
        document = {"settings": vars(args), "seconds": round(seconds, 2)}
        document |= {name: asdict(result) for name, result in results.items()}
        print(json.dumps(document, indent=2))
        return 0
    held = round(args.members * args.holdout)
    print(
        f"{args.reps} experiments of {args.members:,} members (~{held:,} held out),"
        f" holdout conversion {args.p:.1%}, true lift {args.lift:+.0%},"
        f" lognormal sigma {args.sigma}, seed {args.seed} ({seconds:.1f} s)"
    )
    r = args.reps
    print("planted lift: 95% interval coverage")
    print(_row("conversion difference", planted.conversion_difference, r, "93-97%"))
    print(_row("revenue per member difference", planted.revenue_difference, r, "93-97%"))
    print(_row("conversion relative lift", planted.conversion_relative, r, "93-97%"))
    print(_row("revenue relative lift", planted.revenue_relative, r, "93-97%"))
    print(_row("conversion significant (power)", planted.conversion_significant, r, "-"))
    print(_row("revenue significant (power)", planted.revenue_significant, r, "-"))
    print("A/A (no true lift)")
    print(_row("conversion significant", aa.conversion_significant, r, "about 5%"))
    print(_row("revenue significant", aa.revenue_significant, r, "about 5%"))
    print(_row("sample-ratio alarms", aa.srm_alarms, r, "about 0.1%"))
    print("3% of the holdout dropped by a join bug: sample-ratio alarms")
    print(_row(f"at {args.members:,} members", dropped.srm_alarms, r, "-"))
    print(_row(f"at {args.srm_members:,} members", dropped_large.srm_alarms, r, "near 100%"))
    return 0


def _end_to_end(args: argparse.Namespace) -> int:
    import tempfile

    from lift_e2e_calibration import run  # bench/, next to this file

    options = argparse.Namespace(
        repetitions=args.reps,
        members=args.members,
        holdout_percent=args.holdout * 100,
        reassign_every=10,
        srm_members=min(args.srm_members, 300_000),
        srm_repetitions=10,
        warehouse="duckdb",
        seed=args.seed,
        only=None,
    )
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run(options, Path(tmp)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
