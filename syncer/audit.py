"""Reading the audit log: ``syncer runs`` and ``syncer run show``.

Read-only and apart from the engine: listing runs needs the state database and nothing else
(no connector, no limiter, no HTTP client).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select

from syncer.settings import Settings
from syncer.state import (
    events_table,
    jobs_table,
    reading,
    runs_table,
    state_engine,
    state_errors,
)


def runs(settings: Settings, sync: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """The latest ``limit`` runs, newest first (only ``sync``'s when given)."""
    url = settings.state_url.get_secret_value()
    query = select(runs_table).order_by(runs_table.c.started_at.desc()).limit(limit)
    if sync is not None:
        query = query.where(runs_table.c.sync == sync)
    with state_errors(url), state_engine(url).connect() as conn:
        return [_with_parked(row_dict(row._mapping)) for row in reading(conn).execute(query)]


def _with_parked(run: dict[str, Any]) -> dict[str, Any]:
    """The run with ``parked``: members the reject policy left out (kept in its stats)."""
    stats = run.get("stats")
    ours = json.loads(stats) if stats else {}
    run["parked"] = int(ours.get("parked", 0))
    run["held_out"] = int(ours.get("held_out", 0))
    return run


def run_detail(settings: Settings, run_id: str, limit: int = 100) -> dict[str, Any] | None:
    """One run (by id or a unique prefix of it): its row, outcome totals, up to ``limit``
    problem events (rejected, invalid, failed) and the vendor jobs it submitted."""
    url = settings.state_url.get_secret_value()
    with state_errors(url), state_engine(url).connect() as conn:
        reading(conn)
        row = conn.execute(select(runs_table).where(runs_table.c.id == run_id)).first()
        if row is None:
            matches = conn.execute(
                select(runs_table).where(runs_table.c.id.startswith(run_id)).limit(2)
            ).all()
            if len(matches) != 1:
                return None
            row = matches[0]
        detail = row_dict(row._mapping)
        totals = conn.execute(
            select(events_table.c.operation, events_table.c.outcome, func.count())
            .where(events_table.c.run_id == detail["id"])
            .group_by(events_table.c.operation, events_table.c.outcome)
        ).all()
        detail["outcomes"] = [
            {"operation": op, "outcome": outcome, "count": n} for op, outcome, n in totals
        ]
        problems = conn.execute(
            select(events_table)
            .where(
                events_table.c.run_id == detail["id"],
                events_table.c.outcome.not_in(("accepted", "pending")),
            )
            .order_by(events_table.c.id)
            .limit(limit)
        ).all()
        detail["problems"] = [
            {k: v for k, v in row_dict(p._mapping).items() if k not in ("id", "run_id")}
            for p in problems
        ]
        detail["stats"] = json.loads(detail["stats"]) if detail.get("stats") else {}
        detail["parked"] = int(detail["stats"].get("parked", 0))
        detail["held_out"] = int(detail["stats"].get("held_out", 0))
        jobs = conn.execute(
            select(jobs_table)
            .where(jobs_table.c.run_id == detail["id"])
            .order_by(jobs_table.c.created_at)
        ).all()
        detail["jobs"] = [
            {
                "job": j.job,
                "status": j.status,
                "message": j.message,
                "stats": json.loads(j.stats) if j.stats else {},
                "settled_at": row_dict({"t": j.settled_at})["t"],
            }
            for j in jobs
        ]
    return detail


def row_dict(mapping: Mapping[Any, Any]) -> dict[str, Any]:
    """A state row as JSON-ready values: timestamps as ISO 8601 in UTC."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dt.datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)  # SQLite drops the offset; we store UTC
        out[key] = value.isoformat() if hasattr(value, "isoformat") else value
    return out
