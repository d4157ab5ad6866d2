"""Whole-process benchmark of syncer beside drt-core, on identical work.

Each size gets a SQLite warehouse of members (email, first_name, ltv, updated_at) and a copy of
it with 1% churn (half field updates with updated_at bumped, a quarter adds, a quarter removes).
A local webhook receiver, in a process of its own, answers 200 to every POST. Three tools sync
the segment to it, 500 records a request, each run a whole process (`syncer sync now`,
`drt run`), in three phases: first run, no change, 1% churn:

- `syncer`: mirror mode (adds, updates and removes are sent), `guards.max_remove_pct: 100`, the
  key read as given (`key_type: string`, the default, as drt does; `--key-type email` checks and
  normalizes every key as an email address, which costs the warehouse reader seconds at 1M);
- `drt-full`: drt-core's `mode: full`, which sends every row on every run (its `rest_api`
  destination in batch mode, 500 rows a request, no pacing);
- `drt-cursor`: drt-core's `mode: incremental` on `updated_at`, which sends rows whose
  `updated_at` is past the last run's; removes are never sent.

Beside them, in the same rounds, two floors read the same query in a process of their own:
`floor-sqlite3` (the stdlib driver's cursor, `fetchmany` in a loop) and `floor-sqlalchemy`
(SQLAlchemy rows with `stream_results`, as in `bench/sync_bench.py`).

Wall time is the whole process (perf_counter around start to exit); `in s` is the time the
tool reports for the run itself (`duration_s` of `syncer sync now --json`, `duration_seconds` of
`drt run --output json`) or, for a floor, the read alone. `peak MB` is the peak RSS of the
largest single process of the run (`os.wait4`: the run's process or a child it waited for, such
as syncer's forked warehouse reader); `tree MB` is the peak of the summed PSS of the run's whole
process tree, sampled every 0.05 s (every 0.2 s after the first second). After every run the
receiver compares what it holds with the segment: `ok`, or how many members are stale (removed
from the segment, still held), missing or wrong.

Repetitions alternate the tools (and rotate which goes first). They all read the same two
warehouse files, made read-only; each tool has its own state, so the phases are identical work:
a first-run repetition starts from empty state and an empty receiver; the state and the
receiver's members after the last first run are kept, and each no-change or churn repetition
starts from a copy of them.

    make peers                                             # drt-core 1.2.1 in bench/.peers/venv
    .venv/bin/python bench/peers_bench.py                  # 1,000,000 members, 3 repetitions
    .venv/bin/python bench/peers_bench.py --sizes 100000,1000000 --reps 3 --json out.json

`make bench-peers` does both (PEERS_ARGS="..." passes options). Without bench/.peers/venv it runs
syncer and the floors only.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from segment import (
    QUERY,
    build_warehouse,
    churn,
    compile_syncer,
)

ROOT = Path(__file__).resolve().parents[1]
PEERS_VENV = ROOT / "bench" / ".peers" / "venv"
DRT_BIN = PEERS_VENV / "bin" / "drt"
SYNCER_BIN = Path(sys.executable).with_name("syncer")

# drt's cursor mode needs the cursor column in every row it reads.
DRT_CURSOR_QUERY = "select email, first_name, ltv, updated_at from members"
BATCH = 500
# drt hands its destination sync.batch_size rows per call, and its rest_api destination opens a
# new HTTP client (a new connection and TLS context) for each call; requests carry
# max_records_per_request (500) rows either way. 10,000 (its fetch size) is drt at its fastest:
# with 500, a client per request, its runs took about four times longer (100,000 members).
DRT_BATCH = 10_000
READ_BATCH = 10_000
PHASES = ("first", "no-change", "churn-1%")
TOOLS = ("syncer", "drt-full", "drt-cursor")
FLOORS = ("floor-sqlite3", "floor-sqlalchemy")


# --- floors (run as a child process) -------------------------------------------------------


def floor_child(kind: str, db: Path) -> dict[str, Any]:
    """Read QUERY in full; the time excludes imports and interpreter start (the parent has it)."""
    rows = 0
    if kind == "sqlite3":
        t0 = time.perf_counter()
        conn = sqlite3.connect(db)
        cursor = conn.execute(QUERY)
        while part := cursor.fetchmany(READ_BATCH):
            rows += len(part)
        conn.close()
    else:
        from sqlalchemy import create_engine, text

        t0 = time.perf_counter()
        engine = create_engine(f"sqlite:///{db}")
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True).execute(text(QUERY))
            for chunk in result.yield_per(READ_BATCH).partitions():
                rows += len(chunk)
        engine.dispose()
    return {"rows": rows, "in_s": round(time.perf_counter() - t0, 3)}


# --- receiver (run as a child process) -----------------------------------------------------


def _digest(fields: dict[str, Any]) -> bytes:
    return hashlib.blake2b(
        f"{fields.get('first_name')}\x1f{fields.get('ltv')!r}".encode(), digest_size=8
    ).digest()


class _Sink:
    """What the receiver holds per tool: bodies not yet applied, counters, members."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[str, list[bytes]] = {}
        self.requests: dict[str, int] = {}
        self.members: dict[str, dict[str, bytes]] = {}
        self.saved: dict[str, dict[str, bytes]] = {}
        self.expected: dict[tuple[str, int, int], dict[str, bytes]] = {}

    def apply(self, tool: str) -> dict[str, Any]:
        """Apply the bodies received since the last call: syncer's format or drt's rows."""
        with self.lock:
            bodies = self.pending.pop(tool, [])
            requests = self.requests.pop(tool, 0)
        t0 = time.perf_counter()
        members = self.members.setdefault(tool, {})
        ops: dict[str, int] = {}
        records = 0
        for raw in bodies:
            body = json.loads(raw)
            batch = body["records"]
            records += len(batch)
            op = body.get("operation", "upsert")
            ops[op] = ops.get(op, 0) + len(batch)
            if op == "remove":
                for r in batch:
                    members.pop(r["key"], None)
            elif "operation" in body:  # syncer: {"key": ..., "fields": {...}}
                for r in batch:
                    members[r["key"]] = _digest(r["fields"])
            else:  # drt: the rows as read
                for r in batch:
                    members[r["email"]] = _digest(r)
        return {
            "requests": requests,
            "records": records,
            "ops": ops,
            "apply_s": round(time.perf_counter() - t0, 3),
        }

    def segment(self, db: str) -> dict[str, bytes]:
        st = os.stat(db)
        key = (db, st.st_mtime_ns, st.st_size)
        if key not in self.expected:
            conn = sqlite3.connect(db)
            self.expected[key] = {
                email: _digest({"first_name": first_name, "ltv": ltv})
                for email, first_name, ltv in conn.execute(QUERY)
            }
            conn.close()
        return self.expected[key]

    def verify(self, tool: str, db: str) -> dict[str, Any]:
        out = self.apply(tool)
        members, expected = self.members.get(tool, {}), self.segment(db)
        out["members"] = len(members)
        out["segment"] = len(expected)
        out["stale"] = len(members.keys() - expected.keys())
        out["missing"] = len(expected.keys() - members.keys())
        out["wrong"] = sum(1 for k, v in expected.items() if k in members and members[k] != v)
        return out


def serve_receiver() -> None:
    sink = _Sink()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, payload: dict[str, Any] | None = None) -> None:
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            _, action, tool = self.path.split("/", 2)
            if action == "sink":
                # Parsing waits until the run is over, so the receiver costs the tools as
                # little CPU as possible while they are timed.
                with sink.lock:
                    sink.pending.setdefault(tool, []).append(body)
                    sink.requests[tool] = sink.requests.get(tool, 0) + 1
                self._answer()
            elif action == "reset":
                with sink.lock:
                    sink.pending.pop(tool, None)
                    sink.requests.pop(tool, None)
                    sink.members.pop(tool, None)
                self._answer({})
            elif action == "save":
                sink.apply(tool)
                sink.saved[tool] = dict(sink.members.get(tool, {}))
                self._answer({})
            elif action == "restore":
                with sink.lock:
                    sink.pending.pop(tool, None)
                    sink.requests.pop(tool, None)
                sink.members[tool] = dict(sink.saved.get(tool, {}))
                self._answer({})
            else:
                self.send_error(404)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            _, action, tool = url.path.split("/", 2)
            if action == "verify":
                self._answer(sink.verify(tool, parse_qs(url.query)["db"][0]))
            elif action == "apply":
                self._answer(sink.apply(tool))
            else:
                self.send_error(404)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


class Receiver:
    """The receiver process, and calls to its control endpoints."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--receiver"], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.base = f"http://127.0.0.1:{self.port}"

    def call(self, method: str, path: str, body: bytes = b"") -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            conn.request(method, path, body=body or None)
            data = conn.getresponse().read()
        finally:
            conn.close()
        return json.loads(data) if data else None

    def self_test(self, requests: int = 400) -> dict[str, Any]:
        """How fast the receiver takes syncer-shaped requests of 500 records on one connection."""
        records = [
            {
                "fields": {"email": f"u{i}@example.com", "first_name": f"name{i}", "ltv": 1.5},
                "key": f"u{i}@example.com",
            }
            for i in range(BATCH)
        ]
        body = json.dumps(
            {"operation": "add", "records": records, "run": "x", "sync": "bench"},
            separators=(",", ":"),
        ).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port)
        t0 = time.perf_counter()
        for _ in range(requests):
            conn.request(
                "POST", "/sink/self-test", body=body, headers={"Content-Type": "application/json"}
            )
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
        took = time.perf_counter() - t0
        conn.close()
        applied = self.call("GET", "/apply/self-test")
        self.call("POST", "/reset/self-test")
        return {
            "requests": requests,
            "records": requests * BATCH,
            "body_bytes": len(body),
            "seconds": round(took, 3),
            "requests_per_s": round(requests / took),
            "records_per_s": round(requests * BATCH / took),
            "apply_after_s": applied["apply_s"],
        }

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


# --- running one process -------------------------------------------------------------------


def _tree(root: int) -> list[int]:
    """root and its descendants (this kernel has no /proc/<pid>/task/<tid>/children)."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, []))
    return out


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeSampler(threading.Thread):
    """Peak summed PSS of a process tree: every 0.05 s for the first second, then every 0.2 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kb: int | None = None  # None: the process ended before the first sample
        self.done = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.done.wait(0.05 if time.monotonic() - t0 < 1 else 0.2):
            kb = sum(_pss_kb(p) for p in _tree(self.pid))
            if kb:
                self.peak_kb = max(self.peak_kb or 0, kb)


@dataclass
class Proc:
    wall_s: float
    rss_mb: float
    tree_mb: float | None
    returncode: int
    stdout: str
    stderr: str


def run_process(cmd: list[str], env: dict[str, str], cwd: Path) -> Proc:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        sampler.done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Proc(
            wall_s=round(wall, 3),
            rss_mb=round(usage.ru_maxrss / 1024, 1),
            tree_mb=None if sampler.peak_kb is None else round(sampler.peak_kb / 1024, 1),
            returncode=proc.returncode,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )


# --- the tools -----------------------------------------------------------------------------


@dataclass
class Sample:
    size: int
    phase: str
    rep: int
    tool: str
    wall_s: float
    in_s: float | None
    rss_mb: float
    tree_mb: float | None
    load1: float
    ok: bool = True
    requests: int | None = None
    records: int | None = None
    ops: dict[str, int] = field(default_factory=dict)
    check: str = ""
    error: str = ""


def _base_env(home: Path) -> dict[str, str]:
    # Only what both tools need, the same for both: no inherited SYNCER_*/DRT_* settings.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}
    env["DO_NOT_TRACK"] = "1"
    return env


class Bench:
    def __init__(
        self,
        work: Path,
        size: int,
        receiver: Receiver,
        with_drt: bool,
        drt_batch: int,
        key_type: str,
    ) -> None:
        self.work, self.size, self.receiver = work, size, receiver
        self.key_type = key_type
        self.tools = TOOLS if with_drt else TOOLS[:1]
        self.w0, self.w1 = work / "warehouse.db", work / "warehouse-churned.db"
        self.home = work / "home"
        self.home.mkdir()
        self.drt_batch = drt_batch

    def build(self) -> dict[str, int]:
        build_warehouse(self.w0, self.size)
        counts = churn(self.w0, self.w1, self.size)
        for w in (self.w0, self.w1):
            w.chmod(0o444)  # every tool and floor only reads them
        self._write_projects()
        return counts

    def _write_projects(self) -> None:
        mappings = self.work / "syncer" / "mappings"
        mappings.mkdir(parents=True)
        (self.work / "syncer" / "state").mkdir()
        (mappings / "bench.yaml").write_text(
            json.dumps(  # JSON is YAML
                {
                    "name": "bench",
                    "source": {"query": QUERY, "key": "email", "key_type": self.key_type},
                    "mode": "mirror",
                    "fields": {"email": "email", "first_name": "first_name", "ltv": "ltv"},
                    "destination": {
                        "connector": "webhook",
                        "url": f"{self.receiver.base}/sink/syncer",
                        "batch_size": BATCH,
                    },
                    "guards": {"max_remove_pct": 100},
                },
                indent=2,
            )
        )
        (self.home / ".drt").mkdir()
        (self.home / ".drt" / "profiles.yml").write_text(
            json.dumps(
                {
                    "w0": {"type": "sqlite", "database": str(self.w0), "fetch_size": READ_BATCH},
                    "w1": {"type": "sqlite", "database": str(self.w1), "fetch_size": READ_BATCH},
                }
            )
        )
        for tool in ("drt-full", "drt-cursor"):
            project = self.work / tool / "project"
            (project / "syncs").mkdir(parents=True)
            (project / "drt_project.yml").write_text(json.dumps({"name": "bench", "profile": "w0"}))
            sync: dict[str, Any] = {
                "batch_size": self.drt_batch,
                # drt paces every destination at 10 requests/s unless told otherwise; 0 is
                # its "no pacing", since the receiver has no limit.
                "rate_limit": {"requests_per_second": 0},
                "on_error": "fail",
            }
            if tool == "drt-full":
                sync["mode"] = "full"
            else:
                sync.update(mode="incremental", cursor_field="updated_at")
            (project / "syncs" / "bench.yml").write_text(
                json.dumps(
                    {
                        "name": "bench",
                        "model": QUERY if tool == "drt-full" else DRT_CURSOR_QUERY,
                        "destination": {
                            "type": "rest_api",
                            "url": f"{self.receiver.base}/sink/{tool}",
                            "method": "POST",
                            "headers": {"Content-Type": "application/json"},
                            "body_mode": "batch",
                            "batch_template": '{"records": {{ rows | tojson }}}',
                            "max_records_per_request": BATCH,
                        },
                        "sync": sync,
                    },
                    indent=2,
                )
            )

    # State: reset for a first run; kept after it; a copy of it for every later repetition.

    def _state(self, tool: str) -> tuple[Path, Path]:
        if tool == "syncer":
            return self.work / "syncer" / "state", self.work / "syncer" / "state-saved"
        return self.work / tool / "project" / ".drt", self.work / tool / "drt-saved"

    def prepare(self, tool: str, phase: str) -> None:
        live, saved = self._state(tool)
        shutil.rmtree(live, ignore_errors=True)
        if phase == "first":
            live.mkdir()
            self.receiver.call("POST", f"/reset/{tool}")
        else:
            shutil.copytree(saved, live)
            self.receiver.call("POST", f"/restore/{tool}")
        os.sync()  # so the copy's writeback does not land inside the timed run

    def keep(self, tool: str) -> None:
        live, saved = self._state(tool)
        shutil.rmtree(saved, ignore_errors=True)
        shutil.copytree(live, saved)
        self.receiver.call("POST", f"/save/{tool}")

    def run(self, name: str, phase: str, rep: int) -> Sample:
        db = self.w1 if phase == "churn-1%" else self.w0
        env = _base_env(self.home)
        if name in FLOORS:
            kind = name.removeprefix("floor-")
            cmd = [sys.executable, __file__, "--floor", kind, str(db)]
            cwd = self.work
        elif name == "syncer":
            self.prepare(name, phase)
            env.update(
                SYNCER_WAREHOUSE_URL=f"sqlite:///{db}",
                SYNCER_STATE_URL=f"sqlite:///{self.work / 'syncer' / 'state' / 'state.db'}",
                SYNCER_MAPPINGS_DIR=str(self.work / "syncer" / "mappings"),
            )
            cmd, cwd = [str(SYNCER_BIN), "sync", "now", "bench", "--json"], self.work / "syncer"
        else:
            self.prepare(name, phase)
            profile = "w1" if phase == "churn-1%" else "w0"
            cmd = [str(DRT_BIN), "run", "--output", "json", "--profile", profile]
            cwd = self.work / name / "project"
        load1 = os.getloadavg()[0]
        p = run_process(cmd, env, cwd)
        s = Sample(self.size, phase, rep, name, p.wall_s, None, p.rss_mb, p.tree_mb, load1)
        try:
            out = json.loads(p.stdout)
            if name in FLOORS:
                s.in_s, s.records = out["in_s"], out["rows"]
            elif name == "syncer":
                run = out["runs"][0]
                s.in_s = run["duration_s"]
                s.ok = p.returncode == 0 and run["status"] == "succeeded"
            else:
                run = out["syncs"][0]
                s.in_s = run["duration_seconds"]
                s.ok = p.returncode == 0 and run["status"] == "success"
        except (ValueError, KeyError, IndexError):
            s.ok = False
        if not s.ok:
            s.error = (p.stderr or p.stdout)[-2000:]
        if name not in FLOORS:
            v = self.receiver.call("GET", f"/verify/{name}?db={quote(str(db))}")
            s.requests, s.records, s.ops = v["requests"], v["records"], v["ops"]
            bad = {k: v[k] for k in ("stale", "missing", "wrong") if v[k]}
            s.check = "ok" if not bad else " ".join(f"{k} {n}" for k, n in bad.items())
            if phase == "first":
                self.keep(name)
        return s


# --- report --------------------------------------------------------------------------------


def _median(xs: list[float]) -> float:
    return round(statistics.median(xs), 3)


def summarize(samples: list[Sample]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for phase in PHASES:
        by_tool: dict[str, list[Sample]] = {}
        for s in samples:
            if s.phase == phase:
                by_tool.setdefault(s.tool, []).append(s)
        medians = {t: _median([s.wall_s for s in ss]) for t, ss in by_tool.items()}
        for tool, ss in by_tool.items():
            ins = [s.in_s for s in ss if s.in_s is not None]
            row: dict[str, Any] = {
                "phase": phase,
                "tool": tool,
                "n": len(ss),
                "min_s": min(s.wall_s for s in ss),
                "median_s": medians[tool],
                "in_s": _median(ins) if ins else None,
                "rss_mb": max(s.rss_mb for s in ss),
                "tree_mb": max((s.tree_mb for s in ss if s.tree_mb is not None), default=None),
                "requests": ss[-1].requests,
                "records": ss[-1].records,
                "check": ", ".join(sorted({s.check for s in ss if s.check})) or "",
                "failed": sum(not s.ok for s in ss),
            }
            for ref in ("floor-sqlite3", "drt-full", "drt-cursor"):
                if ref in medians and ref != tool and medians[ref] > 0:
                    row[f"x_{ref}"] = round(medians[tool] / medians[ref], 2)
            rows.append(row)
    return rows


def print_table(size: int, rows: list[dict[str, Any]]) -> None:
    print(
        f"\n{size:,} members\n"
        f"{'phase':<10} {'tool':<16} {'min s':>7} {'med s':>7} {'in s':>7} {'peak MB':>7} "
        f"{'tree MB':>7} {'reqs':>6} {'records':>9} {'x sqlite3':>9} {'x drt-full':>10} "
        f"{'x drt-cur':>9}  receiver"
    )

    def x(row: dict[str, Any], ref: str) -> str:
        v = row.get(f"x_{ref}")
        return "" if v is None else f"{v:.2f}"

    for r in rows:
        ins = "" if r["in_s"] is None else f"{r['in_s']:.2f}"
        reqs = "" if r["requests"] is None else str(r["requests"])
        tree = "" if r["tree_mb"] is None else f"{r['tree_mb']:.1f}"
        check = r["check"] + (f" FAILED {r['failed']}/{r['n']}" if r["failed"] else "")
        print(
            f"{r['phase']:<10} {r['tool']:<16} {r['min_s']:>7.2f} {r['median_s']:>7.2f} "
            f"{ins:>7} {r['rss_mb']:>7.1f} {tree:>7} {reqs:>6} "
            f"{r['records'] if r['records'] is not None else '':>9} "
            f"{x(r, 'floor-sqlite3'):>9} {x(r, 'drt-full'):>10} {x(r, 'drt-cursor'):>9}  {check}"
        )


def targets(results: dict[int, list[dict[str, Any]]]) -> list[str]:
    """The issue's targets, judged from the medians (whole process)."""
    lines: list[str] = []

    def get(size: int, phase: str, tool: str) -> dict[str, Any] | None:
        return next((r for r in results[size] if r["phase"] == phase and r["tool"] == tool), None)

    def mark(ok: bool) -> str:
        return "met " if ok else "MISS"

    for size in results:
        first = get(size, "first", "syncer")
        if first and "x_drt-full" in first:
            x = first["x_drt-full"]
            lines.append(
                f"{mark(x < 1)} {size:,} first run faster than drt full mode: {x:.2f}x "
                f"(aim 0.5x: {'met' if x <= 0.5 else 'not yet'})"
            )
        for phase in ("no-change", "churn-1%"):
            r = get(size, phase, "syncer")
            if not r:
                continue
            if "x_floor-sqlite3" in r:
                x = r["x_floor-sqlite3"]
                lines.append(
                    f"{mark(x <= 3)} {size:,} {phase} within 3x the sqlite3 floor: {x:.2f}x"
                )
            if "x_drt-cursor" in r:
                x = r["x_drt-cursor"]
                lines.append(
                    f"{mark(x <= 2)} {size:,} {phase} at most 2x drt cursor mode: {x:.2f}x"
                )
        peak = max(r["rss_mb"] for r in results[size] if r["tool"] == "syncer")
        tree = max((r["tree_mb"] or 0) for r in results[size] if r["tool"] == "syncer")
        lines.append(
            f"{mark(peak < 150)} {size:,} syncer peak RSS under 150 MB: {peak:.1f} MB "
            f"(largest process; whole tree PSS {tree:.1f} MB)"
        )
    if 100_000 in results and 1_000_000 in results:
        big = max(r["rss_mb"] for r in results[1_000_000] if r["tool"] == "syncer")
        small = max(r["rss_mb"] for r in results[100_000] if r["tool"] == "syncer")
        lines.append(
            f"{mark(big <= 1.5 * small)} syncer RSS 1M / 100k: {big / small:.2f}x (<= 1.5x)"
        )
    return lines


def machine() -> dict[str, Any]:
    def version(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return ""

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "syncer_commit": version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "drt": version([str(DRT_BIN), "--version"]).split("\n")[0] if DRT_BIN.exists() else None,
        "load_average": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000000")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write every sample and the summary here")
    parser.add_argument(
        "--drt-batch-size",
        type=int,
        default=DRT_BATCH,
        help=f"drt's sync.batch_size: rows per load call, each with an HTTP client of its own "
        f"(default {DRT_BATCH}); a request carries {BATCH} rows whatever it is",
    )
    parser.add_argument(
        "--key-type",
        default="string",
        choices=("string", "email"),
        help="syncer's source.key_type (default string: keys as given, as drt sends them)",
    )
    parser.add_argument("--no-drt", action="store_true", help="syncer and the floors only")
    parser.add_argument("--workdir", type=Path, help="keep warehouses and state here")
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--floor", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    compile_syncer()
    if args.receiver:
        serve_receiver()
        return
    if args.floor:
        print(json.dumps(floor_child(args.floor[0], Path(args.floor[1]))))
        return

    with_drt = DRT_BIN.exists() and not args.no_drt
    if not with_drt and not args.no_drt:
        print(
            f"drt-core is not installed in {PEERS_VENV}: running syncer and the floors only. "
            "`make peers` installs it there (never into .venv); `make bench-peers` installs it "
            "and runs this.",
            flush=True,
        )
    info = machine()
    print(
        f"{info}\nsyncer key_type {args.key_type}; drt sync.batch_size {args.drt_batch_size}",
        flush=True,
    )
    info.update(key_type=args.key_type, drt_batch_size=args.drt_batch_size)
    receiver = Receiver()
    report: dict[str, Any] = {"machine": info, "sizes": {}}
    summaries: dict[int, list[dict[str, Any]]] = {}
    try:
        test = receiver.self_test()
        report["receiver"] = test
        print(
            f"receiver: {test['requests']} requests of {BATCH} records ({test['body_bytes']:,} "
            f"bytes) in {test['seconds']} s on one keep-alive connection: "
            f"{test['requests_per_s']:,} requests/s, {test['records_per_s']:,} records/s "
            f"(parsing afterwards, untimed: {test['apply_after_s']} s)",
            flush=True,
        )
        for size in (int(s) for s in args.sizes.split(",")):
            with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
                bench = Bench(
                    Path(tmp), size, receiver, with_drt, args.drt_batch_size, args.key_type
                )
                counts = bench.build()
                os.sync()
                print(f"\n{size:,} members, churn {counts}", flush=True)
                load_before = os.getloadavg()
                samples: list[Sample] = []
                for phase in PHASES:
                    for rep in range(args.reps):
                        k = rep % len(bench.tools)
                        order = [*bench.tools[k:], *bench.tools[:k], *FLOORS]
                        for name in order:
                            s = bench.run(name, phase, rep)
                            samples.append(s)
                            extra = f" in {s.in_s}" if s.in_s is not None else ""
                            print(
                                f"  {phase:<10} rep {rep} {name:<16} {s.wall_s:>8.2f} s{extra} "
                                f"peak {s.rss_mb} MB tree {s.tree_mb} MB reqs {s.requests} "
                                f"records {s.records} {s.ops or ''} {s.check} "
                                f"load {s.load1:.2f}{'' if s.ok else ' FAILED: ' + s.error}",
                                flush=True,
                            )
                load_after = os.getloadavg()
                rows = summarize(samples)
                summaries[size] = rows
                print_table(size, rows)
                print(
                    f"load average before {', '.join(f'{x:.2f}' for x in load_before)}; "
                    f"after {', '.join(f'{x:.2f}' for x in load_after)}; "
                    f"1-min during runs {min(s.load1 for s in samples):.2f}-"
                    f"{max(s.load1 for s in samples):.2f}",
                    flush=True,
                )
                report["sizes"][size] = {
                    "churn": counts,
                    "load_before": load_before,
                    "load_after": load_after,
                    "samples": [asdict(s) for s in samples],
                    "summary": rows,
                }
    finally:
        receiver.close()
    print("\ntargets (medians, whole process):")
    lines = targets(summaries)
    for line in lines:
        print(f"  {line}")
    report["targets"] = lines
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
