"""The end-to-end demo behind ``make demo``: build, sync, advance a week, sync again, verify,
then measure: plant a known lift in the shop's future orders and report it.

The syncing and the report are done by the real CLI in a subprocess, exactly as a user would
run them; this module only prepares a warehouse and destinations around it and then checks,
independently of the engine's own bookkeeping, that every destination holds what the warehouse
says it should (and never a held-out member), that the membership history puts every member in
the group the documented hash gives, and that the lift report counts exactly what was planted
and its intervals hold the planted truth.
"""

from __future__ import annotations

import json
import math
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from syncer.demo import shop
from syncer.demo.outcomes import PLANTED, PlantSummary, plant_outcomes
from syncer.demo.receiver import ReceiverServer, start_receiver
from syncer.holdout import HOLDOUT, TREATED, Assignment, Split
from syncer.state import as_utc

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
#: The lift report's page, in the demo's directory.
LIFT_HTML = "lift.html"
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
    split: Split | None = None
    """The sync's holdout (its ``experiment:`` block), as the engine applies it."""
    window_days: int | None = None
    """Its ``measurement:`` window, when it has one: the sync whose lift the demo reports."""

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
    kept: int = 0
    """Members an upsert destination keeps after they left the segment."""
    held_out: int = 0
    """Members of the segment held out of the destination (never sent)."""


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
        name = str(raw.get("name") or path.stem)
        experiment = raw.get("experiment")
        split = None
        if isinstance(experiment, dict) and experiment.get("holdout_percent") is not None:
            split = Split(
                str(experiment.get("salt") or name),
                int(experiment.get("phase") or 1),
                float(experiment["holdout_percent"]),
            )
        measurement = raw.get("measurement")
        window = None
        if isinstance(measurement, dict) and measurement.get("outcomes"):
            window = int(measurement.get("window_days") or 30)
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
                name=name,
                mode=str(raw.get("mode") or "membership"),
                query=str(source.get("query", "")),
                key=str(source.get("key", "")),
                key_type=str(source.get("key_type") or "string"),
                warehouse=str(source.get("warehouse") or "default"),
                connector=str(destination.pop("connector", "")),
                settings=destination,
                text_fields=text_fields,
                split=split,
                window_days=window,
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


def file_sent(path: Path) -> set[str]:
    """Every key a file destination was ever sent (added or updated), from its change log."""
    log = path.with_name(path.name + ".changes.jsonl")
    if not log.exists():
        return set()
    with open(log, encoding="utf-8") as handle:
        entries = (json.loads(line) for line in handle if line.strip())
        return {str(e["key"]) for e in entries if e.get("operation") != "remove"}


def verify(
    sync: DemoSync,
    shop_path: Path,
    receiver: ReceiverServer,
    webhook_url: str,
    ever: set[str],
    held_out: frozenset[str] = frozenset(),
) -> Verdict:
    """Compare one destination with what its mode says it must hold.

    membership/mirror: exactly the current segment. upsert: everyone the segment ever held
    during the demo (it never removes). Either way without its ``held_out`` members, who must
    never have been sent at all (the file's change log, the receiver's record say who was).
    Text fields must carry the current warehouse value.
    """
    rows = warehouse_rows(shop_path, sync)
    if sync.connector == "file" and sync.file_path is not None:
        held = file_members(sync.file_path)
        sent = file_sent(sync.file_path) if held_out else set()
    elif sync.connector == "webhook" and sync.settings.get("url") == webhook_url:
        held = receiver.receiver.members(sync.name)
        sent = receiver.receiver.sent(sync.name)
    else:
        return Verdict(sync, len(rows), None, True, "not checked (not a local destination)")
    if sync.mode in ("membership", "mirror"):
        expected = set(rows) - held_out
    elif sync.mode == "upsert":
        expected = ever - held_out
    else:
        return Verdict(sync, len(rows), len(held), True, "not checked (update_only)")
    missing = len(expected - held.keys())
    sent_held_out = len((sent | held.keys()) & held_out)
    extra = len(held.keys() - expected - held_out)
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
    counts = {
        "held-out members sent": sent_held_out,
        "missing": missing,
        "unexpected": extra,
        "with stale fields": stale,
    }
    if sync.connector == "webhook":
        counts["updates for non-members"] = receiver.receiver.unknown_updates[sync.name]
    problems = [f"{count} {what}" for what, count in counts.items() if count]
    if problems:
        return Verdict(sync, len(rows), len(held), False, "MISMATCH: " + ", ".join(problems))
    kept = len(held.keys() - rows.keys())
    out = len(rows.keys() & held_out)
    note = f"ok, {out:,} held out" if out else f"ok, +{kept} kept" if kept else "ok"
    return Verdict(sync, len(rows), len(held), True, note, kept, out)


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
        if v.ok and v.held_out and v.sync.split is not None:
            _say(
                f"{v.sync.name} holds out {v.sync.split.percent:g}% of its segment"
                f" ({v.held_out:,} now, by the hash of their key): none of them was ever sent."
            )
        if v.destination is not None and v.ok and v.kept:
            print(
                f"{v.sync.name} is in {v.sync.mode} mode, which never removes: it keeps"
                f" {v.kept:,} who left."
            )


def membership_groups(state_path: Path, sync: str) -> dict[str, str]:
    """Member key -> group, as the engine recorded the sync's membership history."""
    with closing(sqlite3.connect(f"file:{state_path}?mode=ro", uri=True)) as conn:
        rows = conn.execute(
            "SELECT member_key, grp FROM syncer_membership WHERE sync = ?", (sync,)
        ).fetchall()
    return {str(key): str(group) for key, group in rows}


def held_out_members(sync: DemoSync, seen: Mapping[str, int]) -> frozenset[str]:
    """Who of the segment the real assignment holds out of ``sync``'s destination (none
    without an experiment)."""
    if sync.split is None:
        return frozenset()
    assigned = Assignment(sync.split)
    return frozenset(key for key in seen if assigned.group(key) == HOLDOUT)


def check_history(sync: DemoSync, seen: Mapping[str, int], history: Mapping[str, str]) -> list[str]:
    """The engine's membership history against the demo's own account: the same members (all
    who were ever in the segment) in the groups the real assignment gives them."""
    if sync.split is None:
        return []
    if not history:
        return [f"{sync.name}: no membership history recorded"]
    assigned = Assignment(sync.split)
    problems = []
    missing, extra = len(seen.keys() - history.keys()), len(history.keys() - seen.keys())
    if missing or extra:
        problems.append(
            f"{sync.name}: membership history misses {missing:,} and has {extra:,} unexpected"
        )
    wrong = sum(1 for key, group in history.items() if group != assigned.group(key))
    if wrong:
        problems.append(f"{sync.name}: {wrong:,} members recorded in another group")
    return problems


def run_times(state_path: Path, sync: str) -> list[datetime]:
    """When each run of ``sync`` finished, oldest first: every entry is recorded by then."""
    with closing(sqlite3.connect(f"file:{state_path}?mode=ro", uri=True)) as conn:
        rows = conn.execute(
            "SELECT finished_at FROM syncer_runs WHERE sync = ? AND finished_at IS NOT NULL"
            " ORDER BY started_at",
            (sync,),
        ).fetchall()
    return [as_utc(row[0]) for row in rows]


def _points(value: float) -> str:
    """A difference of two rates, in percentage points."""
    return f"{value * 100:+.1f}"


def _money(value: float) -> str:
    return f"{value:+,.2f}" if value < 0 or value > 0 else "0.00"


def _share(value: float) -> str:
    return f"{value:+.1%}"


#: The four numbers the demo holds the report to: (metric, statistic, label, truth, format).
_TRUTHS = (
    ("conversion", "difference", "conversion rate, points", PLANTED.conversion_difference,
     _points),
    ("conversion", "relative_lift", "conversion rate, relative", PLANTED.relative_lift, _share),
    ("revenue", "difference", "revenue per member", PLANTED.revenue_difference, _money),
    ("revenue", "relative_lift", "revenue per member, relative", PLANTED.relative_lift, _share),
)  # fmt: skip


def check_report(
    report: Mapping[str, Any], planted: PlantSummary, sync: DemoSync
) -> tuple[list[str], list[str]]:
    """What the report's ``--json`` says against what was planted: (lines to print, problems).

    Its totals must be exactly the planted ones (anything else is a bug in the report or the
    history). Its intervals should hold the planted truth, as a 95% interval does 95% of the
    time: a miss is shown, not failed (the demo's seed is fixed; the test checks it holds).
    """
    assert sync.split is not None
    phases = [p for p in report.get("phases", []) if p.get("phase") == sync.split.phase]
    if not phases:
        return [], [f"the report has no phase {sync.split.phase}"]
    phase = phases[0]
    problems = []
    for group in (TREATED, HOLDOUT):
        got, want = phase.get(group) or {}, planted.group(group)
        same = (
            got.get("members") == want.members
            and got.get("conversions") == want.conversions
            and math.isclose(float(got.get("revenue") or 0), want.revenue, abs_tol=0.01)
        )
        if not same:
            problems.append(
                f"{group}: the report counts {got.get('members')} members,"
                f" {got.get('conversions')} conversions, {got.get('revenue')} revenue;"
                f" planted {want.members}, {want.conversions}, {want.revenue:.2f}"
            )
    lines = []
    if not problems:
        lines.append(
            "The report counts exactly the planted members, conversions and revenue of both groups."
        )
    analysis = phase.get("analysis") or {}
    if not analysis.get("enough_data"):
        lines.append(
            f"Not enough data yet at this size ({planted.group(HOLDOUT).members:,} held out):"
            " the report rightly draws no conclusion. `make demo` (50,000 customers) has enough."
        )
        return lines, problems
    confidence = float(analysis.get("confidence") or 0.95)
    rows = []
    for metric, statistic, label, truth, shown in _TRUTHS:
        found = (analysis.get(metric) or {}).get(statistic) or {}
        low, high = found.get("low"), found.get("high")
        if low is None or high is None:
            problems.append(f"the report gives no interval for {metric} {statistic}")
            continue
        verdict = "holds it" if low <= truth <= high else "MISSES it"
        rows.append((label, f"[{shown(low)}, {shown(high)}]", shown(truth), verdict))
    if rows:
        lines.append(f"The report's {confidence:.0%} intervals against the planted truth:")
        header = ("", "interval", "planted", "")
        widths = [max(len(r[i]) for r in (header, *rows)) for i in range(4)]
        for row in (header, *rows):
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return lines, problems


def measure(
    sync: DemoSync,
    directory: Path,
    shop_path: Path,
    state_path: Path,
    seen: Mapping[str, int],
    seed: int,
    env: Mapping[str, str],
) -> bool:
    """Plant a known lift in the shop's future orders, then let `syncer report lift` find it
    and write its HTML page. False when the report failed or miscounted the planted data."""
    assert sync.split is not None and sync.window_days is not None
    window = sync.window_days
    times = run_times(state_path, sync.name)
    entries = {key: times[run] for key, run in seen.items() if run < len(times)}
    started = time.perf_counter()
    planted = plant_outcomes(
        shop_path, entries, Assignment(sync.split), seed=seed, window_days=window
    )
    treated, holdout = planted.group(TREATED), planted.group(HOLDOUT)
    _say(
        f"Planted {planted.orders:,} orders dated in the {window} days after each member"
        f" entered the segment (after the shop's own clock, so no segment moves): by the real"
        f" assignment, {PLANTED.holdout_conversion:.0%} of held-out and"
        f" {PLANTED.treated_conversion:.0%} of treated members buy (a true lift of"
        f" {PLANTED.conversion_difference * 100:+.1f} points, {PLANTED.relative_lift:+.1%}),"
        f" {PLANTED.revenue_per_member(HOLDOUT):.2f} vs"
        f" {PLANTED.revenue_per_member(TREATED):.2f} revenue per member"
        f" ({_money(PLANTED.revenue_difference)}). Drawn: {holdout.conversions:,} of"
        f" {holdout.members:,} held-out and {treated.conversions:,} of {treated.members:,}"
        f" treated members bought ({time.perf_counter() - started:.1f}s)."
    )
    if not membership_groups(state_path, sync.name):
        _say(f"problem: no membership history for {sync.name}: nothing to report on")
        return False
    # Every window has closed a day before this date; the orders lie in the future, so the
    # report is read as of then rather than now.
    as_of = ((planted.last_entry or datetime.now(UTC)) + timedelta(days=window + 1)).date()
    html = directory / LIFT_HTML
    command = ["report", "lift", sync.name, "--as-of", as_of.isoformat()]
    print(f"\n$ syncer {' '.join(command)} \\\n    --html {_shown(html)}", flush=True)
    code = subprocess.run(
        [sys.executable, "-m", "syncer", *command, "--html", str(html)], env=dict(env), check=False
    ).returncode
    if code != 0:
        print(f"   (exit code {code})")
        return False
    proc = subprocess.run(
        [sys.executable, "-m", "syncer", *command, "--json"],
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        report = json.loads(proc.stdout) if proc.returncode == 0 else None
    except ValueError:
        report = None
    if report is None:
        print(f"`syncer {' '.join(command)} --json` failed (exit code {proc.returncode}):")
        print(proc.stderr.strip())
        return False
    lines, problems = check_report(report, planted, sync)
    print()
    for line in lines:
        if line.startswith("  "):  # a table row: as it is
            print(line.rstrip())
        else:
            _say(line)
    for problem in problems:
        _say(f"MISMATCH: {problem}")
    if html.is_file():
        _say(f"The report with its charts is in {_shown(html)}: open it in a browser.")
        _say(f"To read it again: syncer {' '.join(command)}")
    else:
        problems.append("no HTML report written")
        _say(f"MISMATCH: the report wrote no {_shown(html)}")
    return not problems


def _clean(directory: Path, syncs: list[DemoSync]) -> None:
    """Forget earlier demo runs so every ``make demo`` starts from an empty destination."""
    for suffix in ("", "-journal", "-wal", "-shm"):
        (directory / f"state.db{suffix}").unlink(missing_ok=True)
    shutil.rmtree(directory / "out", ignore_errors=True)
    (directory / LIFT_HTML).unlink(missing_ok=True)
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
        # The planted lift is computed with the sync's own split only.
        SYNCER_GLOBAL_HOLDOUT_PERCENT="0",
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

        # Per sync: every member the segment held during the demo -> the run that first saw them.
        first_seen: dict[str, dict[str, int]] = {s.name: {} for s in syncs}

        def remember(run: int) -> None:
            for sync in syncs:
                if sync.warehouse == "default" and sync.query:
                    seen = first_seen[sync.name]
                    for key in warehouse_rows(shop_path, sync).keys() - seen.keys():
                        seen[key] = run

        remember(0)
        codes = [_run_cli("First sync: every member is new", env)]

        print()
        started = time.perf_counter()
        advanced = shop.advance(Path(_shown(shop_path)), days=days)
        _say(f"{advanced} ({time.perf_counter() - started:.1f}s)")
        remember(1)
        codes.append(_run_cli(f"Sync after {days} simulated days: only changes are sent", env))

        history = {s.name: membership_groups(state_path, s.name) for s in syncs if s.split}
        held_out = {s.name: held_out_members(s, first_seen[s.name]) for s in syncs}
        print("\n== Warehouse segments vs destinations")
        ever = {name: set(seen) for name, seen in first_seen.items()}
        verdicts = [
            verify(sync, shop_path, server, webhook_url, ever[sync.name], held_out[sync.name])
            for sync in syncs
            if sync.warehouse == "default"
        ]
        _print_table(verdicts, webhook_url)
        history_problems = [
            problem
            for sync in syncs
            if sync.split is not None
            for problem in check_history(sync, first_seen[sync.name], history[sync.name])
        ]
        for problem in history_problems:
            print(f"MISMATCH: {problem}")
    finally:
        server.shutdown()
        server.server_close()

    measured = [s for s in syncs if s.split is not None and s.window_days]
    report_failed = []
    for sync in measured:
        print(f"\n== Measuring {sync.name}: a planted lift, and the report that finds it")
        if not measure(sync, directory, shop_path, state_path, first_seen[sync.name], seed, env):
            report_failed.append(sync.name)

    env_file = write_env(directory, shop_path, state_path, mappings, secret)
    failed_runs = [i + 1 for i, code in enumerate(codes) if code != 0]
    mismatched = [v.sync.name for v in verdicts if not v.ok]
    if failed_runs:
        print(f"\nFAILED: CLI run {', '.join(map(str, failed_runs))} exited non-zero")
    if mismatched:
        print(f"\nFAILED: destinations differ from the warehouse: {', '.join(mismatched)}")
    if history_problems:
        print("\nFAILED: the membership history differs from the segments and their splits")
    if report_failed:
        print(f"\nFAILED: `syncer report lift` failed for {', '.join(report_failed)}")
    if failed_runs or mismatched or history_problems or report_failed:
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
