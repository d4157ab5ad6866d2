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

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar, cast

from syncer.connector import BatchResult, Outcome, Record
from syncer.errors import TransientError

T = TypeVar("T")
Item = TypeVar("Item")
Cursor = TypeVar("Cursor")


class Steps:
    """The steps of one batch that already succeeded in this run, with what they returned."""

    def __init__(self) -> None:
        self._done: dict[str, Any] = {}
        #: Steps answered from memory (not sent again), over this batch's calls.
        self.skipped = 0
        #: Steps that succeeded during the current call.
        self.completed = 0

    def __contains__(self, name: str) -> bool:
        return name in self._done

    def forget(self, name: str) -> None:
        """Undo step ``name`` (and only it): the next call runs it again. For a step whose
        result turned out useless, such as a vendor job that was cancelled."""
        self._done.pop(name, None)

    def once(self, name: str, call: Callable[[], T]) -> T:
        """``call()``'s result; ``call`` runs only if step ``name`` has not succeeded yet for
        this batch. An exception leaves the step undone, so the next call of the batch runs it."""
        if name in self._done:
            self.skipped += 1
            return cast(T, self._done[name])
        value = call()
        self._done[name] = value
        self.completed += 1
        return value

    def each(self, name: str, items: Sequence[Item], call: Callable[[Item], T]) -> list[T]:
        """``call(item)`` for every item, in order, as one step per item (a request per member,
        a request per chunk): after a failure only the items not yet done are sent again."""
        return [self.once(f"{name}#{i}", partial(call, item)) for i, item in enumerate(items)]

    def pages(
        self, name: str, fetch: Callable[[Cursor | None], tuple[list[Any], Cursor | None]]
    ) -> list[Any]:
        """Every item of a paginated read. ``fetch(cursor)`` reads one page (``None``: the
        first) and returns its items and the next page's cursor (``None``: the last page).
        Each page is a step, so a failure re-reads only the page that failed and those after."""
        items: list[Any] = []
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


class _Entry:
    def __init__(self, records: tuple[Record, ...]) -> None:
        self.records = records
        self.steps = Steps()
        self.lock = threading.RLock()


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
            entry.steps.completed = 0
            try:
                yield entry.steps
            except TransientError:
                raise  # the engine calls again with this batch: keep what succeeded
            except BaseException:
                self._forget(ident, entry)
                raise
            self._forget(ident, entry)

    def _forget(self, ident: tuple[str, tuple[str, ...]], entry: _Entry) -> None:
        with self._lock:
            if self._batches.get(ident) is entry:
                del self._batches[ident]
