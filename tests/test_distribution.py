"""What installing syncer gives a user: the distribution's name, its declared dependencies, and
a clear way out when a warehouse driver (an optional extra) is not installed.

The missing-driver tests run the real CLI in a subprocess whose interpreter cannot import the
driver (a ``sitecustomize`` on PYTHONPATH refuses it, as if the extra had never been
installed), and check what the user reads and the exit code a pipeline sees.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import syncer
from syncer.dist import DISTRIBUTION
from syncer.errors import ExitCode
from tests.conftest import write_table

ROOT = Path(__file__).resolve().parent.parent

BLOCKER = '''
import os, sys

_BLOCKED = {n for n in os.environ.get("TEST_BLOCK_IMPORTS", "").split(",") if n}


class _NotInstalled:
    """Refuse the named top-level modules, as an interpreter without them would."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
'''

MAPPING = """
name: vip
source:
  warehouse: default
  query: select email from segment_vip
  key: email
  key_type: email
mode: mirror
fields:
  email: email
destination:
  connector: webhook
  url: http://127.0.0.1:9/never-called
  secret: ${VIP_WEBHOOK_SECRET}
"""


def run_without(blocked: tuple[str, ...], tmp_path: Path, env: dict[str, str], *args: str):
    """``python -m syncer ARGS`` in an interpreter that cannot import ``blocked``."""
    site = tmp_path / "without-driver"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    mappings = tmp_path / "mappings"
    mappings.mkdir(exist_ok=True)
    (mappings / "vip.yaml").write_text(MAPPING)
    full = {k: v for k, v in os.environ.items() if not k.startswith("SYNCER_")}
    full.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
        TEST_BLOCK_IMPORTS=",".join(blocked),
        SYNCER_MAPPINGS_DIR=str(mappings),
        SYNCER_STATE_URL=f"sqlite:///{tmp_path / 'state.db'}",
        VIP_WEBHOOK_SECRET="not-used",
    )
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "syncer", *args],
        cwd=tmp_path,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_blocker_really_hides_the_driver(tmp_path: Path) -> None:
    proc = run_without(("duckdb",), tmp_path, {}, "--version")
    assert proc.returncode == 0, proc.stderr
    probe = subprocess.run(
        [sys.executable, "-c", "import duckdb"],
        env={
            **os.environ,
            "PYTHONPATH": str(tmp_path / "without-driver"),
            "TEST_BLOCK_IMPORTS": "duckdb",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode != 0 and "No module named 'duckdb'" in probe.stderr


@pytest.mark.parametrize("blocked", [("duckdb_engine",), ("duckdb",)])
def test_duckdb_warehouse_without_the_driver_names_the_extra(
    tmp_path: Path, blocked: tuple[str, ...]
) -> None:
    warehouse = f"duckdb:///{tmp_path / 'shop.duckdb'}"
    write_table(warehouse, "segment_vip", ["email"], [["ann@example.com"]])

    proc = run_without(blocked, tmp_path, {"SYNCER_WAREHOUSE_URL": warehouse}, "sync", "now", "vip")

    assert proc.returncode == ExitCode.CONFIG, proc.stdout + proc.stderr
    assert "DuckDB driver" in proc.stderr
    assert f"pip install '{DISTRIBUTION}[duckdb]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_postgres_warehouse_without_psycopg_names_the_extra_and_hides_the_password(
    tmp_path: Path,
) -> None:
    url = "postgresql+psycopg://reader:hunter2-secret@127.0.0.1:5432/test"

    proc = run_without(("psycopg",), tmp_path, {"SYNCER_WAREHOUSE_URL": url}, "sync", "now", "vip")

    out = proc.stdout + proc.stderr
    assert proc.returncode == ExitCode.CONFIG, out
    assert f"pip install '{DISTRIBUTION}[postgres]'" in proc.stderr
    assert "hunter2-secret" not in out
    assert "Traceback" not in out


def test_postgres_url_for_another_driver_says_which_one_syncer_installs(tmp_path: Path) -> None:
    url = "postgresql+psycopg2://reader:hunter2-secret@127.0.0.1:5432/test"

    proc = run_without(("psycopg2",), tmp_path, {"SYNCER_WAREHOUSE_URL": url}, "sync", "now", "vip")

    out = proc.stdout + proc.stderr
    assert proc.returncode == ExitCode.CONFIG, out
    assert "postgresql+psycopg://" in proc.stderr
    assert f"pip install '{DISTRIBUTION}[postgres]'" in proc.stderr
    assert "hunter2-secret" not in out


def test_postgres_state_store_without_psycopg_names_the_extra(tmp_path: Path) -> None:
    warehouse = f"sqlite:///{tmp_path / 'shop.db'}"
    write_table(warehouse, "segment_vip", ["email"], [["ann@example.com"]])
    state = "postgresql+psycopg://state:hunter2-secret@127.0.0.1:5432/test"

    proc = run_without(
        ("psycopg",),
        tmp_path,
        {"SYNCER_WAREHOUSE_URL": warehouse, "SYNCER_STATE_URL": state},
        "sync",
        "now",
        "vip",
    )

    out = proc.stdout + proc.stderr
    assert proc.returncode == ExitCode.CONFIG, out
    assert "SYNCER_STATE_URL" in proc.stderr
    assert f"pip install '{DISTRIBUTION}[postgres]'" in proc.stderr
    assert "hunter2-secret" not in out


# -- the distribution's metadata -----------------------------------------------------------


def test_installed_under_our_distribution_name_with_the_package_version() -> None:
    dist = md.distribution(DISTRIBUTION)
    assert dist.version == syncer.__version__
    assert {ep.name for ep in dist.entry_points if ep.group == "console_scripts"} == {"syncer"}
    assert any(ep.group == "syncer.connectors" for ep in dist.entry_points)


#: Subpackages that are themselves optional, with the extra that makes them work: their
#: top-level imports may come from that extra.
OPTIONAL_PACKAGES = {"syncer/testing": "testing"}


@dataclass(frozen=True)
class Use:
    module: str  # top-level name imported
    where: str  # file:line
    at_load: bool  # imported when the importing module loads (not inside a function)
    extra: str | None  # the extra the importing module belongs to (OPTIONAL_PACKAGES)


def _third_party_imports() -> list[Use]:
    """Every import of a non-stdlib module in syncer/ and connectors/."""
    found: list[Use] = []
    for package in ("syncer", "connectors"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            extra = next((e for p, e in OPTIONAL_PACKAGES.items() if relative.startswith(p)), None)
            tree = ast.parse(path.read_text(), filename=relative)
            at_load = {id(node) for node in tree.body}
            for stmt in tree.body:  # imports under `if TYPE_CHECKING:` / try at top level
                if isinstance(stmt, ast.If | ast.Try):
                    at_load.update(id(n) for n in ast.walk(stmt))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.partition(".")[0]
                    if top in sys.stdlib_module_names or top in ("syncer", "connectors"):
                        continue
                    where = f"{relative}:{node.lineno}"
                    found.append(Use(top, where, id(node) in at_load, extra))
    return found


def _normal(name: str) -> str:
    return name.lower().replace("_", "-")


def test_every_imported_package_is_a_declared_dependency() -> None:
    """A module syncer imports must come from a dependency it declares: installed alone (or
    with the extra that needs it), syncer must not rely on what happens to be around. What an
    extra provides is imported only where it is needed (inside a function, or in a subpackage
    that needs that extra), so `import syncer` works without it."""
    owners = md.packages_distributions()
    core: set[str] = set()
    extras: dict[str, set[str]] = {}
    for line in md.requires(DISTRIBUTION) or []:
        req = Requirement(line)
        name = _normal(md.distribution(req.name).metadata["Name"])
        marked = re.search(r"extra == ['\"]([\w-]+)['\"]", str(req.marker or ""))
        extra = marked.group(1) if marked else None
        if extra is None:
            core.add(name)
        elif extra != "dev":
            extras.setdefault(extra, set()).add(name)
    any_extra = set().union(*extras.values())

    problems = []
    for use in _third_party_imports():
        dists = {_normal(d) for d in owners.get(use.module, [])}
        allowed = core | extras.get(use.extra or "", set())
        if not dists:
            problems.append(f"{use.where}: {use.module} is not installed at all")
        elif not dists & (core | any_extra):
            problems.append(f"{use.where}: {use.module} comes from {sorted(dists)}, not declared")
        elif use.at_load and not dists & allowed:
            problems.append(f"{use.where}: {use.module} is in an extra but imported at load")
    assert not problems, "\n".join(sorted(set(problems)))
