"""Membership history: who entered and left each sync's segment, when, in which group.

One row per stay in ``syncer_membership``: opened by the run that first saw the member (in
their group and the sync's phase), closed by the run that saw them leave. It is written from
the staging tables the run already has (the snapshot and its held-out members), by set
differences inside the state database: the segment is not read again, and a run whose
snapshot equals state (nothing staged, see syncer.unchanged) only looks at its held-out rows.

A new phase closes every open stay and opens the members again in their new group, so a
phase is compared alone. Held-out members have history like everyone else: the lift report
counts members by the group they were assigned (intention to treat). Invalid rows are in no
group: a member whose row cannot be sent leaves the history until it can.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from syncer.diff import HELD, STAGE, Staging
from syncer.holdout import GLOBAL_HOLDOUT, HOLDOUT, TREATED

#: The SQLite function that stores a key the way the audit log does (SHA-256 hex).
_SHA = "syncer_sha256"


@dataclass(slots=True)
class HistoryCounts:
    """How many members this run saw enter and leave the segment."""

    entered: int = 0
    exited: int = 0


def open_phase(conn: Connection, sync: str) -> int | None:
    """The phase of the sync's open stays (None when nobody is in)."""
    row = conn.execute(
        text(
            "SELECT phase FROM syncer_membership WHERE sync = :sync AND exited_at IS NULL LIMIT 1"
        ),
        {"sync": sync},
    ).first()
    return None if row is None else int(row[0])


def update(
    conn: Connection,
    staging: Staging,
    *,
    phase: int,
    run_id: str,
    now: dt.datetime,
    plain_keys: bool,
    new_phase: bool,
) -> HistoryCounts:
    """Bring the sync's history up to this run's snapshot, in the caller's transaction."""
    sync = staging.sync
    dialect = conn.dialect.name
    params = {"sync": sync, "phase": phase, "run": run_id, "now": now}
    counts = HistoryCounts()
    close = (
        "UPDATE syncer_membership SET exited_at = :now, exited_run = :run"
        " WHERE sync = :sync AND exited_at IS NULL"
    )
    if new_phase:
        counts.exited += conn.execute(text(close), params).rowcount or 0
    key_sql = _audit_key_sql(conn, plain_keys)
    insert = (
        "INSERT INTO syncer_membership (sync, member_key, key, phase, grp, entered_at,"
        f" entered_run) SELECT CAST(:sync AS TEXT), n.member_key, {key_sql},"
        " CAST(:phase AS INTEGER), n.grp, :now, CAST(:run AS TEXT)"
    )
    treated = f"'{TREATED}'"
    # Named, not ``<> treated``: two seeks in the open-stays index instead of a scan of it.
    held_groups = f"('{HOLDOUT}', '{GLOBAL_HOLDOUT}')"
    open_treated = (
        "SELECT member_key FROM syncer_membership WHERE sync = :sync"
        f" AND grp = {treated} AND exited_at IS NULL"
    )
    open_held = (
        "SELECT member_key, grp FROM syncer_membership WHERE sync = :sync"
        f" AND grp IN {held_groups} AND exited_at IS NULL"
    )
    # With no open treated stay (a first run, a new phase) every valid key enters and
    # nobody leaves: no merge with the history at all.
    anyone_in = not new_phase and _any_open_treated(conn, sync)
    if not anyone_in:
        counts.entered += (
            conn.execute(
                text(
                    f"{insert} FROM (SELECT DISTINCT key AS member_key, {treated} AS grp"
                    f" FROM {STAGE} WHERE hash IS NOT NULL) n"
                ),
                params,
            ).rowcount
            or 0
        )
    elif not staging.unchanged:
        # The snapshot's valid keys against the open treated stays: on SQLite EXCEPT merges
        # the two key-ordered indexes (see syncer.diff), elsewhere anti-joins.
        staged = f"SELECT key AS member_key FROM {STAGE} WHERE hash IS NOT NULL"
        if dialect == "sqlite":
            gone = f"{open_treated} EXCEPT {staged}"
            came = f"{staged} EXCEPT {open_treated}"
        else:
            gone = (
                f"{open_treated} AND NOT EXISTS (SELECT 1 FROM {STAGE} s"
                " WHERE s.key = syncer_membership.member_key AND s.hash IS NOT NULL)"
            )
            came = (
                f"SELECT DISTINCT s.key AS member_key FROM {STAGE} s WHERE s.hash IS NOT NULL"
                " AND NOT EXISTS (SELECT 1 FROM syncer_membership m WHERE m.sync = :sync"
                f" AND m.grp = {treated} AND m.exited_at IS NULL AND m.member_key = s.key)"
            )
        counts.exited += (
            conn.execute(
                text(
                    f"{close} AND grp = {treated} AND member_key IN (SELECT member_key"
                    f" FROM ({gone}) AS g)"
                ),
                params,
            ).rowcount
            or 0
        )
        counts.entered += (
            conn.execute(
                text(f"{insert} FROM (SELECT member_key, {treated} AS grp FROM ({came}) AS c) n"),
                params,
            ).rowcount
            or 0
        )
    # Held-out members (a few percent of the segment): by key and group, every run.
    held = f"SELECT DISTINCT key AS member_key, grp FROM {HELD}"
    counts.exited += (
        conn.execute(
            text(
                f"{close} AND grp IN {held_groups} AND NOT EXISTS (SELECT 1 FROM {HELD} h"
                " WHERE h.key = syncer_membership.member_key AND h.grp = syncer_membership.grp)"
            ),
            params,
        ).rowcount
        or 0
    )
    counts.entered += (
        conn.execute(
            text(
                f"{insert} FROM ({held}) n WHERE NOT EXISTS (SELECT 1 FROM ({open_held}) o"
                " WHERE o.member_key = n.member_key AND o.grp = n.grp)"
            ),
            params,
        ).rowcount
        or 0
    )
    return counts


def _any_open_treated(conn: Connection, sync: str) -> bool:
    row = conn.execute(
        text(
            "SELECT 1 FROM syncer_membership WHERE sync = :sync AND grp = :grp"
            " AND exited_at IS NULL LIMIT 1"
        ),
        {"sync": sync, "grp": TREATED},
    ).first()
    return row is not None


def _audit_key_sql(conn: Connection, plain: bool) -> str:
    """SQL for ``n.member_key`` as the audit log stores keys (see ``ledger.audit_key``)."""
    if plain:
        return "n.member_key"
    if conn.dialect.name == "postgresql":
        return "encode(sha256(convert_to(n.member_key, 'UTF8')), 'hex')"
    raw: Any = conn.connection.driver_connection
    raw.create_function(_SHA, 1, _sha256, deterministic=True)
    return f"{_SHA}(n.member_key)"


def _sha256(value: str | None) -> str | None:
    return None if value is None else hashlib.sha256(value.encode()).hexdigest()


__all__ = ["HistoryCounts", "open_phase", "update"]
