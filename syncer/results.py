"""What a run or a plan reports, the guards that can block a run, and the exit codes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from syncer.connector import Operation
from syncer.diff import DiffCounts
from syncer.enums import RunStatus, SyncMode
from syncer.errors import ExitCode
from syncer.mapping import Guards
from syncer.runcontext import Tally


def mask_key(key: str, key_type: str | None) -> str:
    """A sample key safe to print: emails and phones are masked, ids shown as they are.
    With no key type known (a key typed on the command line, a sync whose mapping is gone),
    anything that is not an email is masked as a phone: too much rather than too little."""
    if key_type is None:
        key_type = "email" if "@" in key else "phone"
    if key_type == "email" or (key_type == "string" and "@" in key):
        local, _, domain = key.partition("@")
        name, _, tld = domain.rpartition(".")
        return f"{local[:1]}***@{name[:1]}***.{tld}" if name else f"{local[:1]}***@***"
    if key_type == "phone":
        return f"{key[:2]}{'*' * max(len(key) - 4, 0)}{key[-2:]}"
    return key


@dataclass(slots=True)
class Guard:
    """Why a run was blocked, if it was."""

    blocked: bool
    reason: str | None = None


def check_guards(definition_guards: Guards, counts: DiffCounts) -> Guard:
    """Invariant 4: an empty source or a mass removal is blocked unless forced."""
    valid = counts.source_rows - counts.invalid - counts.parked_invalid
    if counts.members_before and valid == 0 and counts.remove:
        return Guard(
            True,
            f"the query returned no valid rows while {counts.members_before} members are synced;"
            " refusing to remove them all (use --force if this is intended)",
        )
    limit = float(definition_guards.max_remove_pct)
    if counts.members_before and counts.remove:
        pct = 100.0 * counts.remove / counts.members_before
        if pct > limit:
            return Guard(
                True,
                f"would remove {counts.remove} of {counts.members_before} members ({pct:.1f}%),"
                f" more than guards.max_remove_pct={limit:g} (use --force if this is intended)",
            )
    return Guard(False)


def sent_status(tally: Tally, guards: Guards) -> RunStatus:
    """How a run that sent everything ended, by its counters: ``partial`` when a record
    failed, or more were rejected or invalid than ``guards`` tolerate (none, by default)."""
    if tally["failed"] or not tolerated(tally, guards):
        return RunStatus.PARTIAL
    return RunStatus.SUBMITTED if tally["pending"] else RunStatus.SUCCEEDED


def tolerated(tally: Tally, guards: Guards) -> bool:
    """Whether the run's rejected and invalid records are within ``guards``' shares of the
    rows the query returned: of the segment, not of what this run sent, or the one bounced
    address a run with nothing else to send retries would be 100% of it."""
    rows = max(tally["source_rows"], 1)  # an empty query: any rejection (a remove) is too many
    return (
        100.0 * tally["rejected"] / rows <= guards.max_rejected_pct
        and 100.0 * tally["invalid"] / rows <= guards.max_invalid_pct
    )


def exit_code(status: RunStatus, tally: Tally) -> ExitCode:
    """The documented exit code of a run that ended with ``status``."""
    if status in (RunStatus.SUCCEEDED, RunStatus.SUBMITTED):
        return ExitCode.OK
    only_failures = not (tally["rejected"] or tally["invalid"])
    if status == RunStatus.PARTIAL and tally["failed"] and only_failures:
        return ExitCode.TEMPFAIL  # nothing wrong with the data: worth retrying later
    return ExitCode.PROBLEMS


@dataclass(slots=True)
class RunResult:
    """What one run did; ``exit_code`` follows the documented table."""

    run_id: str | None
    sync: str
    status: RunStatus
    counts: dict[str, int] = field(default_factory=dict)
    message: str | None = None
    exit_code: int = 0
    duration_s: float = 0.0
    #: What went wrong beside the run without changing its status or exit code (a failed
    #: write-back to the warehouse): one line each, printed on stderr.
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "sync": self.sync,
            "status": self.status,
            "exit_code": self.exit_code,
            "duration_s": round(self.duration_s, 3),
            "message": self.message,
            "warnings": list(self.warnings),
            **self.counts,
        }


@dataclass(slots=True)
class PlanResult:
    """What ``sync now`` would send, computed without sending or writing anything."""

    sync: str
    mode: SyncMode
    counts: DiffCounts
    samples: dict[Operation, list[str]]
    invalid_samples: list[str]
    guard: Guard
    #: The list the sync names instead of giving its id, and what a run would do about it
    #: (``{"kind", "name", "action": "use" | "create", "id"}``; see syncer.destinations).
    lists: list[dict[str, Any]] = field(default_factory=list)
    #: The sync's holdout, if it has one (see syncer.experiments.preview).
    experiment: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "sync": self.sync,
            "mode": self.mode,
            **self.counts.as_dict(),
            "samples": self.samples,
            "invalid_samples": self.invalid_samples,
            "blocked": self.guard.blocked,
            "blocked_reason": self.guard.reason,
            "lists": self.lists,
            "experiment": self.experiment,
        }
