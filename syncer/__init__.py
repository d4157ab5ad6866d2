"""syncer: keep warehouse segments in step with CRMs, email platforms and ad audiences.

Everything a connector author needs is importable from here (docs/connector-api.md). The
engine owns retries, batching, rate limits and state; a connector owns payload shapes and
the parsing of answers.

The names are loaded on first use (PEP 562), not by ``import syncer``: the command line
imports this package for ``--version`` and ``--help``, which must not pay for httpx,
pydantic and every connector.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from syncer.connector import (
        BatchResult,
        Capabilities,
        Connector,
        ConnectorConfig,
        JobState,
        JobStatus,
        ModeName,
        NamedList,
        Operation,
        Outcome,
        OutcomeStatus,
        Record,
        SyncContext,
        check_named_list,
        credential_digest,
    )
    from syncer.declarations import (
        CLIENT_ERRORS,
        Auth,
        BasicAuth,
        BearerAuth,
        HeaderAuth,
        RateLimitHeaders,
    )
    from syncer.enums import RunStatus, SyncMode
    from syncer.errors import (
        AuthError,
        BatchRejected,
        ConfigError,
        ExitCode,
        RateLimited,
        SyncerError,
        TransientError,
    )
    from syncer.http import Action
    from syncer.ratelimit import RateLimit
    from syncer.rest import (
        JobPolling,
        RestConfig,
        RestConnector,
        chunks,
        dig,
        group_by_value,
        record_text,
    )
    from syncer.steps import BatchProgress, Steps, apply
    from syncer.types import JSON, FieldValue, JSONBody

#: Public name -> the module defining it (the TYPE_CHECKING imports above, for the loader).
_SOURCES: dict[str, str] = {
    **dict.fromkeys(
        (
            "BatchResult",
            "Capabilities",
            "Connector",
            "ConnectorConfig",
            "JobState",
            "JobStatus",
            "ModeName",
            "NamedList",
            "Operation",
            "Outcome",
            "OutcomeStatus",
            "Record",
            "SyncContext",
            "check_named_list",
            "credential_digest",
        ),
        "syncer.connector",
    ),
    **dict.fromkeys(
        ("CLIENT_ERRORS", "Auth", "BasicAuth", "BearerAuth", "HeaderAuth", "RateLimitHeaders"),
        "syncer.declarations",
    ),
    **dict.fromkeys(("RunStatus", "SyncMode"), "syncer.enums"),
    **dict.fromkeys(
        (
            "AuthError",
            "BatchRejected",
            "ConfigError",
            "ExitCode",
            "RateLimited",
            "SyncerError",
            "TransientError",
        ),
        "syncer.errors",
    ),
    "Action": "syncer.http",
    "RateLimit": "syncer.ratelimit",
    **dict.fromkeys(
        (
            "JobPolling",
            "RestConfig",
            "RestConnector",
            "chunks",
            "dig",
            "group_by_value",
            "record_text",
        ),
        "syncer.rest",
    ),
    **dict.fromkeys(("BatchProgress", "Steps", "apply"), "syncer.steps"),
    **dict.fromkeys(("JSON", "FieldValue", "JSONBody"), "syncer.types"),
}


def __getattr__(name: str) -> Any:
    """Load a public name from its module the first time it is asked for, then keep it."""
    source = _SOURCES.get(name)
    if source is None:
        # AttributeError (not ImportError) lets ``from syncer import audit`` fall through to
        # importing the submodule, as it does for any package.
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(source), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "CLIENT_ERRORS",
    "JSON",
    "Action",
    "Auth",
    "AuthError",
    "BasicAuth",
    "BatchProgress",
    "BatchRejected",
    "BatchResult",
    "BearerAuth",
    "Capabilities",
    "ConfigError",
    "Connector",
    "ConnectorConfig",
    "ExitCode",
    "FieldValue",
    "HeaderAuth",
    "JSONBody",
    "JobPolling",
    "JobState",
    "JobStatus",
    "ModeName",
    "NamedList",
    "Operation",
    "Outcome",
    "OutcomeStatus",
    "RateLimit",
    "RateLimitHeaders",
    "RateLimited",
    "Record",
    "RestConfig",
    "RestConnector",
    "RunStatus",
    "Steps",
    "SyncContext",
    "SyncMode",
    "SyncerError",
    "TransientError",
    "__version__",
    "apply",
    "check_named_list",
    "chunks",
    "credential_digest",
    "dig",
    "group_by_value",
    "record_text",
]
