"""The words a run's state is written in: its status and its sync's mode.

Both are ``StrEnum`` so they are the very strings the state database, ``--json`` output,
metrics labels and mapping files already use: a member equals, hashes, formats and serialises
as its value. Its ``repr`` is the value's too, so messages that quote one read as before.
"""

from __future__ import annotations

import enum


class _Word(enum.StrEnum):
    def __repr__(self) -> str:
        return repr(self.value)


class RunStatus(_Word):
    """How a run ended (``syncer_runs.status``); ``running`` while it is under way."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    SUBMITTED = "submitted"  # every change sent; some await a vendor job
    PARTIAL = "partial"  # some records rejected, invalid or failed
    FAILED = "failed"
    BLOCKED = "blocked"  # a guard stopped it (empty source, mass removal)
    WAITING = "waiting"  # an earlier run's vendor job still runs: nothing sent
    INTERRUPTED = "interrupted"  # stopped by a signal, a lost lease, or its process died
    LOCKED = "locked"  # another process holds the sync's lease: not started


class SyncMode(_Word):
    """What a sync keeps in step (``mode:`` in a mapping file)."""

    MEMBERSHIP = "membership"  # members added and removed; fields not sent after the add
    UPSERT = "upsert"  # added and updated, never removed
    MIRROR = "mirror"  # added, updated and removed
    UPDATE_ONLY = "update_only"  # existing members updated only
