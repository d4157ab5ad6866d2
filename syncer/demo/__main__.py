"""``python -m syncer.demo build|advance|receiver|run``: the demo's own small command line.

Kept separate from the ``syncer`` CLI on purpose: the demo drives that CLI as a user would.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from syncer.demo import shop


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m syncer.demo",
        description="A synthetic shop warehouse and local destinations for trying syncer.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="create the demo shop (replaces an existing one)")
    build.add_argument("--path", type=Path, default=shop.DEFAULT_PATH)
    build.add_argument("--customers", type=int, default=shop.DEFAULT_CUSTOMERS)
    build.add_argument("--seed", type=int, default=shop.DEFAULT_SEED)

    advance = commands.add_parser("advance", help="simulate some days of shop activity")
    advance.add_argument("--path", type=Path, default=shop.DEFAULT_PATH)
    advance.add_argument("--days", type=int, default=7)

    receiver = commands.add_parser("receiver", help="run a local webhook receiver")
    receiver.add_argument("--port", type=int, default=8765)
    receiver.add_argument("--host", default="127.0.0.1")
    receiver.add_argument(
        "--secret",
        help="require X-Syncer-Signature made with this secret"
        " (default: DEMO_WEBHOOK_SECRET from the environment or ./.env, as the demo wrote it)",
    )

    run = commands.add_parser(
        "run", help="the full demo: build, sync, advance, sync, verify, report lift"
    )
    run.add_argument("--dir", type=Path, default=shop.DEFAULT_PATH.parent)
    run.add_argument("--days", type=int, default=7)
    run.add_argument("--mappings", type=Path, help="mappings directory (default: ./mappings)")
    run.add_argument("--customers", type=int, default=shop.DEFAULT_CUSTOMERS)
    run.add_argument("--seed", type=int, default=shop.DEFAULT_SEED)
    return parser


def _demo_secret() -> str | None:
    """The secret the demo's webhook mapping signs with: the environment's, else ./.env's."""
    import os

    from dotenv import dotenv_values

    if os.environ.get("DEMO_WEBHOOK_SECRET"):
        return os.environ["DEMO_WEBHOOK_SECRET"]
    dotenv = Path(".env")
    return dotenv_values(dotenv).get("DEMO_WEBHOOK_SECRET") if dotenv.is_file() else None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    if args.command == "build":
        if args.customers < 1:
            raise SystemExit("--customers must be at least 1")
        summary = shop.build(args.path, customers=args.customers, seed=args.seed)
        print(f"{summary} ({time.perf_counter() - started:.1f}s)")
    elif args.command == "advance":
        if args.days < 1:
            raise SystemExit("--days must be at least 1")
        try:
            result = shop.advance(args.path, days=args.days)
        except FileNotFoundError as exc:
            raise SystemExit(str(exc)) from None
        print(f"{result} ({time.perf_counter() - started:.1f}s)")
    elif args.command == "receiver":
        from syncer.demo.receiver import serve

        serve(args.port, args.secret or _demo_secret(), args.host)
    else:
        from syncer.demo.run import run_demo

        if args.days < 1 or args.customers < 1:
            raise SystemExit("--days and --customers must be at least 1")
        return run_demo(
            args.dir,
            days=args.days,
            mappings=args.mappings,
            customers=args.customers,
            seed=args.seed,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
