"""Identifiers for ad platforms: normalised by each platform's own rules, then SHA-256 hashed.

Match rates live or die here: a phone with its ``+`` on Meta, a name with punctuation, or a
value hashed twice silently matches nobody. Every rule below cites the platform's published
rule (``../shared/reference/destinations.md``, sections 8-12); the table tests in
``tests/test_identifiers.py`` use the platforms' own examples.

* :func:`normalize` gives the text a platform hashes (or sends as is, for the kinds it takes
  unhashed, such as Google's country code or Meta's external id).
* :func:`identifier` normalises and hashes as the platform wants. A value that already is a
  SHA-256 hex digest is passed through (lowercased), never hashed twice; with
  ``prehashed=True`` anything else is refused.

Reasons never quote the value: it is personal data.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import unicodedata
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Literal, get_args

from syncer.errors import ConfigError
from syncer.normalize import InvalidValue, normalize_email, normalize_phone

Platform = Literal["meta", "google", "linkedin", "tiktok"]
Kind = Literal[
    "email",
    "phone",
    "first_name",
    "last_name",
    "country",
    "postcode",
    "city",
    "state",
    "date_of_birth",
    "gender",
    "maid",
    "external_id",
]
PLATFORMS: tuple[Platform, ...] = get_args(Platform)
KINDS: tuple[Kind, ...] = get_args(Kind)

#: What each platform accepts, and which of those it wants SHA-256 hashed.
SUPPORTED: dict[Platform, frozenset[Kind]] = {
    "meta": frozenset(KINDS),
    "google": frozenset(
        {"email", "phone", "first_name", "last_name", "country", "postcode", "maid", "external_id"}
    ),
    "linkedin": frozenset({"email", "first_name", "last_name", "country", "maid"}),
    "tiktok": frozenset({"email", "phone", "maid"}),
}
HASHED: dict[Platform, frozenset[Kind]] = {
    # EXTERN_ID and MADID go unhashed (Meta SDK normalize_key).
    "meta": frozenset(KINDS) - {"external_id", "maid"},
    # countryCode and postalCode travel in clear inside addressInfo; mobile_id and
    # third_party_user_id are sent as given.
    "google": frozenset({"email", "phone", "first_name", "last_name"}),
    # LinkedIn takes SHA256_EMAIL; names and country are plain profile hints.
    "linkedin": frozenset({"email"}),
    # TikTok: EMAIL_SHA256, PHONE_SHA256, and MAIDs as MAID_SHA256.
    "tiktok": frozenset({"email", "phone", "maid"}),
}

_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
# Meta's SDK strips these from both ends of every value before lowercasing.
_META_TRIM = " \t\r\n\0\x0b."
_NOT_DIGIT = re.compile(r"\D")
_US_ZIP = re.compile(r"^(\d{5})(?:-?\d{4})?$")
_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("jan", "january"),
            ("feb", "february"),
            ("mar", "march"),
            ("apr", "april"),
            ("may",),
            ("jun", "june"),
            ("jul", "july"),
            ("aug", "august"),
            ("sep", "sept", "september"),
            ("oct", "october"),
            ("nov", "november"),
            ("dec", "december"),
        ),
        start=1,
    )
    for name in names
}
_US_STATES = {
    "alabama": "al", "alaska": "ak", "arizona": "az", "arkansas": "ar", "california": "ca",
    "colorado": "co", "connecticut": "ct", "delaware": "de", "florida": "fl", "georgia": "ga",
    "hawaii": "hi", "idaho": "id", "illinois": "il", "indiana": "in", "iowa": "ia",
    "kansas": "ks", "kentucky": "ky", "louisiana": "la", "maine": "me", "maryland": "md",
    "massachusetts": "ma", "michigan": "mi", "minnesota": "mn", "mississippi": "ms",
    "missouri": "mo", "montana": "mt", "nebraska": "ne", "nevada": "nv", "newhampshire": "nh",
    "newjersey": "nj", "newmexico": "nm", "newyork": "ny", "northcarolina": "nc",
    "northdakota": "nd", "ohio": "oh", "oklahoma": "ok", "oregon": "or", "pennsylvania": "pa",
    "rhodeisland": "ri", "southcarolina": "sc", "southdakota": "sd", "tennessee": "tn",
    "texas": "tx", "utah": "ut", "vermont": "vt", "virginia": "va", "washington": "wa",
    "westvirginia": "wv", "wisconsin": "wi", "wyoming": "wy", "districtofcolumbia": "dc",
}  # fmt: skip


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def looks_hashed(value: Any) -> bool:
    """A SHA-256 hex digest (any case): such a value is passed through, never hashed again."""
    return isinstance(value, str) and _SHA256_HEX.match(value.strip()) is not None


def _text(value: Any) -> str:
    if value is None or isinstance(value, bool):
        raise InvalidValue("empty")
    if isinstance(value, float | list | dict):
        # str() would hash Python's spelling ("94035.0", "['a']"), which matches nobody.
        raise InvalidValue("not text or a whole number; cast it to text in the query")
    return str(value)


def _letters(text: str) -> str:
    """Lowercase letters only (Unicode letters kept, as Meta's 'UTF-8 special characters
    allowed'): punctuation, digits and spaces go."""
    folded = unicodedata.normalize("NFC", text).lower()
    return "".join(ch for ch in folded if ch.isalpha())


def _email(platform: Platform, value: Any, *, gmail_dots: bool = False) -> str:
    text = _text(value).strip(_META_TRIM if platform == "meta" else None)
    email = normalize_email(text)
    local, _, domain = email.partition("@")
    if platform == "tiktok" and "+" in local:
        # TikTok: remove "+" and everything after it up to "@".
        local = local.split("+", 1)[0]
    if gmail_dots and domain in ("gmail.com", "googlemail.com"):
        local = local.replace(".", "")
    if not local:
        raise InvalidValue("not a valid email address")
    stripped = f"{local}@{domain}"
    # What is left after a tag or dots went must still be an address ("0.+@gmail.com"
    # leaves "0.@gmail.com", which is not): else it could never be normalised again.
    return stripped if stripped == email else normalize_email(stripped)


def _phone(platform: Platform, value: Any, region: str | None) -> str:
    text = _text(value).strip()
    e164 = None
    if text.isdigit() and not text.startswith("0"):
        # Meta/TikTok form (country code, digits only, no "+"): read it as E.164 first, or a
        # default region would take a foreign number for a national one ("4681234567" under
        # DE became "+494681234567") and normalising twice would change it.
        try:
            e164 = normalize_phone(f"+{text}", None)
        except InvalidValue:
            e164 = None
    if e164 is None:
        e164 = normalize_phone(text, region)  # "+" and country code, no leading zeros
    # Google wants E.164 with "+"; Meta and TikTok the same digits without it.
    return e164 if platform == "google" else e164[1:]


def _country(platform: Platform, value: Any) -> str:
    code = _letters(_text(value))
    if len(code) != 2 or not code.isascii():  # "ßa" would upper-case to "SSA"
        raise InvalidValue("not an ISO 3166-1 alpha-2 country code")
    # Meta hashes the lowercase code; Google and LinkedIn take it in clear as "US".
    return code if platform == "meta" else code.upper()


def _postcode(platform: Platform, value: Any) -> str:
    text = _text(value).strip()
    if platform != "meta":
        return text  # Google: postalCode in clear, as the user wrote it
    compact = re.sub(r"[\s]", "", text).lower()
    us = _US_ZIP.match(compact)
    # Meta ZIP: US codes keep the first 5 digits only; others lowercase without spaces.
    return us.group(1) if us else compact


def date_parts(value: Any) -> tuple[str, str, str]:
    """(YYYY, MM, DD) of a date of birth given as a date, an ISO string or 'DD Month YYYY'."""
    if isinstance(value, dt.datetime):
        value = value.date()
    if isinstance(value, dt.date):
        return f"{value.year:04d}", f"{value.month:02d}", f"{value.day:02d}"
    text = _text(value).strip().lower()
    try:
        day = dt.date.fromisoformat(text[:10])
        return f"{day.year:04d}", f"{day.month:02d}", f"{day.day:02d}"
    except ValueError:
        pass
    words = re.split(r"[\s,/.-]+", text)
    months = [w for w in words if w in _MONTHS]
    numbers = [w for w in words if w.isdigit()]
    if len(months) == 1 and len(numbers) == 2:
        year = next((n for n in numbers if len(n) == 4), None)
        day_text = next((n for n in numbers if len(n) <= 2), None)
        if year and day_text:
            try:
                parsed = dt.date(int(year), _MONTHS[months[0]], int(day_text))
            except ValueError:
                raise InvalidValue("not a valid date of birth") from None
            return date_parts(parsed)
    raise InvalidValue("not a valid date of birth")


def normalize(
    platform: Platform,
    kind: Kind,
    value: Any,
    *,
    region: str | None = None,
    gmail_dots: bool = False,
) -> str:
    """The text ``platform`` expects for ``kind`` before hashing (or in clear, where it does
    not hash that kind). Raises :class:`InvalidValue` (message names no value)."""
    if kind not in SUPPORTED[platform]:
        raise InvalidValue(f"{platform} does not take {kind}")
    if kind == "email":
        return _email(platform, value, gmail_dots=gmail_dots)
    if kind == "phone":
        return _phone(platform, value, region)
    if kind in ("first_name", "last_name"):
        text = _text(value)
        # Meta: letters only; Google and LinkedIn: trimmed, lowercased (Google) or as written.
        if platform == "meta":
            out = _letters(text)
        elif platform == "google":
            out = " ".join(text.split()).lower()
        else:
            out = " ".join(text.split())
        if not out:
            raise InvalidValue(f"not a valid {kind.replace('_', ' ')}")
        return out
    if kind == "country":
        return _country(platform, value)
    if kind == "postcode":
        out = _postcode(platform, value)
        if not out:
            raise InvalidValue("not a valid postcode")
        return out
    if kind == "city":
        out = _letters(_text(value))  # Meta CT: no spaces, no punctuation
        if not out:
            raise InvalidValue("not a valid city")
        return out
    if kind == "state":
        letters = _letters(_text(value))
        out = _US_STATES.get(letters, letters)  # Meta ST: 2-letter code for US states
        if not out:
            raise InvalidValue("not a valid state")
        return out
    if kind == "date_of_birth":
        return "".join(date_parts(value))  # YYYYMMDD; Meta splits it into DOBY/DOBM/DOBD
    if kind == "gender":
        first = _letters(_text(value))[:1]
        if first not in ("m", "f"):
            raise InvalidValue("not a gender Meta accepts (m or f)")
        return first
    if kind == "maid":
        out = _text(value).strip()
        # Meta (MADID), TikTok (hashed) and LinkedIn (GOOGLE_AID: Android ids are lower
        # case) want one consistent case; Google's mobile_id may be an IDFA, so it is sent
        # as the user keeps it.
        if platform != "google":
            out = out.lower()
        if not out:
            raise InvalidValue("not a valid mobile advertiser id")
        return out
    out = _text(value).strip()  # external_id: sent as the user keeps it
    if not out:
        raise InvalidValue("not a valid external id")
    return out


def identifier(
    platform: Platform,
    kind: Kind,
    value: Any,
    *,
    region: str | None = None,
    prehashed: bool = False,
    gmail_dots: bool = False,
) -> str:
    """What to send for ``kind``: normalised and SHA-256 hashed where ``platform`` hashes it.

    A SHA-256 hex digest passes through (lowercased), so a warehouse that hashes upstream
    never gets its values hashed twice. ``prehashed=True`` declares the column hashed:
    anything that is not a digest is then refused rather than hashed.
    """
    hashed_kind = kind in HASHED[platform]
    if hashed_kind and looks_hashed(value):
        return str(value).strip().lower()
    if prehashed:
        if not hashed_kind:
            return normalize(platform, kind, value, region=region, gmail_dots=gmail_dots)
        raise InvalidValue(f"{kind} is declared pre-hashed but is not a SHA-256 hex digest")
    text = normalize(platform, kind, value, region=region, gmail_dots=gmail_dots)
    return sha256_hex(text) if hashed_kind else text


# -- what ad connectors share: mapped kinds, a record's identifiers, the ids kept for removal --


def check_mapped_kinds(
    platform: Platform, field_names: Iterable[str], matched_on: Collection[Kind]
) -> None:
    """A mapping's ``fields:`` keys are identifier kinds: refuse one the platform does not
    take (naming it) and a mapping with none of the kinds members are matched on."""
    names = list(field_names)
    supported = SUPPORTED[platform]
    for name in names:
        if name not in supported:
            raise ConfigError(
                f"{platform}: fields.{name}: not an identifier {platform} takes"
                f" (use {', '.join(sorted(supported))})"
            )
    if not set(names) & set(matched_on):
        *first, last = matched_on
        either = f"{', '.join(first)} or {last}" if first else last
        raise ConfigError(
            f"{platform}: fields: map {either}: at least one of {', '.join(matched_on)}"
            " is needed to match members"
        )


def record_identifiers(
    platform: Platform,
    fields: Mapping[str, Any],
    kinds: Iterable[Kind],
    *,
    region: str | None = None,
    prehashed: Collection[str] = (),
) -> dict[str, str]:
    """Kind -> what to send, for the ``kinds`` a record carries (blank values skipped).
    A bad value raises :class:`InvalidValue` naming the kind, never the value."""
    found: dict[str, str] = {}
    for kind in kinds:
        value = fields.get(kind)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        try:
            found[kind] = identifier(
                platform, kind, value, region=region, prehashed=kind in prehashed
            )
        except InvalidValue as exc:
            raise InvalidValue(f"{kind}: {exc}") from None
    return found


def kept_ids(*id_sets: Mapping[str, str]) -> str:
    """The ``destination_id`` that lets a later run remove the member: the id sets it may be
    known by (hashes, or ids the platform takes in clear), as compact JSON.

    One set is the usual case: the ids the platform acknowledged. Several are kept while a
    send is unconfirmed (the engine stores ``expected_destination_id`` before the request
    leaves): an update whose answer never arrived leaves the member under its old ids or its
    new ones, and removing it must take both off. Empty and repeated sets are dropped.
    """
    sets: list[dict[str, str]] = []
    for ids in id_sets:
        one = dict(sorted(ids.items()))
        if one and one not in sets:
            sets.append(one)
    if len(sets) == 1:
        return json.dumps(sets[0], separators=(",", ":"))
    return json.dumps(sets, separators=(",", ":"))


def read_kept_id_sets(destination_id: str | None, kinds: Collection[str]) -> list[dict[str, str]]:
    """Every id set :func:`kept_ids` stored, restricted to ``kinds``; empty if none or
    unreadable."""
    if not destination_id:
        return []
    try:
        data = json.loads(destination_id)
    except ValueError:
        return []
    found = []
    for item in data if isinstance(data, list) else [data]:
        if isinstance(item, dict):
            ids = {str(k): v for k, v in item.items() if k in kinds and isinstance(v, str) and v}
            if ids and ids not in found:
                found.append(ids)
    return found


def prehashed_kinds(platform: Platform, kinds: list[Kind]) -> list[Kind]:
    """A ``prehashed`` setting's kinds, if ``platform`` takes each of them hashed; a
    ValueError naming the others (for a pydantic validator)."""
    wrong = [k for k in kinds if k not in HASHED[platform]]
    if wrong:
        hashed = ", ".join(sorted(HASHED[platform]))
        raise ValueError(
            f"{platform} takes only {hashed} hashed, not {', '.join(wrong)}:"
            " those cannot be prehashed"
        )
    return kinds


def expected_kept_ids(
    destination_id: str | None, kinds: Collection[str], ids: Callable[[], Mapping[str, str]]
) -> str | None:
    """``expected_destination_id`` of a connector that keeps id sets: the ids a send adds
    (``ids()``, which raises InvalidValue for a record refused before sending) beside those
    already kept. If the answer never arrives, the member is under one or the other, and a
    removal takes off both. None when nothing new can land."""
    try:
        current = ids()
    except InvalidValue:
        return None
    kept = read_kept_id_sets(destination_id, kinds)
    return kept_ids(*kept, current) if current else None


def stale_id_sets(
    destination_id: str | None, kinds: Collection[str], current: Mapping[str, str]
) -> list[dict[str, str]]:
    """The ids kept for a member that ``current`` does not have any more: what an update (or
    a re-add after an unconfirmed send) must take off before it adds ``current``."""
    stale = []
    for ids in read_kept_id_sets(destination_id, kinds):
        gone = {k: v for k, v in ids.items() if current.get(k) != v}
        if gone and gone not in stale:
            stale.append(gone)
    return stale
