"""``ConnectorSuite``: the standard tests every connector must pass, for a few lines of setup.

Subclass it in a test module under a name pytest collects (``TestAcme``), say which connector,
its ``destination:`` settings and secrets, and how to make its ``FakeVendor``; pytest then runs
every standard test against the real engine. A test the vendor cannot take part in is skipped
with the reason the fake gives in ``lacks`` or the connector's capabilities give.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import pytest
import structlog

from syncer.connector import Connector, Operation
from syncer.engine import RunResult
from syncer.testing.fake import FakeVendor, Feature
from syncer.testing.harness import Row, SyncHarness, status_of

#: The exit code of a run stopped by a configuration problem (bad credentials included).
EXIT_CONFIG = 78


def member(n: int) -> dict[str, str]:
    """The ``n``-th standard member: every value unique, so a leak is easy to spot."""
    return {
        "id": f"m{n:05d}",
        "email": f"kit.member{n}@example.com",
        "first_name": f"Firstkit{n}",
        "last_name": f"Lastkit{n}",
        "phone": f"+1415{2_000_000 + n:07d}",
        "country": "US",
    }


def sha256_email(row: Row) -> str:
    """The SHA-256 of the row's trimmed, lower-cased email: how ad audiences hold members."""
    return hashlib.sha256(str(row["email"]).strip().lower().encode()).hexdigest()


class ConnectorSuite:
    """The standard suite. Required: ``connector``, ``destination`` and ``make_fake``."""

    #: The connector class under test (installed under its ``name`` as an entry point).
    connector: ClassVar[type[Connector]]
    #: The mapping's ``destination:`` block without ``connector:``; secrets as ``${NAME}``.
    destination: ClassVar[Mapping[str, object]] = {}
    #: Values for the ``${NAME}`` references in ``destination`` (the suite's ``.env``).
    secrets: ClassVar[Mapping[str, str]] = {}
    #: The mapping's ``fields:``; columns are id, email, first_name, last_name, phone, country.
    fields: ClassVar[Mapping[str, object]] = {"email": "email", "first_name": "first_name"}
    #: The key column and its type.
    key: ClassVar[str] = "email"
    key_type: ClassVar[str] = "email"
    #: The sync mode; one that removes (mirror, membership) lets the removal tests run.
    mode: ClassVar[str] = "mirror"
    #: Members in the segment of most tests.
    size: ClassVar[int] = 6

    def make_fake(self) -> FakeVendor:
        """A fresh fake of the vendor for one test."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_fake()")

    def vendor_key(self, row: Row) -> str:
        """The key ``members()`` shows for ``row``; the key column's value by default
        (``sha256_email`` for an audience of hashed emails)."""
        return str(row[self.key])

    # -- plumbing -------------------------------------------------------------------------

    def harness(self, tmp_path: Path, fake: FakeVendor) -> SyncHarness:
        """The engine wired to ``fake`` in ``tmp_path``."""
        harness = SyncHarness(
            tmp_path,
            self.connector,
            self.destination,
            fields=self.fields,
            key=self.key,
            key_type=self.key_type,
            mode=self.mode,
            secrets=self.secrets,
        )
        fake.mount(harness.router)
        return harness

    def start(
        self, tmp_path: Path, *needs: Feature, ops: tuple[Operation, ...] = ()
    ) -> tuple[FakeVendor, SyncHarness]:
        """A fake and a harness, or a skip naming what the vendor or connector lacks."""
        fake = self.make_fake()
        for feature in needs:
            if feature in fake.lacks:
                pytest.skip(f"{type(fake).__name__} lacks {feature}: {fake.lacks[feature]}")
        capabilities = self.connector.capabilities
        for op in ops:
            if op not in capabilities.operations:
                pytest.skip(f"{self.connector.name} does not support {op} (capabilities)")
            if op == "remove" and self.mode in ("upsert", "update_only"):
                pytest.skip(f"mode {self.mode!r} never removes")
            if op == "update" and self.mode == "membership":
                pytest.skip("mode 'membership' never updates")
        return fake, self.harness(tmp_path, fake)

    def held(self, fake: FakeVendor) -> set[str]:
        """The keys the destination holds."""
        return set(fake.members())

    def expect(self, rows: list[dict[str, str]]) -> set[str]:
        """The keys ``rows`` should be held under."""
        return {self.vendor_key(row) for row in rows}

    def assert_run(self, result: RunResult, status: str = "succeeded") -> None:
        """``result`` has ``status``; else the run's message and counts say why not."""
        got = status_of(result)
        assert got == status, f"{got}: {result.message} {result.counts}"

    # -- the standard tests ---------------------------------------------------------------

    def test_adds(self, tmp_path: Path) -> None:
        """A first run puts every member of the segment at the destination, fields and all."""
        fake, h = self.start(tmp_path)
        rows = [member(n) for n in range(self.size)]
        h.segment(rows)
        self.assert_run(h.settle())
        assert self.held(fake) == self.expect(rows)
        for row in rows:
            self.assert_fields_held(fake, row)

    def test_updates(self, tmp_path: Path) -> None:
        """A changed field reaches the destination; nobody joins or leaves."""
        fake, h = self.start(tmp_path, ops=("update",))
        rows = [member(n) for n in range(self.size)]
        h.segment(rows)
        self.assert_run(h.settle())
        changed = [dict(row) for row in rows]
        changed[0]["first_name"] = "Renamedkit"
        changed[0]["last_name"] = "Renamedkit"
        changed[0]["country"] = "FR"
        h.segment(changed)
        result = h.settle()
        self.assert_run(result)
        assert self.held(fake) == self.expect(rows)
        self.assert_fields_held(fake, changed[0])

    def test_removes(self, tmp_path: Path) -> None:
        """Members who leave the segment leave the destination; the others stay."""
        fake, h = self.start(tmp_path, ops=("remove",))
        rows = [member(n) for n in range(self.size)]
        h.segment(rows)
        self.assert_run(h.settle())
        h.segment(rows[2:])
        self.assert_run(h.settle())
        assert self.held(fake) == self.expect(rows[2:])

    def test_a_rejected_record_does_not_hold_up_the_others(self, tmp_path: Path) -> None:
        """A record the vendor refuses is reported rejected, the rest land, and it lands on a
        later run once the vendor takes it."""
        fake, h = self.start(tmp_path, "record_rejects")
        rows = [member(n) for n in range(self.size)]
        bad = self.vendor_key(rows[1])
        fake.reject_record(bad)
        h.segment(rows)
        result = h.settle()
        assert result.counts["rejected"] >= 1, result.counts
        assert self.held(fake) == self.expect(rows) - {bad}
        fake.forgive()
        self.assert_run(h.settle())
        assert self.held(fake) == self.expect(rows)

    def test_a_refused_batch_is_split_to_isolate_the_record(self, tmp_path: Path) -> None:
        """A batch the vendor refuses as a whole is halved until only the culprit is left."""
        fake, h = self.start(tmp_path, "batch_refusal")
        rows = [member(n) for n in range(self.size)]
        bad = self.vendor_key(rows[2])
        fake.refuse_batch_with(bad)
        h.segment(rows)
        result = h.settle()
        assert result.counts["rejected"] >= 1, result.counts
        assert self.held(fake) == self.expect(rows) - {bad}

    def test_429_with_retry_after_waits_as_asked(self, tmp_path: Path) -> None:
        fake, h = self.start(tmp_path, "http", "retry_after")
        rows = [member(n) for n in range(self.size)]
        h.segment(rows)
        fake.answer_next(429, 2, retry_after=7)
        self.assert_run(h.settle())
        assert fake.faults_left == 0
        assert h.clock.slept.count(7) >= 2, h.clock.slept
        assert self.held(fake) == self.expect(rows)

    def test_429_without_retry_after_backs_off_and_recovers(self, tmp_path: Path) -> None:
        fake, h = self.start(tmp_path, "http")
        rows = [member(n) for n in range(self.size)]
        h.segment(rows)
        fake.answer_next(429, 2)
        self.assert_run(h.settle())
        assert fake.faults_left == 0
        assert sum(h.clock.slept) > 0, "retried a 429 without waiting"
        assert self.held(fake) == self.expect(rows)

    @pytest.mark.parametrize("status", [500, 502, 503])
    def test_5xx_is_retried(self, tmp_path: Path, status: int) -> None:
        fake, h = self.start(tmp_path, "http")
        rows = [member(n) for n in range(self.size)]
        h.segment(rows)
        fake.answer_next(status, 2)
        self.assert_run(h.settle())
        assert fake.faults_left == 0
        assert sum(h.clock.slept) > 0, "retried a server error without backing off"
        assert self.held(fake) == self.expect(rows)

    def test_refused_credentials_stop_the_run_as_a_configuration_error(
        self, tmp_path: Path
    ) -> None:
        """401 is not retried: the run fails with exit code 78 and sends nothing more."""
        fake, h = self.start(tmp_path, "http")
        h.segment([member(n) for n in range(self.size)])
        fake.answer_next(401, 1000)
        result = h.run()
        assert (status_of(result), result.exit_code) == ("failed", EXIT_CONFIG), result
        assert 1000 - fake.faults_left <= 2, "kept sending with refused credentials"
        assert fake.members() == {}

    def test_no_secret_or_record_value_in_errors_or_logs(self, tmp_path: Path) -> None:
        """Rejections, refusals, throttling, server errors and refused credentials leave no
        secret and no member's email, phone or name in the run's messages or the logs."""
        fake, h = self.start(tmp_path)
        rows = [member(n) for n in range(self.size)]
        if "record_rejects" not in fake.lacks:
            fake.reject_record(self.vendor_key(rows[0]))
        if "batch_refusal" not in fake.lacks:
            fake.refuse_batch_with(self.vendor_key(rows[1]))
        h.segment(rows)
        texts: list[str] = []
        with _captured_logs(texts):
            if "http" not in fake.lacks:
                fake.answer_next(429)
                fake.answer_next(503)
            texts.append(json.dumps(h.settle().as_dict()))
            if "http" not in fake.lacks:
                fake.answer_next(401, 1000)
                texts.append(json.dumps(h.run().as_dict()))
        texts.append(_run_details(h))
        needles = [v for v in self.secrets.values() if v]
        for row in rows:
            needles += [row["email"], row["phone"], row["first_name"], row["last_name"]]
        everything = "\n".join(texts)
        leaked = sorted({needle for needle in needles if needle in everything})
        assert not leaked, f"leaked into errors or logs: {leaked}"

    def test_no_request_exceeds_the_vendor_batch_cap(self, tmp_path: Path) -> None:
        """More members than one batch holds, with batch_size asking for more than the cap:
        the connector's own cap must keep every request within the vendor's."""
        fake = self.make_fake()
        if fake.batch_cap is None:
            pytest.skip(f"{type(fake).__name__} declares no batch_cap: no vendor cap to respect")
        capabilities = self.connector.capabilities
        assert capabilities.max_batch_size <= fake.batch_cap, (
            f"capabilities.max_batch_size {capabilities.max_batch_size} is over the vendor's"
            f" cap {fake.batch_cap}"
        )
        h = self.harness(tmp_path, fake)
        rows = [member(n) for n in range(capabilities.max_batch_size + 1)]
        h.segment(rows)
        self.assert_run(h.settle())
        assert 0 < fake.largest_batch <= fake.batch_cap, fake.batch_sizes
        assert self.held(fake) == self.expect(rows)

    def test_resending_converges_without_duplicates(self, tmp_path: Path) -> None:
        """An answer lost after the vendor applied the batch (HTTP vendors), then a full
        resync: the destination holds each member once, as the segment says."""
        fake, h = self.start(tmp_path)
        rows = [member(n) for n in range(self.size)]
        h.segment(rows)
        if "http" not in fake.lacks:
            fake.lose_next_answers(1)
        self.assert_run(h.settle())
        self.assert_run(h.settle(full_resync=True))
        self.assert_run(h.settle())
        assert self.held(fake) == self.expect(rows)
        assert len(fake.members()) == len(rows)

    # -- helpers --------------------------------------------------------------------------

    def assert_fields_held(self, fake: FakeVendor, row: Row) -> None:
        """The destination holds ``row``'s mapped name fields as sent (unless the fake
        declares it cannot show field values)."""
        if "field_values" in fake.lacks:
            return
        held = fake.members()[self.vendor_key(row)]
        for field, value in self._mapped_values(row).items():
            assert held.get(field) == value, (field, held)

    def _mapped_values(self, row: Row) -> dict[str, str]:
        """Destination field to value for the plain-text fields mapped from a name column
        (typed fields may be transformed on the way; names arrive as they are)."""
        values: dict[str, str] = {}
        for field, spec in self.fields.items():
            column = spec if isinstance(spec, str) else None
            if column in ("first_name", "last_name") and row.get(column) is not None:
                values[field] = str(row[column])
        return values


@contextmanager
def _captured_logs(into: list[str]) -> Iterator[None]:
    """Every structlog event and stdlib log record (httpx's included) at any level."""

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            into.append(self.format(record))

    root = logging.getLogger()
    handler = Keep(logging.DEBUG)
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with structlog.testing.capture_logs() as events:
            yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
    into.extend(json.dumps(event, default=str) for event in events)


def _run_details(h: SyncHarness) -> str:
    """``syncer runs --json`` and ``syncer run show --json`` for every run, as a user reads
    them (the reasons of rejected and failed records included)."""
    from click.testing import CliRunner

    from syncer.cli import cli

    env = {
        "SYNCER_STATE_URL": h.state_url,
        "SYNCER_WAREHOUSE_URL": h.warehouse_url,
        "SYNCER_MAPPINGS_DIR": str(h.root),
    }
    runner = CliRunner()
    logging_config = structlog.get_config()  # the CLI configures logging for its process
    try:
        listing = runner.invoke(cli, ["runs", "--json"], env=env)
        texts = [listing.output]
        runs = json.loads(listing.output)["runs"]
        for run in runs:
            run_id = str(run.get("id") or run.get("run_id"))
            shown = runner.invoke(cli, ["run", "show", run_id, "--json"], env=env)
            texts.append(shown.output)
    finally:
        structlog.configure(**logging_config)
    return "\n".join(texts)
