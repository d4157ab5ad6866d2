"""What a `syncer` process loads: short commands load neither connectors nor the engine's
libraries, a sync loads its own connector and no other, and a broken or doubly registered
plugin only breaks the syncs that use its name (bench/startup_bench.py times all this).

Each case runs the real `syncer` entry point in a fresh interpreter and reads back the
modules it ended with, so nothing the test process imported can hide an eager import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_table
from tests.fake_destination import fake_destination, members_of, people

BUILTINS = frozenset(
    {
        "braze",
        "file",
        "google_ads",
        "hubspot",
        "klaviyo",
        "linkedin",
        "mailchimp",
        "meta",
        "salesforce",
        "sendgrid",
        "tiktok",
        "webhook",
    }
)
#: Libraries a short command has no use for.
HEAVY = ("httpx", "sqlalchemy", "pydantic", "rich", "structlog", "yaml", "prometheus_client")

# Runs the console script's main() as `syncer ARGS...`, then writes the modules it loaded.
PROBE = """
import json, os, sys
from syncer.cli import main
sys.argv = ["syncer", *json.loads(os.environ["PROBE_ARGS"])]
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code
with open(os.environ["PROBE_OUT"], "w") as out:
    json.dump({"exit": code, "modules": sorted(sys.modules)}, out)
"""


def syncer(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[int, set[str], str]:
    """Exit code, loaded module names and output of `syncer ARGS` in a new interpreter."""
    out = tmp_path / "probe.json"
    full = {k: v for k, v in os.environ.items() if not k.startswith("SYNCER_")}
    full.update(env or {}, PROBE_ARGS=json.dumps(args), PROBE_OUT=str(out))
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=full,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.exists(), proc.stderr
    found = json.loads(out.read_text())
    out.unlink()
    return found["exit"] or 0, set(found["modules"]), proc.stdout + proc.stderr


def connector_modules(modules: set[str]) -> set[str]:
    return {m for m in modules if m.startswith("connectors.")}


@pytest.mark.parametrize("args", [("--version",), ("--help",), ("sync", "--help")])
def test_short_commands_load_no_connector_and_no_engine_library(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    code, modules, output = syncer(tmp_path, *args)
    assert code == 0, output
    assert connector_modules(modules) == set()
    assert sorted(m for m in HEAVY if m in modules) == []


def test_help_still_lists_every_command_with_its_short_help(tmp_path: Path) -> None:
    from syncer.cli import cli

    code, _, output = syncer(tmp_path, "--help")
    assert code == 0
    assert cli.commands, "the group has commands"
    listed = {
        line.split(maxsplit=1)[0]: line
        for line in output.split("Commands:", 1)[1].splitlines()
        if line.strip()
    }
    assert set(listed) == set(cli.commands)
    for name, command in cli.commands.items():
        assert command.get_short_help_str()[:20] in listed[name], (name, output)


MAPPING = """
name: vip
source:
  query: select email, first_name, ltv from segment_vip
  key: email
mode: mirror
fields:
  email: email
  first_name: first_name
  ltv: {{column: ltv, type: number}}
destination:
  connector: {connector}
{settings}
"""


def write_mapping(directory: Path, connector: str, settings: str, name: str = "vip") -> None:
    directory.mkdir(exist_ok=True)
    text = MAPPING.format(connector=connector, settings=settings).replace(
        "name: vip", f"name: {name}"
    )
    (directory / f"{name}.yaml").write_text(text)


def sync_env(tmp_path: Path) -> dict[str, str]:
    warehouse = f"sqlite:///{tmp_path / 'shop.db'}"
    write_table(warehouse, "segment_vip", ("email", "first_name", "ltv"), people(5))
    return {
        "SYNCER_WAREHOUSE_URL": warehouse,
        "SYNCER_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
        "SYNCER_MAPPINGS_DIR": str(tmp_path / "mappings"),
    }


def test_a_sync_loads_its_own_connector_and_no_other(tmp_path: Path) -> None:
    env = sync_env(tmp_path)
    with fake_destination() as (url, destination):
        write_mapping(tmp_path / "mappings", "webhook", f"  url: {url}")
        code, modules, output = syncer(tmp_path, "sync", "now", "vip", env=env)
        assert code == 0, output
        assert destination.members == members_of(people(5))
        assert connector_modules(modules) == {"connectors.webhook"}

        # Nothing changed: a good run at the default level writes no log line and counts no
        # metric, so neither library is loaded.
        code, modules, output = syncer(tmp_path, "sync", "now", "vip", env=env)
        assert code == 0, output
        assert connector_modules(modules) == {"connectors.webhook"}
        assert "structlog" not in modules
        assert "prometheus_client" not in modules


def test_the_listing_names_every_builtin_connector(tmp_path: Path) -> None:
    code, _, output = syncer(tmp_path, "connectors", "--json")
    assert code == 0, output
    rows = {row["name"]: row for row in json.loads(output)["connectors"]}
    assert set(rows) >= BUILTINS
    for name in BUILTINS:
        assert rows[name]["error"] is None
        assert rows[name]["modes"], name  # read from the loaded class


def plugin(tmp_path: Path, dist: str, points: dict[str, str]) -> dict[str, str]:
    """An installed distribution registering ``points`` (name -> target) in
    syncer.connectors, found through PYTHONPATH; returns that environment."""
    site = tmp_path / "plugins"
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in points.items())
    (info / "entry_points.txt").write_text(f"[syncer.connectors]\n{lines}")
    return {"PYTHONPATH": str(site)}


def test_a_broken_plugin_breaks_only_the_syncs_that_use_it(tmp_path: Path) -> None:
    env = {**sync_env(tmp_path), **plugin(tmp_path, "acme-broken", {"acme": "acme_gone:Acme"})}
    with fake_destination() as (url, destination):
        write_mapping(tmp_path / "mappings", "webhook", f"  url: {url}")
        write_mapping(tmp_path / "mappings", "acme", "  list_id: x", name="to_acme")

        code, modules, output = syncer(tmp_path, "sync", "now", "vip", env=env)
        assert code == 0, output
        assert destination.members == members_of(people(5))
        assert connector_modules(modules) == {"connectors.webhook"}

        code, _, output = syncer(tmp_path, "sync", "now", "to_acme", env=env)
        assert code == 78, output
        assert (
            "connector 'acme' failed to load ('acme = acme_gone:Acme' in syncer.connectors,"
            " from acme-broken): ModuleNotFoundError: No module named 'acme_gone'"
        ) in output

    code, _, output = syncer(tmp_path, "connectors", "--json", env=env)
    assert code == 1, output  # listed, with its error; the others load
    rows = {row["name"]: row for row in json.loads(output)["connectors"]}
    assert "acme_gone" in rows["acme"]["error"]
    assert all(rows[name]["error"] is None for name in BUILTINS)


def test_a_name_registered_twice_is_refused_naming_both(tmp_path: Path) -> None:
    env = {
        **sync_env(tmp_path),
        **plugin(tmp_path, "other-hook", {"webhook": "other_hook:Webhook"}),
    }
    write_mapping(tmp_path / "mappings", "webhook", "  url: http://127.0.0.1:9/hook")
    write_mapping(tmp_path / "mappings", "file", f"  path: {tmp_path / 'out.csv'}", "to_file")

    code, _, output = syncer(tmp_path, "sync", "now", "vip", env=env)
    assert code == 78, output
    assert "connector 'webhook' is registered more than once" in output
    assert "'webhook = other_hook:Webhook' in syncer.connectors, from other-hook" in output
    assert "'webhook = connectors.webhook:WebhookConnector'" in output

    code, modules, output = syncer(tmp_path, "sync", "now", "to_file", env=env)
    assert code == 0, output
    assert connector_modules(modules) == {"connectors.file"}
    assert len((tmp_path / "out.csv").read_text().splitlines()) == 1 + 5  # header, members


def test_a_command_closes_the_state_database_cleanly_before_it_exits(tmp_path: Path) -> None:
    """The process skips the interpreter's last garbage collections (a fifth of a short
    command); the state database is still closed, so SQLite checkpoints its write-ahead log
    and removes the -wal file, leaving one file to copy or back up."""
    from tests.fake_destination import harness

    with harness(tmp_path) as h:
        h.segment(people(5))
        for _ in range(2):  # a first run, then one that changes nothing
            code, doc, proc = h.sync()
            assert code == 0, proc.stderr
            assert doc is not None and doc["runs"][0]["status"] == "succeeded"
            state = tmp_path / "state.db"
            assert state.exists()
            assert not state.with_name("state.db-wal").exists()
        assert h.dest.members_now() == members_of(people(5))
