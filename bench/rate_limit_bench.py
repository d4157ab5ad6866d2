"""Benchmark: drive a rate-limited destination at its limit.

A local server plays a webhook destination that allows LIMIT requests per second (sliding
one-second window; over it answers 429 with Retry-After: 1) and adds LATENCY to every request.
The engine syncs RECORDS records in batches of BATCH with the limit declared in the mapping
(`rate_limits`), so the ceiling is LIMIT * BATCH records/s. It reports achieved records/s as a
share of that ceiling and the 429s received, then the same run where FAULT_PCT % of requests
first get a 429 or a 503, and the overhead of that run against the clean one.

    .venv/bin/python bench/rate_limit_bench.py
    .venv/bin/python bench/rate_limit_bench.py --records 20000
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class LimitedDestination(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, limit: int, latency: float, fault_pct: float, seed: int = 3) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.limit, self.latency, self.fault_pct = limit, latency, fault_pct
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.window: deque[float] = deque()
        self.members: set[str] = set()
        self.faulted: set[str] = set()  # idempotency keys already given their one fault
        self.statuses: dict[int, int] = {}

    def count(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1


class _Handler(BaseHTTPRequestHandler):
    server: LimitedDestination

    def do_POST(self) -> None:
        srv = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(srv.latency)
        now = time.monotonic()
        with srv.lock:
            while srv.window and now - srv.window[0] >= 1.0:
                srv.window.popleft()
            if len(srv.window) >= srv.limit:
                srv.count(429)
                return self._reply(429, {"Retry-After": "1"})
            srv.window.append(now)
            key = self.headers.get("Idempotency-Key", "")
            if key not in srv.faulted and srv.rng.random() * 100 < srv.fault_pct:
                srv.faulted.add(key)
                status = srv.rng.choice([429, 503])
                srv.count(status)
                return self._reply(status, {"Retry-After": "1"} if status == 429 else {})
            srv.count(200)
            doc = json.loads(body)
            for record in doc["records"]:
                srv.members.add(record["key"])
        self._reply(200, {}, b'{"rejected": []}')

    def _reply(self, status: int, headers: dict[str, str], body: bytes = b"{}") -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def run(records: int, batch: int, limit: int, latency: float, fault_pct: float) -> dict[str, Any]:
    from syncer.engine import SyncEngine
    from syncer.mapping import load_file
    from syncer.settings import Settings

    server = LimitedDestination(limit, latency, fault_pct)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        with sqlite3.connect(tmp / "w.db") as conn:
            conn.execute("CREATE TABLE s (id TEXT, name TEXT)")
            conn.executemany(
                "INSERT INTO s VALUES (?, 'n')", ((f"id{i:07}",) for i in range(records))
            )
        mapping = tmp / "bench.yaml"
        mapping.write_text(
            "source: {query: 'select id, name from s', key: id}\nfields: {name: name}\n"
            f"destination: {{connector: webhook, url: 'http://127.0.0.1:{server.server_address[1]}/hook',"
            f" batch_size: {batch}, rate_limits: [{{requests: {limit}, per_seconds: 1}}]}}\n"
        )
        settings = Settings(
            warehouse_url=f"sqlite:///{tmp / 'w.db'}", state_url=f"sqlite:///{tmp / 's.db'}"
        )
        engine = SyncEngine(settings)
        sync = load_file(mapping)
        started = time.perf_counter()
        result = engine.run(sync)
        wall = time.perf_counter() - started
    server.shutdown()
    requests = sum(server.statuses.values())
    return {
        "status": result.status,
        "added": result.counts["added"],
        "wall_s": round(wall, 2),
        "records_per_s": round(records / wall),
        "ceiling_share_pct": round(100 * records / wall / (limit * batch), 1),
        "requests": requests,
        "statuses": dict(sorted(server.statuses.items())),
        "members_ok": len(server.members) == records,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--limit", type=int, default=50, help="requests per second")
    parser.add_argument("--latency", type=float, default=0.020)
    parser.add_argument("--fault-pct", type=float, default=30.0)
    args = parser.parse_args()
    print(
        f"ceiling: {args.limit} req/s x {args.batch} records = {args.limit * args.batch} records/s;"
        f" {args.records} records, {args.latency * 1000:.0f} ms latency"
    )
    clean = run(args.records, args.batch, args.limit, args.latency, 0.0)
    print("clean  ", json.dumps(clean))
    faulty = run(args.records, args.batch, args.limit, args.latency, args.fault_pct)
    print(f"{args.fault_pct:.0f}% 429/503 first", json.dumps(faulty))
    print(
        f"overhead of the faulty run: {faulty['wall_s'] / clean['wall_s']:.2f}x"
        " the clean run's wall time"
    )


if __name__ == "__main__":
    main()
