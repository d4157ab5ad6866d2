"""The lease row: held, refused with its holder named, taken over when stale, lost when stolen."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import update

from syncer.errors import LeaseHeld
from syncer.lease import Lease
from syncer.state import leases_table, state_engine


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    if request.param == "postgres":
        return state_engine(request.getfixturevalue("postgres_url"))
    return state_engine(f"sqlite:///{tmp_path / 'state.db'}")


def test_second_holder_is_refused_with_who_and_since(engine) -> None:  # type: ignore[no-untyped-def]
    with Lease(engine, "vip"):
        with pytest.raises(LeaseHeld) as err:
            Lease(engine, "vip").acquire()
        assert "already running on" in str(err.value) and "pid" in str(err.value)
        Lease(engine, "other").acquire()  # other syncs are independent
    with Lease(engine, "vip"):  # released on exit
        pass


def test_expired_lease_is_taken_over(engine) -> None:  # type: ignore[no-untyped-def]
    now = [1000.0]
    first = Lease(engine, "vip", ttl=60, clock=lambda: now[0])
    first.acquire()
    with engine.begin() as conn:  # pretend it belongs to a live process on another host
        conn.execute(update(leases_table).values(host="elsewhere", pid=1))
    with pytest.raises(LeaseHeld):
        Lease(engine, "vip", ttl=60, clock=lambda: now[0] + 59).acquire()
    second = Lease(engine, "vip", ttl=60, clock=lambda: now[0] + 61)
    second.acquire()
    assert second.took_over == {"host": "elsewhere", "pid": 1}
    assert not first.heartbeat() and first.lost.is_set()
    assert second.heartbeat()


def test_lease_of_a_dead_process_on_this_host_is_taken_at_once(engine) -> None:  # type: ignore[no-untyped-def]
    first = Lease(engine, "vip", ttl=3600)
    first.acquire()
    with engine.begin() as conn:
        conn.execute(update(leases_table).values(pid=2**22 + 12345))  # no such process
    second = Lease(engine, "vip", ttl=3600)
    second.acquire()
    assert second.took_over is not None
