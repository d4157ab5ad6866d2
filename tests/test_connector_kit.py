"""Every built-in connector passes the connector kit's standard suite (syncer.testing)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from connectors.braze import BrazeConnector
from connectors.file import FileConnector
from connectors.google_ads import GoogleAdsConnector
from connectors.hubspot import HubSpotConnector
from connectors.klaviyo import KlaviyoConnector
from connectors.linkedin import LinkedInConnector
from connectors.mailchimp import MailchimpConnector
from connectors.meta import MetaConnector
from connectors.salesforce import SalesforceConnector
from connectors.sendgrid import SendGridConnector
from connectors.tiktok import TikTokConnector
from connectors.webhook import WebhookConnector
from syncer.testing import ConnectorSuite, FakeVendor, Row, SyncHarness, sha256_email
from tests.fake_braze import FakeBraze
from tests.fake_file import MembersFile
from tests.fake_google_ads import FakeGoogleAds
from tests.fake_hubspot import FakeHubSpot
from tests.fake_klaviyo import FakeKlaviyo
from tests.fake_linkedin import FakeLinkedIn
from tests.fake_mailchimp import FakeMailchimp
from tests.fake_meta import FakeMeta
from tests.fake_salesforce import FakeSalesforce
from tests.fake_sendgrid import FakeSendGrid
from tests.fake_tiktok import FakeTikTok
from tests.fake_webhook import FakeReceiver


class TestWebhook(ConnectorSuite):
    connector = WebhookConnector
    destination = {"url": f"{FakeReceiver.base_url}/syncer", "secret": "${HOOK_SECRET}"}
    secrets = {"HOOK_SECRET": "hook-signing-secret-1234"}

    def make_fake(self) -> FakeReceiver:
        return FakeReceiver()


HUBSPOT_TOKEN = "pat-na1-kit-secret-token"


class TestHubSpot(ConnectorSuite):
    connector = HubSpotConnector
    destination = {"token": "${HUBSPOT_TOKEN}", "base_url": FakeHubSpot.base_url, "list_id": "77"}
    secrets = {"HUBSPOT_TOKEN": HUBSPOT_TOKEN}
    fields = {"email": {"column": "email", "type": "email"}, "firstname": "first_name"}

    def make_fake(self) -> FakeHubSpot:
        return FakeHubSpot(HUBSPOT_TOKEN)


SALESFORCE_TOKEN = "00Dxx0000001gPL!kit-access-token"
SALESFORCE_CAMPAIGN = "701xx000000AbCdAAK"


class TestSalesforce(ConnectorSuite):
    connector = SalesforceConnector
    destination = {
        "base_url": FakeSalesforce.base_url,
        "access_token": "${SALESFORCE_ACCESS_TOKEN}",
        "external_id_field": "Warehouse_Id__c",
        "campaign_id": SALESFORCE_CAMPAIGN,
    }
    secrets = {"SALESFORCE_ACCESS_TOKEN": SALESFORCE_TOKEN}
    fields = {
        "Email": {"column": "email", "type": "email"},
        "FirstName": "first_name",
        "LastName": "last_name",
    }
    key = "id"
    key_type = "string"

    def make_fake(self) -> FakeSalesforce:
        return FakeSalesforce(SALESFORCE_TOKEN, SALESFORCE_CAMPAIGN)


SENDGRID_KEY = "SG.kit-key-0123456789abcdef"
SENDGRID_LIST = "5f0c1a5e-7d1b-4a8e-9b0e-3f2d6c8a9b10"


class TestSendGrid(ConnectorSuite):
    connector = SendGridConnector
    destination = {
        "api_key": "${SENDGRID_API_KEY}",
        "list_ids": [SENDGRID_LIST],
        "base_url": FakeSendGrid.base_url,
        "poll_interval": 1,
    }
    secrets = {"SENDGRID_API_KEY": SENDGRID_KEY}
    fields = {"email": {"column": "email", "type": "email"}, "first_name": "first_name"}

    def make_fake(self) -> FakeSendGrid:
        return FakeSendGrid(SENDGRID_KEY, SENDGRID_LIST)


MAILCHIMP_KEY = "kit0123456789abcdef0123456789ab-us21"


class TestMailchimp(ConnectorSuite):
    connector = MailchimpConnector
    destination = {
        "api_key": "${MAILCHIMP_API_KEY}",
        "base_url": f"{FakeMailchimp.base_url}/3.0",
        "list_id": "aud123",
        "tag": "vip",
    }
    secrets = {"MAILCHIMP_API_KEY": MAILCHIMP_KEY}
    fields = {"email": {"column": "email", "type": "email"}, "FNAME": "first_name"}

    def make_fake(self) -> FakeMailchimp:
        return FakeMailchimp(MAILCHIMP_KEY, "aud123")


KLAVIYO_KEY = "pk_kit_0123456789abcdef"


class TestKlaviyo(ConnectorSuite):
    connector = KlaviyoConnector
    destination = {
        "api_key": "${KLAVIYO_API_KEY}",
        "list_id": "XyZ123",
        "base_url": FakeKlaviyo.base_url,
        "bulk_threshold": 4,
        "poll_interval": 1,
    }
    secrets = {"KLAVIYO_API_KEY": KLAVIYO_KEY}
    fields = {"email": {"column": "email", "type": "email"}, "first_name": "first_name"}

    def make_fake(self) -> FakeKlaviyo:
        return FakeKlaviyo(KLAVIYO_KEY, "XyZ123")


BRAZE_KEY = "braze-kit-rest-key-0123456789"


class TestBraze(ConnectorSuite):
    connector = BrazeConnector
    destination = {
        "api_key": "${BRAZE_API_KEY}",
        "base_url": FakeBraze.base_url,
        "subscription_group_id": "sg-vip",
    }
    secrets = {"BRAZE_API_KEY": BRAZE_KEY}
    fields = {"email": {"column": "email", "type": "email"}, "first_name": "first_name"}
    key = "id"
    key_type = "string"

    def make_fake(self) -> FakeBraze:
        return FakeBraze(BRAZE_KEY, "sg-vip")


META_TOKEN = "EAAB-kit-system-user-token-0123456789"
META_AUDIENCE = "23850000000000042"


class TestMeta(ConnectorSuite):
    connector = MetaConnector
    destination = {
        "access_token": "${META_ACCESS_TOKEN}",
        "audience_id": META_AUDIENCE,
        "base_url": FakeMeta.base_url,
        "region": "US",
    }
    secrets = {"META_ACCESS_TOKEN": META_TOKEN}
    fields = {"email": "email", "phone": "phone", "first_name": "first_name", "country": "country"}
    key = "id"
    key_type = "string"

    def make_fake(self) -> FakeMeta:
        return FakeMeta(META_TOKEN, META_AUDIENCE)

    def vendor_key(self, row: Row) -> str:
        return sha256_email(row)


LINKEDIN_TOKEN = "AQX-kit-linkedin-token-0123456789"


class TestLinkedIn(ConnectorSuite):
    connector = LinkedInConnector
    destination = {
        "access_token": "${LINKEDIN_ACCESS_TOKEN}",
        "segment_id": "555",
        "base_url": f"{FakeLinkedIn.base_url}/rest",
    }
    secrets = {"LINKEDIN_ACCESS_TOKEN": LINKEDIN_TOKEN}
    fields = {"email": "email", "first_name": "first_name", "country": "country"}
    key = "id"
    key_type = "string"

    def make_fake(self) -> FakeLinkedIn:
        return FakeLinkedIn(LINKEDIN_TOKEN, "555")

    def vendor_key(self, row: Row) -> str:
        return sha256_email(row)


TIKTOK_TOKEN = "tt-kit-access-token-0123456789"


class TestTikTok(ConnectorSuite):
    connector = TikTokConnector
    destination = {
        "access_token": "${TIKTOK_ACCESS_TOKEN}",
        "advertiser_id": "7000123",
        "audience_id": "123456",
        "region": "US",
        "base_url": f"{FakeTikTok.base_url}/open_api/v1.3",
    }
    secrets = {"TIKTOK_ACCESS_TOKEN": TIKTOK_TOKEN}
    fields = {"email": "email", "phone": "phone"}
    key = "id"
    key_type = "string"

    def make_fake(self) -> FakeTikTok:
        return FakeTikTok(TIKTOK_TOKEN, "7000123", "123456")

    def vendor_key(self, row: Row) -> str:
        return sha256_email(row)


GOOGLE_TOKEN = "ya29.kit-oauth-token-0123456789"
GOOGLE_DEVELOPER_TOKEN = "dev-kit-token-ABCDEF"


class TestGoogleAds(ConnectorSuite):
    connector = GoogleAdsConnector
    destination = {
        "access_token": "${GOOGLE_ADS_ACCESS_TOKEN}",
        "developer_token": "${GOOGLE_ADS_DEVELOPER_TOKEN}",
        "customer_id": "123-456-7890",
        "user_list_id": "4567",
        "base_url": FakeGoogleAds.base_url,
        "region": "US",
        "ad_user_data": "GRANTED",
        "ad_personalization": "GRANTED",
    }
    secrets = {
        "GOOGLE_ADS_ACCESS_TOKEN": GOOGLE_TOKEN,
        "GOOGLE_ADS_DEVELOPER_TOKEN": GOOGLE_DEVELOPER_TOKEN,
    }
    fields = {"email": "email", "phone": "phone"}
    key = "id"
    key_type = "string"

    def make_fake(self) -> FakeGoogleAds:
        return FakeGoogleAds(GOOGLE_TOKEN, GOOGLE_DEVELOPER_TOKEN, "1234567890", "4567")

    def vendor_key(self, row: Row) -> str:
        return sha256_email(row)


class TestFile(ConnectorSuite):
    connector = FileConnector
    destination = {"path": "${KIT_ROOT}/out/members.jsonl"}

    def make_fake(self) -> MembersFile:
        return MembersFile()

    def harness(self, tmp_path: Path, fake: FakeVendor) -> SyncHarness:
        assert isinstance(fake, MembersFile)
        fake.path = tmp_path / "out" / "members.jsonl"
        return super().harness(tmp_path, fake)


# -- the kit catches what it is for -----------------------------------------------------------


class SmallReceiver(FakeReceiver):
    """A receiver taking fewer records per request than the webhook connector may send."""

    batch_cap = 100


class DuplicatingReceiver(FakeReceiver):
    """A receiver that creates a second copy of anyone added twice, as a create endpoint."""

    def receive(self, request: httpx.Request) -> httpx.Response:
        batch = json.loads(request.content)
        if batch["operation"] != "remove":
            for record in batch["records"]:
                if record["key"] in self.held:
                    self.held[f"{record['key']}#copy"] = record["fields"]
        return super().receive(request)


def test_the_kit_fails_a_connector_whose_batches_exceed_the_vendor_cap(tmp_path: Path) -> None:
    suite = TestWebhook()
    suite.make_fake = SmallReceiver  # type: ignore[method-assign]
    with pytest.raises(AssertionError, match="over the vendor's cap 100"):
        suite.test_no_request_exceeds_the_vendor_batch_cap(tmp_path)


def test_the_kit_sees_duplicates_left_by_re_sends(tmp_path: Path) -> None:
    suite = TestWebhook()
    suite.make_fake = DuplicatingReceiver  # type: ignore[method-assign]
    with pytest.raises(AssertionError, match="#copy"):
        suite.test_resending_converges_without_duplicates(tmp_path)


def test_the_kit_reports_what_a_fake_lacks_as_the_skip_reason(tmp_path: Path) -> None:
    suite = TestFile()
    with pytest.raises(pytest.skip.Exception, match="MembersFile lacks http: the file connector"):
        suite.test_5xx_is_retried(tmp_path, 503)


def test_a_fake_may_set_what_its_routes_need_after_the_base_init() -> None:
    """The order a plugin author writes naturally: ``super().__init__()`` first, then the
    attributes ``routes()`` reads (here the audience in the path)."""
    import respx

    class FakeAudience(FakeVendor):
        base_url = "https://api.audience.test"

        def __init__(self, audience: str) -> None:
            super().__init__()
            self.audience = audience

        def routes(self, api: respx.Router) -> None:
            api.get(f"/v2/audiences/{self.audience}").respond(200, json={"id": self.audience})

        def members(self) -> dict[str, dict[str, object]]:
            return {}

    fake = FakeAudience("a-1")
    router = respx.Router(assert_all_called=False)
    fake.mount(router)
    with httpx.Client(transport=httpx.MockTransport(router.handler)) as client:
        answer = client.get("https://api.audience.test/v2/audiences/a-1")
        missing = client.get("https://api.audience.test/v2/audiences/other")
    assert answer.json() == {"id": "a-1"}
    assert missing.status_code == 404
