"""Exactly one run per sync and scheduled tick, across every daemon sharing a state database.

Every replica schedules every sync, so at each tick all of them wake up. Each tries to insert
the row ``(sync, tick)`` into ``syncer_ticks``; the primary key lets exactly one succeed, and
only that replica runs the tick. Portable SQL (a plain INSERT caught on IntegrityError), so it
behaves the same on SQLite and Postgres. The per-sync lease (``syncer.lease``) still guards the
run itself, so a tick that arrives while the previous run (or a ``sync now``) is still going is
claimed and then reported ``locked`` rather than run twice.

A replica that dies after claiming leaves its tick claimed (its run is marked interrupted by
the next one); the next tick is claimed by whichever replica is alive.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.exc import IntegrityError

from syncer.state import reading, ticks_table

#: Claims older than this are deleted at start and on reload: they only serve to deduplicate
#: ticks that are long past.
KEEP_SECONDS = 7 * 86400


def replica_name() -> str:
    """``host:pid``: who claimed a tick (a host name is not a personal identifier)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Claims:
    """Tick claims of one replica."""

    def __init__(
        self, engine: Engine, holder: str | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.engine = engine
        self.holder = holder or replica_name()
        self.clock = clock

    def claim(self, sync: str, tick: int) -> bool:
        """True if this replica now owns ``(sync, tick)``; False if another one got it first."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    ticks_table.insert().values(
                        sync=sync, tick=tick, holder=self.holder, claimed_at=self.clock()
                    )
                )
        except IntegrityError:
            return False
        return True

    def finish(self, sync: str, tick: int, run_id: str | None, status: str) -> None:
        """Record how the claimed tick ended (``locked`` when another run held the lease)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(ticks_table)
                .where(
                    ticks_table.c.sync == sync,
                    ticks_table.c.tick == tick,
                    ticks_table.c.holder == self.holder,
                )
                .values(run_id=run_id, status=status[:20])
            )

    def release(self, sync: str, tick: int) -> None:
        """Give up this replica's claim of ``(sync, tick)``, so it can be claimed again."""
        with self.engine.begin() as conn:
            conn.execute(
                delete(ticks_table).where(
                    ticks_table.c.sync == sync,
                    ticks_table.c.tick == tick,
                    ticks_table.c.holder == self.holder,
                )
            )

    def last_tick(self, sync: str) -> int | None:
        """The newest claimed tick of ``sync`` by any replica."""
        with self.engine.connect() as conn:
            value = (
                reading(conn)
                .execute(
                    select(ticks_table.c.tick)
                    .where(ticks_table.c.sync == sync)
                    .order_by(ticks_table.c.tick.desc())
                    .limit(1)
                )
                .scalar()
            )
        return int(value) if value is not None else None

    def prune(self, keep: float = KEEP_SECONDS) -> int:
        """Delete claims of ticks older than ``keep`` seconds; returns how many."""
        with self.engine.begin() as conn:
            return int(
                conn.execute(
                    delete(ticks_table).where(ticks_table.c.tick < int(self.clock() - keep))
                ).rowcount
            )
