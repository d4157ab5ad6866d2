"""``syncer state show | reset | move``: one sync's state, looked at, forgotten or renamed.

The work is in syncer.stateadmin; here are the arguments, the confirmation and the output.
Refusals: an unknown name (no state, no mapping) or a move onto a name with state is a usage
error (2); a sync that is running, or whose vendor jobs are not settled, is 75; nothing changes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from syncer.cli import JSON_SCHEMA_VERSION, Ctx, _emit_json, handles_errors, json_option

_YES = click.option(
    "--yes",
    is_flag=True,
    help="Do not ask for confirmation (required when stdin is not a terminal).",
)


@click.group("state")
def state() -> None:
    """Look at, reset or rename a sync's state (what its destination acknowledged)."""


def _mapping_files(ctx: Ctx) -> dict[str, list[Path]]:
    """Sync name -> the mapping files declaring it; none when the directory is missing (state
    commands work on state whose mappings are gone)."""
    from syncer.errors import ConfigError
    from syncer.mapping import declared_names

    try:
        return declared_names(ctx.settings.mappings_dir, ctx.env_file)
    except ConfigError:
        return {}


def _open(ctx: Ctx) -> tuple[Any, str]:
    from syncer.state import state_engine

    url = ctx.settings.state_url.get_secret_value()
    return state_engine(url), url


def _unknown(ctx: Ctx, engine: Any, name: str, mappings: dict[str, list[Path]]) -> Exception:
    from syncer.stateadmin import known_names, unknown

    with engine.connect() as conn:
        names = known_names(conn)
    where = f"the state database or {ctx.settings.mappings_dir}"
    return unknown(name, names | set(mappings), where)


def _described(ctx: Ctx, engine: Any, name: str, mappings: dict[str, list[Path]]) -> Any:
    """``describe`` of ``name``, or UnknownSync (exit 2) when neither the state database
    (rows or a lease) nor a mapping file knows it."""
    from syncer.stateadmin import describe

    info = describe(engine, name)
    if not info["has_state"] and info["lease"] is None and name not in mappings:
        raise _unknown(ctx, engine, name, mappings)
    return info


def _confirm(yes: bool, question: str) -> None:
    """Ask on a terminal; off one, --yes is required (a pipeline must say what it means)."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.UsageError("stdin is not a terminal: pass --yes to confirm")
    click.confirm(question, err=True, abort=True)


# -- show ----------------------------------------------------------------------------------------


@state.command("show")
@click.argument("name")
@json_option
@click.pass_obj
@handles_errors
def state_show(ctx: Ctx, name: str, as_json: bool) -> None:
    """What the state database holds for sync NAME: members its destination acknowledged,
    the last run, vendor jobs not settled, rejects, and whether a run holds it now. Works
    for a sync whose mapping is gone."""
    from syncer.state import state_errors

    mappings = _mapping_files(ctx)
    engine, url = _open(ctx)
    with state_errors(url):
        info = _described(ctx, engine, name, mappings)
    info["mapping"] = [str(p) for p in mappings.get(name, [])]
    if as_json:
        _emit_json({"schema_version": JSON_SCHEMA_VERSION, "state": info})
    else:
        _show(info)


def _when(iso: str | None) -> str:
    """An ISO 8601 UTC timestamp to the second, for people (JSON keeps it whole)."""
    from syncer.output import when

    return f"{when(iso)} UTC" if iso else "-"


_COUNTS = ("added", "removed", "updated", "unchanged", "rejected", "invalid", "failed")


def _show(info: dict[str, Any]) -> None:
    from rich.markup import escape

    from syncer.output import stdout

    def line(label: str, text: str) -> None:
        stdout.print(f"{label:>9}{':' if label else ' '} {escape(text)}")

    line("sync", info["sync"])
    line("mapping", ", ".join(info["mapping"]) or "none declares this name (renamed or removed?)")
    m = info["members"]
    unsure = m["maybe_absent"] + m["maybe_stale"]
    detail = f"{m['confirmed']} confirmed"
    if unsure:
        detail += f", {unsure} sent but not confirmed"
    line("members", f"{m['total']} ({detail} by the destination)")
    if m["last_synced_at"]:
        line("", f"last acknowledged {_when(m['last_synced_at'])}")
    last = info["last_run"]
    if last is None:
        line("runs", "none yet: the next run is a first run")
    else:
        line("runs", f"{info['runs']}; last {last['id']} {last['status']} ({last['trigger']})")
        if last["status"] == "running" and not (info["lease"] and info["lease"]["live"]):
            line("", "its process is gone: the next run records it as interrupted")
        line("", f"started {_when(last['started_at'])}, finished {_when(last['finished_at'])}")
        counts = [f"{k} {last[k]}" for k in _COUNTS if last.get(k)]
        line("", ", ".join(counts) or "nothing sent")
        if last.get("message"):
            line("", str(last["message"]))
    if info["jobs"]:
        line("jobs", f"{len(info['jobs'])} vendor job(s) not settled, {info['pending']} records")
        for job in info["jobs"]:
            started = "submitted" if job["sealed"] else "never started"
            line("", f"{job['job']}: {started}, {job['records']} records, run {job['run_id']}")
    elif info["pending"]:
        line("pending", f"{info['pending']} records in vendor jobs")
    rejects = info["rejects"]
    if rejects["total"]:
        line("rejects", f"{rejects['total']} members refused ({rejects['parked']} parked)")
    if info["alert"] and info["alert"]["state"] != "ok":
        alert = info["alert"]
        line("alert", f"{alert['state']} since {_when(alert['since'])} ({alert['reason'] or '-'})")
    lease = info["lease"]
    if lease is None:
        line("running", "no")
    elif lease["live"]:
        line(
            "running", f"yes, on {lease['host']} (pid {lease['pid']}) since {_when(lease['since'])}"
        )
    else:
        line(
            "running",
            f"no (a stale lease of {lease['host']} pid {lease['pid']}: the next run takes it)",
        )


# -- reset ---------------------------------------------------------------------------------------


@state.command("reset")
@click.argument("name")
@_YES
@json_option
@click.pass_obj
@handles_errors
def state_reset(ctx: Ctx, name: str, yes: bool, as_json: bool) -> None:
    """Forget what NAME's destination acknowledged, so its next run sends every member of
    the segment again as an add (a full sync). Runs and the audit log are kept. Refused
    while the sync runs or a vendor job it submitted is not settled."""
    from syncer.state import state_errors
    from syncer.stateadmin import refuse_if_jobs, refuse_if_running, reset

    mappings = _mapping_files(ctx)
    engine, url = _open(ctx)
    with state_errors(url):
        info = _described(ctx, engine, name, mappings)
        refuse_if_running(engine, name, "state reset")
        refuse_if_jobs(info["jobs"], name)
        total = info["members"]["total"]
        if total or info["pending"] or info["jobs"]:
            _confirm(
                yes,
                f"Forget the {total} members the destination of sync {name!r} acknowledged?"
                " Its next run sends every member of the segment as an add, and removes no one"
                " it no longer knows of",
            )
            forgot = reset(engine, name, ctx.settings.lease_ttl)
        else:
            forgot = {"records": 0, "unconfirmed": 0, "pending": 0, "jobs": 0}
    if as_json:
        _emit_json({"schema_version": JSON_SCHEMA_VERSION, "sync": name, "forgot": forgot})
        return
    if not any(forgot.values()):
        click.echo(f"sync {name!r} has no acknowledged members: nothing to forget")
        return
    text = f"forgot {forgot['records']} acknowledged members of sync {name!r}"
    if forgot["unconfirmed"]:
        text += f" ({forgot['unconfirmed']} of them unconfirmed)"
    if forgot["jobs"]:
        text += f", and {forgot['jobs']} vendor job(s) never started ({forgot['pending']} records)"
    click.echo(text + "; its next run sends every member of the segment as an add")


# -- move ----------------------------------------------------------------------------------------


@state.command("move")
@click.argument("old")
@click.argument("new")
@_YES
@json_option
@click.pass_obj
@handles_errors
def state_move(ctx: Ctx, old: str, new: str, yes: bool, as_json: bool) -> None:
    """Rename sync OLD's state to NEW (members, runs, vendor jobs, rejects, alerts), so a
    sync renamed in its mapping file carries on where it left off instead of sending every
    member again. Refused if NEW already has state, or while either name is running."""
    from syncer.mapping import valid_name
    from syncer.state import state_errors
    from syncer.stateadmin import describe, move, refuse_if_running, refuse_if_taken

    if old == new:
        raise click.UsageError("OLD and NEW are the same name")
    if not valid_name(new):
        raise click.UsageError(f"{new!r} is not a sync name: use letters, digits, '_', '-', '.'")
    mappings = _mapping_files(ctx)
    engine, url = _open(ctx)
    with state_errors(url):
        info = describe(engine, old)
        if not info["has_state"]:
            if old not in mappings:
                raise _unknown(ctx, engine, old, mappings)
            raise click.UsageError(f"sync {old!r} has no state: nothing to move")
        refuse_if_running(engine, old, "state move")
        refuse_if_running(engine, new, "state move")
        refuse_if_taken(engine, new, old)
        _confirm(
            yes,
            f"Move the state of sync {old!r} ({info['members']['total']} members,"
            f" {info['runs']} runs) to {new!r}?",
        )
        moved = move(engine, old, new, ctx.settings.lease_ttl)
    hint, warn = _mapping_hint(mappings, old, new)
    if as_json:
        _emit_json({"schema_version": JSON_SCHEMA_VERSION, "from": old, "to": new, "moved": moved})
    else:
        order = [*_WHAT, *sorted(set(moved) - set(_WHAT))]
        rows = ", ".join(f"{moved[t]} {_WHAT.get(t, t)}" for t in order if moved.get(t))
        click.echo(f"moved the state of sync {old!r} to {new!r}: {rows}")
    click.echo(("warning: " if warn else "") + hint, err=True)


_WHAT = {
    "syncer_records": "members",
    "syncer_runs": "runs",
    "syncer_jobs": "vendor jobs",
    "syncer_pending": "pending records",
    "syncer_ticks": "daemon ticks",
    "syncer_alerts": "alert state",
    "syncer_rejects": "rejects",
    "syncer_destinations": "created lists",
    "syncer_membership": "membership history rows",
    "syncer_experiments": "experiment phases",
    "syncer_writeback": "runs written back",
}


def _mapping_hint(mappings: dict[str, list[Path]], old: str, new: str) -> tuple[str, bool]:
    """What to do about the mapping files now; True when leaving them is a mistake."""
    if new in mappings and old not in mappings:
        files = ", ".join(str(p) for p in mappings[new])
        return f"{files} declares {new!r}: its next run carries on where {old!r} left off", False
    if old in mappings:
        files = ", ".join(str(p) for p in mappings[old])
        return (
            f"{files} still declares sync {old!r}: rename it to {new!r} (`name: {new}`, or"
            f" the file), or the next run of {old!r} starts from empty state and sends every"
            " member again",
            True,
        )
    return f"no mapping declares {new!r} yet: rename the sync in its mapping file to {new!r}", True
