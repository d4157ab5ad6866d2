"""The reject policy: what the destination (or the normaliser) keeps refusing, and parking.

Each run writes one ``syncer_rejects`` row per member it saw refused (rejected by the
destination, or an invalid row with a key): how many runs in a row refused the same payload,
when first and last, and why. A sync's ``rejects`` policy (``park_after_runs``,
``park_after_days``) parks a member once it is past either: the diff then leaves it out of
the sends (syncer.diff, ``kind = 'parked'``) while its payload hash is the one refused, so a
bounced address stops being sent, counted as rejected and failing the run every time. A
member whose source row changes is tried again (unparked, and counted from one again); one
that is accepted, or leaves the segment, loses its row. Unset, nothing is parked and every
refused member is retried on every run, as before; the rows are kept all the same, so
``syncer rejects`` shows how long each has been refused.

Keys are kept as given, like ``syncer_records``' (and unlike the audit log's, hashed by
default): the rows are matched against the staged snapshot in SQL, and ``syncer rejects``
masks them when it prints them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from sqlalchemy import Connection, func, select, text

from syncer.diff import CHANGES, STAGE, Staging, same_reason_sql, strip_row
from syncer.mapping import RejectPolicy
from syncer.state import CONFIRMED, as_utc, rejects_table, runs_table

_CHUNK = 500
_COLUMNS = (
    "hash",
    "operation",
    "outcome",
    "reason",
    "attempts",
    "first_at",
    "last_at",
    "first_run_id",
    "last_run_id",
    "parked_at",
)


class Refusal(NamedTuple):
    """One member refused in a run: its key (as staged), payload hash (None for a removal
    or an invalid row), operation (``validate`` for an invalid row), outcome (``rejected``
    or ``invalid``) and reason."""

    key: str
    hash: int | None
    operation: str
    outcome: str
    reason: str | None


def parks(policy: RejectPolicy, attempts: int, first_at: dt.datetime, now: dt.datetime) -> bool:
    """Whether a member refused on ``attempts`` runs since ``first_at`` is parked now."""
    if policy.park_after_runs is not None and attempts >= policy.park_after_runs:
        return True
    days = policy.park_after_days
    return days is not None and now - first_at >= dt.timedelta(days=days)


def _same(old: Any, new: Refusal) -> bool:
    """The same refusal as last time: same payload (or, for an invalid row, the same
    reason but for its row number), so its runs keep counting."""
    if (old.outcome, old.operation, old.hash) != (new.outcome, new.operation, new.hash):
        return False
    return new.outcome != "invalid" or strip_row(old.reason) == strip_row(new.reason)


def record(
    conn: Connection,
    sync: str,
    run_id: str,
    policy: RejectPolicy,
    refusals: Iterable[Refusal],
    now: dt.datetime,
) -> None:
    """Count this run's refusals in ``syncer_rejects``, parking those past the policy (in
    the caller's transaction, beside the audit events that report them)."""
    by_key = {r.key: r for r in refusals}
    keys = list(by_key)
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        existing = {
            row.key: row
            for row in conn.execute(
                select(rejects_table).where(
                    rejects_table.c.sync == sync, rejects_table.c.key.in_(chunk)
                )
            )
        }
        rows = [
            _next_row(existing.get(key), by_key[key], sync, run_id, policy, now) for key in chunk
        ]
        _upsert(conn, rows)


def _next_row(
    old: Any, new: Refusal, sync: str, run_id: str, policy: RejectPolicy, now: dt.datetime
) -> dict[str, Any]:
    if old is not None and _same(old, new):
        # Counted once per run, however many of its rows (duplicates) refer to the member.
        attempts = old.attempts + (old.last_run_id != run_id)
        first_at, first_run = as_utc(old.first_at), old.first_run_id
        parked_at = old.parked_at
    else:  # a first refusal, or a new payload: judged afresh
        attempts, first_at, first_run, parked_at = 1, now, run_id, None
    # Judged by the policy as it is now: one since loosened or removed unparks a member
    # refused again (a full resync, or a sync with no policy, sends parked members).
    if not parks(policy, attempts, first_at, now):
        parked_at = None
    elif parked_at is None:
        parked_at = now
    return {
        "sync": sync,
        "key": new.key,
        "hash": new.hash,
        "operation": new.operation,
        "outcome": new.outcome,
        "reason": new.reason,
        "attempts": attempts,
        "first_at": first_at,
        "last_at": now,
        "first_run_id": first_run,
        "last_run_id": run_id,
        "parked_at": parked_at,
    }


def _upsert(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    from sqlalchemy.dialects import postgresql, sqlite  # postgres's only when it is used

    dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(rejects_table)
    stmt = stmt.on_conflict_do_update(
        index_elements=["sync", "key"], set_={c: stmt.excluded[c] for c in _COLUMNS}
    )
    conn.execute(stmt, list(rows))


def has_rows(conn: Connection, sync: str) -> bool:
    """Whether ``sync`` has any ``syncer_rejects`` row (one probe of its primary key)."""
    found = conn.execute(
        text("SELECT 1 FROM syncer_rejects WHERE sync = :sync LIMIT 1"), {"sync": sync}
    )
    return found.first() is not None


def unpark_changed(conn: Connection, staging: Staging) -> None:
    """Parked members whose source row changed are tried again: their ``parked_at`` is
    cleared (their count starts over if the new payload is refused too). Run after the
    diff, before anything is sent; ``plan`` does not write, and leaves them as they are."""
    wanted = ", ".join(f"'{k}'" for k in staging.sent_kinds())
    changed = (
        f"EXISTS (SELECT 1 FROM {CHANGES} c WHERE c.key = syncer_rejects.key"
        f" AND c.kind IN ({wanted})"
        " AND (syncer_rejects.hash IS NULL OR c.hash <> syncer_rejects.hash))"
    )
    same = same_reason_sql("s.reason", "syncer_rejects.reason", staging.dialect)
    reworded = (
        f"EXISTS (SELECT 1 FROM {STAGE} s WHERE s.key = syncer_rejects.key"
        f" AND s.hash IS NULL AND NOT ({same}))"
    )
    conn.execute(
        text(
            "UPDATE syncer_rejects SET parked_at = NULL"
            " WHERE sync = :sync AND parked_at IS NOT NULL AND operation <> 'remove'"
            f" AND ({changed} OR (outcome = 'invalid' AND {reworded}))"
        ),
        {"sync": staging.sync},
    )


def reconcile(conn: Connection, staging: Staging) -> None:
    """After a run sent its changes: forget members no longer refused. An add or update
    (or an invalid row) whose member left the segment, or which the destination now holds
    exactly as the snapshot has it (accepted, or put right some other way); a removal whose
    member came back or is no longer synced."""
    params = {"sync": staging.sync}
    if staging.unchanged:  # the snapshot equals state: nothing is refused any more
        conn.execute(text("DELETE FROM syncer_rejects WHERE sync = :sync"), params)
        return
    in_snapshot = f"EXISTS (SELECT 1 FROM {STAGE} s WHERE s.key = syncer_rejects.key)"
    synced = (
        "EXISTS (SELECT 1 FROM syncer_records r WHERE r.sync = :sync"
        " AND r.key = syncer_rejects.key)"
    )
    held = (
        f"EXISTS (SELECT 1 FROM {STAGE} s JOIN syncer_records r"
        " ON r.sync = :sync AND r.key = s.key"
        f" WHERE s.key = syncer_rejects.key AND r.unsure = {CONFIRMED} AND r.hash = s.hash)"
    )
    conn.execute(
        text(
            "DELETE FROM syncer_rejects WHERE sync = :sync AND ("
            f" (operation <> 'remove' AND (NOT {in_snapshot} OR {held}))"
            f" OR (operation = 'remove' AND ({in_snapshot} OR NOT {synced})))"
        ),
        params,
    )


def parked_message(parked: int, sync: str) -> str:
    """The run's message when it left parked members out."""
    noun = "record" if parked == 1 else "records"
    return (
        f"{parked} parked {noun} not sent (refused on earlier runs; tried again when the"
        f" source row changes): see `syncer rejects {sync}`"
    )


# -- reading: `syncer rejects` -----------------------------------------------------------------


def listing(
    conn: Connection, sync: str | None, parked_only: bool, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """Up to ``limit`` rows (``sync``'s only, when given; parked ones only, if asked),
    parked first, then the most recently refused; and how many match in all."""
    where = []
    if sync is not None:
        where.append(rejects_table.c.sync == sync)
    if parked_only:
        where.append(rejects_table.c.parked_at.is_not(None))
    total = conn.execute(select(func.count()).select_from(rejects_table).where(*where)).scalar()
    rows = conn.execute(
        select(rejects_table)
        .where(*where)
        .order_by(
            rejects_table.c.sync,
            rejects_table.c.parked_at.is_(None),
            rejects_table.c.last_at.desc(),
            rejects_table.c.key,
        )
        .limit(limit)
    ).all()
    return [dict(row._mapping) for row in rows], int(total or 0)


def synced_names(conn: Connection) -> set[str]:
    """Syncs the state database knows of: those with runs or refused records."""
    names = set(conn.execute(select(rejects_table.c.sync).distinct()).scalars())
    return names | set(conn.execute(select(runs_table.c.sync).distinct()).scalars())
