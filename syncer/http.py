"""The one place HTTP clients are made, so tests can hand in a transport (a respx router)."""

from __future__ import annotations

import httpx

from syncer import __version__

USER_AGENT = f"syncer/{__version__}"


def make_client(
    timeout: float = 30.0, transport: httpx.BaseTransport | None = None
) -> httpx.Client:
    """An httpx client with TLS verification on (always) and syncer's user agent."""
    return httpx.Client(
        timeout=httpx.Timeout(timeout),
        transport=transport,
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,
    )
