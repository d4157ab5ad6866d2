"""``syncer writeback``: write the pending runs of syncs back to their warehouse now
(see syncer.writeback; runs do it themselves after each run)."""

from __future__ import annotations

import sys
from typing import Any

import click

from syncer.cli import (
    JSON_SCHEMA_VERSION,
    Ctx,
    _emit_json,
    _load,
    _stop_on_signals,
    handles_errors,
    json_option,
)


@click.command("writeback")
@click.argument("names", nargs=-1, metavar="[SELECTOR]...")
@json_option
@click.pass_obj
@handles_errors
def writeback_command(ctx: Ctx, names: tuple[str, ...], as_json: bool) -> None:
    """Write runs not yet written back to the warehouse now: their run row, membership
    changes and audit outcomes (every sync with write-back on, without SELECTOR).

    Each run is written in one transaction and at most once, so this is safe to repeat. A
    sync that is running is skipped (its run writes back when it ends). Exit 0 when every
    pending run was written, 1 when one could not be (with the reason), 75 when stopped by
    SIGTERM/SIGINT between runs."""
    import threading

    from syncer.errors import ExitCode, LeaseHeld, SyncerError
    from syncer.lease import Lease
    from syncer.state import state_engine, state_errors
    from syncer.writeback import enabled, write_pending

    settings = ctx.settings
    syncs = _load(ctx, names, not names)
    chosen = [s for s in syncs if enabled(settings, s.definition)]
    if not chosen:
        off = ", ".join(s.name for s in syncs) if names else "every sync"
        raise SyncerError(
            f"write-back is off for {off}: turn it on with `writeback: {{enabled: true}}` in"
            " the mapping, or SYNCER_WRITEBACK=true"
        )
    url = settings.state_url.get_secret_value()
    stop = threading.Event()
    _stop_on_signals(stop)
    reports: list[dict[str, Any]] = []
    with state_errors(url):
        state = state_engine(url)
        for item in chosen:
            if stop.is_set():
                break
            try:
                with Lease(state, item.name, ttl=settings.lease_ttl):
                    report = write_pending(settings, state, item.definition, stop=stop.is_set)
            except LeaseHeld as exc:
                reports.append({"sync": item.name, "status": "running", "error": str(exc)})
                continue
            reports.append(report.as_dict())
    failed = [r for r in reports if r["error"]]
    code = int(ExitCode.PROBLEMS) if failed else int(ExitCode.OK)
    if stop.is_set():  # as `syncer prune`: run it again to finish
        code = int(ExitCode.TEMPFAIL)
    if as_json:
        _emit_json(
            {
                "schema_version": JSON_SCHEMA_VERSION,
                "status": "problems" if code else "ok",
                "exit_code": code,
                "writebacks": reports,
            }
        )
    else:
        for r in reports:
            if r["status"] == "ok":
                rows = r["rows"]
                click.echo(
                    f"{r['sync']}: wrote {r['runs_written']} run(s): {rows['syncer_membership']}"
                    f" membership rows, {rows['syncer_membership_events']} entries and exits,"
                    f" {rows['syncer_audit']} audit events ({r['duration_s']:.1f}s)"
                )
    for r in failed:
        click.echo(f"{r['sync']}: write-back not done: {r['error']}", err=True)
    sys.exit(code)
