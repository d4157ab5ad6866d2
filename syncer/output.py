"""Human-readable output: rich tables on stdout, progress bars on stderr (terminals only)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # importing the engine for its types would load it for `syncer runs`
    from rich.progress import Progress, TaskID

    from syncer.engine import PlanResult, ProgressFn, RunResult

# Off a terminal (pipes, CI logs) tables get room instead of being cut to 80 columns.
stdout = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
stderr = Console(stderr=True, highlight=False)


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


def runs_summary_table(results: Iterable[RunResult]) -> None:
    table = Table(title="sync summary", title_justify="left")
    table.add_column("sync")
    table.add_column("status")
    for column in (*_COUNTS, "seconds"):
        table.add_column(column, justify="right")
    table.add_column("run id")
    for r in results:
        counts = (str(r.counts.get(k, 0)) for k in _COUNTS)
        table.add_row(r.sync, r.status, *counts, f"{r.duration_s:.2f}", r.run_id or "-")
    stdout.print(table)


def plan_table(result: PlanResult) -> None:
    c = result.counts
    table = Table(title=f"plan for {result.sync} (mode {result.mode})", title_justify="left")
    table.add_column("change")
    table.add_column("records", justify="right")
    table.add_column("sample keys")
    table.add_row("add", str(c.add), ", ".join(result.samples.get("add", [])))
    table.add_row("update", str(c.update), ", ".join(result.samples.get("update", [])))
    table.add_row("remove", str(c.remove), ", ".join(result.samples.get("remove", [])))
    table.add_row("unchanged", str(c.unchanged), "")
    table.add_row("invalid", str(c.invalid), "")
    stdout.print(table)
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
    if result.guard.blocked:
        stdout.print(f"[bold]blocked:[/bold] {result.guard.reason}")
    stdout.print("nothing was sent, nothing created and no state was changed.")


_RUN_COLUMNS = ("id", "sync", "status", "trigger", "started_at", *_COUNTS)


def runs_table(rows: list[dict[str, Any]]) -> None:
    table = Table(title="runs", title_justify="left")
    for column in _RUN_COLUMNS:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row.get(k) if row.get(k) is not None else "-") for k in _RUN_COLUMNS))
    stdout.print(table)


def run_detail(detail: dict[str, Any]) -> None:
    head = ("id", "sync", "status", "mode", "trigger", "started_at", "finished_at", "host", "pid")
    for key in (*head, "source_rows", *_COUNTS, "message"):
        if detail.get(key) is not None:
            stdout.print(f"{key:>12}: {detail[key]}")
    if detail.get("pending"):
        stdout.print(f"{'pending':>12}: {detail['pending']} (in a vendor job, not yet confirmed)")
    for name, value in sorted((detail.get("stats") or {}).items()):
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
        problems = Table(title="records not accepted", title_justify="left")
        for column in ("operation", "outcome", "key", "reason"):
            problems.add_column(column)
        for p in detail["problems"]:
            problems.add_row(p["operation"], p["outcome"], p["key"] or "-", p["reason"] or "")
        stdout.print(problems)


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
    table = Table(title="check", title_justify="left")
    for column in ("sync", "step", "result"):
        table.add_column(column)
    for result in results:
        for step in result["steps"]:
            table.add_row(result["sync"], step["step"], step["result"])
    stdout.print(table)
