"""``syncer check``: everything that can be verified without changing anything.

The query is probed through the same code as ``sync now`` (the same text, the same read-only
connection), stopped after ``PROBE_ROWS`` rows, so both accept and refuse the same queries
with the same messages.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import httpx

from syncer.connector import SyncContext
from syncer.engine import SyncEngine
from syncer.errors import ConfigError, ExitCode, SyncerError
from syncer.mapping import LoadedSync, load_directory
from syncer.normalize import RowEncoder
from syncer.settings import Settings
from syncer.state import reading, state_engine, state_errors
from syncer.warehouse import stream

PROBE_ROWS = 10


def _step(steps: list[dict[str, str]], name: str, result: str) -> None:
    steps.append({"step": name, "result": result})


def _check_sync(
    settings: Settings, sync: LoadedSync, transport: httpx.BaseTransport | None
) -> dict[str, Any]:
    steps: list[dict[str, str]] = [{"step": "config", "result": "ok"}]
    definition = sync.definition
    try:
        url = settings.warehouse(definition.source.warehouse)
        with stream(url, definition.source.query, PROBE_ROWS, str(sync.path), PROBE_ROWS) as (
            columns,
            partitions,
        ):
            encoder = RowEncoder(definition, columns, str(sync.path))
            staged = list(encoder.encode(itertools.chain.from_iterable(partitions)))
        invalid = sum(1 for row in staged if row[4] is not None)
        _step(steps, "query", f"ok: {len(staged)} sample rows, {invalid} invalid")
        if definition.experiment is not None or settings.global_holdout_percent:
            _step(steps, "experiment", _experiment(settings, sync))
        context = SyncContext(definition.name, definition.mode, tuple(sorted(definition.fields)))
        with SyncEngine(settings, transport).connector_session(sync, context) as connector:
            connector.check()
        _step(steps, "destination", "ok")
    except SyncerError as exc:
        _step(steps, "error", str(exc))
        return {"sync": sync.name, "ok": False, "exit_code": int(exc.exit_code), "steps": steps}
    return {"sync": sync.name, "ok": True, "exit_code": 0, "steps": steps}


def _experiment(settings: Settings, sync: LoadedSync) -> str:
    """The holdout against the phases recorded so far: a split changed mid-phase is the
    same configuration error here as in a run (syncer.experiments)."""
    from syncer.experiments import prepare

    engine = state_engine(settings.state_url.get_secret_value())
    with state_errors(settings.state_url.get_secret_value()), engine.connect() as conn:
        prepared = prepare(reading(conn), sync, settings)
        conn.rollback()
    parts = []
    own, glob = prepared.assignment.sync, prepared.assignment.global_
    if own is not None:
        starts = any(row == sync.definition.name for row, _ in prepared.phases.starts)
        parts.append(
            f"phase {own.phase}, {own.percent:g}% held out"
            + (" (starts with the next run)" if starts else "")
        )
    if glob is not None:
        parts.append(f"global holdout {glob.percent:g}%")
    return "ok: " + ", ".join(parts)


def run_checks(
    settings: Settings,
    selected: list[tuple[Path, LoadedSync | ConfigError]] | None = None,
    transport: httpx.BaseTransport | None = None,
    env_file: Path | None = None,
) -> list[dict[str, Any]]:
    """One result per sync (or per broken file), each with its steps and exit code: the
    ``selected`` files (see syncer.selection), or every file in the mappings directory."""
    results: list[dict[str, Any]] = []
    try:
        state_engine(settings.state_url.get_secret_value())
        results.append(
            {
                "sync": "(state database)",
                "ok": True,
                "exit_code": 0,
                "steps": [{"step": "connect", "result": "ok"}],
            }
        )
    except SyncerError as exc:
        results.append(
            {
                "sync": "(state database)",
                "ok": False,
                "exit_code": int(exc.exit_code),
                "steps": [{"step": "connect", "result": str(exc)}],
            }
        )
    loaded: list[LoadedSync] = []
    if selected is None:
        try:
            selected = load_directory(settings.mappings_dir, env_file)
        except SyncerError as exc:
            return [*results, _broken(str(settings.mappings_dir), exc)]
    for path, item in selected:
        if isinstance(item, LoadedSync):
            loaded.append(item)
        else:
            results.append(_broken(path.name, item))
    results.extend(_check_sync(settings, sync, transport) for sync in loaded)
    return results


def _broken(what: str, exc: SyncerError) -> dict[str, Any]:
    return {
        "sync": what,
        "ok": False,
        "exit_code": int(exc.exit_code or ExitCode.CONFIG),
        "steps": [{"step": "config", "result": str(exc)}],
    }
