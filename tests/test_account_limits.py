"""Rate limiters are keyed by destination account and credential, never by list or audience.

Vendors count requests per account (or app, or API key), so two syncs to two lists of one
account must draw from one budget. Before the fix, the default account id digested every
setting, list and audience ids included: two syncs to two lists of one account got two
limiters and together sent twice the account's limit.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncer.connector import Connector, SyncContext, load_connector
from syncer.engine import SyncEngine
from syncer.mapping import load_file
from syncer.settings import Settings
from tests.conftest import write_table

CONTEXT = SyncContext("s", "membership", ("email",))
SECRET = "tok-SECRET-0123456789abcdef"
OTHER = "tok-OTHER-9876543210fedcba"


def connector(name: str, **settings: Any) -> Connector:
    cls = load_connector(name)
    return cls(cls.config_model(**settings), CONTEXT, httpx.Client())


# Per connector: the settings of one sync, other syncs of the same account (other lists,
# audiences, mappings, tuning: same limiter), and other accounts or credentials (another
# limiter). The credential is always SECRET, so no key may contain it.
CASES: dict[str, tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]] = {
    "hubspot": (
        {"token": SECRET, "list_id": "1"},
        [{"list_id": "2"}, {"id_property": "external_id", "id_field": "id"}],
        [{"token": OTHER}, {"base_url": "https://api.hubapi.eu"}],
    ),
    "salesforce": (  # the instance host is the org; tokens are refreshed
        {"base_url": "https://acme.my.salesforce.com", "access_token": SECRET,
         "external_id_field": "Ext__c", "campaign_id": "701000000000001"},
        [{"campaign_id": "701000000000002"}, {"external_id_field": "Other__c", "sobject": "Lead"},
         {"access_token": OTHER}],
        [{"base_url": "https://globex.my.salesforce.com"}],
    ),
    "mailchimp": (
        {"api_key": f"{SECRET}-us6", "list_id": "a1"},
        [{"list_id": "b2"}, {"tag": "vip"}],
        [{"api_key": f"{OTHER}-us6"}],
    ),
    "klaviyo": (
        {"api_key": SECRET, "list_id": "L1"},
        [{"list_id": "L2"}, {"identifier": "external_id"}],
        [{"api_key": OTHER}],
    ),
    "sendgrid": (
        {"api_key": SECRET, "list_ids": ["6c1a0f0e-7a54-4a4c-9f4a-1d2b3c4d5e6f"]},
        [{"list_ids": ["0d6f1d2a-9c3b-4e5f-8a7b-6c5d4e3f2a1b"]},
         {"custom_field_ids": {"ltv": "e1_N"}}],
        [{"api_key": OTHER}],
    ),
    "braze": (
        {"base_url": "https://rest.iad-01.braze.com", "api_key": SECRET},
        [{"subscription_group_id": "g1"}, {"identifier": "email"}],
        [{"api_key": OTHER}, {"base_url": "https://rest.fra-01.braze.eu"}],
    ),
    "meta": (
        {"access_token": SECRET, "audience_id": "111"},
        [{"audience_id": "222"}, {"region": "US"}],
        [{"access_token": OTHER}],
    ),
    "google_ads": (  # the OAuth access token is refreshed hourly: not part of the key
        {"access_token": SECRET, "developer_token": SECRET, "customer_id": "123-456-7890",
         "user_list_id": "9"},
        [{"user_list_id": "10"}, {"customer_id": "1234567890"}, {"access_token": OTHER}],
        [{"developer_token": OTHER}, {"customer_id": "999-456-7890"}],
    ),
    "linkedin": (
        {"access_token": SECRET, "segment_id": "1"},
        [{"segment_id": "2"}],
        [{"access_token": OTHER}],
    ),
    "tiktok": (
        {"access_token": SECRET, "advertiser_id": "7000", "audience_id": "1"},
        [{"audience_id": "2"}, {"region": "US"}],
        [{"access_token": OTHER}],
    ),
    "webhook": (  # the receiver is the user's server: its limits are per server
        {"url": f"https://hooks.example.com/a?token={SECRET}", "secret": SECRET},
        [{"url": "https://hooks.example.com/b"}, {"headers": {"X-Team": OTHER}}],
        [{"url": "https://other.example.com/a"}, {"url": "https://hooks.example.com:8443/a"}],
    ),
    "file": (
        {"path": "members.csv"},
        [{"batch_size": 10}],
        [{"path": "other.csv"}],
    ),
}  # fmt: skip


def test_every_connector_is_covered() -> None:
    from syncer.connector import discover

    assert {info.name for info in discover()} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_limiter_key_is_the_account_and_credential_only(name: str) -> None:
    base, same_account, other_accounts = CASES[name]
    tuning = {
        "batch_size": 7,
        "max_concurrency": 1,
        "rate_limits": [{"requests": 1, "per_seconds": 1}],
    }
    key = connector(name, **base).account_key()
    assert key.startswith(f"{name}:")
    for change in [*same_account, tuning]:  # a sync's own limits only tighten the shared one
        assert connector(name, **{**base, **change}).account_key() == key, change
    others = {connector(name, **{**base, **change}).account_key() for change in other_accounts}
    assert key not in others and len(others) == len(other_accounts)
    for text in (key, *others):
        assert SECRET not in text and OTHER not in text


# -- through the engine: two syncs to two audiences of one account -----------------------

LIMIT = 4  # requests per second: the mapping's window, tighter than TikTok's 10/s
ROWS = 10
MAPPING = """\
source: {{query: 'select id, email from s', key: id}}
fields: {{email: email}}
destination:
  connector: tiktok
  access_token: ${{{token}}}
  advertiser_id: "7000123"
  audience_id: "{audience}"
  base_url: {url}
  batch_size: 1
  rate_limits: [{{requests: {limit}, per_seconds: 1}}]
"""


class CountingVendor(ThreadingHTTPServer):
    """TikTok's ``segment/mapping`` answering ``code: 0``, noting when each call arrived."""

    daemon_threads = True

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        vendor = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                audience = body["batch_data"][0][0]["audience_ids"][0]
                with vendor.lock:
                    vendor.arrivals.append((time.monotonic(), audience))
                data = json.dumps({"code": 0, "message": "OK", "data": {}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    def busiest_second(self) -> int:
        """Most calls that arrived within any 0.95 s (a little under the window, so that
        network jitter cannot squeeze an extra call in: the limiter keeps a 1% margin)."""
        times = sorted(t for t, _ in self.arrivals)
        return max(
            (sum(1 for u in times[i:] if u - t < 0.95) for i, t in enumerate(times)), default=0
        )


@pytest.fixture
def vendor() -> Iterator[CountingVendor]:
    server = CountingVendor()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def side_by_side(engine: SyncEngine, syncs: list[Any]) -> list[Any]:
    """Run ``syncs`` at once on threads of one engine, as the daemon does."""
    results: list[Any] = []
    threads = [threading.Thread(target=lambda s=s: results.append(engine.run(s))) for s in syncs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def run_two_syncs(
    tmp_path: Path, vendor: CountingVendor, tokens: tuple[str, str], monkeypatch: Any
) -> SyncEngine:
    warehouse = f"sqlite:///{tmp_path / 'w.db'}"
    write_table(
        warehouse, "s", ("id", "email"), [(f"c{i}", f"p{i}@example.com") for i in range(ROWS)]
    )
    url = f"http://127.0.0.1:{vendor.server_address[1]}"
    syncs = []
    for name, token, audience in (("a", tokens[0], "111"), ("b", tokens[1], "222")):
        monkeypatch.setenv(f"TOKEN_{name.upper()}", token)
        path = tmp_path / f"{name}.yaml"
        path.write_text(
            MAPPING.format(token=f"TOKEN_{name.upper()}", audience=audience, url=url, limit=LIMIT)
        )
        syncs.append(load_file(path))
    for attempt in range(3):
        with vendor.lock:
            vendor.arrivals.clear()
        state = f"sqlite:///{tmp_path / f's{attempt}.db'}"
        engine = SyncEngine(
            Settings(warehouse_url=warehouse, state_url=state),
            fork_reader=False,  # two runs on threads, as the daemon runs them
        )
        results = side_by_side(engine, syncs)
        # Two runs starting together on a fresh SQLite state database can still collide
        # ("database is locked" when one upgrades a read to a write; the state database's
        # business, not the limiter's): such an attempt is made again from scratch.
        if attempt < 2 and any("state database error" in (r.message or "") for r in results):
            print(f"\n[accounts] attempt {attempt + 1}: a run hit a state database lock; again")
            continue
        break
    assert sorted(r.status for r in results) == ["succeeded", "succeeded"], [
        (r.status, r.message, r.exit_code) for r in results
    ]
    audiences = [a for _, a in sorted(vendor.arrivals)]
    assert audiences.count("111") == audiences.count("222") == ROWS
    # They really ran side by side: neither finished before the other started.
    assert audiences.index("222") < len(audiences) - audiences[::-1].index("111") - 1
    return engine


def test_two_syncs_to_two_audiences_of_one_account_stay_within_its_limit(
    tmp_path: Path, vendor: CountingVendor, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = run_two_syncs(tmp_path, vendor, (SECRET, SECRET), monkeypatch)
    busiest = vendor.busiest_second()
    print(f"\n[accounts] one token, two audiences: busiest second {busiest} calls (limit {LIMIT})")
    assert busiest <= LIMIT
    (key,) = engine._limiters  # one limiter for the account
    assert key.startswith("tiktok:127.0.0.1:") and SECRET not in key


def test_two_credentials_get_two_limiters(
    tmp_path: Path, vendor: CountingVendor, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = run_two_syncs(tmp_path, vendor, (SECRET, OTHER), monkeypatch)
    busiest = vendor.busiest_second()
    print(f"\n[accounts] two tokens: busiest second {busiest} calls ({LIMIT} per account)")
    assert len(engine._limiters) == 2
    assert busiest > LIMIT  # each account used its own budget, side by side
    assert not any(SECRET in key or OTHER in key for key in engine._limiters)


def test_a_credential_inside_a_webhook_url_never_reaches_the_key() -> None:
    hook = connector("webhook", url=f"https://u:{SECRET}@hooks.example.com/x?k={SECRET}")
    assert hook.account_key() == "webhook:https://hooks.example.com:443"
