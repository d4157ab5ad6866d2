"""Whole-process start-up benchmark: how long the ``syncer`` command takes to do little.

In a temporary directory it builds a SQLite warehouse with a 1,000-member segment, a mapping
sending it to a webhook (a local HTTP server on a thread of this script) or a file, and runs
the first sync (everything added). Then it starts each command N times as its own process
and prints min/median wall time, median CPU time (user + system) and peak RSS, from
os.wait4's rusage of that process and the children it waited for (the forked warehouse
reader):

    syncer --version, syncer --help, syncer connectors, syncer runs,
    syncer sync now bench  (no change: nothing to send)

    .venv/bin/python bench/startup_bench.py                  # 5 of each, webhook
    .venv/bin/python bench/startup_bench.py -n 9 --connector file --members 1000
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from segment import QUERY, build_warehouse, compile_syncer


def write_mapping(directory: Path, destination: str) -> None:
    directory.mkdir()
    (directory / "bench.yaml").write_text(
        "name: bench\n"
        "source:\n"
        f"  query: {QUERY}\n"
        "  key: email\n"
        "mode: mirror\n"
        "fields:\n"
        "  email: email\n"
        "  first_name: first_name\n"
        "  ltv: {column: ltv, type: number}\n"
        f"destination:\n{destination}"
        "guards:\n"
        "  max_remove_pct: 100\n",
        encoding="utf-8",
    )


class _Hook(BaseHTTPRequestHandler):
    """Accepts every batch (an empty 200), counting the requests."""

    received = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).received += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def webhook_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


def timed(argv: Sequence[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MiB) and CPU seconds (user + system, steadier than wall on a
    shared machine) of one process running ``argv``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode not in (0,):
        sys.exit(f"{' '.join(argv)} exited {proc.returncode}:\n{err}")
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5, help="processes per command (default 5)")
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--connector", choices=("webhook", "file"), default="webhook")
    args = parser.parse_args()
    compile_syncer()

    syncer = Path(sys.executable).parent / "syncer"
    base = [str(syncer)] if syncer.exists() else [sys.executable, "-m", "syncer"]
    with tempfile.TemporaryDirectory() as tmpdir, webhook_server() as url:
        tmp = Path(tmpdir)
        build_warehouse(tmp / "warehouse.db", args.members)
        if args.connector == "webhook":
            destination = f"  connector: webhook\n  url: {url}\n"
        else:
            destination = f"  connector: file\n  path: {tmp / 'out.jsonl'}\n"
        write_mapping(tmp / "mappings", destination)
        env = {
            **os.environ,
            "SYNCER_WAREHOUSE_URL": f"sqlite:///{tmp / 'warehouse.db'}",
            "SYNCER_STATE_URL": f"sqlite:///{tmp / 'state.db'}",
            "SYNCER_MAPPINGS_DIR": str(tmp / "mappings"),
            "SYNCER_LOG_LEVEL": "warning",
        }
        env.pop("SYNCER_LOG_FORMAT", None)
        first, _, _ = timed([*base, "sync", "now", "bench"], tmp, env)
        sent = _Hook.received if args.connector == "webhook" else "-"
        print(
            f"first run ({args.members} members, {args.connector}): {first:.3f} s, {sent} requests"
        )
        commands = {
            "syncer --version": ["--version"],
            "syncer --help": ["--help"],
            "syncer connectors": ["connectors"],
            "syncer runs": ["runs"],
            "syncer sync now bench (no change)": ["sync", "now", "bench"],
        }
        print(f"{'command':<36} {'min s':>7} {'median s':>9} {'CPU s':>7} {'peak RSS MiB':>13}")
        before = _Hook.received
        for label, extra in commands.items():
            walls, rss, cpus = [], [], []
            for _ in range(args.n):
                wall, peak, cpu = timed([*base, *extra], tmp, env)
                walls.append(wall)
                rss.append(peak)
                cpus.append(cpu)
            print(
                f"{label:<36} {min(walls):>7.3f} {statistics.median(walls):>9.3f}"
                f" {statistics.median(cpus):>7.3f} {max(rss):>13.1f}",
                flush=True,
            )
        if _Hook.received != before:
            print(f"warning: the no-change runs sent {_Hook.received - before} requests")


if __name__ == "__main__":
    main()
