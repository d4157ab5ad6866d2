"""Holdout groups: who of a segment is held back from the destination, decided by a hash.

A member's group is a pure function of (salt, phase, normalised key), so every run, every
replica and every re-entry gives the same answer, and anyone can recompute it:

    bucket = int(sha256(f"{salt}:{phase}:{key}".encode()).hexdigest()[:15], 16) % 10000
    held out when bucket < holdout_percent * 100

The global holdout (``SYNCER_GLOBAL_HOLDOUT_PERCENT``) is decided first, with its own salt
and phase; the sync's own holdout splits the rest. Held-out members are never sent but are
recorded (syncer.membership), and every report counts them by the group they were assigned
(intention to treat). The split of a phase is frozen: ``check_phase`` refuses a changed
percent or salt under the same phase number, because moving the line mid-test moves members
who were already treated into the holdout and biases the comparison.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from hashlib import sha256
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from syncer.errors import ConfigError
from syncer.state import experiments_table

if TYPE_CHECKING:
    from syncer.mapping import LoadedSync
    from syncer.settings import Settings

BUCKETS = 10_000
TREATED = "treated"
HOLDOUT = "holdout"
GLOBAL_HOLDOUT = "global_holdout"
GROUPS = (TREATED, HOLDOUT, GLOBAL_HOLDOUT)
#: The experiments row of the global holdout (no sync name can hold ``*``).
GLOBAL = "*global*"
DEFAULT_GLOBAL_SALT = "syncer-global"


def bucket(salt: str, phase: int, key: str) -> int:
    """The member's bucket, 0 to 9,999 (see the module docstring; pinned by test vectors)."""
    digest = sha256(f"{salt}:{phase}:{key}".encode()).hexdigest()
    return int(digest[:15], 16) % BUCKETS


def threshold(percent: float) -> int:
    """Buckets below this are held out: ``percent`` of 10,000 (0.01% steps)."""
    return round(percent * 100)


@dataclass(frozen=True, slots=True)
class Split:
    """One frozen holdout split: its salt, phase and percent."""

    salt: str
    phase: int
    percent: float

    @property
    def cut(self) -> int:
        return threshold(self.percent)

    def holds(self, key: str) -> bool:
        return bucket(self.salt, self.phase, key) < self.cut


@dataclass(frozen=True, slots=True)
class Assignment:
    """The splits a run applies, global first; ``None`` where there is none."""

    sync: Split | None = None
    global_: Split | None = None

    @property
    def active(self) -> bool:
        return self.sync is not None or self.global_ is not None

    @property
    def phase(self) -> int:
        """The sync's phase (0: no experiment of its own)."""
        return self.sync.phase if self.sync is not None else 0

    def group(self, key: str) -> str:
        """The group of one normalised key."""
        if self.global_ is not None and self.global_.holds(key):
            return GLOBAL_HOLDOUT
        if self.sync is not None and self.sync.holds(key):
            return HOLDOUT
        return TREATED

    def grouper(self) -> Callable[[Sequence[str]], list[str]]:
        """A function from a chunk's keys to their groups, with the splits bound as locals."""
        glob, own = self.global_, self.sync
        g_prefix = f"{glob.salt}:{glob.phase}:" if glob else ""
        g_cut = glob.cut if glob else 0
        s_prefix = f"{own.salt}:{own.phase}:" if own else ""
        s_cut = own.cut if own else 0

        def groups(keys: Sequence[str]) -> list[str]:
            out = []
            for key in keys:
                if glob is not None and (
                    int(sha256((g_prefix + key).encode()).hexdigest()[:15], 16) % BUCKETS < g_cut
                ):
                    out.append(GLOBAL_HOLDOUT)
                elif own is not None and (
                    int(sha256((s_prefix + key).encode()).hexdigest()[:15], 16) % BUCKETS < s_cut
                ):
                    out.append(HOLDOUT)
                else:
                    out.append(TREATED)
            return out

        return groups


def assignment(sync: LoadedSync, settings: Settings) -> Assignment:
    """The splits ``sync`` runs with, from its ``experiment:`` block and the settings."""
    experiment = sync.definition.experiment
    own = None
    if experiment is not None:
        own = Split(
            experiment.salt or sync.definition.name, experiment.phase, experiment.holdout_percent
        )
    glob = None
    if settings.global_holdout_percent:
        glob = Split(
            settings.global_holdout_salt,
            settings.global_holdout_phase,
            settings.global_holdout_percent,
        )
    return Assignment(own, glob)


@dataclass(frozen=True, slots=True)
class PhaseCheck:
    """What a run's splits mean against the phases recorded so far."""

    #: Splits to record as started by this run: (experiments row name, split).
    starts: tuple[tuple[str, Split], ...]
    #: The phase of the sync's last recorded experiment (0: none yet).
    last_phase: int


def check_phase(conn: Connection, sync: LoadedSync, assigned: Assignment) -> PhaseCheck:
    """Refuse a split that changed under the same phase, or a phase that went backwards
    (ConfigError, exit 78, naming the file and field); say which phases this run starts."""
    name = sync.definition.name
    origin = str(sync.path)
    starts: list[tuple[str, Split]] = []
    last_phase = 0
    for row_name, split, where in (
        (name, assigned.sync, f"{origin}: experiment"),
        (GLOBAL, assigned.global_, "SYNCER_GLOBAL_HOLDOUT_PERCENT"),
    ):
        rows = conn.execute(
            select(
                experiments_table.c.phase,
                experiments_table.c.holdout_percent,
                experiments_table.c.salt,
            )
            .where(experiments_table.c.sync == row_name)
            .order_by(experiments_table.c.phase.desc())
        ).all()
        latest = rows[0] if rows else None
        if row_name == name:
            last_phase = int(latest.phase) if latest is not None else 0
        if split is None:
            continue
        if latest is None or split.phase > latest.phase:
            starts.append((row_name, split))
            continue
        if split.phase < latest.phase:
            field = "experiment.phase" if row_name == name else "SYNCER_GLOBAL_HOLDOUT_PHASE"
            raise ConfigError(
                f"{where}: {field} went back from {latest.phase} to {split.phase}; phases only"
                f" move forward (set {latest.phase + 1} to start a new comparison)"
            )
        changed = []
        if threshold(float(latest.holdout_percent)) != split.cut:
            changed.append(
                f"holdout percent {float(latest.holdout_percent):g} -> {split.percent:g}"
            )
        if latest.salt != split.salt:
            changed.append("salt")
        if changed:
            field = "experiment.phase" if row_name == name else "SYNCER_GLOBAL_HOLDOUT_PHASE"
            raise ConfigError(
                f"{where}: {' and '.join(changed)} changed within phase {split.phase}:"
                " changing the split mid-test moves members who were already treated into"
                " the holdout (or back) and biases the result; bump"
                f" {field} to {split.phase + 1} to start a new comparison"
            )
    return PhaseCheck(tuple(starts), last_phase)


def record_phases(
    conn: Connection, check: PhaseCheck, run_id: str | None, now: dt.datetime
) -> None:
    """Record the phases this run started (in the caller's transaction). The global
    holdout's row may be written by several syncs' first runs at once: the first one wins
    and the others keep it (their next run checks their split against it)."""
    for row_name, split in check.starts:
        values = {
            "sync": row_name,
            "phase": split.phase,
            "holdout_percent": split.percent,
            "salt": split.salt,
            "started_at": now,
            "started_run": run_id,
        }
        insert: Any
        if conn.dialect.name == "postgresql":
            insert = postgresql_insert(experiments_table).values(**values)
        else:
            insert = sqlite_insert(experiments_table).values(**values)
        conn.execute(insert.on_conflict_do_nothing())


def require_valid_percent(value: float) -> float:
    """0.1 to 50, in steps of 0.01 (a bucket is 0.01%)."""
    if not 0.1 <= value <= 50:
        raise ValueError("holdout percent must be between 0.1 and 50")
    if abs(value * 100 - round(value * 100)) > 1e-9:
        raise ValueError("holdout percent must be a multiple of 0.01 (a bucket is 0.01%)")
    return value


__all__ = [
    "BUCKETS",
    "GLOBAL_HOLDOUT",
    "GROUPS",
    "HOLDOUT",
    "TREATED",
    "Assignment",
    "PhaseCheck",
    "Split",
    "assignment",
    "bucket",
    "check_phase",
    "record_phases",
]
