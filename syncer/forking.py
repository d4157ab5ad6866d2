"""Keep this process's own threads out of C libraries while a reader is forked.

A forked child inherits every lock as it was at the fork, held or not, but not the threads
that held them. If the lease's heartbeat thread were inside SQLite at that moment, the
child's first SQLite call could wait forever for a mutex nobody will release. Threads of
ours that call into SQLite while a run stages hold ``fork_lock``, and so does the fork.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: Held around a fork, and by background threads of ours while they are inside SQLite.
fork_lock = threading.Lock()
_runs = 0
_runs_lock = threading.Lock()


@contextmanager
def run_in_progress() -> Iterator[None]:
    """Counts the runs of this process; a reader is forked only while one run is going."""
    global _runs
    with _runs_lock:
        _runs += 1
    try:
        yield
    finally:
        with _runs_lock:
            _runs -= 1


def alone() -> bool:
    """True when at most one run is in progress in this process (the caller's)."""
    with _runs_lock:
        return _runs <= 1
