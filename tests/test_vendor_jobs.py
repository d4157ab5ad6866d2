"""Vendor jobs across runs, hashed keys and vendor counts: the engine side of ad audiences.

A small in-process destination stands in for a platform whose uploads are asynchronous
(Google Customer Match): it takes records into a job, starts the job in ``close()``, and
answers ``poll_job`` as the test scripts it. Everything else is the real engine on a real
SQLite warehouse and state database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa

from syncer.connector import (
    BatchResult,
    Capabilities,
    Connector,
    ConnectorConfig,
    JobStatus,
    Operation,
    Record,
)
from syncer.engine import SyncEngine
from syncer.mapping import LoadedSync, SyncDefinition
from syncer.settings import Settings
from tests.conftest import run_cli, write_table


class Platform:
    """What the emulated platform holds and how its jobs answer."""

    def __init__(self) -> None:
        self.audience: set[str] = set()
        self.jobs: dict[str, list[tuple[Operation, list[Record]]]] = {}
        self.started: list[str] = []
        self.answers: dict[str, list[JobStatus]] = {}
        self.calls: list[str] = []
        self.polls: list[str] = []
        self.fail_close = False

    def finish(self, job: str) -> None:
        for operation, records in self.jobs[job]:
            for r in records:
                if operation == "remove":
                    self.audience.discard(str(r.destination_id))
                else:
                    self.audience.add(hashed_email(r.fields["email"]))


PLATFORM = Platform()


def hashed_email(value: Any) -> str:
    return hashlib.sha256(str(value).strip().lower().encode()).hexdigest()


class JobConnector(Connector):
    name: ClassVar[str] = "job-platform"
    capabilities: ClassVar[Capabilities] = Capabilities(
        modes=frozenset({"membership"}),
        operations=frozenset({"add", "remove"}),
        max_batch_size=2,
        hashed_keys=True,
        async_jobs=True,
    )

    def open(self) -> None:
        self.job: str | None = None

    def write(self, operation: Operation, records: Sequence[Record]) -> BatchResult:
        PLATFORM.calls.append(operation)
        if self.job is None:
            self.job = f"jobs/{len(PLATFORM.jobs) + 1}"
            PLATFORM.jobs[self.job] = []
        PLATFORM.jobs[self.job].append((operation, list(records)))
        result = BatchResult(records)
        for r in records:
            # What removal needs later, without the raw address: its hash.
            dest = r.destination_id or hashed_email(r.fields.get("email"))
            result.pending(r.key, self.job, destination_id=dest)
        self.report(num_received=len(records))
        return result

    def close(self, success: bool) -> None:
        if PLATFORM.fail_close:
            raise RuntimeError("vendor refused to start the job")
        if self.job is not None:
            PLATFORM.started.append(self.job)

    def poll_job(self, job: str) -> JobStatus:
        PLATFORM.polls.append(job)
        answers = PLATFORM.answers.get(job) or [JobStatus("running")]
        status = answers.pop(0) if len(answers) > 1 else answers[0]
        if status.state == "succeeded":
            PLATFORM.finish(job)
        return status


@pytest.fixture
def world(isolated: Path) -> dict[str, Any]:
    global PLATFORM
    PLATFORM = Platform()
    warehouse = f"sqlite:///{isolated / 'wh.db'}"
    settings = Settings(warehouse_url=warehouse, state_url=f"sqlite:///{isolated / 'state.db'}")
    definition = SyncDefinition.model_validate(
        {
            "name": "ads",
            "source": {"query": "select email from segment", "key": "email"},
            "mode": "membership",
            "fields": {"email": "email"},
            "destination": {"connector": "job-platform"},
            "guards": {"max_remove_pct": 100},
        }
    )
    sync = LoadedSync(definition, isolated / "ads.yaml", JobConnector, ConnectorConfig())
    return {"warehouse": warehouse, "settings": settings, "sync": sync}


def segment(world: dict[str, Any], emails: list[str]) -> None:
    write_table(world["warehouse"], "segment", ["email"], [(e,) for e in emails])


def run(world: dict[str, Any]) -> Any:
    return SyncEngine(world["settings"], sleep=lambda _s: None).run(world["sync"])


def state_keys(world: dict[str, Any], unsure: int = 0) -> set[str]:
    """Keys state says the destination holds (``unsure`` 0), or those whose last send is
    unconfirmed (1: maybe absent, 2: maybe stale)."""
    engine = sa.create_engine(world["settings"].state_url.get_secret_value())
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("select key from syncer_records where unsure = :u"), {"u": unsure}
        )
        keys = {k for (k,) in rows}
    engine.dispose()
    return keys


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


EMAILS = ["ada@example.com", "bob@example.com", "cy@example.com"]


def test_a_job_is_confirmed_by_a_later_run_before_members_count_as_synced(world: Any) -> None:
    segment(world, EMAILS)
    first = run(world)
    assert (first.status, first.exit_code) == ("submitted", 0)
    assert first.counts["pending"] == 3 and first.counts["added"] == 0
    assert PLATFORM.started == ["jobs/1"]
    assert state_keys(world) == set()  # nothing is synced until the vendor says so

    second = run(world)  # the job is still running: nothing new is sent
    assert (second.status, second.exit_code) == ("waiting", 0)
    assert "jobs/1" in (second.message or "")
    assert PLATFORM.calls == ["add", "add"]  # only the first run's two batches

    PLATFORM.answers["jobs/1"] = [JobStatus("succeeded", stats={"matched": 2})]
    third = run(world)
    assert (third.status, third.counts["added"]) == ("succeeded", 3)
    assert state_keys(world) == {sha(e) for e in EMAILS}
    assert PLATFORM.audience == {hashed_email(e) for e in EMAILS}
    assert PLATFORM.calls == ["add", "add"]  # confirmed members are not sent again

    detail = SyncEngine(world["settings"]).run_detail(first.run_id)
    assert detail["stats"] == {"num_received": 3}
    assert detail["jobs"][0]["status"] == "succeeded"
    assert detail["jobs"][0]["stats"] == {"matched": 2}

    # What a person reads: `syncer run show` prints the vendor's counts and the job.
    state_url = world["settings"].state_url.get_secret_value()
    shown = run_cli("run", "show", first.run_id, env={"SYNCER_STATE_URL": state_url})
    assert shown.returncode == 0, shown.stderr
    assert "num_received: 3" in shown.stdout
    assert "vendor jobs" in shown.stdout and "jobs/1" in shown.stdout
    assert "matched=2" in shown.stdout
    assert "pending: 3" in shown.stdout


def test_a_failed_job_sends_its_records_again_in_the_same_run(world: Any) -> None:
    segment(world, EMAILS[:2])
    run(world)
    PLATFORM.answers["jobs/1"] = [JobStatus("failed", reason="INVALID_CUSTOMER_LIST")]
    again = run(world)
    # The failure is reported (worth a retry later, exit 75) and the records are already in
    # the next job.
    assert (again.status, again.exit_code, again.counts["failed"]) == ("partial", 75, 2)
    assert again.counts["pending"] == 2
    assert PLATFORM.started == ["jobs/1", "jobs/2"]
    assert [len(records) for _, records in PLATFORM.jobs["jobs/2"]] == [2]
    detail = SyncEngine(world["settings"]).run_detail(again.run_id)
    reasons = {p["reason"] for p in detail["problems"]}
    assert reasons == {"vendor job failed: INVALID_CUSTOMER_LIST"}


def test_a_failed_job_may_have_applied_part_so_a_member_who_left_is_removed(
    world: Any,
) -> None:
    segment(world, EMAILS)
    run(world)
    # The vendor applied part of the job before it failed, and one member left meanwhile.
    PLATFORM.audience.add(hashed_email(EMAILS[2]))
    PLATFORM.answers["jobs/1"] = [JobStatus("failed", reason="INTERNAL_ERROR")]
    segment(world, EMAILS[:2])
    again = run(world)
    sent = {(op, r.key, r.destination_id) for op, batch in PLATFORM.jobs["jobs/2"] for r in batch}
    # Nobody confirmed the third member's add, yet it is removed, by the hash it was sent with.
    assert ("remove", sha(EMAILS[2]), hashed_email(EMAILS[2])) in sent
    assert again.counts["pending"] == 3
    PLATFORM.answers["jobs/2"] = [JobStatus("succeeded")]
    done = run(world)
    assert (done.status, done.counts["added"], done.counts["removed"]) == ("succeeded", 2, 1)
    assert PLATFORM.audience == {hashed_email(e) for e in EMAILS[:2]}
    assert state_keys(world) == {sha(e) for e in EMAILS[:2]}
    assert state_keys(world, unsure=1) == set()


def test_a_job_never_started_is_dropped_and_resent(world: Any) -> None:
    segment(world, EMAILS[:2])
    PLATFORM.fail_close = True
    crashed = run(world)
    assert crashed.exit_code == 1  # the connector's close() failed
    PLATFORM.fail_close = False
    again = run(world)
    assert again.status == "submitted"
    assert PLATFORM.polls == []  # an unstarted job is never polled
    assert PLATFORM.started == ["jobs/2"]


def test_removals_wait_for_the_job_too(world: Any) -> None:
    segment(world, EMAILS)
    run(world)
    PLATFORM.answers["jobs/1"] = [JobStatus("succeeded")]
    segment(world, EMAILS[:1])
    churn = run(world)  # confirms job 1, then submits the two removals in job 2
    assert churn.counts["added"] == 3 and churn.counts["pending"] == 2
    # Not removed yet: the two removals are in flight, unconfirmed, until the job succeeds.
    assert state_keys(world) == {sha(EMAILS[0])}
    assert state_keys(world, unsure=1) == {sha(e) for e in EMAILS[1:]}
    PLATFORM.answers["jobs/2"] = [JobStatus("succeeded")]
    done = run(world)
    assert done.counts["removed"] == 2
    assert state_keys(world) == {sha(EMAILS[0])}
    assert PLATFORM.audience == {hashed_email(EMAILS[0])}


def test_hashed_keys_keep_raw_identifiers_out_of_state(world: Any, isolated: Path) -> None:
    segment(world, [" Ada@Example.com "])
    run(world)
    PLATFORM.answers["jobs/1"] = [JobStatus("succeeded")]
    run(world)
    assert state_keys(world) == {sha("Ada@Example.com")}
    (record,) = [r for _, batch in PLATFORM.jobs["jobs/1"] for r in batch]
    assert record.key == sha("Ada@Example.com")
    engine = sa.create_engine(world["settings"].state_url.get_secret_value())
    with engine.connect() as conn:
        text = " ".join(
            str(v)
            for table in ("syncer_records", "syncer_events", "syncer_runs", "syncer_jobs")
            for row in conn.execute(sa.text(f"select * from {table}"))
            for v in row
        )
    engine.dispose()
    assert "Ada@Example.com" not in text
