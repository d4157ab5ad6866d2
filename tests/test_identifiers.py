"""Ad-platform identifiers: each platform's published normalisation examples, hashing,
pre-hashed pass-through, and the properties that keep match rates (idempotence).

The tables follow ../shared/reference/destinations.md sections 8-12 (Meta SDK
``normalize_key`` and Meta's customer-file guide, Google Customer Match, LinkedIn DMP
segments, TikTok "supported IDs and formats").
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import phonenumbers
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from syncer.identifiers import (
    HASHED,
    KINDS,
    PLATFORMS,
    SUPPORTED,
    Kind,
    Platform,
    date_parts,
    identifier,
    looks_hashed,
    normalize,
    sha256_hex,
)
from syncer.normalize import InvalidValue

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TEST_GMAIL = "87924606b4131a8aceeeae8868531fbb9712aaa07a5d3a756b26ce0f5d6ca674"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- the platforms' published examples ----------------------------------------------------------

Example = tuple[str, Any, str | None, str]

# (kind, raw value, region, the text Meta hashes or sends)
META: list[Example] = [
    ("email", "  John_Smith@Gmail.com  ", None, "john_smith@gmail.com"),
    ("email", "test@gmail.com.", None, "test@gmail.com"),  # SDK trims "." at the ends
    ("email", "\tJane.Doe@Example.COM\n", None, "jane.doe@example.com"),  # no gmail-dot rule
    ("phone", "+1 (616) 954-7888", None, "16169547888"),  # digits only, country code
    ("phone", "+1 657-777-0000", None, "16577770000"),
    ("phone", "(650) 253-0000", "US", "16502530000"),  # region supplies the country code
    ("phone", "07911 123456", "GB", "447911123456"),  # leading zero dropped
    ("phone", "16169547888", None, "16169547888"),  # already in Meta's form
    ("phone", "4681234567", "DE", "4681234567"),  # a foreign number stays foreign
    ("first_name", "Mary", None, "mary"),
    ("first_name", "  Mary-Ann ", None, "maryann"),  # punctuation and spaces go
    ("first_name", "Valéry", None, "valéry"),  # UTF-8 letters kept
    ("last_name", "O'Brien", None, "obrien"),
    ("last_name", "Peña", None, "peña"),
    ("country", "US", None, "us"),
    ("country", " gb ", None, "gb"),
    ("postcode", "94035-1234", None, "94035"),  # US ZIP: first 5 digits
    ("postcode", "940351234", None, "94035"),
    ("postcode", "94035", None, "94035"),
    ("postcode", "SW1A 1AA", None, "sw1a1aa"),  # lowercase, no spaces
    ("city", "Menlo Park", None, "menlopark"),
    ("city", "St. Louis", None, "stlouis"),
    ("state", "California", None, "ca"),  # US states to their 2-letter code
    ("state", "CA", None, "ca"),
    ("state", "New York", None, "ny"),
    ("state", "Ontario", None, "ontario"),
    ("date_of_birth", "1997-02-16", None, "19970216"),
    ("date_of_birth", dt.date(1997, 2, 16), None, "19970216"),
    ("date_of_birth", "16 February 1997", None, "19970216"),
    ("date_of_birth", "Feb 6, 1997", None, "19970206"),
    ("gender", "Female", None, "f"),
    ("gender", "M", None, "m"),
    (
        "maid",
        " 6D92078A-8246-4BA4-AE5B-76104861E7DC ",
        None,
        "6d92078a-8246-4ba4-ae5b-76104861e7dc",
    ),
    ("external_id", " CRM-00042 ", None, "CRM-00042"),
]

GOOGLE: list[Example] = [
    ("email", "  Jane.Doe@Gmail.com ", None, "jane.doe@gmail.com"),  # dots kept by default
    ("email", "TEST@gmail.com", None, "test@gmail.com"),
    ("phone", "+1 (616) 954-7888", None, "+16169547888"),  # E.164 with "+"
    ("phone", "(650) 253-0000", "US", "+16502530000"),
    ("phone", "07911 123456", "GB", "+447911123456"),
    ("phone", "447911123456", None, "+447911123456"),
    ("first_name", "  Jane ", None, "jane"),  # trim, lowercase
    ("first_name", "Mary Ann", None, "mary ann"),
    ("last_name", "DOE", None, "doe"),
    ("country", "us", None, "US"),  # countryCode in clear
    ("postcode", " 94045 ", None, "94045"),  # postalCode in clear
    ("maid", " 6D92078A-8246-4BA4-AE5B-76104861E7DC", None, "6D92078A-8246-4BA4-AE5B-76104861E7DC"),
    ("external_id", "user-7", None, "user-7"),
]

LINKEDIN: list[Example] = [
    ("email", " Ada@Example.com ", None, "ada@example.com"),
    ("first_name", " Ada ", None, "Ada"),  # plain profile hint, as written
    ("last_name", "Lovelace  Byron", None, "Lovelace Byron"),
    ("country", "gb", None, "GB"),
    ("maid", "38400000-8CF0-11BD-B23E-10B96E40000D", None, "38400000-8cf0-11bd-b23e-10b96e40000d"),
]

TIKTOK: list[Example] = [
    ("email", "John.Doe+promo@Example.com", None, "john.doe@example.com"),  # "+tag" removed
    ("email", "a.b.c@gmail.com", None, "a.b.c@gmail.com"),  # dots kept (Segment's bug)
    ("phone", "+1 657-777-0000", None, "16577770000"),  # TikTok's own example
    ("phone", "(657) 777-0000", "US", "16577770000"),  # country code added even for the US
    ("phone", "+44 (0)7911 123456", None, "447911123456"),
    ("maid", "6D92078A-8246-4BA4-AE5B-76104861E7DC", None, "6d92078a-8246-4ba4-ae5b-76104861e7dc"),
]

TABLES: list[tuple[Platform, list[Example]]] = [
    ("meta", META),
    ("google", GOOGLE),
    ("linkedin", LINKEDIN),
    ("tiktok", TIKTOK),
]
EXAMPLES = [
    pytest.param(platform, kind, raw, region, want, id=f"{platform}-{kind}-{i}")
    for platform, table in TABLES
    for i, (kind, raw, region, want) in enumerate(table)
]


@pytest.mark.parametrize(("platform", "kind", "raw", "region", "want"), EXAMPLES)
def test_published_examples(
    platform: Platform, kind: Kind, raw: Any, region: str | None, want: str
) -> None:
    assert normalize(platform, kind, raw, region=region) == want
    sent = identifier(platform, kind, raw, region=region)
    assert sent == (sha(want) if kind in HASHED[platform] else want)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_known_digest_of_test_at_gmail(platform: Platform) -> None:
    assert sha256_hex("test@gmail.com") == TEST_GMAIL
    assert identifier(platform, "email", "  Test@Gmail.com ") == TEST_GMAIL


def test_gmail_dots_only_on_request() -> None:
    assert normalize("google", "email", "Jane.Doe@Gmail.com") == "jane.doe@gmail.com"
    assert normalize("google", "email", "J.a.n.e@googlemail.com", gmail_dots=True) == (
        "jane@googlemail.com"
    )
    assert normalize("google", "email", "jane.doe@example.com", gmail_dots=True) == (
        "jane.doe@example.com"
    )


def test_meta_names_keep_unicode_letters_not_digits() -> None:
    with pytest.raises(InvalidValue):
        normalize("meta", "first_name", "1234 !")
    assert normalize("google", "first_name", "1234 !") == "1234 !"  # Google: trim, lower
    assert normalize("meta", "first_name", "Zoë 2nd") == "zoënd"
    assert normalize("meta", "last_name", "Müller-Lüdenscheidt") == "müllerlüdenscheidt"


def test_which_kinds_each_platform_hashes() -> None:
    assert {"external_id", "maid"}.isdisjoint(HASHED["meta"])
    assert HASHED["google"] == {"email", "phone", "first_name", "last_name"}
    assert HASHED["linkedin"] == {"email"}
    assert HASHED["tiktok"] == {"email", "phone", "maid"}
    for platform in PLATFORMS:
        assert HASHED[platform] <= SUPPORTED[platform]
    # Clear-text kinds go out as normalised, never hashed.
    assert identifier("google", "country", "us") == "US"
    assert identifier("google", "postcode", "94045") == "94045"
    assert identifier("meta", "external_id", " abc ") == "abc"


def test_date_parts_for_meta_dob_keys() -> None:
    assert date_parts("1997-02-16") == ("1997", "02", "16")
    assert date_parts(dt.datetime(2001, 12, 3, 10, 30)) == ("2001", "12", "03")
    assert date_parts("3 March 1980") == ("1980", "03", "03")
    assert date_parts("19970216") == ("1997", "02", "16")


# -- pre-hashed values --------------------------------------------------------------------------

DIGEST = sha("jane@example.com")


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize(
    "digest", [DIGEST, DIGEST.upper(), f"  {DIGEST[:30].upper()}{DIGEST[30:]} "]
)
def test_a_digest_passes_through_lowercased_never_hashed_twice(
    platform: Platform, digest: str
) -> None:
    assert identifier(platform, "email", digest) == DIGEST
    assert identifier(platform, "email", digest, prehashed=True) == DIGEST
    assert identifier(platform, "email", DIGEST) != sha(DIGEST)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_prehashed_refuses_what_is_not_a_digest(platform: Platform) -> None:
    for value in ("jane@example.com", DIGEST[:63], DIGEST + "0", "g" * 64):
        with pytest.raises(InvalidValue, match="pre-hashed") as info:
            identifier(platform, "email", value, prehashed=True)
        assert value not in str(info.value)


def test_prehashed_clear_text_kinds_are_normalised_not_refused() -> None:
    assert identifier("meta", "external_id", " id-1 ", prehashed=True) == "id-1"
    assert identifier("google", "country", "us", prehashed=True) == "US"


def test_looks_hashed() -> None:
    assert looks_hashed(DIGEST) and looks_hashed(DIGEST.upper()) and looks_hashed(f" {DIGEST}\n")
    assert not looks_hashed(DIGEST[:-1]) and not looks_hashed("z" * 64)
    assert not looks_hashed(None) and not looks_hashed(int("1" * 64))


# -- refusals -----------------------------------------------------------------------------------

UNSUPPORTED = [(p, k) for p in PLATFORMS for k in KINDS if k not in SUPPORTED[p]]


@pytest.mark.parametrize(("platform", "kind"), UNSUPPORTED)
def test_unsupported_kinds_are_refused(platform: Platform, kind: Kind) -> None:
    with pytest.raises(InvalidValue, match=f"{platform} does not take {kind}"):
        normalize(platform, kind, "x")
    with pytest.raises(InvalidValue):
        identifier(platform, kind, "x")
    with pytest.raises(InvalidValue):
        identifier(platform, kind, DIGEST, prehashed=True)


BAD = [
    ("email", "not-an-email"),
    ("email", "+tag@example.com"),
    ("phone", "12"),
    ("phone", "call me"),
    ("first_name", "  \t "),
    ("country", "United States"),
    ("country", "ßa"),
    ("postcode", "   "),
    ("city", "--"),
    ("state", "??"),
    ("date_of_birth", "02/16/1997"),  # day/month order is ambiguous
    ("date_of_birth", "31 February 1997"),
    ("gender", "unknown"),
    ("maid", " "),
    ("external_id", ""),
    ("email", None),
    ("phone", True),
    # A float or a JSON value has no identifier text: str() would send Python's spelling.
    ("external_id", 12345.0),
    ("postcode", 94035.0),
    ("phone", 447911123456.0),
    ("maid", ["6d92078a-8246-4ba4-ae5b-76104861e7dc"]),
    ("external_id", {"id": 7}),
]


@pytest.mark.parametrize(("kind", "value"), BAD)
def test_bad_values_are_refused_without_quoting_them(kind: Kind, value: Any) -> None:
    for platform in PLATFORMS:
        if kind not in SUPPORTED[platform]:
            continue
        if kind == "email" and value == "+tag@example.com" and platform != "tiktok":
            continue  # only TikTok strips the "+tag", leaving nothing
        with pytest.raises(InvalidValue) as info:
            identifier(platform, kind, value)
        if isinstance(value, str) and value.strip():
            assert value.strip() not in str(info.value)


# -- properties ---------------------------------------------------------------------------------

_local = st.from_regex(r"[A-Za-z0-9_%+-]{1,12}(\.[A-Za-z0-9_%+-]{1,6}){0,2}", fullmatch=True)
_domain = st.from_regex(r"([a-z0-9]{1,8}\.){1,2}(com|io|co|de|org)", fullmatch=True)
emails = st.one_of(
    st.builds(
        lambda local, domain, pad, upper: (
            pad + (f"{local}@{domain}".upper() if upper else f"{local}@{domain}") + pad
        ),
        _local,
        st.one_of(_domain, st.sampled_from(["gmail.com", "googlemail.com", "GMail.com"])),
        st.sampled_from(["", " ", "\t", "."]),
        st.booleans(),
    ),
    st.emails(),
)

_REGIONS = ["US", "GB", "DE", "FR", "IN", "BR", "JP", "AU", "SE", "ZA"]
_TYPES = [phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE]
_FORMATS = [
    phonenumbers.PhoneNumberFormat.E164,
    phonenumbers.PhoneNumberFormat.INTERNATIONAL,
    phonenumbers.PhoneNumberFormat.NATIONAL,
    phonenumbers.PhoneNumberFormat.RFC3966,
]


@st.composite
def phones(draw: st.DrawFn) -> tuple[str, str | None]:
    """(written phone, default region): valid numbers of several countries, in every
    format, sometimes with the country code stripped of its "+" (Meta's own form)."""
    home = draw(st.sampled_from(_REGIONS))
    example = phonenumbers.example_number_for_type(home, draw(st.sampled_from(_TYPES)))
    assert example is not None
    fmt = draw(st.sampled_from(_FORMATS))
    text = phonenumbers.format_number(example, fmt)
    if draw(st.booleans()) and fmt == phonenumbers.PhoneNumberFormat.E164:
        text = text[1:]
    region = home if fmt == phonenumbers.PhoneNumberFormat.NATIONAL else None
    region = draw(st.sampled_from([region, home, *_REGIONS])) if region is None else region
    return text, region


names = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        ["  Mary-Ann ", "O'Brien", "Zoë", "İlkay", "\u0391\u03a31\u0392", "Straße", "José Luis"]
    ),
)
dates = st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2030, 12, 31)).flatmap(
    lambda d: st.sampled_from(
        [
            d,
            d.isoformat(),
            f"{d.isoformat()}T08:15:00",
            f"{d.day} {d.strftime('%B')} {d.year}",
            f"{d.day}-{d.strftime('%b').upper()}-{d.year}",
            d.strftime("%b %d, %Y"),
            d.strftime("%Y%m%d"),
        ]
    )
)
postcodes = st.one_of(
    st.from_regex(r"\s?\d{5}(-?\d{4})?\s?", fullmatch=True),
    st.from_regex(r"[A-Za-z]{1,2}\d[A-Za-z\d]? ?\d[A-Za-z]{2}", fullmatch=True),
    st.text(max_size=12),
)
anything = st.one_of(st.text(max_size=30), st.integers(), st.none(), st.booleans())

VALUES: dict[Kind, st.SearchStrategy[Any]] = {
    "email": st.one_of(emails, anything),
    "first_name": names,
    "last_name": names,
    "country": st.one_of(st.from_regex(r"\s?[A-Za-z]{2}\.?\s?", fullmatch=True), anything),
    "postcode": postcodes,
    "city": st.one_of(names, st.sampled_from(["Menlo Park", "St. Louis", "Saint-Étienne"])),
    "state": st.one_of(names, st.sampled_from(["California", "new york", "TX", "Ontario"])),
    "date_of_birth": st.one_of(dates, anything),
    "gender": st.one_of(st.sampled_from(["Male", "female", " F ", "m", "x"]), anything),
    "maid": st.one_of(st.uuids().map(lambda u: str(u).upper()), anything),
    "external_id": anything,
}
PAIRS = [(p, k) for p in PLATFORMS for k in KINDS if k in SUPPORTED[p]]


@st.composite
def cases(draw: st.DrawFn) -> tuple[Platform, Kind, Any, str | None]:
    platform, kind = draw(st.sampled_from(PAIRS))
    if kind == "phone":
        text, region = draw(st.one_of(phones(), st.tuples(anything, st.none())))
        return platform, kind, text, region
    return platform, kind, draw(VALUES[kind]), draw(st.sampled_from([None, "US", "GB"]))


@FAST
@given(cases())
@example(("meta", "phone", "+46 8 123 4567", "DE"))  # was read back as a German number
@example(("google", "country", "ßa", None))  # was upper-cased to "SSA"
@example(("tiktok", "email", "0.+@gmail.com", None))  # left "0.@gmail.com", not an address
def test_normalising_twice_changes_nothing(case: tuple[Platform, Kind, Any, str | None]) -> None:
    platform, kind, value, region = case
    try:
        once = normalize(platform, kind, value, region=region)
    except InvalidValue:
        assume(False)
        return
    assert normalize(platform, kind, once, region=region) == once


@FAST
@given(cases(), st.booleans())
def test_identifier_is_idempotent(
    case: tuple[Platform, Kind, Any, str | None], gmail_dots: bool
) -> None:
    platform, kind, value, region = case
    try:
        once = identifier(platform, kind, value, region=region, gmail_dots=gmail_dots)
    except InvalidValue:
        assume(False)
        return
    assert identifier(platform, kind, once, region=region, gmail_dots=gmail_dots) == once
    if kind in HASHED[platform]:
        assert looks_hashed(once) and once == once.lower()
        # Declaring the column pre-hashed accepts what we send.
        assert identifier(platform, kind, once, prehashed=True) == once


@FAST
@given(phones())
def test_every_valid_phone_normalises_on_every_platform(case: tuple[str, str | None]) -> None:
    text, region = case
    google = normalize("google", "phone", text, region=region)
    assert google.startswith("+") and google[1:].isdigit()
    for platform in ("meta", "tiktok"):
        assert normalize(platform, "phone", text, region=region) == google[1:]
    # Meta/TikTok digits read back to the same number under any default region.
    for other in _REGIONS:
        assert normalize("google", "phone", google[1:], region=other) == google


@FAST
@given(emails)
def test_emails_hash_the_normalised_text(raw: str) -> None:
    for platform in PLATFORMS:
        try:
            text = normalize(platform, "email", raw)
        except InvalidValue:
            continue
        assert text == text.strip() and text == text.lower()
        assert identifier(platform, "email", raw) == sha(text)


def test_whole_numbers_are_identifier_text() -> None:
    """An integer column (an id, a phone kept as a number) is its digits; only a float or a
    JSON value, whose str() is Python's own spelling, is refused."""
    assert identifier("meta", "external_id", 42) == "42"
    assert identifier("google", "phone", 447911123456) == sha("+447911123456")
    assert identifier("meta", "postcode", 94035) == sha("94035")
