"""Many syncs at once on the default SQLite state database: the shared setup of the stress test
(tests/test_sqlite_concurrency.py) and its long version (bench/sqlite_stress.py).

Every sync reads its own slice of one SQLite warehouse table and writes its own `file`
destination, so the only thing the runs share is the state database. Each round changes every
slice (members leave, join and change), so every run writes: state rows, audit events and
run counters, while the others do the same.
"""

from __future__ import annotations

import csv
import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAPPING = """\
name: s{n}
source:
  query: select email, name from segment where slice = {n}
  key: email
  key_type: email
mode: mirror
fields:
  name: name
destination:
  connector: file
  path: out/s{n}.csv
  batch_size: {batch}
guards:
  max_remove_pct: 100
{schedule}"""


@dataclass
class Project:
    """A working directory with a warehouse, ``syncs`` mappings and their segments."""

    root: Path
    syncs: int
    members: int = 60
    batch: int = 10
    schedule: str | None = None
    rounds: int = 0
    slices: dict[int, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        (self.root / "mappings").mkdir(parents=True, exist_ok=True)
        for n in range(self.syncs):
            schedule = f"schedule: {self.schedule}\n" if self.schedule else ""
            text = MAPPING.format(n=n, batch=self.batch, schedule=schedule)
            (self.root / "mappings" / f"s{n}.yaml").write_text(text)
            self.slices[n] = {f"m{i}@s{n}.example.com": "name0" for i in range(self.members)}
        with self._warehouse() as conn:
            conn.execute("create table segment (slice integer, email text, name text)")
        self._write()

    @property
    def names(self) -> list[str]:
        return [f"s{n}" for n in range(self.syncs)]

    @property
    def env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("SYNCER_")}
        return {
            **base,
            "SYNCER_WAREHOUSE_URL": f"sqlite:///{self.root / 'warehouse.db'}",
            "SYNCER_MAPPINGS_DIR": str(self.root / "mappings"),
            # The default state database (.syncer/state.db in the working directory).
        }

    def _warehouse(self) -> sqlite3.Connection:
        return sqlite3.connect(self.root / "warehouse.db", timeout=60)

    def _write(self) -> None:
        with self._warehouse() as conn:
            conn.execute("delete from segment")
            conn.executemany(
                "insert into segment values (?, ?, ?)",
                [(n, e, name) for n, rows in self.slices.items() for e, name in rows.items()],
            )

    def churn(self, rng: random.Random) -> None:
        """Every slice: a few leave, a few join, a few change."""
        self.rounds += 1
        for n, rows in self.slices.items():
            for email in rng.sample(sorted(rows), 3):
                del rows[email]
            for i in range(3):
                rows[f"r{self.rounds}-{i}@s{n}.example.com"] = "new"
            for email in rng.sample(sorted(rows), 5):
                rows[email] = f"name{self.rounds}"
        self._write()

    def destination(self, n: int) -> dict[str, str]:
        path = self.root / "out" / f"s{n}.csv"
        with path.open(newline="") as f:
            return {row["key"]: row["name"] for row in csv.DictReader(f)}

    def check_destinations(self) -> None:
        for n, rows in self.slices.items():
            assert self.destination(n) == rows, f"s{n}: destination differs from its segment"


def run_processes(project: Project, rounds: int, seed: int) -> tuple[int, list[str]]:
    """``rounds`` rounds of one `sync now` process per sync, all at once; (runs, failures)."""
    rng = random.Random(seed)
    runs, failures = 0, []
    for _ in range(rounds):
        project.churn(rng)
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "syncer", "sync", "now", name, "--json"],
                cwd=project.root,
                env=project.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name in project.names
        ]
        for name, proc in zip(project.names, procs, strict=True):
            out, err = proc.communicate(timeout=600)
            runs += 1
            if proc.returncode != 0:
                failures.append(f"{name} exit {proc.returncode}: {_why(out, err)}")
        project.check_destinations()
    return runs, failures


def run_threads(project: Project, rounds: int, seed: int) -> tuple[int, list[str]]:
    """The same in one process: every sync on its own thread of one engine, as the daemon's
    workers run them; (runs, failures)."""
    from syncer.engine import SyncEngine
    from syncer.log import configure
    from syncer.mapping import load_all
    from syncer.settings import Settings

    configure("warning", "auto")  # as the CLI's default: the bench prints its own table

    rng = random.Random(seed)
    env = project.env
    settings = Settings(
        warehouse_url=env["SYNCER_WAREHOUSE_URL"],
        state_url=f"sqlite:///{project.root / '.syncer' / 'state.db'}",
        mappings_dir=project.root / "mappings",
    )
    old = Path.cwd()
    os.chdir(project.root)  # the file destinations' relative paths
    try:
        syncs = load_all(project.root / "mappings")
        engine = SyncEngine(settings, fork_reader=False)
        runs, failures = 0, []
        lock = threading.Lock()
        for _ in range(rounds):
            project.churn(rng)
            results: list[Any] = []

            def one(sync: Any, results: list[Any] = results) -> None:
                result = engine.run(sync, trigger="stress")
                with lock:
                    results.append(result)

            threads = [threading.Thread(target=one, args=(s,)) for s in syncs]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(600)
            for result in results:
                runs += 1
                if result.exit_code != 0:
                    failures.append(f"{result.sync}: {result.status}: {result.message}")
            project.check_destinations()
    finally:
        os.chdir(old)
    return runs, failures


def run_daemon(
    project: Project, until_runs: int, seed: int, timeout: float = 600
) -> tuple[int, list[str]]:
    """The real daemon with its default workers, every sync ticking each second while the
    segment keeps changing, until ``until_runs`` runs were recorded; (runs, failures)."""
    rng = random.Random(seed)
    err = (project.root / "daemon.err").open("w")
    env = {**project.env, "SYNCER_DAEMON_PORT": "0", "SYNCER_RELOAD_INTERVAL": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncer", "daemon"],
        cwd=project.root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=err,
        text=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while (seen := _finished_runs(project)) < until_runs:
            assert proc.poll() is None, (project.root / "daemon.err").read_text()[-3000:]
            assert time.monotonic() < deadline, f"only {seen} runs in {timeout}s"
            project.churn(rng)  # then wait until every sync has had a run on the change
            wait_for(lambda: _finished_runs(project) >= seen + project.syncs, 120)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        err.close()
    rows = _run_rows(project)
    failures = [f"{r['sync']}: {r['status']}: {r['message']}" for r in rows if r["bad"]]
    return len(rows), failures


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _state(project: Project) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{project.root / '.syncer' / 'state.db'}?mode=ro", uri=True)


def _finished_runs(project: Project) -> int:
    if not (project.root / ".syncer" / "state.db").exists():
        return 0
    try:
        with _state(project) as conn:
            query = "select count(*) from syncer_runs where finished_at is not null"
            return int(conn.execute(query).fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def _run_rows(project: Project) -> list[dict[str, Any]]:
    with _state(project) as conn:
        rows = conn.execute("select sync, status, message from syncer_runs").fetchall()
    return [
        {
            "sync": sync,
            "status": status,
            "message": message,
            # Interrupted: the daemon was stopped at the end of the test, mid-run.
            "bad": status not in ("succeeded", "interrupted"),
        }
        for sync, status, message in rows
    ]


def _why(out: str, err: str) -> str:
    try:
        runs = json.loads(out)["runs"]
        return "; ".join(f"{r['status']}: {r['message']}" for r in runs)
    except (ValueError, KeyError):
        return err.strip().splitlines()[-1] if err.strip() else "no output"
