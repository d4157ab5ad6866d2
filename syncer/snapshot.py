"""A run's snapshot: the warehouse query read into a staging table and diffed against state.

The read runs in a forked process (syncer.reader) unless told otherwise; the rows arrive
encoded (normalised, validated, hashed) and are bulk-loaded into a temporary table on the
run's state connection, where syncer.diff compares them with what state says is synced.
"""

from __future__ import annotations

from sqlalchemy import Connection

from syncer.diff import Staging
from syncer.holdout import Assignment
from syncer.mapping import LoadedSync
from syncer.reader import ReadJob, encoded_chunks
from syncer.settings import Settings


def stage(
    settings: Settings,
    conn: Connection,
    sync: LoadedSync,
    full_resync: bool,
    *,
    fork: bool,
    assignment: Assignment | None = None,
    full_check: bool = False,
) -> Staging:
    """The snapshot of ``sync`` staged on ``conn``; closed again if anything fails.

    Held-out members (``assignment``, syncer.holdout) are staged apart and never sent;
    ``full_check`` stages the snapshot even when it equals state (syncer.membership)."""
    definition = sync.definition
    fields = tuple(sorted(definition.fields))
    staging = Staging(
        conn,
        definition.name,
        definition.mode,
        fields,
        full_resync,
        park=definition.rejects.parks,
        full_check=full_check,
    )
    staging.create()
    url = settings.warehouse(definition.source.warehouse)
    try:
        job = ReadJob(
            url,
            definition,
            str(sync.path),
            settings.read_batch_size,
            hash_keys=sync.connector_cls.capabilities.hashed_keys,
            assignment=assignment,
        )
        with encoded_chunks(job, staging.spill, fork=fork) as chunks:
            staging.load(chunks)
        staging.finalize(definition.source.key)
    except BaseException:
        staging.close()
        raise
    return staging
