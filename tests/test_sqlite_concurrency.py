"""Many syncs at once on the default SQLite state database never fail because of each other.

Processes (`sync now` of every sync at once, round after round), threads (one engine running
every sync on its own thread, as the daemon's workers do) and the real daemon with its default
workers: every run must succeed and every destination must equal its segment. The long version
is bench/sqlite_stress.py (over 1,000 concurrent runs).
"""

from __future__ import annotations

from pathlib import Path

from tests.stress import Project, run_daemon, run_processes, run_threads

SEED = 20261207


def test_concurrent_sync_now_processes_never_fail(tmp_path: Path) -> None:
    project = Project(tmp_path, syncs=8)
    runs, failures = run_processes(project, rounds=4, seed=SEED)
    assert runs == 32
    assert failures == []


def test_syncs_on_threads_of_one_engine_never_fail(tmp_path: Path) -> None:
    project = Project(tmp_path, syncs=8)
    runs, failures = run_threads(project, rounds=6, seed=SEED)
    assert runs == 48
    assert failures == []


def test_the_daemon_with_its_default_workers_never_fails(tmp_path: Path) -> None:
    project = Project(tmp_path, syncs=8, schedule="every 1s")
    runs, failures = run_daemon(project, until_runs=40, seed=SEED)
    assert runs >= 40
    assert failures == []
    # And state is consistent after all of it: one more run of each brings every
    # destination to its segment.
    runs, failures = run_processes(project, rounds=1, seed=SEED)
    assert failures == []
