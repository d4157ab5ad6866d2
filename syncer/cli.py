"""The ``syncer`` command line.

Results go to stdout (one JSON document with ``--json``), progress and errors to stderr.
Exit codes: 0 all acknowledged, 1 something rejected/invalid/blocked/failed, 2 usage,
75 temporary failure (retry later), 78 configuration error.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import click

from syncer import __version__
from syncer.errors import ConfigError, ExitCode, SyncerError

F = TypeVar("F", bound=Callable[..., Any])

JSON_SCHEMA_VERSION = 1


class Ctx:
    """Options shared by every command, resolved lazily so ``--help`` stays fast."""

    def __init__(self, env_file: Path | None, log_level: Any, log_format: Any) -> None:
        self.env_file = env_file
        self.log_level = log_level
        self.log_format = log_format
        self._settings: Any = None

    @property
    def settings(self) -> Any:
        if self._settings is None:
            from syncer.log import configure
            from syncer.settings import load_settings

            settings = load_settings(self.env_file)
            if self.log_level:
                settings.log_level = self.log_level
            if self.log_format:
                settings.log_format = self.log_format
            configure(settings.log_level, settings.log_format)
            self._settings = settings
        return self._settings

    def engine(self) -> Any:
        from syncer.engine import SyncEngine

        return SyncEngine(self.settings)


def _emit_json(document: dict[str, Any]) -> None:
    click.echo(json.dumps(document, indent=2, default=str))


def _fail(exc: SyncerError, as_json: bool) -> None:
    if as_json:
        _emit_json(
            {
                "schema_version": JSON_SCHEMA_VERSION,
                "status": "error",
                "exit_code": int(exc.exit_code),
                "error": str(exc),
            }
        )
    click.echo(f"error: {exc}", err=True)
    sys.exit(int(exc.exit_code))


def handles_errors(func: F) -> F:
    """Turn SyncerError into its message on stderr and its documented exit code."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SyncerError as exc:
            _fail(exc, bool(kwargs.get("as_json")))

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper  # type: ignore[return-value]


# Typed, so modules of their own (syncer/cli_*.py), which import it while this one is still
# loading, type-check.
json_option: Callable[[F], F] = click.option(
    "--json", "as_json", is_flag=True, help="One JSON document on stdout."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="syncer")
@click.option(
    "--env-file",
    # exists=True: a mistyped path is a usage error (2), not a silent run without its settings.
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read settings and ${VAR}s from this file instead of ./.env (it must exist).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Overrides SYNCER_LOG_LEVEL.",
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "console"]),
    help="Overrides SYNCER_LOG_FORMAT.",
)
@click.pass_context
def cli(
    ctx: click.Context, env_file: Path | None, log_level: str | None, log_format: str | None
) -> None:
    """syncer keeps warehouse segments in step with the tools that act on them."""
    ctx.obj = Ctx(env_file, log_level, log_format)


# -- sync ----------------------------------------------------------------------------------------


@cli.group()
def sync() -> None:
    """Run syncs."""


def _load(
    ctx: Ctx, selectors: Iterable[str], everything: bool, exclude: Iterable[str] = ()
) -> list[Any]:
    """The syncs the selectors choose (see syncer.selection), validated; --all alone keeps
    reading the whole directory at once."""
    selectors, exclude = list(selectors), list(exclude)
    if everything and not exclude:
        from syncer.mapping import load_all

        return load_all(ctx.settings.mappings_dir, ctx.env_file)
    scan, chosen = _choose(ctx, selectors, exclude, everything)
    return list(scan.load_strict(chosen))


def _choose(
    ctx: Ctx, selectors: list[str], exclude: list[str], everything: bool
) -> tuple[Any, list[Any]]:
    """The mapping files the selectors choose, unvalidated; a selector matching nothing is a
    usage error (exit 2) that names the nearest syncs, tags or connectors."""
    from syncer.mapping import MappingScan
    from syncer.selection import SelectionError, parse, select

    scan = MappingScan(ctx.settings.mappings_dir, ctx.env_file)
    unread = [e for e in scan.entries if e.problem is not None]
    try:
        chosen = select(scan.entries, selectors, exclude, everything=everything)
    except SelectionError as exc:
        if unread:
            files = ", ".join(f"{e.path.name} ({e.problem})" for e in unread)
            raise SelectionError(f"{exc}; not considered: {files}") from None
        raise
    blind = any(p.method != "name" for s in parse([*selectors, *exclude]) for p in s.parts)
    for entry in unread if blind else ():
        click.echo(
            f"note: {entry.path}: {entry.problem}, so tag: and connector: selectors do not see it",
            err=True,
        )
    return scan, chosen


def _selection_args(names: tuple[str, ...], everything: bool) -> None:
    if not names and not everything:
        raise click.UsageError("name one or more syncs (or selectors), or pass --all")
    if names and everything:
        raise click.UsageError("pass sync names (or selectors) or --all, not both")


selectors_argument = click.argument("names", nargs=-1, metavar="[SELECTOR]...")
exclude_option = click.option(
    "--exclude",
    multiple=True,
    metavar="SELECTOR",
    help="Leave out the syncs this selects (same syntax as SELECTOR; repeatable).",
)


def _combined_exit(codes: Iterable[int]) -> int:
    codes = set(codes)
    for code in (ExitCode.CONFIG, ExitCode.PROBLEMS, ExitCode.TEMPFAIL, ExitCode.USAGE):
        if code in codes:
            return int(code)
    return int(ExitCode.OK)


def _stop_on_signals(stop: threading.Event) -> None:
    """First SIGTERM/SIGINT: finish in-flight batches, start no more. Second: stop at once."""

    def handle(signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        click.echo(
            f"{signal.Signals(signum).name}: finishing in-flight batches, starting no more"
            " (send it again to stop at once)",
            err=True,
        )

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


_STATUS_WORD = {0: "ok", 1: "problems", 75: "tempfail", 78: "config_error"}


@sync.command("now")
@selectors_argument
@click.option("--all", "everything", is_flag=True, help="Run every sync in the mappings directory.")
@exclude_option
@click.option(
    "--full-resync",
    "--full-refresh",
    "full_resync",
    is_flag=True,
    help="Ignore what was synced before and send every member again.",
)
@click.option("--force", is_flag=True, help="Run even if a guard would block the run.")
@json_option
@click.pass_obj
@handles_errors
def sync_now(
    ctx: Ctx,
    names: tuple[str, ...],
    everything: bool,
    exclude: tuple[str, ...],
    full_resync: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Run the selected syncs (or --all) now and print a summary.

    A SELECTOR is a sync name, a glob (`crm_*`), `tag:NAME` (tags listed in the mapping) or
    `connector:NAME`; several add up, commas intersect (`tag:nightly,connector:hubspot`).
    A selector that matches nothing is a usage error (exit 2) naming the nearest syncs."""
    _selection_args(names, everything)
    syncs = _load(ctx, names, everything, exclude)
    engine = ctx.engine()
    from syncer.output import ProgressReporter, runs_summary_table

    results = []
    _stop_on_signals(engine.stop)
    try:
        with ProgressReporter(enabled=not as_json and sys.stderr.isatty()) as reporter:
            for item in syncs:
                if engine.stop.is_set():
                    break
                results.append(
                    engine.run(
                        item,
                        trigger="cli",
                        full_resync=full_resync,
                        force=force,
                        progress=reporter.callback(item.name),
                    )
                )
    except KeyboardInterrupt:
        # Second signal: the run was recorded as interrupted; leave without waiting on
        # in-flight requests. Nothing unacknowledged was saved, so the next run resends it.
        click.echo("stopped at once", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(ExitCode.TEMPFAIL))
    if engine.stop.is_set() and len(results) < len(syncs):
        skipped = ", ".join(s.name for s in syncs[len(results) :])
        click.echo(f"not started because of the stop request: {skipped}", err=True)
    code = _combined_exit(r.exit_code for r in results)
    if as_json:
        _emit_json(
            {
                "schema_version": JSON_SCHEMA_VERSION,
                "status": _STATUS_WORD.get(code, "error"),
                "exit_code": code,
                "runs": [r.as_dict() for r in results],
            }
        )
    else:
        runs_summary_table(results)
    for result in results:  # on stderr in both forms, so pipelines' logs show why
        if result.message:
            click.echo(f"{result.sync}: {result.status}: {result.message}", err=True)
        for warning in result.warnings:
            click.echo(f"{result.sync}: warning: {warning}", err=True)
    sys.exit(code)


# -- daemon --------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    help="Port of /healthz, /readyz and /metrics (default: SYNCER_DAEMON_PORT).",
)
@click.pass_obj
@handles_errors
def daemon(ctx: Ctx, port: int | None) -> None:
    """Run every scheduled sync on its schedule until SIGTERM (see the docs: Daemon)."""
    settings = ctx.settings
    if "log_level" not in settings.model_fields_set:
        # A daemon that says nothing is no use under systemd or Kubernetes: info by default.
        from syncer.log import configure

        configure("info", settings.log_format)
    from syncer.daemon import run_daemon

    sys.exit(run_daemon(settings, ctx.engine(), env_file=ctx.env_file, port=port))


# -- plan ----------------------------------------------------------------------------------------


@cli.command()
@selectors_argument
@click.option(
    "--all", "everything", is_flag=True, help="Plan every sync in the mappings directory."
)
@exclude_option
@click.option(
    "--full-resync",
    "--full-refresh",
    "full_resync",
    is_flag=True,
    help="Plan a run that sends every member again.",
)
@json_option
@click.pass_obj
@handles_errors
def plan(
    ctx: Ctx,
    names: tuple[str, ...],
    everything: bool,
    exclude: tuple[str, ...],
    full_resync: bool,
    as_json: bool,
) -> None:
    """Show exactly what `sync now` with the same selectors would send, without sending or
    saving anything. One sync name: one plan document with --json; otherwise `plans`."""
    from syncer.selection import is_plain_name

    _selection_args(names, everything)
    syncs = _load(ctx, names, everything, exclude)
    engine = ctx.engine()
    from syncer.output import plan_table

    if len(names) == 1 and is_plain_name(names[0]) and not exclude:
        result = engine.plan(syncs[0], full_resync=full_resync)
        if as_json:
            _emit_json({"schema_version": JSON_SCHEMA_VERSION, **result.as_dict()})
        else:
            plan_table(result)
        return
    plans: list[dict[str, Any]] = []
    codes: list[int] = []
    for item in syncs:
        try:
            result = engine.plan(item, full_resync=full_resync)
        except SyncerError as exc:  # one sync's problem does not hide the others' plans
            codes.append(int(exc.exit_code))
            plans.append({"sync": item.name, "exit_code": int(exc.exit_code), "error": str(exc)})
            if not as_json:
                click.echo(f"error: {item.name}: {exc}", err=True)
            continue
        plans.append(result.as_dict())
        if not as_json:
            plan_table(result, footer=False)
            click.echo()
    code = _combined_exit(codes)
    if as_json:
        _emit_json(
            {
                "schema_version": JSON_SCHEMA_VERSION,
                "status": _STATUS_WORD.get(code, "error"),
                "exit_code": code,
                "plans": plans,
            }
        )
    else:
        click.echo("nothing was sent, nothing created and no state was changed.")
    sys.exit(code)


# -- runs ----------------------------------------------------------------------------------------


@cli.command()
@click.option("--sync", "sync_name", help="Only runs of this sync.")
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="How many runs, newest first.",
)
@json_option
@click.pass_obj
@handles_errors
def runs(ctx: Ctx, sync_name: str | None, limit: int, as_json: bool) -> None:
    """List recent runs with status and counts."""
    from syncer.audit import runs as read_runs

    rows = read_runs(ctx.settings, sync_name, limit)
    if as_json:
        _emit_json({"schema_version": JSON_SCHEMA_VERSION, "runs": rows})
    else:
        from syncer.output import runs_table

        runs_table(rows)


@cli.group("run")
def run_group() -> None:
    """Inspect one run."""


@run_group.command("show")
@click.argument("run_id")
@click.option(
    "--limit",
    default=100,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="How many rejected/invalid/failed records to list.",
)
@json_option
@click.pass_obj
@handles_errors
def run_show(ctx: Ctx, run_id: str, limit: int, as_json: bool) -> None:
    """Show one run and its per-record outcomes (rejected records with reasons)."""
    from syncer.audit import run_detail as read_run

    detail = read_run(ctx.settings, run_id, limit)
    if detail is None:
        raise click.UsageError(f"no run with id {run_id!r} (see `syncer runs`)")
    if as_json:
        _emit_json({"schema_version": JSON_SCHEMA_VERSION, "run": detail})
    else:
        from syncer.output import run_detail

        run_detail(detail)


# -- connectors, check, schema -------------------------------------------------------------------


@cli.command()
@json_option
def connectors(as_json: bool) -> None:
    """List installed connectors (built-in and plugins) and what each supports."""
    from syncer.connector import discover

    rows = []
    for info in discover():
        row: dict[str, Any] = {
            "name": info.name,
            "target": info.target,
            "distribution": info.distribution,
            "error": info.error,
        }
        if info.cls is not None:
            row["description"] = info.cls.description
            row.update(info.cls.capabilities.describe())
            row["settings"] = sorted(info.cls.config_model.model_fields)
        rows.append(row)
    if as_json:
        _emit_json({"schema_version": JSON_SCHEMA_VERSION, "connectors": rows})
    else:
        from syncer.output import connectors_table

        connectors_table(rows)
    if any(row["error"] for row in rows):
        sys.exit(int(ExitCode.PROBLEMS))


@cli.command()
@selectors_argument
@click.option(
    "--all", "everything", is_flag=True, help="Check every sync (the default without SELECTOR)."
)
@exclude_option
@json_option
@click.pass_obj
@handles_errors
def check(
    ctx: Ctx, names: tuple[str, ...], everything: bool, exclude: tuple[str, ...], as_json: bool
) -> None:
    """Validate config, probe each query (LIMIT 10), its columns, and the destination, for
    the selected syncs (every one without SELECTOR; same selectors as `sync now`)."""
    from syncer.checks import run_checks

    if names and everything:
        raise click.UsageError("pass sync names (or selectors) or --all, not both")
    selected = None
    if names or exclude:
        scan, chosen = _choose(ctx, list(names), list(exclude), not names)
        selected = scan.load(chosen)
    results = run_checks(ctx.settings, selected, env_file=ctx.env_file)
    code = _combined_exit(r["exit_code"] for r in results)
    if as_json:
        _emit_json(
            {
                "schema_version": JSON_SCHEMA_VERSION,
                "status": _STATUS_WORD.get(code, "error"),
                "exit_code": code,
                "checks": results,
            }
        )
    else:
        from syncer.output import checks_table

        checks_table(results)
    sys.exit(code)


@cli.command()
def schema() -> None:
    """Print the JSON Schema of mapping files (for editor completion)."""
    from syncer.mapping import json_schema

    _emit_json(json_schema())


@cli.group()
def new() -> None:
    """Start a new piece of work from a template."""


@new.command("connector")
@click.argument("name")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write the package (absent or empty; default ./syncer-NAME).",
)
@handles_errors
def new_connector(name: str, directory: Path | None) -> None:
    """Scaffold a connector package of your own, outside syncer: a pyproject registering
    NAME in the syncer.connectors entry points, a RestConnector subclass with its config
    model, a mapping example and tests on the connector kit (syncer.testing). It installs and
    its tests pass as generated; then make it speak your vendor's API."""
    from syncer.connector import connector_names
    from syncer.scaffold import ScaffoldError, default_directory
    from syncer.scaffold import new_connector as scaffold

    try:
        target = directory if directory is not None else default_directory(name)
        written = scaffold(name, target, taken=frozenset(connector_names()))
    except ScaffoldError as exc:
        raise click.UsageError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"cannot write the package: {exc}") from None
    shown = target if not target.is_relative_to(Path.cwd()) else target.relative_to(Path.cwd())
    click.echo(f"Created connector {name!r} in {shown}/:")
    for path in written:
        click.echo(f"  {path.relative_to(target)}")
    click.echo(
        "\nNext:\n"
        f"  cd {shown}\n"
        "  pip install -e '.[test]'\n"
        "  pytest                      # the connector kit's suite against the fake vendor\n"
        f"  syncer connectors           # lists {name}\n"
        "Then make src/.../connector.py speak your vendor's API; see docs/writing-a-connector.md."
    )


# -- commands that live in modules of their own (syncer/cli_*.py) --------------------------------
# Imported here, after the shared helpers above exist; each module imports only click at the top,
# so `syncer --version` stays fast.

from syncer.cli_state import state  # noqa: E402

cli.add_command(state)

from syncer.cli_forget import forget  # noqa: E402

cli.add_command(forget)

from syncer.cli_rejects import rejects  # noqa: E402

cli.add_command(rejects)

from syncer.cli_lists import lists  # noqa: E402

cli.add_command(lists)

from syncer.cli_prune import prune  # noqa: E402

cli.add_command(prune)

from syncer.cli_writeback import writeback_command  # noqa: E402

cli.add_command(writeback_command)

from syncer.cli_report import report  # noqa: E402

cli.add_command(report)


def main() -> None:
    # httpx loads its own command line client (rich.progress, rich.syntax, pygments: a tenth of
    # the start-up of a sync) whenever click and rich are installed, as they are with syncer.
    # This process never runs it; None here makes httpx define its fallback instead.
    if "httpx" not in sys.modules:
        sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    try:
        cli(standalone_mode=True)
    except ConfigError as exc:  # raised while resolving settings outside a command
        click.echo(f"error: {exc}", err=True)
        sys.exit(int(ExitCode.CONFIG))
    finally:
        # The process is ending: spare the interpreter's last garbage collections the walk
        # over every object the imports made (0.1-0.2 s, a fifth of a short command's time).
        # What waited for them is closed here: the engines' pooled connections. Files are
        # closed where they are written, and the rest is freed as the interpreter exits.
        if "syncer.engines" in sys.modules:
            from syncer.engines import dispose_all

            dispose_all()
        gc.freeze()
