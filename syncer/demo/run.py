"""The end-to-end demo behind ``make demo``: build, sync, advance a week, sync again, verify.

The syncing is done by the real CLI in a subprocess, exactly as a user would run it; this
module only prepares a warehouse and destinations around it and then checks, independently of
the engine's own bookkeeping, that every destination holds what the warehouse says it should.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from syncer.demo import shop
from syncer.demo.receiver import ReceiverServer, start_receiver

CLI = ("-m", "syncer", "sync", "now", "--all")
#: First line of a ``.env`` the demo wrote: only such a file is ever replaced by the next demo.
ENV_MARK = "# Written by `make demo` (python -m syncer.demo run): syncer's settings for the demo."
#: Where ``python -m syncer.demo receiver`` listens by default: the URL the demo's .env names.
RECEIVER_PORT = 8765
#: What to try after the demo; the README's quick start lists the same three.
NEXT_STEPS = (
    ("check", "config, queries, destinations: all ok"),
    ("sync now --all", "no change since the demo: none sent"),
    ("runs", "every run so far, newest first"),
)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_FILE_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass(slots=True)
class DemoSync:
    """The parts of one mapping the demo needs to check its destination."""

    name: str
    mode: str
    query: str
    key: str
    key_type: str
    warehouse: str
    connector: str
    settings: dict[str, Any]
    text_fields: dict[str, str] = field(default_factory=dict)
    """Destination field -> source column, for fields sent as plain text (checked verbatim)."""

    @property
    def file_path(self) -> Path | None:
        path = self.settings.get("path") if self.connector == "file" else None
        return Path(os.path.expanduser(str(path))) if path else None


@dataclass(slots=True)
class Verdict:
    """Warehouse vs destination for one sync after the demo."""

    sync: DemoSync
    warehouse: int
    destination: int | None
    ok: bool
    note: str


def _expand(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), value)
    if isinstance(value, dict):
        return {k: _expand(v, env) for k, v in value.items()}
    return value


def load_syncs(directory: Path, env: Mapping[str, str]) -> list[DemoSync]:
    """Read the mapping files leniently; the CLI does the real validation and reports it."""
    found = []
    for path in sorted(directory.iterdir()):
        if path.suffix not in (".yaml", ".yml") or not path.is_file():
            continue
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            continue
        source = raw.get("source") or {}
        destination = _expand(dict(raw.get("destination") or {}), env)
        text_fields = {}
        for dest, spec in (raw.get("fields") or {}).items():
            column, kind = (
                (spec, "auto")
                if isinstance(spec, str)
                else (spec.get("column"), spec.get("type", "auto"))
            )
            if kind in ("auto", "string") and isinstance(column, str):
                text_fields[str(dest)] = column
        found.append(
            DemoSync(
                name=str(raw.get("name") or path.stem),
                mode=str(raw.get("mode") or "membership"),
                query=str(source.get("query", "")),
                key=str(source.get("key", "")),
                key_type=str(source.get("key_type") or "string"),
                warehouse=str(source.get("warehouse") or "default"),
                connector=str(destination.pop("connector", "")),
                settings=destination,
                text_fields=text_fields,
            )
        )
    return found


def _normal_key(value: Any, key_type: str) -> str:
    """The key as the engine sends it (close enough for the demo's clean data)."""
    if key_type == "email":
        return str(value).strip().lower()
    if key_type == "integer":
        return str(int(value))
    return str(value).strip()


def warehouse_rows(shop_path: Path, sync: DemoSync) -> dict[str, dict[str, Any]]:
    """Members per the mapping's own query, key -> row, read straight from SQLite."""
    with closing(sqlite3.connect(f"file:{shop_path}?mode=ro", uri=True)) as conn:
        cursor = conn.execute(sync.query)
        columns = [d[0] for d in cursor.description]
        lowered = [c.lower() for c in columns]
        key_at = lowered.index(sync.key.lower())
        return {
            _normal_key(row[key_at], sync.key_type): dict(zip(lowered, row, strict=True))
            for row in cursor
            if row[key_at] is not None
        }


def file_members(path: Path) -> dict[str, dict[str, Any]]:
    """Members of a file destination: CSV rows or JSONL lines, by their ``key``."""
    import csv
    import json

    if not path.exists():
        return {}
    if _FILE_SUFFIXES.get(path.suffix.lower()) == "csv":
        with open(path, encoding="utf-8", newline="") as handle:
            return {row["key"]: dict(row) for row in csv.DictReader(handle)}
    members = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                entry = json.loads(line)
                members[str(entry["key"])] = dict(entry.get("fields") or {})
    return members


def verify(
    sync: DemoSync,
    shop_path: Path,
    receiver: ReceiverServer,
    webhook_url: str,
    ever: set[str],
) -> Verdict:
    """Compare one destination with what its mode says it must hold.

    membership/mirror: exactly the current segment. upsert: everyone the segment ever held
    during the demo (it never removes). Text fields must carry the current warehouse value.
    """
    rows = warehouse_rows(shop_path, sync)
    if sync.connector == "file" and sync.file_path is not None:
        held = file_members(sync.file_path)
    elif sync.connector == "webhook" and sync.settings.get("url") == webhook_url:
        held = receiver.receiver.members(sync.name)
    else:
        return Verdict(sync, len(rows), None, True, "not checked (not a local destination)")
    if sync.mode in ("membership", "mirror"):
        expected = set(rows)
    elif sync.mode == "upsert":
        expected = ever
    else:
        return Verdict(sync, len(rows), len(held), True, "not checked (update_only)")
    missing = len(expected - held.keys())
    extra = len(held.keys() - expected)
    stale = 0
    if sync.mode != "membership":  # membership mode never sends field changes
        for key, row in rows.items():
            fields = held.get(key)
            if fields is None:
                continue
            for dest, column in sync.text_fields.items():
                value = row.get(column.lower())
                if isinstance(value, str) and str(fields.get(dest, "")) != value:
                    stale += 1
                    break
    counts = {"missing": missing, "unexpected": extra, "with stale fields": stale}
    if sync.connector == "webhook":
        counts["updates for non-members"] = receiver.receiver.unknown_updates[sync.name]
    problems = [f"{count} {what}" for what, count in counts.items() if count]
    if problems:
        return Verdict(sync, len(rows), len(held), False, "MISMATCH: " + ", ".join(problems))
    kept = len(held) - len(rows)
    note = f"ok, +{kept} kept" if kept > 0 else "ok"
    return Verdict(sync, len(rows), len(held), True, note)


def _destination_label(sync: DemoSync, webhook_url: str) -> str:
    if sync.file_path is not None:
        return sync.file_path.name  # the directory is said under the table
    if sync.connector == "webhook" and sync.settings.get("url") == webhook_url:
        return "webhook receiver"
    return sync.connector


def _print_table(verdicts: list[Verdict], webhook_url: str) -> None:
    """Plain columns that fit 80 characters (the summary tables' rule too)."""
    header = ("sync", "destination", "segment", "holds", "check")
    rows = [
        (
            v.sync.name,
            _destination_label(v.sync, webhook_url),
            f"{v.warehouse:,}",
            "-" if v.destination is None else f"{v.destination:,}",
            v.note,
        )
        for v in verdicts
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    right = {2, 3}
    for row in (header, *rows):
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        print("  ".join(cells).rstrip())
    folders = sorted({str(v.sync.file_path.parent) for v in verdicts if v.sync.file_path})
    if folders:
        print(f"Files are in {', '.join(folders)}/. segment: members in the warehouse now;")
        print("holds: members at the destination.")
    for v in verdicts:
        if v.destination is not None and v.ok and v.destination > v.warehouse:
            print(
                f"{v.sync.name} is in {v.sync.mode} mode, which never removes: it keeps"
                f" {v.destination - v.warehouse:,} who left."
            )


def _clean(directory: Path, syncs: list[DemoSync]) -> None:
    """Forget earlier demo runs so every ``make demo`` starts from an empty destination."""
    for suffix in ("", "-journal", "-wal", "-shm"):
        (directory / f"state.db{suffix}").unlink(missing_ok=True)
    shutil.rmtree(directory / "out", ignore_errors=True)
    root = directory.resolve()
    for sync in syncs:
        path = sync.file_path
        if path is None:
            continue
        if not path.resolve().is_relative_to(root):
            print(f"note: {path} is outside {directory}; not cleaned", file=sys.stderr)
            continue
        for extra in ("", ".changes.jsonl", ".applied"):
            path.with_name(path.name + extra).unlink(missing_ok=True)


def _say(text: str) -> None:
    """A long line of prose, wrapped to 80 columns like the tables around it."""
    print(textwrap.fill(text, 80, subsequent_indent="  ", break_long_words=False))


def _run_cli(title: str, env: Mapping[str, str]) -> int:
    print(f"\n== {title}: {' '.join(['syncer', *CLI[2:]])}", flush=True)
    started = time.perf_counter()
    code = subprocess.run([sys.executable, *CLI], env=dict(env), check=False).returncode
    print(f"   (exit code {code}, {time.perf_counter() - started:.1f}s)", flush=True)
    return code


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when under it (the commands run there)."""
    path = path.resolve()
    cwd = Path.cwd().resolve()
    return str(path.relative_to(cwd)) if path.is_relative_to(cwd) else str(path)


def write_env(
    directory: Path, shop_path: Path, state_path: Path, mappings: Path, secret: str
) -> Path:
    """The settings that point syncer at the demo, so the CLI works on it afterwards with no
    exports: ``<dir>/demo.env`` always, and ``./.env`` unless one of the user's own is there
    (a ``.env`` the demo wrote is replaced). Returns the file the CLI will read."""
    text = "\n".join(
        (
            ENV_MARK,
            "# Delete this file to forget the demo; a .env of your own is never overwritten.",
            f"SYNCER_WAREHOUSE_URL=sqlite:///{_shown(shop_path)}",
            f"SYNCER_STATE_URL=sqlite:///{_shown(state_path)}",
            f"SYNCER_MAPPINGS_DIR={_shown(mappings)}",
            "# lapsed_mid_tier's webhook; `python -m syncer.demo receiver` listens here, with",
            "# this secret, when changes are to be sent to it after the demo.",
            f"DEMO_WEBHOOK_URL=http://127.0.0.1:{RECEIVER_PORT}/hook",
            f"DEMO_WEBHOOK_SECRET={secret}",
            "",
        )
    )
    own = directory / "demo.env"
    dotenv = Path(".env")
    targets = [own]
    try:
        ours = dotenv.read_text(encoding="utf-8").startswith(ENV_MARK)
    except FileNotFoundError:
        ours = True
    except (OSError, UnicodeDecodeError):
        ours = False
    if ours:
        targets.append(dotenv)
    for target in targets:  # it holds a secret: readable by its owner only
        target.unlink(missing_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
    return dotenv if ours else own


def _syncer_command() -> str:
    """How to start this installation's ``syncer``: ``.venv/bin/syncer`` after make demo."""
    script = Path(sys.executable).parent / "syncer"
    if not script.exists():
        return "syncer"
    if shutil.which("syncer") == str(script):
        return "syncer"
    return _shown(script)


def next_steps(env_file: Path) -> list[str]:
    """The three commands the README lists after ``make demo``, as this machine runs them."""
    command = _syncer_command()
    if env_file.name != ".env" or env_file.parent.resolve() != Path.cwd().resolve():
        command += f" --env-file {_shown(env_file)}"
    width = max(len(f"{command} {args}") for args, _ in NEXT_STEPS)
    return [f"{command} {args}".ljust(width) + f"   # {why}" for args, why in NEXT_STEPS]


def default_mappings() -> Path:
    """``./mappings`` if it exists (the CLI runs from the repo root), else the repo's own."""
    here = Path("mappings")
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[2] / "mappings"


def run_demo(
    directory: Path,
    *,
    days: int = 7,
    mappings: Path | None = None,
    customers: int = shop.DEFAULT_CUSTOMERS,
    seed: int = shop.DEFAULT_SEED,
) -> int:
    """The whole demo; returns the process exit code (0 only if every destination matches)."""
    mappings = (mappings or default_mappings()).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    shop_path = (directory / "shop.db").resolve()
    state_path = (directory / "state.db").resolve()

    server, port = start_receiver(secret := secrets.token_hex(16))
    webhook_url = f"http://127.0.0.1:{port}/hook"
    env = dict(os.environ)
    no_proxy = [p for p in env.get("NO_PROXY", "").split(",") if p]
    env.update(
        SYNCER_WAREHOUSE_URL=f"sqlite:///{shop_path}",
        SYNCER_STATE_URL=f"sqlite:///{state_path}",
        SYNCER_MAPPINGS_DIR=str(mappings),
        DEMO_WEBHOOK_URL=webhook_url,
        DEMO_WEBHOOK_SECRET=secret,
        # A proxy from the environment must not intercept the local receiver.
        NO_PROXY=",".join([*no_proxy, "127.0.0.1", "localhost"]),
    )
    env["no_proxy"] = env["NO_PROXY"]
    try:
        syncs = load_syncs(mappings, env)
        _clean(directory, syncs)
        started = time.perf_counter()
        # Relative to here when under it: the summary names the path, and is read by a person.
        built = shop.build(Path(_shown(shop_path)), customers=customers, seed=seed)
        _say(f"{built} ({time.perf_counter() - started:.1f}s)")
        print(f"webhook receiver on {webhook_url} (signed requests only)")

        ever: dict[str, set[str]] = {s.name: set() for s in syncs}

        def remember() -> None:
            for sync in syncs:
                if sync.warehouse == "default" and sync.query:
                    ever[sync.name] |= warehouse_rows(shop_path, sync).keys()

        remember()
        codes = [_run_cli("First sync: every member is new", env)]

        print()
        started = time.perf_counter()
        advanced = shop.advance(Path(_shown(shop_path)), days=days)
        _say(f"{advanced} ({time.perf_counter() - started:.1f}s)")
        remember()
        codes.append(_run_cli(f"Sync after {days} simulated days: only changes are sent", env))

        print("\n== Warehouse segments vs destinations")
        verdicts = [
            verify(sync, shop_path, server, webhook_url, ever[sync.name])
            for sync in syncs
            if sync.warehouse == "default"
        ]
        _print_table(verdicts, webhook_url)
    finally:
        server.shutdown()
        server.server_close()

    env_file = write_env(directory, shop_path, state_path, mappings, secret)
    failed_runs = [i + 1 for i, code in enumerate(codes) if code != 0]
    mismatched = [v.sync.name for v in verdicts if not v.ok]
    if failed_runs:
        print(f"\nFAILED: CLI run {', '.join(map(str, failed_runs))} exited non-zero")
    if mismatched:
        print(f"\nFAILED: destinations differ from the warehouse: {', '.join(mismatched)}")
    if failed_runs or mismatched:
        return 1
    print("\nAll destinations match their warehouse segments.")
    if env_file.name == ".env":
        print(f"\nWrote {_shown(env_file)}: syncer now finds the demo's shop and state by itself.")
    else:
        print(f"\nYour own .env was kept; the demo's settings are in {_shown(env_file)}.")
    print("Try next:")
    for line in next_steps(env_file):
        print(f"  {line}")
    return 0
