"""``syncer daemon``: keep every scheduled sync in step, in one long-lived process.

What it does, and why it is built this way:

* **Schedules from YAML, in memory.** Every sync in the mappings directory with a ``schedule:``
  becomes an APScheduler job (memory job store, no shared store): the YAML is the only source
  of truth, so a restart or a reload simply rebuilds the jobs. Syncs without a schedule are
  loaded (so a broken one still stops the start) but only run by ``sync now``.
* **Replicas.** Every replica schedules every sync. At a tick each one tries to claim
  ``(sync, tick)`` in the state database (``syncer.claims``); one wins and runs it through the
  same :class:`~syncer.engine.SyncEngine` as ``sync now``, under the same per-sync lease. A
  replica that dies loses nothing: its run is marked interrupted and the next tick is claimed by
  whoever is alive. A daemon that woke late runs only the latest tick (missed ticks coalesce).
* **Reload** on SIGHUP and when a mapping file changes (polled): definitions are re-read and
  jobs replaced; running syncs finish with the definition they started with. A broken file at
  reload keeps the previous definitions (and says so); only at start is it fatal (exit 78).
* **Stop** on SIGTERM/SIGINT: no new ticks, running syncs finish their in-flight batches
  (the engine's stop event), then exit 0; after ``SYNCER_SHUTDOWN_GRACE`` seconds, or on a
  second signal, it leaves at once with 75, which loses nothing (see "Stopping a run").
* **Retention** with ``SYNCER_PRUNE_OLDER_THAN``: once a day (at start, then after each UTC
  midnight) one replica claims the day in ``syncer_ticks`` and prunes old runs and audit
  events in a thread of its own (``syncer.retention``), in short batches beside running syncs.
* **Health** on ``/healthz`` and ``/readyz``, **metrics** on ``/metrics`` (``syncer.metrics``),
  and **alerts** once per incident (``syncer.alerts``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine, func, select, text

from syncer import metrics
from syncer.alerts import Alerter
from syncer.claims import Claims, replica_name
from syncer.enums import RunStatus
from syncer.errors import ConfigError, ExitCode, where
from syncer.log import get_logger
from syncer.mapping import LoadedSync, load_all, mapping_files
from syncer.schedules import Schedule, ScheduleError, parse_schedule, tick_id
from syncer.settings import Settings
from syncer.state import events_table, reading, state_engine

log = get_logger("syncer.daemon")

#: How long ``/readyz`` waits for the state database before calling it unreachable.
READY_TIMEOUT = 3.0

#: The claim of a day's prune in ``syncer_ticks``: not a valid sync name, so never a sync's.
PRUNE_CLAIM = "syncer:prune"
_DAY = 86400
#: Seconds between a failed prune and the next try, and the longest sleep of the prune thread.
PRUNE_RETRY = 3600.0

#: How a run may end without being worth a warning in the daemon's log.
_QUIET = frozenset({RunStatus.SUCCEEDED, RunStatus.SUBMITTED, RunStatus.WAITING, RunStatus.LOCKED})


def load_definitions(
    directory: Path, env_file: Path | None
) -> tuple[dict[str, LoadedSync], dict[str, Schedule]]:
    """Every sync and the parsed schedule of those that have one; every problem (YAML,
    fields, schedule expressions) in one ConfigError naming each file and field."""
    problems: list[str] = []
    try:
        syncs = load_all(directory, env_file)
    except ConfigError as exc:
        raise ConfigError(str(exc)) from None
    schedules: dict[str, Schedule] = {}
    for sync in syncs:
        expression = sync.definition.schedule
        if expression is None:
            continue
        try:
            schedules[sync.name] = parse_schedule(expression)
        except ScheduleError as exc:
            problems.append(f"{sync.path}: schedule: {exc}")
    if problems:
        raise ConfigError("\n".join(problems))
    return {s.name: s for s in syncs}, schedules


def fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when a mapping file is added, removed or edited."""
    try:
        files = mapping_files(directory)
    except ConfigError:
        return ()
    found = []
    for path in files:
        try:
            stat = path.stat()
        except OSError:  # a broken link or a loop: its own change still counts
            with contextlib.suppress(OSError):
                stat = path.lstat()
                found.append((path.name, stat.st_mtime_ns, -1))
            continue
        found.append((path.name, stat.st_mtime_ns, stat.st_size))
    return tuple(found)


class Daemon:
    """The scheduler, the tick runner, reloads, the HTTP endpoint and shutdown.

    ``engine`` is the :class:`SyncEngine` every run goes through; ``clock`` gives the wall time
    ticks are computed from (tests pass a fake one and call :meth:`run_tick` directly).
    """

    def __init__(
        self,
        settings: Settings,
        engine: Any,
        *,
        env_file: Path | None = None,
        clock: Callable[[], float] = time.time,
        holder: str | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        # Runs here share the process with schedules, probes and each other on threads, so
        # no warehouse reader is forked (see syncer.forking): rows are read in-process.
        if hasattr(engine, "fork_reader"):
            engine.fork_reader = False
        self.env_file = env_file
        self.clock = clock
        self.holder = holder or replica_name()
        self.syncs: dict[str, LoadedSync] = {}
        self.schedules: dict[str, Schedule] = {}
        self.loaded = False
        self.stopping = threading.Event()
        self._reload_asked = threading.Event()
        self._wake = threading.Event()
        self._signals = 0
        self._running: dict[str, int] = {}
        self._running_cond = threading.Condition()
        self._fingerprint: tuple[tuple[str, int, int], ...] = ()
        self._lock = threading.Lock()  # syncs/schedules swap on reload
        self.scheduler: BackgroundScheduler | None = None
        self.server: ThreadingHTTPServer | None = None
        self.deadline: float | None = None  # monotonic: when the grace ends, once stopping
        self.pruner: threading.Thread | None = None
        url = settings.alert_webhook_url
        self.alerter = Alerter(
            self.state,
            url.get_secret_value() if url is not None else None,
            settings.alert_rejected_share,
        )

    # -- state database ----------------------------------------------------------------------

    def state(self) -> Engine:
        """The state database, opened (and upgraded) on first use; retried until it works."""
        return state_engine(self.settings.state_url.get_secret_value())

    def claims(self) -> Claims:
        return Claims(self.state(), holder=self.holder, clock=self.clock)

    # -- loading -----------------------------------------------------------------------------

    def load(self) -> None:
        """Read the definitions; a ConfigError leaves the current ones in place."""
        directory = self.settings.mappings_dir
        fp = fingerprint(directory)
        syncs, schedules = load_definitions(directory, self.env_file)
        with self._lock:
            removed = set(self.syncs) - set(syncs)
            self.syncs, self.schedules = syncs, schedules
            self._fingerprint = fp
            self.loaded = True
        for name in removed:
            metrics.forget_sync(name)
        metrics.SCHEDULED_SYNCS.set(len(schedules))

    def reload(self, why: str) -> bool:
        """Re-read the mappings and replace the jobs; running syncs are left alone."""
        try:
            self.load()
        except Exception as exc:
            # Keep the previous definitions: a typo (or a file that is not a mapping at all)
            # must not stop every other sync, nor the daemon. An unexpected exception is a
            # bug: it is named by type and place only, as its text may quote the file.
            self._fingerprint = fingerprint(self.settings.mappings_dir)
            metrics.RELOADS.labels(result="error").inc()
            error = str(exc) if isinstance(exc, ConfigError) else f"internal error ({where(exc)})"
            log.error("daemon.reload_failed", why=why, error=error, keeping=len(self.syncs))
            return False
        self._apply_jobs()
        metrics.RELOADS.labels(result="ok").inc()
        log.info("daemon.reloaded", why=why, syncs=len(self.syncs), scheduled=len(self.schedules))
        return True

    def _apply_jobs(self) -> None:
        scheduler = self.scheduler
        if scheduler is None:
            return
        with self._lock:
            wanted = dict(self.schedules)
        for job in scheduler.get_jobs():
            if job.id not in wanted:
                job.remove()
        for name, schedule in wanted.items():
            job = scheduler.get_job(name)
            if job is not None and getattr(job, "kwargs", {}).get("expr") == schedule.expression:
                continue  # unchanged: keep its next fire time
            scheduler.add_job(
                self._fire,
                trigger=schedule.trigger,
                id=name,
                name=name,
                kwargs={"name": name, "expr": schedule.expression},
                replace_existing=True,
            )

    # -- ticks -------------------------------------------------------------------------------

    def _fire(self, name: str, expr: str) -> None:
        """APScheduler's job: run the latest due tick of ``name`` (never raises)."""
        del expr  # only there to tell a changed schedule from an unchanged one
        with self._lock:
            schedule = self.schedules.get(name)
        if schedule is None or self.stopping.is_set():
            return
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        tick = schedule.latest_tick(now)
        if tick is not None:
            self.run_tick(name, tick_id(tick))

    def run_tick(self, name: str, tick: int) -> RunStatus | None:
        """Claim ``(name, tick)`` and, if this replica won it, run the sync.

        Returns the run's status, or None when the tick was not ours (or nothing to run).
        """
        with self._lock:
            sync = self.syncs.get(name)
        if sync is None or self.stopping.is_set():
            return None
        connector = sync.connector_cls.name
        with structlog.contextvars.bound_contextvars(sync=name, connector=connector):
            try:
                return self._run_claimed(sync, tick)
            except Exception as exc:  # state database down, a bug: log it, keep scheduling
                log.error("tick.error", tick=tick, run_id=None, error=type(exc).__name__)
                return None

    def _run_claimed(self, sync: LoadedSync, tick: int) -> RunStatus | None:
        name = sync.name
        claims = self.claims()
        if not claims.claim(name, tick):
            metrics.TICKS.labels(sync=name, result="taken_elsewhere").inc()
            log.debug("tick.taken_elsewhere", tick=tick, run_id=None)
            return None
        metrics.TICKS.labels(sync=name, result="claimed").inc()
        with self._running_cond:
            # Checked under the lock ``shutdown`` waits on: a tick claimed after it found
            # nothing running must not start a run it would not wait for.
            stopped = self.stopping.is_set()
            if not stopped:
                already = self._running.get(name, 0) > 0
                self._running[name] = self._running.get(name, 0) + 1
        if stopped:
            claims.finish(name, tick, None, RunStatus.INTERRUPTED)
            log.info("tick.skipped", tick=tick, run_id=None, reason="stopping")
            return None
        metrics.RUNNING.labels(sync=name).set(1)
        try:  # the whole tick counts as running, so shutdown waits for its bookkeeping too
            return self._run_counted(sync, tick, claims, already)
        finally:
            with self._running_cond:
                self._running[name] -= 1
                if not self._running[name]:
                    del self._running[name]
                    metrics.RUNNING.labels(sync=name).set(0)
                self._running_cond.notify_all()

    def _run_counted(self, sync: LoadedSync, tick: int, claims: Claims, already: bool) -> RunStatus:
        name = sync.name
        if already:
            # Still running from an earlier tick here: no need to ask the database.
            status, run_id, counts, duration = RunStatus.LOCKED, None, {}, 0.0
            message: str | None = "still running from an earlier tick"
        else:
            log.info("tick.started", tick=tick, run_id=None)
            result = self.engine.run(sync, trigger="schedule")
            status, run_id = result.status, result.run_id
            counts, duration, message = dict(result.counts), result.duration_s, result.message
        claims.finish(name, tick, run_id, status)
        metrics.record_run(
            name, status, duration, self._outcomes(run_id), counts, finished_at=self.clock()
        )
        self.alerter.observe(name, status, counts, run_id)
        level = log.info if status in _QUIET else log.warning
        level(
            "tick.finished",
            tick=tick,
            run_id=run_id,
            status=status,
            duration_s=round(duration, 3),
            message=message if status == RunStatus.LOCKED else None,
            **counts,
        )
        return status

    def _outcomes(self, run_id: str | None) -> dict[tuple[str, str], int] | None:
        """(operation, outcome) -> records of a run, from its audit events."""
        if run_id is None:
            return None
        try:
            with self.state().connect() as conn:
                rows = (
                    reading(conn)
                    .execute(
                        select(events_table.c.operation, events_table.c.outcome, func.count())
                        .where(events_table.c.run_id == run_id)
                        .group_by(events_table.c.operation, events_table.c.outcome)
                    )
                    .all()
                )
        except Exception:  # metrics then fall back to the run's own counts
            return None
        return {(str(op), str(outcome)): int(n) for op, outcome, n in rows}

    def running(self) -> int:
        with self._running_cond:
            return sum(self._running.values())

    # -- retention ---------------------------------------------------------------------------

    def _prune_daily(self, older_than: str) -> None:
        """The prune thread: today's prune unless a replica did it, then wait for tomorrow."""
        done: int | None = None
        while not self.stopping.is_set():
            now = self.clock()
            day = int(now // _DAY * _DAY)
            if day != done and self.prune_once(older_than, day):
                done = day
            wait = min(PRUNE_RETRY, day + _DAY - now) if done == day else PRUNE_RETRY
            self.stopping.wait(max(1.0, wait))

    def prune_once(self, older_than: str, day: int) -> bool:
        """Claim ``day``'s prune and run it; True when the day needs nothing more from this
        replica (pruned here or elsewhere), False to try again later (never raises)."""
        from syncer.retention import prune

        try:
            claims = self.claims()
            if not claims.claim(PRUNE_CLAIM, day):
                log.info("prune.skipped", reason="pruned by another replica today")
                return True
        except Exception as exc:
            log.warning("prune.error", error=type(exc).__name__)
            return False
        log.info("prune.started", older_than=older_than)
        try:
            report = prune(self.state(), older_than, stop=self.stopping)
        except Exception as exc:  # the state database is busy or down: another try later
            log.error("prune.error", error=type(exc).__name__)
            with contextlib.suppress(Exception):
                claims.release(PRUNE_CLAIM, day)
            return False
        with contextlib.suppress(Exception):
            if report.stopped:  # stopped by SIGTERM: whoever starts next today finishes it
                claims.release(PRUNE_CLAIM, day)
            else:
                claims.finish(PRUNE_CLAIM, day, None, "succeeded")
        removed = report.removed
        log.info(
            "prune.finished",
            older_than=older_than,
            cutoff=report.cutoff.isoformat(),
            stopped=report.stopped,
            duration_s=round(report.duration_s, 3),
            runs=removed["syncer_runs"],
            events=removed["syncer_events"],
            jobs=removed["syncer_jobs"],
            ticks=removed["syncer_ticks"],
        )
        return True

    # -- health ------------------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        """Ready when the definitions are loaded and the state database answers."""
        if not self.loaded:
            return False, "schedules not loaded"
        outcome: list[str] = []

        def probe() -> None:
            try:
                with self.state().connect() as conn:
                    reading(conn).execute(text("select 1"))
                outcome.append("ok")
            except Exception as exc:
                outcome.append(f"state database unreachable ({type(exc).__name__})")

        thread = threading.Thread(target=probe, name="syncer-readyz", daemon=True)
        thread.start()
        thread.join(READY_TIMEOUT)
        if not outcome:
            return False, "state database did not answer in time"
        return outcome[0] == "ok", outcome[0]

    def serve(self, host: str, port: int) -> int:
        """Start the health/metrics server in a thread; returns the port it listens on."""
        daemon = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    self._send(200, b"ok\n", "text/plain; charset=utf-8")
                elif path == "/readyz":
                    ok, why = daemon.ready()
                    self._send(200 if ok else 503, f"{why}\n".encode(), "text/plain; charset=utf-8")
                elif path == "/metrics":
                    self._send(200, metrics.render(), metrics.CONTENT_TYPE)
                else:
                    self._send(404, b"not found\n", "text/plain; charset=utf-8")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # probes every few seconds would drown the log

        try:
            server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port} for /healthz, /readyz and /metrics"
                f" ({exc.strerror or exc}); set SYNCER_DAEMON_PORT"
            ) from None
        server.daemon_threads = True
        self.server = server
        threading.Thread(target=server.serve_forever, name="syncer-http", daemon=True).start()
        return int(server.server_address[1])

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, port: int | None = None) -> int:
        """Load, open the state database, listen and schedule; ConfigError if any is wrong."""
        self.load()
        try:
            self.claims().prune()  # opens (and upgrades) the state database first
        except ConfigError:
            raise
        except Exception as exc:
            # Unreachable now: /readyz says so and every tick tries again.
            log.warning("daemon.state_unavailable", error=type(exc).__name__)
        bound = self.serve(
            self.settings.daemon_host, self.settings.daemon_port if port is None else port
        )
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        self.scheduler = BackgroundScheduler(
            timezone=dt.UTC,
            executors={"default": ThreadPoolExecutor(self.settings.daemon_workers)},
            job_defaults={"coalesce": True, "max_instances": 3, "misfire_grace_time": None},
        )
        self._apply_jobs()
        self.scheduler.start()
        older_than = self.settings.prune_older_than
        if older_than is not None:
            self.pruner = threading.Thread(
                target=self._prune_daily, args=(older_than,), name="syncer-prune"
            )
            self.pruner.start()
        log.info(
            "daemon.started",
            port=bound,
            syncs=len(self.syncs),
            scheduled=len(self.schedules),
            pid=os.getpid(),
        )
        return bound

    def install_signals(self) -> None:
        """SIGHUP reloads; the first SIGTERM/SIGINT stops gracefully, a second at once."""

        def on_hup(_signum: int, _frame: Any) -> None:
            self._reload_asked.set()
            self._wake.set()

        def on_term(signum: int, _frame: Any) -> None:
            self._signals += 1
            if self._signals > 1:
                log.warning("daemon.stopped_at_once", signal=signal.Signals(signum).name)
                os._exit(int(ExitCode.TEMPFAIL))
            log.info("daemon.stopping", signal=signal.Signals(signum).name)
            self.stopping.set()
            self._wake.set()

        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)

    def loop(self) -> None:
        """Wait for reload requests, mapping changes and the stop signal."""
        interval = self.settings.reload_interval
        next_poll = time.monotonic() + interval
        while not self.stopping.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            if self.stopping.is_set():
                break
            if self._reload_asked.is_set():
                self._reload_asked.clear()
                self.reload("SIGHUP")
            elif interval and time.monotonic() >= next_poll:
                next_poll = time.monotonic() + interval
                if fingerprint(self.settings.mappings_dir) != self._fingerprint:
                    self.reload("mappings changed")

    def shutdown(self) -> int:
        """Stop ticking, let running syncs finish in-flight batches; 0 if they did in time."""
        self.stopping.set()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        self.engine.stop.set()
        self.deadline = deadline = time.monotonic() + self.settings.shutdown_grace
        with self._running_cond:
            while self._running and time.monotonic() < deadline:
                self._running_cond.wait(min(0.2, max(0.0, deadline - time.monotonic())))
            left = sorted(self._running)
        if self.pruner is not None:  # it stops between two batches
            self.pruner.join(max(0.0, deadline - time.monotonic()))
            if self.pruner.is_alive():
                left.append("prune")
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if left:
            log.warning(
                "daemon.grace_exceeded", grace_s=self.settings.shutdown_grace, syncs=len(left)
            )
            return int(ExitCode.TEMPFAIL)
        log.info("daemon.stopped")
        return int(ExitCode.OK)


def run_daemon(
    settings: Settings, engine: Any, *, env_file: Path | None = None, port: int | None = None
) -> int:
    """The ``syncer daemon`` process from start to exit code (ConfigError propagates: 78)."""
    daemon = Daemon(settings, engine, env_file=env_file)
    daemon.install_signals()
    daemon.start(port)
    daemon.loop()
    code = daemon.shutdown()
    if code == ExitCode.OK and not threads_finished(daemon.deadline):
        code = int(ExitCode.TEMPFAIL)
    if code != ExitCode.OK:
        # Runs still going past the grace period: leave now, as a second signal would. Their
        # threads would otherwise hold the interpreter's exit; nothing unacknowledged is lost.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def threads_finished(deadline: float | None) -> bool:
    """Wait until ``deadline`` for the threads the interpreter would wait for at exit (a
    scheduler worker ending its tick); False, naming them in the log, if some are left."""
    me = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not me and not thread.daemon:
            thread.join(max(0.0, (deadline or 0.0) - time.monotonic()))
    left = [t.name for t in threading.enumerate() if t is not me and not t.daemon and t.is_alive()]
    if left:
        log.warning("daemon.threads_left", threads=left)
    return not left
