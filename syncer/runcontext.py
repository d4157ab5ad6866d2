"""What one run carries from step to step (singer-sdk's sink context, dlt's load package).

The engine builds a RunContext when a run starts and hands it to each step: the state
connection, the run's id and counters, the sync, its logger, the options it was started with,
and the engine's wiring (retries on the engine's clock, connectors on the account limiter).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from syncer.connector import Connector, SyncContext
from syncer.diff import Staging
from syncer.lease import Lease
from syncer.mapping import LoadedSync, SyncDefinition
from syncer.retry import RetryPolicy
from syncer.settings import Settings

ProgressFn = Callable[[str, int, int], None]
"""Called as (operation, records done, records planned) while a run sends batches."""

ConnectorSession = Callable[[LoadedSync, SyncContext], AbstractContextManager[Connector]]
"""Opens a connector wired to the engine's HTTP client (``SyncEngine.connector_session``)."""

COUNTERS = (
    "source_rows",
    "added",
    "removed",
    "updated",
    "unchanged",
    "rejected",
    "invalid",
    "failed",
    "pending",
)


class Tally:
    """Running counters of a run, mirrored into its ``syncer_runs`` row after each batch."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values = dict.fromkeys(COUNTERS, 0)

    def __getitem__(self, name: str) -> int:
        return self.values[name]

    def plus(self, delta: dict[str, int]) -> dict[str, int]:
        """The counters with ``delta`` added: written in the transaction that commits what
        ``delta`` counts, and kept (``values.update``) only once that commit succeeded."""
        return add_counts(self.values, delta)


def add_counts(values: dict[str, int], delta: dict[str, int]) -> dict[str, int]:
    return {name: n + delta.get(name, 0) for name, n in values.items()}


@dataclass(slots=True, eq=False)
class RunContext:
    """One run's working set. ``conn``, ``lease`` and ``staging`` are set once the run
    holds them."""

    id: str
    sync: LoadedSync
    settings: Settings
    log: Any
    retry: RetryPolicy
    session: ConnectorSession
    stop: threading.Event
    trigger: str
    full_resync: bool
    force: bool
    progress: ProgressFn | None
    started: float
    tally: Tally = field(default_factory=Tally)
    staging: Staging | None = None
    #: Members the reject policy left out of this run (syncer.rejects), and whether the
    #: sync had any syncer_rejects row when the run started (none: the policy costs nothing).
    parked: int = 0
    #: Valid rows held out of the destination by an experiment (syncer.holdout).
    held_out: int = 0
    had_rejects: bool = False
    conn: Connection = field(init=False)
    lease: Lease = field(init=False)

    @property
    def definition(self) -> SyncDefinition:
        return self.sync.definition

    @property
    def name(self) -> str:
        return self.sync.definition.name

    @property
    def plain_keys(self) -> bool:
        """Whether audit events keep keys as they are (else hashed: see ledger.audit_key)."""
        return self.settings.audit_plain_keys

    @property
    def halted(self) -> bool:
        """Stop starting batches: a stop was asked for, or another process took the lease."""
        return self.stop.is_set() or self.lease.lost.is_set()

    def connector(self, *, with_run_id: bool = True) -> AbstractContextManager[Connector]:
        """A connector for this run's sync (job polls get no run id, as before a run sends)."""
        definition = self.sync.definition
        context = SyncContext(
            definition.name,
            definition.mode,
            tuple(sorted(definition.fields)),
            self.id if with_run_id else None,
        )
        return self.session(self.sync, context)
