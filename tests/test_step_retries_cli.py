"""Through the real CLI: a vendor step that fails after an earlier one succeeded is retried on
its own, never the whole batch (issue 12, item 12).

Klaviyo: the bulk import job is created once, though polling it and reading its result pages
get a 503 and a 429. Mailchimp: the subscribe call is sent once per batch, though the tag
segment call after it gets a 429 (twice in a row) and a 503. Both runs end with every member at
the vendor and exit 0. Before, each such failure created another import job or re-subscribed
the batch. (tests/test_step_faults.py injects a fault at every step of every connector; this
is the user's view of the same thing.)
"""

from __future__ import annotations

from pathlib import Path

from tests.fake_klaviyo import FakeKlaviyo
from tests.fake_mailchimp import FakeMailchimp
from tests.test_e2e_klaviyo import KEY as KLAVIYO_KEY
from tests.test_e2e_klaviyo import LIST as KLAVIYO_LIST
from tests.test_e2e_klaviyo import MAPPING as KLAVIYO_MAPPING
from tests.test_e2e_klaviyo import people as klaviyo_people
from tests.test_e2e_mailchimp import COLUMNS as MAILCHIMP_COLUMNS
from tests.test_e2e_mailchimp import KEY as MAILCHIMP_KEY
from tests.test_e2e_mailchimp import LIST as MAILCHIMP_LIST
from tests.test_e2e_mailchimp import MAPPING as MAILCHIMP_MAPPING
from tests.test_e2e_mailchimp import people as mailchimp_people
from tests.vendor_emulator import Reply, SyncRun

JOBS = r"/api/profile-bulk-import-jobs$"


def test_klaviyo_polls_and_reads_its_one_import_job_through_failures(tmp_path: Path) -> None:
    with FakeKlaviyo(KLAVIYO_KEY, KLAVIYO_LIST) as vendor:
        assert isinstance(vendor, FakeKlaviyo)
        mapping = KLAVIYO_MAPPING.format(list_id=KLAVIYO_LIST, url=vendor.url)
        run = SyncRun(tmp_path, mapping, "klaviyo_vip", env={"KLAVIYO_API_KEY": KLAVIYO_KEY})
        rows = klaviyo_people(range(10))  # one batch of 10: a bulk import job
        run.segment(("email", "first_name", "plan"), rows)
        job = r"/api/profile-bulk-import-jobs/[^/]+$"
        vendor.fail_next(job, Reply(503, {"errors": []}), method="GET")  # the first poll
        vendor.fail_next(  # the job's profiles page, once the job is complete
            r"/api/profile-bulk-import-jobs/[^/]+/profiles$",
            vendor.rate_limited(1),
            method="GET",
        )
        vendor.fail_next(job, Reply(503, {"errors": []}), method="GET", after=1)  # a later poll

        code, doc = run.sync()
        assert code == 0, doc
        assert doc["runs"][0]["added"] == 10
        assert vendor.pending_faults() == 0  # every fault was met
        assert len(vendor.requests_to(JOBS, "POST")) == 1  # one import job, never a second
        assert vendor.member_emails() == {row[0] for row in rows}


def test_mailchimp_subscribes_once_while_the_segment_call_is_throttled(tmp_path: Path) -> None:
    with FakeMailchimp(MAILCHIMP_KEY, MAILCHIMP_LIST) as vendor:
        assert isinstance(vendor, FakeMailchimp)
        mapping = MAILCHIMP_MAPPING.format(
            url=vendor.url, list_id=MAILCHIMP_LIST, mechanism="segment_id: 42"
        )
        run = SyncRun(tmp_path, mapping, "mc_vip", env={"MAILCHIMP_API_KEY": MAILCHIMP_KEY})
        rows = mailchimp_people(range(8))  # two batches of 4
        run.segment(MAILCHIMP_COLUMNS, rows)
        segment_call = r"/segments/\d+$"
        throttled = Reply(429, {"title": "Too Many Requests"}, headers={"Retry-After": "1"})
        vendor.fail_next(segment_call, throttled, method="POST", times=2)
        vendor.fail_next(segment_call, Reply(503, {"title": "Service Unavailable"}), method="POST")

        code, doc = run.sync()
        assert code == 0, doc
        assert doc["runs"][0]["added"] == 8
        assert vendor.pending_faults() == 0
        subscribes = vendor.requests_to(r"/lists/[^/]+$", "POST")
        assert len(subscribes) == 2  # once per batch: the subscribe that landed is not resent
        assert vendor.segment_members() == {row[0] for row in rows}
