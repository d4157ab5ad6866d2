"""Every SQLAlchemy engine this process made, so that a command closes them before it exits.

The command line spares the interpreter its last garbage collection (see ``syncer.cli.main``),
which is otherwise what closes pooled connections at exit. Closed explicitly, a SQLite state
database is checkpointed and its ``-wal`` file removed, as before.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy import Engine

_made: weakref.WeakSet[Engine] = weakref.WeakSet()


def track(engine: Engine) -> Engine:
    """Remember ``engine`` (weakly: one nobody uses any more is forgotten)."""
    _made.add(engine)
    return engine


def dispose_all() -> None:
    """Close the pooled connections of every engine still alive."""
    for engine in list(_made):
        engine.dispose()
