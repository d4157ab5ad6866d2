"""Fault injection through the real CLI: a misbehaving destination never costs a record.

Each scenario scripts the fake destination (429s with and without Retry-After, 5xx bursts,
timeouts, connection resets, per-record rejections, a poison record that makes its whole batch
400), runs `syncer sync now` in a subprocess, then re-runs it until it exits 0 and checks that
the server holds exactly the segment. Request counts are printed (`pytest -s` shows them).
"""

from __future__ import annotations

import math
import subprocess
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from tests.fake_destination import Fault, Harness, harness, members_of, people

FAST = {"SYNCER_BATCH_TIME_BUDGET": "20", "SYNCER_MAX_RETRY_AFTER": "2"}


def report(scenario: str, h: Harness, **extra: Any) -> None:
    details = " ".join(f"{k}={v}" for k, v in extra.items())
    print(f"\n[faults] {scenario}: {h.dest.summary()} {details}")


def only_run(doc: dict[str, Any] | None) -> dict[str, Any]:
    assert doc is not None
    (run,) = doc["runs"]
    return run


def test_429_with_retry_after_cools_the_account_and_uses_no_attempts(tmp_path: Path) -> None:
    # One attempt only: if a 429 used up an attempt, the first batch would be left unsynced.
    env = {**FAST, "SYNCER_RETRY_ATTEMPTS": "1"}
    with harness(tmp_path, batch_size=7, env=env) as h:
        rows = people(49)
        h.segment(rows)
        h.dest.script(Fault(429, "1"), Fault(429, "0"), Fault(429, "0"))
        started = time.monotonic()
        code, doc, proc = h.sync()
        elapsed = time.monotonic() - started
        report("429 with Retry-After", h, seconds=round(elapsed, 2))
        assert code == 0, proc.stdout + proc.stderr
        run = only_run(doc)
        assert (run["added"], run["failed"], run["rejected"]) == (49, 0, 0)
        assert h.dest.members == members_of(rows)
        assert h.dest.statuses[429] == 3
        # The whole account waited out "Retry-After: 1", not just the batch that got it.
        first = next(hit for hit in h.dest.timeline if hit.status == 429)
        assert first.answered is not None
        during = [
            hit
            for hit in h.dest.timeline
            if first.answered + 0.35 < hit.arrived < first.answered + 0.85
        ]
        assert during == [], f"{len(during)} requests sent while the account was cooling down"


def test_429_without_retry_after_backs_off_and_lands_everything(tmp_path: Path) -> None:
    env = {**FAST, "SYNCER_RETRY_ATTEMPTS": "1"}
    with harness(tmp_path, batch_size=7, env=env) as h:
        rows = people(30)
        h.segment(rows)
        h.dest.script(Fault(429), Fault(429))
        started = time.monotonic()
        code, doc, proc = h.sync()
        elapsed = time.monotonic() - started
        report("429 without Retry-After", h, seconds=round(elapsed, 2))
        assert code == 0, proc.stdout + proc.stderr
        assert only_run(doc)["added"] == 30
        assert h.dest.members == members_of(rows)
        assert h.dest.statuses[429] == 2


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_long_retry_after_is_clamped_by_max_retry_after(tmp_path: Path, form: str) -> None:
    env = {**FAST, "SYNCER_MAX_RETRY_AFTER": "1"}
    with harness(tmp_path, batch_size=7, env=env) as h:
        rows = people(21)
        h.segment(rows)
        value = "40" if form == "seconds" else formatdate(time.time() + 40, usegmt=True)
        h.dest.script(Fault(429, value))
        started = time.monotonic()
        try:
            code, _, proc = h.sync(timeout=30)  # unclamped, this would wait 40 s
        except subprocess.TimeoutExpired:
            report(f"429 Retry-After 40 s ({form}), clamp 1 s", h, seconds=">30 (killed)")
            pytest.fail(f"Retry-After: {value} was not clamped to SYNCER_MAX_RETRY_AFTER=1")
        elapsed = time.monotonic() - started
        report(f"429 Retry-After 40 s ({form}), clamp 1 s", h, seconds=round(elapsed, 2))
        assert code == 0, proc.stdout + proc.stderr
        assert h.dest.members == members_of(rows)


def test_429_storm_from_a_rate_limited_server_drops_nothing(tmp_path: Path) -> None:
    rows = people(12)
    counts = {}
    for label, extra in (
        ("unpaced", ""),
        ("paced", "  rate_limits: [{requests: 8, per_seconds: 1}]\n"),
    ):
        root = tmp_path / label
        root.mkdir()
        with harness(root, batch_size=1, extra=extra, env=FAST, rate_limit=(8, 1.0)) as h:
            h.segment(rows)
            started = time.monotonic()
            code, doc, proc = h.sync()
            elapsed = time.monotonic() - started
            report(f"server limit 8/s, client {label}", h, seconds=round(elapsed, 2))
            assert code == 0, proc.stdout + proc.stderr
            assert only_run(doc)["added"] == len(rows)
            assert h.dest.members == members_of(rows)
            counts[label] = h.dest.statuses[429]
    print(f"[faults] 429s unpaced={counts['unpaced']} paced={counts['paced']}")


def test_5xx_burst_within_the_attempts_is_retried_in_the_same_run(tmp_path: Path) -> None:
    extra = "  max_concurrency: 1\n"  # one batch at a time: the burst hits one batch
    with harness(tmp_path, batch_size=7, extra=extra, env=FAST) as h:
        rows = people(35)
        h.segment(rows)
        # four failures, one of them without Retry-After (exponential backoff), then success
        h.dest.script(Fault(503), Fault(500, "0"), Fault(502, "0"), Fault(500, "0"))
        started = time.monotonic()
        code, doc, proc = h.sync()
        elapsed = time.monotonic() - started
        report("500/502/503 burst within 5 attempts", h, seconds=round(elapsed, 2))
        assert code == 0, proc.stdout + proc.stderr
        assert (only_run(doc)["added"], only_run(doc)["failed"]) == (35, 0)
        assert h.dest.members == members_of(rows)
        assert h.dest.hits == 5 + 4  # five batches, four of them re-sent


def test_5xx_burst_beyond_the_attempts_leaves_the_batch_for_the_next_run(tmp_path: Path) -> None:
    extra = "  max_concurrency: 1\n"
    env = {**FAST, "SYNCER_RETRY_ATTEMPTS": "3"}
    with harness(tmp_path, batch_size=7, extra=extra, env=env) as h:
        rows = people(35)
        h.segment(rows)
        h.dest.script(Fault(503, "0"), Fault(502, "0"), Fault(500, "0"))
        code, doc, proc = h.sync()
        assert code == 75, proc.stdout + proc.stderr
        run = only_run(doc)
        assert (run["added"], run["failed"]) == (28, 7)
        assert len(h.state_keys()) == 28
        codes = h.converge()
        report("5xx burst beyond 3 attempts", h, recovery_runs=codes)
        assert codes == [0]
        assert h.dest.members == members_of(rows)
        assert h.state_keys() == set(members_of(rows))


def test_timeouts_are_retried_and_nothing_is_lost(tmp_path: Path) -> None:
    # The webhook's own `timeout` wins over SYNCER_HTTP_TIMEOUT (README), so set both.
    env = {**FAST, "SYNCER_HTTP_TIMEOUT": "0.5"}
    with harness(tmp_path, batch_size=7, extra="  timeout: 0.5\n", env=env) as h:
        rows = people(28)
        h.segment(rows)
        # The server answers after 3 s (and applies the batch then): the client gave up long
        # before, so the ack is lost and the batch must be sent again.
        h.dest.script(Fault(delay=3), Fault(delay=3))
        started = time.monotonic()
        codes = h.converge()
        elapsed = time.monotonic() - started
        h.dest.wait_idle()
        report("timeouts (server 3 s, client 0.5 s)", h, runs=codes, seconds=round(elapsed, 2))
        assert h.dest.abandoned >= 1, "the client did not give up after 0.5 s"
        assert codes[-1] == 0
        assert h.dest.members == members_of(rows)
        assert h.state_keys() == set(members_of(rows))


def test_connection_resets_are_retried_and_nothing_is_lost(tmp_path: Path) -> None:
    with harness(tmp_path, batch_size=7, env=FAST) as h:
        rows = people(28)
        h.segment(rows)
        h.dest.script(Fault(reset=True), Fault(reset=True), Fault(reset=True))
        started = time.monotonic()
        codes = h.converge()
        elapsed = time.monotonic() - started
        report("connection resets", h, runs=codes, seconds=round(elapsed, 2))
        assert h.dest.resets == 3
        assert codes == [0], "3 resets over 4 batches with 5 attempts each should not fail a run"
        assert h.dest.members == members_of(rows)


def test_per_record_rejections_are_kept_and_retried_every_run(tmp_path: Path) -> None:
    with harness(tmp_path, batch_size=7, env=FAST) as h:
        rows = people(21)
        h.segment(rows)
        refused = [rows[1][0], rows[9][0], rows[20][0]]
        h.dest.reject_keys = dict.fromkeys(refused, "contact is unsubscribed")
        code, doc, proc = h.sync()
        assert code == 1, proc.stdout + proc.stderr
        run = only_run(doc)
        assert (run["added"], run["rejected"], run["status"]) == (18, 3, "partial")
        detail = h.cli("run", "show", run["run_id"], "--json")
        assert detail.returncode == 0, detail.stderr
        assert detail.stdout.count("contact is unsubscribed") == 3
        assert not h.state_keys() & set(refused)

        sent = h.dest.records_sent()
        code, doc, _ = h.sync()
        assert code == 1
        assert h.dest.records_sent() - sent == 3, "only the rejected records are sent again"

        h.dest.reject_keys = {}
        codes = h.converge()
        report("per-record rejections", h, recovery_runs=codes)
        assert codes == [0]
        assert h.dest.members == members_of(rows)


def test_one_poison_record_is_isolated_and_every_other_record_lands(tmp_path: Path) -> None:
    batch = 16
    with harness(tmp_path, batch_size=batch, env=FAST) as h:
        rows = people(48)
        h.segment(rows)
        poison = rows[21][0]  # in the second batch
        h.dest.poison_keys = {poison}
        code, doc, proc = h.sync()
        assert code == 1, proc.stdout + proc.stderr
        run = only_run(doc)
        assert (run["added"], run["rejected"], run["failed"]) == (47, 1, 0)
        good = {k: v for k, v in members_of(rows).items() if k != poison}
        assert h.dest.members == good
        assert h.state_keys() == set(good)
        extra_requests = h.dest.hits - math.ceil(len(rows) / batch)
        # Halving a batch of 16 down to the one bad record: two requests per level.
        assert extra_requests <= 2 * math.ceil(math.log2(batch)), extra_requests
        detail = h.cli("run", "show", run["run_id"], "--json")
        assert "400" in detail.stdout and poison not in detail.stdout

        hits = h.dest.hits
        code, doc, _ = h.sync()
        assert code == 1 and only_run(doc)["rejected"] == 1
        assert h.dest.hits - hits == 1, "the next run sends the poison record alone"

        h.dest.poison_keys = set()
        codes = h.converge()
        report("poison record in a batch of 16", h, halving_extra_requests=extra_requests)
        assert codes == [0]
        assert h.dest.members == members_of(rows)
