"""Retention ages (``90d``, ``12h``, ``2w``), parsed apart from the database code so that
settings and the command line can check one without importing SQLAlchemy."""

from __future__ import annotations

import datetime as dt
import re

#: The accepted forms, as said in every message about an age that is not one.
AGE_FORMS = "a whole number and a unit: h (hours), d (days) or w (weeks), e.g. 90d, 12h, 2w"

_AGE = re.compile(r"^\s*(\d{1,6})\s*([hdw])\s*$", re.IGNORECASE)
_UNIT = {"h": dt.timedelta(hours=1), "d": dt.timedelta(days=1), "w": dt.timedelta(weeks=1)}


class AgeError(ValueError):
    """A retention age that is not ``<n>h``, ``<n>d`` or ``<n>w``."""


def parse_age(text: str) -> dt.timedelta:
    """``90d`` -> 90 days. Minutes and months are refused on purpose: ``6m`` read either way
    by someone would delete either far too much or far too little."""
    match = _AGE.match(text or "")
    if match is None:
        raise AgeError(f"{text!r} is not a duration: use {AGE_FORMS}")
    n = int(match.group(1))
    if n == 0:
        raise AgeError(f"{text!r} would delete everything: use at least 1h ({AGE_FORMS})")
    return n * _UNIT[match.group(2).lower()]
