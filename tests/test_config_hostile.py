"""Hostile configuration and input, through the real CLI (issue 12, items 8, 9, 14-20).

Each test builds a small site in a temporary directory (a SQLite warehouse, a state database,
a mappings directory with one good sync ``vip`` writing to a file) and then breaks one thing
the way a bad week in production would: a file saved in the wrong encoding, a YAML bomb, a
symlink to a system file, a query whose cast fails on a customer's address, a literal secret,
two files with one name, a key written twice, a missing --env-file, a query with a trailing
comment. It asserts what an operator sees: the exit code, the message (naming the file, never
quoting what it must not), and that nothing was half done.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr

from syncer.connector import ConnectorConfig
from syncer.errors import ConfigError
from tests.conftest import run_cli, write_table

EMAILS = ["ann@victim.example", "bob@victim.example", "cy@victim.example"]

VIP = """\
source:
  query: {query}
  key: email
fields:
  name: name
destination:
  connector: file
  path: out/vip.csv
guards:
  max_remove_pct: 100
"""


@dataclass
class Site:
    """A working directory with a warehouse, a state database and a mappings directory."""

    root: Path
    warehouse: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def mappings(self) -> Path:
        return self.root / "mappings"

    def write(self, name: str, text: str | bytes) -> Path:
        path = self.mappings / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    def vip(self, query: str = "select email, name from people") -> None:
        self.write("vip.yaml", VIP.format(query=json.dumps(query)))

    def cli(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env={**self.env, **(env or {})}, cwd=self.root, timeout=timeout)

    def json(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, Any, str]:
        proc = self.cli(*args, "--json", env=env)
        document = json.loads(proc.stdout) if proc.stdout.strip() else None
        return proc.returncode, document, proc.stdout + proc.stderr


def make_site(root: Path, warehouse: str | None = None) -> Site:
    warehouse = warehouse or f"sqlite:///{root / 'shop.db'}"
    write_table(warehouse, "people", ("email", "name"), [(e, e[:3]) for e in EMAILS])
    site = Site(root, warehouse)
    site.mappings.mkdir()
    site.env = {
        "SYNCER_WAREHOUSE_URL": warehouse,
        "SYNCER_STATE_URL": f"sqlite:///{root / 'state.db'}",
        "SYNCER_MAPPINGS_DIR": str(site.mappings),
    }
    site.vip()
    return site


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path)


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr


def problems(doc: dict[str, Any]) -> str:
    """Every problem a --json document reports, one per line (tables wrap; JSON does not)."""
    if doc.get("status") == "error":
        return str(doc["error"])
    if "checks" in doc:
        steps = [s for c in doc["checks"] for s in c["steps"]]
        return "\n".join(s["result"] for s in steps if not s["result"].startswith("ok"))
    return "\n".join(r["message"] or "" for r in doc.get("runs", []))


# -- 8: files that are not UTF-8 ------------------------------------------------------------


NOT_UTF8 = {
    "latin-1": "description: café\nsource: {query: select 1, key: k}\n".encode("latin-1"),
    "utf-16": "source: {query: select 1, key: k}\n".encode("utf-16"),
    "binary": b"\x1f\x8b\x08\x00\xff\xfe\x00\x00garbage",
}


@pytest.mark.parametrize("content", NOT_UTF8.values(), ids=NOT_UTF8.keys())
def test_a_mapping_that_is_not_utf8_is_a_config_error_naming_it(site: Site, content: bytes) -> None:
    site.write("bad.yaml", content)

    proc = site.cli("sync", "now", "--all")
    assert proc.returncode == 78, proc.stderr
    assert "bad.yaml" in proc.stderr and "not UTF-8" in proc.stderr
    no_traceback(proc)

    code, doc, _ = site.json("sync", "now", "--all")
    assert code == 78 and doc["status"] == "error" and "bad.yaml" in doc["error"]

    proc = site.cli("plan", "bad")
    assert proc.returncode == 78 and "bad.yaml" in proc.stderr
    no_traceback(proc)

    proc = site.cli("daemon", env={"SYNCER_DAEMON_PORT": "0"}, timeout=60)
    assert proc.returncode == 78 and "bad.yaml" in proc.stderr  # 78: no restart loop
    no_traceback(proc)

    code, doc, _ = site.json("check")
    assert code == 78
    by_sync = {c["sync"]: c for c in doc["checks"]}
    assert not by_sync["bad.yaml"]["ok"] and by_sync["vip"]["ok"]

    # A broken neighbour does not stop a sync named on its own.
    assert site.cli("sync", "now", "vip").returncode == 0
    assert not (site.root / "out" / "bad.csv").exists()


def test_a_mapping_with_control_characters_is_refused_without_echoing_them(site: Site) -> None:
    site.write("nul.yaml", b"source: {query: select 1, key: k}\x00 s3cr3t-after-nul\n")
    proc = site.cli("plan", "nul")
    assert proc.returncode == 78 and "nul.yaml: line 1" in proc.stderr
    assert "s3cr3t" not in proc.stderr
    no_traceback(proc)


@pytest.mark.parametrize("how", ["dotenv", "env-file"])
def test_an_env_file_that_is_not_utf8_is_a_config_error_naming_it(site: Site, how: str) -> None:
    name = ".env" if how == "dotenv" else "prod.env"
    (site.root / name).write_bytes(b"SYNCER_LOG_LEVEL=info\nGREETING=gr\xfc\xdfe\n")
    args = ("--env-file", name) if how == "env-file" else ()
    for command in (("sync", "now", "vip"), ("check",), ("plan", "vip"), ("daemon",)):
        proc = site.cli(*args, *command, timeout=60)
        assert proc.returncode == 78, (command, proc.stderr)
        assert f"{name}: env file is not UTF-8 text (line 2" in proc.stderr
        no_traceback(proc)


def test_a_dotenv_that_is_a_directory_or_a_broken_link_is_reported(site: Site) -> None:
    (site.root / ".env").mkdir()
    proc = site.cli("sync", "now", "vip")
    assert proc.returncode == 78 and ".env: env file is a directory" in proc.stderr
    (site.root / ".env").rmdir()
    (site.root / ".env").symlink_to(site.root / "nowhere.env")
    proc = site.cli("sync", "now", "vip")
    assert proc.returncode == 78 and ".env: env file is a symbolic link" in proc.stderr
    no_traceback(proc)


# -- 19: a missing --env-file ----------------------------------------------------------------


@pytest.mark.parametrize("command", [("sync", "now", "vip"), ("check",), ("daemon",)])
def test_a_missing_env_file_is_a_usage_error(site: Site, command: tuple[str, ...]) -> None:
    proc = site.cli("--env-file", "prod.env", *command, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "prod.env" in proc.stderr and "does not exist" in proc.stderr
    assert not (site.root / "out").exists(), "nothing may run without its settings"


def test_an_env_file_that_is_a_directory_is_a_usage_error(site: Site) -> None:
    (site.root / "prod.env").mkdir()
    proc = site.cli("--env-file", "prod.env", "sync", "now", "vip")
    assert proc.returncode == 2 and "prod.env" in proc.stderr


def test_an_existing_env_file_is_read_for_settings_and_variables(site: Site) -> None:
    # Saved by an editor that writes a byte-order mark: the first setting still counts.
    defs = site.root / "defs"
    defs.mkdir()
    (site.root / "prod.env").write_text(
        f"\ufeffSYNCER_MAPPINGS_DIR={defs}\nPATH_VAR=out/from-env-file.csv\n"
    )
    mapping = VIP.format(query='"select email, name from people"')
    (defs / "vip.yaml").write_text(mapping.replace("out/vip.csv", "${PATH_VAR}"))
    env = {k: v for k, v in site.env.items() if k != "SYNCER_MAPPINGS_DIR"}
    proc = run_cli("--env-file", "prod.env", "sync", "now", "vip", env=env, cwd=site.root)
    assert proc.returncode == 0, proc.stderr
    assert (site.root / "out" / "from-env-file.csv").exists()
    assert not (site.root / "out" / "vip.csv").exists()


# -- 9: YAML bombs, huge files, deep nesting, big scalars, tags --------------------------------


def billion_laughs(levels: int = 9) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "description: x\nlaughs:\n" + "".join(f"  {line}\n" for line in lines)


BASE = 'source: {query: "select email, name from people", key: email}\n'
BASE += "destination: {connector: file, path: out/x.csv}\n"

HOSTILE = {
    "billion-laughs": (BASE + billion_laughs(), "aliases"),
    "merge-key-laughs": (
        BASE
        + "a: &a {k0: 1, k1: 1, k2: 1, k3: 1, k4: 1, k5: 1, k6: 1, k7: 1, k8: 1, k9: 1}\n"
        + "".join(
            f"{c}: &{c} {{{', '.join(f'x{j}: *{p}' for j in range(10))}}}\n"
            for p, c in zip("abcdefg", "bcdefgh", strict=True)
        ),
        "aliases",
    ),
    "big-scalar-many-aliases": (
        BASE + "big: &big " + "x" * 600_000 + "\nmany: [" + ", ".join(["*big"] * 10) + "]\n",
        "MiB of text",
    ),
    "alias-loop": (BASE + "loop: &loop [1, *loop]\n", "(a loop)"),
    "deep-nesting": (BASE + "description: " + "[" * 10_000 + "]" * 10_000 + "\n", "nest"),
    "deep-mappings": (BASE + "d: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", "nest"),
    "deep-40": (BASE + "d: " + "[" * 40 + "]" * 40 + "\n", "nested more than 32 levels"),
    "huge-file": (BASE + "# " + "x" * (2 * 1024 * 1024) + "\n", "larger than 1 MiB"),
    "huge-integer": (
        BASE.replace("out/x.csv}", "out/x.csv, batch_size: " + "9" * 5000 + "}"),
        "number",
    ),
    "impossible-date": (BASE + "description: 2020-13-45\n", "not a valid date"),
    "python-tag": (BASE + "description: !!python/object/apply:os.system ['touch pwned']\n", "tag"),
    "binary-tag": (BASE + "description: !!binary aGVsbG8=\n", "tag"),
    "custom-tag": (BASE + "description: !include /etc/passwd\n", "tag"),
    "set-tag": (BASE + "description: !!set {a, b}\n", "tag"),
    "two-documents": (BASE + "---\n" + BASE, "broken YAML"),
}


@pytest.mark.parametrize(("text", "says"), HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_yaml_is_refused_quickly_with_a_clear_message(
    site: Site, text: str, says: str
) -> None:
    site.write("bomb.yaml", text)
    started = time.monotonic()
    for command in (("plan", "bomb"), ("sync", "now", "--all"), ("check",)):
        proc = site.cli(*command, "--json", timeout=60)
        assert proc.returncode == 78, (command, proc.stderr[-2000:])
        said = problems(json.loads(proc.stdout))
        assert "bomb.yaml" in said and says in said, said
        no_traceback(proc)
        assert len(proc.stdout + proc.stderr) < 5000, "the error quotes the file"
    # Three commands, each refusing before any cost is paid (a bomb took minutes before).
    assert time.monotonic() - started < 45
    assert not (site.root / "pwned").exists()


def test_anchors_aliases_and_merge_keys_of_a_real_mapping_still_work(site: Site) -> None:
    site.write(
        "shared.yaml",
        """\
        source:
          query: select email, name from people
          key: email
        fields: &fields
          name: name
        destination: &dest
          connector: file
          path: out/shared.csv
        guards:
          <<: {max_remove_pct: 10}
          max_remove_pct: 100
        """,
    )
    proc = site.cli("sync", "now", "shared")
    assert proc.returncode == 0, proc.stderr


# -- 18: duplicate keys ----------------------------------------------------------------------


DUPLICATES = {
    "top-level": (BASE + 'source: {query: "select 2", key: k}\n', 3, "'source'"),
    "nested": (
        BASE + "fields:\n  name: name\n  email: email\n  name: email\n",
        6,
        "'name'",
    ),
    "flow-mapping": (BASE.replace("path: out/x.csv", "path: out/x.csv, path: /tmp/y"), 2, "'path'"),
    "in-a-list": (
        BASE.replace(
            "path: out/x.csv}",
            "path: out/x.csv, rate_limits: [{requests: 5, per_seconds: 1, requests: 500}]}",
        ),
        2,
        "'requests'",
    ),
}


@pytest.mark.parametrize(("text", "line", "key"), DUPLICATES.values(), ids=DUPLICATES.keys())
def test_a_key_given_twice_is_refused_naming_file_line_and_key(
    site: Site, text: str, line: int, key: str
) -> None:
    path = site.write("dup.yaml", text)
    for command in (("check", "dup"), ("sync", "now", "dup"), ("plan", "dup")):
        code, doc, out = site.json(*command)
        assert code == 78, out
        assert f"{path}: line {line}, column " in problems(doc), out
        assert f"key {key} is given twice" in problems(doc), out
    assert not (site.root / "out").exists()


def test_merge_keys_overridden_by_the_mapping_are_not_duplicates(site: Site) -> None:
    site.write(
        "merge.yaml",
        BASE + "base: &base {max_remove_pct: 10}\nguards:\n  <<: *base\n  max_remove_pct: 100\n",
    )
    # 'base' is an unknown key: the refusal is about it, not about a duplicate.
    proc = site.cli("plan", "merge")
    assert "given twice" not in proc.stderr and "base" in proc.stderr


# -- 14: symlinks, broken links, loops, directories ------------------------------------------

SYSTEM_FILE = """\
root:$6$rounds=5000$s3cr3tHASHroot:20228:0:99999:7:::
svc:$6$rounds=5000$s3cr3tHASHsvc:20228:0:99999:7:::
passwd: files s3cr3t-nsswitch-line
"""


def test_a_symlink_to_a_system_file_is_reported_without_its_lines(site: Site) -> None:
    system = site.root / "etc"
    system.mkdir()
    (system / "shadow").write_text(SYSTEM_FILE)
    (site.mappings / "shadow.yaml").symlink_to(system / "shadow")
    # A file that has a sync's keys but also keys that are whole lines of something else.
    (system / "half").write_text(BASE + "root:$6$s3cr3tHASHhalf:20228:0:99999:7:::\n")
    (site.mappings / "half.yaml").symlink_to(system / "half")
    real = [p for p in (Path("/etc/passwd"), Path("/etc/shadow")) if p.exists()]
    for target in real:
        (site.mappings / f"{target.name}-real.yaml").symlink_to(target)

    outputs = []
    for command in (("check",), ("sync", "now", "--all"), ("plan", "shadow"), ("plan", "half")):
        code, doc, out = site.json(*command)
        assert code == 78, out
        outputs += [out, problems(doc)]
    text = "\n".join(outputs)
    assert "shadow.yaml: not a sync definition" in text
    assert "half.yaml: (a key that is not a plain name): Extra inputs are not permitted" in text
    assert "s3cr3t" not in text and "$6$" not in text
    for target in real:
        assert f"{target.name}-real.yaml" in text
        lines = [line for line in target.read_text(errors="replace").splitlines() if line]
        assert not [line for line in lines if line in text]
        assert "root:" not in text


def test_broken_links_loops_directories_and_pipes_are_reported_not_skipped(site: Site) -> None:
    (site.mappings / "dangling.yaml").symlink_to(site.root / "gone.yaml")
    (site.mappings / "loop.yaml").symlink_to(site.mappings / "loop.yaml")
    (site.mappings / "folder.yaml").mkdir()
    os.mkfifo(site.mappings / "pipe.yaml")
    (site.mappings / "device.yml").symlink_to("/dev/zero")
    expected = {
        "dangling.yaml": "is a symbolic link to something that does not exist",
        "loop.yaml": "is a symbolic link loop",
        "folder.yaml": "is a directory",
        "pipe.yaml": "is not a regular file",
        "device.yml": "is not a regular file",
    }
    code, doc, out = site.json("check")
    assert code == 78, out
    results = {c["sync"]: c["steps"][0]["result"] for c in doc["checks"]}
    for name, says in expected.items():
        assert says in results[name], results
    assert results["vip"] == "ok"

    proc = site.cli("sync", "now", "--all", timeout=60)
    assert proc.returncode == 78
    for name, says in expected.items():
        assert f"{name}: mapping file {says}" in proc.stderr
    # A sync named on its own still runs.
    assert site.cli("sync", "now", "vip").returncode == 0


def test_dotfiles_and_kubernetes_style_links_are_handled(site: Site) -> None:
    # A ConfigMap volume: the file is a link into a hidden, timestamped directory.
    data = site.mappings / "..2026_01_01_00_00_00.1"
    data.mkdir()
    (data / "cm.yaml").write_text(
        VIP.format(query='"select email, name from people"').replace("vip.csv", "cm.csv")
    )
    (site.mappings / "..data").symlink_to(data.name)
    (site.mappings / "cm.yaml").symlink_to(Path("..data") / "cm.yaml")
    # An editor's lock file: a dangling link whose name starts with a dot.
    (site.mappings / ".#vip.yaml").symlink_to("user@host.1234:1700000000")
    proc = site.cli("sync", "now", "--all")
    assert proc.returncode == 0, proc.stderr


def test_a_name_never_reaches_outside_the_mappings_directory(site: Site) -> None:
    (site.root / "outside.yaml").write_text(VIP.format(query='"select email, name from people"'))
    proc = site.cli("sync", "now", "../outside")
    assert proc.returncode == 2 and "no sync matches '../outside'" in proc.stderr
    assert not (site.root / "out").exists()


# -- 15: database errors quote data ----------------------------------------------------------

FAILING = {
    "sqlite": "select email, name, json_extract('{}', email) as j from people",
    "duckdb": "select email, name, cast(email as integer) as n from people",
    "postgres": "select email, name, email::int as n from people",
}


@pytest.mark.parametrize("backend", FAILING)
def test_a_failing_cast_never_shows_the_value(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    if backend == "postgres":
        warehouse = request.getfixturevalue("postgres_url")
    elif backend == "duckdb":
        warehouse = f"duckdb:///{tmp_path / 'shop.duckdb'}"
    else:
        warehouse = None
    site = make_site(tmp_path, warehouse)
    site.vip(FAILING[backend])
    seen: list[str] = []

    code, doc, out = site.json("sync", "now", "vip")
    seen.append(out)
    assert code == 78, out
    message = doc["runs"][0]["message"]
    assert "vip.yaml: source.query failed" in message and "<value>" in message

    code, doc, out = site.json("plan", "vip")
    seen.append(out)
    assert code == 78 and "<value>" in doc["error"]

    code, doc, out = site.json("check", "vip")
    seen.append(out)
    assert code == 78
    (failed,) = [s for c in doc["checks"] for s in c["steps"] if s["step"] == "error"]
    assert failed["result"] == message  # check and sync say the same

    proc = site.cli("sync", "now", "vip")
    seen.append(proc.stdout + proc.stderr)
    code, doc, out = site.json("runs")
    seen.append(out)
    assert [r["message"] for r in doc["runs"]] == [message, message]

    text = "\n".join(seen)
    leaked = [e for e in EMAILS if e in text] + re.findall(r"[\w.]+@victim\.example", text)
    assert leaked == [], leaked


@pytest.mark.parametrize("backend", ["sqlite", "duckdb", "postgres"])
def test_identifiers_from_the_query_stay_in_the_message(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    warehouse = {
        "postgres": lambda: request.getfixturevalue("postgres_url"),
        "duckdb": lambda: f"duckdb:///{tmp_path / 'shop.duckdb'}",
        "sqlite": lambda: None,
    }[backend]()
    site = make_site(tmp_path, warehouse)
    site.vip("select emial, name from people")
    code, doc, out = site.json("sync", "now", "vip")
    assert code == 78 and "emial" in doc["runs"][0]["message"], out


@pytest.mark.postgres
def test_a_cast_failing_mid_stream_is_a_config_error_without_the_value(
    tmp_path: Path, postgres_url: str
) -> None:
    rows = [(str(i), f"n{i}") for i in range(5000)] + [(EMAILS[0], "ann")]
    site = make_site(tmp_path, postgres_url)
    write_table(postgres_url, "people", ("email", "name"), rows)
    site.vip("select email, name, email::int as n from people")
    for env in ({}, {"SYNCER_READ_PROCESS": "false"}):
        code, doc, out = site.json(
            "sync", "now", "vip", env={**env, "SYNCER_READ_BATCH_SIZE": "100"}
        )
        assert code == 78, out  # not 75: retrying cannot help until the data or query changes
        message = doc["runs"][0]["message"]
        assert (
            "failed while reading rows: invalid input syntax for type integer: <value>" in message
        )
        assert EMAILS[0] not in out


# -- 16: secrets -----------------------------------------------------------------------------


HOOK = """\
source: {{query: "select email, name from people", key: email}}
destination:
  connector: webhook
  url: https://hooks.example.test/in
  {setting}
"""

LITERALS = {
    "literal-before-empty-var": (
        'secret: "hunter2${EMPTY}"',
        "destination.secret",
        "write exactly",
    ),
    "text-around-var": ('secret: "x-${TOKEN}-y"', "destination.secret", "write exactly"),
    "bearer-prefix": (
        'headers: {Authorization: "Bearer ${TOKEN}"}',
        "destination.headers.Authorization",
        "write exactly",
    ),
    "two-vars": ('secret: "${TOKEN}${TOKEN}"', "destination.secret", "write exactly"),
    "empty-var": ('secret: "${EMPTY}"', "destination.secret", "EMPTY is empty"),
    "blank-var": ('secret: "${BLANK}"', "destination.secret", "BLANK is empty"),
    "nested-empty": ('headers: {X-Key: "${EMPTY}"}', "destination.headers.X-Key", "EMPTY is empty"),
    "literal-header": ('headers: {X-Key: "hunter2"}', "destination.headers.X-Key", "write exactly"),
    "empty-literal": ('secret: ""', "destination.secret", "write exactly"),
}


@pytest.mark.parametrize(("setting", "where", "says"), LITERALS.values(), ids=LITERALS.keys())
def test_a_secret_must_be_exactly_one_nonempty_variable(
    site: Site, setting: str, where: str, says: str
) -> None:
    path = site.write("hook.yaml", HOOK.format(setting=setting))
    env = {"EMPTY": "", "BLANK": "   ", "TOKEN": "tok-s3cr3t"}
    for command in (("check", "hook"), ("sync", "now", "hook"), ("plan", "hook")):
        code, doc, out = site.json(*command, env=env)
        assert code == 78, out
        assert f"{path}: {where}: " in problems(doc) and says in problems(doc), out
        assert "hunter2" not in out and "tok-s3cr3t" not in out


def test_a_secret_from_one_variable_is_accepted(site: Site) -> None:
    site.write("hook.yaml", HOOK.format(setting='headers: {Authorization: "${TOKEN}"}'))
    proc = site.cli("plan", "hook", env={"TOKEN": "Bearer tok-s3cr3t"})
    assert proc.returncode == 0, proc.stderr


class _Inner(BaseModel):
    token: SecretStr
    label: str = ""


class _NestedConfig(ConnectorConfig):
    auth: _Inner | None = None
    keys: list[SecretStr] = []
    accounts: dict[str, _Inner] = {}


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        ({"auth": {"token": "lit${TOKEN}"}}, "destination.auth.token"),
        ({"keys": ["${TOKEN}", "literal"]}, "destination.keys[1]"),
        ({"accounts": {"eu": {"token": "${EMPTY}"}}}, "destination.accounts.eu.token"),
        ({"auth": "${TOKEN}x"}, "destination.auth"),
    ],
)
def test_secrets_nested_in_models_lists_and_dicts_are_checked(
    raw: dict[str, Any], where: str
) -> None:
    from syncer.mapping import _refuse_model_secrets

    env = {"TOKEN": "t", "EMPTY": ""}
    with pytest.raises(ConfigError) as info:
        _refuse_model_secrets(raw, _NestedConfig, "destination.", Path("m.yaml"), env)
    assert f"m.yaml: {where}: " in str(info.value)
    ok = {"auth": {"token": "${TOKEN}", "label": "x"}, "keys": ["${TOKEN}"], "accounts": {}}
    _refuse_model_secrets(ok, _NestedConfig, "destination.", Path("m.yaml"), env)


def test_no_repr_or_str_of_a_loaded_sync_shows_a_secret(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    from syncer.mapping import load_file

    monkeypatch.setenv("SIGNING", "sign-s3cr3t")
    monkeypatch.setenv("TOKEN", "Bearer tok-s3cr3t")
    path = site.write(
        "hook.yaml",
        HOOK.format(setting='secret: "${SIGNING}"\n  headers: {Authorization: "${TOKEN}"}'),
    )
    sync = load_file(path)
    shown = [
        repr(sync),
        str(sync),
        repr(sync.definition),
        str(sync.definition),
        repr(sync.definition.destination),
        sync.definition.model_dump_json(),
        str(sync.definition.model_dump()),
        repr(sync.connector_config),
        str(sync.connector_config),
    ]
    assert not [s for s in shown if "s3cr3t" in s]
    assert sync.connector_config.model_dump()["secret"].get_secret_value() == "sign-s3cr3t"
    assert "hooks.example.test" in repr(sync.definition)  # settings that are not secret stay


# -- 17: one sync name in two files ----------------------------------------------------------


@pytest.mark.parametrize("second", ["other.yaml", "vip.yml"])
def test_a_sync_name_in_two_files_is_refused_every_way(site: Site, second: str) -> None:
    site.write(second, "name: vip\n" + VIP.format(query='"select email, name from people"'))
    first = site.mappings / "vip.yaml"
    for command in (
        ("sync", "now", "vip"),
        ("sync", "now", "--all"),
        ("plan", "vip"),
        ("check", "vip"),
        ("check",),
    ):
        code, doc, out = site.json(*command)
        assert code == 78, (command, out)
        text = problems(doc)
        assert str(first) in text and str(site.mappings / second) in text, (command, out)
    assert not (site.root / "out").exists()

    proc = site.cli("daemon", env={"SYNCER_DAEMON_PORT": "0"}, timeout=60)
    assert proc.returncode == 78, proc.stderr
    assert "is also defined in" in proc.stderr


# -- 20: check and sync agree on every query -------------------------------------------------

# query -> whether `sync now` runs it
QUERIES = {
    "trailing-line-comment": ("select email, name from people -- the VIPs", True),
    "trailing-semicolon": ("select email, name from people;", True),
    "semicolon-then-comment": ("select email, name from people; -- done\n", True),
    "block-comments": ("/* lead */ select email, name /* mid */ from people /* end */", True),
    "cte": ("with p as (select email, name from people) select * from p", True),
    "strings-with-markers": (
        "select email, name from people where name not in (';--', '/*')",
        True,
    ),
    # SQLite has no parenthesised statement: both refuse it, with SQLite's own words.
    "parenthesised": ("(select email, name from people)", False),
    "two-statements": ("select email, name from people; drop table people", False),
    "delete": ("delete from people returning email, name", False),
    "drop": ("drop table people", False),
    "pragma": ("pragma table_info(people)", False),
    "only-a-comment": ("-- nothing here", False),
    "unknown-column": ("select emial, name from people", False),
    "syntax-error": ("select email, name from people where", False),
    "cte-writing": ("with d as (select 1) delete from people", False),
}


@pytest.mark.parametrize(("query", "runs"), QUERIES.values(), ids=QUERIES.keys())
def test_check_and_sync_accept_and_refuse_the_same_queries(
    site: Site, query: str, runs: bool
) -> None:
    site.vip(query)
    check_code, check_doc, out = site.json("check", "vip")
    sync_code, sync_doc, out2 = site.json("sync", "now", "vip")
    assert check_code == sync_code, out + out2
    assert problems(check_doc) == problems(sync_doc), out + out2
    assert (sync_code == 0) == runs, out2
    # Nothing was changed in the warehouse, whatever the query said.
    from sqlalchemy import create_engine, text

    engine = create_engine(site.warehouse)
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from people")).scalar() == len(EMAILS)
    engine.dispose()


def test_a_duckdb_copy_is_refused_and_writes_no_file(tmp_path: Path) -> None:
    site = make_site(tmp_path, f"duckdb:///{tmp_path / 'shop.duckdb'}")
    site.vip(f"copy (select * from people) to '{tmp_path / 'leak.csv'}'")
    for command in (("check", "vip"), ("sync", "now", "vip")):
        code, doc, out = site.json(*command)
        assert code == 78 and "only reads" in problems(doc), out
    assert not (tmp_path / "leak.csv").exists()


@pytest.mark.postgres
def test_postgres_refuses_a_writing_cte_in_check_and_sync_alike(
    tmp_path: Path, postgres_url: str
) -> None:
    site = make_site(tmp_path, postgres_url)
    site.vip("with d as (delete from people returning email, name) select * from d")
    check_code, check_doc, _ = site.json("check", "vip")
    sync_code, sync_doc, out = site.json("sync", "now", "vip")
    assert check_code == sync_code == 78, out
    assert problems(check_doc) == problems(sync_doc)
    from sqlalchemy import create_engine, text

    engine = create_engine(postgres_url)
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from people")).scalar() == len(EMAILS)
    engine.dispose()


# -- 8, 9, 14, 17, 18 in the daemon: a bad file at reload ------------------------------------


def test_the_daemon_keeps_its_last_good_configuration_through_bad_files(tmp_path: Path) -> None:
    import signal

    from tests.fake_destination import harness, members_of, people
    from tests.test_daemon_process import get, running

    rows = people(3)
    system = tmp_path / "etc"
    system.mkdir()
    (system / "shadow").write_text(SYSTEM_FILE)
    with harness(tmp_path, extra="schedule: every 1s\n") as h:
        h.segment(rows)
        vip = h.mappings / "vip.yaml"
        good = vip.read_text()
        copy = good.replace("mode: mirror", "mode: upsert")
        bad: list[tuple[str, str, Any, Any]] = [
            (
                "latin1.yaml",
                "not UTF-8",
                lambda: (h.mappings / "latin1.yaml").write_bytes(b"description: caf\xe9\n"),
                lambda: (h.mappings / "latin1.yaml").unlink(),
            ),
            (
                "laughs.yaml",
                "aliases",
                lambda: (h.mappings / "laughs.yaml").write_text(BASE + billion_laughs()),
                lambda: (h.mappings / "laughs.yaml").unlink(),
            ),
            (
                "vip.yaml",  # the running sync's own file, with a key given twice
                "given twice",
                lambda: vip.write_text(good + "mode: upsert\n"),
                lambda: vip.write_text(good),
            ),
            (
                "shadow.yaml",
                "not a sync definition",
                lambda: (h.mappings / "shadow.yaml").symlink_to(system / "shadow"),
                lambda: (h.mappings / "shadow.yaml").unlink(),
            ),
            (
                "dangling.yaml",
                "symbolic link to something that does not exist",
                lambda: (h.mappings / "dangling.yaml").symlink_to(tmp_path / "gone.yaml"),
                lambda: (h.mappings / "dangling.yaml").unlink(),
            ),
            (
                "folder.yaml",
                "is a directory",
                lambda: (h.mappings / "folder.yaml").mkdir(),
                lambda: (h.mappings / "folder.yaml").rmdir(),
            ),
            (
                "copy.yaml",
                "also defined in",
                lambda: (h.mappings / "copy.yaml").write_text(copy),
                lambda: (h.mappings / "copy.yaml").unlink(),
            ),
            (
                ".env",
                "env file is not UTF-8",
                lambda: (tmp_path / ".env").write_bytes(b"GREETING=gr\xfc\xdfe\n"),
                lambda: (tmp_path / ".env").unlink(),
            ),
        ]
        with running(h) as d:
            d.wait_for("tick.finished", status="succeeded")
            for n, (name, says, make, undo) in enumerate(bad, 1):
                make()
                d.proc.send_signal(signal.SIGHUP)
                d.wait_for("daemon.reload_failed", n=n)
                error = d.events("daemon.reload_failed")[-1]["error"]
                assert name in error and says in error, error
                # Still alive, still ticking on the last good definitions.
                ticks = len(d.events("tick.finished"))
                d.wait_for("tick.finished", n=ticks + 2)
                assert get(d.port, "/readyz")[0] == 200
                undo()
            d.proc.send_signal(signal.SIGHUP)
            d.wait_for("daemon.reloaded", why="SIGHUP")
            code, _ = d.stop()
        assert code == 0, d.stderr()
        finished = d.events("tick.finished")
        assert finished and all(e["status"] == "succeeded" for e in finished), finished
        assert h.dest.members_now() == members_of(rows)
        assert "Traceback" not in d.stderr()
        assert "s3cr3t" not in d.stderr() and "$6$" not in d.stderr()


def test_a_bad_file_appearing_is_noticed_without_a_signal(tmp_path: Path) -> None:
    from tests.fake_destination import harness, people
    from tests.test_daemon_process import running

    with harness(tmp_path, extra="schedule: every 1s\n") as h:
        h.segment(people(2))
        with running(h, {"SYNCER_RELOAD_INTERVAL": "0.5"}) as d:
            d.wait_for("tick.finished", status="succeeded")
            (h.mappings / "dangling.yaml").symlink_to(tmp_path / "gone.yaml")
            d.wait_for("daemon.reload_failed", why="mappings changed")
            ticks = len(d.events("tick.finished"))
            d.wait_for("tick.finished", n=ticks + 1)
            (h.mappings / "dangling.yaml").unlink()
            d.wait_for("daemon.reloaded", why="mappings changed")
            assert d.stop()[0] == 0
