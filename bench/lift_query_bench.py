"""How long `syncer report lift` takes on a big phase: N members in the state database's
history, 6% of them with an order, on a SQLite, DuckDB and (when reachable) PostgreSQL
warehouse. Prints seconds for the members' upload plus the two statements (syncer.lift_query).

    .venv/bin/python bench/lift_query_bench.py --members 1000000
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from syncer.holdout import HOLDOUT, TREATED
from syncer.lift_query import measure
from syncer.mapping import load_all
from syncer.settings import Settings
from syncer.state import state_engine
from tests.lift_world import T0, make_world, seed_history, write_mapping, write_outcomes

PG = os.environ.get("SYNCER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=1_000_000)
    args = parser.parse_args()
    n = args.members
    os.environ.setdefault("LIFT_SECRET", "not-used")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        state = f"sqlite:///{root / 'state.db'}"
        keys = [f"member{i}@shop.example" for i in range(n)]
        started = time.monotonic()
        seed_history(
            state,
            "vip",
            [
                (k, HOLDOUT if i % 10 == 0 else TREATED, T0 + dt.timedelta(seconds=i % 864000))
                for i, k in enumerate(keys)
            ],
        )
        print(f"history of {n:,} members written in {time.monotonic() - started:.1f} s")
        orders = [
            (k, T0 + dt.timedelta(days=3, seconds=i % 864000), 42.0)
            for i, k in enumerate(keys)
            if i % 17 == 0
        ]
        warehouses = ["sqlite", "duckdb"]
        try:
            import sqlalchemy as sa

            sa.create_engine(PG).connect().close()
            warehouses.append(PG)
        except Exception as exc:
            print(f"PostgreSQL skipped: {type(exc).__name__}")
        for kind in warehouses:
            name = kind if kind in ("sqlite", "duckdb") else "postgresql"
            (root / name).mkdir()
            mappings = root / name / "mappings"
            if name == "postgresql":
                import sqlalchemy as sa

                admin = sa.create_engine(PG)
                with admin.begin() as conn:
                    conn.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS lift_bench")
                url = f"{PG}?options=-csearch_path%3Dlift_bench"
            else:
                url = make_world(root / name, name).warehouse
            write_mapping(mappings)
            pg = name == "postgresql"
            write_outcomes(url, orders, event_type="timestamptz" if pg else "TIMESTAMP")
            (sync,) = load_all(mappings)
            settings = Settings(warehouse_url=url, state_url=state)  # type: ignore[arg-type]
            started = time.monotonic()
            data = measure(sync, settings, state_engine(state), 1, as_of=T0 + dt.timedelta(days=60))
            took = time.monotonic() - started
            print(
                f"{name:<10} {n:,} members, {len(orders):,} orders:"
                f" {took:.1f} s (treated {data.treated.members:,},"
                f" {data.treated.conversions:,} converted)"
            )
            if pg:
                with admin.begin() as conn:
                    conn.exec_driver_sql("DROP SCHEMA lift_bench CASCADE")


if __name__ == "__main__":
    main()
