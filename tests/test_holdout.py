"""Holdout assignment: pinned by fixed vectors, uniform, and applied to chunks as documented."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from syncer.holdout import (
    GLOBAL_HOLDOUT,
    HOLDOUT,
    TREATED,
    Assignment,
    Split,
    bucket,
)
from syncer.mapping import SyncDefinition
from syncer.normalize import PayloadSpill, RowEncoder

# Never change these values: a member's group must not move between releases.


def test_buckets_are_pinned_by_fixed_vectors() -> None:
    assert bucket("vip", 1, "a@example.com") == 7489
    assert bucket("vip", 1, "b@example.com") == 7378
    assert bucket("vip", 1, "42") == 1321
    assert bucket("winback", 3, "+14155550100") == 8608
    assert bucket("syncer-global", 1, "customer-0001") == 5279
    # The documented formula, spelled out once more.
    digest = hashlib.sha256(b"vip:1:a@example.com").hexdigest()
    assert int(digest[:15], 16) % 10_000 == 7489


def test_a_new_phase_or_salt_reshuffles_members() -> None:
    keys = [f"customer-{i}" for i in range(2000)]
    first = {k for k in keys if bucket("vip", 1, k) < 1000}
    second = {k for k in keys if bucket("vip", 2, k) < 1000}
    other = {k for k in keys if bucket("winback", 1, k) < 1000}
    assert first != second and first != other
    # Independent draws: the overlap of two 10% holdouts is about 1%.
    assert len(first & other) < 60


def test_buckets_are_uniform() -> None:
    keys = [f"id-{i}" for i in range(200_000)]
    buckets = [bucket("vip", 1, k) for k in keys]
    bins = Counter(b // 100 for b in buckets)
    assert chisquare([bins[i] for i in range(100)]).pvalue > 0.01
    share = sum(b < 500 for b in buckets) / len(buckets)
    assert abs(share - 0.05) < 0.003


def test_global_holdout_comes_first_and_the_sync_splits_the_rest() -> None:
    assigned = Assignment(Split("vip", 1, 10), Split("syncer-global", 1, 5))
    keys = [f"k{i}" for i in range(100_000)]
    groups = assigned.grouper()(keys)
    assert groups == [assigned.group(k) for k in keys]
    counts = Counter(groups)
    assert abs(counts[GLOBAL_HOLDOUT] / 100_000 - 0.05) < 0.004
    assert abs(counts[HOLDOUT] / 100_000 - 0.095) < 0.004  # 10% of the other 95%
    for key, group in zip(keys[:5000], groups[:5000], strict=True):
        if bucket("syncer-global", 1, key) < 500:
            assert group == GLOBAL_HOLDOUT


def _definition(hashed: bool = False) -> SyncDefinition:
    return SyncDefinition.model_validate(
        {
            "name": "vip",
            "source": {"query": "select 1", "key": "email", "key_type": "email"},
            "fields": {"name": "name"},
            "destination": {"connector": "webhook"},
        }
    )


@settings(max_examples=40, deadline=None)
@given(
    emails=st.lists(
        st.from_regex(r"[a-z]{1,8}@[a-z]{1,6}\.com", fullmatch=True), min_size=1, max_size=60
    ),
    bad=st.sets(st.integers(0, 59)),
    hashed=st.booleans(),
)
def test_chunks_split_by_group_keep_every_row_once(
    emails: list[str], bad: set[int], hashed: bool
) -> None:
    """Held-out rows leave the chunk with their group; the rest keep their row numbers."""
    rows = [(None if i in bad else e.upper(), f"n{i}") for i, e in enumerate(emails)]
    encoder = RowEncoder(_definition(), ["email", "name"], "vip.yaml", hash_keys=hashed)
    assigned = Assignment(Split("vip", 1, 30))
    encoder.hold_out(assigned.grouper())
    spill = PayloadSpill()
    try:
        chunk = encoder.encode_chunk(rows, 100, spill)
        spill.flush()
        numbers = list(chunk.row_numbers())
        # Every row is exactly one of: staged, held out, invalid.
        assert chunk.rows == len(rows)
        invalid = {n for n, _, _ in chunk.invalid}
        assert {n - 101 for n in invalid} == {i for i in bad if i < len(rows)}
        for number, key in zip(numbers, chunk.keys, strict=True):
            email = rows[number - 101][0]
            assert email is not None
            plain = email.lower()
            assert key == (hashlib.sha256(plain.encode()).hexdigest() if hashed else plain)
            assert assigned.group(plain) == TREATED  # grouped by the key before hashing
            assert spill.read(number)  # the payload is found by its row number
        for _key, group in chunk.held:
            assert group == HOLDOUT
        assert len(chunk.keys) + len(chunk.held) + len(invalid) == len(rows)
    finally:
        spill.close()


def test_two_syncs_starting_the_global_holdout_at_once_both_succeed(tmp_path: Path) -> None:
    """The daemon starts several syncs' first runs together: each records the global
    holdout's phase; the first row stays and neither run fails."""
    import datetime as dt

    import sqlalchemy as sa

    from syncer.holdout import GLOBAL, PhaseCheck, record_phases
    from syncer.state import state_engine

    engine = state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    split = Split("syncer-global", 1, 5)
    now = dt.datetime.now(dt.UTC)
    for run in ("run-a", "run-b"):
        with engine.begin() as conn:
            record_phases(conn, PhaseCheck(((GLOBAL, split),), 0), run, now)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT sync, phase, started_run FROM syncer_experiments")
        ).all()
    assert [tuple(r) for r in rows] == [(GLOBAL, 1, "run-a")]
