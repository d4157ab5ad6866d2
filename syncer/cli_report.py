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

    name = "DATE"

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
    from syncer.errors import ConfigError
    from syncer.lift import LiftSettings, analyse
    from syncer.lift_query import history_phases, measure
    from syncer.state import state_engine, state_errors

    measurement = sync.definition.measurement
    as_of = as_of.astimezone(dt.UTC)
    url = settings.state_url.get_secret_value()
    if _missing_sqlite_file(url):  # state_engine would create it: a report writes nothing
        raise NoHistory(f"no membership history for {sync.name} yet: run it first")
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
        if percent is None:
            raise ConfigError(
                f"{sync.name}: phase {info.phase} has membership history but no experiment"
                " recorded in syncer_experiments (was the state database edited?)"
            )
        lift_settings = LiftSettings(
            holdout_percent=float(percent),
            min_holdout_members=measurement.min_holdout_members,
            min_holdout_conversions=measurement.min_holdout_conversions,
        )
        result = analyse(data.treated, data.holdout, lift_settings)
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


def _missing_sqlite_file(url: str) -> bool:
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return False  # state_engine says what is wrong with it
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return False
    return not parsed.query.get("uri") and not Path(parsed.database or "").exists()


def _write_atomically(path: Path, content: str) -> None:
    """The whole page or nothing: a temporary file in the same directory, then a rename."""
    from syncer.errors import ConfigError

    target = path.resolve()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(content)
            # mkstemp makes the file private; a report is a page to share, as a plain
            # ``open(path, "w")`` would have made it (the process's umask applies).
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ConfigError(f"--html: cannot write {path}: {exc.strerror or exc}") from None


# -- text ----------------------------------------------------------------------------------


def _pct(x: float | None, signed: bool = False) -> str:
    return "-" if x is None else f"{x * 100:{'+' if signed else ''}.2f}%"


def _pts(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:+.2f} pt"


def _money(x: float | None, signed: bool = False) -> str:
    """Cents below 1,000; whole units above, so the table keeps to 80 columns."""
    if x is None:
        return "-"
    return f"{x:{'+' if signed else ''},.{2 if abs(x) < 1000 else 0}f}"


def _count(x: float | None, signed: bool = False) -> str:
    return "-" if x is None else f"{x:{'+' if signed else ''},.0f}"


def _ci(value: dict[str, Any] | None, fmt: Any) -> str:
    if not value or value.get("low") is None or value.get("high") is None:
        return "-"
    return f"[{fmt(value['low'])}, {fmt(value['high'])}]"


def _est(value: dict[str, Any] | None) -> float | None:
    return None if not value else value.get("estimate")


def _p(x: float | None) -> str:
    if x is None:
        return "-"
    return "< 0.001" if x < 0.001 else f"= {x:.3f}"


def _print(document: dict[str, Any]) -> None:
    """Per phase: a headline, the table, the relative lifts, the sample ratio and the MDE;
    tables keep to 80 columns (see syncer.output.table)."""
    from rich.markup import escape

    from syncer.output import stdout, table

    window = document["window_days"]
    for n, phase in enumerate(document["phases"]):
        if n:
            stdout.print()
        t, h, a = phase["treated"], phase["holdout"], phase["analysis"]
        started = phase["started_at"]
        since = f", since {started[:16].replace('T', ' ')} UTC" if started else ""
        percent = phase["holdout_percent"]
        stdout.print(
            escape(
                f"{document['sync']} phase {phase['phase']}: {percent:g}% holdout{since},"
                f" outcomes within {window} days of entry"
            ),
            style="bold",
        )
        conv, rev = a["conversion"], a["revenue"]
        if not a["enough_data"]:
            stdout.print(
                escape(
                    f"{(a.get('reason') or 'not enough data yet').capitalize()}."
                    f" So far {t['members']:,} treated members converted"
                    f" {_pct(_est(conv['treated']))} and {h['members']:,} held out"
                    f" {_pct(_est(conv['holdout']))}; no difference is claimed below the"
                    " minimum (measurement.min_holdout_members, min_holdout_conversions)."
                )
            )
        else:
            diff = _est(conv["difference"])
            verdict = (
                "significant at 5%"
                if conv["p_value"] is not None and conv["p_value"] < 0.05
                else "not significant at 5%"
            )
            stdout.print(
                escape(
                    f"Treated members converted {_pct(_est(conv['treated']))} against"
                    f" {_pct(_est(conv['holdout']))} held out: {_pts(diff)}"
                    f" ({_pct(_est(conv['relative_lift']), True)}), p {_p(conv['p_value'])}"
                    f" ({verdict})."
                )
            )
            grid = table(
                "",
                "",
                "treated",
                "holdout",
                "difference",
                "95% interval",
                "p",
                right=("treated", "holdout", "difference", "95% interval", "p"),
            )
            grid.add_row("members", _count(t["members"]), _count(h["members"]), "", "", "")
            grid.add_row(
                "conversion",
                _pct(_est(conv["treated"])),
                _pct(_est(conv["holdout"])),
                _pts(diff),
                _ci(conv["difference"], lambda x: f"{x * 100:+.2f}"),
                _p(conv["p_value"]).lstrip("= "),
            )
            grid.add_row(
                "revenue/member",
                _money(_est(rev["treated"])),
                _money(_est(rev["holdout"])),
                _money(_est(rev["difference"]), True),
                _ci(rev["difference"], lambda x: _money(x, True)),
                _p(rev["p_value"]).lstrip("= "),
            )
            grid.add_row(
                "added conversions",
                "",
                "",
                _count(_est(conv["incremental"]), True),
                _ci(conv["incremental"], lambda x: _count(x, True)),
                "",
            )
            grid.add_row(
                "added revenue",
                "",
                "",
                _money(_est(rev["incremental"]), True),
                _ci(rev["incremental"], lambda x: _money(x, True)),
                "",
            )
            stdout.print(grid)
            stdout.print(
                escape(
                    f"Relative lift: conversion {_pct(_est(conv['relative_lift']), True)}"
                    f" {_ci(conv['relative_lift'], lambda x: _pct(x, True))}, revenue per"
                    f" member {_pct(_est(rev['relative_lift']), True)}"
                    f" {_ci(rev['relative_lift'], lambda x: _pct(x, True))} (95%)."
                )
            )
        ratio = a["sample_ratio"]
        if a.get("srm_warning"):
            stdout.print(escape(f"WARNING: {a['srm_warning']}"), style="bold red")
        else:
            stdout.print(
                escape(
                    f"Sample ratio: {t['members']:,} treated, {h['members']:,} held out, as"
                    f" configured ({percent:g}%): p {_p(ratio.get('p_value'))}."
                )
            )
        mde = a.get("mde") or {}
        if mde.get("conversion_absolute") is not None:
            relative = mde.get("conversion_relative")
            extra = f" ({relative * 100:.0f}% relative)" if relative is not None else ""
            stdout.print(
                escape(
                    "Smallest difference these groups detect (80% power):"
                    f" {mde['conversion_absolute'] * 100:.2f} points of conversion{extra}."
                )
            )
