"""The real ``syncer daemon`` in a subprocess: endpoints, signals, reload, exit codes, leases.

Each test keeps the daemon alive for a few seconds of one-second ticks against the fake
webhook destination, and asserts what an operator would see: probes, metrics, the members at
the destination, exit codes and log lines.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.fake_destination import Harness, cli_env, harness, members_of, people


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class DaemonProc:
    """A ``syncer daemon`` subprocess with its port, stderr file and JSON log lines."""

    def __init__(self, h: Harness, env: dict[str, str] | None = None, tag: str = "d") -> None:
        self.port = free_port()
        self.err_path = h.root / f"daemon-{tag}-{self.port}.err"
        full = cli_env({**h.env, "SYNCER_DAEMON_PORT": str(self.port), **(env or {})})
        full.setdefault("SYNCER_RELOAD_INTERVAL", "0")
        # A daemon that hangs on stop is sent SIGABRT: this makes it print every thread's stack.
        full["PYTHONFAULTHANDLER"] = "1"
        with self.err_path.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "syncer", "daemon"],
                cwd=h.root,
                env=full,
                stdout=subprocess.DEVNULL,
                stderr=err,
                text=True,
            )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.stderr()
            try:
                if get(self.port, "/readyz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"daemon not ready after {timeout}s:\n{self.stderr()}")

    def stderr(self) -> str:
        return self.err_path.read_text()

    def lines(self) -> list[dict[str, Any]]:
        found = []
        for line in self.stderr().splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))
        return found

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == name]

    def wait_for(self, event: str, n: int = 1, timeout: float = 60, **match: Any) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hits = [e for e in self.events(event) if all(e.get(k) == v for k, v in match.items())]
            if len(hits) >= n:
                return
            assert self.proc.poll() is None, self.stderr()
            time.sleep(0.1)
        raise AssertionError(f"no {n}x {event} {match} after {timeout}s:\n{self.stderr()}")

    def stop(self, timeout: float = 30) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds it took)."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)  # its threads' stacks go to stderr
            self.proc.wait(10)
            raise AssertionError(
                f"daemon still running {timeout}s after SIGTERM:\n{self.stderr()[-12000:]}"
            ) from None
        return code, time.monotonic() - start

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextmanager
def running(h: Harness, env: dict[str, str] | None = None, tag: str = "d") -> Iterator[DaemonProc]:
    daemon = DaemonProc(h, env, tag)
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        daemon.kill()


def test_health_metrics_and_a_clean_stop(tmp_path: Path) -> None:
    rows = people(12)
    with harness(tmp_path, extra="schedule: every 1s\n") as h:
        h.segment(rows)
        with running(h, {"SYNCER_SHUTDOWN_GRACE": "20"}) as d:
            assert get(d.port, "/healthz") == (200, "ok\n")
            status, why = get(d.port, "/readyz")
            assert status == 200 and why.strip() == "ok"
            d.wait_for("tick.finished", n=2, status="succeeded")
            status, text = get(d.port, "/metrics")
            code, took = d.stop()
        assert status == 200
        assert h.dest.members_now() == members_of(rows)
        for metric in (
            'syncer_runs_total{status="succeeded",sync="vip"}',
            'syncer_records_total{operation="add",outcome="accepted",sync="vip"} 12.0',
            'syncer_run_duration_seconds_count{sync="vip"}',
            'syncer_last_success_timestamp_seconds{sync="vip"}',
            "# TYPE syncer_http_429_responses_total counter",
            "# TYPE syncer_rate_limit_waits_total counter",
            "syncer_lease_takeovers_total",
            "syncer_scheduled_syncs 1.0",
        ):
            assert metric in text, metric
        assert "@" not in text and "127.0.0.1" not in text  # no keys, no URLs
        assert code == 0, d.stderr()
        assert took < 20
        finished = d.events("tick.finished")
        assert all(e["sync"] == "vip" and e["connector"] == "webhook" for e in finished)
        assert all(e["run_id"] for e in finished)
        engine_lines = d.events("run.finished")
        assert engine_lines and all(e["run_id"] and e["connector"] for e in engine_lines)
        assert d.events("daemon.stopped")
        assert "person0@example.com" not in d.stderr()


def test_a_sync_without_schedule_runs_only_after_sighup_gives_it_one(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        h.segment(people(3))
        with running(h) as d:
            time.sleep(2.5)
            assert h.dest.hits == 0 and not d.events("tick.started")
            h.mapping(extra="schedule: every 1s\n")
            d.proc.send_signal(signal.SIGHUP)
            d.wait_for("daemon.reloaded", why="SIGHUP")
            d.wait_for("tick.finished", status="succeeded")
            # A broken file at reload is reported and the daemon carries on with the old one.
            (h.mappings / "vip.yaml").write_text("name: vip\nsource: [broken\n")
            d.proc.send_signal(signal.SIGHUP)
            d.wait_for("daemon.reload_failed")
            seen = len(d.events("tick.finished"))
            d.wait_for("tick.finished", n=seen + 2)
            assert d.stop()[0] == 0
        assert h.dest.members_now() == members_of(people(3))
        (failed,) = d.events("daemon.reload_failed")
        assert "vip.yaml" in failed["error"]


def test_a_changed_mappings_directory_is_picked_up_without_a_signal(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        h.segment(people(3))
        with running(h, {"SYNCER_RELOAD_INTERVAL": "0.5"}) as d:
            h.mapping(extra="schedule: every 1s\n")
            d.wait_for("daemon.reloaded", why="mappings changed")
            d.wait_for("tick.finished", status="succeeded")
            assert d.stop()[0] == 0


def test_sigterm_lets_the_running_sync_finish_in_flight_batches(tmp_path: Path) -> None:
    rows = people(60)  # 30 batches of 2, 4 at a time
    with harness(tmp_path, batch_size=2, extra="schedule: every 1s\n") as h:
        h.segment(rows)
        h.dest.gate.clear()  # the first 4 batches wait at the destination: the run cannot end
        with running(h, {"SYNCER_SHUTDOWN_GRACE": "20"}) as d:
            deadline = time.monotonic() + 60
            while h.dest.hits < 4:
                assert time.monotonic() < deadline, d.stderr()
                time.sleep(0.02)
            started = time.monotonic()
            d.proc.send_signal(signal.SIGTERM)
            d.wait_for("daemon.stopping", timeout=60)
            h.dest.gate.set()  # the in-flight batches get their answers only now
            code, took = d.proc.wait(timeout=60), time.monotonic() - started
        assert code == 0, d.stderr()
        assert took < 20
        (finished,) = d.events("tick.finished")
        assert finished["status"] == "interrupted"
        assert 0 < len(h.dest.members_now()) < len(rows)
        assert set(h.state_keys()) == set(h.dest.members_now())  # nothing claimed unsent


def test_a_run_longer_than_the_grace_period_exits_75(tmp_path: Path) -> None:
    with harness(tmp_path, batch_size=50, extra="schedule: every 1s\n") as h:
        h.segment(people(5))
        h.dest.gate.clear()  # the run's request is held at the destination: it never ends
        with running(h, {"SYNCER_SHUTDOWN_GRACE": "1"}) as d:
            deadline = time.monotonic() + 60
            while h.dest.hits == 0:  # the run is in flight
                assert time.monotonic() < deadline, d.stderr()
                time.sleep(0.02)
            code, _ = d.stop(timeout=60)  # it must leave after its grace, not wait for the run
        h.dest.gate.set()
        assert code == 75, d.stderr()
        assert d.events("daemon.grace_exceeded")


def test_sync_now_while_the_daemon_runs_the_sync_is_locked_out(tmp_path: Path) -> None:
    with harness(tmp_path, batch_size=1, extra="schedule: every 1s\n") as h:
        h.segment(people(6))
        h.dest.gate.clear()  # the daemon's run is held at the destination until sync now is seen
        with running(h) as d:
            deadline = time.monotonic() + 60
            while h.dest.hits == 0:  # the daemon's run holds its lease and is sending
                assert time.monotonic() < deadline, d.stderr()
                time.sleep(0.02)
            try:
                code, doc, proc = h.sync()
            finally:
                h.dest.gate.set()
            assert code == 75, proc.stdout + proc.stderr
            assert doc is not None and doc["runs"][0]["status"] == "locked"
            assert "already running" in proc.stderr
            d.wait_for("tick.finished", status="succeeded")
            assert d.stop()[0] == 0
        assert h.dest.members_now() == members_of(people(6))


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("bad_schedule", "vip.yaml: schedule:"),
        ("broken_yaml", "vip.yaml"),
        ("bad_setting", "SYNCER_DAEMON_PORT"),
        ("no_mappings", "SYNCER_MAPPINGS_DIR"),
    ],
)
def test_configuration_errors_at_start_exit_78(tmp_path: Path, setup: str, expected: str) -> None:
    with harness(tmp_path) as h:
        env = {"SYNCER_DAEMON_PORT": str(free_port())}
        if setup == "bad_schedule":
            h.mapping(extra="schedule: every fortnight\n")
        elif setup == "broken_yaml":
            (h.mappings / "vip.yaml").write_text("name: vip\n  source: : :\n")
        elif setup == "bad_setting":
            env["SYNCER_DAEMON_PORT"] = "not-a-port"
        else:
            env["SYNCER_MAPPINGS_DIR"] = str(tmp_path / "nowhere")
        proc = h.cli("daemon", env=env, timeout=60)
    assert proc.returncode == 78, proc.stderr
    assert expected in proc.stderr


def test_alerts_fire_once_on_failure_and_once_on_recovery(tmp_path: Path) -> None:
    from tests.test_alerts import Receiver

    receiver = Receiver()
    rows = people(4)
    try:
        with harness(tmp_path, extra="schedule: every 1s\n") as h:
            h.segment(rows)
            h.dest.reject_keys = {email: "blocked address" for email, _, _ in rows}
            env = {"SYNCER_ALERT_WEBHOOK_URL": receiver.url, "SYNCER_ALERT_REJECTED_SHARE": "0.5"}
            with running(h, env) as d:
                d.wait_for("tick.finished", n=3, status="partial")
                assert len(receiver.posts) == 1
                h.dest.reject_keys = {}
                d.wait_for("tick.finished", status="succeeded")
                d.wait_for("tick.finished", n=2, status="succeeded")
                assert d.stop()[0] == 0
        texts = [p["text"] for p in receiver.posts]
        assert len(texts) == 2, texts
        assert "`vip` is failing" in texts[0] and "rejected 4" in texts[0]
        assert "`vip` recovered" in texts[1]
        assert all("@" not in t and "s3cr3t" not in t for t in texts)
    finally:
        receiver.close()
