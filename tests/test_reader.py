"""The forked warehouse reader: same chunks, same errors as reading in-process, and no child
left behind whatever happens to the run."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncer.errors import ConfigError, TransientError
from syncer.mapping import SyncDefinition
from syncer.normalize import PayloadSpill
from syncer.reader import ReadJob, can_fork_reader, encoded_chunks
from tests.conftest import write_table

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the forked reader is used on Linux only"
)

ORIGIN = "mappings/vip.yaml"


def definition(query: str = "select email, first_name, ltv from segment_vip") -> SyncDefinition:
    return SyncDefinition.model_validate(
        {
            "name": "vip",
            "source": {"query": query, "key": "email", "key_type": "email"},
            "fields": {"email": "email", "name": "first_name", "ltv": {"column": "ltv"}},
            "destination": {"connector": "file", "path": "out.csv"},
        }
    )


def warehouse(tmp_path: Path, rows: int = 2_500) -> str:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    data: list[tuple[Any, ...]] = [(f"U{i}@Example.com", f"name{i}", str(i)) for i in range(rows)]
    data[7] = (None, "no key", "1")
    data[min(1_500, rows - 1)] = ("not an email", "bad", "2")
    write_table(url, "segment_vip", ("email", "first_name", "ltv"), data)
    return url


def job(url: str, query: str | None = None, batch_size: int = 1_000) -> ReadJob:
    return ReadJob(url, definition(query) if query else definition(), ORIGIN, batch_size)


@pytest.fixture
def spill() -> Iterator[PayloadSpill]:
    payloads = PayloadSpill()
    yield payloads
    payloads.close()


def read_all(url: str, fork: bool, query: str | None = None) -> list[Any]:
    """Every chunk as plain data, with each valid row's payload read back from the spill."""
    spill = PayloadSpill()
    try:
        with encoded_chunks(job(url, query), spill, fork=fork) as chunks:
            got = list(chunks)
        spill.flush()
        return [
            (c.start, c.keys, c.hashes, c.rownums, c.invalid, [spill.read(n) for n, *_ in c.valid])
            for c in got
        ]
    finally:
        spill.close()


def test_forked_reader_gives_exactly_what_reading_in_process_gives(tmp_path: Path) -> None:
    url = warehouse(tmp_path)
    assert can_fork_reader(url)
    forked, inline = read_all(url, fork=True), read_all(url, fork=False)
    assert forked == inline
    assert [len(keys) + len(invalid) for _, keys, _, _, invalid, _ in forked] == [1000, 1000, 500]
    reasons = [reason for chunk in forked for _, _, reason in chunk[4]]
    assert reasons == ["row 8: null key (email)", "row 1501: key email: not a valid email address"]
    assert (
        forked[0][1][0] == "u0@example.com" and forked[0][5][0] == b'["U0@Example.com","0","name0"]'
    )
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("fork", [True, False])
def test_reader_errors_name_the_file_and_the_culprit_either_way(tmp_path: Path, fork: bool) -> None:
    url = warehouse(tmp_path, rows=10)
    with pytest.raises(ConfigError, match=r"vip\.yaml: fields\.name: unknown column 'first_name'"):
        read_all(url, fork, "select email, ltv from segment_vip")
    with pytest.raises(ConfigError, match=r"vip\.yaml: source\.query failed: no such table"):
        read_all(url, fork, "select email, first_name, ltv from nowhere")
    assert multiprocessing.active_children() == []


def test_a_killed_reader_is_a_temporary_failure(tmp_path: Path, spill: PayloadSpill) -> None:
    with (
        pytest.raises(TransientError, match="reader process stopped unexpectedly"),
        encoded_chunks(job(warehouse(tmp_path), batch_size=100), spill) as chunks,
    ):
        next(chunks)
        (child,) = multiprocessing.active_children()
        os.kill(child.pid, signal.SIGKILL)
        for _ in chunks:
            pass
    assert multiprocessing.active_children() == []


def test_the_reader_is_stopped_when_the_run_gives_up_early(
    tmp_path: Path, spill: PayloadSpill
) -> None:
    with (
        pytest.raises(RuntimeError, match="state database gone"),
        encoded_chunks(job(warehouse(tmp_path), batch_size=100), spill) as chunks,
    ):
        next(chunks)
        raise RuntimeError("state database gone")
    assert multiprocessing.active_children() == [], "the reader outlived its run"


def test_only_warehouses_another_process_may_open_are_read_by_a_child(tmp_path: Path) -> None:
    assert can_fork_reader(f"sqlite:///{tmp_path / 'shop.db'}")
    assert can_fork_reader("postgresql+psycopg://postgres@127.0.0.1/test")
    assert not can_fork_reader("sqlite://")
    assert not can_fork_reader("sqlite:///:memory:")
    assert not can_fork_reader(f"duckdb:///{tmp_path / 'shop.duckdb'}")
    assert not can_fork_reader("not a url")


def test_a_reader_that_cannot_connect_in_time_is_replaced_by_reading_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    import syncer.reader as reader

    url = warehouse(tmp_path, rows=50)
    real_stream = reader.stream

    def stuck_in_child(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("fresh"):  # the forked reader: hang as if on a lock before connecting
            time.sleep(60)
        return real_stream(*args, **kwargs)

    monkeypatch.setattr(reader, "stream", stuck_in_child)
    monkeypatch.setattr(reader, "READY_TIMEOUT", 0.5)
    started = time.monotonic()
    assert read_all(url, fork=True) == read_all(url, fork=False)
    assert time.monotonic() - started < 30, "the stuck reader was waited for"
    assert multiprocessing.active_children() == []


def test_no_reader_is_forked_while_another_run_is_in_progress(
    tmp_path: Path, spill: PayloadSpill
) -> None:
    from syncer.forking import run_in_progress

    small = job(warehouse(tmp_path, rows=50), batch_size=10)
    with (
        run_in_progress(),
        run_in_progress(),  # this run and another thread's
        encoded_chunks(small, spill) as chunks,
    ):
        next(chunks)
        assert multiprocessing.active_children() == []
    again = PayloadSpill()  # a spill holds one read
    try:
        with run_in_progress(), encoded_chunks(small, again) as chunks:
            next(chunks)
            assert len(multiprocessing.active_children()) == 1
    finally:
        again.close()


def test_the_daemon_reads_in_process(tmp_path: Path) -> None:
    from syncer.daemon import Daemon
    from syncer.engine import SyncEngine
    from syncer.settings import Settings

    settings = Settings(state_url=f"sqlite:///{tmp_path / 'state.db'}")  # type: ignore[arg-type]
    engine = SyncEngine(settings)
    assert engine.fork_reader is True
    Daemon(settings, engine)
    assert engine.fork_reader is False


SLOW_MAPPING = """
name: vip
source:
  query: >-
    select email, first_name, ltv from segment_vip
    where (with recursive c(x) as (select 1 union all select x + 1 from c where x < 50000000)
           select count(*) from c) > 0
  key: email
fields:
  first_name: first_name
destination:
  connector: file
  path: {out}
"""


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def test_the_reader_dies_with_a_killed_run(tmp_path: Path) -> None:
    """The real CLI, SIGKILLed while its reader waits on a slow query: the reader goes too."""
    import subprocess
    import time

    url = warehouse(tmp_path, rows=10)
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "vip.yaml").write_text(SLOW_MAPPING.format(out=tmp_path / "out.csv"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCER_")}
    env |= {
        "SYNCER_WAREHOUSE_URL": url,
        "SYNCER_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
        "SYNCER_MAPPINGS_DIR": str(mappings),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncer", "sync", "now", "vip"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (readers := _children(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(readers) == 1, "no reader process was forked"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 5
        while Path(f"/proc/{readers[0]}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        status = Path(f"/proc/{readers[0]}/stat")
        assert not status.exists() or status.read_text().split()[2] == "Z", "reader outlived run"
    finally:
        proc.kill()
        proc.wait()
    assert not (tmp_path / "out.csv").exists(), "nothing may be written from a half-read segment"


def test_a_reader_that_cannot_be_started_is_replaced_by_reading_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside a daemonic worker process multiprocessing refuses children; a fork can fail."""
    from multiprocessing.process import BaseProcess

    url = warehouse(tmp_path, rows=50)
    expected = read_all(url, fork=False)
    for error in (
        AssertionError("daemonic processes are not allowed to have children"),
        OSError(11, "EAGAIN"),
    ):

        def refuse(self: Any, error: BaseException = error) -> None:
            raise error

        monkeypatch.setattr(BaseProcess, "start", refuse)
        assert read_all(url, fork=True) == expected
    assert multiprocessing.active_children() == []
