"""Soak: Klaviyo and Mailchimp emulators with a rate limit and a share of 503s, synced until the
destination holds the segment (issue 12, item 12: a vendor step that fails after an earlier
step succeeded must not restart the whole batch).

For each vendor and seed it prints the runs to converge, batches sent, Klaviyo import jobs (or
Mailchimp subscribe calls that landed) per batch, requests per batch, answers by status, the
vendor's (scaled) time and the wall time. The engine runs in-process; engine, account limiter
and the vendors' rate limits share a clock running --factor times faster than real time.

    .venv/bin/python bench/steps_soak.py
    .venv/bin/python bench/steps_soak.py --records 20000 --seeds 1 2 3 --share 0.3
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--share", type=float, default=0.2, help="share of answers a 503")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--factor", type=float, default=20.0, help="time runs this much faster")
    parser.add_argument("--per-second", type=int, default=1, help="Mailchimp's rate")
    parser.add_argument("--max-runs", type=int, default=6)
    parser.add_argument("--vendors", nargs="+", default=["klaviyo", "mailchimp"])
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)
    os.environ.setdefault("SYNCER_LOG_LEVEL", "error")

    from syncer.log import configure
    from syncer.state import state_engine
    from tests import convergence

    configure("error", "json")
    for vendor in args.vendors:
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                root = Path(tmp)
                os.chdir(root)
                state_engine.cache_clear()
                options = {"records": args.records, "share": args.share, "seed": seed}
                options.update(factor=args.factor, max_runs=args.max_runs)
                if vendor == "mailchimp":
                    report = convergence.mailchimp(root, per_second=args.per_second, **options)
                else:
                    report = convergence.klaviyo(root, **options)
                print(f"seed {seed}: {report.line()}", flush=True)
                print(f"    runs: {report.runs}", flush=True)


if __name__ == "__main__":
    main()
