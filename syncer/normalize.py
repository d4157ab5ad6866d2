"""Turn warehouse rows into (key, payload, hash) or a reason the row cannot be sent.

This runs once per source row, so it is the hot path: converters are chosen once per sync and
the common case (plain values, string keys) does no per-field dispatch at all. Reasons never
quote the value: it may be an email address or a phone number.
"""

from __future__ import annotations

import datetime as dt
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any

import orjson
import phonenumbers
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from xxhash import xxh3_64_intdigest

from syncer.errors import ConfigError
from syncer.mapping import FieldSpec, SyncDefinition

StagedRow = tuple[int, str | None, str | None, int | None, str | None]
"""(row number, key, payload, payload hash, invalid reason) as written to staging.

The payload is a JSON array of field values in ``RowEncoder.field_names`` order."""


class InvalidValue(ValueError):
    """A value that cannot be converted to its declared type (message names no value)."""


_SIMPLE_EMAIL = re.compile(
    r"^[a-z0-9_%+-]+(?:\.[a-z0-9_%+-]+)*@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"
)
# Domains the regex lets through but email_validator refuses (or must check as IDNA): reserved
# names like ``.test``/``.local``, and labels with "--" (Punycode "xn--" or invalid R-LDH).
_SPECIAL_DOMAINS = tuple(f".{name}" for name in SPECIAL_USE_DOMAIN_NAMES)


def normalize_email(value: Any) -> str:
    """Lowercased, trimmed, syntax-checked email (no DNS); plain ASCII skips the slow path."""
    if not isinstance(value, str):
        raise InvalidValue("not a valid email address")
    text = value.strip().lower()
    if len(text) <= 254 and _SIMPLE_EMAIL.match(text):
        local, _, domain = text.partition("@")
        if len(local) <= 64 and "--" not in domain and not domain.endswith(_SPECIAL_DOMAINS):
            return text
    try:
        return validate_email(text, check_deliverability=False).normalized.lower()
    except EmailNotValidError:
        raise InvalidValue("not a valid email address") from None


def normalize_phone(value: Any, region: str | None = None) -> str:
    """E.164 phone number; numbers without a country code need the mapping's region."""
    if value is None or isinstance(value, bool):
        raise InvalidValue("not a valid phone number")
    text = str(value).strip()
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        raise InvalidValue("not a valid phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidValue("not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _number(value: Any) -> int | float:
    if isinstance(value, bool):
        raise InvalidValue("not a number")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidValue("not a finite number")
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise InvalidValue("not a finite number")
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, str):
        try:
            return _number(Decimal(value.strip()))
        except ArithmeticError:
            raise InvalidValue("not a number") from None
    raise InvalidValue("not a number")


def _integer(value: Any) -> int:
    number = _number(value)
    if not isinstance(number, int):
        raise InvalidValue("not a whole number")
    return number


_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise InvalidValue("not a boolean")


def _date(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str):
        text = value.strip()
        try:
            return dt.date.fromisoformat(text).isoformat()
        except ValueError:
            pass
        try:  # a timestamp: its date as written (no time zone conversion)
            return dt.datetime.fromisoformat(text).date().isoformat()
        except ValueError:
            raise InvalidValue("not a date (YYYY-MM-DD)") from None
    raise InvalidValue("not a date")


def _datetime(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidValue("not an ISO 8601 timestamp") from None
    if isinstance(value, dt.datetime):
        moment: dt.datetime = value if value.tzinfo is None else value.astimezone(dt.UTC)
        return moment.isoformat()
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day).isoformat()
    raise InvalidValue("not a timestamp")


def _string(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        raise InvalidValue("binary value cannot be sent as text")
    return value if isinstance(value, str) else str(value)


def _auto(value: Any) -> Any:
    """Values orjson cannot encode itself: decimals become numbers, the rest text."""
    if isinstance(value, Decimal):
        return _number(value)
    if isinstance(value, bytes | bytearray | memoryview):
        raise InvalidValue("binary value cannot be sent")
    if isinstance(value, dt.time | dt.timedelta):
        return str(value)
    raise InvalidValue(f"unsupported value type {type(value).__name__}")


def field_converter(spec: FieldSpec) -> Callable[[Any], Any] | None:
    """The converter for a field, or None when the value passes through as it is."""
    kind = spec.type
    if kind == "auto":
        return None
    if kind == "email":
        return normalize_email
    if kind == "phone":
        region = spec.region
        return lambda v: normalize_phone(v, region)
    return {
        "string": _string,
        "number": _number,
        "integer": _integer,
        "boolean": _boolean,
        "date": _date,
        "datetime": _datetime,
    }[kind]


def key_converter(definition: SyncDefinition) -> Callable[[Any], str]:
    source = definition.source
    if source.key_type == "email":
        return normalize_email
    if source.key_type == "phone":
        region = source.key_region
        return lambda v: normalize_phone(v, region)
    if source.key_type == "integer":
        return lambda v: str(_integer(v))
    return lambda v: (v if isinstance(v, str) else _string(v)).strip()


_SIGN_SHIFT = 1 << 63


def payload_hash(payload: bytes) -> int:
    """Stable 64-bit digest of a payload, as a signed integer (fits SQLite and BIGINT).

    It only has to tell two versions of the same record apart, not resist an attacker: a missed
    update needs a 2**-64 coincidence. XXH3 is several times cheaper than a cryptographic hash
    on this per-row hot path, and integers keep staging narrow and comparisons cheap.
    """
    return xxh3_64_intdigest(payload) - _SIGN_SHIFT


def _picker(positions: list[int]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """A C-speed getter of the mapped columns of a row, always returning a tuple."""
    if not positions:
        return lambda row: ()
    if len(positions) == 1:
        (only,) = positions
        return lambda row: (row[only],)
    getter: Callable[[Sequence[Any]], tuple[Any, ...]] = operator.itemgetter(*positions)
    return getter


class RowEncoder:
    """Encodes the rows of one sync's query; built once per run from the result's columns."""

    def __init__(self, definition: SyncDefinition, columns: Sequence[str], origin: str) -> None:
        index = {name: i for i, name in enumerate(columns)}
        lowered = {name.lower(): i for i, name in enumerate(columns)}

        def position(column: str, where: str) -> int:
            if column in index:
                return index[column]
            if column.lower() in lowered:
                return lowered[column.lower()]
            raise ConfigError(
                f"{origin}: {where}: unknown column {column!r}; the query returns:"
                f" {', '.join(columns) or 'no columns'}"
            )

        self.key_column = definition.source.key
        self._key_index = position(definition.source.key, "source.key")
        self._key = key_converter(definition)
        specs = definition.field_specs()
        # Sorted destination names make the payload (and its hash) independent of YAML order.
        self._fields = [
            (name, position(spec.column, f"fields.{name}"), field_converter(spec))
            for name, spec in sorted(specs.items())
        ]
        self._plain = all(conv is None for _, _, conv in self._fields)
        self._string_keys = definition.source.key_type == "string"
        self.field_names = tuple(name for name, _, _ in self._fields)
        positions = [i for _, i, _ in self._fields]
        # The payload is a JSON array in field_names order: no dict per row on the hot path.
        self._pick = _picker(positions)

    def encode(self, rows: Iterable[Sequence[Any]], start: int = 0) -> list[StagedRow]:
        """One staging row per source row; bad rows carry their reason and no payload.

        Written as one flat loop with locals bound up front: it runs once per member.
        """
        out: list[StagedRow] = []
        append = out.append
        key_index, key_conv = self._key_index, self._key
        fields, plain, pick = self._fields, self._plain, self._pick
        string_keys = self._string_keys
        dumps, default, digest, shift = orjson.dumps, _auto, xxh3_64_intdigest, _SIGN_SHIFT
        for rownum, row in enumerate(rows, start + 1):
            raw_key = row[key_index]
            if string_keys and type(raw_key) is str:
                key = raw_key.strip()
            elif raw_key is None:
                append((rownum, None, None, None, f"row {rownum}: null key ({self.key_column})"))
                continue
            else:
                try:
                    key = key_conv(raw_key)
                except InvalidValue as exc:
                    reason = f"row {rownum}: key {self.key_column}: {exc}"
                    append((rownum, None, None, None, reason))
                    continue
            if not key:
                append((rownum, None, None, None, f"row {rownum}: empty key ({self.key_column})"))
                continue
            try:
                if plain:
                    values = pick(row)
                else:
                    values = tuple(
                        row[i] if conv is None or row[i] is None else conv(row[i])
                        for _, i, conv in fields
                    )
                payload = dumps(values, default=default)
            except (InvalidValue, TypeError, orjson.JSONEncodeError):
                append((rownum, key, None, None, f"row {rownum}: {self._explain(row)}"))
                continue
            append((rownum, key, payload.decode(), digest(payload) - shift, None))
        return out

    def _explain(self, row: Sequence[Any]) -> str:
        """Find which field broke (slow path, only for bad rows)."""
        for name, i, conv in self._fields:
            value = row[i]
            if value is None:
                continue
            try:
                orjson.dumps(conv(value) if conv else value, default=_auto)
            except (InvalidValue, TypeError, orjson.JSONEncodeError) as exc:
                detail = str(exc) if isinstance(exc, InvalidValue) else "cannot be encoded"
                return f"field {name}: {detail}"
        return "row cannot be encoded"
