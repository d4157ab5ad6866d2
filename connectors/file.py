"""File destination: a members file (CSV or JSONL) plus an append-only change log.

Durability: the engine records a batch as synced as soon as a method returns, even if the
process is then killed. So every batch is appended to ``<path>.changes.jsonl`` and fsynced
before returning; the members file is only a materialisation of that log, rebuilt atomically
(temp file, fsync, ``os.replace``) in ``close()`` and in ``open()`` after a run that died.
``<path>.applied`` holds how many bytes of the log the members file reflects. Replaying the
log is idempotent (add/update set a row, remove deletes it), so a stale offset is harmless.

Each log line also carries ``batch`` (an id) and ``batch_records`` (the batch's line count):
a batch cut short by a crash was never acknowledged, so recovery drops it instead of
applying part of it or appending after a torn line.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, ClassVar, Literal

import httpx
from pydantic import Field
from pydantic_core import to_jsonable_python

from syncer.connector import (
    BatchResult,
    Capabilities,
    Connector,
    ConnectorConfig,
    Operation,
    Record,
    SyncContext,
)
from syncer.errors import ConfigError, TransientError

if sys.platform != "win32":
    import fcntl

MAX_BATCH = 50_000
DEFAULT_BATCH = 5_000
Format = Literal["csv", "jsonl"]
_EXTENSIONS: dict[str, Format] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# key -> fields to write, or None when the row is removed
Pending = dict[str, dict[str, Any] | None]


class FileConfig(ConnectorConfig):
    """Settings of the ``file`` destination."""

    path: str
    format: Format | None = None
    batch_size: int | None = Field(default=DEFAULT_BATCH, ge=1, le=MAX_BATCH)


def _dumps(value: Any) -> str:
    return json.dumps(
        value,
        ensure_ascii=False,
        separators=(",", ":"),
        default=lambda v: to_jsonable_python(v, fallback=str),
    )


def csv_value(value: Any) -> str:
    """CSV cell text: None is empty, containers are JSON, anything else ``str()``."""
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return _dumps(value)
    return str(value)


def _fsync_dir(directory: Path) -> None:
    """Make a create/rename in ``directory`` survive a power cut (no-op where unsupported)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdirs(directory: Path) -> None:
    """Create ``directory`` and missing parents, syncing each new entry into its parent."""
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for new in reversed(missing):
        new.mkdir(exist_ok=True)
        _fsync_dir(new.parent)


def _os_error(action: str, path: Path, exc: OSError) -> Exception:
    """Permission problems need a human; anything else (disk full, I/O) may pass."""
    message = f"file connector could not {action} {path}: {exc.strerror or exc}"
    if isinstance(exc, (PermissionError, IsADirectoryError, NotADirectoryError)):
        return ConfigError(message)
    return TransientError(message)


class FileConnector(Connector):
    """Keep a local members file equal to the segment, with a durable change log."""

    name: ClassVar[str] = "file"
    description: ClassVar[str] = "Write members to a CSV/JSONL file and log every change"
    config_model: ClassVar[type[ConnectorConfig]] = FileConfig
    capabilities: ClassVar[Capabilities] = Capabilities(max_batch_size=MAX_BATCH)
    # One writer per file: the change log is appended under an exclusive lock.
    max_concurrency: ClassVar[int] = 1

    def __init__(self, config: ConnectorConfig, context: SyncContext, http: httpx.Client) -> None:
        super().__init__(config, context, http)
        if not isinstance(config, FileConfig):  # the engine builds it from config_model
            raise ConfigError("file connector needs a FileConfig")
        self.path = Path(os.path.expanduser(config.path))
        self.format = self._resolve_format(config)
        self.changes_path = self.path.with_name(self.path.name + ".changes.jsonl")
        self.applied_path = self.path.with_name(self.path.name + ".applied")
        self._log_fd: int | None = None

    def _resolve_format(self, config: FileConfig) -> Format:
        if config.format is not None:
            fmt = config.format
        else:
            found = _EXTENSIONS.get(self.path.suffix.lower())
            if found is None:
                raise ConfigError(
                    f"file connector cannot tell the format of {self.path}: "
                    "use a .csv, .jsonl or .ndjson name or set format: csv|jsonl"
                )
            fmt = found
        if fmt == "csv" and "key" in self.context.field_names:
            raise ConfigError("file connector: a field named 'key' clashes with the key column")
        return fmt

    # -- contract -----------------------------------------------------------------------

    def account_key(self) -> str:
        """The resolved members file: two syncs writing one file share its limiter."""
        return f"{self.name}:{self.path.resolve()}"

    def check(self) -> None:
        """Verify the members file's directory exists or can be created, and is writable."""
        if self.path.is_dir():
            raise ConfigError(f"file connector path {self.path} is a directory")
        existing = self.path.parent
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise ConfigError(
                f"file connector cannot create {self.path.parent}: {existing} is not a directory"
            )
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"file connector cannot write in {existing}")

    def open(self) -> None:
        """Lock the log and finish materialising if an earlier run died before close()."""
        self._open_log()
        try:
            if self._log_size() > self._read_applied() or not self.path.exists():
                self._materialise()
        except BaseException:
            self._close_log()  # do not keep the file locked if this run cannot start
            raise

    def close(self, success: bool) -> None:
        """Rebuild the members file from the log (also after a failed run: those batches
        were acknowledged) and release the lock."""
        try:
            if self._log_fd is not None:
                self._materialise()
        finally:
            self._close_log()

    def write(self, operation: Operation, records: Sequence[Record]) -> BatchResult:
        return self._append(operation, records)

    # -- change log ---------------------------------------------------------------------

    def _open_log(self) -> None:
        if self._log_fd is not None:
            return
        try:
            _mkdirs(self.path.parent)
            created = not self.changes_path.exists()
            fd = os.open(self.changes_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
        except OSError as exc:
            raise _os_error("open", self.changes_path, exc) from None
        try:
            if sys.platform != "win32":
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if created:
                _fsync_dir(self.path.parent)
        except BlockingIOError:
            os.close(fd)
            raise TransientError(f"{self.path} is being written by another run") from None
        except OSError as exc:
            os.close(fd)
            raise _os_error("lock", self.changes_path, exc) from None
        self._log_fd = fd
        self._remove_stale_temps()

    def _close_log(self) -> None:
        if self._log_fd is not None:
            os.close(self._log_fd)  # also releases the flock
            self._log_fd = None

    def _log_size(self) -> int:
        assert self._log_fd is not None
        return os.fstat(self._log_fd).st_size

    def _append(self, operation: Operation, records: Sequence[Record]) -> BatchResult:
        """Write the batch to the log and fsync: once this returns the batch is durable."""
        if self._log_fd is None:
            self.open()  # the engine always opens first; this keeps a stray call safe
        assert self._log_fd is not None
        at = datetime.now(UTC).isoformat(timespec="milliseconds")
        batch = uuid.uuid4().hex
        lines = [
            _dumps(
                {
                    "run_id": self.context.run_id,
                    "at": at,
                    "operation": operation,
                    "key": r.key,
                    "fields": dict(r.fields),
                    "batch": batch,
                    "batch_records": len(records),
                }
            )
            for r in records
        ]
        data = "".join(line + "\n" for line in lines).encode("utf-8")
        fd = self._log_fd
        before = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError as exc:
            # Not acknowledged: take the partial batch back out so a retry in this run
            # appends on a clean line; if even that fails, open() repairs it next time.
            try:
                os.ftruncate(fd, before)
            except OSError:
                self._close_log()
            raise _os_error("append to", self.changes_path, exc) from None
        return BatchResult.all_accepted(records)

    def _read_changes(self, offset: int) -> Pending:
        """Complete batches logged from ``offset`` on, last change per key winning.

        A torn tail (partial line or a batch with missing lines) was never acknowledged:
        it is cut off so later appends start on a clean line.
        """
        assert self._log_fd is not None
        pending: Pending = {}
        batch: list[tuple[str, dict[str, Any] | None]] = []
        batch_id: object = None
        batch_start = needed = 0
        torn_at: int | None = None
        pos = offset
        with open(self.changes_path, "rb") as log:
            log.seek(offset)
            for raw in log:
                start, pos = pos, pos + len(raw)
                if not raw.endswith(b"\n"):
                    torn_at = start
                    break
                if not raw.strip():
                    continue
                key, fields, this_batch, count = self._parse_change(raw, start)
                if not batch:
                    batch_id, batch_start, needed = this_batch, start, count
                elif this_batch != batch_id:
                    raise ConfigError(
                        f"change log {self.changes_path} has an incomplete batch at byte "
                        f"{batch_start} followed by more changes"
                    )
                batch.append((key, fields))
                if len(batch) == needed:
                    pending.update(batch)
                    batch = []
        if batch:
            torn_at = batch_start
        if torn_at is not None:
            os.ftruncate(self._log_fd, torn_at)
            os.fsync(self._log_fd)
        return pending

    def _parse_change(
        self, raw: bytes, start: int
    ) -> tuple[str, dict[str, Any] | None, object, int]:
        """(key, fields or None for a removal, batch id, lines in that batch) of one line."""
        try:
            entry = json.loads(raw)
            key, operation = str(entry["key"]), entry["operation"]
            fields = entry.get("fields") or {}
            if operation not in ("add", "remove", "update") or not isinstance(fields, dict):
                raise ValueError(operation)
        except (ValueError, KeyError, TypeError):
            message = f"change log {self.changes_path} is corrupt at byte {start}"
            raise ConfigError(message) from None
        count = entry.get("batch_records")
        needed = count if isinstance(count, int) and count > 0 else 1
        return key, None if operation == "remove" else fields, entry.get("batch"), needed

    # -- materialisation ----------------------------------------------------------------

    def _read_applied(self) -> int:
        try:
            return int(self.applied_path.read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            return 0

    def _materialise(self) -> None:
        """Apply the unapplied log tail to the members file, atomically."""
        offset = self._read_applied()
        size = self._log_size()
        if offset > size or not self.path.exists() or not self._at_line_start(offset):
            offset = 0  # log replaced, members file lost or offset garbage: replay all
        try:
            pending = self._read_changes(offset)
            end = self._log_size()
            self._atomic_write(self.path, lambda out: self._write_members(out, pending))
            self._atomic_write(self.applied_path, lambda out: out.write(f"{end}\n"))
        except OSError as exc:
            raise _os_error("write", self.path, exc) from None

    def _at_line_start(self, offset: int) -> bool:
        if offset == 0:
            return True
        with open(self.changes_path, "rb") as log:
            log.seek(offset - 1)
            return log.read(1) == b"\n"

    def _atomic_write(self, target: Path, write: Callable[[IO[str]], object]) -> None:
        """Replace ``target`` all at once: readers and crashes see the old or the new file."""
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        # os.open, not mkstemp: the umask applies (mkstemp would make the file 0600).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.chmod(fd, os.stat(target).st_mode & 0o7777)  # keep the user's permissions
            with open(fd, "w", encoding="utf-8", newline="") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(target.parent)

    def _remove_stale_temps(self) -> None:
        """Temp files left by a run killed mid-rebuild; safe to drop while we hold the lock."""
        for name in (self.path.name, self.applied_path.name):
            for tmp in self.path.parent.glob(f".{glob.escape(name)}.*.tmp"):
                with contextlib.suppress(OSError):
                    tmp.unlink()

    def _write_members(self, out: IO[str], pending: Pending) -> None:
        """Stream old rows not overridden by ``pending``, then the new/updated rows."""
        if self.format == "csv":
            columns = ["key", *self.context.field_names]
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(columns)
            for key, row in self._old_csv_rows(columns):
                if key not in pending:
                    writer.writerow(row)
            for key, fields in pending.items():
                if fields is not None:
                    writer.writerow([key, *(csv_value(fields.get(f)) for f in columns[1:])])
        else:
            for key, line in self._old_jsonl_rows():
                if key not in pending:
                    out.write(line)
            for key, fields in pending.items():
                if fields is not None:
                    out.write(_dumps({"key": key, "fields": fields}) + "\n")

    def _old_csv_rows(self, columns: list[str]) -> Iterator[tuple[str, list[str]]]:
        """Current rows re-shaped to ``columns`` (the mapping's fields may have changed)."""
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8", newline="") as old:
            reader = csv.DictReader(old)
            if reader.fieldnames is None:
                return
            if "key" not in reader.fieldnames:
                raise ConfigError(f"members file {self.path} has no 'key' column")
            for row in reader:
                yield row["key"] or "", [row.get(c) or "" for c in columns]

    def _old_jsonl_rows(self) -> Iterator[tuple[str, str]]:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as old:
            for number, line in enumerate(old, 1):
                if not line.strip():
                    continue
                try:
                    key = str(json.loads(line)["key"])
                except (ValueError, KeyError, TypeError):
                    raise ConfigError(
                        f"members file {self.path} is corrupt at line {number}"
                    ) from None
                yield key, line if line.endswith("\n") else line + "\n"
