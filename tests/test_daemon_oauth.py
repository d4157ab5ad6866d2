"""The real ``syncer daemon`` across many token lifetimes: two syncs of one HubSpot account
(two lists), tokens that live 1.5 s, ticks every second, the segment growing each round.
Every tick must succeed, the token must have been renewed many times, both syncs must have
used the same tokens (one per account in the process), and no token may reach the log."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from tests.conftest import write_table
from tests.fake_destination import Harness
from tests.fake_hubspot import FakeHubSpot
from tests.fake_oauth import TokenIssuer
from tests.test_daemon_process import running

SECRET = "daemon-client-secret-0123456789"
REFRESH = "daemon-refresh-token-9876543210"
LIFETIME = 1.5
ROUNDS = 6
MAPPING = """
name: {name}
source:
  query: select email, first_name from {table}
  key: email
  key_type: email
mode: membership
fields:
  email: {{column: email, type: email}}
  firstname: first_name
destination:
  connector: hubspot
  client_id: daemon-app
  client_secret: ${{OAUTH_CLIENT_SECRET}}
  refresh_token: ${{OAUTH_REFRESH_TOKEN}}
  token_url: {url}/oauth/v1/token
  base_url: {url}
  list_id: "{list_id}"
  batch_size: 2
schedule: every 1s
"""
SYNCS = {"oauth_a": ("segment_a", "77"), "oauth_b": ("segment_b", "78")}


@dataclass
class Root:
    """What ``DaemonProc`` reads of a harness: the directory and the environment."""

    root: Path
    env: dict[str, str]


def emails(prefix: str, count: int) -> list[tuple[str, str]]:
    return [(f"{prefix}{n}@example.com", f"N{n}") for n in range(count)]


def test_the_daemon_renews_one_shared_token_across_many_lifetimes(tmp_path: Path) -> None:
    with FakeHubSpot("static-unused") as vendor:
        assert isinstance(vendor, FakeHubSpot)
        vendor.lists["78"] = {"processingType": "MANUAL", "members": set()}
        issuer = TokenIssuer(
            "hubspot",
            client_id="daemon-app",
            client_secret=SECRET,
            refresh_token=REFRESH,
            lifetime=LIFETIME,
        )
        vendor.issuer = issuer
        mappings = tmp_path / "mappings"
        mappings.mkdir()
        warehouse = f"sqlite:///{tmp_path / 'warehouse.db'}"
        for name, (table, list_id) in SYNCS.items():
            write_table(warehouse, table, ("email", "first_name"), [])
            text = MAPPING.format(name=name, table=table, url=vendor.url, list_id=list_id)
            (mappings / f"{name}.yaml").write_text(text)
        env = {
            "SYNCER_WAREHOUSE_URL": warehouse,
            "SYNCER_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
            "SYNCER_MAPPINGS_DIR": str(mappings),
            "SYNCER_LOG_FORMAT": "json",
            "OAUTH_CLIENT_SECRET": SECRET,
            "OAUTH_REFRESH_TOKEN": REFRESH,
        }
        started = time.monotonic()
        with running(cast(Harness, Root(tmp_path, env)), {"SYNCER_SHUTDOWN_GRACE": "10"}) as d:
            for round_ in range(1, ROUNDS + 1):
                for name, (table, _) in SYNCS.items():
                    rows = emails(name[-1], 2 * round_)
                    write_table(warehouse, table, ("email", "first_name"), rows)
                deadline = time.monotonic() + 20
                wanted = {
                    list_id: {email for email, _ in emails(name[-1], 2 * round_)}
                    for name, (_, list_id) in SYNCS.items()
                }
                while {k: set(vendor.members(k)) for k in wanted} != wanted:
                    assert time.monotonic() < deadline, (round_, vendor.lists, d.stderr()[-3000:])
                    assert d.proc.poll() is None, d.stderr()[-3000:]
                    time.sleep(0.05)
            finished = d.events("tick.finished")  # before the stop (which may interrupt one)
            code, _ = d.stop()
            log = d.stderr()
            obtained = d.events("oauth.token_obtained")
        elapsed = time.monotonic() - started
        assert code == 0, log[-3000:]
        assert elapsed > 3 * LIFETIME  # the daemon outlived several tokens
        bad = [e for e in finished if e["status"] != "succeeded"]
        assert finished and not bad, bad
        assert {e["sync"] for e in finished} == set(SYNCS)
        # Renewed as it went, but one token per account: far fewer than the runs that sent.
        assert issuer.grants >= 3, issuer.grants
        assert issuer.grants <= elapsed / (LIFETIME * 0.8) + 2, (issuer.grants, elapsed)
        # Each token obtained is logged (connector, account digest, lifetime), none twice.
        assert len(obtained) == issuer.grants
        assert {e["connector"] for e in obtained} == {"hubspot"}
        assert len({e["account"] for e in obtained}) == 1
        # The two syncs shared tokens: one was used for both lists.
        used: dict[str, set[str]] = {}
        for request in vendor.requests:
            for list_id in ("77", "78"):
                if f"/lists/{list_id}/memberships" in request.url:
                    bearer = request.headers.get("Authorization", "")
                    used.setdefault(bearer, set()).add(list_id)
        assert any(lists == {"77", "78"} for lists in used.values()), used
        for secret in [*issuer.tokens, SECRET, REFRESH]:
            assert secret not in log
