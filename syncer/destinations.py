"""Lists, tags, segments and audiences a sync names: found by name, or created exactly once.

A sync may name its list (``list_name: VIP``, ``create_if_missing: true``) instead of giving
its id. Before the first batch the engine turns the name into the id, and owns the exactly-once
part; the connector only answers ``find_list(name)`` and ``create_list(name)``
(:class:`~syncer.connector.NamedList`). The protocol, on the state table
``syncer_destinations`` (one row per scope: account, kind, name):

1. A ``created`` row holds the id: use it (no request at all).
2. Otherwise claim the name: insert the row as ``creating`` with our holder, committed. The
   primary key makes a second process (another replica, another sync naming the same list)
   lose: it waits for ``created`` (polling, with a deadline), or takes the claim over once the
   holder is known dead (same host, pid gone) or silent for longer than the lease TTL.
3. Holding the claim, ask the vendor for lists of that name first: a crash after the vendor
   created the list but before we stored its id leaves a list to find, not one to make again.
   Two of that name is a configuration error (nothing is created). None: create it, when the
   sync says ``create_if_missing``; a retry (timeout, 5xx) looks it up again before creating.
4. Store the id (``created``) in its own committed transaction, then send.

``plan`` (:func:`preview`) reads the row and looks the name up, and says what a run would do:
use the list, or create it. It never claims or creates anything.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import socket
import uuid
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, get_args

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.exc import IntegrityError

from syncer.audit import row_dict
from syncer.connector import Connector, NamedList, SyncContext
from syncer.diff import DiffCounts
from syncer.errors import ConfigError, Interrupted, TransientError
from syncer.lease import process_gone
from syncer.log import get_logger
from syncer.mapping import LoadedSync
from syncer.retry import guarded
from syncer.runcontext import RunContext
from syncer.settings import Settings
from syncer.state import (
    MAYBE_ABSENT,
    as_utc,
    destinations_table,
    reading,
    records_table,
    state_engine,
    state_errors,
    utcnow,
    writing,
)

log = get_logger("syncer.destinations")

#: Seconds between looks at a claim another process holds.
POLL = 0.1
#: The scope column's width; longer scopes (very long names) are kept as a digest.
SCOPE_LIMIT = 500


@dataclass(frozen=True, slots=True)
class Resolved:
    """What a run does (or ``plan`` says it would do) about the list a sync names."""

    kind: str
    name: str
    action: str  # "use": it exists (id known); "create": a run would create it
    destination_id: str | None = None
    created: bool = False  # this run created it
    #: The id came from the vendor, not from ``syncer_destinations``: the sync's members
    #: are all sent again (see ``_store``).
    looked_up: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "action": self.action,
            "id": self.destination_id,
            "resend_members": self.looked_up,
        }

    def describe(self) -> str:
        if self.action == "create":
            return f"would create {self.kind} {self.name!r}"
        return f"uses {self.kind} {self.name!r} (id {self.destination_id})"


def scope_of(connector: Connector, wanted: NamedList) -> str:
    """The row's key: the vendor account (``account_key``: never a secret), where in it the
    list lives, its kind and its name. Syncs naming one list of one account share the row."""
    scope = f"{connector.account_key()}|{wanted.within}|{wanted.kind}|{wanted.name}"
    if len(scope) > SCOPE_LIMIT:
        digest = hashlib.sha256(scope.encode("utf-8")).hexdigest()
        scope = f"{connector.account_key()[:200]}|sha256:{digest}"
    return scope


def names_lists(sync: LoadedSync) -> bool:
    """Whether the sync's connector can name lists at all (no connector is opened for the
    others: most syncs give ids, and pay nothing for this step)."""
    return sync.connector_cls.named_list is not Connector.named_list


def with_id(sync: LoadedSync, wanted: NamedList, destination_id: str) -> LoadedSync:
    """``sync`` with the list's id in its connector config (appended to a list of ids)."""
    config = sync.connector_config
    current = getattr(config, wanted.id_field, None)
    value: Any = [*current, destination_id] if isinstance(current, list) else destination_id
    declared = type(config).model_fields[wanted.id_field].annotation
    if declared is int or int in get_args(declared):  # a numeric id (Mailchimp segments)
        value = int(destination_id)
    updated = config.model_copy(update={wanted.id_field: value})
    return LoadedSync(sync.definition, sync.path, sync.connector_cls, updated)


def resolve(run: RunContext) -> Resolved | None:
    """Fill in the id of the list the run's sync names (run.sync is replaced), creating the
    list if the sync says so and it does not exist: exactly once (module docstring)."""
    if not names_lists(run.sync):
        return None
    with run.connector(with_run_id=False) as connector:
        wanted = guarded(connector, "named_list", connector.named_list)
        if wanted is None:
            return None
        scope = scope_of(connector, wanted)
        holder = _holder(run.id)
        known = _claim(run, scope, wanted, holder, connector.name)
        if known is not None:
            run.sync = with_id(run.sync, wanted, known)
            return Resolved(wanted.kind, wanted.name, "use", known)
        try:
            attempt = partial(_find_or_create, run, connector, wanted, scope, holder)
            found, created = run.retry(lambda: guarded(connector, "find_list", attempt))
        except BaseException:
            _release(run.conn, scope, holder)  # nothing half-written: the next run looks again
            raise
        stored, resent = _store(run.conn, scope, holder, found, run.name)
    if stored != found:  # our claim was taken over as abandoned, and the other one won
        raise TransientError(
            f"sync {run.name}: {wanted.kind} {wanted.name!r} was resolved twice at once"
            f" ({found} and {stored}); delete the one not in use at {connector.name}"
        )
    run.log.info(
        "destination.created" if created else "destination.found",
        kind=wanted.kind,
        name=wanted.name,
        destination_id=found,
        members_to_send_again=resent,
    )
    run.sync = with_id(run.sync, wanted, found)
    return Resolved(wanted.kind, wanted.name, "use", found, created)


def preview(engine: Any, sync: LoadedSync, conn: Connection) -> list[Resolved]:
    """What a run would do about the list ``sync`` names, for ``plan``: nothing is claimed
    or created. ``engine`` is the SyncEngine (for its connector wiring and retries)."""
    if not names_lists(sync):
        return []
    definition = sync.definition
    context = SyncContext(definition.name, definition.mode, tuple(sorted(definition.fields)))
    with engine.connector_session(sync, context) as connector:
        wanted = guarded(connector, "named_list", connector.named_list)
        if wanted is None:
            return []
        row = conn.execute(
            select(destinations_table).where(
                destinations_table.c.scope == scope_of(connector, wanted)
            )
        ).first()
        if row is not None and row.status == "created":
            return [Resolved(wanted.kind, wanted.name, "use", row.destination_id)]
        ids = engine.retry(
            lambda: guarded(connector, "find_list", lambda: connector.find_list(wanted.name))
        )
        one = _one(definition.name, connector, wanted, ids)
        if one is not None:
            return [Resolved(wanted.kind, wanted.name, "use", one, looked_up=True)]
        return [Resolved(wanted.kind, wanted.name, "create", looked_up=True)]


def resent(counts: DiffCounts, mode: str) -> DiffCounts:
    """``counts`` as a run will send them once every state row is "maybe absent" (a list
    looked up at the vendor: see ``_store``): members in the segment are all sent again
    (added; updated in ``update_only``), nothing is left unchanged, removals stay."""
    kept = counts.update + counts.unchanged
    if mode == "update_only":
        return replace(counts, update=kept, unchanged=0, unconfirmed=counts.members_before)
    return replace(
        counts,
        add=counts.add + kept,
        update=0,
        unchanged=0,
        unconfirmed=counts.members_before,
    )


def _find_or_create(
    run: RunContext, connector: Connector, wanted: NamedList, scope: str, holder: str
) -> tuple[str, bool]:
    """(id, created): the one list of that name, else a new one. Each retry looks first, so
    a create whose answer was lost is found, not made again; and creates only while the
    claim is still ours (refreshed first, so a slow holder is not taken for a dead one)."""
    one = _one(run.name, connector, wanted, connector.find_list(wanted.name))
    if one is not None:
        return one, False
    if not _touch(run.conn, scope, holder):
        raise TransientError(
            f"sync {run.name}: another process took over creating {wanted.kind}"
            f" {wanted.name!r}; try again"
        )
    run.log.info("destination.creating", kind=wanted.kind)
    created = connector.create_list(wanted.name)
    if not created:
        raise TransientError(f"{connector.name}: {wanted.kind} created without an id")
    return str(created), True


def _one(sync: str, connector: Connector, wanted: NamedList, ids: list[str]) -> str | None:
    """The single id of ``ids``; ConfigError naming both when the name is not unique, and
    when there is none and the sync may not create it."""
    unique = list(dict.fromkeys(str(i) for i in ids))
    if len(unique) > 1:
        raise ConfigError(
            f"sync {sync}: {connector.name} has {len(unique)} {wanted.kind}s named"
            f" {wanted.name!r} (ids {', '.join(unique)}); rename or delete all but one, or give"
            f" {wanted.id_field} instead of the name"
        )
    if unique:
        return unique[0]
    if not wanted.create:
        raise ConfigError(
            f"sync {sync}: {connector.name} has no {wanted.kind} named {wanted.name!r}; set"
            f" create_if_missing: true to create it, or give {wanted.id_field}"
        )
    return None


def _holder(run_id: str) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{run_id}:{uuid.uuid4().hex[:8]}"


def _abandoned(holder: str | None, updated_at: dt.datetime, ttl: float) -> bool:
    """A claim whose process is gone (same host, pid not alive) or silent for ``ttl`` s."""
    if utcnow() - as_utc(updated_at) > dt.timedelta(seconds=ttl):
        return True
    host, _, rest = (holder or "").partition(":")
    pid = rest.split(":", 1)[0]
    return pid.isdigit() and process_gone(host, int(pid))


def _claim(
    run: RunContext, scope: str, wanted: NamedList, holder: str, connector: str
) -> str | None:
    """The stored id (a ``created`` row), or None once this run holds the claim."""
    ttl = max(run.settings.lease_ttl, 1.0)
    waited = 0.0
    while True:
        with writing(run.conn) as conn:
            row = conn.execute(
                select(destinations_table).where(destinations_table.c.scope == scope)
            ).first()
            if row is None:
                now = utcnow()
                try:
                    with conn.begin_nested():
                        conn.execute(
                            destinations_table.insert().values(
                                scope=scope,
                                connector=connector,
                                name=wanted.name,
                                status="creating",
                                sync=run.name,
                                run_id=run.id,
                                holder=holder,
                                created_at=now,
                                updated_at=now,
                            )
                        )
                except IntegrityError:
                    continue  # another process claimed it between our look and our insert
                return None
            if row.status == "created" and row.destination_id:
                return str(row.destination_id)
            if _abandoned(row.holder, row.updated_at, ttl):
                taken = conn.execute(
                    update(destinations_table)
                    .where(
                        destinations_table.c.scope == scope,
                        destinations_table.c.holder == row.holder,
                        destinations_table.c.status == "creating",
                    )
                    .values(holder=holder, sync=run.name, run_id=run.id, updated_at=utcnow())
                )
                if taken.rowcount == 1:
                    run.log.info("destination.claim_taken_over", kind=wanted.kind)
                    return None
                continue
        if waited > 2 * ttl:  # by then a silent holder has been taken over, unless it is alive
            raise TransientError(
                f"sync {run.name}: another process ({row.sync or 'a sync'}) is still creating"
                f" {wanted.kind} {wanted.name!r}; try again"
            )
        if run.stop.wait(POLL):
            raise Interrupted("stopped while waiting for another process to create the list")
        waited += POLL


def _touch(conn: Connection, scope: str, holder: str) -> bool:
    """Refresh our claim's ``updated_at``; False when it is no longer ours."""
    with writing(conn) as tx:
        touched = tx.execute(
            update(destinations_table)
            .where(
                destinations_table.c.scope == scope,
                destinations_table.c.holder == holder,
                destinations_table.c.status == "creating",
            )
            .values(updated_at=utcnow())
        )
    return touched.rowcount == 1


def _store(
    conn: Connection, scope: str, holder: str, destination_id: str, sync: str
) -> tuple[str, int]:
    """Record the id as ``created`` (its own committed transaction), if the claim is still
    ours: (the id the row holds afterwards, members of ``sync`` to send again).

    In the same transaction every member the sync's state holds becomes "maybe absent"
    (MAYBE_ABSENT), so the run adds them all again: the list was just looked up at the
    vendor, so nothing says the state was built against it (a list created anew after
    ``syncer lists forget``, a changed name, a list that was given by id before). Adding a
    member already there is a no-op at every vendor; leaving one out is not."""
    with writing(conn) as tx:
        tx.execute(
            update(destinations_table)
            .where(destinations_table.c.scope == scope, destinations_table.c.holder == holder)
            .values(status="created", destination_id=destination_id, updated_at=utcnow())
        )
        resent = tx.execute(
            update(records_table)
            .where(records_table.c.sync == sync, records_table.c.unsure != MAYBE_ABSENT)
            .values(unsure=MAYBE_ABSENT)
        ).rowcount
        row = tx.execute(
            select(destinations_table.c.destination_id).where(destinations_table.c.scope == scope)
        ).first()
    stored = str(row.destination_id) if row is not None and row.destination_id else destination_id
    return stored, max(resent or 0, 0)


def _release(conn: Connection, scope: str, holder: str) -> None:
    """Drop our claim after a failure (nothing was stored: the next run looks again)."""
    try:
        with writing(conn) as tx:
            tx.execute(
                delete(destinations_table).where(
                    destinations_table.c.scope == scope,
                    destinations_table.c.holder == holder,
                    destinations_table.c.status == "creating",
                )
            )
    except Exception:  # the claim then ages out (lease TTL) or its dead pid is seen
        log.warning("destination.release_failed")


def stored_lists(settings: Settings) -> list[dict[str, Any]]:
    """Every stored named list (``syncer lists show``), by connector and name."""
    url = settings.state_url.get_secret_value()
    table = destinations_table
    query = select(table).order_by(table.c.connector, table.c.name, table.c.scope)
    with state_errors(url), state_engine(url).connect() as conn:
        return [row_dict(row._mapping) for row in reading(conn).execute(query)]


def forget(settings: Settings, name: str, connector: str | None = None) -> list[dict[str, Any]]:
    """Delete the stored rows of lists named ``name`` (of ``connector`` when given), so the
    next run looks the name up again; the rows deleted. A claim a live run holds right now
    is kept (ConfigError), so forgetting never lets a second creation start beside it."""
    url = settings.state_url.get_secret_value()
    ttl = max(settings.lease_ttl, 1.0)  # as _claim judges a claim abandoned
    table = destinations_table
    where = [table.c.name == name]
    if connector is not None:
        where.append(table.c.connector == connector)
    with state_errors(url), state_engine(url).connect() as conn, writing(conn) as tx:
        rows = tx.execute(select(table).where(*where)).all()
        for row in rows:
            if row.status == "creating" and not _abandoned(row.holder, row.updated_at, ttl):
                raise ConfigError(
                    f"{row.connector} list {name!r} is being created by {row.sync or 'a run'}"
                    " right now; try again once that run ended"
                )
        tx.execute(delete(table).where(*where))
    return [row_dict(row._mapping) for row in rows]


__all__ = ["Resolved", "forget", "preview", "resolve", "scope_of", "stored_lists", "with_id"]
