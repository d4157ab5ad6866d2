"""A receiver of syncer's webhook, for the connector kit: it applies each batch's operation to
its members and names the records it refuses in ``{"rejected": [...]}``."""

from __future__ import annotations

import json

import httpx
import respx

from syncer.testing import FakeVendor, Fields


class FakeReceiver(FakeVendor):
    base_url = "https://hooks.example.test"
    batch_cap = 10_000

    def __init__(self) -> None:
        super().__init__()
        self.held: dict[str, Fields] = {}

    def routes(self, api: respx.Router) -> None:
        api.post("/syncer").mock(side_effect=self.receive)

    def members(self) -> dict[str, Fields]:
        return dict(self.held)

    def receive(self, request: httpx.Request) -> httpx.Response:
        batch = json.loads(request.content)
        records = batch["records"]
        refused = self.check_batch([r["key"] for r in records])
        if refused is not None:
            return refused
        rejected = []
        for record in records:
            if self.record_refused(record["key"]):
                rejected.append({"key": record["key"], "reason": "refused by the receiver"})
            elif batch["operation"] == "remove":
                self.held.pop(record["key"], None)
            else:
                self.held[record["key"]] = record["fields"]
        return httpx.Response(200, json={"rejected": rejected})
