"""syncer: keep warehouse segments in step with CRMs, email platforms and ad audiences.

Everything a connector author needs is importable from here (docs/connector-api.md). The
engine owns retries, batching, rate limits and state; a connector owns payload shapes and
the parsing of answers.
"""

__version__ = "0.1.0"

from syncer.connector import (
    BatchResult,
    Capabilities,
    Connector,
    ConnectorConfig,
    JobState,
    JobStatus,
    ModeName,
    Operation,
    Outcome,
    OutcomeStatus,
    Record,
    SyncContext,
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
    "Operation",
    "Outcome",
    "OutcomeStatus",
    "RateLimit",
    "RateLimitHeaders",
    "RateLimited",
    "Record",
    "RestConfig",
    "RestConnector",
    "Steps",
    "SyncContext",
    "SyncerError",
    "TransientError",
    "__version__",
    "apply",
    "chunks",
    "credential_digest",
    "dig",
    "group_by_value",
    "record_text",
]
