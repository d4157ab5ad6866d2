"""The file destination under hostile conditions, through the real CLI where a user sees it.

Nothing is acknowledged that the connector cannot put in its members file; nothing but a
regular file is used at its paths (a FIFO, link, socket or device there is refused before
anything is sent, without hanging or leaving the lease or a temp file behind); the files
it and the state database create are the owner's only.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli, write_table

COLUMNS = ("id", "name", "note")
TIMEOUT = 60  # a run that blocks on a FIFO fails the test instead of hanging the suite
Row = tuple[str, str, str]


def segment(n: int, start: int = 0, note: str = "") -> list[Row]:
    return [(f"m{i:03d}", f"Name {i}", note) for i in range(start, start + n)]


class Story:
    """One sync from a SQLite warehouse to a file destination, run through the CLI."""

    def __init__(self, root: Path, members: str = "out/members.csv") -> None:
        self.root = root
        self.warehouse = f"sqlite:///{root / 'shop.db'}"
        self.state = root / "state.db"
        self.env = {
            "SYNCER_WAREHOUSE_URL": self.warehouse,
            "SYNCER_STATE_URL": f"sqlite:///{self.state}",
            "SYNCER_MAPPINGS_DIR": str(root / "mappings"),
        }
        self.point_at(members)

    def point_at(self, members: str) -> None:
        self.path = self.root / members
        (self.root / "mappings").mkdir(exist_ok=True)
        (self.root / "mappings" / "vip.yaml").write_text(
            "source: {query: 'select id, name, note from segment', key: id}\n"
            "mode: mirror\n"
            "fields: {name: name, note: note}\n"
            f"destination: {{connector: file, path: '{self.path}'}}\n"
        )

    @property
    def log(self) -> Path:
        return self.path.with_name(self.path.name + ".changes.jsonl")

    @property
    def applied(self) -> Path:
        return self.path.with_name(self.path.name + ".applied")

    def segment(self, rows: list[Row]) -> None:
        write_table(self.warehouse, "segment", COLUMNS, rows)

    def check(self) -> tuple[int, str]:
        """Exit code of ``syncer check`` and what it says about the sync."""
        code, stdout, _ = self._run("check", "vip", "--json")
        (result,) = [c for c in json.loads(stdout)["checks"] if c["sync"] == "vip"]
        return code, "\n".join(step["result"] for step in result["steps"])

    def sync(self) -> tuple[int, dict[str, Any], str]:
        """Exit code, the run's JSON summary ({} if there is none) and all output."""
        code, stdout, out = self._run("sync", "now", "vip", "--json")
        runs = json.loads(stdout)["runs"] if stdout.strip() else [{}]
        return code, runs[0], out

    def _run(self, *args: str) -> tuple[int, str, str]:
        proc = run_cli(*args, env=self.env, cwd=self.root, timeout=TIMEOUT)
        return proc.returncode, proc.stdout, proc.stdout + proc.stderr

    def acknowledged(self) -> int:
        with sqlite3.connect(self.state) as db:
            (count,) = db.execute("select count(*) from syncer_records").fetchone()
        return int(count)

    def leases(self) -> int:
        with sqlite3.connect(self.state) as db:
            (count,) = db.execute("select count(*) from syncer_leases").fetchone()
        return int(count)

    def members(self) -> dict[str, tuple[str, str]]:
        if self.path.suffix == ".csv":
            csv.field_size_limit(2**31 - 1)  # a reader of the file needs this for big fields
            with open(self.path, newline="", encoding="utf-8") as f:
                return {r["key"]: (r["name"], r["note"]) for r in csv.DictReader(f)}
        rows = [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines()]
        return {r["key"]: (r["fields"]["name"], r["fields"]["note"] or "") for r in rows}

    def temps(self) -> list[str]:
        return sorted(p.name for p in self.path.parent.glob(".*.tmp"))


def expected(rows: list[Row]) -> dict[str, tuple[str, str]]:
    return {i: (name, note) for i, name, note in rows}


@pytest.fixture(params=["out/members.csv", "out/members.jsonl"])
def story(request: pytest.FixtureRequest, tmp_path: Path) -> Story:
    return Story(tmp_path, request.param)


@pytest.fixture
def csv_story(tmp_path: Path) -> Story:
    return Story(tmp_path)


# -- a members file the connector cannot use -------------------------------------------------


@pytest.mark.parametrize(
    ("members", "content"),
    [
        ("out/members.csv", b"email,name\nx@example.com,X\n"),  # the example
        ("out/members.jsonl", b'{"key": "m1", "fields": {}}\n{not json\n'),
    ],
    ids=["csv-without-key-column", "jsonl-broken-line"],
)
@pytest.mark.parametrize("fix", ["move-the-file-away", "point-at-a-new-path"])
def test_unusable_members_file_fails_before_anything_is_acknowledged(
    tmp_path: Path, members: str, content: bytes, fix: str
) -> None:
    """Every shape of unusable file is refused by open() and check() (see
    test_connector_file.py); here the user's whole story, state included."""
    story = Story(tmp_path, members)
    rows = segment(12)
    story.segment(rows)
    story.path.parent.mkdir(parents=True)
    story.path.write_bytes(content)

    code, out = story.check()
    assert code == 78, out
    assert story.path.name in out and not story.log.exists(), "check must not create anything"

    code, run, out = story.sync()
    assert code == 78, out
    assert story.path.name in out and "Traceback" not in out
    assert run["status"] == "failed" and run["added"] == 0
    assert story.acknowledged() == 0, "state advanced for records the file does not hold"
    assert story.path.read_bytes() == content, "the user's file was changed"
    assert not story.log.exists() or story.log.read_bytes() == b""

    if fix == "move-the-file-away":
        story.path.rename(tmp_path / "saved")
    else:
        story.point_at(members.replace("members", "fresh"))
    code, run, out = story.sync()
    assert code == 0, out
    assert run["added"] == 12
    assert story.members() == expected(rows)


def test_corrupt_change_log_tail_is_refused_before_sending(story: Story) -> None:
    story.segment(segment(3))
    assert story.sync()[0] == 0
    with open(story.log, "ab") as log:
        log.write(b'{"key": "m9", "operation": "add", "fields": {"name": "\xff"}}\n')
    story.segment(segment(4))

    code, out = story.check()
    assert code == 78 and "corrupt" in out and story.log.name in out, out
    code, _, out = story.sync()
    assert code == 78 and "corrupt" in out and story.log.name in out, out
    assert story.acknowledged() == 3 and "Traceback" not in out


# -- data syncer wrote must always read back ---------------------------------------------


AWKWARD = [
    "x" * 300_000,  # over the csv module's default 128 KiB field limit
    "carriage\rreturn",  # the csv module leaves a lone CR unquoted with a \n line end
    'line\nfeed, comma "quote" \r\n crlf',
    "nul\x00byte",
]


def test_awkward_values_survive_every_later_run(story: Story) -> None:
    """Before: a 128 KiB+ CSV cell crashed every later run after state had advanced, and a
    lone CR split a row in two."""
    rows = [(f"m{i}", f"Name {i}", note) for i, note in enumerate(AWKWARD)]
    story.segment(rows)
    assert story.sync()[0] == 0

    churned = [*rows[1:], ("m100", "New", AWKWARD[0])]
    churned[0] = (churned[0][0], "Renamed", churned[0][2])
    story.segment(churned)
    code, run, out = story.sync()
    assert code == 0, out
    assert (run["added"], run["updated"], run["removed"]) == (1, 1, 1)
    assert story.members() == expected(churned)

    code, out = story.check()
    assert code == 0, out
    code, run, out = story.sync()
    assert (code, run["unchanged"]) == (0, len(churned)), out


# -- what is found at the paths ------------------------------------------------------------


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    # bind() takes at most ~100 bytes of path: bind relative to the directory.
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        sock.bind(path.name)
    finally:
        os.chdir(cwd)
    sock.close()  # the socket file stays


def _device(path: Path) -> None:
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
    except PermissionError:
        pytest.skip("making a device node needs root")


def _link(path: Path) -> None:
    target = path.parent.parent / "attacker-target"
    target.write_bytes(b"the attacker's file\n")
    path.symlink_to(target)


def _dangling_link(path: Path) -> None:
    path.symlink_to(path.parent.parent / "attacker-new-file")


PLANTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "fifo": (_fifo, "a FIFO"),
    "socket": (_socket, "a socket"),
    "device": (_device, "a character device"),
    "symlink": (_link, "a symbolic link"),
    "dangling-symlink": (_dangling_link, "a symbolic link"),
}


@pytest.mark.parametrize(
    ("which", "plant"),
    [
        ("members", "fifo"),
        ("log", "fifo"),
        ("applied", "fifo"),
        ("log", "symlink"),
        ("log", "dangling-symlink"),
        ("members", "device"),
        ("members", "socket"),
    ],
)
def test_anything_but_a_regular_file_at_a_path_is_refused(
    csv_story: Story, which: str, plant: str
) -> None:
    story = csv_story
    rows = segment(4)
    story.segment(rows)
    target = {"members": story.path, "log": story.log, "applied": story.applied}[which]
    target.parent.mkdir(parents=True)
    make, kind = PLANTS[plant]
    make(target)
    before = sorted(p.name for p in target.parent.iterdir())

    code, out = story.check()
    assert code == 78 and target.name in out and kind in out, out

    code, run, out = story.sync()  # run_cli's timeout fails this if the run blocks
    assert (code, run["status"], run["added"]) == (78, "failed", 0), out
    assert target.name in out and kind in out and "Traceback" not in out
    assert story.acknowledged() == 0
    assert story.leases() == 0, "the lease was left held"
    assert story.temps() == []
    assert sorted(p.name for p in target.parent.iterdir()) == before, "something was created"
    if plant == "symlink":
        assert (story.root / "attacker-target").read_bytes() == b"the attacker's file\n"
    assert not (story.root / "attacker-new-file").exists()
    if plant == "fifo":
        assert stat.S_ISFIFO(os.lstat(target).st_mode)
    if plant == "device":
        assert stat.S_ISCHR(os.lstat(target).st_mode), "the device node was replaced"

    target.unlink()  # the user removes it
    code, _, out = story.sync()
    assert code == 0, out
    assert story.members() == expected(rows)


def test_symlinked_directory_is_fine(tmp_path: Path) -> None:
    """Only the file itself must not be a link: a linked directory is the user's choice."""
    (tmp_path / "real").mkdir()
    (tmp_path / "out").symlink_to(tmp_path / "real")
    story = Story(tmp_path)
    rows = segment(3)
    story.segment(rows)
    code, _, out = story.sync()
    assert code == 0, out
    assert story.members() == expected(rows)
    assert (tmp_path / "real" / "members.csv").is_file()


# -- permissions ----------------------------------------------------------------------------


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0, inherited by the CLI: whatever is private is so because syncer made it so."""
    old = os.umask(0)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.usefixtures("open_umask")
def test_files_syncer_creates_are_owner_only(tmp_path: Path) -> None:
    story = Story(tmp_path)
    del story.env["SYNCER_STATE_URL"]  # the default: .syncer/state.db in the working directory
    story.state = tmp_path / ".syncer" / "state.db"
    story.segment(segment(3))
    code, _, out = story.sync()
    assert code == 0, out

    for path in (story.path, story.log, story.applied, story.state):
        assert _mode(path) == 0o600, path
    assert _mode(story.state.parent) == 0o700
    with sqlite3.connect(story.state) as db:  # WAL mode: -wal/-shm appear with the database
        db.execute("select count(*) from syncer_records").fetchone()
        for suffix in ("-wal", "-shm"):
            assert _mode(story.state.with_name("state.db" + suffix)) == 0o600
    db.close()


@pytest.mark.usefixtures("open_umask")
def test_existing_files_keep_their_mode(tmp_path: Path) -> None:
    story = Story(tmp_path)
    story.path.parent.mkdir()
    story.path.write_text("key,name,note\n")
    os.chmod(story.path, 0o640)  # a reader group the user chose
    story.segment(segment(3))
    assert story.sync()[0] == 0
    story.segment(segment(4))
    assert story.sync()[0] == 0
    assert _mode(story.path) == 0o640
    assert _mode(story.log) == 0o600
