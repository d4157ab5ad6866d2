"""The file connector as a user sees it: the members file, the change log, crash safety."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.file import FileConnector
from syncer.connector import Record, SyncContext
from syncer.errors import ConfigError, TransientError

FIELDS = ("email", "first_name")
ADA = Record("ada", {"email": "ada@example.com", "first_name": "Ada"})
BOB = Record("bob", {"email": "bob@example.com", "first_name": "Bob"})
CAROL = Record("carol", {"email": "carol@example.com", "first_name": "Carol"})
HTTP = httpx.Client()  # the file connector never uses it; the contract hands one over anyway


def make(
    path: Path, run_id: str = "r1", fields: tuple[str, ...] = FIELDS, **options: Any
) -> FileConnector:
    context = SyncContext(sync_name="vip", mode="membership", field_names=fields, run_id=run_id)
    return FileConnector(FileConnector.config_model(path=str(path), **options), context, HTTP)


def members(path: Path) -> dict[str, dict[str, Any]]:
    """Key -> fields as stored in the members file (CSV cells are text)."""
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return {row.pop("key"): row for row in csv.DictReader(f)}
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return {row["key"]: row["fields"] for row in rows}


def changes(path: Path) -> list[dict[str, Any]]:
    log = path.with_name(path.name + ".changes.jsonl")
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]


def expected(path: Path, *records: Record) -> dict[str, dict[str, Any]]:
    return {
        r.key: {k: str(v) for k, v in r.fields.items()} if path.suffix == ".csv" else dict(r.fields)
        for r in records
    }


def first_run(path: Path) -> None:
    conn = make(path, "r1")
    conn.open()
    conn.add([ADA, BOB])
    conn.close(True)


@pytest.fixture(params=["members.csv", "members.jsonl"])
def path(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return tmp_path / "out" / "nested" / request.param


def test_first_run_writes_the_added_members(path: Path) -> None:
    first_run(path)
    assert members(path) == expected(path, ADA, BOB)


def test_csv_has_key_and_field_columns(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    first_run(path)
    assert path.read_text(encoding="utf-8").splitlines()[0] == "key,email,first_name"


def test_a_run_that_sends_nothing_leaves_the_members_file_as_it_was(path: Path) -> None:
    """No change, no rewrite: the same file (inode, size, mtime) for whoever watches it."""
    first_run(path)
    before = os.stat(path)
    conn = make(path, "r2")
    conn.open()
    conn.close(True)
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    assert members(path) == expected(path, ADA, BOB)


def test_second_run_applies_removes_updates_and_adds(path: Path) -> None:
    first_run(path)
    conn = make(path, "r2")
    conn.open()
    conn.remove([Record(BOB.key)])
    augusta = Record(ADA.key, {"email": "ada@example.com", "first_name": "Augusta"})
    conn.update([augusta])
    conn.add([CAROL])
    conn.remove([Record("never-there")])  # idempotent: accepted, nothing to delete
    conn.close(True)

    assert members(path) == expected(path, augusta, CAROL)


def test_change_log_has_one_line_per_change(path: Path) -> None:
    first_run(path)
    conn = make(path, "r2")
    conn.open()
    result = conn.remove([Record(BOB.key)])
    conn.add([CAROL])
    conn.close(True)

    log = changes(path)
    assert [(c["run_id"], c["operation"], c["key"]) for c in log] == [
        ("r1", "add", "ada"),
        ("r1", "add", "bob"),
        ("r2", "remove", "bob"),
        ("r2", "add", "carol"),
    ]
    assert log[3]["fields"] == dict(CAROL.fields)
    assert datetime.fromisoformat(log[0]["at"]).utcoffset() is not None
    assert [o.status for o in result.outcomes()] == ["accepted"]


def test_batch_is_in_the_log_before_the_method_returns(path: Path) -> None:
    conn = make(path)
    conn.open()
    conn.add([ADA])
    assert [c["key"] for c in changes(path)] == ["ada"]
    conn.close(True)


def test_csv_cell_values(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    conn = make(path, fields=("a", "b", "c", "d"))
    conn.open()
    conn.add([Record("k", {"a": None, "b": {"x": [1, 2]}, "c": 3, "d": "text, with comma"})])
    conn.close(True)
    assert members(path) == {"k": {"a": "", "b": '{"x":[1,2]}', "c": "3", "d": "text, with comma"}}


def test_changed_fields_reshape_existing_rows(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    first_run(path)
    conn = make(path, "r2", fields=("first_name", "country"))
    conn.open()
    conn.add([Record("dan", {"first_name": "Dan", "country": "NL"})])
    conn.close(True)
    assert members(path) == {
        "ada": {"first_name": "Ada", "country": ""},
        "bob": {"first_name": "Bob", "country": ""},
        "dan": {"first_name": "Dan", "country": "NL"},
    }


def test_failed_run_still_materialises_acknowledged_batches(path: Path) -> None:
    conn = make(path)
    conn.open()
    conn.add([ADA])
    conn.close(False)
    assert members(path) == expected(path, ADA)


def test_kill_after_acknowledged_batch_keeps_it(path: Path) -> None:
    """A real SIGKILL right after add() returned: the next run's open() recovers the batch."""
    first_run(path)
    script = textwrap.dedent(
        f"""
        import os, signal, httpx
        from connectors.file import FileConnector
        from syncer.connector import Record, SyncContext
        ctx = SyncContext("vip", "membership", {FIELDS!r}, run_id="r2")
        conn = FileConnector(FileConnector.config_model(path={str(path)!r}), ctx, httpx.Client())
        conn.open()
        conn.remove([Record("bob")])
        conn.add([Record("carol", {dict(CAROL.fields)!r})])
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert members(path) == expected(path, ADA, BOB)  # died before close()

    conn = make(path, "r3")
    conn.open()
    assert members(path) == expected(path, ADA, CAROL)
    conn.close(True)
    assert members(path) == expected(path, ADA, CAROL)


def test_torn_unacknowledged_batch_is_dropped(path: Path) -> None:
    """A batch cut short by a crash was never acknowledged: not applied, cut from the log."""
    first_run(path)
    log = path.with_name(path.name + ".changes.jsonl")
    line = {
        "run_id": "r2",
        "at": "2024-01-01T00:00:00+00:00",
        "operation": "remove",
        "key": "ada",
        "fields": {},
        "batch": "torn",
        "batch_records": 3,
    }
    with open(log, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n" + '{"run_id": "r2", "at": "20')

    conn = make(path, "r3")
    conn.open()
    conn.add([CAROL])
    conn.close(True)

    assert members(path) == expected(path, ADA, BOB, CAROL)
    assert [(c["operation"], c["key"]) for c in changes(path)] == [
        ("add", "ada"),
        ("add", "bob"),
        ("add", "carol"),
    ]


def test_replay_after_losing_the_applied_offset_is_harmless(path: Path) -> None:
    first_run(path)
    conn = make(path, "r2")
    conn.open()
    conn.remove([Record(BOB.key)])
    conn.add([CAROL])
    conn.close(True)
    want = expected(path, ADA, CAROL)
    applied = path.with_name(path.name + ".applied")

    snapshots = []
    for run in ("r3", "r4"):
        applied.unlink()
        conn = make(path, run)
        conn.open()
        conn.close(True)
        assert members(path) == want
        snapshots.append(path.read_bytes())
    assert snapshots[0] == snapshots[1]


def test_deleted_members_file_is_rebuilt_from_the_log(path: Path) -> None:
    first_run(path)
    path.unlink()
    conn = make(path, "r2")
    conn.open()
    conn.close(True)
    assert members(path) == expected(path, ADA, BOB)


def test_two_runs_on_one_file_are_refused(path: Path) -> None:
    running = make(path)
    running.open()
    with pytest.raises(TransientError, match="another run"):
        make(path, "r2").open()
    running.close(True)


def test_format_from_extension_or_option(tmp_path: Path) -> None:
    conn = make(tmp_path / "m.ndjson")
    conn.open()
    conn.add([ADA])
    conn.close(True)
    assert json.loads((tmp_path / "m.ndjson").read_text()) == {
        "key": "ada",
        "fields": dict(ADA.fields),
    }

    explicit = tmp_path / "members.txt"
    conn = make(explicit, format="csv")
    conn.open()
    conn.add([ADA])
    conn.close(True)
    assert explicit.read_text().startswith("key,email,first_name\n")


def test_unknown_extension_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"members\.xlsx"):
        make(tmp_path / "members.xlsx")


def test_check_accepts_a_creatable_path_without_creating_it(tmp_path: Path) -> None:
    make(tmp_path / "a" / "b" / "m.csv").check()
    assert not (tmp_path / "a").exists()


def test_check_refuses_a_path_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("not a directory")
    with pytest.raises(ConfigError, match="blocker"):
        make(tmp_path / "blocker" / "m.csv").check()


def test_default_batch_size(tmp_path: Path) -> None:
    assert make(tmp_path / "m.csv").batch_size == 5000
    assert make(tmp_path / "m.csv", batch_size=100).batch_size == 100


def test_log_is_valid_jsonl_even_with_awkward_values(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    weird = Record("line\nbreak", {"email": "x@example.com", "first_name": 'Zoë\t"quoted"'})
    conn = make(path)
    conn.open()
    conn.add([weird])
    conn.close(True)
    assert members(path) == {weird.key: dict(weird.fields)}
    assert len(changes(path)) == 1
    assert os.path.getsize(path) > 0


def test_disk_error_is_transient_and_the_retry_is_logged_once(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = make(path)
    conn.open()
    real_fsync = os.fsync
    calls = {"n": 0}

    def failing_once(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_once)
    with pytest.raises(TransientError, match="Input/output error"):
        conn.add([ADA, BOB])
    conn.add([ADA, BOB])  # the engine retrying the unacknowledged batch
    conn.close(True)

    assert members(path) == expected(path, ADA, BOB)
    assert [c["key"] for c in changes(path)] == ["ada", "bob"]


# -- what the connector refuses before anything is acknowledged ------------------------------


@pytest.fixture
def no_hang() -> Iterator[None]:
    """Fail, not hang, if a regression blocks on a FIFO: SIGALRM aborts the blocked call."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError("blocked for 30 s (a FIFO opened or read?)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


UNUSABLE = {
    "csv-no-key-column": ("m.csv", b"email,first_name\nx@example.com,X\n"),
    "csv-ragged-row": ("m.csv", b"key,email,first_name\nada,a@x,A\nbob,b@x,B,extra\n"),
    "csv-short-row": ("m.csv", b"key,email,first_name\nada,a@x\n"),
    "csv-not-utf-8": ("m.csv", b"key,email,first_name\nada,a@x,Andr\xe9\n"),
    "csv-repeated-column": ("m.csv", b"key,email,email\nada,a@x,b@x\n"),
    "csv-unclosed-quote": ("m.csv", b'key,email,first_name\n"ada,a@x,A\n'),
    "jsonl-not-json": ("m.jsonl", b'{"key":"ada","fields":{}}\n{not json\n'),
    "jsonl-no-key": ("m.jsonl", b'{"fields":{"email":"a@x"}}\n'),
    "jsonl-number-key": ("m.jsonl", b'{"key":7,"fields":{}}\n'),
    "jsonl-not-an-object": ("m.jsonl", b'["ada"]\n'),
    "jsonl-fields-not-an-object": ("m.jsonl", b'{"key":"ada","fields":[1]}\n'),
    "jsonl-not-utf-8": ("m.jsonl", b'{"key":"ada","fields":{"first_name":"Andr\xe9"}}\n'),
}


@pytest.mark.parametrize("case", list(UNUSABLE))
def test_unusable_members_file_is_refused_by_open_and_check(tmp_path: Path, case: str) -> None:
    name, content = UNUSABLE[case]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        make(path).check()
    conn = make(path)
    with pytest.raises(ConfigError, match=re.escape(str(path))) as err:
        conn.open()  # before any batch: nothing can be acknowledged
    assert "a@x" not in str(err.value) and "x@example.com" not in str(err.value)
    assert path.read_bytes() == content
    with pytest.raises(ConfigError):  # not "being written by another run": the lock is free
        make(path).open()


def test_members_file_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    """Spreadsheet exports start with a BOM; it is not part of the first column's name."""
    path = tmp_path / "m.csv"
    path.write_bytes(b"\xef\xbb\xbfkey,email,first_name\nbob,bob@example.com,Bob\n")
    conn = make(path)
    conn.check()
    conn.open()
    conn.add([ADA])
    conn.close(True)
    assert members(path) == expected(path, BOB, ADA)


def test_unwritable_directory_is_found_by_open(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    path = tmp_path / "m.csv"
    first_run(path)
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="could not create files in"):
            make(path, "r2").open()
    finally:
        tmp_path.chmod(0o700)


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    os.chdir(path.parent)  # bind() takes ~100 bytes of path at most
    try:
        sock.bind(path.name)
    finally:
        os.chdir(cwd)
    sock.close()


def _device(path: Path) -> None:
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
    except PermissionError:
        pytest.skip("making a device node needs root")


def _link(path: Path) -> None:
    target = path.parent.parent / "target"
    target.write_bytes(b"the attacker's file\n")
    path.symlink_to(target)


PLANTS: dict[str, tuple[Callable[[Path], object], str]] = {
    "fifo": (_fifo, "a FIFO"),
    "socket": (_socket, "a socket"),
    "device": (_device, "a character device"),
    "directory": (Path.mkdir, "a directory"),
    "symlink": (_link, "a symbolic link"),
    "dangling-symlink": (lambda p: p.symlink_to(p.parent.parent / "new"), "a symbolic link"),
    "symlink-to-directory": (lambda p: p.symlink_to(p.parent), "a symbolic link"),
}


@pytest.mark.usefixtures("no_hang")
@pytest.mark.parametrize("suffix", ["", ".changes.jsonl", ".applied"])
@pytest.mark.parametrize("plant", list(PLANTS))
def test_anything_but_a_regular_file_at_a_path_is_refused(
    tmp_path: Path, suffix: str, plant: str
) -> None:
    path = tmp_path / "out" / "m.csv"
    path.parent.mkdir()
    target = path.with_name(path.name + suffix)
    make_it, kind = PLANTS[plant]
    make_it(target)
    before = sorted(os.listdir(path.parent)), sorted(os.listdir(tmp_path))

    with pytest.raises(ConfigError, match=re.escape(f"{target}: it is {kind}")):
        make(path).check()
    with pytest.raises(ConfigError, match=re.escape(f"{target}: it is {kind}")):
        make(path).open()
    assert (sorted(os.listdir(path.parent)), sorted(os.listdir(tmp_path))) == before
    if plant == "symlink":
        assert (tmp_path / "target").read_bytes() == b"the attacker's file\n"


def test_symlinked_members_path_is_refused_even_if_meant(tmp_path: Path) -> None:
    """A link the user made looks exactly like one an attacker planted: point path at the
    real file (a linked directory is fine)."""
    real = tmp_path / "real.csv"
    first_run(real)
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    with pytest.raises(ConfigError, match="symbolic link"):
        make(link).open()
    (tmp_path / "dir").symlink_to(tmp_path)
    conn = make(tmp_path / "dir" / "real.csv", "r2")
    conn.open()
    conn.add([CAROL])
    conn.close(True)
    assert members(real) == expected(real, ADA, BOB, CAROL)


@pytest.mark.parametrize(
    "applied", [b"garbage\n", b"\xff\xfe\n", b"-17\n", b"99999999\n", b"", b"12"]
)
def test_damaged_applied_offset_only_means_a_full_replay(path: Path, applied: bytes) -> None:
    first_run(path)
    conn = make(path, "r2")
    conn.open()
    conn.remove([Record(BOB.key)])
    conn.add([CAROL])
    conn.close(True)
    path.with_name(path.name + ".applied").write_bytes(applied)
    conn = make(path, "r3")
    conn.check()
    conn.open()
    conn.close(True)
    assert members(path) == expected(path, ADA, CAROL)


def test_corrupt_unapplied_log_is_refused_naming_the_log_and_byte(path: Path) -> None:
    first_run(path)
    log = path.with_name(path.name + ".changes.jsonl")
    size = log.stat().st_size
    with open(log, "ab") as f:
        f.write(b'{"key":"x","operation":"add","fields":{"email":"\xff"}}\n')
    for call in (make(path).check, make(path, "r2").open):
        with pytest.raises(ConfigError, match=rf"{re.escape(str(log))} is corrupt at byte {size}"):
            call()
    assert log.stat().st_size == size + 51 + 2  # check and a refused open change nothing


def test_files_are_created_owner_only_whatever_the_umask(path: Path) -> None:
    old = os.umask(0)
    try:
        first_run(path)
    finally:
        os.umask(old)
    for suffix in ("", ".changes.jsonl", ".applied"):
        assert stat.S_IMODE(os.stat(path.with_name(path.name + suffix)).st_mode) == 0o600


def test_existing_members_file_keeps_its_mode(path: Path) -> None:
    first_run(path)
    path.chmod(0o640)
    conn = make(path, "r2")
    conn.open()
    conn.add([CAROL])
    conn.close(True)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert not list(path.parent.glob(".*.tmp"))


# -- a file changed under a running sync -----------------------------------------------------


def _keys(path: Path) -> list[str]:
    return sorted(members(path))


@pytest.mark.usefixtures("no_hang")
@pytest.mark.parametrize("damage", ["corrupt", "fifo"])
def test_rebuild_that_fails_after_acknowledging_is_finished_next_run(
    tmp_path: Path, damage: str
) -> None:
    path = tmp_path / "members.csv"
    conn = make(path, "r1")
    conn.open()
    conn.add([ADA])
    conn.close(True)

    conn = make(path, "r2")
    conn.open()
    conn.add([BOB])  # acknowledged: the engine commits it now
    path.unlink()
    if damage == "corrupt":
        path.write_bytes(b"email,name\nx@example.com,X\n")
    else:
        os.mkfifo(path)
    with pytest.raises(ConfigError, match=r"members\.csv"):
        conn.close(True)  # must fail fast, not block on the FIFO
    assert sorted(p.name for p in tmp_path.glob(".*.tmp")) == []

    path.unlink()  # the user fixes it
    conn = make(path, "r3")
    conn.open()
    conn.close(True)
    assert _keys(path) == ["ada", "bob"]


@pytest.mark.parametrize("which", ["members", "applied"])
def test_link_planted_during_a_run_is_not_followed(tmp_path: Path, which: str) -> None:
    path = tmp_path / "members.csv"
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious\n")
    conn = make(path, "r1")
    conn.open()
    conn.add([ADA])
    planted = path if which == "members" else path.with_name("members.csv.applied")
    if planted.exists():
        planted.unlink()
    planted.symlink_to(target)
    with pytest.raises(ConfigError, match="symbolic link"):
        conn.close(True)
    assert target.read_bytes() == b"precious\n"
    planted.unlink()
    conn = make(path, "r2")
    conn.open()
    conn.close(True)
    assert _keys(path) == ["ada"]


@pytest.mark.parametrize(
    "value",
    ["x" * 300_000, "lone\rcarriage return", "crlf\r\ninside", "nul\x00byte", '"quoted", comma'],
    ids=["over-128k", "lone-cr", "crlf", "nul", "quotes"],
)
def test_csv_values_syncer_wrote_read_back_exactly(tmp_path: Path, value: str) -> None:
    """Every later run re-reads the members file: what syncer wrote must parse as written."""
    path = tmp_path / "m.csv"
    odd = Record("odd", {"email": "odd@example.com", "first_name": value})
    conn = make(path)
    conn.open()
    conn.add([odd, ADA])
    conn.close(True)
    conn = make(path, "r2")
    conn.check()
    conn.open()
    conn.add([BOB])
    conn.close(True)
    csv.field_size_limit(2**31 - 1)  # any reader of such a file needs this
    assert members(path) == expected(path, odd, ADA, BOB)


@pytest.mark.parametrize("edit", ["replaced", "appended-to"])
def test_members_file_broken_between_runs_is_found_by_open(path: Path, edit: str) -> None:
    """open() skips reading the file through only while it is exactly the one syncer wrote."""
    first_run(path)
    if edit == "replaced":
        path.write_bytes(b"email,name\nx@example.com,X\n" if path.suffix == ".csv" else b"[1]\n")
    else:
        with open(path, "ab") as f:
            f.write(b"carol,\xff,\n" if path.suffix == ".csv" else b"{not json\n")
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        make(path, "r2").open()


@pytest.mark.parametrize("suffix", ["", ".changes.jsonl", ".applied"])
def test_another_users_file_at_a_path_is_refused(tmp_path: Path, suffix: str) -> None:
    """A file planted by another user (as in /tmp) would get emails appended or pass a
    world-readable mode on."""
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    path = tmp_path / "m.csv"
    planted = path.with_name(path.name + suffix)
    content = b"key,email,first_name\n" if suffix == "" else b""
    planted.write_bytes(content)
    os.chown(planted, 65534, 65534)
    planted.chmod(0o666)
    for call in (make(path).check, make(path).open):
        with pytest.raises(ConfigError, match=re.escape(f"{planted}: it belongs to another user")):
            call()
    assert planted.read_bytes() == content
