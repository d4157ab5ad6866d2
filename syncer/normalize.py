"""Turn warehouse rows into (key, payload, hash) or a reason the row cannot be sent.

This runs once per source row, so it is the hot path: converters are chosen once per sync and
the common case (plain values, string keys) does no per-field dispatch at all. Reasons never
quote the value: it may be an email address or a phone number.

A value goes out exactly as it is or not at all: what the JSON payload cannot carry unchanged
(NaN and infinity, which orjson would write as null; integers beyond 64 bits; decimals with
more digits than a float keeps; lone surrogates; binary) makes the row invalid, with a reason.
"""

from __future__ import annotations

import datetime as dt
import math
import mmap
import operator
import re
import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Context, Decimal
from functools import partial
from hashlib import sha256
from itertools import accumulate, chain, compress, repeat
from types import NoneType
from typing import Any

import orjson
from xxhash import xxh3_64_intdigest

from syncer.errors import ConfigError
from syncer.mapping import FieldSpec, SyncDefinition

StagedRow = tuple[int, str | None, str | None, int | None, str | None]
"""(row number, key, payload, payload hash, invalid reason): one source row, encoded.

The payload is a JSON array of field values in ``RowEncoder.field_names`` order."""

ValidRow = tuple[int, str, int]
"""(row number, key, payload hash); the payload is in the spill under the row number."""
InvalidRow = tuple[int, str | None, str]
"""(row number, key if it was readable, why the row cannot be sent)."""


@dataclass(slots=True)
class EncodedChunk:
    """One chunk of source rows, encoded: what can be sent, in columns, and what cannot and why.

    Valid rows are parallel lists, so a bulk insert binds them straight from ``zip`` with no
    tuple built per row. ``rownums`` is None when the chunk had no invalid row: its valid rows
    are then exactly rows ``start + 1`` to ``start + len(keys)``, in order, and a SQLite table
    can number them itself. Payloads are not here: they are in the spill, by row number.
    """

    start: int
    keys: list[str]
    hashes: list[int]
    rownums: list[int] | None
    invalid: list[InvalidRow]
    #: Valid rows held out of the destination (syncer.holdout): (key as staged, group). They
    #: are not in ``keys``: never staged, so never sent, and removed if they were.
    held: list[tuple[str, str]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.keys) + len(self.invalid) + len(self.held)

    def row_numbers(self) -> Iterable[int]:
        if self.rownums is not None:
            return self.rownums
        return range(self.start + 1, self.start + 1 + len(self.keys))

    @property
    def valid(self) -> list[ValidRow]:
        """The valid rows as (row number, key, hash) tuples."""
        return list(zip(self.row_numbers(), self.keys, self.hashes, strict=True))


_ZERO = array("q", [0])


#: Payload reads between two trims of the spill's mapped pages (see PayloadSpill.read).
TRIM_EVERY = 1024


def _trim(maps: tuple[memoryview, mmap.mmap | bytes]) -> None:
    """Drop the mapped pages from this process (the kernel keeps them cached): reading them
    again faults them back in."""
    ends, payloads = maps
    for mapped in (ends.obj, payloads):
        if isinstance(mapped, mmap.mmap):
            mapped.madvise(mmap.MADV_DONTNEED)


class PayloadSpill:
    """Payloads of one run in unlinked temporary files, written once in row order.

    Staging keeps only (row number, key, hash): most rows of a run are unchanged and their
    payload is never read back, so it is cheaper to append it to a file (no B-tree, no
    index, gone with the process even after a crash) than to insert it into the state
    database. A second file holds offsets, 8 bytes each: a leading 0, then where each row's
    payload ends (an invalid row ends where the row before it did), so row N's payload lies
    between entries N - 1 and N, found from its row number alone, and staging binds one value
    fewer per row. Only the changed rows' payloads are read again.
    """

    def __init__(self) -> None:
        # Owned for the run and closed by ``close`` (Staging.close), not a with-block.
        self._file = tempfile.TemporaryFile(prefix="syncer-payloads-")  # noqa: SIM115
        self._ends = tempfile.TemporaryFile(prefix="syncer-payload-ends-")  # noqa: SIM115
        self._ends.write(_ZERO)
        self.size = 0
        self.rows = 0
        self._maps: tuple[memoryview, mmap.mmap | bytes] | None = None
        self._reads = 0

    def write(self, payloads: bytes | bytearray, ends: array[int], start: int) -> None:
        """Append the payloads of rows ``start + 1`` onwards and where each one ends.

        Rows must arrive in order, each once; rows skipped before ``start`` have no payload.
        """
        if start < self.rows:
            raise RuntimeError(f"payloads of row {start + 1} written after row {self.rows}")
        if start > self.rows:
            self._ends.write(array("q", [self.size]) * (start - self.rows))
            self.rows = start
        if payloads:
            self._file.write(payloads)
        self._ends.write(ends)
        self.rows += len(ends)
        if ends:
            self.size = ends[-1]

    def flush(self) -> None:
        """Make every payload written so far readable by row (call once, after load)."""
        self._file.flush()
        self._ends.flush()
        self._unmap()

    def _unmap(self) -> None:
        if self._maps is not None:
            ends, payloads = self._maps
            ends.release()
            if isinstance(payloads, mmap.mmap):
                payloads.close()
            self._maps = None

    def read(self, rownum: int) -> bytes:
        """The payload of source row ``rownum`` (counted from 1).

        Both files are mapped into memory on the first read after ``flush``: a read is then
        two slices, not two system calls (a third of reading a first run's pages back). The
        pages read are given back every TRIM_EVERY reads: mapped file pages count in the
        process's RSS, and a first run reads every row once (48 MB more at 1,000,000)."""
        maps = self._maps
        if maps is None:
            maps = self._maps = self._map()
        self._reads += 1  # a lost increment between threads only delays a trim
        if self._reads % TRIM_EVERY == 0:
            _trim(maps)
        ends, payloads = maps
        return payloads[ends[rownum - 1] : ends[rownum]]

    def _map(self) -> tuple[memoryview, mmap.mmap | bytes]:
        ends = mmap.mmap(self._ends.fileno(), 0, access=mmap.ACCESS_READ)
        payloads: mmap.mmap | bytes = b""
        if self.size:
            payloads = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        return memoryview(ends).cast("q"), payloads

    def reset(self) -> None:
        """Forget everything written (a reader that was given up may have begun)."""
        self._unmap()
        for file in (self._file, self._ends):
            file.seek(0)
            file.truncate()
        self._ends.write(_ZERO)
        self.size = self.rows = 0

    def close(self) -> None:
        self._unmap()
        self._file.close()
        self._ends.close()


class InvalidValue(ValueError):
    """A value that cannot be converted to its declared type (message names no value)."""


_SIMPLE_EMAIL = re.compile(
    r"^[a-z0-9_%+-]+(?:\.[a-z0-9_%+-]+)*@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"
)
# Domains the regex lets through but email_validator refuses (or must check as IDNA): reserved
# names like ``.test``/``.local``, and labels with "--" (Punycode "xn--" or invalid R-LDH).
# email_validator (tens of milliseconds of regexes to import) loads with the first email, so
# syncs without one, and every short command, never pay for it.
_SPECIAL_DOMAINS: tuple[str, ...] = ()


def _special_domains() -> tuple[str, ...]:
    global _SPECIAL_DOMAINS
    from email_validator import SPECIAL_USE_DOMAIN_NAMES

    _SPECIAL_DOMAINS = tuple(f".{name}" for name in SPECIAL_USE_DOMAIN_NAMES)
    return _SPECIAL_DOMAINS


def normalize_email(value: Any) -> str:
    """Lowercased, trimmed, syntax-checked email (no DNS); plain ASCII skips the slow path."""
    if not isinstance(value, str):
        raise InvalidValue("not a valid email address")
    text = value.strip().lower()
    if len(text) <= 254 and _SIMPLE_EMAIL.match(text):
        local, _, domain = text.partition("@")
        special = _SPECIAL_DOMAINS or _special_domains()
        if len(local) <= 64 and "--" not in domain and not domain.endswith(special):
            return text
    from email_validator import EmailNotValidError, validate_email

    try:
        return validate_email(text, check_deliverability=False).normalized.lower()
    except EmailNotValidError:
        raise InvalidValue("not a valid email address") from None


def normalize_phone(value: Any, region: str | None = None) -> str:
    """E.164 phone number; numbers without a country code need the mapping's region."""
    if value is None or isinstance(value, bool | float | bytes | bytearray | memoryview):
        # str() of a float ("447911123456.0") or of bytes ("b'+44...'") is not the number
        # the warehouse holds, however leniently phonenumbers reads it.
        raise InvalidValue("not a valid phone number")
    text = str(value).strip()
    import phonenumbers  # loaded with the first phone number, not by every command

    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        raise InvalidValue("not a valid phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidValue("not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


class Infinite:
    """A date or timestamp a database keeps as plus or minus infinity (PostgreSQL's
    ``'infinity'``), as the warehouse reader hands it over: no JSON, ISO 8601 or calendar
    value says that, so a row holding one is invalid unless its field is text."""

    __slots__ = ("negative",)

    def __init__(self, negative: bool) -> None:
        self.negative = negative

    def __str__(self) -> str:  # PostgreSQL's own spelling, for a text field
        return "-infinity" if self.negative else "infinity"

    __repr__ = __str__


# What a JSON payload cannot carry as it is. Each is a reason: it names no value.
INFINITE_TIME = "an infinite date or time ('infinity') is not a calendar value"
NOT_FINITE = "not a finite number (NaN or infinity)"
TOO_LARGE = "integer beyond the 64-bit range cannot be sent; cast it to text in the query"
TOO_PRECISE = (
    "number has more significant digits than a JSON number keeps (a 64-bit float);"
    " round it or cast it to text in the query"
)
NOT_UNICODE = "text is not valid Unicode (a lone surrogate)"
BINARY = "binary value cannot be sent"
UNENCODABLE = "cannot be encoded as JSON"
# The integers orjson writes and reads back exactly.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_EXACT_FLOAT = 2**53  # below it, a float holding a whole number is sent as an int


def _finite(number: float) -> float:
    if not math.isfinite(number):
        raise InvalidValue(NOT_FINITE)
    return number


def _decimal(value: Decimal) -> int | float:
    """An exact integer, or the float that reads back as the same decimal; else refused."""
    if not value.is_finite():
        raise InvalidValue(NOT_FINITE)
    number = float(value)
    if number.is_integer():
        if value == value.to_integral_value():
            return int(value)
    elif not math.isfinite(number):  # beyond any float: int() of 1E+999999999 takes ages
        raise InvalidValue(TOO_LARGE)
    # A float keeps any 15 significant digits in its normal range (rounding to 15 digits
    # leaves such a decimal equal to itself); longer ones (avg() results, NUMERIC(38,18))
    # are compared with what the float reads back as.
    if _FLOAT_DIGITS.plus(value) != value and Decimal(repr(number)) != value:
        raise InvalidValue(TOO_PRECISE)
    return number


_FLOAT_DIGITS = Context(prec=15, Emin=-300, Emax=300, traps=[])


def _number(value: Any) -> int | float:
    if isinstance(value, bool):
        raise InvalidValue("not a number")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        _finite(value)
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, Decimal):
        return _decimal(value)
    if isinstance(value, str):
        try:
            parsed = Decimal(value.strip())
        except ArithmeticError:
            raise InvalidValue("not a number") from None
        return _decimal(parsed)
    raise InvalidValue("not a number")


def _integer(value: Any) -> int:
    number = _number(value)
    if isinstance(number, int):
        return number
    if number.is_integer():  # beyond 2**53 a float no longer holds every whole number
        raise InvalidValue("a float this large is not an exact whole number")
    raise InvalidValue("not a whole number")


def _in_range(number: int | float) -> int | float:
    if type(number) is int and not _INT_MIN <= number <= _INT_MAX:
        raise InvalidValue(TOO_LARGE)
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
    if isinstance(value, Infinite):
        raise InvalidValue(INFINITE_TIME)
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
    if isinstance(value, Infinite):
        raise InvalidValue(INFINITE_TIME)
    raise InvalidValue("not a timestamp")


def _string(value: Any) -> str:
    """Text as it is; other values as SQL and JSON spell them, never Python's own spelling
    ("True", "nan", "{'a': None}")."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes | bytearray | memoryview):
        raise InvalidValue(BINARY)
    if isinstance(value, float):
        _finite(value)
    elif isinstance(value, Decimal) and not value.is_finite():
        raise InvalidValue(NOT_FINITE)
    elif isinstance(value, list | tuple | dict):  # JSON or an array: its JSON text
        detail = _problem(value)
        if detail is not None:
            raise InvalidValue(detail)
        try:
            return orjson.dumps(value, default=_auto).decode()
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise InvalidValue(_refusal(exc)) from None
    return str(value)


def _auto(value: Any) -> Any:
    """Values orjson cannot encode itself: decimals become numbers, the rest text."""
    if isinstance(value, Decimal):
        number = _decimal(value)
        if type(number) is int and not _INT_MIN <= number <= _INT_MAX:
            raise InvalidValue(TOO_LARGE)
        return number
    if isinstance(value, float):  # a subclass (numpy.float64): orjson takes plain floats only
        return _finite(float(value))
    if isinstance(value, bytes | bytearray | memoryview):
        raise InvalidValue(BINARY)
    if isinstance(value, dt.time | dt.timedelta):
        return str(value)
    if isinstance(value, Infinite):
        raise InvalidValue(INFINITE_TIME)
    raise InvalidValue(f"unsupported value type {type(value).__name__}")


def _problem(value: Any) -> str | None:
    """Why orjson would not write ``value`` (a field's value after conversion) as it is: the
    reason, or None. orjson writes NaN and infinities as ``null`` without a word, so they are
    looked for here; the rest it refuses, and this names why. Slow: only for bad rows."""
    if isinstance(value, str):
        return None if value.isascii() or _utf8(value) else NOT_UNICODE
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if _INT_MIN <= value <= _INT_MAX else TOO_LARGE
    if isinstance(value, list | tuple):
        return next(filter(None, map(_problem, value)), None)
    if isinstance(value, dict):
        return next(filter(None, map(_problem, [*value, *value.values()])), None)
    if isinstance(value, float | Decimal | bytes | bytearray | memoryview):
        try:
            _auto(value)
        except InvalidValue as exc:
            return str(exc)
    return None


def _refusal(exc: Exception) -> str:
    """Why orjson refused a value: an error in the default hook reaches us wrapped, its
    reason as the cause."""
    cause = exc.__cause__
    return str(cause) if isinstance(cause, InvalidValue) else UNENCODABLE


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _nonfinite(values: Iterable[Any]) -> bool:
    """Whether any value (or any value inside a list or object) is NaN or an infinity.

    C-level filters over the values; only lists and objects are walked in Python."""
    flat = list(values)
    if not all(map(math.isfinite, filter(float.__instancecheck__, flat))):
        return True
    nested = compress(flat, map(_CONTAINERS.__contains__, map(type, flat)))
    for container in nested:
        items = container.values() if isinstance(container, dict) else container
        if _nonfinite(items):
            return True
    return False


_CONTAINERS = frozenset({list, tuple, dict})


def _number_field(value: Any) -> int | float:
    return _in_range(_number(value))


def _integer_field(value: Any) -> int | float:
    return _in_range(_integer(value))


def _key_text(text: str) -> str:
    """A text key as it is, unless the state database could not store it faithfully."""
    if "\x00" in text:
        raise InvalidValue("contains a NUL character")
    if not (text.isascii() or _utf8(text)):
        raise InvalidValue("not valid Unicode (a lone surrogate)")
    return text


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
        "number": _number_field,
        "integer": _integer_field,
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
    return lambda v: _key_text((v if isinstance(v, str) else _string(v)).strip())


def _number_column(values: list[Any], whole: bool = False) -> list[Any] | None:
    """``_number_field`` (``_integer_field`` when ``whole``) of a whole column, in a few
    C-level passes, when it holds only ints, floats and nulls; None when it holds anything
    else or a value that conversion would refuse (the caller then converts value by value,
    which words the reason). The same values as one by one, to the type: 2.0 becomes 2."""
    kinds = set(map(type, values))
    kinds.discard(NoneType)
    if not kinds <= {int, float}:
        return None
    if float in kinds:
        floats = [v for v in values if type(v) is float]
        if not all(map(math.isfinite, floats)):
            return None
        if whole and not all(v.is_integer() and abs(v) < _EXACT_FLOAT for v in floats):
            return None
        values = [
            v if type(v) is not float or not (v.is_integer() and abs(v) < _EXACT_FLOAT) else int(v)
            for v in values
        ]
    if int in kinds:
        ints = [v for v in values if type(v) is int]
        if min(ints) < _INT_MIN or max(ints) > _INT_MAX:
            return None
    return values


def _column_converter(
    conv: Callable[[Any], Any],
) -> Callable[[list[Any]], list[Any]]:
    """A field's converter applied to a whole column (nulls stay null)."""

    def one_by_one(values: list[Any]) -> list[Any]:
        return [None if v is None else conv(v) for v in values]

    if conv is _number_field or conv is _integer_field:
        whole = conv is _integer_field

        def numbers(values: list[Any]) -> list[Any]:
            converted = _number_column(values, whole)
            return one_by_one(values) if converted is None else converted

        return numbers
    return one_by_one


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

    def __init__(
        self,
        definition: SyncDefinition,
        columns: Sequence[str],
        origin: str,
        *,
        hash_keys: bool = False,
    ) -> None:
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
        # The fields of a whole chunk are converted a column at a time (no call per row).
        self._columns = [
            (operator.itemgetter(i), None if conv is None else _column_converter(conv))
            for _, i, conv in self._fields
        ]
        self._string_keys = definition.source.key_type == "string"
        # Destinations that must never see raw identifiers in state (ad audiences) get the
        # SHA-256 of each normalised key as the key itself.
        self._hash_keys = hash_keys
        self.field_names = tuple(name for name, _, _ in self._fields)
        positions = [i for _, i, _ in self._fields]
        # Each column mapped once, and the key (never null in a whole chunk) at most also:
        # a row's nulls are then its fields' nulls, counted without picking the fields.
        self._fields_are_row = len(set(positions)) == len(positions) and {
            *positions,
            self._key_index,
        } == set(range(len(columns)))
        # The payload is a JSON array in field_names order: no dict per row on the hot path.
        self._pick = _picker(positions)
        self._dumps = partial(orjson.dumps, default=_auto)
        # Plain orjson.dumps until a chunk needs the hook (output is the same either way).
        self._fast_dumps: Callable[[Any], bytes] = orjson.dumps
        self._grouper: Callable[[Sequence[str]], list[str]] | None = None
        # The chunk's normalised keys before hashing, kept only to group them (hold_out).
        self._plain_keys: list[str] | None = None

    def hold_out(self, grouper: Callable[[Sequence[str]], list[str]] | None) -> None:
        """Split every chunk by group (syncer.holdout): held-out rows go to ``chunk.held``.
        ``grouper`` maps normalised keys (before any hashing) to groups."""
        self._grouper = grouper

    def _split(self, chunk: EncodedChunk, plain: Sequence[str]) -> EncodedChunk:
        """Move ``chunk``'s held-out rows (by their normalised keys ``plain``) to ``held``."""
        assert self._grouper is not None
        groups = self._grouper(plain)
        treated = [group == "treated" for group in groups]
        if all(treated):
            return chunk
        numbers = list(chunk.row_numbers())
        keys = chunk.keys
        chunk.held = [(k, g) for k, g, t in zip(keys, groups, treated, strict=True) if not t]
        chunk.keys = list(compress(keys, treated))
        chunk.hashes = list(compress(chunk.hashes, treated))
        chunk.rownums = list(compress(numbers, treated))
        return chunk

    def encode(self, rows: Iterable[Sequence[Any]], start: int = 0) -> list[StagedRow]:
        """One staging row per source row, in row order, payloads as JSON text; bad rows carry
        their reason and no payload. For checks and tests: runs use :meth:`encode_chunk`."""
        spill = PayloadSpill()
        try:
            chunk = self.encode_chunk(list(rows), start, spill)
            spill.flush()
            merged: list[StagedRow] = [
                (n, key, spill.read(n).decode(), h, None) for n, key, h in chunk.valid
            ]
        finally:
            spill.close()
        merged += [(n, key, None, None, reason) for n, key, reason in chunk.invalid]
        merged.sort(key=operator.itemgetter(0))
        return merged

    def encode_chunk(
        self, rows: Sequence[Sequence[Any]], start: int, spill: PayloadSpill
    ) -> EncodedChunk:
        """Encode one chunk; payloads go to ``spill``, found there by row number.

        A chunk is first tried whole, with C-level ``map`` calls and no per-row bytecode
        beyond a tight payload loop (three times cheaper). Any row that would be invalid makes
        that attempt give up, and the chunk is encoded again row by row, which is where every
        reason is worded: both paths give the same result for a chunk the fast one accepts.
        """
        self._plain_keys = None
        fast = self._encode_whole(rows, spill.size)
        if fast is not None:
            keys, hashes, payloads, ends = fast
            spill.write(payloads, ends, start)
            chunk = EncodedChunk(start, keys, hashes, None, [])
        else:
            chunk = self._encode_rows(rows, start, spill)
        if self._grouper is None:
            return chunk
        return self._split(chunk, self._plain_keys or chunk.keys)

    def _encode_whole(
        self, rows: Sequence[Sequence[Any]], offset: int
    ) -> tuple[list[str], list[int], bytearray, array[int]] | None:
        """(keys, hashes, payload bytes, end offsets) or None if any row is invalid."""
        keys = self._whole_keys(rows)
        if keys is None:
            return None
        payloads = self._whole_payloads(rows, self._fast_dumps)
        if payloads is None and self._fast_dumps is orjson.dumps:
            # A value orjson needs help with (Decimal, time): from now on pass the default
            # hook, a third slower, and try this chunk's payloads again.
            self._fast_dumps = self._dumps
            payloads = self._whole_payloads(rows, self._dumps)
        if payloads is None:
            return None
        blob, sizes, digests = payloads
        ends = array("q", accumulate(sizes, initial=offset))
        del ends[0]
        hashes = list(map(operator.sub, digests, repeat(_SIGN_SHIFT)))
        return keys, hashes, blob, ends

    def _whole_keys(self, rows: Sequence[Sequence[Any]]) -> list[str] | None:
        """Every row's normalised key, or None if any is null, empty or not convertible."""
        raw = list(map(operator.itemgetter(self._key_index), rows))
        if None in raw:
            return None
        try:
            if self._string_keys:
                try:
                    keys = list(map(str.strip, raw))
                except TypeError:  # not all text (integer ids): the general conversion
                    keys = list(map(self._key, raw))
                else:
                    _key_text("".join(keys))  # one C-level scan for what _key_text refuses
            else:
                keys = list(map(self._key, raw))
        except InvalidValue:
            return None
        if "" in keys:
            return None
        if self._hash_keys:
            self._plain_keys = keys if self._grouper is not None else None
            keys = [sha256(key.encode("utf-8")).hexdigest() for key in keys]
        return keys

    def _whole_payloads(
        self, rows: Sequence[Sequence[Any]], dumps: Callable[[Any], bytes]
    ) -> tuple[bytearray, list[int], list[int]] | None:
        """(payload bytes, sizes, digests) for every row, or None if any cannot be encoded."""
        blob = bytearray()
        keep = blob.extend
        sizes: list[int] = []
        digests: list[int] = []
        size_of, digest_of, digest = sizes.append, digests.append, xxh3_64_intdigest
        pick = self._pick
        try:
            values = map(pick, rows) if self._plain else self._converted_columns(rows)
            # Each payload is dropped as soon as it is copied: orjson's bytes carry spare
            # capacity, and holding a chunk's worth of them costs far more than encoding.
            for payload in map(dumps, values):
                keep(payload)
                size_of(len(payload))
                digest_of(digest(payload))
        except (InvalidValue, TypeError, orjson.JSONEncodeError):
            return None
        nulls = blob.count(b"null")  # one C-level scan; "null" cannot overlap itself
        if nulls and self._hidden_nulls(rows, nulls):
            return None
        return blob, sizes, digests

    def _hidden_nulls(self, rows: Sequence[Sequence[Any]], nulls: int) -> bool:
        """Whether orjson wrote a NaN or an infinity in these rows' payloads (as ``null``).

        Every null field is one ``null``; only when the payloads hold more (a NaN, a null in
        a list, "null" in some text) are the values looked at. Converted fields never hold
        NaN and are null exactly where the row is, so the rows' own values are counted,
        C-level, whole rows when the fields are exactly the row's columns."""
        fields = rows if self._fields_are_row else map(self._pick, rows)
        if nulls == operator.countOf(chain.from_iterable(fields), None):
            return False
        return _nonfinite(chain.from_iterable(map(self._pick, rows)))

    def _converted_columns(self, rows: Sequence[Sequence[Any]]) -> Iterator[tuple[Any, ...]]:
        """Each row's converted fields (as :meth:`_convert`), converted a column at a time."""
        columns = []
        for get, convert in self._columns:
            column = list(map(get, rows))
            columns.append(column if convert is None else convert(column))
        return zip(*columns, strict=True)

    def _convert(self, row: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(
            row[i] if conv is None or row[i] is None else conv(row[i])
            for _, i, conv in self._fields
        )

    def _encode_rows(
        self, rows: Sequence[Sequence[Any]], start: int, spill: PayloadSpill
    ) -> EncodedChunk:
        """Row by row, wording a reason for every row that cannot be sent. One flat loop
        with locals bound up front."""
        rownums: list[int] = []
        keys: list[str] = []
        ends = array("q")
        end_at = ends.append
        hashes: list[int] = []
        invalid: list[InvalidRow] = []
        spilled = bytearray()
        keep = spilled.extend
        offset = base = spill.size

        def refuse(row: InvalidRow) -> None:
            invalid.append(row)
            end_at(ends[-1] if ends else base)  # no payload: it ends where the last one did

        key_index, key_conv = self._key_index, self._key
        plain, pick, convert = self._plain, self._pick, self._convert
        string_keys, hash_keys = self._string_keys, self._hash_keys
        plains: list[str] | None = [] if hash_keys and self._grouper is not None else None
        self._plain_keys = plains
        dumps, digest, shift = self._dumps, xxh3_64_intdigest, _SIGN_SHIFT
        for rownum, row in enumerate(rows, start + 1):
            raw_key = row[key_index]
            if string_keys and type(raw_key) is str:
                key = raw_key.strip()
                if "\x00" in key or not key.isascii():
                    try:
                        _key_text(key)
                    except InvalidValue as exc:
                        refuse((rownum, None, f"row {rownum}: key {self.key_column}: {exc}"))
                        continue
            elif raw_key is None:
                refuse((rownum, None, f"row {rownum}: null key ({self.key_column})"))
                continue
            else:
                try:
                    key = key_conv(raw_key)
                except InvalidValue as exc:
                    refuse((rownum, None, f"row {rownum}: key {self.key_column}: {exc}"))
                    continue
            if not key:
                refuse((rownum, None, f"row {rownum}: empty key ({self.key_column})"))
                continue
            plain_key = key
            if hash_keys:
                key = sha256(key.encode("utf-8")).hexdigest()
            try:
                values = pick(row) if plain else convert(row)
                payload = dumps(values)
            except (InvalidValue, TypeError, orjson.JSONEncodeError):
                refuse((rownum, key, f"row {rownum}: {self._explain(row)}"))
                continue
            if (
                b"null" in payload
                and payload.count(b"null") != values.count(None)
                and _nonfinite(values)
            ):  # orjson wrote a NaN or an infinity as null (see _whole_payloads)
                refuse((rownum, key, f"row {rownum}: {self._explain(row)}"))
                continue
            keep(payload)
            rownums.append(rownum)
            keys.append(key)
            if plains is not None:
                plains.append(plain_key)
            hashes.append(digest(payload) - shift)
            offset += len(payload)
            end_at(offset)
        spill.write(spilled, ends, start)
        return EncodedChunk(start, keys, hashes, None if not invalid else rownums, invalid)

    def _explain(self, row: Sequence[Any]) -> str:
        """Find which field broke, and why (slow path, only for bad rows)."""
        for name, i, conv in self._fields:
            value = row[i]
            if value is None:
                continue
            try:
                converted = conv(value) if conv else value
                detail = _problem(converted)
                if detail is None:
                    orjson.dumps(converted, default=_auto)
            except InvalidValue as exc:
                detail = str(exc)
            except (TypeError, orjson.JSONEncodeError) as exc:
                detail = _refusal(exc)
            if detail is not None:
                return f"field {name}: {detail}"
        return "row cannot be encoded"
