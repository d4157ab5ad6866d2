"""``syncer prune``: delete old runs and audit events (see syncer.retention)."""

from __future__ import annotations

import sys
from typing import Any

import click

from syncer.cli import (
    JSON_SCHEMA_VERSION,
    Ctx,
    _emit_json,
    _stop_on_signals,
    handles_errors,
    json_option,
)


class Age(click.ParamType):  # type: ignore[type-arg]
    """``90d``, ``12h``, ``2w``: anything else is a usage error (exit 2) saying so."""

    name = "AGE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from syncer.ages import AgeError, parse_age

        try:
            parse_age(str(value))
        except AgeError as exc:
            self.fail(str(exc), param, ctx)
        return str(value).strip()


@click.command()
@click.option(
    "--older-than",
    type=Age(),
    help="Remove runs that started longer ago than this: 90d, 12h, 2w (hours, days, weeks)."
    " Default: SYNCER_PRUNE_OLDER_THAN.",
)
@click.option("--dry-run", is_flag=True, help="Count what would be removed; remove nothing.")
@click.option(
    "--batch-size",
    type=click.IntRange(100, 1_000_000),
    default=10_000,
    show_default=True,
    help="Audit events deleted per write transaction (a running sync waits at most one).",
)
@click.option(
    "--pace",
    type=click.FloatRange(0, 100),
    default=3.0,
    show_default=True,
    help="Seconds idle after each batch per second it took, so running syncs find the write"
    " lock free. 0: as fast as possible (nothing else running).",
)
@json_option
@click.pass_obj
@handles_errors
def prune(
    ctx: Ctx,
    older_than: str | None,
    dry_run: bool,
    batch_size: int,
    pace: float,
    as_json: bool,
) -> None:
    """Delete runs, their audit events and settled vendor jobs older than --older-than.

    Acknowledged state is never touched, nor running runs, runs whose vendor jobs are not
    settled, or each sync's latest finished run. Safe while syncs run: it deletes in short
    batches. SIGTERM/SIGINT stops it between batches (exit 75); run it again to finish.
    """
    settings = ctx.settings
    older_than = older_than or settings.prune_older_than
    if older_than is None:
        raise click.UsageError(
            "say how old is old enough to go: --older-than 90d (or 12h, 2w),"
            " or set SYNCER_PRUNE_OLDER_THAN"
        )
    import threading

    from syncer.errors import ExitCode
    from syncer.retention import prune as run_prune
    from syncer.state import state_engine, state_errors

    url = settings.state_url.get_secret_value()
    stop = threading.Event()
    _stop_on_signals(stop)
    with state_errors(url):
        report = run_prune(
            state_engine(url),
            older_than,
            dry_run=dry_run,
            batch_size=batch_size,
            pace=pace,
            stop=stop,
        )
    code = int(ExitCode.TEMPFAIL) if report.stopped else int(ExitCode.OK)
    if as_json:
        _emit_json(
            {
                "schema_version": JSON_SCHEMA_VERSION,
                "status": "stopped" if report.stopped else "ok",
                "exit_code": code,
                **report.as_dict(),
            }
        )
    else:
        verb = "Would remove" if dry_run else "Removed"
        cutoff = report.cutoff.strftime("%Y-%m-%d %H:%M UTC")
        click.echo(f"{verb} what started before {cutoff} (older than {older_than}):")
        for table, n in report.removed.items():
            click.echo(f"  {table:<15} {n:>12,}")
        click.echo(
            "Kept whatever its age: acknowledged state, running runs, runs with vendor jobs"
            " not settled, and each sync's latest finished run."
        )
    if report.stopped:
        click.echo("stopped before the end: run `syncer prune` again to finish", err=True)
    sys.exit(code)
