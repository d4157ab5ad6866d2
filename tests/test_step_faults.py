"""A fault at any step of a multi-step batch retries that step only (issue 12, item 12).

Each case is one connector whose batch takes several requests (create an import job, poll it,
read its result pages; subscribe, then tag; upsert, then add to a list; several chunks...).
The real engine runs the sync in-process against the vendor's local emulator, on fake time
(backoffs and polls cost nothing), and the emulator answers one request of one step with a
fault instead of handling it: a 503, the vendor's 429, a connection closed without an answer,
or an answer slower than the HTTP timeout. Then, counted at the emulator:

* every step before the faulted one was sent exactly as often as in a clean run (a retry
  resumes; it does not start the batch over), the faulted step once more, the later ones as
  in a clean run: e.g. exactly one Klaviyo bulk import job for the batch;
* the batch ends acknowledged (the run's counts), and the destination equals the segment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.engine_world import World
from tests.fake_braze import FakeBraze
from tests.fake_google_ads import FakeGoogleAds
from tests.fake_hubspot import FakeHubSpot
from tests.fake_klaviyo import FakeKlaviyo
from tests.fake_mailchimp import FakeMailchimp
from tests.fake_salesforce import FakeSalesforce
from tests.fake_sendgrid import FakeSendGrid
from tests.fake_tiktok import FakeTikTok
from tests.vendor_emulator import Reply, VendorEmulator

Rows = list[tuple[Any, ...]]


def emails(n: int, start: int = 0) -> Rows:
    return [(f"person{i:03}@example.com", f"Name{i}") for i in range(start, start + n)]


@dataclass(frozen=True)
class Call:
    """Requests of one kind: ``count`` of them in a clean run of the measured sync."""

    method: str
    path: str
    count: int


@dataclass(frozen=True)
class Step:
    """The ``nth`` request (0-based) of ``call``; a retry of it also sends ``also`` once more."""

    name: str
    call: str
    nth: int = 0
    also: tuple[str, ...] = ()


@dataclass
class Case:
    vendor: Callable[[], VendorEmulator]
    mapping: str  # ``{url}`` is the emulator's address
    env: dict[str, str]
    columns: tuple[str, ...]
    rows: Rows  # the segment of the measured run
    calls: dict[str, Call]
    steps: list[Step]
    members: Callable[[Any], set[str]]  # what the destination holds
    expected: set[str]  # ...and must hold after the measured run
    counts: dict[str, int]  # the measured run's counts
    before: list[Rows] = field(default_factory=list)  # earlier runs (clean) that set up state
    settle: int = 0  # further runs for asynchronous jobs (Google) before checking members
    status: str = "succeeded"


KLAVIYO_KEY = "pk_steps_0123456789abcdef"
KLAVIYO = """
source: {{query: 'select email, first_name from segment', key: email, key_type: email}}
mode: mirror
fields: {{email: {{column: email, type: email}}, first_name: first_name}}
destination:
  connector: klaviyo
  api_key: ${{KLAVIYO_API_KEY}}
  list_id: L1
  base_url: {{url}}
  bulk_threshold: {threshold}
  poll_interval: 1
"""
KLAVIYO_JOB = r"/api/profile-bulk-import-jobs$"
KLAVIYO_POLL = r"/api/profile-bulk-import-jobs/[^/]+$"


def klaviyo() -> FakeKlaviyo:
    vendor = FakeKlaviyo(KLAVIYO_KEY, "L1")
    vendor.blocked_domains = {"blocked.example.com"}
    return vendor


BULK = [*emails(150), ("zed@blocked.example.com", "Zed")]
KLAVIYO_BULK = Case(
    vendor=klaviyo,
    mapping=KLAVIYO.format(threshold=50),
    env={"KLAVIYO_API_KEY": KLAVIYO_KEY},
    columns=("email", "first_name"),
    rows=BULK,
    calls={
        "job": Call("POST", KLAVIYO_JOB, 1),
        "poll": Call("GET", KLAVIYO_POLL, 2),  # queued -> processing -> complete
        "errors": Call("GET", r"/import-errors$", 1),
        "profiles": Call("GET", r"-jobs/[^/]+/profiles$", 2),  # 150 ids, 100 a page
    },
    steps=[
        Step("create job", "job"),
        Step("first poll", "poll"),
        Step("last poll", "poll", 1),
        Step("import errors", "errors"),
        Step("profiles page 1", "profiles"),
        Step("profiles page 2", "profiles", 1),
    ],
    members=lambda v: v.member_emails(),
    expected={row[0] for row in BULK[:150]},
    counts={"added": 150, "rejected": 1},
    status="partial",
)
KLAVIYO_SMALL = Case(
    vendor=klaviyo,
    mapping=KLAVIYO.format(threshold=50),
    env={"KLAVIYO_API_KEY": KLAVIYO_KEY},
    columns=("email", "first_name"),
    rows=emails(3),
    calls={
        "import": Call("POST", r"/api/profile-import$", 3),
        "list": Call("POST", r"/relationships/profiles$", 1),
    },
    steps=[
        Step("import 1", "import"),
        Step("import 2", "import", 1),
        Step("import 3", "import", 2),
        Step("list add", "list"),
    ],
    members=lambda v: v.member_emails(),
    expected={row[0] for row in emails(3)},
    counts={"added": 3},
)

MAILCHIMP_KEY = "steps0123456789abcdef0123456789-us21"
MAILCHIMP = """
source: {{query: 'select email, first_name from segment', key: email, key_type: email}}
mode: mirror
fields: {{email: {{column: email, type: email}}, FNAME: first_name}}
destination:
  connector: mailchimp
  api_key: ${{MAILCHIMP_API_KEY}}
  base_url: {{url}}/3.0
  list_id: aud1
  tag: vip
  {method}
"""
MAILCHIMP_TAG = Case(
    vendor=lambda: FakeMailchimp(MAILCHIMP_KEY, "aud1"),
    mapping=MAILCHIMP.format(method=""),
    env={"MAILCHIMP_API_KEY": MAILCHIMP_KEY},
    columns=("email", "first_name"),
    rows=emails(3),
    calls={
        "lookup": Call("GET", r"/segments$", 1),
        "create": Call("POST", r"/segments$", 1),
        "subscribe": Call("POST", r"/lists/[^/]+$", 1),
        "tag": Call("POST", r"/segments/\d+$", 1),
    },
    steps=[
        Step("subscribe", "subscribe"),
        Step("tag lookup", "lookup"),
        # Creating a tag is not idempotent: after a failed creation the tag is looked up
        # again (the creation may have landed), then created.
        Step("tag creation", "create", also=("lookup",)),
        Step("tag as segment", "tag"),
    ],
    members=lambda v: v.tagged("vip"),
    expected={row[0] for row in emails(3)},
    counts={"added": 3},
)
MAILCHIMP_MEMBER = Case(
    vendor=lambda: FakeMailchimp(MAILCHIMP_KEY, "aud1"),
    mapping=MAILCHIMP.format(method="tag_method: member"),
    env={"MAILCHIMP_API_KEY": MAILCHIMP_KEY},
    columns=("email", "first_name"),
    rows=emails(3),
    calls={
        "subscribe": Call("POST", r"/lists/[^/]+$", 1),
        "tag": Call("POST", r"/tags$", 3),
    },
    steps=[
        Step("subscribe", "subscribe"),
        Step("tag member 1", "tag"),
        Step("tag member 2", "tag", 1),
        Step("tag member 3", "tag", 2),
    ],
    members=lambda v: v.tagged("vip"),
    expected={row[0] for row in emails(3)},
    counts={"added": 3},
)

SENDGRID_KEY = "SG.steps-key-0123456789abcdef"
SENDGRID_LIST = "5f0c1a5e-7d1b-4a8e-9b0e-3f2d6c8a9b10"
SENDGRID = f"""
source: {{query: 'select email, first_name from segment', key: email, key_type: email}}
mode: mirror
fields: {{email: {{column: email, type: email}}, first_name: first_name}}
destination:
  connector: sendgrid
  api_key: ${{SENDGRID_API_KEY}}
  list_ids: ["{SENDGRID_LIST}"]
  base_url: {{url}}
  poll_interval: 1
"""
SENDGRID_ADD = Case(
    vendor=lambda: FakeSendGrid(SENDGRID_KEY, SENDGRID_LIST),
    mapping=SENDGRID,
    env={"SENDGRID_API_KEY": SENDGRID_KEY},
    columns=("email", "first_name"),
    rows=emails(3),
    calls={
        "upsert": Call("PUT", r"/v3/marketing/contacts$", 1),
        "poll": Call("GET", r"/contacts/imports/[^/]+$", 2),  # pending, then completed
        "search": Call("POST", r"/search/emails$", 1),
    },
    steps=[
        Step("upsert", "upsert"),
        Step("first poll", "poll"),
        Step("last poll", "poll", 1),
        Step("search", "search"),
    ],
    members=lambda v: set(v.members()),
    expected={row[0] for row in emails(3)},
    counts={"added": 3},
)

HUBSPOT_TOKEN = "pat-na1-steps-secret-token"
HUBSPOT_ADD = Case(
    vendor=lambda: FakeHubSpot(HUBSPOT_TOKEN),
    mapping="""
source: {query: 'select email, first_name from segment', key: email, key_type: email}
mode: mirror
fields: {email: {column: email, type: email}, firstname: first_name}
destination:
  connector: hubspot
  token: ${HUBSPOT_TOKEN}
  base_url: {url}
  list_id: "77"
""",
    env={"HUBSPOT_TOKEN": HUBSPOT_TOKEN},
    columns=("email", "first_name"),
    rows=emails(3),
    calls={
        "upsert": Call("POST", r"/batch/upsert$", 1),
        "list": Call("PUT", r"/memberships/add$", 1),
    },
    steps=[Step("upsert", "upsert"), Step("list add", "list")],
    members=lambda v: set(v.members()),
    expected={row[0] for row in emails(3)},
    counts={"added": 3},
)

SALESFORCE_TOKEN = "00Dxx0000001gPL!steps-access-token"
SALESFORCE_CAMPAIGN = "701xx000000AbCdAAK"
SALESFORCE_ADD = Case(
    vendor=lambda: FakeSalesforce(SALESFORCE_TOKEN, SALESFORCE_CAMPAIGN),
    mapping=f"""
source: {{query: 'select id, email, last_name from segment', key: id}}
mode: mirror
fields: {{Email: {{column: email, type: email}}, LastName: last_name}}
destination:
  connector: salesforce
  base_url: ${{SALESFORCE_INSTANCE_URL}}
  access_token: ${{SALESFORCE_ACCESS_TOKEN}}
  external_id_field: Warehouse_Id__c
  campaign_id: {SALESFORCE_CAMPAIGN}
""",
    env={"SALESFORCE_ACCESS_TOKEN": SALESFORCE_TOKEN},
    columns=("id", "email", "last_name"),
    rows=[(f"w-{i}", f"p{i}@example.com", f"Last{i}") for i in range(3)],
    calls={
        "upsert": Call("PATCH", r"/composite/sobjects/Contact/Warehouse_Id__c$", 1),
        "members": Call("POST", r"/composite/sobjects$", 1),
    },
    steps=[Step("upsert", "upsert"), Step("campaign members", "members")],
    members=lambda v: v.campaign_contacts(),
    expected={f"w-{i}" for i in range(3)},
    counts={"added": 3},
)

BRAZE_KEY = "braze-steps-rest-key-0123456789"
BRAZE_USERS = [(f"u{i:03}", f"Name{i}") for i in range(61)]
BRAZE_REMOVE = Case(
    vendor=lambda: FakeBraze(BRAZE_KEY, "sg-vip"),
    mapping="""
source: {query: 'select user_id, first_name from segment', key: user_id}
mode: mirror
fields: {first_name: first_name}
destination:
  connector: braze
  api_key: ${BRAZE_API_KEY}
  base_url: {url}
  subscription_group_id: sg-vip
guards: {max_remove_pct: 100}
""",
    env={"BRAZE_API_KEY": BRAZE_KEY},
    columns=("user_id", "first_name"),
    before=[BRAZE_USERS],
    rows=BRAZE_USERS[:1],  # 60 leave: one batch of removals, 50 ids per call
    calls={"unsubscribe": Call("POST", r"/v2/subscription/status/set$", 2)},
    steps=[Step("first 50", "unsubscribe"), Step("last 10", "unsubscribe", 1)],
    members=lambda v: v.subscribed(),
    expected={"u000"},
    counts={"removed": 60},
)

TIKTOK_TOKEN = "tt-steps-access-token-0123456789"
TIKTOK_PEOPLE = [(f"c{i}", f"person{i}@example.com", f"(657) 555-01{i:02}") for i in range(3)]
TIKTOK_MOVED = [(c, e, f"(657) 555-02{i:02}") for i, (c, e, _) in enumerate(TIKTOK_PEOPLE)]
TIKTOK_UPDATE = Case(
    vendor=lambda: FakeTikTok(TIKTOK_TOKEN, "7000123", "123456"),
    mapping="""
source: {query: 'select customer_id, email, phone from segment', key: customer_id}
mode: mirror
fields: {email: email, phone: phone}
destination:
  connector: tiktok
  access_token: ${TIKTOK_ACCESS_TOKEN}
  advertiser_id: "7000123"
  audience_id: "123456"
  region: US
  base_url: {url}/open_api/v1.3
""",
    env={"TIKTOK_ACCESS_TOKEN": TIKTOK_TOKEN},
    columns=("customer_id", "email", "phone"),
    before=[TIKTOK_PEOPLE],
    rows=TIKTOK_MOVED,  # new phones: take the old ids off, then add the new ones
    calls={"mapping": Call("POST", r"/segment/mapping/$", 2)},
    steps=[Step("delete stale ids", "mapping"), Step("add new ids", "mapping", 1)],
    members=lambda v: v.hashes("PHONE_SHA256"),
    expected={
        hashlib.sha256(("1" + "".join(c for c in p if c.isdigit())).encode()).hexdigest()
        for _, _, p in TIKTOK_MOVED
    },
    counts={"updated": 3},
)

GOOGLE_TOKEN, GOOGLE_DEV = "ya29.steps-oauth-token-0123456789", "dev-steps-token-ABCDEF"
GOOGLE_ADD = Case(
    vendor=lambda: FakeGoogleAds(GOOGLE_TOKEN, GOOGLE_DEV, "1234567890", "4567"),
    mapping="""
source: {query: 'select customer_id, email from segment', key: customer_id}
mode: mirror
fields: {email: email}
destination:
  connector: google_ads
  access_token: ${GOOGLE_ADS_ACCESS_TOKEN}
  developer_token: ${GOOGLE_ADS_DEVELOPER_TOKEN}
  customer_id: "123-456-7890"
  user_list_id: "4567"
  base_url: {url}
  batch_size: 2
""",
    env={"GOOGLE_ADS_ACCESS_TOKEN": GOOGLE_TOKEN, "GOOGLE_ADS_DEVELOPER_TOKEN": GOOGLE_DEV},
    columns=("customer_id", "email"),
    rows=[(f"c{i}", f"person{i}@example.com") for i in range(3)],
    calls={
        "create": Call("POST", r"offlineUserDataJobs:create$", 1),
        "operations": Call("POST", r":addOperations$", 2),  # 3 records, 2 a batch
        "run": Call("POST", r":run$", 1),
    },
    steps=[
        Step("create job", "create"),
        Step("operations 1", "operations"),
        Step("operations 2", "operations", 1),
    ],
    members=lambda v: v.hashes(),
    expected={hashlib.sha256(f"person{i}@example.com".encode()).hexdigest() for i in range(3)},
    counts={"pending": 3},
    settle=2,  # the job runs at the vendor: one poll still running, the next one succeeded
    status="submitted",
)

CASES = {
    "klaviyo-bulk-add": KLAVIYO_BULK,
    "klaviyo-small-add": KLAVIYO_SMALL,
    "mailchimp-tag-add": MAILCHIMP_TAG,
    "mailchimp-member-tag-add": MAILCHIMP_MEMBER,
    "sendgrid-add": SENDGRID_ADD,
    "hubspot-add": HUBSPOT_ADD,
    "salesforce-add": SALESFORCE_ADD,
    "braze-remove": BRAZE_REMOVE,
    "tiktok-update": TIKTOK_UPDATE,
    "google-ads-add": GOOGLE_ADD,
}


def fault(kind: str, vendor: VendorEmulator) -> Reply:
    if kind == "503":
        return Reply(503, {"message": "Service Unavailable"})
    if kind == "429":
        return vendor.rate_limited(1.0)  # the vendor's own shape (bare for Mailchimp)
    if kind == "reset":
        return Reply(reset=True)
    assert kind == "timeout"
    return Reply(503, delay=3.0)  # the engine's HTTP timeout is 1 s in these tests


PARAMS = [
    pytest.param(name, step, kind, id=f"{name}:{step.name}:{kind}")
    for name, case in CASES.items()
    for step in case.steps
    for kind in ("503", "429")
] + [
    # Transport failures take the same path in the connector as a 503 (TransientError); one
    # step each per connector, a timeout costing real time (the HTTP timeout).
    pytest.param(name, step, kind, id=f"{name}:{step.name}:{kind}")
    for name, case in CASES.items()
    for step, kind in ((case.steps[1], "reset"), (case.steps[-1], "timeout"))
]


def counted(vendor: VendorEmulator, since: int, call: Call) -> int:
    import re

    pattern = re.compile(call.path)
    with vendor.lock:
        sent = vendor.requests[since:]
    return sum(
        1 for r in sent if r.method == call.method and pattern.search(r.url.split("?", 1)[0])
    )


@pytest.mark.parametrize(("name", "step", "kind"), PARAMS)
def test_a_fault_at_one_step_retries_that_step_only(
    tmp_path: Path, name: str, step: Step, kind: str
) -> None:
    case = CASES[name]
    with case.vendor() as vendor:
        env = {**case.env, "SALESFORCE_INSTANCE_URL": vendor.url}
        # A generous HTTP timeout, so a busy machine never adds a retry; 1 s where a timeout
        # is the fault.
        timeout = 1.0 if kind == "timeout" else 10.0
        world = World(
            tmp_path, case.mapping.replace("{url}", vendor.url), env, http_timeout=timeout
        )
        for rows in case.before:
            world.segment(case.columns, rows)
            assert world.run().status == "succeeded"
        world.segment(case.columns, case.rows)
        since = len(vendor.requests)
        call = case.calls[step.call]
        vendor.fail_next(call.path, fault(kind, vendor), method=call.method, after=step.nth)

        result = world.run()

        assert vendor.pending_faults() == 0, "the fault was never hit"
        assert result.status == case.status, (result.message, result.counts)
        assert {k: result.counts[k] for k in case.counts} == case.counts
        assert result.counts["failed"] == 0
        sent = {label: counted(vendor, since, c) for label, c in case.calls.items()}
        clean = {label: c.count for label, c in case.calls.items()}
        for again in (step.call, *step.also):
            clean[again] += 1  # the faulted request, sent again; nothing else repeated
        assert sent == clean
        for _ in range(case.settle):
            world.run()
        assert case.members(vendor) == case.expected
