"""The synthetic segment the benchmarks read: a SQLite table of members, and a churned copy.

Every benchmark builds the same table (email, first_name, ltv, updated_at; seeded, so runs
compare), so their numbers describe the same work.
"""

from __future__ import annotations

import compileall
import random
import shutil
import sqlite3
import time
from pathlib import Path

#: What syncer's mapping and the floors read (drt's cursor mode adds ``updated_at``).
QUERY = "select email, first_name, ltv from members"
BASE_EPOCH = 1_735_689_600  # 2025-01-01 00:00:00 UTC: row i was updated 7 i seconds later
CHURN_STAMP = "2026-01-01 00:00:00"  # later than every row's, for a cursor to find


def build_warehouse(path: Path, size: int) -> None:
    """``size`` members in a new SQLite file at ``path``."""
    rng = random.Random(7)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE members (email TEXT, first_name TEXT, ltv REAL, updated_at TEXT)")
    conn.executemany(
        "INSERT INTO members VALUES (?, ?, ?, ?)",
        (
            (
                f"user{i}@example.com",
                f"name{i % 5000}",
                round(rng.random() * 1000, 2),
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(BASE_EPOCH + i * 7)),
            )
            for i in range(size)
        ),
    )
    # churn() updates and deletes by email: without an index each is a full scan.
    conn.execute("CREATE INDEX members_email ON members (email)")
    conn.commit()
    conn.close()


def churn(src: Path, dst: Path, size: int, pct: float = 1.0) -> dict[str, int]:
    """``src`` copied to ``dst`` (the same path changes it in place) with pct% changed: half
    field updates, a quarter adds, a quarter removes. Updated and added rows get
    CHURN_STAMP as ``updated_at``; removed rows are simply gone, which no cursor can see."""
    if src != dst:
        shutil.copyfile(src, dst)
    n = int(size * pct / 100)
    rng = random.Random(11)
    picks = rng.sample(range(size), n)
    updates, removes = picks[: n // 2], picks[n // 2 : n // 2 + n // 4]
    adds = n - len(updates) - len(removes)
    conn = sqlite3.connect(dst)
    conn.executemany(
        "UPDATE members SET first_name = first_name || '!', updated_at = ? WHERE email = ?",
        ((CHURN_STAMP, f"user{i}@example.com") for i in updates),
    )
    conn.executemany(
        "DELETE FROM members WHERE email = ?", ((f"user{i}@example.com",) for i in removes)
    )
    conn.executemany(
        "INSERT INTO members VALUES (?, 'new', 1.0, ?)",
        ((f"new{i}@example.com", CHURN_STAMP) for i in range(adds)),
    )
    conn.commit()
    conn.close()
    return {"update": len(updates), "remove": len(removes), "add": adds}


def compile_syncer() -> None:
    """Write syncer's bytecode, as installing a package does: where PYTHONDONTWRITEBYTECODE
    is set (as on the development machines) an editable install would otherwise compile
    every module of its own from source at each start, about 0.1 s a process."""
    root = Path(__file__).resolve().parent.parent
    for package in ("syncer", "connectors"):
        compileall.compile_dir(root / package, quiet=1)
