"""What the state database believes the destination holds, written around every send.

A send whose answer never arrived may have been applied (invariant 7). So before a batch
leaves, its records are marked in the very rows the diff reads (``syncer_records.unsure``),
in a transaction committed before the request is sent, and the answer then settles them:

==========  ==================================================================================
answer      state afterwards
==========  ==================================================================================
accepted    add/update: confirmed with the new hash; remove: the row is gone
rejected    as before the send (the destination refused it, so nothing changed there), except
            that a member whose confirmed hash is the one refused (a full resync) is no longer
            trusted to be there: MAYBE_ABSENT, so it is sent again
failed      stays marked: the request may have been applied (a timeout, a lost connection)
pending     stays marked until its vendor job settles
==========  ==================================================================================

A crash leaves the marks too. The diff treats a marked member as possibly applied: while it
is in the segment it is sent again, and once it has left it is removed, although no add of
it was ever acknowledged. So after any crash the destination ends equal to the segment.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from sqlalchemy import Connection, text

from syncer.connector import Outcome, accepted_whole
from syncer.diff import ChangeBatch, span_select
from syncer.state import CONFIRMED, MAYBE_ABSENT, MAYBE_STALE, BulkWriter

#: Which run counter each operation's acknowledged records add to.
COUNTER = {"add": "added", "update": "updated", "remove": "removed"}


def audit_key(key: str | None, plain: bool) -> str | None:
    """How a key is written to the audit log: SHA-256 hex unless plain keys were asked for."""
    if key is None or plain:
        return key
    return hashlib.sha256(key.encode()).hexdigest()


def mark_sent(
    conn: Connection,
    sync: str,
    batch: ChangeBatch,
    expected_ids: Mapping[str, str | None],
    now: dt.datetime,
) -> None:
    """Record ``batch`` as in flight, before it is sent (the caller commits first).

    ``expected_ids`` are destination ids the connector can tell before the answer (the
    hashed identifiers an ad platform keeps), so that a member whose add is never confirmed
    can still be removed; a missing or None entry keeps the id state has.
    """
    writer = BulkWriter(conn)
    if batch.span is not None and not any(expected_ids.values()):
        _mark_span(conn, writer, sync, batch, now)
        return
    if batch.operation == "remove":
        writer.mark_records(sync, [r.key for r in batch.records], MAYBE_ABSENT)
        return
    absent: list[tuple[str, int | None, str | None]] = []
    stale: list[tuple[str, int | None, str | None]] = []
    for record in batch.records:
        prior = batch.prior.get(record.key)
        row = (record.key, batch.hashes.get(record.key), expected_ids.get(record.key))
        # An update can only be stale data on a member known to be there; an add (or an
        # update of a member that may be absent) may have created it or not.
        if batch.operation == "update" and prior is not None and prior[1] != MAYBE_ABSENT:
            stale.append(row)
        else:
            absent.append(row)
    writer.upsert_records(sync, absent, now, unsure=MAYBE_ABSENT)
    writer.upsert_records(sync, stale, now, unsure=MAYBE_STALE)


def settle(
    conn: Connection,
    run_id: str,
    sync: str,
    batch: ChangeBatch,
    outcomes: Sequence[Outcome],
    now: dt.datetime,
    *,
    plain_keys: bool,
) -> dict[str, int]:
    """State and audit events for one answered batch; returns the counters it adds to the run.

    Pending outcomes must already be in ``syncer_pending`` (see the engine). The caller
    commits, and adds the counters to the run only once the commit succeeded, so the run's
    counters never claim more than state and the audit log hold.
    """
    writer = BulkWriter(conn)
    operation = batch.operation
    if batch.span is not None and accepted_whole(outcomes):
        _settle_span(conn, writer, run_id, sync, batch, now, plain_keys)
        return {COUNTER[operation]: len(outcomes), "rejected": 0, "failed": 0, "pending": 0}
    by_key = {r.key: r for r in batch.records}
    accepted = [o for o in outcomes if o.status == "accepted"]
    rejected = [o for o in outcomes if o.status == "rejected"]
    if operation == "remove":
        writer.delete_records(sync, [o.key for o in accepted])
    else:
        hashes = batch.hashes
        writer.upsert_records(
            sync,
            [
                (o.key, hashes[o.key], o.destination_id or by_key[o.key].destination_id)
                for o in accepted
            ],
            now,
        )
    _put_back(writer, sync, batch, [o.key for o in rejected])
    # A job the vendor took may apply later, or in part even if it fails: keep what removal
    # will need beside the mark.
    writer.fill_destination_ids(
        sync,
        [(o.key, o.destination_id) for o in outcomes if o.status == "pending" and o.destination_id],
    )
    writer.add_events(
        run_id,
        [(audit_key(o.key, plain_keys), operation, o.status, o.reason) for o in outcomes],
        now,
    )
    return {
        COUNTER[operation]: len(accepted),
        "rejected": len(rejected),
        "failed": sum(o.status == "failed" for o in outcomes),
        "pending": sum(o.status == "pending" for o in outcomes),
    }


def _put_back(writer: BulkWriter, sync: str, batch: ChangeBatch, keys: list[str]) -> None:
    """Refused records: state as before the send, since the destination did not apply it."""
    gone: list[str] = []
    restore: list[tuple[str, int | None, str | None, int]] = []
    by_key = {r.key: r for r in batch.records}
    for key in keys:
        prior = batch.prior.get(key)
        if prior is None:
            gone.append(key)  # it had no state row: it has none again
            continue
        old_hash, unsure = prior
        if (
            batch.operation != "remove"
            and unsure == CONFIRMED
            and old_hash == batch.hashes.get(key)
        ):
            # A full resync sent what state says the destination holds, and the destination
            # refused it: state may no longer claim it is there.
            unsure = MAYBE_ABSENT
        restore.append((key, old_hash, by_key[key].destination_id, unsure))
    writer.delete_records(sync, gone)
    writer.restore_records(sync, restore)


# -- whole batches in one statement ------------------------------------------------------
#
# The common cases (a batch marked before it leaves; a batch accepted whole, with no
# destination ids) write the same rows as above with one statement each over the staging
# tables, instead of binding a row per record from Python: the database does the work with
# the interpreter free for the senders (the driver releases it while a statement runs).

_UPSERT_FROM = (
    "INSERT INTO syncer_records (sync, key, hash, destination_id, synced_at, unsure)"
    " SELECT :sync, b.key, b.hash, NULL, :at, {unsure} FROM ({select}) AS b WHERE true"
    " ON CONFLICT (sync, key) DO UPDATE SET hash = excluded.hash,"
    " destination_id = COALESCE(excluded.destination_id, syncer_records.destination_id),"
    " synced_at = excluded.synced_at, unsure = excluded.unsure"
)


def _mark_span(
    conn: Connection, writer: BulkWriter, sync: str, batch: ChangeBatch, now: dt.datetime
) -> None:
    """``mark_sent`` for a whole page, by one statement (see above)."""
    params: dict[str, Any] = {"sync": sync, "at": writer.stamp(now)}
    if batch.operation == "remove":
        sql = f"UPDATE syncer_records SET unsure = {MAYBE_ABSENT} WHERE {_named_keys(conn)}"
        params["keys"] = _keys_json(batch)
    else:
        select, span = span_select(batch, sync, with_state=True)
        params.update(span)
        # As in mark_sent: an update of a member known to be there can only leave it stale.
        stale = (
            f"CASE WHEN b.unsure IS NOT NULL AND b.unsure <> {MAYBE_ABSENT}"
            f" THEN {MAYBE_STALE} ELSE {MAYBE_ABSENT} END"
        )
        unsure = stale if batch.operation == "update" else str(MAYBE_ABSENT)
        sql = _UPSERT_FROM.format(unsure=unsure, select=select)
    _execute_span(conn, sql, params, batch, "mark")
    batch.span_marked = True


def _settle_span(
    conn: Connection,
    writer: BulkWriter,
    run_id: str,
    sync: str,
    batch: ChangeBatch,
    now: dt.datetime,
    plain_keys: bool,
) -> None:
    """``settle`` for a page the destination accepted whole, by two statements: its audit
    events (in batch order, as it was sent), then its state rows."""
    params: dict[str, Any] = {"sync": sync, "at": writer.stamp(now)}
    # The audit keys come from the batch (hashed on its sender thread) as one JSON array:
    # no Python call per row inside the statement.
    events = (
        "INSERT INTO syncer_events (run_id, key, operation, outcome, reason, at)"
        f" SELECT :run_id, k.value, :operation, 'accepted', NULL, :at FROM {_strings(conn)}"
        " ORDER BY k.n"
    )
    audit = {"run_id": run_id, "operation": batch.operation}
    audit["keys"] = orjson.dumps(batch.audit_keys(plain_keys)).decode()
    _execute_span(conn, events, dict(params, **audit), batch, "audit")
    if batch.operation == "remove":
        state = f"DELETE FROM syncer_records WHERE {_named_keys(conn)}"
        params["keys"] = _keys_json(batch)
    else:
        select, span = span_select(batch, sync)
        params.update(span)
        if batch.span_marked:
            # The mark wrote the new hash and kept the destination id: what is left is to
            # say the destination confirmed it (the same row the upsert would write).
            state = (
                f"UPDATE syncer_records SET unsure = {CONFIRMED}, synced_at = :at"
                f" WHERE sync = :sync AND key IN (SELECT b.key FROM ({select}) AS b)"
            )
        else:
            state = _UPSERT_FROM.format(unsure=str(CONFIRMED), select=select)
    _execute_span(conn, state, params, batch, "settle")


def _execute_span(
    conn: Connection, sql: str, params: dict[str, Any], batch: ChangeBatch, what: str
) -> None:
    """Run a whole-batch statement, refusing (and so rolling back) one that touched another
    number of rows than the batch holds: the span would not be the batch."""
    count = conn.execute(text(sql), params).rowcount
    if count != batch.size:
        raise RuntimeError(
            f"{what} of a {batch.operation} batch touched {count} rows, not {batch.size}"
        )


def _keys_json(batch: ChangeBatch) -> str:
    return orjson.dumps([row[0] for row in batch.rows]).decode()


def _named_keys(conn: Connection) -> str:
    """WHERE clause for this sync's state rows named in the JSON array ``:keys``. Removals
    name their keys: the removed members of a page may lie far apart in state, and a key
    span would visit every synced member between them (all of state, for a 1% churn)."""
    return f"sync = :sync AND key IN (SELECT k.value FROM {_strings(conn)})"


def _strings(conn: Connection) -> str:
    """The JSON array of strings ``:keys`` as rows ``k.value``, numbered in order ``k.n``."""
    if conn.dialect.name == "postgresql":
        return "jsonb_array_elements_text(CAST(:keys AS jsonb)) WITH ORDINALITY AS k(value, n)"
    return "(SELECT key AS n, value FROM json_each(:keys)) AS k"
