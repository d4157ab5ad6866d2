"""File destination: a members file (CSV or JSONL) plus an append-only change log.

Durability: the engine records a batch as synced as soon as a method returns, even if the
process is then killed. So every batch is appended to ``<path>.changes.jsonl`` and fsynced
before returning; the members file is only a materialisation of that log, rebuilt atomically
(temp file, fsync, ``os.replace``) in ``close()`` and in ``open()`` after a run that died.
``<path>.applied`` holds how many bytes of the log the members file reflects. Replaying the
log is idempotent (add/update set a row, remove deletes it), so a stale offset is harmless.

A batch counts as in the destination only if the log can also be turned into the members
file, so ``open()`` proves that before anything is acknowledged: it finishes an earlier run's
rebuild, or reads the whole members file through (header, key column, every row, UTF-8) and
creates and drops a temp file beside it. If a rebuild still fails after acknowledgement (disk
full, a file changed under the run), ``.applied`` stays behind and the next ``open()`` replays
the log once the problem is fixed: nothing acknowledged is lost.

Each log line also carries ``batch`` (an id) and ``batch_records`` (the batch's line count):
a batch cut short by a crash was never acknowledged, so recovery drops it instead of
applying part of it or appending after a torn line.

The three paths hold personal data and may sit in a directory others can write to, so each
must be missing or a regular file of syncer's own user: a link, FIFO, socket, device,
directory or another user's file there is refused before it is opened, and every open is
``O_NOFOLLOW | O_NONBLOCK`` and checked again with ``fstat``, so a link planted in between
cannot redirect a write and a FIFO cannot block. Files syncer creates are 0600; an existing
file keeps its mode (never loosened, and not tightened behind the user's back).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import glob
import json
import os
import stat
import sys
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

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

PRIVATE = 0o600  # members, log and offset files hold personal data: owner only
# Never follow a link at the path, never block on a FIFO, never leak into a child process.
_SAFE_OPEN = (
    getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
)
# The csv module refuses fields over 128 KiB by default; syncer writes any size it is given.
_CSV_FIELD_LIMIT = 2**31 - 1
_CONFIG_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ELOOP, errno.ENXIO}
_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


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


def _csv_row_writer(out: IO[str]) -> Callable[[list[str]], object]:
    """Write CSV rows that read back as written.

    With a ``\\n`` line end the csv module leaves a lone ``\\r`` unquoted, which a reader
    takes for a line break; rows holding one are written fully quoted (still plain CSV).
    """
    plain = csv.writer(out, lineterminator="\n")
    quoted = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)

    def write(row: list[str]) -> object:
        return (quoted if any("\r" in cell for cell in row) else plain).writerow(row)

    return write


def _allow_large_csv_fields() -> None:
    """Read back fields of any size syncer wrote. The limit is process-wide and other threads
    may be reading CSV, so it is only ever raised."""
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)


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
    """Problems a human must fix (permissions, wrong kind of file) are configuration errors;
    anything else (disk full, I/O) may pass by itself."""
    message = f"file connector could not {action} {path}: {exc.strerror or exc}"
    if isinstance(exc, (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)):
        return ConfigError(message)
    if exc.errno in _CONFIG_ERRNOS:
        return ConfigError(message)
    return TransientError(message)


def _unusable(st: os.stat_result) -> str | None:
    """Why a file found at one of the connector's paths must not be used, or None. Another
    user's file would get members' personal data appended to it (the log) or pass its mode
    on (the members file); in a sticky directory like /tmp it could not even be replaced."""
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        return f"it is {kind}, and only a regular file is used there (or created if missing)"
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        return (
            f"it belongs to another user (uid {st.st_uid}), and syncer writes personal data "
            "only into files of its own user"
        )
    return None


def _refusal(path: Path, why: str) -> ConfigError:
    return ConfigError(f"file connector refuses {path}: {why}")


def _refuse_unusual(path: Path) -> None:
    """Refuse ``path`` unless it is missing or our regular file (a link is not followed)."""
    try:
        why = _unusable(os.lstat(path))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _os_error("inspect", path, exc) from None
    if why is not None:
        raise _refusal(path, why)


def _open_existing(path: Path) -> int | None:
    """``path`` opened for reading as :func:`_open_regular` does; None when it does not exist.
    Other failures are ConfigError or TransientError naming the path."""
    try:
        return _open_regular(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _os_error("read", path, exc) from None


def _open_regular(path: Path, flags: int) -> int:
    """``os.open`` that never follows a link, never blocks on a FIFO, creates 0600, and
    refuses anything but our own regular file. That is checked on the open descriptor, so a
    file swapped in after an earlier ``lstat`` changes nothing. Raises OSError as is."""
    try:
        fd = os.open(path, flags | _SAFE_OPEN, PRIVATE)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENXIO):  # a link, or a socket
            with contextlib.suppress(OSError):
                why = _unusable(os.lstat(path))
                if why is not None:
                    raise _refusal(path, why) from None
        raise
    why = _unusable(os.fstat(fd))
    if why is not None:
        os.close(fd)
        raise _refusal(path, why)
    return fd


class FileConnector(Connector):
    """Keep a local members file equal to the segment, with a durable change log."""

    name = "file"
    description = "Write members to a CSV/JSONL file and log every change"
    config_model = FileConfig
    capabilities = Capabilities(max_batch_size=MAX_BATCH)
    # One writer per file: the change log is appended under an exclusive lock.
    max_concurrency = 1

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
        """Everything ``open()`` would refuse, without creating or changing anything: the
        kind of each path, a writable directory, the members file, the unapplied log."""
        self._refuse_unusual_paths()
        existing = self.path.parent
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise ConfigError(
                f"file connector cannot create {self.path.parent}: {existing} is not a directory"
            )
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"file connector cannot write in {existing}")
        self._validate_members()
        self._validate_log(self._read_applied()[0])

    def open(self) -> None:
        """Lock the log and prove the members file can be rebuilt before any batch is
        acknowledged: finish an earlier run's rebuild, or read the members file through
        (skipped when it is still, to the byte count and nanosecond, the file we wrote)."""
        self._refuse_unusual_paths()
        self._open_log()
        try:
            offset, written = self._read_applied()
            if self._behind(offset):
                self._materialise()
            else:
                if written is None or written != self._members_signature():
                    self._validate_members()
                self._probe_directory()
        except BaseException:
            self._close_log()  # do not keep the file locked if this run cannot start
            raise

    def close(self, success: bool) -> None:
        """Rebuild the members file from the log (also after a failed run: those batches
        were acknowledged) and release the lock. A run that appended nothing leaves the
        file alone: rewriting a million unchanged lines is most of a no-change run."""
        try:
            if self._log_fd is not None and self._behind(self._read_applied()[0]):
                self._materialise()
        finally:
            self._close_log()

    def _behind(self, applied: int) -> bool:
        """Whether the members file lacks part of the log (or is gone)."""
        return self._log_size() != applied or not os.path.lexists(self.path)

    def write(self, operation: Operation, records: Sequence[Record]) -> BatchResult:
        return self._append(operation, records)

    # -- paths ----------------------------------------------------------------------------

    def _refuse_unusual_paths(self) -> None:
        for path in (self.path, self.changes_path, self.applied_path):
            _refuse_unusual(path)

    def _probe_directory(self) -> None:
        """Prove a rebuild can create its temp file beside the members file."""
        tmp = self._temp_path(self.path)
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _SAFE_OPEN, PRIVATE))
            os.unlink(tmp)
        except OSError as exc:
            raise _os_error("create files in", self.path.parent, exc) from None

    def _members_signature(self) -> str | None:
        try:
            return _signature(os.lstat(self.path))
        except OSError:
            return None  # gone since: reading it through reports what is wrong

    @staticmethod
    def _temp_path(target: Path) -> Path:
        return target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")

    # -- change log ---------------------------------------------------------------------

    def _open_log(self) -> None:
        if self._log_fd is not None:
            return
        try:
            _mkdirs(self.path.parent)
            created = not os.path.lexists(self.changes_path)
            fd = _open_regular(self.changes_path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
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
        """Complete batches logged from ``offset`` on; a torn tail (a partial line or a batch
        with missing lines) was never acknowledged and is cut off so later appends start on
        a clean line."""
        assert self._log_fd is not None
        pending, torn_at = self._scan_changes(self._log_fd, offset)
        if torn_at is not None:
            os.ftruncate(self._log_fd, torn_at)
            os.fsync(self._log_fd)
        return pending

    def _validate_log(self, offset: int) -> None:
        """Read the log as the next ``open()`` would replay it, changing nothing."""
        fd = _open_existing(self.changes_path)
        if fd is None:
            return
        try:
            size = os.fstat(fd).st_size
            if offset > size or not os.path.lexists(self.path) or not _line_start(fd, offset):
                offset = 0
            self._scan_changes(fd, offset)
        except OSError as exc:
            raise _os_error("read", self.changes_path, exc) from None
        finally:
            os.close(fd)

    def _scan_changes(self, fd: int, offset: int) -> tuple[Pending, int | None]:
        """Complete batches from ``offset`` on, last change per key winning, and where a torn
        tail starts (None if there is none). Reads through ``fd``, never the path again."""
        pending: Pending = {}
        batch: list[tuple[str, dict[str, Any] | None]] = []
        batch_id: object = None
        batch_start = needed = 0
        torn_at: int | None = None
        pos = offset
        with os.fdopen(os.dup(fd), "rb") as log:
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
        return pending, torn_at

    def _parse_change(
        self, raw: bytes, start: int
    ) -> tuple[str, dict[str, Any] | None, object, int]:
        """(key, fields or None for a removal, batch id, lines in that batch) of one line."""
        try:
            entry = json.loads(raw)  # bytes that are not UTF-8 raise a ValueError too
            key, operation = str(entry["key"]), entry["operation"]
            fields = entry.get("fields") or {}
            if operation not in ("add", "remove", "update") or not isinstance(fields, dict):
                raise ValueError(operation)
        except (ValueError, KeyError, TypeError, AttributeError):
            message = f"change log {self.changes_path} is corrupt at byte {start}"
            raise ConfigError(message) from None
        count = entry.get("batch_records")
        needed = count if isinstance(count, int) and count > 0 else 1
        return key, None if operation == "remove" else fields, entry.get("batch"), needed

    # -- materialisation ----------------------------------------------------------------

    def _read_applied(self) -> tuple[int, str | None]:
        """Bytes of the log the members file reflects, and the members file's signature when
        it was written. Missing or unparsable means 0 and None: the whole log is replayed
        (harmless, replay is idempotent) and the members file is read through."""
        fd = _open_existing(self.applied_path)
        if fd is None:
            return 0, None
        try:
            with open(fd, "rb") as f:
                raw = f.read(256)
        except OSError as exc:
            raise _os_error("read", self.applied_path, exc) from None
        try:
            offset, *rest = raw.decode("ascii").split()
            return max(int(offset), 0), rest[0] if len(rest) == 1 else None
        except ValueError:
            return 0, None

    def _materialise(self) -> None:
        """Apply the unapplied log tail to the members file, atomically."""
        assert self._log_fd is not None
        offset = self._read_applied()[0]
        size = self._log_size()
        try:
            if (
                offset > size
                or not os.path.lexists(self.path)
                or not _line_start(self._log_fd, offset)
            ):
                offset = 0  # log replaced, members file lost or offset garbage: replay all
            pending = self._read_changes(offset)
            end = self._log_size()
            written = self._atomic_write(self.path, lambda out: self._write_members(out, pending))
            line = f"{end} {_signature(written)}\n"
            self._atomic_write(self.applied_path, lambda out: out.write(line))
        except OSError as exc:
            raise _os_error("rebuild", self.path, exc) from None

    def _atomic_write(self, target: Path, write: Callable[[IO[str]], object]) -> os.stat_result:
        """Replace ``target`` all at once: readers and crashes see the old or the new file.
        Returns the new file's status.

        The temp file is created 0600 and exclusively (a planted file or link there makes
        the create fail); an existing target that is our own regular file passes its
        permissions on.
        """
        tmp = self._temp_path(target)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _SAFE_OPEN, PRIVATE)
        try:
            with contextlib.suppress(FileNotFoundError):
                old = os.lstat(target)
                if _unusable(old) is None:  # our own regular file: keep its permissions
                    os.fchmod(fd, stat.S_IMODE(old.st_mode) & 0o777)
            with open(fd, "w", encoding="utf-8", newline="") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
                written = os.fstat(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(target.parent)
        return written

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
            writerow = _csv_row_writer(out)
            writerow(columns)
            for key, row in self._old_csv_rows(columns):
                if key not in pending:
                    writerow(row)
            for key, fields in pending.items():
                if fields is not None:
                    writerow([key, *(csv_value(fields.get(f)) for f in columns[1:])])
        else:
            for key, line in self._old_jsonl_rows():
                if key not in pending:
                    out.write(line)
            for key, fields in pending.items():
                if fields is not None:
                    out.write(_dumps({"key": key, "fields": fields}) + "\n")

    # -- reading the members file -------------------------------------------------------

    def _validate_members(self) -> None:
        """Read the members file through, as a rebuild will: any problem shows now."""
        rows = self._old_csv_rows(["key"]) if self.format == "csv" else self._old_jsonl_rows()
        deque(rows, maxlen=0)

    def _members_lines(self) -> Iterator[str]:
        """The members file's lines as text (none if there is no file), opened safely and
        decoded one by one, so an error names the line. Lines split at ``\n`` only, as
        written; a byte-order mark (spreadsheet exports) is not part of the first column."""
        fd = _open_existing(self.path)
        if fd is None:
            return
        with open(fd, "rb") as members:
            number = 0
            try:
                for number, raw in enumerate(members, 1):
                    yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                raise self._damaged(f"line {number}", "is not UTF-8") from None
            except OSError as exc:
                raise _os_error("read", self.path, exc) from None

    def _damaged(self, where: str, why: str) -> ConfigError:
        return ConfigError(
            f"members file {self.path} {why} ({where}); fix it or move it away: the next run "
            "rebuilds it from the change log"
        )

    def _old_csv_rows(self, columns: list[str]) -> Iterator[tuple[str, list[str]]]:
        """Current rows re-shaped to ``columns`` (the mapping's fields may have changed)."""
        _allow_large_csv_fields()
        reader = csv.reader(self._members_lines())
        try:
            header = next(reader, None)
            if header is None:
                return  # no file, or an empty one: nothing to keep
            if "key" not in header:
                raise self._damaged("line 1", "has no 'key' column")
            if len(set(header)) != len(header):
                raise self._damaged("line 1", "repeats a column name")
            index = {name: i for i, name in enumerate(header)}
            key_at = index["key"]
            for row in reader:
                if not row:
                    continue  # a blank line
                if len(row) != len(header):
                    where = f"line {reader.line_num}"
                    raise self._damaged(
                        where, f"has {len(row)} cells where its header has {len(header)}"
                    )
                yield row[key_at], [row[index[c]] if c in index else "" for c in columns]
        except csv.Error as exc:
            raise self._damaged(f"line {reader.line_num}", f"is not valid CSV: {exc}") from None

    def _old_jsonl_rows(self) -> Iterator[tuple[str, str]]:
        for number, line in enumerate(self._members_lines(), 1):
            if line.strip():
                yield self._jsonl_key(line, number), line if line.endswith("\n") else line + "\n"

    def _jsonl_key(self, line: str, number: int) -> str:
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("key"), str)
            or not isinstance(entry.get("fields", {}), dict)
        ):
            raise self._damaged(f"line {number}", 'is not a {"key": ..., "fields": {...}} line')
        key: str = entry["key"]
        return key


def _signature(st: os.stat_result) -> str:
    """Which file, how long, last written when: a members file someone else replaced or
    edited since syncer wrote it does not match, so it is read through again."""
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def _line_start(fd: int, offset: int) -> bool:
    """Whether ``offset`` is where a line of the log starts."""
    return offset == 0 or os.pread(fd, 1, offset - 1) == b"\n"
