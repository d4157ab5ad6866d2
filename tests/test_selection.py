"""Selectors (syncer.selection): what each form chooses, and the messages when nothing is."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from syncer.errors import ExitCode
from syncer.selection import SelectionError, is_plain_name, parse, select


@dataclass(frozen=True)
class Item:
    name: str
    tags: tuple[str, ...] = ()
    connector: str | None = None


ITEMS = [
    Item("crm_contacts", ("nightly", "crm"), "hubspot"),
    Item("crm_leads", ("crm",), "hubspot"),
    Item("newsletter", ("nightly",), "file"),
    Item("vip_export", (), "file"),
]


def names(*selectors: str, exclude: tuple[str, ...] = (), everything: bool = False) -> list[str]:
    return [i.name for i in select(ITEMS, selectors, exclude, everything=everything)]


def refusal(*selectors: str, exclude: tuple[str, ...] = (), everything: bool = False) -> str:
    with pytest.raises(SelectionError) as caught:
        select(ITEMS, selectors, exclude, everything=everything)
    assert caught.value.exit_code == ExitCode.USAGE
    return str(caught.value)


def test_a_name_chooses_that_sync_only() -> None:
    assert names("crm_leads") == ["crm_leads"]
    assert names("name:crm_leads") == ["crm_leads"]


def test_a_glob_chooses_every_name_it_matches() -> None:
    assert names("crm_*") == ["crm_contacts", "crm_leads"]
    assert names("*_*s") == ["crm_contacts", "crm_leads"]
    assert names("?ewsletter") == ["newsletter"]


def test_tag_and_connector_choose_by_what_the_mapping_declares() -> None:
    assert names("tag:nightly") == ["crm_contacts", "newsletter"]
    assert names("connector:hubspot") == ["crm_contacts", "crm_leads"]
    assert names("connector:file") == ["newsletter", "vip_export"]


def test_several_selectors_add_up_in_the_order_given_each_sync_once() -> None:
    chosen = names("vip_export", "tag:crm", "crm_leads")
    assert chosen == ["vip_export", "crm_contacts", "crm_leads"]
    assert names("newsletter crm_leads") == ["newsletter", "crm_leads"]  # one quoted word


def test_commas_intersect() -> None:
    assert names("tag:nightly,connector:file") == ["newsletter"]
    assert names("crm_*,tag:nightly") == ["crm_contacts"]


def test_exclude_takes_the_same_selectors() -> None:
    assert names(everything=True, exclude=("tag:crm",)) == ["newsletter", "vip_export"]
    assert names("tag:nightly", exclude=("connector:hubspot",)) == ["newsletter"]
    assert names(everything=True, exclude=("crm_* vip_export",)) == ["newsletter"]


def test_all_chooses_everything_in_directory_order() -> None:
    assert names(everything=True) == [i.name for i in ITEMS]


def test_a_misspelled_name_suggests_the_nearest() -> None:
    message = refusal("crm_contcts")
    assert message == "no sync matches 'crm_contcts'; did you mean: crm_contacts?"


def test_a_misspelled_tag_or_connector_suggests_the_nearest_of_its_kind() -> None:
    assert "did you mean: tag:nightly?" in refusal("tag:nigthly")
    assert "did you mean: connector:hubspot?" in refusal("connector:hubspt")


def test_nothing_near_lists_what_there_is() -> None:
    assert refusal("zzz") == (
        "no sync matches 'zzz' (syncs: crm_contacts, crm_leads, newsletter, vip_export)"
    )
    assert refusal("tag:weekly") == "no sync matches 'tag:weekly' (tags in use: crm, nightly)"


def test_one_selector_matching_nothing_refuses_the_whole_command() -> None:
    """`sync now newsletter newsleter` must not quietly run one of the two."""
    assert "'newsleter'" in refusal("newsletter", "newsleter")


def test_an_intersection_matching_nothing_says_so() -> None:
    message = refusal("tag:crm,connector:file")
    assert "each part matches some sync, but no sync matches all of them" in message


def test_an_exclusion_matching_nothing_is_refused_too() -> None:
    """A typo in --exclude would run more than meant."""
    message = refusal(everything=True, exclude=("vip_exprot",))
    assert message == "--exclude: no sync matches 'vip_exprot'; did you mean: vip_export?"


def test_excluding_everything_leaves_nothing_to_do() -> None:
    assert "nothing to do" in refusal("tag:crm", exclude=("connector:hubspot",))


@pytest.mark.parametrize(
    ("word", "problem"),
    [
        ("owner:me", "unknown method 'owner:'"),
        ("tag:", "nothing after 'tag:'"),
        ("crm_leads,", "an empty part before or after a comma"),
    ],
)
def test_malformed_selectors_are_usage_errors(word: str, problem: str) -> None:
    assert problem in refusal(word)


def test_an_empty_directory_says_it_has_no_syncs() -> None:
    with pytest.raises(SelectionError, match="has no syncs"):
        select([], ["anything"])


def test_parse_splits_words_and_plain_names_are_recognised() -> None:
    assert [s.text for s in parse(["a b", "c"])] == ["a", "b", "c"]
    assert is_plain_name("crm_leads") and is_plain_name("v1.2-x")
    assert not any(map(is_plain_name, ["crm_*", "tag:x", "a,b", "x?", "[ab]"]))
