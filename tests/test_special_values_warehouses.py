"""Special values as each warehouse's driver really returns them, read by syncer's own
streaming reader and encoded both ways: sent exactly, or the row is invalid with a reason."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from syncer.mapping import SyncDefinition
from syncer.normalize import PayloadSpill, RowEncoder
from syncer.warehouse import stream

DEFINITION = SyncDefinition.model_validate(
    {
        "name": "special",
        "source": {"query": "select 1 as k", "key": "k"},  # each case streams its own
        "fields": {"v": "v"},
        "destination": {"connector": "file", "path": "out.csv"},
    }
)

# (SQL expression, the JSON sent for it, or None and the words of the row's reason)
Case = tuple[str, str | None, str]
SQLITE: list[Case] = [
    ("9e999", None, "not a finite number"),
    ("-9e999", None, "not a finite number"),
    ("0.0 / 0.0", "null", ""),  # SQLite has no NaN: the division itself is NULL
    ("'NaN'", '"NaN"', ""),
    ("'inf'", '"inf"', ""),
    ("9223372036854775807", "9223372036854775807", ""),
    ("x'00ff'", None, "binary value"),
    ("'a' || char(0) || 'b'", '"a\\u0000b"', ""),
]
DUCKDB: list[Case] = [
    ("'NaN'::DOUBLE", None, "not a finite number"),
    ("'inf'::FLOAT", None, "not a finite number"),
    ("'-Infinity'::DOUBLE", None, "not a finite number"),
    ("[1.0, 'nan'::DOUBLE]", None, "not a finite number"),
    ("{'a': 'inf'::DOUBLE}", None, "not a finite number"),
    ("170141183460469231731687303715884105727::HUGEINT", None, "64-bit"),
    ("18446744073709551615::UBIGINT", "18446744073709551615", ""),
    ("1.5::DECIMAL(38, 20)", "1.5", ""),
    ("'\\x00'::BLOB", None, "binary value"),
    ("-0.0::DOUBLE", "-0.0", ""),
    ("'NaN'", '"NaN"', ""),
    ("[1, NULL]", "[1,null]", ""),
]
POSTGRES: list[Case] = [
    ("'NaN'::float8", None, "not a finite number"),
    ("'Infinity'::float8", None, "not a finite number"),
    ("'-Infinity'::float4", None, "not a finite number"),
    ("'NaN'::numeric", None, "not a finite number"),
    ("'Infinity'::numeric", None, "not a finite number"),
    ("10::numeric / 3", None, "significant digits"),
    ("1::numeric / 4", "0.25", ""),
    ("avg(x) FROM (VALUES (1), (2), (2)) AS t(x)", "1.6666666666666667", ""),
    ("ARRAY['NaN'::float8, 1]", None, "not a finite number"),
    ("'{\"a\": 1e400}'::jsonb", None, "64-bit"),
    ("18446744073709551616::numeric", None, "64-bit"),
    ("'\\x00ff'::bytea", None, "binary value"),
    ("'NaN'::text", '"NaN"', ""),
    ("-0.0::float8", "-0.0", ""),
    # psycopg itself fails the whole read on these ("date too large"): one row is invalid.
    ("'infinity'::date", None, "infinite date"),
    ("'-infinity'::date", None, "infinite date"),
    ("'infinity'::timestamp", None, "infinite date"),
    ("'-infinity'::timestamptz", None, "infinite date"),
    ("'2024-02-29'::date", '"2024-02-29"', ""),
    ("ARRAY['infinity'::date]", None, "infinite date"),
]


def encode(url: str, expression: str) -> list[tuple[bytes | None, str | None]]:
    """(payload, reason) of the one row ``SELECT 'k1' AS k, <expression> AS v``, both ways."""
    query = f"SELECT 'k1' AS k, {expression} AS v"
    if " FROM " in expression:  # an aggregate brings its own FROM
        value, source = expression.split(" FROM ", 1)
        query = f"SELECT 'k1' AS k, {value} AS v FROM {source}"
    with stream(url, query, 100, "special.yaml") as (columns, partitions):
        rows = [row for part in partitions for row in part]
    assert len(rows) == 1
    outcomes = []
    for whole in (True, False):
        encoder = RowEncoder(DEFINITION, columns, "special.yaml")
        spill = PayloadSpill()
        try:
            chunk = (
                encoder.encode_chunk(rows, 0, spill)
                if whole
                else encoder._encode_rows(rows, 0, spill)
            )
            spill.flush()
            if chunk.invalid:
                outcomes.append((None, chunk.invalid[0][2]))
            else:
                outcomes.append((spill.read(1), None))
        finally:
            spill.close()
    return outcomes


def check(url: str, expression: str, sent: str | None, words: str) -> None:
    for payload, reason in encode(url, expression):
        if sent is None:
            assert payload is None and reason is not None
            assert reason.startswith("row 1: field v: ") and words in reason, reason
        else:
            assert reason is None, reason
            assert payload == f"[{sent}]".encode()
            orjson.loads(payload)


@pytest.mark.parametrize(("expression", "sent", "words"), SQLITE)
def test_sqlite(tmp_path: Path, expression: str, sent: str | None, words: str) -> None:
    path = tmp_path / "w.db"
    path.touch()
    check(f"sqlite:///{path}", expression, sent, words)


@pytest.mark.parametrize(("expression", "sent", "words"), DUCKDB)
def test_duckdb(expression: str, sent: str | None, words: str) -> None:
    check("duckdb:///:memory:", expression, sent, words)


@pytest.mark.parametrize(("expression", "sent", "words"), POSTGRES)
def test_postgres(postgres_url: str, expression: str, sent: str | None, words: str) -> None:
    check(postgres_url, expression, sent, words)


def test_duckdb_infinite_dates_arrive_as_ordinary_dates() -> None:
    """What the README warns about: the driver, not syncer, turns them into dates."""
    (payload, reason), _ = encode("duckdb:///:memory:", "'infinity'::DATE")
    assert reason is None and payload == b'["9999-12-31"]'
