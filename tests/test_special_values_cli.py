"""Special values through the real CLI: a warehouse NaN or infinity in an ``auto`` field
makes its row invalid, with a reason in ``plan`` and ``run show``; it is never sent as null.

Each warehouse hands them over its own way: SQLite stores infinities (a NaN it stores as
NULL), DuckDB and PostgreSQL both as floats, and PostgreSQL's NUMERIC has a NaN of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import run_cli
from tests.fake_destination import DestinationState, fake_destination

SECRET = "s3cret-signing-key"
MAPPING = """
name: vip
source:
  warehouse: default
  query: select email, first_name, ltv, balance from segment_vip
  key: email
  key_type: email
mode: mirror
fields:
  first_name: first_name
  ltv: ltv
  balance: balance
destination:
  connector: webhook
  url: ${VIP_WEBHOOK_URL}
  secret: ${VIP_WEBHOOK_SECRET}
  batch_size: 3
"""
# Column types per warehouse: ltv a binary float, balance an exact decimal where there is one.
SCHEMAS = {
    "sqlite": "email TEXT, first_name TEXT, ltv REAL, balance TEXT",
    "duckdb": "email VARCHAR, first_name VARCHAR, ltv DOUBLE, balance DECIMAL(18, 2)",
    "postgres": "email TEXT, first_name TEXT, ltv DOUBLE PRECISION, balance NUMERIC",
}


@dataclass
class Warehouse:
    kind: str
    url: str
    env: dict[str, str]
    destination: DestinationState

    def load(self, rows: list[tuple[Any, ...]]) -> None:
        engine = sa.create_engine(self.url)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE IF EXISTS segment_vip"))
            conn.execute(sa.text(f"CREATE TABLE segment_vip ({SCHEMAS[self.kind]})"))
            conn.execute(
                sa.text("INSERT INTO segment_vip VALUES (:email, :first_name, :ltv, :balance)"),
                [
                    dict(zip(("email", "first_name", "ltv", "balance"), r, strict=True))
                    for r in rows
                ],
            )
        engine.dispose()

    def cli(self, *args: str) -> tuple[int, Any, str]:
        proc = run_cli(*args, env=self.env)
        document = json.loads(proc.stdout) if "--json" in args else None
        return proc.returncode, document, proc.stdout + proc.stderr


@pytest.fixture(params=["sqlite", "duckdb", "postgres"])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Warehouse]:
    kind = request.param
    if kind == "postgres":
        url = request.getfixturevalue("postgres_url")
        state = url
    else:
        suffix = "duckdb" if kind == "duckdb" else "db"
        url = f"{kind}:///{tmp_path / f'shop.{suffix}'}"
        state = f"sqlite:///{tmp_path / 'state.db'}"
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "vip.yaml").write_text(MAPPING)
    with fake_destination(secret=SECRET) as (hook, destination):
        env = {
            "SYNCER_WAREHOUSE_URL": url,
            "SYNCER_STATE_URL": state,
            "SYNCER_MAPPINGS_DIR": str(tmp_path / "mappings"),
            "VIP_WEBHOOK_URL": hook,
            "VIP_WEBHOOK_SECRET": SECRET,
        }
        yield Warehouse(kind, url, env, destination)


def good(i: int) -> tuple[Any, ...]:
    return (f"person{i}@example.com", f"Name{i}", i + 0.25, None)


# (row, the words its reason must hold); row numbers follow the table order below.
SPECIAL: dict[str, list[tuple[tuple[Any, ...], str]]] = {
    "sqlite": [
        (("inf@example.com", "Inf", float("inf"), None), "field ltv: not a finite number"),
        (("minus@example.com", "Minus", float("-inf"), None), "field ltv: not a finite number"),
    ],
    "duckdb": [
        (("nan@example.com", "NaN", float("nan"), None), "field ltv: not a finite number"),
        (("inf@example.com", "Inf", float("inf"), None), "field ltv: not a finite number"),
        (("minus@example.com", "Minus", float("-inf"), None), "field ltv: not a finite number"),
    ],
    "postgres": [
        (("nan@example.com", "NaN", float("nan"), None), "field ltv: not a finite number"),
        (("inf@example.com", "Inf", float("inf"), None), "field ltv: not a finite number"),
        (("dec@example.com", "Dec", 1.0, Decimal("NaN")), "field balance: not a finite number"),
        (
            ("third@example.com", "Third", 1.0, Decimal("3.3333333333333333")),
            "field balance: number has more significant digits",
        ),
    ],
}


def test_nan_and_infinity_make_rows_invalid_and_are_never_sent(warehouse: Warehouse) -> None:
    special = SPECIAL[warehouse.kind]
    rows = [good(0), good(1), *(row for row, _ in special), good(2)]
    warehouse.load(rows)
    # How each reason starts: the row number and the field, then why.
    expected = {f"row {rows.index(row) + 1}: {words}" for row, words in special}

    def matches(reasons: list[str]) -> None:
        assert len(reasons) == len(expected), reasons
        for start in expected:
            assert any(r.startswith(start) for r in reasons), (start, reasons)

    code, plan, out = warehouse.cli("plan", "vip", "--json")
    assert code == 0, out
    assert (plan["add"], plan["invalid"]) == (3, len(special))
    matches(plan["invalid_samples"])
    code, _, text = warehouse.cli("plan", "vip")
    assert code == 0 and all(start in text for start in expected), text

    code, doc, out = warehouse.cli("sync", "now", "vip", "--json")
    assert code == 1, out  # finished, with invalid rows
    (run,) = doc["runs"]
    assert (run["status"], run["added"], run["invalid"]) == ("partial", 3, len(special))
    members = warehouse.destination.members
    assert set(members) == {good(i)[0] for i in range(3)}, "a special-value row was sent"
    assert members[good(1)[0]] == {"first_name": "Name1", "ltv": 1.25, "balance": None}
    assert all(m["ltv"] is not None for m in members.values())

    code, shown, out = warehouse.cli("run", "show", run["run_id"], "--json")
    assert code == 0, out
    matches([p["reason"] for p in shown["run"]["problems"]])
    code, _, text = warehouse.cli("run", "show", run["run_id"])
    assert code == 0 and all(start in text for start in expected), text
    for row, _ in special:
        assert row[0] not in text and row[0] not in out  # reasons carry no data
