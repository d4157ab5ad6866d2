"""``syncer rejects``: the records a destination (or validation) keeps refusing.

Lists the reject policy's rows (syncer.rejects): each member refused on consecutive runs with
its reason, how many runs, the first and last of them, and whether it is parked (no longer
sent until its source row changes). Keys are masked as ``plan`` masks them.
"""

from __future__ import annotations

from typing import Any

import click

from syncer.cli import JSON_SCHEMA_VERSION, Ctx, _emit_json, handles_errors, json_option


@click.command("rejects")
@click.argument("sync_name", required=False, metavar="[SYNC]")
@click.option("--parked", is_flag=True, help="Only records the reject policy parked.")
@click.option(
    "--limit",
    default=100,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="How many records to list (parked first, then the most recently refused).",
)
@json_option
@click.pass_obj
@handles_errors
def rejects(ctx: Ctx, sync_name: str | None, parked: bool, limit: int, as_json: bool) -> None:
    """List records refused again and again (all syncs, or SYNC's): masked key, outcome,
    reason, attempts, first and last attempt, and whether the sync's `rejects` policy parked
    them (not sent until their source row changes)."""
    from syncer.errors import ConfigError
    from syncer.mapping import LoadedSync, load_directory
    from syncer.rejects import listing, synced_names
    from syncer.state import reading, state_engine, state_errors
    from syncer.stateadmin import unknown

    settings = ctx.settings
    key_types: dict[str, str] = {}
    try:
        for path, item in load_directory(settings.mappings_dir, ctx.env_file):
            if isinstance(item, LoadedSync):
                key_types[item.name] = item.definition.source.key_type
            else:
                key_types.setdefault(path.stem, "")
    except ConfigError:
        pass  # no mappings directory: the state database still says what was refused
    url = settings.state_url.get_secret_value()
    with state_errors(url), state_engine(url).connect() as conn:
        reading(conn)
        if sync_name is not None:
            known = set(key_types) | synced_names(conn)
            if sync_name not in known:  # a SyncerError (exit 2), so --json gets its document
                raise unknown(sync_name, known, f"the state database or {settings.mappings_dir}")
        rows, total = listing(conn, sync_name, parked, limit)
    shown = [_row(row, key_types.get(row["sync"]) or None) for row in rows]
    if as_json:
        _emit_json({"schema_version": JSON_SCHEMA_VERSION, "total": total, "rejects": shown})
        return
    _table(shown, total)


def _row(row: dict[str, Any], key_type: str | None) -> dict[str, Any]:
    from syncer.audit import row_dict
    from syncer.results import mask_key

    out = row_dict(row)
    return {
        "sync": out["sync"],
        "key": mask_key(out["key"], key_type),
        "operation": out["operation"],
        "outcome": out["outcome"],
        "reason": out["reason"],
        "attempts": out["attempts"],
        "first_at": out["first_at"],
        "last_at": out["last_at"],
        "first_run_id": out["first_run_id"],
        "last_run_id": out["last_run_id"],
        "parked": out["parked_at"] is not None,
        "parked_at": out["parked_at"],
    }


def _table(rows: list[dict[str, Any]], total: int) -> None:
    """Three lines a record, inside 80 columns: a nine-column table folded every reason and
    key into pieces. ``--json`` has the same values in full."""
    from rich.markup import escape

    from syncer.output import stdout, when  # when: to the second (JSON keeps it whole)

    if rows:
        stdout.print("records refused again and again")
    for row in rows:
        parked = f"parked {when(row['parked_at'])}" if row["parked_at"] else "still retried"
        stdout.print(
            f"\n[bold]{escape(row['sync'])}[/bold]  {escape(row['key'] or '-')}"
            f"  {row['outcome']} {row['operation']}, {row['attempts']}x  {parked}",
            soft_wrap=True,
        )
        stdout.print(f"  {escape(row['reason'] or '-')}", soft_wrap=True, highlight=False)
        stdout.print(
            f"  first {when(row['first_at'])}, last {when(row['last_at'])}", highlight=False
        )
    if total > len(rows):
        stdout.print(f"{total - len(rows)} more not shown (--limit)")
    if not rows:
        stdout.print("no refused records.")
