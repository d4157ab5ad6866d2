"""Sending: a run's changes to the destination in batch pages, several in flight.

Pages of the change set (up to PAGE_BATCHES batches) are read and state is committed on the
run's thread (one database connection); worker threads build each batch's records and talk
to the destination, paced by the account's rate limiter. A page is read and marked in
flight in one transaction with the answers received since the previous page, committed
before its first batch leaves (syncer.recorder.commit); answers are never counted before
that commit. A batch the destination refuses as a whole is halved until the records it
refuses are found, so the good ones still land. Retries are syncer.retry's.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager

import httpx

from syncer import recorder
from syncer.connector import (
    BatchResult,
    Connector,
    Operation,
    Outcome,
    Record,
    effective_limits,
    join_outcomes,
)
from syncer.diff import ChangeBatch, DiffCounts, Staging
from syncer.errors import BatchRejected, Interrupted, SyncerError, TransientError
from syncer.recorder import Answered
from syncer.retry import RetryPolicy, guarded
from syncer.runcontext import RunContext

#: The order a run sends in.
OPERATIONS: tuple[Operation, ...] = ("add", "update", "remove")


def send_all(run: RunContext, staging: Staging, counts: DiffCounts) -> None:
    """Send every change, several batches in flight, committing each as it is answered.

    Raises Interrupted when a stop request or a lost lease ended it early (acknowledged
    changes are saved), and the first SyncerError a batch raised (auth, config, a crash).
    """
    planned = {"add": counts.add, "update": counts.update, "remove": counts.remove}
    progress = run.progress
    with prompt_handoffs(), run.connector() as connector:
        _, concurrency = effective_limits(connector)
        # Retried like a batch: it may ask a token endpoint for the run's first access token.
        run.retry(lambda: guarded(connector, "open", connector.open))
        finished = False
        pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="syncer-send")
        inflight: dict[Future[Sequence[Outcome]], ChangeBatch] = {}
        done = dict.fromkeys(OPERATIONS, 0)
        failure: BaseException | None = None

        def collect(timeout: float) -> Answered:
            """Batches answered within ``timeout`` (0: those already answered)."""
            nonlocal failure
            ready, _ = wait(list(inflight), timeout=timeout, return_when=FIRST_COMPLETED)
            answered: Answered = []
            for future in ready:
                batch = inflight.pop(future)
                if future.cancelled():  # never sent: its mark stays, as for a crash
                    continue
                try:
                    answered.append((batch, future.result()))
                except _NotSent:
                    continue
                except SyncerError as exc:  # auth/config/crash: no more batches after this
                    failure = failure or exc
            return answered

        def record(
            answered: Answered, pages: Iterator[ChangeBatch] | None = None
        ) -> ChangeBatch | None:
            """Commit answered batches, and read the next page of ``pages`` and mark it in
            flight, in one transaction: one per page sent, not one per batch and another
            per answer, nor one more for reading the page. Returns that page."""
            page = None
            if answered or pages is not None:
                read = None if pages is None else lambda: next(pages, None)
                page = recorder.commit(
                    run, answered, read, lambda page: expected_ids(connector, page)
                )
            for batch, _ in answered:
                done[batch.operation] += batch.size
                if progress is not None:
                    progress(batch.operation, done[batch.operation], planned[batch.operation])
            return page

        def stopping() -> bool:
            return run.halted or failure is not None

        given_up = threading.Event()  # a batch failed for good: queued ones are not sent

        def send(batch: ChangeBatch) -> Sequence[Outcome]:
            if given_up.is_set() or run.halted:
                raise _NotSent
            try:
                return deliver_batch(run, connector, batch)
            except BaseException:
                given_up.set()
                raise

        try:
            held: Answered = []  # acknowledged, committed with the next page's marks
            for operation in OPERATIONS:
                size = connector.batch_size
                per_page = pages_of(size)
                # Batches handed to the pool, sent or waiting for a sender: the next pages
                # are read and committed while the senders work through these.
                ahead = concurrency + PAGES_AHEAD * per_page
                pages = iter(staging.batches(operation, size * per_page, planned[operation]))
                while not stopping():
                    while inflight and len(inflight) + per_page > ahead and not stopping():
                        held += collect(0.25)
                    held += collect(0)
                    if stopping():
                        break
                    # The page's marks, committed before any of its batches leaves.
                    page = record(held, pages)
                    held = []
                    if page is None:
                        break
                    for batch in page.split(size):  # marked as the page was
                        submitted = pool.submit(send, batch)
                        inflight[submitted] = batch
                while inflight:
                    if stopping():
                        for future in inflight:
                            future.cancel()  # queued, not sent: stays marked in flight
                    held += collect(0.25)
                record(held)
                held = []
                if stopping():
                    break
            else:
                finished = True
        except BaseException:
            # A second signal: leave now, without waiting for requests in flight or closing
            # the connector. Batches in flight stay marked as sent but unconfirmed, so the
            # next run treats them as possibly applied (see syncer.ledger).
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        guarded(connector, "close", lambda: connector.close(finished))
        recorder.seal_jobs(run, connector.stats)
        if failure is not None:
            raise failure
        if run.lease.lost.is_set():
            raise Interrupted("another process took over this sync's lease; stopped early")
        if not finished:
            raise Interrupted("stopped on request; acknowledged changes are saved")


class _NotSent(Exception):
    """A queued batch left unsent because the run is stopping (it stays marked in flight)."""


#: While sending, how long a thread may keep the interpreter when another asks for it.
SENDING_SWITCH_INTERVAL = 0.0005
_handoffs_lock = threading.Lock()
_handoffs: list[float] = []  # the interval before the first sender entered, while any is in


@contextmanager
def prompt_handoffs() -> Iterator[None]:
    """Shorten the interpreter's switch interval while any run sends.

    The run's thread gives the interpreter up for every statement it runs (the driver
    releases it) and then waits for it back while the senders build and encode batches;
    each wait lasts up to the switch interval (5 ms by default), several times a batch. The
    first run to send lowers it, the last to finish puts it back.
    """
    with _handoffs_lock:
        if not _handoffs:
            _handoffs.append(sys.getswitchinterval())
            sys.setswitchinterval(min(SENDING_SWITCH_INTERVAL, _handoffs[0]))
        else:
            _handoffs.append(_handoffs[0])
    try:
        yield
    finally:
        with _handoffs_lock:
            before = _handoffs.pop()
            if not _handoffs:
                sys.setswitchinterval(before)


#: Rows a page of the change set holds at most, unless one batch is larger: a page is read,
#: marked in flight and its answers committed in one statement each, whatever its batches.
PAGE_ROWS = 4000
#: Pages handed to the senders beyond the batches they are sending: while the senders work
#: through them, the run's thread reads the next page and commits the answers so far.
PAGES_AHEAD = 2
#: Batches a page holds at most (a crash re-sends at most this many batches' worth of
#: records whose answers were held for the next commit).
PAGE_BATCHES = 8


def pages_of(batch_size: int) -> int:
    """How many batches of ``batch_size`` one page of the change set holds."""
    return max(1, min(PAGE_BATCHES, PAGE_ROWS // max(batch_size, 1)))


def expected_ids(connector: Connector, sending: ChangeBatch) -> dict[str, str | None]:
    """Destination ids the connector can tell before the answer, for the in-flight mark
    (asked only of connectors that override ``expected_destination_id``)."""
    expected: dict[str, str | None] = {}
    overridden = type(connector).expected_destination_id is not Connector.expected_destination_id
    if sending.operation != "remove" and overridden:
        operation = sending.operation

        def expect() -> None:
            for record in sending.records:
                expected[record.key] = connector.expected_destination_id(operation, record)

        guarded(connector, "expected_destination_id", expect)
    return expected


def deliver_batch(run: RunContext, connector: Connector, batch: ChangeBatch) -> Sequence[Outcome]:
    """``deliver`` on a worker thread, which also builds the batch's records and audit keys
    there (see ChangeBatch): the run's thread only reads pages and writes state."""
    outcomes = deliver(run.retry, connector, batch.operation, batch.records)
    batch.audit_keys(run.plain_keys)
    return outcomes


def deliver(
    retry: RetryPolicy, connector: Connector, operation: Operation, records: list[Record]
) -> Sequence[Outcome]:
    """One batch to the destination with retries; a refused batch is halved to find the bad
    records, so the good ones still land. Runs on a worker thread."""
    call: Callable[[list[Record]], BatchResult] = getattr(connector, operation)
    try:
        return retry(lambda: guarded(connector, operation, lambda: call(records).settled()))
    except BatchRejected as exc:
        if len(records) == 1:
            return [Outcome(records[0].key, "rejected", f"refused: {exc}")]
        middle = len(records) // 2
        return join_outcomes(
            deliver(retry, connector, operation, records[:middle]),
            deliver(retry, connector, operation, records[middle:]),
        )
    except TransientError as exc:
        return [Outcome(r.key, "failed", f"not delivered: {exc}") for r in records]
    except httpx.HTTPError as exc:
        return [Outcome(r.key, "failed", f"request failed: {type(exc).__name__}") for r in records]
