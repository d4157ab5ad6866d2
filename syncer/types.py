"""JSON-shaped type aliases for the public API: what a vendor answers, what a request
sends, what a record's fields hold."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeAlias

#: A JSON value as ``json.loads`` returns it. Narrow with ``isinstance`` before use (or read
#: nested objects with :func:`syncer.rest.dig`): a vendor's answer is never trusted to have
#: the shape its documentation shows.
JSON: TypeAlias = dict[str, "JSON"] | list["JSON"] | str | int | float | bool | None

#: A request body: a JSON object or array. Values json cannot write (dates, decimals) are
#: sent as their ``str()``.
JSONBody: TypeAlias = Mapping[str, object] | Sequence[object]

#: Query parameters: None values are left out.
QueryParams: TypeAlias = Mapping[str, str | int | float | bool | None]

#: A mapped field's value in a :class:`~syncer.connector.Record`: what the warehouse gave,
#: normalised to JSON types (text, numbers, booleans, None; dates as ISO text).
FieldValue: TypeAlias = object
