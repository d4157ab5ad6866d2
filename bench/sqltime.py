"""Run one ``syncer`` command in this process and print where its SQL time went.

Every statement any SQLAlchemy engine executes is timed (cursor events) and summed by its
first 110 characters; at exit the slowest kinds go to stderr with their total seconds and
how many times they ran. Statements run on the run's thread, so this is the database share
of a run's critical path (the forked warehouse reader uses its own engine in another
process and is not counted).

    .venv/bin/python bench/sqltime.py sync now bench --json > /dev/null
    .venv/bin/python bench/sqltime.py --top 25 sync now bench
"""

from __future__ import annotations

import atexit
import collections
import re
import sys
import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

_total: collections.Counter[str] = collections.Counter()
_count: collections.Counter[str] = collections.Counter()


@event.listens_for(Engine, "before_cursor_execute")
def _before(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
    conn.info.setdefault("sqltime", []).append(time.perf_counter())


@event.listens_for(Engine, "after_cursor_execute")
def _after(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
    kind = re.sub(r"\s+", " ", statement)[:110]
    _total[kind] += time.perf_counter() - conn.info["sqltime"].pop()
    _count[kind] += 1


def _report(top: int) -> None:
    sys.stderr.write(f"{'seconds':>8} {'runs':>6}  statement\n")
    for kind, seconds in _total.most_common(top):
        sys.stderr.write(f"{seconds:8.2f} {_count[kind]:6d}  {kind}\n")
    sys.stderr.write(f"{sum(_total.values()):8.2f} {sum(_count.values()):6d}  in all\n")


def main() -> None:
    args = sys.argv[1:]
    top = 14
    if args[:1] == ["--top"]:
        top, args = int(args[1]), args[2:]
    atexit.register(_report, top)
    sys.argv = ["syncer", *args]
    from syncer.cli import main as syncer_main

    syncer_main()


if __name__ == "__main__":
    main()
