"""The warehouse's rows, encoded, chunk by chunk: read in this process or in a forked reader.

Reading, encoding and the staging insert each cost about a third of a run over a large,
mostly unchanged segment, and all three need the GIL, so threads cannot overlap them. A
forked child can: it reads and encodes (payloads straight into the run's spill file, which it
shares) while this process inserts the previous chunk. Chunks cross a pipe as pickles of plain
lists, and the pipe holds at most about three chunks, so memory stays flat in both processes.

The child is used on Linux only (fork is the cheap, well-behaved start there), and only for
warehouses that another process may open at the same time: SQLite files and PostgreSQL. DuckDB
locks its file to one process, and an in-memory database exists only in this one.
"""

from __future__ import annotations

import ctypes
import fcntl
import gc
import multiprocessing
import os
import pickle
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from syncer.errors import ConfigError, SyncerError, TransientError, where
from syncer.forking import alone, fork_lock
from syncer.holdout import Assignment
from syncer.log import get_logger
from syncer.mapping import SyncDefinition
from syncer.normalize import EncodedChunk, PayloadSpill, RowEncoder
from syncer.warehouse import stream

log = get_logger(__name__)

_ERRORS: dict[str, type[SyncerError]] = {
    "ConfigError": ConfigError,
    "TransientError": TransientError,
}


class ReaderCrashed(RuntimeError):
    """The reader process raised something unexpected (a bug); the message says where."""


def can_fork_reader(url: str) -> bool:
    """Whether the warehouse at ``url`` may be read from a forked child process."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        parsed = make_url(url)
    except ArgumentError:
        return False  # the in-process path reports the bad URL
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.database not in (None, "", ":memory:") and "mode=memory" not in str(parsed)
    return backend == "postgresql"


@dataclass(frozen=True, slots=True)
class ReadJob:
    """What to read and how to encode it: the same for this process and a forked reader."""

    url: str = field(repr=False)  # may carry the warehouse password
    definition: SyncDefinition
    origin: str
    batch_size: int
    hash_keys: bool = False
    #: The holdout splits (syncer.holdout); held-out rows arrive in ``EncodedChunk.held``.
    assignment: Assignment | None = None

    @contextmanager
    def chunks(
        self,
        spill: PayloadSpill,
        *,
        fresh: bool = False,
        on_connect: Callable[[], object] | None = None,
    ) -> Iterator[Iterator[EncodedChunk]]:
        """Stream the query and encode it chunk by chunk, payloads written to ``spill``."""
        query = self.definition.source.query
        with stream(
            self.url, query, self.batch_size, self.origin, fresh=fresh, on_connect=on_connect
        ) as (columns, partitions):
            encoder = RowEncoder(self.definition, columns, self.origin, hash_keys=self.hash_keys)
            if self.assignment is not None and self.assignment.active:
                encoder.hold_out(self.assignment.grouper())
            yield _encode(encoder, partitions, spill)


@contextmanager
def encoded_chunks(
    job: ReadJob, spill: PayloadSpill, *, fork: bool = True
) -> Iterator[Iterator[EncodedChunk]]:
    """Yield an iterator of encoded chunks of the sync's query, payloads written to ``spill``.

    Errors are the same either way: ConfigError for a query or mapping the warehouse refuses,
    TransientError for a warehouse that cannot be reached or drops mid-stream. A reader is
    forked only while this is the process's one run (see ``syncer.forking``); one that cannot
    be started, or has not connected within ``READY_TIMEOUT`` seconds, is given up and the
    rows are read in-process.
    """
    if fork and can_fork_reader(job.url) and alone():
        reader = _Reader.start(job, spill)
        if reader is not None:
            try:
                yield reader.chunks()
            finally:
                reader.stop()
            return
        spill.reset()  # a reader given up (and killed) may have written a chunk first
    with job.chunks(spill) as chunks:
        yield chunks


def _encode(
    encoder: RowEncoder, partitions: Iterator[Sequence[Sequence[Any]]], spill: PayloadSpill
) -> Iterator[EncodedChunk]:
    start = 0
    for part in partitions:
        yield encoder.encode_chunk(part, start, spill)
        start += len(part)


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

#: Seconds a forked reader may take to connect to the warehouse before it is given up.
READY_TIMEOUT = 15.0
_READY = pickle.dumps(("ready",))


class _Reader:
    """The parent's side of a forked reader: its process and the pipe's reading end."""

    def __init__(self, child: Any, receiver: Any, origin: str, spill: PayloadSpill) -> None:
        self.child, self.receiver, self.origin, self.spill = child, receiver, origin, spill
        self.first: tuple[Any, ...] | None = None

    @classmethod
    def start(cls, job: ReadJob, spill: PayloadSpill) -> _Reader | None:
        """Fork the reader and wait until it has connected (or failed to); None if it could
        not be started or hangs."""
        context = multiprocessing.get_context("fork")
        receiver, sender = context.Pipe(duplex=False)
        _widen(receiver)
        child = context.Process(
            target=_child,
            args=(sender, os.getpid(), job, spill),
            name="syncer-reader",
            daemon=True,
        )
        try:
            with fork_lock:  # no thread of ours is inside SQLite while we fork
                child.start()
        except (AssertionError, OSError) as exc:
            # A daemonic parent (some worker pools) may not have children; a fork can fail
            # for want of memory or processes. Either way the rows are read in-process.
            receiver.close()
            sender.close()
            log.warning("reader.not_started", error=type(exc).__name__, fallback="in-process")
            return None
        sender.close()
        reader = cls(child, receiver, job.origin, spill)
        if not receiver.poll(READY_TIMEOUT):
            reader.stop()
            log.warning("reader.stuck", timeout_s=READY_TIMEOUT, fallback="in-process")
            return None
        message = reader.receive()
        if message[0] != "ready":
            reader.first = message  # an error: raised when the chunks are read
        return reader

    def receive(self) -> tuple[Any, ...]:
        try:
            message: tuple[Any, ...] = pickle.loads(self.receiver.recv_bytes())
        except EOFError:
            self.child.join(5)
            raise TransientError(
                f"{self.origin}: the warehouse reader process stopped unexpectedly"
                f" (exit code {self.child.exitcode})"
            ) from None
        return message

    def chunks(self) -> Iterator[EncodedChunk]:
        while True:
            message, self.first = self.first or self.receive(), None
            kind = message[0]
            if kind == "chunk":
                yield EncodedChunk(*message[1:])
            elif kind == "done":
                self.spill.size, self.spill.rows = message[1:]
                return
            elif kind in _ERRORS:
                raise _ERRORS[kind](message[1])
            else:
                raise ReaderCrashed(f"warehouse reader: {message[1]}")

    def stop(self) -> None:
        self.receiver.close()  # a child still writing gets EPIPE and stops
        if self.child.is_alive():
            self.child.kill()
        self.child.join()


def _child(sender: Any, parent: int, job: ReadJob, spill: PayloadSpill) -> None:
    """Runs in the forked reader. It touches nothing the parent owns but the spill's file
    descriptor and the pipe: its own warehouse engine, no logging, and no garbage collection
    (which could finalise a parent connection's copy); it leaves by ``os._exit``."""
    gc.disable()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it kills us if needed
    _die_with_parent(parent)
    code = 0
    try:
        with job.chunks(spill, fresh=True, on_connect=lambda: sender.send_bytes(_READY)) as chunks:
            for chunk in chunks:
                # The chunk's fields in order: EncodedChunk(*message[1:]) rebuilds it.
                message = ("chunk", *(getattr(chunk, name) for name in EncodedChunk.__slots__))
                sender.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))
        spill.flush()  # every payload on disk before the parent may read one
        sender.send_bytes(pickle.dumps(("done", spill.size, spill.rows)))
    except (BrokenPipeError, ConnectionResetError):
        code = 1  # the parent stopped listening: nothing left to do
    except SyncerError as exc:
        kind = "ConfigError" if isinstance(exc, ConfigError) else "TransientError"
        code = _send_quietly(sender, (kind, str(exc)))
    except BaseException as exc:  # a bug: tell the parent where, then leave
        code = _send_quietly(sender, ("crash", where(exc)))
    os._exit(code)


#: The pipe's capacity asked for (Linux's limit for an unprivileged process, by default):
#: about three chunks of keys and hashes. At the default 64 KiB, a fifth of one, the reader
#: waits in every send until this process has taken the whole chunk.
PIPE_BYTES = 1 << 20


def _widen(receiver: Any) -> None:
    with suppress(OSError):  # the limit may be lower: the pipe stays as it was
        fcntl.fcntl(receiver.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this process when its parent dies (even by SIGKILL), so a reader
    stuck in a long query does not outlive its run."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(1)


def _send_quietly(sender: Any, message: tuple[str, str]) -> int:
    with suppress(OSError):
        sender.send_bytes(pickle.dumps(message))
    return 1
