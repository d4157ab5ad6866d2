"""``syncer report lift SYNC``: what a sync's segment earned, treated against holdout.

Exit codes: 0 a report was printed (also "not enough data yet"); 1 the sync has no
membership history to report on; 2 usage (an unknown sync or phase); 75 the warehouse or
state database cannot be reached; 78 configuration (no ``measurement:`` block, an outcomes
query that fails or lacks a column). Nothing is written except the ``--html`` file.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from syncer.cli import JSON_SCHEMA_VERSION, Ctx, _emit_json, _load, handles_errors, json_option
from syncer.errors import ExitCode, SyncerError


class NoHistory(SyncerError):
    """Nothing to report on yet (exit 1)."""


class Moment(click.ParamType):  # type: ignore[type-arg]
    """``2026-03-01`` (its midnight UTC) or an ISO 8601 date-time (UTC without a zone)."""

    name = "DATE|DATETIME"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> dt.datetime:
        if isinstance(value, dt.datetime):
            return value
        try:
            moment = dt.datetime.fromisoformat(str(value).strip())
        except ValueError:
            self.fail(f"{value!r} is not a date (2026-03-01) or date-time", param, ctx)
        return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment


@click.group()
def report() -> None:
    """Reports on what syncs earn."""


@report.command("lift")
@click.argument("sync_name", metavar="SYNC")
@click.option("--phase", type=int, help="Report this phase only (default: every phase).")
@click.option(
    "--as-of",
    type=Moment(),
    help="Count outcomes before this moment only and end every window there (default: now).",
)
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also write a self-contained HTML page with charts to this file.",
)
@json_option
@click.pass_obj
@handles_errors
def lift(
    ctx: Ctx,
    sync_name: str,
    phase: int | None,
    as_of: dt.datetime | None,
    html_file: Path | None,
    as_json: bool,
) -> None:
    """Compare the treated members of SYNC with its holdout, per experiment phase.

    Members are counted by the group they were assigned (intention to treat); a member
    converts when the sync's measurement.outcomes has a row for them within window_days of
    their first entry in the phase. Totals are computed in the warehouse; no outcome row
    leaves it. Newest phase first. Exit 0 with a report (also "not enough data yet"),
    1 when the sync has no membership history yet."""
    from syncer.errors import ConfigError

    loaded = _load(ctx, (sync_name,), False)
    if len(loaded) != 1 or loaded[0].name != sync_name:
        names = ", ".join(s.name for s in loaded)
        raise click.UsageError(f"{sync_name!r} selects {names}: name one sync")
    sync = loaded[0]
    if sync.definition.measurement is None:
        raise ConfigError(
            f'{sync.path}: no measurement: block; add `measurement: {{outcomes: "select'
            ' member_key, event_at, revenue from ..."}` to report lift'
        )
    document = build_report(ctx.settings, sync, phase, as_of or dt.datetime.now(dt.UTC))
    if html_file is not None:
        from syncer.lift_html import render

        _write_atomically(html_file, render(document))
    if as_json:
        _emit_json(
            {"schema_version": JSON_SCHEMA_VERSION, "status": "ok", "exit_code": 0, **document}
        )
    else:
        _print(document)
    if html_file is not None:
        click.echo(f"wrote {html_file}", err=True)
    sys.exit(int(ExitCode.OK))


def build_report(settings: Any, sync: Any, only: int | None, as_of: dt.datetime) -> dict[str, Any]:
    """The ``--json`` document (DESIGN: sync, connector, window_days, generated_at, phases)."""
    from syncer.lift import GroupTotals, LiftSettings, analyse
    from syncer.lift_query import history_phases, measure
    from syncer.state import state_engine, state_errors

    measurement = sync.definition.measurement
    url = settings.state_url.get_secret_value()
    with state_errors(url):
        state = state_engine(url)
        with state.connect() as conn:
            phases = [p for p in history_phases(conn, sync.name) if p.phase > 0]
    if not phases:
        hint = "" if sync.definition.experiment else " (it has no experiment: block)"
        raise NoHistory(f"no membership history for {sync.name} yet: run it first{hint}")
    if only is not None:
        chosen = [p for p in phases if p.phase == only]
        if not chosen:
            known = ", ".join(str(p.phase) for p in sorted(phases, key=lambda p: p.phase))
            raise click.BadParameter(
                f"{sync.name} has no history in phase {only}; phases with history: {known}",
                param_hint="'--phase'",
            )
        phases = chosen
    out = []
    for info in phases:
        with state_errors(url):
            data = measure(sync, settings, state, info.phase, as_of=as_of)
        percent = info.holdout_percent
        if percent is None and sync.definition.experiment is not None:
            percent = sync.definition.experiment.holdout_percent
        lift_settings = LiftSettings(
            holdout_percent=float(percent or 0.0),
            min_holdout_members=measurement.min_holdout_members,
            min_holdout_conversions=measurement.min_holdout_conversions,
        )
        result = analyse(
            GroupTotals(**data.treated.as_dict()),
            GroupTotals(**data.holdout.as_dict()),
            lift_settings,
        )
        out.append(
            {
                "phase": info.phase,
                "holdout_percent": percent,
                "started_at": info.started_at.isoformat() if info.started_at else None,
                "treated": data.treated.as_dict(),
                "holdout": data.holdout.as_dict(),
                "analysis": result.as_dict(),
                "curve": data.curve,
            }
        )
    return {
        "sync": sync.name,
        "connector": sync.connector_cls.name,
        "window_days": measurement.window_days,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(),
        "as_of": as_of.astimezone(dt.UTC).isoformat(),
        "phases": out,
    }


def _write_atomically(path: Path, content: str) -> None:
    """The whole page or nothing: a temporary file in the same directory, then a rename."""
    from syncer.errors import ConfigError

    target = path.resolve()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(content)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ConfigError(f"--html: cannot write {path}: {exc.strerror or exc}") from None


# -- text ----------------------------------------------------------------------------------


def _print(document: dict[str, Any]) -> None:
    from syncer.lift_text import render_text

    click.echo(render_text(document), nl=False)
