"""syncer: keep warehouse segments in step with CRMs, email platforms and ad audiences.

The public surface for connector authors and embedders is re-exported here.
"""

__version__ = "0.1.0"

from syncer.connector import (
    BatchResult,
    Capabilities,
    Connector,
    ConnectorConfig,
    Outcome,
    Record,
    SyncContext,
)
from syncer.enums import RunStatus, SyncMode
from syncer.errors import (
    AuthError,
    BatchRejected,
    ConfigError,
    ExitCode,
    SyncerError,
    TransientError,
)

__all__ = [
    "AuthError",
    "BatchRejected",
    "BatchResult",
    "Capabilities",
    "ConfigError",
    "Connector",
    "ConnectorConfig",
    "ExitCode",
    "Outcome",
    "Record",
    "RunStatus",
    "SyncContext",
    "SyncMode",
    "SyncerError",
    "TransientError",
    "__version__",
]
