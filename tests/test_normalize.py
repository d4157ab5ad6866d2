"""Normalisation of warehouse values: converters, and rows turned into payloads or reasons."""

from __future__ import annotations

import datetime as dt
import json
import math
from decimal import Decimal
from typing import Any

import orjson
import phonenumbers
import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from syncer.errors import ConfigError
from syncer.mapping import FieldSpec, SyncDefinition
from syncer.normalize import (
    BINARY,
    NOT_FINITE,
    NOT_UNICODE,
    TOO_LARGE,
    TOO_PRECISE,
    InvalidValue,
    RowEncoder,
    field_converter,
    normalize_email,
    normalize_phone,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ORIGIN = "mappings/vip.yaml"


# -- email ---------------------------------------------------------------------------------------

_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_tld = st.one_of(
    st.sampled_from(["com", "io", "co", "test", "local", "localhost", "onion", "arpa", "invalid"]),
    st.from_regex(r"[a-z]{2,8}", fullmatch=True),
)


def _compose(local: str, labels: list[str], tld: str, upper: bool, pad: int) -> str:
    address = f"{local}@{'.'.join([*labels, tld])}"
    return " " * pad + (address.upper() if upper else address) + " " * pad


# Shapes the cheap ASCII path of normalize_email sees, including the awkward ones: labels with
# "--" (punycode or not), reserved top-level names, dots, plus signs, upper case and spaces.
simple_emails = st.builds(
    _compose,
    st.from_regex(r"[a-z0-9_%+-]{1,12}(\.[a-z0-9_%+-]{1,6}){0,2}", fullmatch=True),
    st.lists(
        st.one_of(_label, st.sampled_from(["xn--zz", "ab--cd", "xn--bcher-kva", "a--b"])),
        min_size=1,
        max_size=3,
    ),
    _tld,
    st.booleans(),
    st.integers(0, 2),
)


@FAST
@given(st.emails())
def test_normalize_email_is_idempotent(address: str) -> None:
    once = normalize_email(address)
    assert normalize_email(once) == once


@FAST
@given(st.one_of(st.emails(), simple_emails))
@example("a@foo.test")
@example("a@mail.local")
@example("a@ab--cd.com")
@example("a@xn--zz.com")
@example("Ada.Lovelace+crm@Example.COM")
def test_accepted_email_is_accepted_by_email_validator_the_same(address: str) -> None:
    try:
        ours = normalize_email(address)
    except InvalidValue:
        return
    try:
        theirs = validate_email(address.strip().lower(), check_deliverability=False)
    except EmailNotValidError as exc:
        pytest.fail(f"normalize_email accepted {address!r}, email_validator refuses it: {exc}")
    assert ours == theirs.normalized.lower()
    assert normalize_email(ours) == ours


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Ada@Example.COM ", "ada@example.com"),
        ("ada.lovelace+crm@example.co.uk", "ada.lovelace+crm@example.co.uk"),
    ],
)
def test_email_examples(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(
    "raw", ["not-an-email", "a@b", "ada..l@example.com", "a@foo.test", "a@ab--cd.com", "", None, 5]
)
def test_invalid_emails_are_refused_without_quoting_them(raw: Any) -> None:
    with pytest.raises(InvalidValue) as info:
        normalize_email(raw)
    if raw:
        assert str(raw) not in str(info.value)


# -- phone ---------------------------------------------------------------------------------------


def _examples() -> list[tuple[str, phonenumbers.PhoneNumber]]:
    found = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        number = phonenumbers.example_number(region)
        if number is not None and phonenumbers.is_valid_number(number):
            found.append((region, number))
    return found


PHONE_EXAMPLES = _examples()
FORMATS = [
    phonenumbers.PhoneNumberFormat.E164,
    phonenumbers.PhoneNumberFormat.INTERNATIONAL,
    phonenumbers.PhoneNumberFormat.NATIONAL,
]


@FAST
@given(st.sampled_from(PHONE_EXAMPLES), st.sampled_from(FORMATS))
def test_normalize_phone_is_idempotent_on_valid_numbers(
    example: tuple[str, phonenumbers.PhoneNumber], fmt: int
) -> None:
    region, number = example
    written = phonenumbers.format_number(number, fmt)
    e164 = normalize_phone(written, region)
    assert e164 == phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    assert normalize_phone(e164) == e164
    assert normalize_phone(e164, region) == e164


def test_phone_without_country_code_needs_a_region() -> None:
    assert normalize_phone("020 7946 0958", "GB") == "+442079460958"
    assert normalize_phone(" +44 20 7946 0958 ") == "+442079460958"
    with pytest.raises(InvalidValue):
        normalize_phone("020 7946 0958")


@pytest.mark.parametrize("raw", ["12", "call me", None, True, "+44 20 7946 09581234"])
def test_invalid_phone_is_refused_without_quoting_it(raw: Any) -> None:
    with pytest.raises(InvalidValue) as info:
        normalize_phone(raw, "GB")
    if isinstance(raw, str):
        assert raw not in str(info.value)


# -- other converters ----------------------------------------------------------------------------


def convert(kind: str, value: Any) -> Any:
    converter = field_converter(FieldSpec(column="c", type=kind))  # type: ignore[arg-type]
    assert converter is not None
    return converter(value)


@pytest.mark.parametrize(
    ("kind", "raw", "expected"),
    [
        ("number", 3, 3),
        ("number", 2.0, 2),
        ("number", 2.5, 2.5),
        ("number", Decimal("12.00"), 12),
        ("number", Decimal("12.50"), 12.5),
        ("number", " 3.25 ", 3.25),
        ("number", "1e3", 1000),
        ("integer", "42", 42),
        ("integer", Decimal("7"), 7),
        ("integer", 7.0, 7),
        ("boolean", True, True),
        ("boolean", 0, False),
        ("boolean", " Yes ", True),
        ("boolean", "f", False),
        ("date", dt.date(2024, 1, 2), "2024-01-02"),
        ("date", dt.datetime(2024, 1, 2, 23, 30), "2024-01-02"),
        ("date", "2024-01-02", "2024-01-02"),
        ("date", "2024-01-02 10:00:00+00", "2024-01-02"),
        ("date", "2024-01-02T10:00:00Z", "2024-01-02"),
        ("datetime", dt.datetime(2024, 1, 2, 3, 4), "2024-01-02T03:04:00"),
        ("datetime", "2024-01-02T10:00:00+02:00", "2024-01-02T08:00:00+00:00"),
        (
            "datetime",
            dt.datetime(2024, 1, 2, 3, 4, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
            "2024-01-02T08:04:00+00:00",
        ),
        ("datetime", dt.date(2024, 1, 2), "2024-01-02T00:00:00"),
        ("string", 12, "12"),
        ("string", "as is ", "as is "),
    ],
)
def test_converter_examples(kind: str, raw: Any, expected: Any) -> None:
    result = convert(kind, raw)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("kind", "raw"),
    [
        ("number", "twelve"),
        ("number", "nan"),
        ("number", float("inf")),
        ("number", True),
        ("integer", "2.5"),
        ("integer", 2.5),
        ("boolean", "maybe"),
        ("boolean", 2),
        ("date", "02/01/2024"),
        ("date", "2024-13-01"),
        ("date", "2024-01-02 and change"),
        ("datetime", "yesterday"),
        ("string", b"\x00bytes"),
    ],
)
def test_converter_refuses_bad_values(kind: str, raw: Any) -> None:
    with pytest.raises(InvalidValue):
        convert(kind, raw)


def test_auto_fields_pass_through() -> None:
    assert field_converter(FieldSpec(column="c")) is None


# -- RowEncoder ----------------------------------------------------------------------------------

COLUMNS = ["email", "first_name", "ltv", "orders", "phone"]


def definition(
    fields: dict[str, Any], key: str = "email", key_type: str = "email"
) -> SyncDefinition:
    return SyncDefinition.model_validate(
        {
            "name": "vip",
            "source": {"query": "select 1", "key": key, "key_type": key_type},
            "fields": fields,
            "destination": {"connector": "file", "path": "out.csv"},
        }
    )


FIELDS = {
    "email": {"column": "email", "type": "email"},
    "name": "first_name",
    "ltv": {"column": "ltv", "type": "number"},
    "orders": {"column": "orders", "type": "integer"},
    "phone": {"column": "phone", "type": "phone", "region": "GB"},
}
ROWS = [
    ("Ada@Example.com", "Ada", Decimal("120.50"), "3", "020 7946 0958"),
    ("bob@example.com", "Bob", Decimal("10.00"), 1, None),
]


def encode(defn: SyncDefinition, rows: list[tuple[Any, ...]], columns: list[str] = COLUMNS):
    encoder = RowEncoder(defn, columns, ORIGIN)
    return encoder, list(encoder.encode(rows))


def fields_of(encoder: RowEncoder, payload: str) -> dict[str, Any]:
    """The destination fields a payload carries, whatever its JSON shape."""
    decoded = json.loads(payload)
    if isinstance(decoded, list):
        return dict(zip(encoder.field_names, decoded, strict=True))
    assert isinstance(decoded, dict)
    return decoded


def test_rows_become_keys_and_normalised_payloads() -> None:
    encoder, staged = encode(definition(FIELDS), ROWS)
    (n1, key1, payload1, hash1, reason1), (n2, key2, payload2, hash2, reason2) = staged
    assert (n1, key1, reason1) == (1, "ada@example.com", None)
    assert (n2, key2, reason2) == (2, "bob@example.com", None)
    assert fields_of(encoder, payload1) == {
        "email": "ada@example.com",
        "name": "Ada",
        "ltv": 120.5,
        "orders": 3,
        "phone": "+442079460958",
    }
    assert fields_of(encoder, payload2)["phone"] is None
    assert hash1 and hash2 and hash1 != hash2


@FAST
@given(st.permutations(list(FIELDS)))
def test_payload_and_hash_do_not_depend_on_field_order(order: list[str]) -> None:
    _, reference = encode(definition(FIELDS), ROWS)
    _, reordered = encode(definition({name: FIELDS[name] for name in order}), ROWS)
    assert [(r[1], r[2], r[3]) for r in reordered] == [(r[1], r[2], r[3]) for r in reference]


def test_payload_and_hash_do_not_depend_on_column_order() -> None:
    _, reference = encode(definition(FIELDS), ROWS)
    columns = list(reversed(COLUMNS))
    _, reordered = encode(definition(FIELDS), [tuple(reversed(r)) for r in ROWS], columns)
    assert [r[1:4] for r in reordered] == [r[1:4] for r in reference]


def test_columns_match_case_insensitively() -> None:
    upper = [c.upper() for c in COLUMNS]
    _, staged = encode(definition(FIELDS), ROWS, upper)
    assert staged[0][1] == "ada@example.com"
    assert staged[0][4] is None


@pytest.mark.parametrize(
    ("defn", "where"),
    [
        (definition(FIELDS, key="mail"), "source.key"),
        (definition({**FIELDS, "tier": "loyalty_tier"}), "fields.tier"),
    ],
    ids=["key", "field"],
)
def test_unknown_column_names_file_field_and_available_columns(
    defn: SyncDefinition, where: str
) -> None:
    with pytest.raises(ConfigError) as info:
        RowEncoder(defn, COLUMNS, ORIGIN)
    message = str(info.value)
    assert ORIGIN in message
    assert where in message
    for column in COLUMNS:
        assert column in message


@pytest.mark.parametrize(
    ("row", "field", "raw"),
    [
        (("ada@example.com", "Ada", Decimal("1"), "3", "not-a-phone"), "phone", "not-a-phone"),
        (("ada@example.com", "Ada", "lots", "3", None), "ltv", "lots"),
        (("ada@example.com", "Ada", Decimal("1"), "3.5", None), "orders", "3.5"),
    ],
)
def test_invalid_value_reason_names_row_and_field_but_not_the_value(
    row: tuple[Any, ...], field: str, raw: str
) -> None:
    _, staged = encode(definition(FIELDS), [ROWS[0], row])
    rownum, key, payload, digest, reason = staged[1]
    assert rownum == 2
    assert key == "ada@example.com"
    assert payload is None and digest is None
    assert reason is not None
    assert "row 2" in reason
    assert field in reason
    assert raw not in reason
    assert staged[0][4] is None  # the good row is unaffected


def test_invalid_key_reason_does_not_contain_the_value() -> None:
    _, staged = encode(definition(FIELDS), [("not-an-email", "Ada", None, None, None)])
    (rownum, key, payload, _, reason) = staged[0]
    assert (rownum, key, payload) == (1, None, None)
    assert reason is not None
    assert "row 1" in reason and "email" in reason
    assert "not-an-email" not in reason


@pytest.mark.parametrize(
    ("key_type", "raw_key", "word"),
    [
        ("string", None, "null"),
        ("email", None, "null"),
        ("string", "", "empty"),
        ("string", "   ", "empty"),
    ],
)
def test_null_and_empty_keys_are_invalid(key_type: str, raw_key: Any, word: str) -> None:
    defn = definition({"name": "first_name"}, key_type=key_type)
    _, staged = encode(defn, [(raw_key, "Ada", None, None, None)])
    rownum, key, payload, _, reason = staged[0]
    assert (rownum, key, payload) == (1, None, None)
    assert reason is not None and word in reason and "email" in reason


def test_row_numbers_continue_from_start() -> None:
    encoder = RowEncoder(definition(FIELDS), COLUMNS, ORIGIN)
    staged = list(encoder.encode(ROWS, start=10))
    assert [r[0] for r in staged] == [11, 12]


def test_integer_and_string_keys_are_normalised() -> None:
    _, staged = encode(
        definition({}, key="orders", key_type="integer"), [(None, None, None, "7", None)]
    )
    assert staged[0][1] == "7"
    _, staged = encode(
        definition({}, key="first_name", key_type="string"), [(None, "  ada  ", None, None, None)]
    )
    assert staged[0][1] == "ada"


# -- the engine's encoding path: valid and invalid rows apart, payloads spilled ------------------


def test_encode_chunk_keeps_invalid_rows_apart_with_row_numbers() -> None:
    from syncer.normalize import PayloadSpill

    encoder = RowEncoder(definition(FIELDS), COLUMNS, ORIGIN)
    rows = [(*ROWS[0][:1], "Ann", *ROWS[0][2:]), (None, *ROWS[1][1:]), ROWS[1]]
    spill = PayloadSpill()
    try:
        chunk = encoder.encode_chunk(rows, start=10, spill=spill)
        spill.flush()
        assert [r[0] for r in chunk.valid] == [11, 13]
        assert [(n, key) for n, key, _ in chunk.invalid] == [(12, None)]
        assert "row 12: null key" in chunk.invalid[0][2]
        # The payload is read back by row number, byte for byte what encode() gives as text.
        plain = {row[0]: row[2] for row in encoder.encode(rows, start=10)}
        for rownum, _, _ in chunk.valid:
            assert spill.read(rownum).decode() == plain[rownum]
        assert spill.read(12) == b""  # the invalid row has no payload
        assert spill.rows == 13
    finally:
        spill.close()


def test_payload_spill_reads_back_every_payload_across_chunks() -> None:
    from syncer.normalize import PayloadSpill

    encoder = RowEncoder(definition(FIELDS), COLUMNS, ORIGIN)
    spill = PayloadSpill()
    try:
        first = encoder.encode_chunk([ROWS[0]], 0, spill)
        second = encoder.encode_chunk([ROWS[1]], 1, spill)
        spill.flush()
        names = [
            fields_of(encoder, spill.read(chunk.valid[0][0]).decode())["name"]
            for chunk in (first, second)
        ]
        assert names == ["Ada", "Bob"]
        with pytest.raises(RuntimeError, match="row 2 written after row 2"):
            encoder.encode_chunk([ROWS[1]], 1, spill)  # a row written twice is a bug
    finally:
        spill.close()


# -- the whole-chunk fast path gives exactly what the row-by-row path gives -----------------------

# Values a warehouse driver can hand over that JSON cannot carry as they are, or nearly so.
SPECIAL_VALUES: list[Any] = [
    float("nan"),
    float("inf"),
    float("-inf"),
    -0.0,
    1e308,
    5e-324,
    Decimal("NaN"),
    Decimal("-NaN"),
    Decimal("sNaN"),
    Decimal("Infinity"),
    Decimal("-Infinity"),
    Decimal("-0"),
    Decimal("3.3333333333333333"),  # Postgres 10/3: 17 digits, more than a float keeps
    Decimal("1.6666666666666667"),  # 17 digits that a float does keep
    Decimal("0.100000000000000000000"),
    Decimal("1E-400"),
    Decimal("1E+400"),
    Decimal("18446744073709551615"),
    2**64 - 1,
    2**64,
    -(2**63),
    -(2**63) - 1,
    2**53 + 1,
    "NaN",
    "Infinity",
    "-inf",
    "null",
    "a\x00b",
    "\ud800",
    "x\udfffy",
    b"\x00\xff",
    [1.0, float("nan")],
    [None, 1],
    {"a": float("inf")},
    {"n": None, "d": Decimal("1.5")},
    [Decimal("NaN")],
    [2**64],
]

_cell = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.text(st.characters(codec=None, categories=["Cs", "Cc", "Ll"]), max_size=4),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=False, places=2, min_value=-1000, max_value=1000),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.binary(max_size=3),
    st.sampled_from(["ada@example.com", " Bob@Example.COM ", "not an email", "", "  "]),
    st.sampled_from(SPECIAL_VALUES),
    st.lists(st.one_of(st.none(), st.floats(), st.integers()), max_size=3),
)
_fast_rows = st.lists(st.tuples(_cell, _cell, _cell, _cell, _cell), max_size=12)


@FAST
@given(
    rows=_fast_rows,
    key_type=st.sampled_from(["string", "email", "integer"]),
    typed=st.booleans(),
    hashed=st.booleans(),
    good_keys=st.booleans(),
)
@example(  # a lone surrogate in a text key, hashed: neither path may crash
    rows=[(None, " \ud800 ", None, None, None), (None, "k\x00", 1, None, None)],
    key_type="string",
    typed=False,
    hashed=True,
    good_keys=False,
)
@example(  # NaN among clean rows: the fast path must notice what orjson wrote as null
    rows=[(None, None, 1.5, None, None), (None, None, float("nan"), None, None)],
    key_type="string",
    typed=False,
    hashed=False,
    good_keys=True,
)
@example(  # more nulls than None values, none of them a NaN: the chunk is still taken whole
    rows=[(None, None, [None, 1.0], None, None), (None, None, "null", None, None)],
    key_type="string",
    typed=False,
    hashed=False,
    good_keys=True,
)
@example(
    rows=[("a@example.com", "Ada", 2**64, "1", None), ("b@example.com", "Bo", "NaN", 2, None)],
    key_type="email",
    typed=True,
    hashed=False,
    good_keys=True,
)
def test_chunk_fast_path_matches_row_by_row(
    rows: list[tuple[Any, ...]], key_type: str, typed: bool, hashed: bool, good_keys: bool
) -> None:
    """Whatever the rows, the encoded chunk (keys, payload bytes, hashes, invalid rows with
    their reasons) is the same whether the chunk is taken whole or row by row."""
    from syncer.normalize import PayloadSpill

    fields: dict[str, Any] = FIELDS if typed else {"name": "first_name", "ltv": "ltv"}
    defn = definition(
        fields, key="first_name" if key_type == "string" else "email", key_type=key_type
    )
    if good_keys:  # mostly clean chunks, which the fast path takes whole
        at = 1 if key_type == "string" else 0
        good = {"string": " k{} ", "email": "U{}@Example.com", "integer": "{}"}[key_type]
        rows = [(*r[:at], good.format(i), *r[at + 1 :]) for i, r in enumerate(rows)]
    results = []
    for whole in (True, False):
        encoder = RowEncoder(defn, COLUMNS, ORIGIN, hash_keys=hashed)
        spill = PayloadSpill()
        try:
            chunk = (
                encoder.encode_chunk(rows, 5, spill)
                if whole
                else encoder._encode_rows(rows, 5, spill)
            )
            spill.flush()
            payloads = [spill.read(n) for n in range(6, 6 + chunk.rows)]
            results.append(
                (
                    chunk.valid,
                    payloads,
                    chunk.invalid,
                    chunk.rows,
                )
            )
        finally:
            spill.close()
    assert results[0] == results[1]
    assert results[0][3] == len(rows)


_number_cell = st.one_of(
    st.none(),
    st.integers(min_value=-(2**66), max_value=2**66),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-(2.0**54), max_value=2.0**54).map(float.__floor__).map(float),
    st.sampled_from([0.0, -0.0, 2.0**53, -(2.0**53), 2.0**53 - 1, 1e300, True]),
)


@FAST
@given(
    st.lists(st.tuples(_number_cell, _number_cell), max_size=12),
    st.sampled_from(["number", "integer"]),
)
def test_numeric_columns_convert_whole_as_value_by_value(
    cells: list[tuple[Any, Any]], kind: str
) -> None:
    """Number and integer fields of a clean chunk are converted a column at a time; the
    payloads (2.0 sent as 2, 2.0**53 as a float, and so their hashes) and refusals are the
    same as value by value."""
    defn = definition(
        {"ltv": {"column": "ltv", "type": kind}, "orders": {"column": "orders", "type": kind}}
    )
    rows = [(f"u{i}@example.com", "x", a, b, None) for i, (a, b) in enumerate(cells)]
    whole, by_row = encode_both_ways(defn, rows, COLUMNS)
    assert whole == by_row


# -- special values: sent faithfully, or the row is invalid and says why ----------------------

INT_RANGE = (-(2**63), 2**64 - 1)  # what orjson writes and reads back exactly


def auto_outcome(value: Any) -> tuple[str, Any]:
    """("sent", what the destination decodes) or ("invalid", the words of the reason) for a
    value of an ``auto`` field: the rules the README states, written out independently."""
    if value is None or isinstance(value, bool):
        return "sent", value
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "invalid", "not valid Unicode"
        return "sent", value
    if isinstance(value, int):
        return ("sent", value) if INT_RANGE[0] <= value <= INT_RANGE[1] else ("invalid", "64-bit")
    if isinstance(value, float):
        return ("sent", value) if math.isfinite(value) else ("invalid", "not a finite number")
    if isinstance(value, Decimal):
        if not value.is_finite():
            return "invalid", "not a finite number"
        if value == value.to_integral_value():
            whole = int(value)
            in_range = INT_RANGE[0] <= whole <= INT_RANGE[1]
            return ("sent", whole) if in_range else ("invalid", "64-bit")
        if Decimal(repr(float(value))) != value:
            return "invalid", "significant digits"
        return "sent", float(value)
    if isinstance(value, bytes):
        return "invalid", "binary"
    if isinstance(value, list | dict):
        items = value if isinstance(value, list) else value.values()
        outcomes = [auto_outcome(item) for item in items]
        bad = [o for o in outcomes if o[0] == "invalid"]
        if bad:
            return bad[0]
        sent = [o[1] for o in outcomes]
        return "sent", sent if isinstance(value, list) else dict(zip(value, sent, strict=True))
    raise AssertionError(f"no rule for {type(value)}")


def same(decoded: Any, expected: Any) -> bool:
    """Equal, and of the same kind: 1 is not 1.0, -0.0 is not 0.0, True is not 1."""
    if isinstance(expected, float):
        return isinstance(decoded, float) and repr(decoded) == repr(expected)
    if isinstance(expected, list):
        return (
            isinstance(decoded, list)
            and len(decoded) == len(expected)
            and all(same(d, e) for d, e in zip(decoded, expected, strict=True))
        )
    if isinstance(expected, dict):
        return (
            isinstance(decoded, dict)
            and decoded.keys() == expected.keys()
            and all(same(decoded[k], expected[k]) for k in expected)
        )
    return type(decoded) is type(expected) and decoded == expected


def encode_both_ways(
    defn: SyncDefinition, rows: list[tuple[Any, ...]], columns: list[str]
) -> list[list[tuple[int, str | None, bytes | None, str | None]]]:
    """Each row as (row number, key, payload, reason), by the whole-chunk path and row by row."""
    from syncer.normalize import PayloadSpill

    results = []
    for whole in (True, False):
        encoder = RowEncoder(defn, columns, ORIGIN)
        spill = PayloadSpill()
        try:
            chunk = (
                encoder.encode_chunk(rows, 0, spill)
                if whole
                else encoder._encode_rows(rows, 0, spill)
            )
            spill.flush()
            staged: dict[int, tuple[int, str | None, bytes | None, str | None]] = {
                n: (n, key, spill.read(n), None) for n, key, _ in chunk.valid
            }
            staged.update({n: (n, key, None, why) for n, key, why in chunk.invalid})
            results.append([staged[n] for n in sorted(staged)])
        finally:
            spill.close()
    return results


REASON_WORDS = " ".join([NOT_FINITE, TOO_LARGE, TOO_PRECISE, NOT_UNICODE, BINARY, "row field"])
AUTO = definition({"a": "first_name", "b": "ltv"}, key="email", key_type="string")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_cell, _cell), min_size=1, max_size=8))
@example([(float("nan"), 1.5)])
@example([("ok", float("-inf")), ("fine", 2)])
@example([(Decimal("NaN"), None), ([1.0, float("inf")], "null")])
@example([(2**64, "x"), ("\ud800", -0.0)])
def test_no_auto_value_changes_silently(cells: list[tuple[Any, Any]]) -> None:
    """Whatever the values, on both encoding paths, each ``auto`` field arrives as exactly
    the value it was (kind included), or its row is invalid with a reason naming the row and
    the field and not the value."""
    rows = [(f"k{i}", a, b, None, None) for i, (a, b) in enumerate(cells)]
    for staged in encode_both_ways(AUTO, rows, COLUMNS):
        for (rownum, key, payload, reason), (a, b) in zip(staged, cells, strict=True):
            outcomes = {"a": auto_outcome(a), "b": auto_outcome(b)}
            bad = [name for name, (kind, _) in outcomes.items() if kind == "invalid"]
            assert key == f"k{rownum - 1}"
            if not bad:
                assert reason is None and payload is not None
                decoded = dict(zip(("a", "b"), orjson.loads(payload), strict=True))
                for name, (_, expected) in outcomes.items():
                    assert same(decoded[name], expected), (name, decoded[name], expected)
            else:
                assert payload is None and reason is not None
                name = bad[0]
                assert reason.startswith(f"row {rownum}: field {name}: "), reason
                assert outcomes[name][1] in reason
                for value in (a, b):
                    text = str(value)
                    if len(text) > 3 and text not in REASON_WORDS:
                        assert text not in reason


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (float("nan"), "not a finite number"),
        (float("inf"), "not a finite number"),
        (float("-inf"), "not a finite number"),
        (Decimal("NaN"), "not a finite number"),
        (Decimal("sNaN"), "not a finite number"),
        (Decimal("-Infinity"), "not a finite number"),
        ([1.0, float("nan")], "not a finite number"),
        ({"deep": [{"x": float("inf")}]}, "not a finite number"),
        (2**64, "64-bit"),
        (-(2**63) - 1, "64-bit"),
        (Decimal("1E+400"), "64-bit"),
        ([2**70], "64-bit"),
        (Decimal("3.3333333333333333"), "round it or cast it to text"),
        (Decimal("1E-400"), "significant digits"),
        ("\ud800", "not valid Unicode"),
        (["ok", "x\udfffy"], "not valid Unicode"),
        (b"\x00", "binary value"),
        (bytearray(b"1"), "binary value"),
        (memoryview(b"1"), "binary value"),
    ],
)
def test_auto_values_json_cannot_carry_make_the_row_invalid(value: Any, words: str) -> None:
    for staged in encode_both_ways(
        AUTO, [("k1", "fine", 1, None, None), ("k2", 1, value, None, None)], COLUMNS
    ):
        assert staged[0][3] is None  # the other row is sent
        _, key, payload, reason = staged[1]
        assert (key, payload) == ("k2", None)
        assert reason is not None and reason.startswith("row 2: field b: ") and words in reason


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        (-0.0, "-0.0"),
        (5e-324, "5e-324"),
        (1e308, "1e+308"),
        (2**64 - 1, "18446744073709551615"),
        (-(2**63), "-9223372036854775808"),
        (2**53 + 1, "9007199254740993"),
        (Decimal("18446744073709551615"), "18446744073709551615"),
        (Decimal("1.6666666666666667"), "1.6666666666666667"),
        (Decimal("120.50"), "120.5"),
        (Decimal("0.100000000000000000000"), "0.1"),
        (Decimal("-0"), "0"),
        ("NaN", '"NaN"'),
        ("Infinity", '"Infinity"'),
        ("null", '"null"'),
        ("a\x00b", '"a\\u0000b"'),
        ([None, 1.5], "[null,1.5]"),
        ({"n": None}, '{"n":null}'),
        (dt.datetime(2024, 1, 2, 3, 4, 5), '"2024-01-02T03:04:05"'),  # naive stays naive
        (
            dt.datetime(2024, 1, 2, 3, 4, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            '"2024-01-02T03:04:00+02:00"',
        ),
        (True, "true"),
    ],
)
def test_auto_values_json_can_carry_are_sent_exactly(value: Any, sent: str) -> None:
    for staged in encode_both_ways(AUTO, [("k1", None, value, None, None)], COLUMNS):
        ((_, _, payload, reason),) = staged
        assert reason is None
        assert payload == f"[null,{sent}]".encode()


def test_a_huge_exponent_is_refused_at_once() -> None:
    """int() of Decimal('1E+999999999') would take minutes and gigabytes: refused first."""
    for value in (Decimal("1E+999999999"), "1e999999999"):
        with pytest.raises(InvalidValue, match="64-bit"):
            convert("number", value)
    staged = encode_both_ways(AUTO, [("k1", None, Decimal("1E+999999999"), None, None)], COLUMNS)
    assert all("64-bit" in (rows[0][3] or "") for rows in staged)


@pytest.mark.parametrize(
    ("kind", "raw", "words"),
    [
        ("string", float("nan"), "not a finite number"),
        ("string", float("-inf"), "not a finite number"),
        ("string", Decimal("NaN"), "not a finite number"),
        ("string", Decimal("sNaN"), "not a finite number"),
        ("string", [1.0, float("inf")], "not a finite number"),
        ("string", b"abc", "binary value"),
        ("string", {"big": 2**70}, "64-bit"),
        ("number", float("nan"), "not a finite number"),
        ("number", Decimal("sNaN"), "not a finite number"),
        ("number", "NaN", "not a finite number"),
        ("number", " -Infinity ", "not a finite number"),
        ("number", "sNaN", "not a finite number"),
        ("number", 2**64, "64-bit"),
        ("number", "1e400", "64-bit"),
        ("number", "3.14159265358979323846", "significant digits"),
        ("number", "1e-400", "significant digits"),
        ("integer", float("inf"), "not a finite number"),
        ("integer", Decimal("-Infinity"), "not a finite number"),
        ("integer", 2**64, "64-bit"),
        ("integer", -(2**63) - 1, "64-bit"),
        ("integer", 1e16, "not an exact whole number"),
        ("boolean", float("nan"), "not a boolean"),
        ("boolean", Decimal("1"), "not a boolean"),
        ("boolean", 1.0, "not a boolean"),
        ("date", float("nan"), "not a date"),
        ("date", "infinity", "not a date"),
        ("datetime", float("inf"), "not a timestamp"),
        ("datetime", "-infinity", "not an ISO 8601 timestamp"),
        ("email", float("nan"), "not a valid email"),
        ("email", "ada\x00@example.com", "not a valid email"),
        ("email", "ada\ud800@example.com", "not a valid email"),
        ("phone", float("nan"), "not a valid phone"),
        ("phone", 447911123456.0, "not a valid phone"),
        ("phone", b"+447911123456", "not a valid phone"),
    ],
)
def test_typed_fields_refuse_special_values_with_a_reason(kind: str, raw: Any, words: str) -> None:
    with pytest.raises(InvalidValue, match=words) as info:
        convert(kind, raw)
    if isinstance(raw, str) and len(raw) > 3:
        assert raw not in str(info.value)


@pytest.mark.parametrize(
    ("kind", "raw", "expected"),
    [
        ("string", True, "true"),  # not Python's "True"
        ("string", False, "false"),
        ("string", "NaN", "NaN"),  # text stays the text it is
        ("string", "a\x00b", "a\x00b"),
        ("string", -0.0, "-0.0"),
        ("string", Decimal("120.50"), "120.50"),
        ("string", [1, None, "x"], '[1,null,"x"]'),  # JSON text, not Python's repr
        ("string", {"a": None, "b": Decimal("1.5")}, '{"a":null,"b":1.5}'),
        ("number", 2**64 - 1, 2**64 - 1),
        ("number", -0.0, 0),
        ("number", Decimal("-0"), 0),
        ("number", "1.6666666666666667", 1.6666666666666667),
        ("number", 1e300, 1e300),
        ("integer", -(2**63), -(2**63)),
        ("integer", Decimal("18446744073709551615"), 2**64 - 1),
    ],
)
def test_typed_fields_send_what_they_can_exactly(kind: str, raw: Any, expected: Any) -> None:
    result = convert(kind, raw)
    assert same(result, expected)


TEXT_KEY = definition({"name": "first_name"}, key="email", key_type="string")


@pytest.mark.parametrize(
    ("key_type", "raw", "words"),
    [
        ("string", float("nan"), "not a finite number"),
        ("string", float("inf"), "not a finite number"),
        ("string", Decimal("NaN"), "not a finite number"),
        ("string", Decimal("sNaN"), "not a finite number"),
        ("string", "a\x00b", "NUL"),
        ("string", " \ud800 ", "not valid Unicode"),
        ("string", b"\x01", "binary value"),
        ("integer", float("nan"), "not a finite number"),
        ("integer", Decimal("Infinity"), "not a finite number"),
        ("integer", "NaN", "not a finite number"),
        ("integer", 1e16, "not an exact whole number"),
        ("email", float("nan"), "not a valid email"),
        ("email", "a\ud800@example.com", "not a valid email"),
        ("phone", float("inf"), "not a valid phone"),
    ],
)
@pytest.mark.parametrize("hashed", [False, True])
def test_special_keys_make_the_row_invalid_on_both_paths(
    key_type: str, raw: Any, words: str, hashed: bool
) -> None:
    """A NaN key would become the text "nan" (shared by every NaN row); a NUL or a lone
    surrogate cannot be stored or hashed: each row is invalid, the others go on."""
    from syncer.normalize import PayloadSpill

    defn = definition({"name": "first_name"}, key="email", key_type=key_type)
    good = {"string": "k", "integer": 7, "email": "ada@example.com", "phone": "+447911123456"}
    rows = [(good[key_type], "Ada", None, None, None), (raw, "Bad", None, None, None)]
    for whole in (True, False):
        encoder = RowEncoder(defn, COLUMNS, ORIGIN, hash_keys=hashed)
        spill = PayloadSpill()
        try:
            chunk = (
                encoder.encode_chunk(rows, 0, spill)
                if whole
                else encoder._encode_rows(rows, 0, spill)
            )
        finally:
            spill.close()
        assert [n for n, _, _ in chunk.valid] == [1]
        ((rownum, key, reason),) = chunk.invalid
        assert (rownum, key) == (2, None)
        assert reason.startswith("row 2: key email: ") and words in reason


def test_big_integer_keys_are_kept_as_text() -> None:
    """Keys are text: an id beyond 64 bits is still exactly itself."""
    defn = definition({}, key="orders", key_type="integer")
    _, staged = encode(defn, [(None, None, None, Decimal("123456789012345678901234567890"), None)])
    assert staged[0][1] == "123456789012345678901234567890"


@pytest.mark.parametrize(
    ("cells", "whole"),
    [
        ([("a", 1.5), (None, None)], True),
        ([([None, 1.0], "null"), ({"n": None}, "annulled")], True),  # nulls that are no NaN
        ([(-0.0, 0.0), (1e308, 5e-324)], True),
        ([("a", 1.5), (None, float("nan"))], False),
        ([("a", [1.0, float("-inf")]), ("null", None)], False),
        ([({"x": {"y": float("inf")}}, 1), ("b", 2)], False),
    ],
)
def test_whole_chunk_path_is_kept_unless_a_value_is_nan(
    cells: list[tuple[Any, Any]], whole: bool
) -> None:
    """The cheap path gives up only for what orjson would hide: nulls alone do not cost it."""
    rows = [(f"k{i}", a, b, None, None) for i, (a, b) in enumerate(cells)]
    encoder = RowEncoder(AUTO, COLUMNS, ORIGIN)
    assert (encoder._encode_whole(rows, 0) is not None) is whole
    narrow = RowEncoder(AUTO, COLUMNS[:3], ORIGIN)  # the fields are then the whole row
    assert (narrow._encode_whole([r[:3] for r in rows], 0) is not None) is whole
