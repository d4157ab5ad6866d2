"""The diff, computed in SQL inside the state database.

The new snapshot is bulk-loaded into a temporary staging table and indexed on (key, hash).
Set differences against the acknowledged records (on SQLite an EXCEPT that merges the two
key-ordered indexes, elsewhere anti-joins) and a payload-hash comparison give the change set,
read back page by page in key order (keyset pagination), so memory never grows with the
segment. Pages are plain queries, not open cursors, so state can be committed between them.
"""

from __future__ import annotations

import functools
import hashlib
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, text

from syncer.connector import Operation, Record
from syncer.normalize import EncodedChunk, PayloadSpill
from syncer.state import CONFIRMED, MAYBE_ABSENT, MAYBE_STALE
from syncer.unchanged import UnchangedCheck

STAGE = "syncer_stage"
CHANGES = "syncer_changes"
#: The run's held-out members (syncer.holdout): key as staged, and group.
HELD = "syncer_held"
_CHANGE_COLUMNS = "key, kind, rownum, hash, destination_id, old_hash, unsure"

_GROUP_BY_LETTER = {"h": "holdout", "g": "global_holdout"}

#: The kind of a change the reject policy parked (syncer.rejects): sent by no operation.
PARKED = "parked"

Kind = str
"""A staged row's relation to state: ``new`` (not synced), ``unsure`` (an earlier send was
never confirmed and the member may be absent: sent as an add), ``changed`` (synced with
another hash, or an update never confirmed) or ``same`` (synced, same hash; only
materialised for a full resync). See ``syncer.state.CONFIRMED``."""


def _selection(mode: str, full_resync: bool) -> dict[Operation, tuple[Kind, ...] | None]:
    """For each operation, which kinds of staged rows it sends (None: never sent)."""
    same: tuple[Kind, ...] = ("same",) if full_resync else ()
    if mode == "membership":
        add = ("new", "unsure", "changed", "same") if full_resync else ("new", "unsure")
        return {"add": add, "update": None, "remove": ()}
    if mode == "update_only":
        return {"add": None, "update": ("new", "unsure", "changed", *same), "remove": None}
    return {
        "add": ("new", "unsure"),
        "update": ("changed", *same),
        "remove": () if mode == "mirror" else None,
    }


@dataclass(slots=True)
class DiffCounts:
    """How many records each operation will send, and what will be left alone."""

    source_rows: int = 0
    add: int = 0
    update: int = 0
    remove: int = 0
    unchanged: int = 0
    invalid: int = 0
    members_before: int = 0
    #: Members whose last send was never confirmed (a crash or a timeout): included in the
    #: adds, updates or removes above, since the destination may or may not have applied it.
    unconfirmed: int = 0
    #: Members the reject policy parked (syncer.rejects): refused on earlier runs with the
    #: payload they still have, so not sent (nor counted as invalid) this time.
    parked: int = 0
    #: Of ``parked``, the rows that are invalid (still counted as rows with no valid payload
    #: by the empty-source guard).
    parked_invalid: int = 0
    #: Valid rows held out of the destination (syncer.holdout): in ``source_rows``, never
    #: sent; those the destination already holds are among the removals.
    held: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "source_rows": self.source_rows,
            "add": self.add,
            "update": self.update,
            "remove": self.remove,
            "unchanged": self.unchanged,
            "invalid": self.invalid,
            "members_before": self.members_before,
            "unconfirmed": self.unconfirmed,
            "parked": self.parked,
            "held_out": self.held,
        }


Prior = tuple[int | None, int] | None
"""A record's state row before this run sent it: (hash, unsure), or None when it had none."""


class ChangeBatch:
    """One page of the change set: records to send, the hashes state will record, and each
    record's state before the send (to put back if the destination refuses it).

    A page is kept as the rows it was read as; its records are built on first use, which
    is on the sender thread that delivers it (decoding payloads there overlaps the state
    writes of the run's thread, which run with the interpreter released). ``span`` and
    ``kinds`` say where the page lies in the change set: (the key it started after, its
    last key) and the kinds of staged rows it took, so state can be written for the whole
    batch by one statement (see ``span_select``); None for batches not read from staging.
    """

    def __init__(
        self,
        operation: Operation,
        rows: list[Any],
        build: Callable[[list[Any]], list[Record]],
        span: tuple[str | None, str] | None = None,
        kinds: tuple[Kind, ...] = (),
    ) -> None:
        self.operation = operation
        self.rows = rows
        self.size = len(rows)
        self.span = span
        self.kinds = kinds
        #: Set once the in-flight mark was written by span (syncer.ledger): state then
        #: already holds the batch's hashes, and accepting it only confirms them.
        self.span_marked = False
        self._build = build
        self._audit_keys: list[str] | None = None

    @functools.cached_property
    def records(self) -> list[Record]:
        return self._build(self.rows)

    @functools.cached_property
    def hashes(self) -> dict[str, int | None]:
        if self.operation == "remove":  # rows: key, destination id, old hash, unsure
            return dict.fromkeys(row[0] for row in self.rows)
        return {row[0]: row[2] for row in self.rows}

    @functools.cached_property
    def prior(self) -> dict[str, Prior]:
        if self.operation == "remove":
            return {key: (old, unsure) for key, _, old, unsure in self.rows}
        rows = self.rows
        return {key: None if unsure is None else (old, unsure) for key, *_, old, unsure in rows}

    def split(self, size: int) -> list[ChangeBatch]:
        """This page as batches of ``size`` rows, each with its own span, and marked as
        this page was (a page is marked whole, then sent batch by batch)."""
        if self.size <= size:
            return [self]
        parts: list[ChangeBatch] = []
        after = self.span[0] if self.span is not None else None
        built: list[Record] | None = self.__dict__.get("records")
        for start in range(0, self.size, size):
            rows = self.rows[start : start + size]
            span = (after, rows[-1][0]) if self.span is not None else None
            part = ChangeBatch(self.operation, rows, self._build, span, self.kinds)
            part.span_marked = self.span_marked
            if built is not None:
                part.records = built[start : start + size]
            parts.append(part)
            after = rows[-1][0]
        return parts

    def join(self, other: ChangeBatch, plain: bool) -> ChangeBatch:
        """This batch and ``other``, whose span starts where this one's ends, as one."""
        assert self.span is not None and other.span is not None and self.span[1] == other.span[0]
        span = (self.span[0], other.span[1])
        rows = self.rows + other.rows
        joined = ChangeBatch(self.operation, rows, self._build, span, self.kinds)
        joined.span_marked = self.span_marked and other.span_marked
        joined._audit_keys = self.audit_keys(plain) + other.audit_keys(plain)
        return joined

    def audit_keys(self, plain: bool) -> list[str]:
        """The batch's keys as its audit events store them (see ``ledger.audit_key``), in
        batch order; computed once, by whichever thread asks first."""
        cached = self._audit_keys
        if cached is None:
            keys = [row[0] for row in self.rows]
            if not plain:
                sha = hashlib.sha256
                keys = [sha(key.encode()).hexdigest() for key in keys]
            cached = self._audit_keys = keys
        return cached


class Staging:
    """The staging table of one run, living on one state-database connection.

    The table disappears with the connection; callers close (invalidate) the connection
    rather than dropping a large table page by page.
    """

    def __init__(
        self,
        conn: Connection,
        sync: str,
        mode: str,
        field_names: tuple[str, ...],
        full_resync: bool = False,
        *,
        park: bool = False,
        full_check: bool = False,
    ) -> None:
        self.conn = conn
        #: Stage the snapshot even when it equals state (the membership history needs it
        #: when a phase starts or the history begins; see syncer.membership).
        self.full_check = full_check
        #: Valid rows held out of the destination (syncer.holdout), staged in ``HELD``.
        self.held_loaded = 0
        self._held_file: Any = None
        self.sync = sync
        self.field_names = field_names
        self.dialect = conn.dialect.name
        self.selection = _selection(mode, full_resync)
        self.full_resync = full_resync
        self.has_duplicates = False
        self.loaded = 0
        self.invalid_loaded = 0
        self._materialised = False
        #: Whether the sync has a reject policy: without one nothing is left out, even
        #: members parked under a policy since removed (syncer.rejects).
        self.park = park and not full_resync
        #: Set by ``counts`` when the reject policy parked members of each kind (see
        #: syncer.rejects); with none, no query of the change set looks at syncer_rejects.
        self.parked_removals = False
        self.parked_invalid = False
        #: Set by ``load`` when the snapshot equals state: nothing was staged, nothing changes.
        self.unchanged = False
        self._check: UnchangedCheck | None = None
        # Payloads live beside the table, not in it (see PayloadSpill), found there by the
        # row's number. A row is valid exactly when its hash is set.
        self.spill = PayloadSpill()

    def close(self) -> None:
        """Drop the payload file (the table goes with its connection)."""
        self.spill.close()
        if self._check is not None:
            self._check.close()
        if self._held_file is not None:
            self._held_file.close()

    def create(self) -> None:
        self.conn.exec_driver_sql(f"DROP TABLE IF EXISTS {STAGE}")
        # INTEGER PRIMARY KEY is SQLite's rowid itself: appends with no extra index.
        number = "INTEGER" if self.dialect == "sqlite" else "BIGINT"
        self.conn.exec_driver_sql(
            f"CREATE TEMPORARY TABLE {STAGE} (rownum {number} PRIMARY KEY,"
            " key TEXT, hash BIGINT, reason TEXT)"
        )
        self.conn.exec_driver_sql(f"DROP TABLE IF EXISTS {HELD}")
        self.conn.exec_driver_sql(f"CREATE TEMPORARY TABLE {HELD} (key TEXT, grp TEXT)")

    def load(self, chunks: Iterable[EncodedChunk]) -> None:
        """Bulk-insert encoded chunks (COPY on Postgres, executemany elsewhere).

        Valid and invalid rows go in separately so no NULL is ever bound on the hot path.
        Measured alternatives that were slower on SQLite: one INSERT ... SELECT FROM
        json_each(?) per chunk, and a reader thread overlapping the inserts (the GIL is
        handed back and forth once per row).

        On SQLite, unless resyncing, chunks are first held aside while they may equal state
        (see ``syncer.unchanged``): if they do, nothing is staged and ``unchanged`` is set;
        at the first sign of a difference the held chunks are inserted and the rest follow.
        """
        check = self._check = self._unchanged_check()
        with ExitStack() as stack:
            write = self._writer(stack)
            for chunk in chunks:
                self.loaded += chunk.rows
                self.invalid_loaded += len(chunk.invalid)
                if chunk.held:
                    self._hold(chunk.held)
                if check is None:
                    write(chunk)
                elif not check.hold(chunk):  # it differs: stage what was held, then go on
                    for held in check.release():
                        write(held)
                    write(chunk)
                    check = None
            if check is not None:
                self.unchanged = check.unchanged()
                if not self.unchanged:
                    for held in check.release():
                        write(held)
        self.spill.flush()
        self._stage_held()

    def _hold(self, rows: list[tuple[str, str]]) -> None:
        """Set held-out rows aside in a file (a COPY into staging may be under way on the
        connection); ``_stage_held`` loads them once the snapshot is in."""
        if self._held_file is None:
            self._held_file = tempfile.TemporaryFile(prefix="syncer-held-")  # noqa: SIM115
            self.held_loaded = 0
        self.held_loaded += len(rows)
        # Keys hold no NUL (see normalize._key_text); the group is named by its first letter.
        self._held_file.write("".join(f"{grp[0]}{key}\0" for key, grp in rows).encode())

    def held_rows(self) -> Iterator[tuple[str, str]]:
        file = self._held_file
        if file is None:
            return
        file.seek(0)
        rest = b""
        while block := file.read(1 << 20):
            parts = (rest + block).split(b"\0")
            rest = parts.pop()
            for part in parts:
                text_ = part.decode()
                yield text_[1:], _GROUP_BY_LETTER[text_[0]]

    def _stage_held(self) -> None:
        if self._held_file is None:
            return
        if self.dialect == "postgresql":
            raw: Any = self.conn.connection.driver_connection
            with raw.cursor() as cursor, cursor.copy(f"COPY {HELD} (key, grp) FROM STDIN") as copy:
                for row in self.held_rows():
                    copy.write_row(row)
        else:
            marks = "?, ?" if self.conn.dialect.paramstyle == "qmark" else "%s, %s"
            insert: Any = self.conn.connection.cursor()
            try:
                insert.executemany(
                    f"INSERT INTO {HELD} (key, grp) VALUES ({marks})", self.held_rows()
                )
            finally:
                insert.close()
        self.conn.exec_driver_sql(f"CREATE INDEX {HELD}_key ON {HELD} (key, grp)")

    def _unchanged_check(self) -> UnchangedCheck | None:
        """Chunks are held rather than staged while they may equal state (syncer.unchanged)."""
        if self.dialect != "sqlite" or self.full_resync or self.full_check:
            return None
        return UnchangedCheck(self.conn, self.sync)

    def _writer(self, stack: ExitStack) -> Callable[[EncodedChunk], None]:
        if self.dialect == "postgresql":
            raw: Any = self.conn.connection.driver_connection
            cursor = stack.enter_context(raw.cursor())
            copy = stack.enter_context(
                cursor.copy(f"COPY {STAGE} (rownum, key, hash, reason) FROM STDIN")
            )

            def copy_rows(chunk: EncodedChunk) -> None:
                for rownum, key, digest in chunk.valid:
                    copy.write_row((rownum, key, digest, None))
                for rownum, maybe_key, reason in chunk.invalid:
                    copy.write_row((rownum, maybe_key, None, reason))

            return copy_rows
        marks = "?" if self.conn.dialect.paramstyle == "qmark" else "%s"
        numbered_sql = f"INSERT INTO {STAGE} (rownum, key, hash) VALUES ({marks}, {marks}, {marks})"
        # SQLite numbers a clean chunk's rows itself (rownum is the rowid, and every earlier
        # row is already in): one bound value fewer per row, the cheapest insert measured.
        auto_sql = f"INSERT INTO {STAGE} (key, hash) VALUES (?, ?)"
        auto = self.dialect == "sqlite"
        invalid_sql = (
            f"INSERT INTO {STAGE} (rownum, key, reason) VALUES ({marks}, {marks}, {marks})"
        )
        if auto:
            # sqlite3's executemany takes any iterator, so rows are bound straight from zip.
            sqlite_cursor: Any = self.conn.connection.cursor()
            stack.callback(sqlite_cursor.close)
            run: Callable[[str, Any], Any] = sqlite_cursor.executemany
        else:
            run = lambda sql, rows: self.conn.exec_driver_sql(sql, list(rows))  # noqa: E731

        # SQLite numbers a chunk itself only when every row before it is in: rows held out
        # (syncer.holdout) leave gaps, after which chunks are numbered explicitly.
        last = [0]

        def insert_rows(chunk: EncodedChunk) -> None:
            contiguous = last[0] == chunk.start
            last[0] = chunk.start + chunk.rows
            if chunk.held:
                numbers = [n for n, *_ in chunk.invalid]
                if chunk.keys:
                    numbers.append(max(chunk.row_numbers()))
                last[0] = max(numbers, default=chunk.start)
            if chunk.keys:
                columns = (chunk.keys, chunk.hashes)
                if auto and chunk.rownums is None and contiguous:
                    run(auto_sql, zip(*columns, strict=True))
                else:
                    run(numbered_sql, zip(chunk.row_numbers(), *columns, strict=True))
            if chunk.invalid:
                run(invalid_sql, chunk.invalid)

        return insert_rows

    def finalize(self, key_column: str) -> None:
        """Index the snapshot and mark every row of a duplicated key invalid.

        The index covers (key, hash), so the change set and the removals can be found by
        walking it beside the state's primary key (see ``counts``); duplicates are found by
        one ordered scan of it.
        """
        if self.unchanged:  # nothing staged: no index, and no duplicate (see syncer.unchanged)
            return
        if self.dialect == "sqlite":
            last = self.conn.exec_driver_sql(f"SELECT MAX(rownum) FROM {STAGE}").scalar()
            expected = self.loaded if not self.held_loaded else min(last or 0, self.loaded)
            if (last or 0) != expected:  # the rowid numbering in _writer went wrong
                raise RuntimeError(f"staging numbered {last} rows, {self.loaded} were read")
        self.conn.exec_driver_sql(f"CREATE INDEX {STAGE}_key ON {STAGE} (key, hash)")
        if self.dialect == "postgresql":
            self.conn.exec_driver_sql(f"ANALYZE {STAGE}")
        self.has_duplicates = (
            self.conn.exec_driver_sql(
                f"SELECT 1 FROM (SELECT key FROM {STAGE} WHERE key IS NOT NULL"
                " GROUP BY key HAVING COUNT(*) > 1) AS dups LIMIT 1"
            ).first()
            is not None
        )
        if self.has_duplicates:
            self.conn.execute(
                text(
                    f"UPDATE {STAGE} SET hash = NULL,"
                    " reason = 'row ' || CAST(rownum AS TEXT) || ': duplicate key (' || :col || ')'"
                    f" WHERE key IN (SELECT key FROM {STAGE} WHERE key IS NOT NULL"
                    " GROUP BY key HAVING COUNT(*) > 1)"
                ),
                {"col": key_column},
            )

    def counts(self) -> DiffCounts:
        """Materialise the change set (one pass of staging against state) and count it.

        Later pages read only ``syncer_changes``, so a 1% churn does not scan the whole
        snapshot once per operation.
        """
        self.conn.exec_driver_sql(f"DROP TABLE IF EXISTS {CHANGES}")
        # Each change carries what sending it needs (its row, new hash, and the state row's
        # id, hash and flag before this run), so pages, marks and confirmations read this
        # table alone, by key range, instead of joining staging and state for every page.
        self.conn.exec_driver_sql(
            f"CREATE TEMPORARY TABLE {CHANGES} (key TEXT PRIMARY KEY, kind TEXT NOT NULL,"
            " rownum BIGINT, hash BIGINT, destination_id TEXT, old_hash BIGINT, unsure INTEGER)"
        )
        if self.unchanged:
            self._materialised = True
            n = self.loaded - self.held_loaded
            return DiffCounts(
                source_rows=self.loaded, unchanged=n, members_before=n, held=self.held_loaded
            )
        members, unconfirmed = self.conn.execute(
            text(
                "SELECT COUNT(*), COALESCE(SUM(CASE WHEN unsure <> 0 THEN 1 ELSE 0 END), 0)"
                " FROM syncer_records WHERE sync = :sync"
            ),
            {"sync": self.sync},
        ).one()
        members, unconfirmed = int(members), int(unconfirmed)
        if not members:
            self._all_new()  # a first run: nothing in state to compare with
        elif self.dialect == "sqlite" and not self.full_resync:
            self._merge_changes()
        else:
            self._join_changes()
        parked_removals = parked_invalid = 0
        if self.park and self._any_parked():
            self._park_changes()
        if self.dialect == "postgresql":
            self.conn.exec_driver_sql(f"ANALYZE {CHANGES}")
        found: dict[str, int] = dict(
            self.conn.execute(text(f"SELECT kind, COUNT(*) FROM {CHANGES} GROUP BY kind")).all()
        )
        # Held-out rows are in the query's rows but not in the snapshot the diff compares.
        total = self.loaded - self.held_loaded
        invalid = self.invalid_loaded
        if self.has_duplicates:
            invalid = int(
                self.conn.exec_driver_sql(
                    f"SELECT COUNT(*) FROM {STAGE} WHERE reason IS NOT NULL"
                ).scalar_one()
            )
        sel = self.selection
        add = sum(int(found.get(k, 0)) for k in sel["add"] or ())
        update = sum(int(found.get(k, 0)) for k in sel["update"] or ())
        parked = int(found.get(PARKED, 0))
        remove = 0
        if sel["remove"] is not None and members:
            new = int(found.get("new", 0))
            if self.has_duplicates or PARKED not in found:
                valid_synced = total - invalid - new
            else:  # parked rows were new, unsure or changed: find how many were new
                valid_synced = total - invalid - new - self._count_parked_new()
            remove = self._count_gone(members, valid_synced, invalid)
            if remove and self.park and self._any_parked(removals=True):
                parked_removals = self._count_parked_removals()
                self.parked_removals = parked_removals > 0
                remove -= parked_removals
        if invalid and self.park and self._any_parked(invalid=True):
            parked_invalid = self._count_parked_invalid()
            self.parked_invalid = parked_invalid > 0
        self._materialised = True
        return DiffCounts(
            source_rows=self.loaded,
            add=add,
            update=update,
            remove=remove,
            unchanged=total - invalid - add - update - parked,
            invalid=invalid - parked_invalid,
            members_before=members,
            unconfirmed=unconfirmed,
            parked=parked + parked_removals + parked_invalid,
            parked_invalid=parked_invalid,
            held=self.held_loaded,
        )

    # -- the reject policy's parked members (syncer.rejects) --------------------------------

    def _any_parked(self, *, removals: bool = False, invalid: bool = False) -> bool:
        """Whether the sync has parked members (of removals, or invalid rows, if asked): one
        probe of its few syncer_rejects rows, so a sync with none pays nothing more."""
        which = " AND operation <> 'remove' AND outcome <> 'invalid'"
        if removals:
            which = " AND operation = 'remove'"
        elif invalid:
            which = " AND outcome = 'invalid'"
        sql = (
            "SELECT 1 FROM syncer_rejects WHERE sync = :sync AND parked_at IS NOT NULL"
            f"{which} LIMIT 1"
        )
        return self.conn.execute(text(sql), {"sync": self.sync}).first() is not None

    def sent_kinds(self) -> tuple[Kind, ...]:
        """The kinds of changes this run sends as adds or updates."""
        return tuple(
            dict.fromkeys((*(self.selection["add"] or ()), *(self.selection["update"] or ())))
        )

    def _park_changes(self) -> None:
        """Changes whose member is parked with the payload hash it still has: kind
        ``parked``, which no operation sends (pages, spans and counts all go by kind). A
        set-based join from the sync's few parked rows into the change set's key index."""
        wanted = ", ".join(f"'{k}'" for k in self.sent_kinds())
        self.conn.execute(
            text(
                f"UPDATE {CHANGES} SET kind = '{PARKED}' WHERE kind IN ({wanted}) AND key IN ("
                f" SELECT j.key FROM syncer_rejects j JOIN {CHANGES} c"
                " ON c.key = j.key AND c.hash = j.hash"
                " WHERE j.sync = :sync AND j.parked_at IS NOT NULL"
                " AND j.operation <> 'remove' AND j.outcome <> 'invalid')"
            ),
            {"sync": self.sync},
        )

    def _count_parked_new(self) -> int:
        """Parked changes that have no state row (they would have been ``new``)."""
        return int(
            self.conn.execute(
                text(f"SELECT COUNT(*) FROM {CHANGES} WHERE kind = '{PARKED}' AND unsure IS NULL")
            ).scalar_one()
        )

    def _count_parked_removals(self) -> int:
        """Synced members out of the snapshot whose removal is parked."""
        return int(
            self.conn.execute(
                text(
                    "SELECT COUNT(*) FROM syncer_rejects j JOIN syncer_records r"
                    " ON r.sync = j.sync AND r.key = j.key"
                    " WHERE j.sync = :sync AND j.parked_at IS NOT NULL"
                    f" AND j.operation = 'remove' AND NOT EXISTS"
                    f" (SELECT 1 FROM {STAGE} s WHERE s.key = j.key)"
                ),
                {"sync": self.sync},
            ).scalar_one()
        )

    def _parked_invalid_match(self, row: str) -> str:
        """SQL true when staged invalid row ``row`` is parked: its member is parked as
        invalid for the same reason (row numbers aside: see ``same_reason_sql``)."""
        return (
            "EXISTS (SELECT 1 FROM syncer_rejects j WHERE j.sync = :sync AND j.key = "
            f"{row}.key AND j.parked_at IS NOT NULL AND j.outcome = 'invalid' AND "
            f"{same_reason_sql(f'{row}.reason', 'j.reason', self.dialect)})"
        )

    def _count_parked_invalid(self) -> int:
        """Invalid staged rows that are parked: from the sync's few parked rows into
        staging's key index, not a scan of the snapshot."""
        same = same_reason_sql("s.reason", "j.reason", self.dialect)
        return int(
            self.conn.execute(
                text(
                    f"SELECT COUNT(*) FROM syncer_rejects j JOIN {STAGE} s ON s.key = j.key"
                    " WHERE j.sync = :sync AND j.parked_at IS NOT NULL"
                    f" AND j.outcome = 'invalid' AND s.hash IS NULL AND {same}"
                ),
                {"sync": self.sync},
            ).scalar_one()
        )

    def _merge_changes(self) -> None:
        """New and changed rows as staged (key, hash) pairs EXCEPT the state's confirmed
        ones, both in key order: SQLite merges the two index scans, three times cheaper than
        probing the state once per staged row. Only the few rows found are then looked up to
        tell new, unsure and changed apart. (Postgres hash-joins well, and a full resync
        wants the unchanged rows too.)
        """
        self.conn.execute(
            text(
                f"INSERT INTO {CHANGES} ({_CHANGE_COLUMNS}) SELECT staged.key,"
                f" CASE r.unsure WHEN {MAYBE_ABSENT} THEN 'unsure' WHEN {CONFIRMED} THEN 'changed'"
                f" WHEN {MAYBE_STALE} THEN 'changed' ELSE 'new' END,"
                " s.rownum, staged.hash, r.destination_id, r.hash, r.unsure FROM ("
                f" SELECT key, hash FROM {STAGE} WHERE hash IS NOT NULL"
                " EXCEPT SELECT key, hash FROM syncer_records"
                f" WHERE sync = :sync AND unsure = {CONFIRMED}"
                # The ORDER BY is what makes it a merge. SQLite may omit an ORDER BY from a
                # FROM-clause subquery whose order looks unused, never one with a LIMIT
                # (3.40 and 3.51 merge either way).
                # CROSS JOIN keeps the few rows found outermost: each is then one lookup in
                # staging's (key, hash) index and one in state.
                f" ORDER BY 1, 2 LIMIT -1) AS staged CROSS JOIN {STAGE} s"
                " LEFT JOIN syncer_records r ON r.sync = :sync AND r.key = staged.key"
                " WHERE s.key = staged.key AND s.hash = staged.hash"
            ),
            {"sync": self.sync},
        )

    def _all_new(self) -> None:
        """Every valid staged row as new, in key order, when state holds none of the sync."""
        self.conn.execute(
            text(
                f"INSERT INTO {CHANGES} ({_CHANGE_COLUMNS}) SELECT key, 'new', rownum, hash,"
                f" NULL, NULL, NULL FROM {STAGE} WHERE hash IS NOT NULL ORDER BY key"
            )
        )

    def _join_changes(self) -> None:
        """Every staged row classified against state by a join (see ``_merge_changes``)."""
        kinds = ["'new'", "'unsure'", "'changed'"] + (["'same'"] if self.full_resync else [])
        self.conn.execute(
            text(
                f"INSERT INTO {CHANGES} ({_CHANGE_COLUMNS}) SELECT {_CHANGE_COLUMNS} FROM ("
                " SELECT s.key AS key, CASE WHEN r.key IS NULL THEN 'new'"
                f" WHEN r.unsure = {MAYBE_ABSENT} THEN 'unsure'"
                f" WHEN r.unsure = {MAYBE_STALE} OR r.hash <> s.hash THEN 'changed'"
                " ELSE 'same' END AS kind, s.rownum AS rownum, s.hash AS hash,"
                " r.destination_id AS destination_id, r.hash AS old_hash, r.unsure AS unsure"
                f" FROM {STAGE} s LEFT JOIN syncer_records r ON r.sync = :sync AND r.key = s.key"
                " WHERE s.hash IS NOT NULL) AS classified"
                f" WHERE kind IN ({', '.join(kinds)})"
            ),
            {"sync": self.sync},
        )

    def _count_gone(self, members: int, valid_synced: int, invalid: int) -> int:
        """Synced keys absent from the snapshot (valid or not): what a removing mode removes."""
        sql = (
            "SELECT COUNT(*) FROM syncer_records r WHERE r.sync = :sync AND NOT EXISTS"
            f" (SELECT 1 FROM {STAGE} s WHERE s.key = r.key)"
        )
        if not self.has_duplicates:
            # Keys are unique in staging, so every synced key that is present was matched once:
            # by a valid row (counted while materialising) or by an invalid one (few; counted).
            invalid_synced = 0
            if invalid:
                invalid_synced = int(
                    self.conn.execute(
                        text(
                            f"SELECT COUNT(*) FROM {STAGE} s JOIN syncer_records r"
                            " ON r.sync = :sync AND r.key = s.key WHERE s.hash IS NULL"
                        ),
                        {"sync": self.sync},
                    ).scalar_one()
                )
            return members - valid_synced - invalid_synced
        return int(self.conn.execute(text(sql), {"sync": self.sync}).scalar_one())

    def _upsert_page(self, operation: Operation, after: str | None, limit: int) -> list[Any]:
        kinds = self.selection[operation]
        assert kinds, operation
        assert self._materialised, "counts() materialises the change set first"
        keyset = "c.key > :after AND" if after is not None else ""
        wanted = ", ".join(f"'{k}'" for k in kinds)
        return self._page(
            ("c.key", "c.rownum", "c.hash", "c.destination_id", "c.old_hash", "c.unsure"),
            f" FROM {CHANGES} c WHERE {keyset} c.kind IN ({wanted}) ORDER BY c.key LIMIT :limit",
            {"after": after, "limit": limit},
        )

    def _remove_page(self, after: str | None, limit: int) -> list[Any]:
        if self.dialect == "sqlite":
            # The state's keys EXCEPT the staged ones, a merge of two index scans from
            # ``after`` on (see _merge_changes); it stops as soon as the page is full.
            after_state = "AND key > :after" if after is not None else ""
            after_stage = "WHERE key > :after" if after is not None else ""
            parked = ""
            if self.parked_removals:
                parked = (
                    " EXCEPT SELECT key FROM syncer_rejects WHERE sync = :sync"
                    f" AND parked_at IS NOT NULL AND operation = 'remove' {after_state}"
                )
            return self._page(
                ("g.key", "r.destination_id", "r.hash", "r.unsure"),
                # The state row by a lookup per found key: CROSS JOIN keeps the page outermost
                # (as a plain join, SQLite 3.51 scans all of the sync's state once per page,
                # 0.1 s at 1M).
                " FROM ("
                f" SELECT key FROM syncer_records WHERE sync = :sync {after_state}"
                f" EXCEPT SELECT key FROM {STAGE} {after_stage}{parked}"
                " ORDER BY 1 LIMIT :limit) AS g"
                " CROSS JOIN syncer_records r WHERE r.sync = :sync AND r.key = g.key"
                " ORDER BY g.key",
                {"sync": self.sync, "after": after, "limit": limit},
            )
        keyset = "AND r.key > :after" if after is not None else ""
        parked = ""
        if self.parked_removals:
            parked = (
                " AND NOT EXISTS (SELECT 1 FROM syncer_rejects j WHERE j.sync = :sync"
                " AND j.key = r.key AND j.parked_at IS NOT NULL AND j.operation = 'remove')"
            )
        return self._page(
            ("r.key", "r.destination_id", "r.hash", "r.unsure"),
            " FROM syncer_records r"
            f" WHERE r.sync = :sync {keyset} AND NOT EXISTS"
            f" (SELECT 1 FROM {STAGE} s WHERE s.key = r.key){parked}"
            " ORDER BY r.key LIMIT :limit",
            {"sync": self.sync, "after": after, "limit": limit},
        )

    def _page(self, columns: tuple[str, ...], rest: str, params: dict[str, Any]) -> list[Any]:
        """``SELECT columns rest`` as a list of rows, the first column being the page's key.

        On SQLite the page comes back as one JSON array built inside the database: the
        driver releases the interpreter for every row it steps through, and while senders
        are busy each of those costs a wait to get it back (measured: pages read 3.5 times
        slower beside one busy Python thread), so one step per page is cheaper than 500
        (measured there: 3.8 s instead of 4.5 s for 200,000 rows).
        """
        named = ", ".join(f"{column} AS c{i}" for i, column in enumerate(columns))
        if self.dialect != "sqlite":
            return _fetch(self.conn.execute(text(f"SELECT {named}{rest}"), params))
        items = ", ".join(f"p.c{i}" for i in range(len(columns)))
        sql = f"SELECT json_group_array(json_array({items})) FROM (SELECT {named}{rest}) AS p"
        rows: list[Any] = orjson.loads(self.conn.execute(text(sql), params).scalar_one())
        rows.sort(key=_first)  # already in key order in practice; SQLite does not promise it
        return rows

    def batches(
        self, operation: Operation, batch_size: int, expected: int | None = None
    ) -> Iterator[ChangeBatch]:
        """Pages of the change set for one operation, in key order; commit freely between them.

        ``expected`` (from ``counts()``) lets the scan stop once every change was read.
        """
        if self.selection[operation] is None or expected == 0:
            return
        remaining = expected if expected is not None else -1
        after: str | None = None
        if operation == "remove":
            while remaining and (rows := self._remove_page(after, batch_size)):
                span = (after, rows[-1][0])
                after = rows[-1][0]
                remaining -= len(rows)
                yield ChangeBatch("remove", rows, _removals, span)
            return
        loads, names, read = orjson.loads, self.field_names, self.spill.read

        def build(rows: list[Any]) -> list[Record]:
            # One JSON decode for the batch's payloads, not one per record.
            values = loads(b"[%b]" % b",".join([read(row[1]) for row in rows]))
            return [
                Record(row[0], dict(zip(names, fields, strict=True)), row[3])
                for row, fields in zip(rows, values, strict=True)
            ]

        kinds = self.selection[operation] or ()
        while remaining and (rows := self._upsert_page(operation, after, batch_size)):
            span = (after, rows[-1][0])
            after = rows[-1][0]
            remaining -= len(rows)
            yield ChangeBatch(operation, rows, build, span, kinds)

    def sample_keys(self, operation: Operation, limit: int = 5) -> list[str]:
        if self.selection[operation] is None or self.unchanged:
            return []
        if operation == "remove":
            return [row[0] for row in self._remove_page(None, limit)]
        return [row[0] for row in self._upsert_page(operation, None, limit)]

    def invalid_rows(self, page: int = 5_000) -> Iterator[list[tuple[str | None, str]]]:
        """The invalid rows as (key, reason), in row order; those parked are left out."""
        after = 0
        parked = f" AND NOT {self._parked_invalid_match('s')}" if self.parked_invalid else ""
        while True:
            rows = list(
                self.conn.execute(
                    text(
                        f"SELECT s.rownum, s.key, s.reason FROM {STAGE} s"
                        f" WHERE s.reason IS NOT NULL AND s.rownum > :after{parked}"
                        " ORDER BY s.rownum LIMIT :limit"
                    ),
                    {"after": after, "limit": page, "sync": self.sync},
                )
            )
            if not rows:
                return
            after = rows[-1][0]
            yield [(key, reason) for _, key, reason in rows]


def same_reason_sql(left: str, right: str, dialect: str) -> str:
    """SQL true when two invalid-row reasons are the same but for their ``row N: `` prefix
    (a row's number moves as rows before it come and go; see ``strip_row``)."""
    return f"{_strip_row_sql(left, dialect)} = {_strip_row_sql(right, dialect)}"


def _strip_row_sql(column: str, dialect: str) -> str:
    find = "strpos" if dialect == "postgresql" else "instr"
    return (
        f"(CASE WHEN {column} LIKE 'row %: %'"
        f" THEN substr({column}, {find}({column}, ': ') + 2) ELSE {column} END)"
    )


def strip_row(reason: str | None) -> str | None:
    """An invalid-row reason without its ``row N: `` prefix, as ``same_reason_sql`` reads it."""
    if reason is None or not reason.startswith("row "):
        return reason
    at = reason.find(": ")
    return reason[at + 2 :] if at >= 4 else reason


def _first(row: list[Any]) -> Any:
    return row[0]


def _removals(rows: list[Any]) -> list[Record]:
    return [Record(key, {}, dest) for key, dest, _, _ in rows]


def _fetch(result: Any) -> list[Any]:
    """A page's rows as the driver's tuples: SQLAlchemy's Row objects cost more per row than
    the query itself (a third of reading a 1M-member first run's pages)."""
    rows: list[Any] = result.cursor.fetchall()
    result.close()
    return rows


def span_select(
    batch: ChangeBatch, sync: str, with_state: bool = False
) -> tuple[str, dict[str, Any]]:
    """A SELECT of exactly an add or update ``batch``'s records from the staging tables, as
    ``key`` and ``hash`` (and, ``with_state``, the state row's ``unsure`` before this run
    touched it), with its parameters; ``batch.span`` must be set.

    The change set is fixed for the run and pages are taken in key order, so the rows of a
    page's kinds between the key it started after and its last key are the page itself.
    (Removals are named by key instead: see ``syncer.ledger``.)
    """
    assert batch.span is not None, "a span is only known for pages read from staging"
    assert batch.operation != "remove", "removals are not a span of the change set"
    after, last = batch.span
    params: dict[str, Any] = {"sync": sync, "after": after, "last": last}
    start = "c.key > :after AND" if after is not None else ""
    wanted = ", ".join(f"'{k}'" for k in batch.kinds)
    unsure = "c.unsure" if with_state else "NULL"
    return (
        f"SELECT c.key AS key, c.hash AS hash, {unsure} AS unsure"
        f" FROM {CHANGES} c WHERE {start} c.key <= :last AND c.kind IN ({wanted})",
        params,
    )
