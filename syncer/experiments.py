"""A run's holdout and history steps, as the engine takes them.

``prepare`` (before staging) works out the splits the run applies and whether its phase is
new, refusing a split changed mid-phase (syncer.holdout); staging then keeps held-out
members apart (syncer.diff); ``record`` (after the guards) writes the phase and the
membership history (syncer.membership) in one commit; ``preview`` is what ``plan`` shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from syncer import holdout, membership
from syncer.diff import HELD, Staging
from syncer.errors import ConfigError
from syncer.mapping import LoadedSync
from syncer.settings import Settings
from syncer.state import utcnow, writing


@dataclass(frozen=True, slots=True)
class Prepared:
    """What a run needs to know about its groups before staging."""

    assignment: holdout.Assignment
    phases: holdout.PhaseCheck
    #: The sync's open stays are of another phase: close them all and open them again.
    new_phase: bool
    #: Stage even a snapshot equal to state (the history must see every member).
    full_check: bool


def prepare(conn: Connection, sync: LoadedSync, settings: Settings) -> Prepared:
    assigned = holdout.assignment(sync, settings)
    phases = holdout.check_phase(conn, sync, assigned)
    name = sync.definition.name
    current = membership.open_phase(conn, name)
    new_phase = current is not None and current != assigned.phase
    starting = any(row == name for row, _ in phases.starts)
    if new_phase and assigned.phase and not starting:
        raise ConfigError(
            f"{sync.path}: experiment.phase {assigned.phase} has ended (the sync ran without"
            f" it since); set {phases.last_phase + 1} to start a new comparison"
        )
    # Nobody in yet but members acknowledged: the history begins (a sync from before it),
    # and must see every member even if the snapshot equals state.
    full_check = new_phase or (current is None and _has_records(conn, name))
    return Prepared(assigned, phases, new_phase, full_check)


def _has_records(conn: Connection, sync: str) -> bool:
    """One probe of the state's primary key."""
    row = conn.execute(
        text("SELECT 1 FROM syncer_records WHERE sync = :sync LIMIT 1"), {"sync": sync}
    ).first()
    return row is not None


def record(
    conn: Connection, staging: Staging, prepared: Prepared, run_id: str, plain_keys: bool
) -> membership.HistoryCounts:
    """The phases this run starts and the history it saw, in one commit."""
    now = utcnow()
    with writing(conn) as tx:
        holdout.record_phases(tx, prepared.phases, run_id, now)
        return membership.update(
            tx,
            staging,
            phase=prepared.assignment.phase,
            run_id=run_id,
            now=now,
            plain_keys=plain_keys,
            new_phase=prepared.new_phase,
        )


def preview(
    conn: Connection, staging: Staging, prepared: Prepared, sync: LoadedSync
) -> dict[str, Any] | None:
    """The plan's view of the holdout: members held out by group, and how many of them the
    destination holds now (a removing mode removes them)."""
    assigned = prepared.assignment
    if not assigned.active:
        return None
    by_group: dict[str, int] = dict(
        conn.execute(text(f"SELECT grp, COUNT(*) FROM {HELD} GROUP BY grp")).all()
    )
    newly = conn.execute(
        text(
            f"SELECT COUNT(*) FROM {HELD} h JOIN syncer_records r"
            " ON r.sync = :sync AND r.key = h.key"
        ),
        {"sync": staging.sync},
    ).scalar_one()
    own, glob = assigned.sync, assigned.global_
    return {
        "phase": assigned.phase,
        "holdout_percent": own.percent if own else 0,
        "salt": own.salt if own else None,
        "starts": any(row == sync.definition.name for row, _ in prepared.phases.starts),
        "holdout": int(by_group.get(holdout.HOLDOUT, 0)),
        "global_holdout_percent": glob.percent if glob else 0,
        "global_holdout": int(by_group.get(holdout.GLOBAL_HOLDOUT, 0)),
        "newly_held_out": int(newly),
    }


__all__ = ["Prepared", "prepare", "preview", "record"]
