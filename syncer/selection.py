"""Choosing syncs on the command line, the way dbt chooses models.

A selector is one word:

- ``crm_contacts``: the sync of that name; ``crm_*`` (``*``, ``?``, ``[..]``): every name the
  glob matches;
- ``tag:nightly``: every sync whose mapping lists that tag (globs allowed here too);
- ``connector:hubspot``: every sync sending to that connector;
- ``tag:nightly,connector:hubspot``: commas intersect, so only syncs matching every part.

Several selectors add up (union, in the order given), and ``--exclude`` takes the same
selectors and removes what they match. A selector that matches nothing is a usage error
naming the nearest names, so a typo never runs less than was meant, and an exclusion that
matches nothing is one too, so a typo never runs more.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Protocol, TypeVar

from syncer.errors import ExitCode, SyncerError

#: Selector methods besides a bare name; ``name:`` spells the bare form out.
METHODS = ("name", "tag", "connector")
_GLOB = frozenset("*?[")
#: Most names a "no match" message lists when none is near.
_LISTED = 12


class SelectionError(SyncerError):
    """A selector that is malformed or matches nothing: a usage error (exit 2)."""

    exit_code = ExitCode.USAGE


class Selectable(Protocol):
    """What a selector looks at (syncer.mapping.MappingEntry has it)."""

    @property
    def name(self) -> str: ...
    @property
    def tags(self) -> tuple[str, ...]: ...
    @property
    def connector(self) -> str | None: ...


T = TypeVar("T", bound=Selectable)


@dataclass(frozen=True, slots=True)
class Part:
    method: str
    pattern: str

    def matches(self, item: Selectable) -> bool:
        if self.method == "name":
            return fnmatchcase(item.name, self.pattern)
        if self.method == "tag":
            return any(fnmatchcase(tag, self.pattern) for tag in item.tags)
        return item.connector is not None and fnmatchcase(item.connector, self.pattern)

    def __str__(self) -> str:
        return self.pattern if self.method == "name" else f"{self.method}:{self.pattern}"


@dataclass(frozen=True, slots=True)
class Selector:
    """One selector word: parts that must all match."""

    text: str
    parts: tuple[Part, ...]

    def matches(self, item: Selectable) -> bool:
        return all(part.matches(item) for part in self.parts)


def parse(words: Iterable[str]) -> list[Selector]:
    """Selectors from command-line words; a word may hold several separated by spaces
    (``--exclude "a b"``), as dbt allows."""
    return [parse_one(word) for text in words for word in text.split()]


def parse_one(word: str) -> Selector:
    parts = []
    for piece in word.split(","):
        if not piece:
            raise SelectionError(f"selector {word!r}: an empty part before or after a comma")
        method, colon, pattern = piece.partition(":")
        if not colon:
            method, pattern = "name", piece
        if method not in METHODS:
            raise SelectionError(
                f"selector {word!r}: unknown method {method + ':'!r}"
                f" (use a name, a glob, {', '.join(m + ':' for m in METHODS[1:])})"
            )
        if not pattern:
            raise SelectionError(f"selector {word!r}: nothing after {method + ':'!r}")
        parts.append(Part(method, pattern))
    return Selector(word, tuple(parts))


def select(
    items: Sequence[T],
    selectors: Sequence[str],
    exclude: Sequence[str] = (),
    *,
    everything: bool = False,
) -> list[T]:
    """The items the selectors choose (all of them with ``everything``), less the excluded,
    in the order the selectors name them (each once)."""
    chosen: list[T] = list(items) if everything else []
    seen = {id(item) for item in chosen}
    for selector in parse(selectors):
        matched = [item for item in items if selector.matches(item)]
        if not matched:
            raise SelectionError(no_match(selector, items))
        chosen.extend(item for item in matched if id(item) not in seen)
        seen.update(id(item) for item in matched)
    for selector in parse(exclude):
        if not any(selector.matches(item) for item in items):
            raise SelectionError(no_match(selector, items, "--exclude: no sync matches"))
        chosen = [item for item in chosen if not selector.matches(item)]
    if not chosen:
        raise SelectionError("every selected sync is excluded; nothing to do")
    return chosen


def no_match(selector: Selector, items: Sequence[Selectable], lead: str = "no sync matches") -> str:
    """``no sync matches 'crm_contcts'; did you mean: crm_contacts?``, or what there is."""
    message = f"{lead} {selector.text!r}"
    if not items:
        return message + " (the mappings directory has no syncs)"
    lonely = [part for part in selector.parts if not any(part.matches(i) for i in items)]
    if not lonely:
        return message + ": each part matches some sync, but no sync matches all of them"
    part = lonely[0]
    known = _known(part.method, items)
    prefix = "" if part.method == "name" else f"{part.method}:"
    close = near(part.pattern, known)
    if close:
        return message + f"; did you mean: {', '.join(prefix + n for n in close)}?"
    what = {"name": "syncs", "tag": "tags in use", "connector": "connectors in use"}[part.method]
    shown = ", ".join(known[:_LISTED]) or "none"
    more = f" and {len(known) - _LISTED} more" if len(known) > _LISTED else ""
    return message + f" ({what}: {shown}{more})"


def near(word: str, known: Iterable[str], n: int = 3) -> list[str]:
    """The known names closest to a mistyped ``word`` (the one spelling of "did you mean"
    that selectors, ``state`` and ``rejects`` share)."""
    return difflib.get_close_matches(word, sorted(set(known)), n=n, cutoff=0.6)


def _known(method: str, items: Sequence[Selectable]) -> list[str]:
    if method == "name":
        values: Iterable[str] = (i.name for i in items)
    elif method == "tag":
        values = (t for i in items for t in i.tags)
    else:
        values = (i.connector for i in items if i.connector is not None)
    return sorted(set(values))


def is_plain_name(word: str) -> bool:
    """Whether a selector names exactly one sync (no method, glob or comma)."""
    return not (set(word) & (_GLOB | {":", ",", " "}))
