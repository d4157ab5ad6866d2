"""BatchProgress: a retried batch resumes at the step that failed, within one run."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from syncer.connector import BatchResult, Outcome, Record
from syncer.errors import BatchRejected, RateLimited, TransientError
from syncer.steps import BatchProgress, StepFailed, Steps, apply

RECORDS = [Record("a", {"n": 1}), Record("b", {"n": 2}, "id-b")]


class Vendor:
    """Counts calls per step and fails the ones it is told to, once each."""

    def __init__(self, *failing: str, error: Callable[[str], Exception] = TransientError) -> None:
        self.calls: dict[str, int] = {}
        self.failing = set(failing)
        self.error = error

    def step(self, name: str, value: Any = None) -> Callable[[], Any]:
        def call() -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            if name in self.failing:
                self.failing.discard(name)
                raise self.error(f"{name} failed")
            return value if value is not None else f"{name} done"

        return call


def two_steps(progress: BatchProgress, vendor: Vendor, records: list[Record] = RECORDS) -> str:
    with progress.batch("add", records) as steps:
        job = steps.once("create", vendor.step("create", "job-1"))
        return str(steps.once("read", vendor.step("read", f"read {job}")))


@pytest.mark.parametrize("error", [TransientError, RateLimited])
def test_a_retry_resumes_at_the_step_that_failed(error: type[Exception]) -> None:
    progress, vendor = BatchProgress(), Vendor("read", error=error)
    with pytest.raises(error):
        two_steps(progress, vendor)
    assert len(progress) == 1  # kept for the engine's next call
    assert two_steps(progress, vendor) == "read job-1"
    assert vendor.calls == {"create": 1, "read": 2}
    assert len(progress) == 0  # the batch is done: nothing is kept


def test_a_finished_batch_sent_again_runs_every_step_again() -> None:
    progress, vendor = BatchProgress(), Vendor()
    two_steps(progress, vendor)
    two_steps(progress, vendor)
    assert vendor.calls == {"create": 2, "read": 2}


def test_a_refused_batch_is_forgotten() -> None:
    """A BatchRejected makes the engine halve the batch: the halves are new batches, and the
    whole one is never called again, so nothing of it is kept."""
    progress, vendor = BatchProgress(), Vendor("read", error=BatchRejected)
    with pytest.raises(BatchRejected):
        two_steps(progress, vendor)
    assert len(progress) == 0
    two_steps(progress, vendor)
    assert vendor.calls == {"create": 2, "read": 2}


def test_other_records_or_operations_are_another_batch() -> None:
    progress, vendor = BatchProgress(), Vendor("read")
    with pytest.raises(TransientError):
        two_steps(progress, vendor)
    changed = [RECORDS[0], Record("b", {"n": 3}, "id-b")]  # same keys, other payload
    two_steps(progress, vendor, changed)
    assert vendor.calls == {"create": 2, "read": 2}
    with progress.batch("remove", RECORDS) as steps:  # same records, other operation
        steps.once("create", vendor.step("create"))
    assert vendor.calls["create"] == 3


def test_each_resumes_after_the_items_done() -> None:
    progress, sent = BatchProgress(), []

    def tag(item: str) -> str:
        if item == "c" and "c" not in sent:
            sent.append(item)
            raise TransientError("429")
        sent.append(item)
        return item.upper()

    for _ in range(2):
        try:
            with progress.batch("add", RECORDS) as steps:
                answers = steps.each("tag", ["a", "b", "c", "d"], tag)
        except TransientError:
            continue
    assert answers == ["A", "B", "C", "D"]
    assert sent == ["a", "b", "c", "c", "d"]  # a and b were not tagged twice


def test_pages_resume_at_the_page_that_failed() -> None:
    progress, read = BatchProgress(), []
    fail_once = {"p2"}

    def fetch(cursor: str | None) -> tuple[list[Any], str | None]:
        page = cursor or "p1"
        read.append(page)
        if page in fail_once:
            fail_once.discard(page)
            raise TransientError("503")
        following = {"p1": "p2", "p2": "p3"}.get(page)
        return [f"{page}-item"], following

    with pytest.raises(TransientError), progress.batch("add", RECORDS) as steps:
        steps.pages("profiles", fetch)
    with progress.batch("add", RECORDS) as steps:
        items = steps.pages("profiles", fetch)
    assert items == ["p1-item", "p2-item", "p3-item"]
    assert read == ["p1", "p2", "p2", "p3"]


def test_forget_makes_a_step_run_again() -> None:
    progress, vendor = BatchProgress(), Vendor()
    with pytest.raises(TransientError), progress.batch("add", RECORDS) as steps:
        steps.once("create", vendor.step("create"))
        steps.forget("create")  # e.g. the vendor cancelled that job
        raise TransientError("cancelled")
    with progress.batch("add", RECORDS) as steps:
        assert "create" not in steps
        steps.once("create", vendor.step("create"))
    assert vendor.calls == {"create": 2}


def test_apply_rebuilds_outcomes_in_a_fresh_result() -> None:
    outcomes = [
        Outcome("a", "rejected", "no"),
        Outcome("b", "accepted", destination_id="id-b2"),
    ]
    result = apply(BatchResult(RECORDS), outcomes)
    assert [(o.key, o.status, o.reason, o.destination_id) for o in result.outcomes()] == [
        ("a", "rejected", "no", None),
        ("b", "accepted", None, "id-b2"),
    ]


def test_batches_on_many_threads_keep_their_own_steps() -> None:
    """Sixteen batches at once, each failing once at its second step: every batch resumes
    with its own first step's answer, none is created twice."""
    progress = BatchProgress()
    created: list[str] = []
    lock = threading.Lock()
    failed: set[str] = set()
    answers: dict[str, str] = {}

    def deliver(n: int) -> None:
        records = [Record(f"k{n}", {"n": n})]
        for _ in range(2):
            try:
                with progress.batch("add", records) as steps:

                    def create() -> str:
                        with lock:
                            created.append(f"job{n}")
                        return f"job{n}"

                    def read(job: str) -> str:
                        with lock:
                            if job not in failed:
                                failed.add(job)
                                raise TransientError("503")
                        return f"read {job}"

                    job = steps.once("create", create)
                    answers[job] = steps.once("read", partial(read, job))
                    return
            except TransientError:
                continue

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(created) == sorted(f"job{n}" for n in range(16))
    assert answers == {f"job{n}": f"read job{n}" for n in range(16)}
    assert len(progress) == 0


def test_steps_count_what_they_skipped() -> None:
    steps = Steps()
    steps.once("a", lambda: 1)
    assert steps.once("a", lambda: 2) == 1
    assert (steps.skipped, steps.completed) == (1, 1)


def test_attempts_and_backoff_count_per_step() -> None:
    """A call that got the batch a step further is not a failed attempt (it is retried as a
    RateLimited, which the engine does not count), and the backoff starts again at 1 s for
    the new step; a call that got nowhere is a failed attempt, with a growing backoff."""
    progress, vendor = BatchProgress(), Vendor()
    vendor.failing = {"read"}
    with pytest.raises(StepFailed) as first:
        two_steps(progress, vendor)  # create landed, read failed
    assert isinstance(first.value, RateLimited) and 1 <= (first.value.retry_after or 0) < 2
    assert str(first.value) == "read failed"

    vendor.failing = {"read"}
    with pytest.raises(TransientError) as second:
        two_steps(progress, vendor)  # read failed again: nothing got further
    assert not isinstance(second.value, RateLimited)
    assert 2 <= (second.value.retry_after or 0) < 3

    vendor.failing = {"read"}
    vendor.error = lambda message: TransientError(message, retry_after=7.0)
    with pytest.raises(TransientError) as third:
        two_steps(progress, vendor)
    assert third.value.retry_after == 7.0  # the vendor said when: that wins
    assert two_steps(progress, vendor) == "read job-1"
    assert vendor.calls == {"create": 1, "read": 4}


def test_a_forgotten_step_is_no_progress() -> None:
    """A Klaviyo job that was cancelled is forgotten: recreating it again and again must use
    up attempts, or a vendor cancelling every job would be retried until the time budget."""
    progress, vendor = BatchProgress(), Vendor()
    for _ in range(2):
        with pytest.raises(TransientError) as caught, progress.batch("add", RECORDS) as steps:
            steps.once("create", vendor.step("create"))
            steps.forget("create")
            raise TransientError("cancelled")
        assert not isinstance(caught.value, RateLimited)
    assert vendor.calls == {"create": 2}
