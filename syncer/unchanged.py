"""The no-change short-cut: a snapshot equal to the acknowledged state is never staged.

Most runs over a large segment change nothing, and staging it (insert, index, diff) costs
more than reading it. So while the chunks arrive, ``UnchangedCheck`` holds them in a file
instead of inserting them and compares the snapshot with the sync's state:

* each chunk: a probe of up to ``SAMPLE`` of its rows, spread over it, against state (a
  missing key or another hash is certain doubt: a 1% churn is seen within the first chunk or
  two, and staging then goes on overlapping the read as before, the held chunks loaded
  first);
* both sides: the count of rows and an order-independent digest, the sum modulo 2**64 of
  XXH3-64 of each row's key (UTF-8) seeded with its payload hash (as an unsigned 64-bit
  integer), so a hash counts only beside its own key. State is read in key order one page
  per chunk, so the run's process, otherwise waiting on the reader, computes it meanwhile.

The snapshot is unchanged only when no row was invalid, no state row is unsure (in flight
or unconfirmed), the counts are equal and so are the digests. Equal counts and digests mean
equal multisets of (key, hash) but for a coincidence of two sums of 64-bit pseudo-random
values (a chance of the order of 2**-64, the odds the diff already takes that a changed
payload keeps its hash); since state keys are unique, the snapshot then has no duplicate
either. Any doubt stages the held chunks and runs the ordinary diff, so the counts are the
same either way.
"""

from __future__ import annotations

import operator
import struct
import tempfile
from array import array
from collections.abc import Iterable, Iterator
from itertools import repeat
from typing import Any

from sqlalchemy import Connection
from xxhash import xxh3_64_intdigest

from syncer.normalize import EncodedChunk
from syncer.state import CONFIRMED

#: Rows of each chunk probed against state as it arrives.
SAMPLE = 256
_SHIFT = 1 << 63
_MASK = (1 << 64) - 1
_HEAD = struct.Struct("<qqqq")  # a held chunk: start, rows, length of its keys, numbered


def digest(keys: list[bytes], hashes: Iterable[int]) -> int:
    """The order-independent digest of rows (key as UTF-8, payload hash), not yet reduced
    modulo 2**64."""
    seeds = map(operator.add, hashes, repeat(_SHIFT))  # signed 64-bit to XXH3's unsigned seed
    return sum(map(xxh3_64_intdigest, keys, seeds))


class UnchangedCheck:
    """Holds a run's chunks and decides whether they equal the sync's state (SQLite state)."""

    def __init__(self, conn: Connection, sync: str) -> None:
        self.sync = sync
        self._cursor: Any = conn.connection.cursor()
        # Owned by the check and closed by ``release`` or ``close``.
        self._file = tempfile.TemporaryFile(prefix="syncer-held-chunks-")  # noqa: SIM115
        self.doubt = False
        self.rows = 0
        self._digest = 0
        self._state_rows = 0
        self._state_digest = 0
        self._after = ""  # before every key: keys are never empty
        self._state_done = False

    def hold(self, chunk: EncodedChunk) -> bool:
        """Keep ``chunk`` aside; False, keeping nothing, once the snapshot may differ (then
        ``release`` the chunks held so far, and stage this one after them)."""
        keys = chunk.keys
        if self.doubt or chunk.invalid or not self._sample_matches(keys, chunk.hashes):
            self.doubt = True
            return False
        self._state_page(max(len(keys), 1000) * 2)  # keeps pace with the chunks
        if self.doubt:
            return False
        blob = "\0".join(keys).encode()  # keys hold no NUL (see normalize._key_text)
        utf8 = blob.split(b"\0") if keys else []
        if len(utf8) != len(keys):  # one did after all: doubt, rather than split it
            self.doubt = True
            return False
        numbered = chunk.rownums is not None  # rows held out left gaps (syncer.holdout)
        self._file.write(_HEAD.pack(chunk.start, len(keys), len(blob), numbered))
        self._file.write(blob)
        self._file.write(array("q", chunk.hashes))
        if numbered:
            self._file.write(array("q", chunk.rownums or ()))
        self.rows += len(keys)
        self._digest += digest(utf8, chunk.hashes)
        return True

    def unchanged(self) -> bool:
        """After the last chunk: whether the snapshot equals state."""
        while not (self.doubt or self._state_done):
            self._state_page(50_000)
        return (
            not self.doubt
            and self.rows == self._state_rows
            and self._digest & _MASK == self._state_digest & _MASK
        )

    def release(self) -> Iterator[EncodedChunk]:
        """The held chunks, in the order they came; the file is closed after the last."""
        file = self._file
        file.seek(0)
        while head := file.read(_HEAD.size):
            start, rows, size, numbered = _HEAD.unpack(head)
            keys = file.read(size).decode().split("\0") if rows else []
            hashes = array("q")
            hashes.frombytes(file.read(8 * rows))
            rownums = None
            if numbered:
                numbers = array("q")
                numbers.frombytes(file.read(8 * rows))
                rownums = numbers.tolist()
            yield EncodedChunk(start, keys, hashes.tolist(), rownums, [])
        self.close()

    def close(self) -> None:
        self._file.close()
        self._cursor.close()

    def _sample_matches(self, keys: list[str], hashes: list[int]) -> bool:
        if not keys:
            return True
        step = max(1, len(keys) // SAMPLE)
        wanted = dict(zip(keys[::step], hashes[::step], strict=True))
        marks = ", ".join("?" * len(wanted))
        found = self._cursor.execute(
            f"SELECT key, hash FROM syncer_records WHERE sync = ? AND unsure = {CONFIRMED}"
            f" AND key IN ({marks})",
            (self.sync, *wanted),
        ).fetchall()
        return len(found) == len(wanted) and dict(found) == wanted

    def _state_page(self, size: int) -> None:
        """The next ``size`` state rows in key order, folded into the state's count and digest.

        The page's last key is found first (a scan of keys alone), then its keys and hashes
        come back as one text each, in the same row order: less than half the cost of
        fetching a million rows one by one."""
        if self._state_done:
            return
        cursor, sync, after = self._cursor, self.sync, self._after
        end = cursor.execute(
            "SELECT key FROM syncer_records WHERE sync = ? AND key > ? ORDER BY key"
            " LIMIT 1 OFFSET ?",
            (sync, after, size - 1),
        ).fetchone()
        self._state_done = end is None
        keys, hashes, count, unsure = cursor.execute(
            "SELECT group_concat(key, char(0)), group_concat(hash), count(*),"
            f" coalesce(sum(unsure <> {CONFIRMED}), 0) FROM syncer_records"
            " WHERE sync = ? AND key > ?" + ("" if end is None else " AND key <= ?"),
            (sync, after) if end is None else (sync, after, end[0]),
        ).fetchone()
        if not count:
            return
        utf8 = keys.encode().split(b"\0")
        if unsure or len(utf8) != count:  # in flight or unconfirmed; or a key holding a NUL
            self.doubt = True
            return
        self._after = end[0] if end is not None else ""
        self._state_rows += count
        self._state_digest += digest(utf8, map(int, hashes.split(",")))
