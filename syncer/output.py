"""Human-readable output: rich tables on stdout, progress bars on stderr (terminals only)."""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:  # importing the engine for its types would load it for `syncer runs`
    from rich.progress import Progress, TaskID

    from syncer.engine import PlanResult, ProgressFn, RunResult


def _width() -> int | None:
    """COLUMNS when set; else the terminal's width, or 160 off a terminal (pipes, CI logs),
    where tables get room instead of being cut to 80 columns."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    return None if sys.stdout.isatty() else 160


stdout = Console(highlight=False, width=_width())
stderr = Console(stderr=True, highlight=False)

#: How many characters of a run id the tables show: `syncer run show` takes a unique prefix.
RUN_ID_CHARS = 8


def table(title: str, *columns: str, right: Sequence[str] = ()) -> Table:
    """A table that fits 80 columns: no borders, two spaces between columns, a rule under the
    header. Numbers (``right``) never wrap; text columns fold when a name is too long."""
    result = Table(
        title=title or None,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1),
        collapse_padding=True,
    )
    for column in columns:
        numeric = column in right
        result.add_column(
            column,
            justify="right" if numeric else "left",
            no_wrap=numeric,
            overflow="fold",
        )
    return result


def age(value: Any, now: dt.datetime | None = None) -> str:
    """How long ago a stored timestamp was: ``42s ago``, ``5m ago``, ``3h ago``, ``2d ago``."""
    moment = _moment(value)
    if moment is None:
        return "-"
    now = now or dt.datetime.now(dt.UTC)
    seconds = int((now - moment).total_seconds())
    if seconds < 1:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _moment(value: Any) -> dt.datetime | None:
    """A stored timestamp (ISO text or datetime; SQLite's come without an offset: UTC)."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, dt.datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def short_id(run_id: str | None) -> str:
    return run_id[:RUN_ID_CHARS] if run_id else "-"


def when(value: Any) -> str:
    """A stored timestamp as ``2026-12-07 23:41:05`` (UTC, as stored): no microseconds."""
    moment = _moment(value)
    if moment is None:
        return "-" if value is None or value == "" else str(value)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


class ProgressReporter:
    """One progress bar per sync and operation while batches are sent."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Progress | None = None
        if enabled:  # only on a terminal: rich.progress is not loaded for pipes and CI
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                console=stderr,
                transient=True,
            )
        self._tasks: dict[tuple[str, str], TaskID] = {}

    def __enter__(self) -> ProgressReporter:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def callback(self, sync: str) -> ProgressFn | None:
        progress = self._progress
        if progress is None:
            return None

        def report(operation: str, done: int, total: int) -> None:
            task = self._tasks.get((sync, operation))
            if task is None:
                task = progress.add_task(f"{sync} {operation}", total=total)
                self._tasks[(sync, operation)] = task
            progress.update(task, completed=done, total=max(total, done))

        return report


_COUNTS = ("added", "removed", "updated", "unchanged", "invalid", "rejected", "failed")
_CHANGES = ("added", "removed", "updated", "unchanged")
_PROBLEMS = ("invalid", "rejected", "failed")


def runs_summary_table(results: Iterable[RunResult]) -> None:
    """What ``sync now`` did: one row per sync, inside 80 columns; invalid, rejected and
    failed records are said under the table, with the command that lists them."""
    results = list(results)
    # No duration column: it would push a long name and `interrupted` past 80 columns;
    # --json has each run's duration_s, and `syncer run show` its start and end.
    out = table("sync summary", "sync", "status", *_CHANGES, "run", right=_CHANGES)
    for r in results:
        out.add_row(
            r.sync,
            r.status,
            *(str(r.counts.get(k, 0)) for k in _CHANGES),
            short_id(r.run_id),
        )
    stdout.print(out)
    for r in results:
        problems = [f"{r.counts[k]} {k}" for k in (*_PROBLEMS, "parked") if r.counts.get(k)]
        if r.counts.get("held_out"):
            problems.append(f"{r.counts['held_out']} held out (never sent)")
        if problems:
            shown = f": syncer run show {short_id(r.run_id)}" if r.run_id else ""
            stdout.print(f"{r.sync}: {', '.join(problems)}{shown}", soft_wrap=True)


def plan_table(result: PlanResult, footer: bool = True) -> None:
    c = result.counts
    # The heading is a line of its own: as the title of a narrow table it would wrap.
    stdout.print(f"plan for {result.sync} (mode {result.mode})")
    out = table("", "change", "records", "sample keys", right=("records",))
    out.add_row("add", str(c.add), ", ".join(result.samples.get("add", [])))
    out.add_row("update", str(c.update), ", ".join(result.samples.get("update", [])))
    out.add_row("remove", str(c.remove), ", ".join(result.samples.get("remove", [])))
    out.add_row("unchanged", str(c.unchanged), "")
    out.add_row("invalid", str(c.invalid), "")
    if c.parked:
        out.add_row("parked", str(c.parked), "refused before: see `syncer rejects`")
    stdout.print(out)
    stdout.print(f"source rows: {c.source_rows}; members synced now: {c.members_before}")
    if c.unconfirmed:
        stdout.print(
            f"unconfirmed: {c.unconfirmed} (a send whose answer never arrived, after a crash or"
            " a timeout: sent again while in the segment, removed once not)"
        )
    for reason in result.invalid_samples:
        stdout.print(f"  invalid: {reason}")
    for item in result.lists:
        if item["action"] == "create":
            stdout.print(f"would create {item['kind']} {item['name']!r} (create_if_missing)")
        else:
            stdout.print(f"{item['kind']} {item['name']!r}: id {item['id']}")
        if item.get("resend_members") and c.members_before:
            stdout.print(
                f"  its id is not kept yet: the {c.members_before} members synced before are"
                " sent again (the state may describe another list)"
            )
    if result.experiment is not None:
        experiment_lines(result.experiment, result.mode)
    if result.guard.blocked:
        stdout.print(f"[bold]blocked:[/bold] {result.guard.reason}")
    if footer:
        stdout.print("nothing was sent, nothing created and no state was changed.")


def experiment_lines(experiment: dict[str, Any], mode: str) -> None:
    """The plan's lines about held-out members (syncer.experiments)."""
    parts = []
    if experiment.get("phase"):
        starts = " (starts with this run)" if experiment.get("starts") else ""
        parts.append(
            f"experiment phase {experiment['phase']}{starts}: {experiment['holdout']} members"
            f" held out ({experiment['holdout_percent']:g}%)"
        )
    if experiment.get("global_holdout_percent"):
        parts.append(
            f"global holdout: {experiment['global_holdout']} members"
            f" ({experiment['global_holdout_percent']:g}%)"
        )
    for part in parts:
        stdout.print(part + ", never sent")
    newly = experiment.get("newly_held_out", 0)
    if newly:
        if mode in ("membership", "mirror"):
            stdout.print(
                f"newly held out: {newly} members the destination holds; among the removals"
            )
        else:
            stdout.print(
                f"newly held out: {newly} members the destination holds; mode {mode} does not"
                " remove them (they stay, and are counted as held out)"
            )


def changes(row: dict[str, Any]) -> str:
    """``+220 -80 ~3`` (added, removed, updated), then any problems: ``2 rejected``."""
    marks = {"added": "+", "removed": "-", "updated": "~"}
    parts = [f"{mark}{row[k]}" for k, mark in marks.items() if row.get(k)]
    parts += [f"{row[k]} {k}" for k in (*_PROBLEMS, "parked") if row.get(k)]
    return " ".join(parts) or "no change"


def runs_table(rows: list[dict[str, Any]]) -> None:
    """``syncer runs``: one line per run, newest first, started as an age (``5m ago``):
    the table fits 80 columns with room for changes; ``run show ID`` has the exact times."""
    out = table("runs", "run", "started", "sync", "status", "changes")
    now = dt.datetime.now(dt.UTC)
    for row in rows:
        out.add_row(
            short_id(row.get("id")),
            age(row.get("started_at"), now),
            str(row.get("sync")),
            str(row.get("status")),
            changes(row),
        )
    stdout.print(out)


def _short_key(key: str | None) -> str:
    """A key as the audit log keeps it, a 64-digit hash cut to 16 (enough to tell apart)."""
    if not key:
        return "-"
    return key if len(key) <= 24 else f"{key[:16]}…"


def run_detail(detail: dict[str, Any]) -> None:
    head = ("id", "sync", "status", "mode", "trigger", "started_at", "finished_at", "host", "pid")
    for key in (*head, "source_rows", *_COUNTS, "message"):
        if detail.get(key) is not None:
            value = f"{when(detail[key])} UTC" if key.endswith("_at") else detail[key]
            stdout.print(f"{key:>12}: {value}")
    if detail.get("pending"):
        stdout.print(f"{'pending':>12}: {detail['pending']} (in a vendor job, not yet confirmed)")
    if detail.get("parked"):
        stdout.print(
            f"{'parked':>12}: {detail['parked']} (refused before, not sent: see `syncer rejects`)"
        )
    if detail.get("held_out"):
        stdout.print(
            f"{'held out':>12}: {detail['held_out']} (the experiment's holdout: never sent)"
        )
    for name, value in sorted((detail.get("stats") or {}).items()):
        if name in ("parked", "held_out"):
            continue
        stdout.print(f"{name:>12}: {value}  (reported by the destination)")
    if detail.get("jobs"):
        jobs = Table(title="vendor jobs", title_justify="left")
        for column in ("job", "status", "stats", "message"):
            jobs.add_column(column)
        for job in detail["jobs"]:
            stats = ", ".join(f"{k}={v}" for k, v in sorted(job["stats"].items()))
            jobs.add_row(job["job"], job["status"], stats or "-", job["message"] or "")
        stdout.print(jobs)
    outcomes = Table(title="outcomes", title_justify="left")
    for column in ("operation", "outcome", "records"):
        outcomes.add_column(column)
    for row in detail["outcomes"]:
        outcomes.add_row(row["operation"], row["outcome"], str(row["count"]))
    stdout.print(outcomes)
    if detail["problems"]:
        # A line a record, not a table: at 80 columns a table folded each reason (the thing
        # to read) into pieces. --json has the same values.
        stdout.print("records not accepted")
        for p in detail["problems"]:
            key = escape(_short_key(p["key"]))
            stdout.print(
                f"  {p['operation']} {p['outcome']}  {key}  {escape(p['reason'] or '')}",
                soft_wrap=True,
            )


def connectors_table(rows: list[dict[str, Any]]) -> None:
    table = Table(title="connectors", title_justify="left")
    for column in ("name", "operations", "modes", "max batch", "source", "status"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["name"],
            ", ".join(row.get("operations", [])),
            ", ".join(row.get("modes", [])),
            str(row.get("max_batch_size", "-")),
            row["distribution"] or row["target"],
            f"failed to load: {row['error']}" if row["error"] else "ok",
        )
    stdout.print(table)


def checks_table(results: list[dict[str, Any]]) -> None:
    out = table("check", "sync", "step", "result")
    for result in results:
        for i, step in enumerate(result["steps"]):
            out.add_row(result["sync"] if i == 0 else "", step["step"], step["result"])
    stdout.print(out)
