"""Lists created when missing, through the real CLI against each vendor's local fake.

A sync names its list (``list_name``, ``audience_name``...) with ``create_if_missing: true``.
For every vendor: the first run creates the list exactly once and sends to the new id, later
runs reuse the id stored in the state database (no lookup); ``plan`` says it would create the
list and creates nothing; a process killed right after the vendor saw the create request
leaves a list the next run finds by name instead of creating a second; two processes naming
the same list at once create it at most once; a name the vendor has twice is a configuration
error (exit 78) naming the sync, the name and both ids, and nothing is created.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pytest
import sqlalchemy as sa

from tests.fake_google_ads import FakeGoogleAds
from tests.fake_hubspot import FakeHubSpot
from tests.fake_klaviyo import FakeKlaviyo
from tests.fake_linkedin import FakeLinkedIn
from tests.fake_mailchimp import FakeMailchimp
from tests.fake_meta import FakeMeta
from tests.fake_salesforce import FakeSalesforce
from tests.fake_sendgrid import FakeSendGrid
from tests.fake_tiktok import FakeTikTok
from tests.vendor_emulator import SyncRun, VendorEmulator

#: How long any observable event may take on a loaded machine.
DEADLINE = 90.0
LIST_NAME = "VIP customers"
ROWS = [(f"person{n:02}@example.com", f"Name{n}") for n in range(6)]
EMAILS = {row[0] for row in ROWS}


@dataclass
class Vendor:
    """One vendor's fake and a mapping that names its list instead of giving its id."""

    name: str
    fake: Callable[[], VendorEmulator]
    env: dict[str, str]
    #: The destination block's lines naming the list (``{url}`` is the fake's base URL).
    destination: str
    #: Path (regex) and method of the creation request.
    create: tuple[str, str]
    #: How many lookups by name the fake answered.
    lookups: Callable[[Any], int]
    #: The emails on the list with id ``list_id`` at the fake.
    members: Callable[[Any, str], set[str]]
    #: Add a list named ``name`` to the fake; returns its id.
    seed: Callable[[Any, str], str]
    #: The fake's list ids by name.
    ids_named: Callable[[Any, str], list[str]]
    #: Hold the answer to a creation (the list exists meanwhile) for this many seconds.
    hold: Callable[[Any, float], None]
    mode: str = "mirror"
    fields: str = "email: {column: email, type: email}\n  first_name: first_name"


def _klaviyo_seed(vendor: FakeKlaviyo, name: str) -> str:
    list_id = f"SEED{len(vendor.lists):03d}"
    vendor.lists[list_id] = name
    return list_id


def _klaviyo_members(vendor: FakeKlaviyo, list_id: str) -> set[str]:
    return vendor.member_emails() if vendor.list_id == list_id else set()


def _hold(vendor: Any, seconds: float) -> None:
    vendor.create_delay = seconds


KLAVIYO = Vendor(
    name="klaviyo",
    fake=lambda: FakeKlaviyo("pk_named_0123456789", None),
    env={"KLAVIYO_API_KEY": "pk_named_0123456789"},
    destination="""
  connector: klaviyo
  api_key: ${{KLAVIYO_API_KEY}}
  base_url: {url}
  list_name: {list_name}
  create_if_missing: true
  bulk_threshold: 5
  poll_interval: 0.05""",
    create=(r"/api/lists$", "POST"),
    lookups=lambda v: len(v.requests_to(r"/api/lists$", "GET")),
    members=_klaviyo_members,
    seed=_klaviyo_seed,
    ids_named=lambda v, name: [i for i, n in v.lists.items() if n == name],
    hold=_hold,
)


def _meta_members(vendor: FakeMeta, audience_id: str) -> set[str]:
    if vendor.audience_id != audience_id:
        return set()
    return _by_hash(set(vendor.members()))


def _meta_seed(vendor: FakeMeta, name: str) -> str:
    audience_id = str(vendor._next_audience)
    vendor._next_audience += 1
    vendor.audiences[audience_id] = (name, "USER_PROVIDED_ONLY")
    return audience_id


META = Vendor(
    name="meta",
    fake=lambda: FakeMeta("EAAB-named-token-0123456789", None, account="1234567"),
    env={"META_ACCESS_TOKEN": "EAAB-named-token-0123456789"},
    destination="""
  connector: meta
  access_token: ${{META_ACCESS_TOKEN}}
  base_url: {url}
  ad_account_id: act_1234567
  audience_name: {list_name}
  create_if_missing: true
  customer_file_source: USER_PROVIDED_ONLY""",
    create=(r"/act_1234567/customaudiences$", "POST"),
    lookups=lambda v: len(v.requests_to(r"/act_1234567/customaudiences$", "GET")),
    members=_meta_members,
    seed=_meta_seed,
    ids_named=lambda v, name: [i for i, (n, _) in sorted(v.audiences.items()) if n == name],
    hold=_hold,
    fields="email: email",
)


def _by_hash(hashes: set[str]) -> set[str]:
    known = {hashlib.sha256(e.encode()).hexdigest(): e for e in EMAILS}
    return {known.get(h, h) for h in hashes}


def _google_seed(vendor: FakeGoogleAds, name: str) -> str:
    list_id = str(next(vendor._list_ids))
    vendor.user_lists[list_id] = {"name": name, "type": "CRM_BASED"}
    return list_id


GOOGLE_ADS = Vendor(
    name="google_ads",
    fake=lambda: FakeGoogleAds("ya29.named-token", "dev-named-token", "1234567890", None),
    env={
        "GOOGLE_ADS_ACCESS_TOKEN": "ya29.named-token",
        "GOOGLE_ADS_DEVELOPER_TOKEN": "dev-named-token",
    },
    destination="""
  connector: google_ads
  access_token: ${{GOOGLE_ADS_ACCESS_TOKEN}}
  developer_token: ${{GOOGLE_ADS_DEVELOPER_TOKEN}}
  customer_id: "123-456-7890"
  base_url: {url}
  user_list_name: {list_name}
  create_if_missing: true
  membership_life_span: 540
  ad_user_data: GRANTED
  ad_personalization: GRANTED""",
    create=(r"/userLists:mutate$", "POST"),
    lookups=lambda v: sum(
        "user_list.name =" in str((r.json() or {}).get("query"))
        for r in v.requests_to(r"/googleAds:search$", "POST")
    ),
    members=lambda v, list_id: _by_hash(v.sent_to(list_id)),
    seed=_google_seed,
    ids_named=lambda v, name: [i for i, f in sorted(v.user_lists.items()) if f["name"] == name],
    hold=_hold,
    fields="email: email",
)


def _sendgrid_seed(vendor: FakeSendGrid, name: str) -> str:
    list_id = f"00000000-0000-4000-8000-{len(vendor.lists):012d}"
    vendor.lists[list_id] = name
    return list_id


SENDGRID = Vendor(
    name="sendgrid",
    fake=lambda: FakeSendGrid("SG.named-key-0123456789", None),
    env={"SENDGRID_API_KEY": "SG.named-key-0123456789"},
    destination="""
  connector: sendgrid
  api_key: ${{SENDGRID_API_KEY}}
  base_url: {url}
  list_name: {list_name}
  create_if_missing: true
  poll_interval: 0.05""",
    create=(r"/v3/marketing/lists$", "POST"),
    lookups=lambda v: len(v.requests_to(r"/v3/marketing/lists$", "GET")),
    members=lambda v, list_id: set(v.members()) if v.list_id == list_id else set(),
    seed=_sendgrid_seed,
    ids_named=lambda v, name: [i for i, n in sorted(v.lists.items()) if n == name],
    hold=_hold,
)


def _mailchimp_members(vendor: FakeMailchimp, segment_id: str) -> set[str]:
    segment = vendor.segments.get(int(segment_id))
    return set(vendor.members(segment.name)) if segment is not None else set()


MAILCHIMP = Vendor(
    name="mailchimp",
    fake=lambda: FakeMailchimp("mc-named-key-us21", "aud1"),
    env={"MAILCHIMP_API_KEY": "mc-named-key-us21"},
    destination="""
  connector: mailchimp
  api_key: ${{MAILCHIMP_API_KEY}}
  base_url: {url}/3.0
  list_id: aud1
  segment_name: {list_name}
  create_if_missing: true""",
    create=(r"/lists/aud1/segments$", "POST"),
    lookups=lambda v: len(v.requests_to(r"/lists/aud1/segments$", "GET")),
    members=_mailchimp_members,
    seed=lambda v, name: str(v.add_segment(name).id),
    ids_named=lambda v, name: [str(i) for i, g in sorted(v.segments.items()) if g.name == name],
    hold=_hold,
    fields="email: {column: email, type: email}\n  FNAME: first_name",
)


def _hubspot_members(vendor: FakeHubSpot, list_id: str) -> set[str]:
    found = vendor.lists.get(list_id)
    held = found["members"] if found else set()
    return {vendor.contacts[i]["email"] for i in held}


def _hubspot_seed(vendor: FakeHubSpot, name: str) -> str:
    list_id = str(max(int(i) for i in vendor.lists) + 1)
    vendor.lists[list_id] = {"processingType": "MANUAL", "members": set(), "name": name}
    return list_id


HUBSPOT = Vendor(
    name="hubspot",
    fake=lambda: FakeHubSpot("pat-named-token"),
    env={"HUBSPOT_TOKEN": "pat-named-token"},
    destination="""
  connector: hubspot
  token: ${{HUBSPOT_TOKEN}}
  base_url: {url}
  list_name: {list_name}
  create_if_missing: true""",
    create=(r"/crm/v3/lists$", "POST"),
    lookups=lambda v: len(v.requests_to(r"/crm/v3/lists/search$", "POST")),
    members=_hubspot_members,
    seed=_hubspot_seed,
    ids_named=lambda v, name: [
        i for i, f in sorted(v.lists.items(), key=lambda x: int(x[0])) if f.get("name") == name
    ],
    hold=_hold,
    fields="email: {column: email, type: email}\n  firstname: first_name",
)


def _linkedin_seed(vendor: FakeLinkedIn, name: str) -> str:
    vendor._next_segment += 1
    segment_id = str(vendor._next_segment)
    vendor.segments[segment_id] = name
    return segment_id


LINKEDIN = Vendor(
    name="linkedin",
    fake=lambda: FakeLinkedIn("li-named-token", None, account="5005"),
    env={"LINKEDIN_ACCESS_TOKEN": "li-named-token"},
    destination="""
  connector: linkedin
  access_token: ${{LINKEDIN_ACCESS_TOKEN}}
  base_url: {url}/rest
  ad_account_id: "5005"
  segment_name: {list_name}
  create_if_missing: true
  source_platform: SYNCER_TEST""",
    create=(r"/rest/dmpSegments$", "POST"),
    lookups=lambda v: len(v.requests_to(r"/rest/dmpSegments$", "GET")),
    members=lambda v, segment_id: (
        _by_hash(v.email_hashes()) if v.segment_id == segment_id else set()
    ),
    seed=_linkedin_seed,
    ids_named=lambda v, name: [i for i, n in sorted(v.segments.items()) if n == name],
    hold=_hold,
    fields="email: email",
)


def _tiktok_seed(vendor: FakeTikTok, name: str) -> str:
    vendor._next_audience += 1
    audience_id = str(vendor._next_audience)
    vendor.audiences[audience_id] = name
    return audience_id


TIKTOK = Vendor(
    name="tiktok",
    fake=lambda: FakeTikTok("tt-named-token", "7000", None),
    env={"TIKTOK_ACCESS_TOKEN": "tt-named-token"},
    destination="""
  connector: tiktok
  access_token: ${{TIKTOK_ACCESS_TOKEN}}
  base_url: {url}/open_api/v1.3
  advertiser_id: "7000"
  audience_name: {list_name}
  create_if_missing: true""",
    create=(r"/segment/audience/$", "POST"),
    lookups=lambda v: len(v.requests_to(r"/dmp/custom_audience/list/$", "GET")),
    members=lambda v, audience_id: (
        _by_hash(set(v.members())) if v.audience_id == audience_id else set()
    ),
    seed=_tiktok_seed,
    ids_named=lambda v, name: [i for i, n in sorted(v.audiences.items()) if n == name],
    hold=_hold,
    fields="email: email",
)


def _salesforce_seed(vendor: FakeSalesforce, name: str) -> str:
    campaign_id = vendor._id("701")
    vendor.campaigns[campaign_id] = name
    return campaign_id


SALESFORCE = Vendor(
    name="salesforce",
    fake=lambda: FakeSalesforce("00D-named-token", None),
    env={"SALESFORCE_ACCESS_TOKEN": "00D-named-token"},
    destination="""
  connector: salesforce
  base_url: {url}
  access_token: ${{SALESFORCE_ACCESS_TOKEN}}
  external_id_field: Warehouse_Id__c
  campaign_name: {list_name}
  create_if_missing: true""",
    create=(r"/sobjects/Campaign$", "POST"),
    lookups=lambda v: sum(
        "FROM Campaign WHERE Name" in unquote_plus(r.url) for r in v.requests_to(r"/query$", "GET")
    ),
    members=lambda v, campaign_id: set(v.members()) if v.campaign_id == campaign_id else set(),
    seed=_salesforce_seed,
    ids_named=lambda v, name: [i for i, n in sorted(v.campaigns.items()) if n == name],
    hold=_hold,
    fields="Email: {column: email, type: email}\n  LastName: first_name",
)

VENDORS = [
    KLAVIYO,
    META,
    GOOGLE_ADS,
    SENDGRID,
    MAILCHIMP,
    HUBSPOT,
    LINKEDIN,
    TIKTOK,
    SALESFORCE,
]


def mapping(vendor: Vendor, sync: str, url: str) -> str:
    destination = vendor.destination.format(url=url, list_name=json.dumps(LIST_NAME))
    return f"""
name: {sync}
source:
  query: select email, first_name from segment
  key: email
  key_type: email
mode: {vendor.mode}
fields:
  {vendor.fields}
destination:{destination}
"""


@contextmanager
def world(vendor: Vendor, tmp_path: Path, sync: str = "named") -> Iterator[tuple[Any, SyncRun]]:
    with vendor.fake() as fake:
        run = SyncRun(tmp_path, mapping(vendor, sync, fake.url), sync, env=dict(vendor.env))
        run.segment(("email", "first_name"), ROWS)
        yield fake, run


def creates(vendor: Vendor, fake: VendorEmulator) -> int:
    return len(fake.requests_to(*vendor.create))


def stored(run: SyncRun) -> list[tuple[str, str, str | None]]:
    """The state database's rows for named lists: (name, status, id)."""
    engine = sa.create_engine(run.env["SYNCER_STATE_URL"])
    try:
        with engine.connect() as conn:
            query = "select name, status, destination_id from syncer_destinations"
            return [(row[0], row[1], row[2]) for row in conn.execute(sa.text(query))]
    finally:
        engine.dispose()


def popen(run: SyncRun, sync: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCER_")}
    env.update(run.env)
    return subprocess.Popen(
        [sys.executable, "-m", "syncer", "sync", "now", sync, "--json"],
        cwd=run.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(happened: Callable[[], bool], proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + DEADLINE
    while not happened():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the process ended first: {out}{err}")
        assert time.monotonic() < deadline, "the awaited event never came"
        time.sleep(0.005)


@pytest.mark.parametrize("vendor", VENDORS, ids=lambda v: v.name)
def test_first_run_creates_the_list_once_and_sends_to_it(vendor: Vendor, tmp_path: Path) -> None:
    with world(vendor, tmp_path) as (fake, run):
        code, doc = run.sync()
        assert code == 0, doc
        assert creates(vendor, fake) == 1
        (list_id,) = vendor.ids_named(fake, LIST_NAME)
        assert vendor.members(fake, list_id) == EMAILS
        assert stored(run) == [(LIST_NAME, "created", list_id)]

        # Later runs use the stored id: no lookup, no creation.
        looked = vendor.lookups(fake)
        run.segment(("email", "first_name"), ROWS[:4])
        code, doc = run.sync()
        for _ in range(5):  # Google Ads: runs wait for the first run's job to finish
            if doc["runs"][0]["status"] != "waiting":
                break
            code, doc = run.sync()
        assert code == 0, doc
        assert creates(vendor, fake) == 1
        assert vendor.lookups(fake) == looked
        assert vendor.members(fake, list_id) == {row[0] for row in ROWS[:4]}


@pytest.mark.parametrize("vendor", VENDORS, ids=lambda v: v.name)
def test_plan_says_it_would_create_the_list_and_creates_nothing(
    vendor: Vendor, tmp_path: Path
) -> None:
    with world(vendor, tmp_path) as (fake, run):
        proc = run.cli("plan", "named")
        assert proc.returncode == 0, proc.stderr
        assert f"would create {vendor_kind(vendor)} '{LIST_NAME}'" in proc.stdout
        proc = run.cli("plan", "named", "--json")
        doc = json.loads(proc.stdout)
        assert doc["lists"] == [
            {
                "kind": vendor_kind(vendor),
                "name": LIST_NAME,
                "action": "create",
                "id": None,
                "resend_members": True,
            }
        ]
        assert doc["add"] == len(ROWS)
        assert creates(vendor, fake) == 0
        assert vendor.ids_named(fake, LIST_NAME) == []

        # Once it exists, plan names its id.
        code, _ = run.sync()
        assert code == 0
        (list_id,) = vendor.ids_named(fake, LIST_NAME)
        doc = json.loads(run.cli("plan", "named", "--json").stdout)
        assert doc["lists"][0]["action"] == "use" and doc["lists"][0]["id"] == list_id


@pytest.mark.parametrize("vendor", VENDORS, ids=lambda v: v.name)
def test_killed_after_the_create_request_the_next_run_finds_the_list(
    vendor: Vendor, tmp_path: Path
) -> None:
    with world(vendor, tmp_path) as (fake, run):
        vendor.hold(fake, 60.0)  # the vendor creates it; its answer never reaches us
        proc = popen(run, "named")
        wait_for(lambda: creates(vendor, fake) == 1, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert stored(run) == [(LIST_NAME, "creating", None)]
        vendor.hold(fake, 0.0)

        code, doc = run.sync()
        assert code == 0, doc
        assert creates(vendor, fake) == 1  # found by name, not created again
        (list_id,) = vendor.ids_named(fake, LIST_NAME)
        assert vendor.members(fake, list_id) == EMAILS
        assert stored(run) == [(LIST_NAME, "created", list_id)]


@pytest.mark.parametrize("vendor", VENDORS, ids=lambda v: v.name)
def test_two_processes_at_once_create_the_list_at_most_once(vendor: Vendor, tmp_path: Path) -> None:
    with world(vendor, tmp_path, sync="first") as (fake, run):
        (run.mappings / "second.yaml").write_text(mapping(vendor, "second", fake.url))
        vendor.hold(fake, 1.0)  # a slow creation: the other process finds the claim taken
        procs = [popen(run, "first"), popen(run, "second")]
        outputs = [proc.communicate(timeout=DEADLINE) for proc in procs]
        # Google Ads runs one job per list at a time: the other sync's job may be refused
        # (CONCURRENT_MODIFICATION) until the first has run. Creation is what counts here.
        allowed = {0, 75} if vendor.name == "google_ads" else {0}
        for proc, (out, err) in zip(procs, outputs, strict=True):
            assert proc.returncode in allowed, out + err
        assert creates(vendor, fake) == 1
        assert vendor.lookups(fake) == 1  # only the process holding the claim looked
        (list_id,) = vendor.ids_named(fake, LIST_NAME)
        if isinstance(fake, FakeGoogleAds):
            assert {job["userList"] for job in fake.jobs.values()} == {fake.list_name}
        assert vendor.members(fake, list_id) == EMAILS
        assert stored(run) == [(LIST_NAME, "created", list_id)]


@pytest.mark.parametrize("vendor", VENDORS, ids=lambda v: v.name)
def test_a_name_the_vendor_has_twice_is_a_config_error(vendor: Vendor, tmp_path: Path) -> None:
    with world(vendor, tmp_path) as (fake, run):
        first, second = vendor.seed(fake, LIST_NAME), vendor.seed(fake, LIST_NAME)
        proc = run.cli("sync", "now", "named")
        assert proc.returncode == 78, proc.stdout + proc.stderr
        said = proc.stdout + proc.stderr
        assert "named" in said and LIST_NAME in said
        assert first in said and second in said
        assert creates(vendor, fake) == 0
        assert stored(run) == []
        assert vendor.ids_named(fake, LIST_NAME) == [first, second]
        proc = run.cli("plan", "named")
        assert proc.returncode == 78 and first in proc.stdout + proc.stderr


def vendor_kind(vendor: Vendor) -> str:
    kinds = {
        "meta": "custom audience",
        "google_ads": "user list",
        "mailchimp": "static segment",
        "linkedin": "DMP segment",
        "tiktok": "custom audience",
        "salesforce": "campaign",
    }
    return kinds.get(vendor.name, "list")


def test_meta_without_a_customer_file_source_says_which_values(tmp_path: Path) -> None:
    with world(META, tmp_path) as (fake, run):
        text = mapping(META, "named", fake.url).replace(
            "  customer_file_source: USER_PROVIDED_ONLY\n", "\n"
        )
        (run.mappings / "named.yaml").write_text(text)
        proc = run.cli("sync", "now", "named")
        said = proc.stdout + proc.stderr
        assert proc.returncode == 78, said
        assert "customer_file_source" in said
        for value in ("USER_PROVIDED_ONLY", "PARTNER_PROVIDED_ONLY", "BOTH_USER_AND_PARTNER"):
            assert value in said
        assert fake.requests == []


def test_meta_terms_not_accepted_say_where_to_accept_them(tmp_path: Path) -> None:
    with world(META, tmp_path) as (fake, run):
        assert isinstance(fake, FakeMeta)
        fake.terms_accepted = False
        proc = run.cli("sync", "now", "named")
        said = proc.stdout + proc.stderr
        assert proc.returncode == 78, said
        assert "Custom Audience terms" in said and "tos/?act=1234567" in said
        assert fake.audiences == {} and stored(run) == []
        assert "EAAB-named-token" not in said

        fake.terms_accepted = True  # a person accepted them: the next run creates it
        code, doc = run.sync()
        assert code == 0, doc
        assert len(fake.audiences) == 1


def test_google_ads_without_a_membership_life_span_says_what_it_takes(tmp_path: Path) -> None:
    with world(GOOGLE_ADS, tmp_path) as (fake, run):
        text = mapping(GOOGLE_ADS, "named", fake.url).replace("  membership_life_span: 540\n", "")
        (run.mappings / "named.yaml").write_text(text)
        proc = run.cli("sync", "now", "named")
        said = proc.stdout + proc.stderr
        assert proc.returncode == 78, said
        assert "membership_life_span" in said and "540" in said and "10000" in said
        assert fake.requests == []


def test_google_ads_terms_not_accepted_say_so(tmp_path: Path) -> None:
    with world(GOOGLE_ADS, tmp_path) as (fake, run):
        assert isinstance(fake, FakeGoogleAds)
        fake.terms_accepted = False
        proc = run.cli("sync", "now", "named")
        said = proc.stdout + proc.stderr
        assert proc.returncode == 78, said
        assert "customer data terms" in said and "Audience manager" in said
        assert fake.user_lists == {} and stored(run) == []


def test_on_postgres_a_race_and_a_crash_still_create_the_list_once(
    tmp_path: Path, postgres_url: str
) -> None:
    """The claim is a primary key in any state database: the same guarantees on Postgres."""
    with world(KLAVIYO, tmp_path, sync="first") as (fake, run):
        run.env["SYNCER_STATE_URL"] = postgres_url
        (run.mappings / "second.yaml").write_text(mapping(KLAVIYO, "second", fake.url))
        KLAVIYO.hold(fake, 60.0)
        proc = popen(run, "first")
        wait_for(lambda: creates(KLAVIYO, fake) == 1, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert stored(run) == [(LIST_NAME, "creating", None)]
        KLAVIYO.hold(fake, 1.0)

        procs = [popen(run, "first"), popen(run, "second")]
        for proc in procs:
            out, err = proc.communicate(timeout=DEADLINE)
            assert proc.returncode == 0, out + err
        assert creates(KLAVIYO, fake) == 1
        (list_id,) = KLAVIYO.ids_named(fake, LIST_NAME)
        assert KLAVIYO.members(fake, list_id) == EMAILS
        assert stored(run) == [(LIST_NAME, "created", list_id)]


def test_check_looks_the_name_up_and_creates_nothing(tmp_path: Path) -> None:
    with world(SENDGRID, tmp_path) as (fake, run):
        proc = run.cli("check", "named")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert creates(SENDGRID, fake) == 0 and SENDGRID.lookups(fake) == 1
        first, second = SENDGRID.seed(fake, LIST_NAME), SENDGRID.seed(fake, LIST_NAME)
        proc = run.cli("check", "named")
        assert proc.returncode == 78, proc.stdout + proc.stderr
        assert "2 lists named 'VIP customers'" in proc.stdout + proc.stderr
        assert creates(SENDGRID, fake) == 0 and {first, second} <= set(fake.lists)


def test_a_claim_left_by_a_silent_process_on_another_host_is_taken_over(tmp_path: Path) -> None:
    """A replica on another host died holding the claim (its pid cannot be checked from here):
    once the claim is older than SYNCER_LEASE_TTL the next run takes it over and finds the
    list the dead one created."""
    with world(KLAVIYO, tmp_path) as (fake, run):
        run.env["SYNCER_LEASE_TTL"] = "2"
        KLAVIYO.hold(fake, 60.0)
        proc = popen(run, "named")
        wait_for(lambda: creates(KLAVIYO, fake) == 1, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        KLAVIYO.hold(fake, 0.0)
        engine = sa.create_engine(run.env["SYNCER_STATE_URL"])
        with engine.begin() as conn:
            conn.execute(
                sa.text("update syncer_destinations set holder = :holder, updated_at = :now"),
                {"holder": "other-host:4242:run:x", "now": dt.datetime.now(dt.UTC)},
            )
        engine.dispose()

        started = time.monotonic()
        code, doc = run.sync()
        assert code == 0, doc
        assert time.monotonic() - started >= 2.0  # it waited for the claim to go silent
        assert creates(KLAVIYO, fake) == 1
        (list_id,) = KLAVIYO.ids_named(fake, LIST_NAME)
        assert stored(run) == [(LIST_NAME, "created", list_id)]
        assert KLAVIYO.members(fake, list_id) == EMAILS


def test_lists_show_and_forget_after_the_list_was_deleted_at_the_vendor(tmp_path: Path) -> None:
    with world(KLAVIYO, tmp_path) as (fake, run):
        assert isinstance(fake, FakeKlaviyo)
        code, _ = run.sync()
        assert code == 0
        (first,) = KLAVIYO.ids_named(fake, LIST_NAME)
        shown = json.loads(run.cli("lists", "show", "--json").stdout)["lists"]
        assert [
            (r["connector"], r["name"], r["destination_id"], r["status"], r["sync"]) for r in shown
        ] == [("klaviyo", LIST_NAME, first, "created", "named")]
        assert "pk_named" not in json.dumps(shown)
        assert first in run.cli("lists", "show").stdout

        # A marketer deletes the list: the kept id is stale until forgotten.
        del fake.lists[first]
        fake.list_id, fake.listed = None, set()
        proc = run.cli("lists", "forget", LIST_NAME)
        assert proc.returncode == 0 and f"id {first}" in proc.stdout, proc.stderr
        assert run.cli("lists", "forget", LIST_NAME).returncode == 1  # nothing kept any more

        # The next run creates it again and adds every member again: the state it kept was
        # built against the deleted list. Plan says so first.
        plan = json.loads(run.cli("plan", "named", "--json").stdout)
        assert plan["lists"][0]["action"] == "create" and plan["lists"][0]["resend_members"]
        assert (plan["add"], plan["update"], plan["unchanged"]) == (len(ROWS), 0, 0)
        assert "members synced before are sent again" in run.cli("plan", "named").stdout
        code, doc = run.sync()
        assert code == 0, doc
        assert doc["runs"][0]["added"] == len(ROWS)
        (second,) = KLAVIYO.ids_named(fake, LIST_NAME)
        assert second != first and creates(KLAVIYO, fake) == 2
        assert KLAVIYO.members(fake, second) == EMAILS


def test_linkedin_without_a_source_platform_says_what_it_takes(tmp_path: Path) -> None:
    with world(LINKEDIN, tmp_path) as (fake, run):
        text = mapping(LINKEDIN, "named", fake.url).replace("  source_platform: SYNCER_TEST", "")
        (run.mappings / "named.yaml").write_text(text)
        proc = run.cli("sync", "now", "named")
        said = proc.stdout + proc.stderr
        assert proc.returncode == 78, said
        assert "source_platform" in said and "Audiences program" in said
        assert fake.requests == []
