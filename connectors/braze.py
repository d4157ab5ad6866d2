"""Braze REST API: user attributes through ``/users/track``, membership as subscription group
state.

Upsert sends at most 75 attribute objects per ``POST /users/track`` (the classic per-array
limit; accounts on the newer combined limits set ``batch_size: 50``). Braze answers 201/200
``{"message": "success", "errors": [...]}`` when some objects failed; each error's ``index``
points back into the attributes array. Membership is a subscription group: members who join
get ``subscribed`` inside the same ``/users/track`` object (one call creates the user and
subscribes it, so no eventual-consistency gap), members who leave are set ``unsubscribed`` with
``POST /v2/subscription/status/set``, at most 50 ids per call. ``X-RateLimit-*`` headers are
read on every answer (Reset is epoch seconds).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import httpx
from pydantic import Field, SecretStr

from syncer.connector import (
    BatchResult,
    Capabilities,
    Outcome,
    Record,
)
from syncer.declarations import BearerAuth, RateLimitHeaders
from syncer.errors import BatchRejected, ConfigError
from syncer.ratelimit import RateLimit
from syncer.rest import RestConfig, RestConnector, chunks
from syncer.steps import apply

MAX_ATTRIBUTES = 75  # per /users/track attributes array [DOC]
MAX_STATUS_IDS = 50  # external_ids or emails per subscription group entry [DOC]


class BrazeConfig(RestConfig):
    """The ``destination:`` block of a Braze sync."""

    api_key: SecretStr
    #: The instance's REST endpoint, e.g. https://rest.iad-01.braze.com (no default).
    base_url: str = Field(description="Braze REST endpoint of the instance.")
    #: How the sync key identifies a Braze user.
    identifier: Literal["external_id", "email"] = "external_id"
    #: Subscription group that stands for "in the segment"; needed to remove members.
    subscription_group_id: str | None = Field(default=None, min_length=1)
    #: Never create users, only update existing ones (always on in update_only mode).
    update_existing_only: bool = False
    batch_size: int | None = Field(default=MAX_ATTRIBUTES, ge=1, le=MAX_ATTRIBUTES)


class BrazeConnector(RestConnector[BrazeConfig]):
    """``/users/track`` attributes plus subscription group membership."""

    name = "braze"
    description = "Braze user attributes and subscription group membership"
    capabilities = Capabilities(max_batch_size=MAX_ATTRIBUTES)
    # /users/track: 3,000 per 3 s per workspace; /subscription/status/set: 5,000 per minute.
    # Both windows apply to every call: the safe reading when one limiter serves both.
    rate_limits = (RateLimit(3000, 3.0), RateLimit(5000, 60.0))
    max_concurrency = 8
    # Limits are per workspace, which the REST key belongs to (the default account).
    auth = BearerAuth("api_key")
    # Members who leave are unsubscribed from this group: membership and mirror need it.
    membership_fields = ("subscription_group_id",)
    # ``X-RateLimit-Remaining: 0`` means wait until ``X-RateLimit-Reset`` (epoch seconds).
    rate_limit_headers = RateLimitHeaders(
        "X-RateLimit-Remaining", reset="X-RateLimit-Reset", reset_unit="epoch"
    )

    # -- contract -------------------------------------------------------------------------

    def check(self) -> None:
        """A read that needs the key: the subscription group's state of a placeholder user
        when a group is configured (a wrong group id is a 400), else an empty track call."""
        cfg = self.settings
        if cfg.subscription_group_id is not None:
            params = {
                "subscription_group_id": cfg.subscription_group_id,
                cfg.identifier: _probe(cfg),
            }
            self.probe("GET", "/subscription/status/get", "subscription_group_id", params=params)
        else:
            self.probe("POST", "/users/track", "api_key", json_body={"attributes": []})

    def add(self, records: Sequence[Record]) -> BatchResult:
        return self._track(records, subscribe=True)

    def update(self, records: Sequence[Record]) -> BatchResult:
        return self._track(records, subscribe=False)

    def remove(self, records: Sequence[Record]) -> BatchResult:
        """Unsubscribe from the group, 50 ids per call (a step each: a retry of the batch
        sends only the calls that did not succeed); the Braze user itself stays."""
        if self.settings.subscription_group_id is None:
            raise ConfigError("braze: subscription_group_id is needed to remove members")
        with self.progress.batch("remove", records) as steps:
            result = BatchResult(records)
            for outcomes in steps.each(
                "unsubscribe", chunks(records, MAX_STATUS_IDS), self._unsubscribe
            ):
                apply(result, outcomes)
            return result

    def _unsubscribe(self, part: Sequence[Record]) -> list[Outcome]:
        cfg = self.settings
        id_list = "external_ids" if cfg.identifier == "external_id" else "emails"
        entry = {
            "subscription_group_id": cfg.subscription_group_id,
            "subscription_state": "unsubscribed",
            id_list: [self._identity(r) for r in part],
        }
        response = self.request(
            "POST", "/v2/subscription/status/set", json_body={"subscription_groups": [entry]}
        )
        answered = BatchResult(part)
        self._errors(response, part, answered, indexed=False)
        return answered.outcomes()

    # -- internals ------------------------------------------------------------------------

    def _identity(self, record: Record) -> str:
        key = record.key
        return key.strip().lower() if self.settings.identifier == "email" else key

    def _attributes(self, record: Record, subscribe: bool) -> dict[str, Any]:
        cfg = self.settings
        item: dict[str, Any] = {name: value for name, value in record.fields.items()}
        item[cfg.identifier] = self._identity(record)
        item["_update_existing_only"] = (
            cfg.update_existing_only or self.context.mode == "update_only"
        )
        if subscribe and cfg.subscription_group_id is not None:
            item["subscription_groups"] = [
                {
                    "subscription_group_id": cfg.subscription_group_id,
                    "subscription_state": "subscribed",
                }
            ]
        return item

    def _track(self, records: Sequence[Record], *, subscribe: bool) -> BatchResult:
        result = BatchResult(records)
        body = {"attributes": [self._attributes(r, subscribe) for r in records]}
        response = self.request("POST", "/users/track", json_body=body)
        self._errors(response, records, result, indexed=True)
        return result

    def _errors(
        self,
        response: httpx.Response,
        records: Sequence[Record],
        result: BatchResult,
        *,
        indexed: bool,
    ) -> None:
        """Per-record errors from a 2xx answer. An error with an ``index`` into the attributes
        array rejects that record; one without (or a non-success message) says nothing about
        which record, so the whole part is marked failed and sent again next run."""
        data = self.json(response)
        if not isinstance(data, dict):
            return
        message = str(data.get("message") or "")
        listed = data.get("errors")
        errors = [e for e in listed if isinstance(e, dict)] if isinstance(listed, list) else []
        if message and message != "success":
            raise BatchRejected(self.reason(f"braze: {message}", records))
        for error in errors:
            text = self.reason(f"braze: {_error_text(error)}", records)
            index = error.get("index")
            if indexed and isinstance(index, int) and 0 <= index < len(records):
                result.reject(records[index].key, text)
                continue
            for record in records:
                result.fail(record.key, text)


def _error_text(error: dict[str, Any]) -> str:
    return str(error.get("type") or error.get("message") or error.get("error") or "rejected")


def _probe(cfg: BrazeConfig) -> str:
    return "syncer-check@example.invalid" if cfg.identifier == "email" else "syncer-check"
