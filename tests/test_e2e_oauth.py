"""Access tokens that renew themselves, through the real CLI, for each OAuth vendor.

Each vendor fake serves its token endpoint too (tests.fake_oauth): tokens live under a second,
and the fake's API answers an expired one with the vendor's 401. A sync paced to last several
token lifetimes must end with the destination equal to the segment, having renewed its token
along the way (before expiry, or once after a 401: Salesforce never says when a token
expires). Refusals (a revoked refresh token, a wrong client, an HTML page, a token endpoint
that stays down) end the run with the documented exit code and a message naming the sync and
the setting, with nothing sent and nothing recorded. No token or secret ever reaches the
output, the logs or the state database (audit log included).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.fake_google_ads import FakeGoogleAds
from tests.fake_hubspot import FakeHubSpot
from tests.fake_linkedin import FakeLinkedIn
from tests.fake_oauth import PATHS, Style, TokenIssuer, rsa_key_pair
from tests.fake_salesforce import FakeSalesforce
from tests.vendor_emulator import Reply, SyncRun, VendorEmulator

NAME = "oauth_vip"
CLIENT_ID = "app-0001.clients.example"
SECRET = "client-secret-e2e-0123456789"
REFRESH = "refresh-token-e2e-9876543210"
DEV = "dev-token-e2e-ABCDEF"
STATIC = "static-token-never-used-0000"
CAMPAIGN = "701xx000000AbCdAAK"
COLUMNS = ("id", "email", "first_name")
#: Tokens live this long; the syncs below are paced to take several lifetimes.
LIFETIME = 1.0
PACE = "  rate_limits: [{requests: 4, per_seconds: 1}]\n  batch_size: 2\n"

SOURCE = f"""
name: {NAME}
source:
  query: select id, email, first_name from segment
  key: id
mode: membership
"""
CREDENTIALS = """  client_id: {client}
  client_secret: ${{OAUTH_CLIENT_SECRET}}
  refresh_token: ${{OAUTH_REFRESH_TOKEN}}
"""
DESTINATIONS: dict[Style, str] = {
    "google": """fields:
  email: email
destination:
  connector: google_ads
  developer_token: ${{GOOGLE_ADS_DEVELOPER_TOKEN}}
  customer_id: "1234567890"
  user_list_id: "4567"
  base_url: {url}
  token_url: {url}/token
""",
    "linkedin": """fields:
  email: email
destination:
  connector: linkedin
  segment_id: "4242"
  base_url: {url}/rest
  token_url: {url}/oauth/v2/accessToken
""",
    "hubspot": """fields:
  email: {{column: email, type: email}}
  firstname: first_name
destination:
  connector: hubspot
  list_id: "77"
  id_field: email
  base_url: {url}
  token_url: {url}/oauth/v1/token
""",
    "salesforce": f"""fields:
  Email: {{{{column: email, type: email}}}}
  LastName: first_name
destination:
  connector: salesforce
  login_url: {{url}}
  external_id_field: Warehouse_Id__c
  campaign_id: {CAMPAIGN}
""",
}


def people(count: int) -> list[tuple[str, str, str]]:
    return [(f"id{n:02}", f"person{n}@example.com", f"P{n}") for n in range(count)]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_vendor(style: Style) -> VendorEmulator:
    if style == "google":
        return FakeGoogleAds(STATIC, DEV, "1234567890", "4567")
    if style == "linkedin":
        return FakeLinkedIn(STATIC, "4242")
    if style == "hubspot":
        return FakeHubSpot(STATIC)
    return FakeSalesforce(STATIC, CAMPAIGN)


def holds(style: Style, vendor: Any) -> set[str]:
    """The members the destination holds, as the ids ``expected`` gives."""
    if style == "google":
        return set(vendor.hashes())
    if style == "linkedin":
        return set(vendor.email_hashes())
    if style == "hubspot":
        return set(vendor.members())
    return set(vendor.members())


def expected(style: Style, rows: list[tuple[str, str, str]]) -> set[str]:
    if style in ("google", "linkedin"):
        return {sha(email) for _, email, _ in rows}
    if style == "hubspot":
        return {email for _, email, _ in rows}
    return {key for key, _, _ in rows}


@dataclass
class World:
    style: Style
    vendor: Any
    issuer: TokenIssuer
    run: SyncRun
    outputs: list[str] = field(default_factory=list)

    def sync(self, expect: int) -> dict[str, Any]:
        proc = self.run.cli("sync", "now", NAME, "--json")
        self.outputs += [proc.stdout, proc.stderr]
        assert proc.returncode == expect, (proc.returncode, proc.stdout, proc.stderr[-3000:])
        summary: dict[str, Any] = json.loads(proc.stdout)["runs"][0]
        return summary

    def api_requests(self) -> list[Any]:
        return [r for r in self.vendor.requests if not self.vendor.is_token_request(r)]

    def records(self) -> int:
        """Rows of the state database's records table, in-flight marks included."""
        engine = sa.create_engine(self.run.env["SYNCER_STATE_URL"])
        with engine.connect() as conn:
            count = conn.execute(sa.text("select count(*) from syncer_records")).scalar_one()
        engine.dispose()
        return int(count)

    def assert_no_secrets_leaked(self) -> None:
        """No token issued, client secret or refresh token in output, logs or state files."""
        texts = "\n".join(self.outputs)
        state = b"".join(p.read_bytes() for p in self.run.root.glob("state.db*"))
        for secret in [*self.issuer.tokens, SECRET, REFRESH]:
            assert secret not in texts, secret
            assert secret.encode() not in state, secret


@contextmanager
def world(
    tmp_path: Path,
    style: Style,
    *,
    paced: bool = True,
    credentials: str | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[World]:
    vendor = make_vendor(style)
    with vendor:
        issuer = TokenIssuer(
            style,
            client_id=CLIENT_ID,
            client_secret=None if style == "salesforce" else SECRET,
            refresh_token=REFRESH,
            lifetime=LIFETIME,
        )
        issuer.instance_url = vendor.url
        vendor.issuer = issuer
        creds = credentials if credentials is not None else CREDENTIALS.format(client=CLIENT_ID)
        pace = PACE if paced else ""
        if paced and style == "salesforce":
            # Salesforce never says when a token expires: it is used until refused, so a
            # request must not wait in the limiter longer than a token lives (minutes, in
            # real orgs; under a second here): one request in flight keeps waits short.
            pace += "  max_concurrency: 1\n"
        mapping = SOURCE + DESTINATIONS[style].format(url=vendor.url) + creds + pace
        run = SyncRun(
            tmp_path,
            mapping,
            NAME,
            env={
                "OAUTH_CLIENT_SECRET": SECRET,
                "OAUTH_REFRESH_TOKEN": REFRESH,
                "GOOGLE_ADS_DEVELOPER_TOKEN": DEV,
                "SYNCER_LOG_LEVEL": "debug",
                "SYNCER_LOG_FORMAT": "json",
                **(env or {}),
            },
        )
        yield World(style, vendor, issuer, run)


STYLES: list[Style] = ["google", "linkedin", "hubspot", "salesforce"]


@pytest.mark.parametrize("style", STYLES)
def test_a_sync_longer_than_its_tokens_renews_them_and_delivers_everything(
    tmp_path: Path, style: Style
) -> None:
    rows = people(12)
    with world(tmp_path, style) as w:
        w.run.segment(COLUMNS, rows)
        summary = w.sync(0)
        if style == "google":  # the job runs between runs: the next runs poll it
            assert summary["status"] == "submitted"
            for _ in range(3):
                summary = w.sync(0)
                if summary["status"] != "waiting":
                    break
        assert summary["status"] == "succeeded", summary
        assert holds(style, w.vendor) == expected(style, rows)
        # The run outlived its first token. Where the vendor says how long a token lives, it
        # was renewed when due, so no request ever carried an expired one; Salesforce says
        # nothing: its token was renewed once the API refused it (401), and the request sent
        # again. Either way no record failed for it (exit 0).
        assert w.issuer.grants >= 2, w.issuer.grants
        if style == "salesforce":
            assert w.vendor.unauthorized >= 1
        else:
            assert w.vendor.unauthorized == 0, (w.vendor.unauthorized, w.issuer.grants)
        # Another sync of the same account, a later run: a token again, no refusal.
        w.run.segment(COLUMNS, rows[:10])
        assert w.sync(0)["status"] in ("succeeded", "submitted")
        proc = w.run.cli("check", NAME)
        w.outputs += [proc.stdout, proc.stderr]
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs = w.run.cli("runs", "--json")
        w.outputs += [runs.stdout, runs.stderr]
        w.assert_no_secrets_leaked()


def test_a_401_renews_the_token_once_and_the_batch_goes_through(tmp_path: Path) -> None:
    rows = people(3)
    with world(tmp_path, "hubspot", paced=False) as w:
        w.run.segment(COLUMNS, rows)
        w.vendor.fail_next(
            r"/batch/upsert$",
            Reply(401, {"status": "error", "category": "EXPIRED_AUTHENTICATION"}),
        )
        summary = w.sync(0)
        assert summary["added"] == 3 and summary["failed"] == 0
        assert w.issuer.grants == 2  # the first token, and one renewal after the 401
        assert holds("hubspot", w.vendor) == expected("hubspot", rows)
        w.assert_no_secrets_leaked()


def test_salesforce_jwt_bearer_flow(tmp_path: Path) -> None:
    pem, public = rsa_key_pair()
    creds = (
        f"  client_id: {CLIENT_ID}\n  username: integration@example.com\n"
        "  private_key: ${SALESFORCE_PRIVATE_KEY}\n"
    )
    rows = people(8)
    # The key on one line with \n escapes, as a .env file holds it.
    env = {"SALESFORCE_PRIVATE_KEY": pem.replace("\n", "\\n")}
    with world(tmp_path, "salesforce", credentials=creds, env=env) as w:
        w.issuer.public_key = public
        w.issuer.username = "integration@example.com"
        w.issuer.audience = w.vendor.url
        w.issuer.refresh_token = None
        w.run.segment(COLUMNS, rows)
        summary = w.sync(0)
        assert summary["added"] == 8
        assert holds("salesforce", w.vendor) == expected("salesforce", rows)
        assert w.issuer.grants >= 2 and w.issuer.refusals == 0
        # The user's pre-authorisation withdrawn: the next run is refused, naming the JWT.
        w.issuer.revoke()
        w.run.segment(COLUMNS, people(9))
        proc = w.run.cli("sync", "now", NAME)
        assert proc.returncode == 78, proc.stderr
        said = proc.stdout + proc.stderr
        assert "destination.username and destination.private_key" in said
        assert "BEGIN PRIVATE KEY" not in said and pem.splitlines()[1] not in said


@pytest.mark.parametrize("style", STYLES)
def test_a_revoked_refresh_token_is_a_configuration_error(tmp_path: Path, style: Style) -> None:
    with world(tmp_path, style, paced=False) as w:
        w.issuer.revoke()
        w.run.segment(COLUMNS, people(3))
        proc = w.run.cli("sync", "now", NAME)
        w.outputs += [proc.stdout, proc.stderr]
        assert proc.returncode == 78, (proc.stdout, proc.stderr[-2000:])
        said = proc.stdout + proc.stderr
        assert f"sync '{NAME}'" in said
        assert "refused the grant (invalid_grant" in said
        assert "destination.refresh_token" in said
        assert w.api_requests() == [] and w.records() == 0  # nothing sent, marked or recorded
        checked = w.run.cli("check", NAME)
        w.outputs += [checked.stdout, checked.stderr]
        assert checked.returncode == 78 and "destination.refresh_token" in checked.stdout + (
            checked.stderr
        )
        w.assert_no_secrets_leaked()


def test_a_wrong_client_secret_names_the_client_settings(tmp_path: Path) -> None:
    with world(tmp_path, "google", paced=False, env={"OAUTH_CLIENT_SECRET": "wrong-secret"}) as w:
        w.run.segment(COLUMNS, people(3))
        proc = w.run.cli("sync", "now", NAME)
        assert proc.returncode == 78
        said = proc.stdout + proc.stderr
        assert "refused the client (invalid_client" in said
        assert "destination.client_id and destination.client_secret" in said
        assert "wrong-secret" not in said
        assert w.api_requests() == []


def test_a_token_endpoint_answering_html_is_a_configuration_error(tmp_path: Path) -> None:
    page = b"<!DOCTYPE html><html><body>Sign in to continue</body></html>"
    with world(tmp_path, "linkedin", paced=False) as w:
        w.vendor.fail_next(
            PATHS["linkedin"], Reply(200, page, headers={"Content-Type": "text/html"})
        )
        w.run.segment(COLUMNS, people(3))
        proc = w.run.cli("sync", "now", NAME)
        assert proc.returncode == 78, proc.stderr[-2000:]
        said = proc.stdout + proc.stderr
        assert "with an HTML page instead of a JSON token" in said
        assert "destination.token_url" in said and "Sign in" not in said
        assert w.api_requests() == [] and w.records() == 0


def test_a_token_endpoint_that_stays_down_is_a_temporary_failure(tmp_path: Path) -> None:
    env = {"SYNCER_RETRY_ATTEMPTS": "2"}
    with world(tmp_path, "hubspot", paced=False, env=env) as w:
        w.vendor.fail_next(PATHS["hubspot"], Reply(503, {"message": "down"}), times=50)
        w.run.segment(COLUMNS, people(3))
        proc = w.run.cli("sync", "now", NAME, "--json")
        assert proc.returncode == 75, proc.stderr[-2000:]
        summary = json.loads(proc.stdout)["runs"][0]
        assert summary["status"] == "failed" and summary["added"] == 0
        assert summary["message"].startswith(f"sync '{NAME}': hubspot token endpoint")
        assert "answered HTTP 503; no access token yet" in summary["message"]
        # Retried by the engine's rules, then left: nothing marked, sent or recorded.
        assert len(w.vendor.requests_to(PATHS["hubspot"])) == 2
        assert w.api_requests() == [] and w.records() == 0
        # Back up: the next run delivers everything.
        while w.vendor.pending_faults():
            w.vendor._faults.pop()
        assert w.sync(0)["added"] == 3


def test_static_tokens_and_refresh_credentials_are_not_mixed(tmp_path: Path) -> None:
    creds = CREDENTIALS.format(client=CLIENT_ID) + "  token: ${OAUTH_REFRESH_TOKEN}\n"
    with world(tmp_path, "hubspot", paced=False, credentials=creds) as w:
        proc = w.run.cli("check", NAME, "--json")
        assert proc.returncode == 78
        said = proc.stdout + proc.stderr
        assert "give either token or client_id, client_secret, refresh_token, not both" in said
        assert REFRESH not in said
