"""Every built-in connector passes the connector kit's standard suite (syncer.testing)."""

from __future__ import annotations

from connectors.webhook import WebhookConnector
from syncer.testing import ConnectorSuite
from tests.fake_webhook import FakeReceiver


class TestWebhook(ConnectorSuite):
    connector = WebhookConnector
    destination = {"url": f"{FakeReceiver.base_url}/syncer", "secret": "${HOOK_SECRET}"}
    secrets = {"HOOK_SECRET": "hook-signing-secret-1234"}

    def make_fake(self) -> FakeReceiver:
        return FakeReceiver()
