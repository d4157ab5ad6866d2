"""``syncer lists``: the lists, segments and audiences syncs name instead of giving their id.

``show`` prints what the state database keeps for each name (the id found or created, and who
resolved it); ``forget`` deletes a name's row, so the next run looks the name up again (after
the list was deleted or renamed at the vendor). See docs/concepts/named-lists.md.
"""

from __future__ import annotations

import click

from syncer.cli import JSON_SCHEMA_VERSION, Ctx, _emit_json, handles_errors, json_option

_COLUMNS = ("connector", "name", "destination_id", "status", "sync", "updated_at")


@click.group("lists")
def lists() -> None:
    """Lists, segments and audiences syncs name instead of giving their id."""


@lists.command("show")
@json_option
@click.pass_obj
@handles_errors
def show(ctx: Ctx, as_json: bool) -> None:
    """Show every named list with the id syncer found or created for it."""
    from syncer.destinations import stored_lists

    rows = stored_lists(ctx.settings)
    if as_json:
        _emit_json({"schema_version": JSON_SCHEMA_VERSION, "lists": rows})
        return
    from rich.table import Table

    from syncer.output import stdout

    table = Table(title="named lists", title_justify="left")
    for column in _COLUMNS:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row.get(k) if row.get(k) is not None else "-") for k in _COLUMNS))
    stdout.print(table)


@lists.command("forget")
@click.argument("name")
@click.option("--connector", help="Only this connector's list of that name.")
@json_option
@click.pass_obj
@handles_errors
def forget(ctx: Ctx, name: str, connector: str | None, as_json: bool) -> None:
    """Forget the id kept for list NAME: the next run looks the name up again (and creates
    the list if its sync says create_if_missing). Exit 1 when no list of that name is kept."""
    import sys

    from syncer.destinations import forget as forget_rows

    rows = forget_rows(ctx.settings, name, connector)
    if as_json:
        _emit_json({"schema_version": JSON_SCHEMA_VERSION, "forgotten": rows})
    elif rows:
        for row in rows:
            click.echo(f"forgot {row['connector']} {name!r} (id {row['destination_id']})")
    else:
        click.echo(f"no list named {name!r} is kept", err=True)
    if not rows:
        sys.exit(1)
