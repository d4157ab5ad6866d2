"""Normalisation of warehouse values: converters, and rows turned into payloads or reasons."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import phonenumbers
import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from syncer.errors import ConfigError
from syncer.mapping import FieldSpec, SyncDefinition
from syncer.normalize import (
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

_cell = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=False, places=2, min_value=-1000, max_value=1000),
    st.booleans(),
    st.binary(max_size=3),
    st.sampled_from(["ada@example.com", " Bob@Example.COM ", "not an email", "", "  "]),
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
