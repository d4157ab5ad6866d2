"""Error tree and the exit codes the CLI maps them to.

    SyncerError
    ├── ConfigError          exit 78: bad settings, mapping, connector config or credentials
    │   └── AuthError        the destination refused our credentials (401/403)
    ├── TransientError       exit 75: worth retrying later (destination or database unreachable)
    │   ├── RateLimited      the destination said slow down (429); cools the whole account
    │   ├── LeaseHeld        another process is running this sync right now
    │   └── Interrupted      a stop was asked for (SIGTERM/SIGINT) or the lease was lost
    ├── BatchRejected        the destination refused a whole batch because of its content
    └── ConnectorCrashed     a connector raised something outside this contract (a bug)

Connectors raise these; the engine decides what they mean for a run.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented process exit codes (see docs/cli.md, "Exit codes")."""

    OK = 0
    PROBLEMS = 1  # finished, but something was rejected, invalid, blocked or failed
    USAGE = 2
    TEMPFAIL = 75  # temporary failure: retry later
    CONFIG = 78  # configuration error: fix config, retrying will not help


class SyncerError(Exception):
    """Root of every error syncer raises on purpose."""

    exit_code: ExitCode = ExitCode.PROBLEMS


class ConfigError(SyncerError):
    """Settings, a mapping file or a connector's configuration is wrong."""

    exit_code = ExitCode.CONFIG


class AuthError(ConfigError):
    """The destination refused the credentials; retrying will not help.

    ``status`` is the HTTP status that said so (401, 403), when one did: a 401 to an OAuth
    access token is worth one renewal (see syncer.oauth)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransientError(SyncerError):
    """A failure that may go away by itself (timeouts, 5xx, unreachable hosts)."""

    exit_code = ExitCode.TEMPFAIL

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(TransientError):
    """HTTP 429 (or a vendor's equivalent): wait, but this does not count as a failed attempt."""


class LeaseHeld(TransientError):
    """Another process holds this sync's lease; the message says who, where and since when."""


class Interrupted(TransientError):
    """The run stopped early on request; what was acknowledged is saved, the rest is not."""


class BatchRejected(SyncerError):
    """The destination refused a whole batch because of what is in it (e.g. a 400)."""


class ConnectorCrashed(SyncerError):
    """A connector raised an unexpected exception; the run stops, nothing unacknowledged is saved.

    The message names the exception type and where it was raised, never its text, which may
    quote record data.
    """


def where(exc: BaseException) -> str:
    """``TypeError at module.py:42``: enough to find a bug without echoing data in messages."""
    import traceback
    from pathlib import Path

    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    return f"{type(exc).__name__} at {Path(frames[-1].filename).name}:{frames[-1].lineno}"
