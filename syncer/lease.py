"""One run per sync at a time, across processes and hosts: a lease row in the state database.

Portable SQL only (SQLite and Postgres): a lease is taken by inserting its row, or by a
compare-and-swap UPDATE on the previous holder once that lease has expired or its process is
known dead (same host, pid gone). A heartbeat thread keeps it alive; if the row is ever taken
from us, ``lost`` is set and the engine stops starting batches.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.exc import IntegrityError

from syncer.errors import LeaseHeld
from syncer.forking import fork_lock
from syncer.log import get_logger
from syncer.state import leases_table

log = get_logger("syncer.lease")


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (zombies count as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_gone(host: str | None, pid: int | None) -> bool:
    """Whether a lease or claim holder ran on this host and its process is gone: its work
    can be taken over at once, without waiting for it to expire."""
    return host == socket.gethostname() and pid is not None and not pid_alive(pid)


class Lease:
    """The right to run one sync; use as a context manager around the run."""

    def __init__(
        self,
        engine: Engine,
        sync: str,
        ttl: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.sync = sync
        self.ttl = ttl
        self.clock = clock
        self.holder = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.lost = threading.Event()
        self.took_over: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _row(self, now: float) -> dict[str, Any]:
        return {
            "holder": self.holder,
            "host": self.host,
            "pid": self.pid,
            "acquired_at": now,
            "heartbeat_at": now,
            "expires_at": now + self.ttl,
        }

    def _stale(self, row: Any, now: float) -> bool:
        if row.expires_at < now:
            return True
        return row.pid != self.pid and process_gone(row.host, row.pid)

    def acquire(self, attempts: int = 3) -> None:
        """Take the lease or raise LeaseHeld naming the holder (host, pid, since)."""
        now = self.clock()
        try:
            with self.engine.begin() as conn:
                conn.execute(leases_table.insert().values(sync=self.sync, **self._row(now)))
            return
        except IntegrityError:
            pass  # somebody holds (or held) it: look at who
        with self.engine.begin() as conn:
            row = conn.execute(select(leases_table).where(leases_table.c.sync == self.sync)).first()
            if row is not None and self._stale(row, now):
                taken = conn.execute(
                    update(leases_table)
                    .where(leases_table.c.sync == self.sync, leases_table.c.holder == row.holder)
                    .values(**self._row(now))
                ).rowcount
                if taken:
                    self.took_over = {"host": row.host, "pid": row.pid}
                    log.info("lease.taken_over", sync=self.sync, host=row.host, pid=row.pid)
                    from syncer.metrics import lease_taken_over  # prometheus: rarely needed

                    lease_taken_over(self.sync)
                    return
        if row is None and attempts > 1:  # released between our two statements
            return self.acquire(attempts - 1)
        if row is None:
            raise LeaseHeld(f"sync {self.sync!r} is contended; try again")
        since = dt.datetime.fromtimestamp(row.acquired_at, dt.UTC).isoformat(timespec="seconds")
        raise LeaseHeld(
            f"sync {self.sync!r} is already running on {row.host} (pid {row.pid}) since {since};"
            " try again when it finishes"
        )

    def heartbeat(self) -> bool:
        """Extend the lease; False (and ``lost`` set) if another process has taken it."""
        now = self.clock()
        with fork_lock, self.engine.begin() as conn:  # no reader is forked meanwhile
            kept = conn.execute(
                update(leases_table)
                .where(leases_table.c.sync == self.sync, leases_table.c.holder == self.holder)
                .values(heartbeat_at=now, expires_at=now + self.ttl)
            ).rowcount
        if not kept:
            self.lost.set()
        return bool(kept)

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                if not self.heartbeat():
                    log.warning("lease.lost", sync=self.sync)
                    return
            except Exception as exc:  # a database blip: try again at the next beat
                log.warning("lease.heartbeat_failed", sync=self.sync, error=type(exc).__name__)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self.engine.begin() as conn:
            conn.execute(
                delete(leases_table).where(
                    leases_table.c.sync == self.sync, leases_table.c.holder == self.holder
                )
            )

    def __enter__(self) -> Lease:
        self.acquire()
        self._thread = threading.Thread(target=self._beat, name="syncer-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
