"""Every built-in connector passes the connector kit's standard suite (syncer.testing)."""

from __future__ import annotations

from connectors.hubspot import HubSpotConnector
from connectors.webhook import WebhookConnector
from syncer.testing import ConnectorSuite
from tests.fake_hubspot import FakeHubSpot
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
