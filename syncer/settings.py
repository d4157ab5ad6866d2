"""Process settings from the environment and ``.env`` (prefix ``SYNCER_``).

Secrets live here or in the environment, never in mapping YAML. Database URLs are ``SecretStr``
because they often carry passwords.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from syncer.errors import ConfigError

DEFAULT_STATE_URL = "sqlite:///.syncer/state.db"

#: Most bytes read from one configuration file (a mapping or an env file). Real ones are a few
#: kilobytes; the bound keeps a wrong path (a log, a disk image) from being read into memory.
MAX_CONFIG_BYTES = 1024 * 1024


def read_config_text(path: Path, what: str) -> str:
    """The text of a configuration file, or a ConfigError naming ``path`` that says what is
    wrong with it without quoting anything in it.

    Only regular files are opened (a FIFO would block, a device would never end), at most
    ``MAX_CONFIG_BYTES`` are read, and the text must be UTF-8 (a leading BOM is allowed).
    """
    try:
        # Stat first so no device or FIFO is ever opened, then fstat what was opened, in case
        # the path was swapped in between.
        if not stat.S_ISREG(path.stat().st_mode):
            raise ConfigError(_not_a_file(path, what))
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise ConfigError(_not_a_file(path, what))
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        if path.is_symlink():
            raise ConfigError(
                f"{path}: {what} is a symbolic link to something that does not exist"
            ) from None
        raise ConfigError(f"{path}: {what} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"{path}: {what} is a symbolic link loop") from None
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path}: {what} is larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB"
            " (a real one is a few KiB)"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: {what} is not UTF-8 text (line {line} has a byte that is not UTF-8);"
            " save it as UTF-8"
        ) from None


def _not_a_file(path: Path, what: str) -> str:
    if path.is_dir():
        return f"{path}: {what} is a directory"
    return f"{path}: {what} is not a regular file (a device, pipe or socket)"


def default_env_file(env_file: Path | None) -> Path | None:
    """The env file to read: ``env_file`` if given, else ``./.env`` if there is anything by
    that name (a broken link or a directory is reported, not skipped)."""
    if env_file is not None:
        return env_file
    dotenv = Path(".env")
    return dotenv if dotenv.exists() or dotenv.is_symlink() else None


class Settings(BaseSettings):
    """Every ``SYNCER_*`` variable; ``.env.example`` documents each one."""

    model_config = SettingsConfigDict(
        env_prefix="SYNCER_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_nested_delimiter="__",
        env_ignore_empty=True,
        extra="ignore",
    )

    # The descriptions are the user documentation: docs/reference/configuration.md is generated
    # from them (python -m syncer.docgen).
    warehouse_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL of the `default` warehouse. Syncs that read it fail with a"
        " configuration error while it is unset.",
    )
    warehouses: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="One variable per extra named warehouse, e.g."
        " `SYNCER_WAREHOUSES__ANALYTICS=duckdb:////srv/data/analytics.duckdb`. A mapping selects"
        " it with `source.warehouse: analytics` (names are case-insensitive).",
    )
    state_url: SecretStr = Field(
        default=SecretStr(DEFAULT_STATE_URL),
        description="SQLAlchemy URL of the state database (acknowledged records, runs, audit"
        " log): SQLite or PostgreSQL. The default is relative to the working directory.",
    )
    mappings_dir: Path = Field(
        default=Path("mappings"), description="Directory holding the sync YAML files."
    )
    audit_plain_keys: bool = Field(
        default=False,
        description="Store record keys in audit events as given instead of as their SHA-256.",
    )
    read_batch_size: int = Field(
        default=10_000, ge=100, description="Rows fetched from the warehouse per round trip."
    )
    read_process: bool = Field(
        default=True,
        description="Read and encode the warehouse in a forked reader process while staging is"
        " filled (Linux; SQLite-file and PostgreSQL warehouses; `sync now` and `plan`, not the"
        " daemon). `false` reads in the run's own process.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="warning",
        description="Least severe log level written to stderr; `--log-level` overrides it. The"
        " daemon defaults to `info` unless this is set.",
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto",
        description="`auto` (console on a terminal, JSON otherwise), `json` or `console`;"
        " `--log-format` overrides it.",
    )
    http_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds one HTTP request to a destination may take as a whole: connecting,"
        " the TLS handshake, sending, and reading the complete answer. An answer that trickles"
        " in byte by byte is cut off at this limit too. Waiting for the rate limiter does not"
        " count. A connector's own `timeout` (`webhook` and the vendor connectors), when set,"
        " takes precedence.",
    )
    retry_attempts: int = Field(
        default=5,
        ge=1,
        description="Tries per batch before its records are recorded as `failed` and left for"
        " the next run. HTTP 429 answers do not count.",
    )
    batch_time_budget: float = Field(
        default=300.0,
        gt=0,
        description="Seconds one batch may take, counted from its first try. A retry whose wait"
        " would end after the budget is not made, and a request or a wait for the rate limiter"
        " still going when it runs out is ended; the batch's records are recorded as `failed`"
        " instead.",
    )
    max_retry_after: float = Field(
        default=120.0,
        gt=0,
        description="Longest wait in seconds honoured from a `Retry-After` header; longer asks"
        " are clamped to it. It also caps the cool-down after a 429. Keep it below"
        " `SYNCER_BATCH_TIME_BUDGET`, or a clamped wait leaves no room to retry.",
    )
    lease_ttl: float = Field(
        default=60.0,
        gt=0,
        description="Seconds a sync's lease lives without a heartbeat. The holder renews it"
        " every third of this.",
    )

    # -- daemon ----------------------------------------------------------------------------
    daemon_host: str = Field(
        default="0.0.0.0", description="Address the daemon's health and metrics server binds."
    )
    daemon_port: int = Field(
        default=9464,
        ge=0,
        le=65535,
        description="Port of `/healthz`, `/readyz` and `/metrics` (0: any free port, logged in"
        " `daemon.started`). `syncer daemon --port` overrides it.",
    )
    daemon_workers: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Syncs the daemon runs at the same time. Due syncs beyond that wait for a"
        " free worker.",
    )
    shutdown_grace: float = Field(
        default=60.0,
        gt=0,
        description="Seconds the daemon waits after SIGTERM for running syncs to finish their"
        " in-flight batches before it leaves (exit 75).",
    )
    reload_interval: float = Field(
        default=10.0,
        ge=0,
        description="Seconds between checks of the mappings directory for changed files (0"
        " turns them off; SIGHUP still works).",
    )
    alert_webhook_url: SecretStr | None = Field(
        default=None,
        description="Slack-compatible incoming webhook for daemon alerts. Unset means no alerts.",
    )
    alert_rejected_share: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Share of a run's records that may be rejected, invalid or failed before"
        " the run counts as failing (and alerts).",
    )

    prune_older_than: str | None = Field(
        default=None,
        description="Retention: once a day the daemon deletes runs, their audit events and"
        " settled vendor jobs that started longer ago than this (`90d`, `12h`, `2w`: hours,"
        " days or weeks), in short batches, once across replicas. Unset: nothing is pruned."
        " Also the default of `syncer prune --older-than`. Acknowledged state is never"
        " pruned.",
    )

    global_holdout_percent: float = Field(
        default=0,
        ge=0,
        le=50,
        description="A global holdout: this share of everyone (0.1 to 50; 0, the default, is"
        " off) that no sync ever sends, decided by its own salt before any sync's own"
        " holdout. Changing it needs a new SYNCER_GLOBAL_HOLDOUT_PHASE. See Measuring lift.",
    )
    global_holdout_salt: str = Field(
        default="syncer-global",
        min_length=1,
        description="The global holdout's salt (see SYNCER_GLOBAL_HOLDOUT_PERCENT).",
    )
    global_holdout_phase: int = Field(
        default=1,
        ge=1,
        description="The global holdout's phase: bump it to change its percent or salt.",
    )
    writeback: bool = Field(
        default=False,
        description="Write every sync's runs, membership changes and audit outcomes back to"
        " its warehouse after each run (as a sync's `writeback:` block does for one sync).",
    )
    writeback_schema: str = Field(
        default="syncer",
        min_length=1,
        description="The warehouse schema write-back tables go in when a sync names none"
        " (ignored on SQLite, which has none: the tables go in the warehouse's own file).",
    )

    @field_validator("global_holdout_percent")
    @classmethod
    def _global_percent(cls, value: float) -> float:
        if value == 0:
            return value
        from syncer.holdout import require_valid_percent

        try:
            return require_valid_percent(value)
        except ValueError as exc:
            raise PydanticCustomError("holdout_percent", str(exc)) from None

    @field_validator("prune_older_than")
    @classmethod
    def _retention_age(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from syncer.ages import AgeError, parse_age

        try:
            parse_age(value)
        except AgeError as exc:
            # A custom error: pydantic would put "Value error, " before a plain ValueError's text.
            raise PydanticCustomError("retention_age", str(exc)) from None
        return value.strip()

    def warehouse(self, name: str) -> str:
        """The URL of the named warehouse, or a ConfigError that says how to set it."""
        if name == "default":
            if self.warehouse_url is None:
                raise ConfigError(
                    "no warehouse configured: set SYNCER_WAREHOUSE_URL (a SQLAlchemy URL)"
                )
            return self.warehouse_url.get_secret_value()
        url = self.warehouses.get(name.lower())
        if url is None:
            raise ConfigError(
                f"unknown warehouse {name!r}: set SYNCER_WAREHOUSES__{name.upper()}"
                " to its SQLAlchemy URL"
            )
        return url.get_secret_value()


def load_settings(env_file: Path | None = None) -> Settings:
    """Settings from the environment (and ``env_file`` / ``.env``), as a ConfigError if invalid.

    The env file is checked first (it exists, is a regular file, is UTF-8): pydantic-settings
    would skip a missing one silently and stop with a traceback on one that is not UTF-8.
    """
    source = default_env_file(env_file)
    if source is not None:
        read_config_text(source, "env file")
    try:
        if env_file is not None:
            return Settings(_env_file=env_file)  # type: ignore[call-arg]
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"SYNCER_{'__'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
    except SettingsError as exc:  # e.g. SYNCER_WAREHOUSES=... that is not JSON
        match = re.search(r'field "([^"]+)"', str(exc))
        name = f"SYNCER_{match.group(1).upper()}" if match else "a SYNCER_ variable"
        hint = " (set one per warehouse: SYNCER_WAREHOUSES__<NAME>=<URL>)"
        raise ConfigError(
            f"invalid settings: {name}: cannot parse its value"
            + (hint if name == "SYNCER_WAREHOUSES" else "")
        ) from None
