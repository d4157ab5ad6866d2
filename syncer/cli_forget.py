"""``syncer forget``: remove one person from every destination and forget them (privacy).

Only click is imported here; the engine and the state database load when the command runs.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from syncer.cli import JSON_SCHEMA_VERSION, Ctx, _emit_json, handles_errors, json_option


@click.command("forget")
@click.option(
    "--key",
    "raw_key",
    required=True,
    help="The person's key as the warehouse holds it (an email, a phone number, an id),"
    " normalised per sync as its key column is. `-` reads it from stdin, which keeps it out"
    " of shell history and the process list.",
)
@click.option(
    "--sync",
    "sync_names",
    multiple=True,
    help="Only this sync (repeat for more); default: every sync in the mappings directory.",
)
@click.option(
    "--yes",
    is_flag=True,
    help="Do not ask before removing (required when stdin is not a terminal).",
)
@json_option
@click.pass_obj
@handles_errors
def forget_command(
    ctx: Ctx, raw_key: str, sync_names: tuple[str, ...], yes: bool, as_json: bool
) -> None:
    """Remove one person from every destination that holds them and forget them.

    Each sync holding the key sends its removal (a run with trigger `forget`); once the
    destination acknowledged it, the person's state is deleted and their audit events keep
    their counts but lose the key. A refused removal keeps everything for that sync (exit 1):
    run it again to retry. Running it again after success reports `not held`. It cannot
    reach copies the vendor keeps itself, nor the warehouse: remove the person from the
    source too, or the next run adds them again. See docs/operations/privacy.md.
    """
    from syncer.cli import _STATUS_WORD, _combined_exit, _load, _stop_on_signals

    from_stdin = raw_key == "-"
    if from_stdin:
        raw_key = sys.stdin.readline().rstrip("\r\n")
    if not raw_key.strip():
        raise click.UsageError("--key is empty")
    interactive = not from_stdin and sys.stdin.isatty()
    if not yes and not interactive:
        raise click.UsageError(
            "forget removes the person at the destinations and cannot be undone; pass --yes"
            " (it cannot ask: stdin is not a terminal)"
        )
    syncs = _load(ctx, sync_names, not sync_names)
    engine = ctx.engine()
    from syncer import forget as forgetting

    holdings = [forgetting.look_up(engine, sync, raw_key) for sync in syncs]
    unmapped = [] if sync_names else forgetting.unmapped_syncs(engine, [s.name for s in syncs])
    found = any(h.found for h in holdings)
    if found and not yes:
        from syncer.results import mask_key

        _show_holdings(holdings, mask_key(raw_key.strip(), None))
        if not click.confirm("Remove them and forget them? This cannot be undone", err=True):
            click.echo("nothing was changed", err=True)
            sys.exit(1)
    _stop_on_signals(engine.stop)
    results = []
    try:
        for holding in holdings:
            if engine.stop.is_set():
                break
            results.append(forgetting.forget(engine, holding))
    except KeyboardInterrupt:
        click.echo("stopped at once; run forget again to finish", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(75)
    if found:
        forgetting.truncate_log(engine)
    stopped = len(results) < len(holdings)
    code = _combined_exit([r.exit_code for r in results] + ([75] if stopped else []))
    removed = [r.sync for r in results if r.status in forgetting.WAS_HELD]
    if as_json:
        _emit_json(
            {
                "schema_version": JSON_SCHEMA_VERSION,
                "status": _STATUS_WORD.get(code, "error"),
                "exit_code": code,
                "found": found,
                "syncs": [r.as_dict() for r in results],
                "not_looked_at": unmapped,
            }
        )
    else:
        _show_results(results)
    if not found:
        click.echo(
            "not found: no sync holds this key and no audit event names it (forgotten"
            " already, or spelled otherwise than the warehouse has it)",
            err=True,
        )
    if stopped:
        skipped = ", ".join(h.sync.name for h in holdings[len(results) :])
        click.echo(f"not done because of the stop request: {skipped}", err=True)
    for result in results:
        if result.exit_code:
            click.echo(f"{result.sync}: {result.status}: {result.reason}", err=True)
    if unmapped:
        click.echo(
            f"not looked at: {', '.join(unmapped)} (in the state database, but no mapping file"
            " defines them any more; put the file back and run forget again to forget them"
            " there)",
            err=True,
        )
    if removed:
        click.echo(
            f"remove them from the source of {', '.join(removed)} as well: while its query"
            " still returns them, the next run adds them again",
            err=True,
        )
    sys.exit(code)


def _show_holdings(holdings: list[Any], masked: str) -> None:
    from rich.table import Table

    from syncer.output import stderr

    title = f"forget: what syncer holds of {masked}"
    table = Table(title=title, title_justify="left")
    for column in ("sync", "connector", "at the destination", "audit events"):
        table.add_column(column)
    for h in holdings:
        where = "sent by syncer" if h.held or h.pending else (h.why_not or "not held")
        connector = h.sync.connector_cls.name
        table.add_row(h.sync.name, connector, where, str(h.events))
    stderr.print(table)


def _show_results(results: list[Any]) -> None:
    from rich.table import Table

    from syncer.output import stdout

    table = Table(title="forget", title_justify="left")
    for column in ("sync", "connector", "result", "audit events forgotten", "run id", "detail"):
        table.add_column(column)
    for r in results:
        table.add_row(r.sync, r.connector, r.status, str(r.events), r.run_id or "-", r.reason or "")
    stdout.print(table)


#: The command as ``syncer.cli`` registers it (typed here: the two modules import each other).
forget: click.Command = forget_command
