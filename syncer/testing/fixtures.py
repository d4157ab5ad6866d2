"""The kit's pytest fixtures. Enable them in your top-level ``conftest.py``::

    pytest_plugins = ["syncer.testing.fixtures"]

``router`` is a respx router; ``http`` an httpx client whose transport is that router, once as
the engine builds it and once plain (a connector must behave the same with both);
``engine_http`` the engine's client alone, with ``limiter`` (an ``AccountLimiter`` on
``clock``, a ``FakeClock``); ``state_url`` and ``warehouse_url`` SQLite files in
``tmp_path``; ``harness`` builds a ``SyncHarness`` (engine, mapping, ``LoadedSync``) for a
connector on that router and its own clock. A fixture of the same name in your own conftest
or module takes precedence.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

import httpx
import pytest
import respx

from syncer.connector import Connector
from syncer.ratelimit import AccountLimiter
from syncer.testing.harness import FakeClock, SyncHarness, engine_client


class HarnessFactory(Protocol):
    """``harness(connector, destination, fields=...)``: a ``SyncHarness`` on ``router``."""

    def __call__(
        self,
        connector: type[Connector],
        destination: Mapping[str, object],
        *,
        fields: Mapping[str, object],
        key: str = "email",
        key_type: str = "email",
        mode: str = "mirror",
        secrets: Mapping[str, str] | None = None,
    ) -> SyncHarness: ...


@pytest.fixture
def router() -> respx.Router:
    """A respx router; pass it in through a client's transport (``http`` does)."""
    return respx.Router(assert_all_called=False)


@pytest.fixture(params=["engine-client", "plain-client"])
def http(router: respx.Router, request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    """The engine's client (its HTTP layer raises the engine's errors) and a plain httpx
    client (the connector applies the same rules itself, as in ``check()`` or embedding)."""
    from syncer.http import make_client

    transport = httpx.MockTransport(router.handler)
    if request.param == "engine-client":
        with make_client(transport=transport) as client:
            yield client
    else:
        with httpx.Client(transport=transport) as client:
            yield client


@pytest.fixture
def clock() -> FakeClock:
    """A clock that moves only when slept on; a zero wait fails (a busy loop)."""
    return FakeClock(forbid_zero_waits=True)


@pytest.fixture
def limiter(clock: FakeClock) -> AccountLimiter:
    """An account limiter with no windows and four requests in flight, on ``clock``."""
    return AccountLimiter([], 4, clock=clock, sleep=clock.sleep)


@pytest.fixture
def engine_http(router: respx.Router, limiter: AccountLimiter) -> Iterator[httpx.Client]:
    """The engine's client on ``router`` with ``limiter``: cool-downs and pacing a connector
    asks for show up in ``clock.slept`` instead of taking time."""
    with engine_client(router, limiter=limiter) as client:
        yield client


@pytest.fixture
def state_url(tmp_path: Path) -> str:
    """A SQLite state database in ``tmp_path``."""
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def warehouse_url(tmp_path: Path) -> str:
    """A SQLite warehouse in ``tmp_path``."""
    return f"sqlite:///{tmp_path / 'warehouse.db'}"


@pytest.fixture
def harness(tmp_path: Path, router: respx.Router) -> HarnessFactory:
    """Build a ``SyncHarness`` in ``tmp_path`` sending through ``router``, on its own
    ``FakeClock`` (``harness.clock``)."""

    # The factory is SyncHarness itself with the fixture's directory and router filled in.
    return functools.partial(SyncHarness, tmp_path / "sync", router=router)
