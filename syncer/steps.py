"""Resuming a multi-step batch at the step that failed, within one run.

Some vendors need several requests for one batch: create an import job, poll it, read its
result pages (Klaviyo, SendGrid); subscribe, then tag (Mailchimp); upsert, then add to a list
(HubSpot, Salesforce). The engine retries a batch by calling the connector's ``add``/``update``/
``remove`` again after a ``TransientError`` or a 429. A connector without memory starts over
then: a second import job for records the first one already imported, a second subscribe of
members already subscribed, and on a busy account each repeated step spends the requests the
failed step needed, so the batch may never get through.

:class:`BatchProgress` is that memory. A connector keeps one for its life (one run), wraps each
batch in ``with self.progress.batch(operation, records) as steps:`` and runs each request through
``steps.once``, ``steps.each`` or ``steps.pages``. When the engine calls again with the same
batch, the steps that succeeded return what they returned the first time, without a request,
and the batch resumes at the step that failed. The engine's retry loop stays the only retry
loop: connectors still never sleep or retry themselves.

Attempts and backoff count per step. A call that got the batch at least one step further before
it failed (or got an answer that moved it on, such as a poll of a job still running: see
:meth:`Steps.advanced`) is not a failed try of the batch: it is raised as :class:`StepFailed`, a
``RateLimited``, which the engine retries without using up one of ``SYNCER_RETRY_ATTEMPTS``.
Only calls that got nowhere use up attempts. The wait before the retry is the vendor's
``Retry-After`` if it gave one, else the engine's backoff counted from the step's own first
failure (1, 2, 4... s plus up to 1 s of jitter, at most 60 s), not from the batch's first.
``SYNCER_BATCH_TIME_BUDGET`` still bounds the whole batch. Counted per batch, a batch of 13
requests (a Klaviyo job of 1,000 profiles) at a 20% error rate would run out of its 5 attempts
about one time in four, though every step but the failed one had landed.

What counts as "the same batch": the same operation and the same records (keys, fields and
destination ids, in order). A batch the engine halves after a ``BatchRejected`` is a new batch.
What a batch remembers is dropped when the ``with`` block ends normally or with anything but a
``TransientError`` (the engine will not call again with that batch); after a ``TransientError``
it is kept until the engine calls again, or until the connector is dropped at the end of the run.
Nothing is kept across runs.

Thread-safe: batches run on several threads; each batch's steps are used by one at a time.
Steps must return values the connector will not change afterwards (the same object is handed
out again on the next call): return plain data, and build a fresh ``BatchResult`` from it on
every call.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import TypeVar, cast

from syncer.connector import BatchResult, Outcome, Record
from syncer.errors import RateLimited, TransientError

#: The engine's backoff, per step: FIRST_BACKOFF * 2 ** (failures - 1) plus up to 1 s of
#: jitter, at most MAX_BACKOFF (plus the jitter), when the vendor gave no Retry-After.
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 60.0

T = TypeVar("T")
Item = TypeVar("Item")
Cursor = TypeVar("Cursor")


class StepFailed(RateLimited):
    """A step of a batch failed after the same call had completed earlier steps: retried by
    the engine without using up an attempt (see the module docstring). Its message and
    ``retry_after`` are the failed step's."""


class Steps:
    """The steps of one batch that already succeeded in this run, with what they returned."""

    def __init__(self) -> None:
        self._done: dict[str, object] = {}
        self._new: set[str] = set()  # steps completed during the current call
        self._moved = False  # the current call got an answer that moved the batch on
        #: Steps answered from memory (not sent again), over this batch's calls.
        self.skipped = 0

    @property
    def completed(self) -> int:
        """Steps that succeeded during the current call (and are still remembered)."""
        return len(self._new)

    def __contains__(self, name: str) -> bool:
        return name in self._done

    def _begin_call(self) -> None:
        self._new.clear()
        self._moved = False

    @property
    def progressed(self) -> bool:
        """The current call got the batch further (a step, or :meth:`advanced`)."""
        return self._moved or bool(self._new)

    def advanced(self) -> None:
        """Say that the current call got an answer that moved the batch on without finishing
        a step: a poll of a vendor job that is still running. A failure later in the call is
        then not a failed attempt, so a long job polled through flaky answers is not given up
        after a few 503s; the time budget still bounds it."""
        self._moved = True

    def forget(self, name: str) -> None:
        """Undo step ``name`` (and only it): the next call runs it again. For a step whose
        result turned out useless, such as a vendor job that was cancelled."""
        self._done.pop(name, None)
        self._new.discard(name)  # it got the batch nowhere after all

    def once(self, name: str, call: Callable[[], T]) -> T:
        """``call()``'s result; ``call`` runs only if step ``name`` has not succeeded yet for
        this batch. An exception leaves the step undone, so the next call of the batch runs it."""
        if name in self._done:
            self.skipped += 1
            return cast(T, self._done[name])
        value = call()
        self._done[name] = value
        self._new.add(name)
        return value

    def each(self, name: str, items: Sequence[Item], call: Callable[[Item], T]) -> list[T]:
        """``call(item)`` for every item, in order, as one step per item (a request per member,
        a request per chunk): after a failure only the items not yet done are sent again."""
        return [self.once(f"{name}#{i}", partial(call, item)) for i, item in enumerate(items)]

    def pages(
        self, name: str, fetch: Callable[[Cursor | None], tuple[list[Item], Cursor | None]]
    ) -> list[Item]:
        """Every item of a paginated read. ``fetch(cursor)`` reads one page (``None``: the
        first) and returns its items and the next page's cursor (``None``: the last page).
        Each page is a step, so a failure re-reads only the page that failed and those after."""
        items: list[Item] = []
        cursor: Cursor | None = None
        index = 0
        while True:
            page, cursor = self.once(f"{name} page {index}", partial(fetch, cursor))
            items += page
            if cursor is None:
                return items
            index += 1


def apply(result: BatchResult, outcomes: Iterable[Outcome]) -> BatchResult:
    """Put remembered per-record outcomes into ``result`` (a fresh one on every call), so a
    step can return immutable :class:`~syncer.connector.Outcome` values instead of changing a
    result that a later call would see again."""
    for outcome in outcomes:
        if outcome.status == "rejected":
            result.reject(outcome.key, outcome.reason or "rejected")
        elif outcome.status == "failed":
            result.fail(outcome.key, outcome.reason or "failed")
        elif outcome.status == "pending" and outcome.job is not None:
            result.pending(outcome.key, outcome.job, outcome.destination_id)
        else:
            result.accept(outcome.key, outcome.destination_id)
    return result


def _backoff(failures: int) -> float:
    return min(FIRST_BACKOFF * 2.0 ** (failures - 1), MAX_BACKOFF) + random.random()


class _Entry:
    def __init__(self, records: tuple[Record, ...]) -> None:
        self.records = records
        self.steps = Steps()
        self.lock = threading.RLock()
        self.stalled = 0  # failed calls in a row since the batch last got a step further


class BatchProgress:
    """Per-run memory of each batch's succeeded steps (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._batches: dict[tuple[str, tuple[str, ...]], _Entry] = {}

    def __len__(self) -> int:
        """Batches whose steps are remembered (they failed and may be called again)."""
        with self._lock:
            return len(self._batches)

    @contextmanager
    def batch(self, operation: str, records: Sequence[Record]) -> Iterator[Steps]:
        """The steps of this batch, resumed where its last call failed, if it did."""
        ident = (operation, tuple(r.key for r in records))
        snapshot = tuple(records)
        with self._lock:
            entry = self._batches.get(ident)
            if entry is None or entry.records != snapshot:
                entry = self._batches[ident] = _Entry(snapshot)
        with entry.lock:
            entry.steps._begin_call()
            try:
                yield entry.steps
            except RateLimited:
                raise  # the engine calls again with this batch: keep what succeeded
            except TransientError as exc:
                progressed = entry.steps.progressed
                entry.stalled = 1 if progressed else entry.stalled + 1
                if exc.retry_after is None:
                    exc.retry_after = _backoff(entry.stalled)
                if progressed:  # the batch got further: not a failed attempt
                    raise StepFailed(str(exc), retry_after=exc.retry_after) from exc
                raise
            except BaseException:
                self._forget(ident, entry)
                raise
            self._forget(ident, entry)

    def _forget(self, ident: tuple[str, tuple[str, ...]], entry: _Entry) -> None:
        with self._lock:
            if self._batches.get(ident) is entry:
                del self._batches[ident]
