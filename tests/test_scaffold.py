"""``syncer new connector NAME``: the package it writes installs, passes its own tests as
generated, and syncs a warehouse segment to a vendor through the real CLI.

The generated package is installed into a fresh virtualenv that sees this one's packages (a
``.pth`` file), without network or build isolation, the way a plugin author's environment holds
syncer and their package side by side. The vendor is a real HTTP server on 127.0.0.1 speaking
the placeholder API the generated connector speaks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from syncer import __version__
from syncer.dist import DISTRIBUTION
from syncer.errors import ExitCode
from tests.conftest import write_table

NAME = "acme_crm"
API_KEY = "acme-live-key-7f3a9c"
LIST_ID = "vip-list"


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 180):
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCER_", "PYTHON"))}
    full.update(env or {})
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout
    )


def syncer_cli(*args: str, cwd: Path):
    return run(sys.executable, "-m", "syncer", *args, cwd=cwd)


# -- the command's own checks ------------------------------------------------------------------


def test_writes_a_package_named_after_the_connector(tmp_path: Path) -> None:
    proc = syncer_cli("new", "connector", NAME, cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    package = tmp_path / "syncer-acme-crm"
    pyproject = (package / "pyproject.toml").read_text()
    assert 'name = "syncer-acme-crm"' in pyproject
    assert f'"{DISTRIBUTION}>={__version__},<1"' in pyproject
    assert f'{NAME} = "syncer_acme_crm.connector:AcmeCrmConnector"' in pyproject
    assert (package / "src/syncer_acme_crm/connector.py").is_file()
    assert (package / "mappings/acme_crm_example.yaml").is_file()
    assert "pip install -e '.[test]'" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("Acme-CRM",), "lower-case letters and digits"),
        (("webhook",), "taken by an installed connector"),
        (("activation",), "syncer's own"),
        (("acme", "--dir", "occupied"), "already exists and is not empty"),
    ],
)
def test_refuses_what_it_cannot_write(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("mine")

    proc = syncer_cli("new", "connector", *args, cwd=tmp_path)

    assert proc.returncode == ExitCode.USAGE, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert (tmp_path / "occupied" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied"]


# -- a vendor on 127.0.0.1 speaking the generated connector's API ------------------------------


@dataclass
class Vendor:
    """What the vendor holds and what it was sent."""

    lists: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: {LIST_ID: {}})
    requests: list[tuple[str, str, int]] = field(default_factory=list)  # method, path, members
    unauthorized: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        vendor = self.server.vendor
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else {}
        parts = self.path.strip("/").split("/")  # v1 lists <id> [members]
        with vendor.lock:
            members = body.get("members", [])
            vendor.requests.append((self.command, self.path, len(members)))
            if self.headers.get("Authorization") != f"Bearer {API_KEY}":
                vendor.unauthorized += 1
                return self._answer(401, {"error": "invalid credentials"})
            if parts[:2] != ["v1", "lists"] or len(parts) not in (3, 4):
                return self._answer(404, {"error": "no such endpoint"})
            held = vendor.lists.get(parts[2])
            if held is None:
                return self._answer(404, {"error": "no such list"})
            if len(parts) == 3 and self.command == "GET":
                return self._answer(200, {"id": parts[2], "size": len(held)})
            if self.command == "PUT":
                for m in members:
                    held[m["id"]] = m["fields"]
            elif self.command == "DELETE":
                for m in members:
                    held.pop(m["id"], None)
            else:
                return self._answer(405, {"error": "method not allowed"})
            return self._answer(200, {"ok": True})

    do_GET = do_PUT = do_DELETE = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, vendor: Vendor) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.vendor = vendor


@contextmanager
def vendor_server() -> Iterator[tuple[str, Vendor]]:
    vendor = Vendor()
    server = _Server(vendor)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", vendor
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# -- from nothing to a sync --------------------------------------------------------------------


def fresh_venv(path: Path) -> Path:
    """A new virtualenv that also sees this one's packages (syncer, pytest, pip, setuptools);
    what is installed into it stays in it. Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    # addsitedir, not a bare path: this venv's own .pth files (syncer's editable install) run.
    (Path(site) / "outer-venv.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    return python


def customers(rows: list[tuple[str, str, str]], warehouse: str) -> None:
    write_table(warehouse, "customers", ("email", "first_name", "last_name"), rows)


def test_generated_package_installs_passes_its_tests_and_syncs(tmp_path: Path) -> None:
    made = syncer_cli("new", "connector", NAME, "--dir", "plugin", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    package = tmp_path / "plugin"
    python = fresh_venv(tmp_path / "venv")

    installed = run(
        python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
        "--no-build-isolation", "-e", package, cwd=tmp_path,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr

    listed = run(python, "-m", "syncer", "connectors", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    found = {c["name"]: c for c in json.loads(listed.stdout)["connectors"]}
    assert found[NAME]["distribution"] == "syncer-acme-crm"
    assert found[NAME]["error"] is None
    assert "webhook" in found  # the built-ins are still there beside it

    tested = run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=package)
    assert tested.returncode == 0, tested.stdout[-4000:] + tested.stderr[-2000:]
    assert " passed" in tested.stdout and "failed" not in tested.stdout

    # The mapping example as a user would take it: copied, pointed at the vendor.
    warehouse = f"sqlite:///{tmp_path / 'shop.db'}"
    customers(
        [
            ("ann@example.com", "Ann", "Lee"),
            ("bob@example.com", "Bob", "Roy"),
            ("cy@example.com", "Cy", "Fox"),
        ],
        warehouse,
    )
    example = (package / "mappings" / f"{NAME}_example.yaml").read_text()
    with vendor_server() as (url, vendor):
        assert "  # base_url: " in example
        mapping = example.replace("  # base_url: ", f"  base_url: {url}  # ")
        (tmp_path / "mappings").mkdir()
        (tmp_path / "mappings" / f"{NAME}_example.yaml").write_text(mapping)
        env = {
            "SYNCER_WAREHOUSE_URL": warehouse,
            "SYNCER_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
            "SYNCER_MAPPINGS_DIR": str(tmp_path / "mappings"),
            "ACME_CRM_API_KEY": API_KEY,
            "ACME_CRM_LIST_ID": LIST_ID,
        }

        checked = run(python, "-m", "syncer", "check", f"{NAME}_example", cwd=tmp_path, env=env)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        wrong_list = run(
            python, "-m", "syncer", "check", f"{NAME}_example",
            cwd=tmp_path, env={**env, "ACME_CRM_LIST_ID": "no-such-list"},
        )  # fmt: skip
        assert wrong_list.returncode == ExitCode.CONFIG, wrong_list.stdout + wrong_list.stderr
        assert "list_id" in wrong_list.stdout + wrong_list.stderr

        def sync() -> dict[str, Any]:
            proc = run(
                python, "-m", "syncer", "sync", "now", f"{NAME}_example", "--json",
                cwd=tmp_path, env=env,
            )  # fmt: skip
            assert proc.returncode == 0, proc.stdout + proc.stderr
            (result,) = json.loads(proc.stdout)["runs"]
            assert API_KEY not in proc.stdout + proc.stderr
            return dict(result)

        first = sync()
        assert (first["status"], first["added"]) == ("succeeded", 3)
        assert vendor.lists[LIST_ID] == {
            "ann@example.com": {"first_name": "Ann", "last_name": "Lee"},
            "bob@example.com": {"first_name": "Bob", "last_name": "Roy"},
            "cy@example.com": {"first_name": "Cy", "last_name": "Fox"},
        }

        # Bob leaves the segment, Ann is renamed, Di joins: mirror mode follows.
        customers(
            [
                ("ann@example.com", "Ann", "Lee-Park"),
                ("cy@example.com", "Cy", "Fox"),
                ("di@example.com", "Di", "Ng"),
            ],
            warehouse,
        )
        second = sync()
        assert (second["added"], second["updated"], second["removed"]) == (1, 1, 1)
        assert vendor.lists[LIST_ID] == {
            "ann@example.com": {"first_name": "Ann", "last_name": "Lee-Park"},
            "cy@example.com": {"first_name": "Cy", "last_name": "Fox"},
            "di@example.com": {"first_name": "Di", "last_name": "Ng"},
        }
        assert vendor.unauthorized == 0
