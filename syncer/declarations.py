"""What a :class:`~syncer.rest.RestConnector` declares instead of coding: auth, the vendor's
rate-limit headers, and the 4xx answers it reads itself.

Each declaration names config fields; the class checks them when it is defined (a field that
does not exist, or a credential that is not a ``SecretStr``, is a ``TypeError`` at import), so
a typo never reaches a run. Credentials are read as the request is built and never copied
anywhere else: the HTTP layer keeps every ``SecretStr`` out of messages.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import BaseModel, SecretStr

#: Every 4xx the engine would otherwise classify as a refused batch: 400-499 except 401 and
#: 403 (credentials), 408 (retried) and 429 (rate limited), which the engine always owns.
#: ``parsed_statuses = CLIENT_ERRORS`` hands them all to the connector.
ENGINE_STATUSES = frozenset({401, 403, 408, 429})
CLIENT_ERRORS: frozenset[int] = frozenset(range(400, 500)) - ENGINE_STATUSES

ResetUnit = Literal["seconds", "milliseconds", "epoch"]


class Auth(Protocol):
    """A credential declaration: the headers a request carries, built from config fields."""

    @property
    def secret_fields(self) -> tuple[str, ...]:
        """Config fields (``SecretStr``) the headers are built from: they also name the
        account by default (see ``RestConnector.account_fields``)."""
        ...

    def headers(self, config: BaseModel) -> dict[str, str]:
        """The headers for ``config``; none when a secret field is unset (optional)."""
        ...


def secret(config: BaseModel, field: str) -> str | None:
    """The value of the ``SecretStr`` field ``field`` of ``config``; None when unset."""
    value = getattr(config, field, None)
    if value is None:
        return None
    if not isinstance(value, SecretStr):
        raise TypeError(f"{type(config).__name__}.{field} must be a SecretStr")
    return value.get_secret_value()


@dataclass(frozen=True, slots=True)
class HeaderAuth:
    """``header: <prefix><secret>``: the credential in a header of the vendor's choosing,
    e.g. ``HeaderAuth("Access-Token", "access_token")`` or
    ``HeaderAuth("Authorization", "api_key", prefix="Klaviyo-API-Key ")``."""

    header: str
    field: str
    prefix: str = ""

    @property
    def secret_fields(self) -> tuple[str, ...]:
        return (self.field,)

    def headers(self, config: BaseModel) -> dict[str, str]:
        value = secret(config, self.field)
        return {} if value is None else {self.header: f"{self.prefix}{value}"}


@dataclass(frozen=True, slots=True)
class BearerAuth:
    """``Authorization: Bearer <secret>`` from the config field ``field``."""

    field: str

    @property
    def secret_fields(self) -> tuple[str, ...]:
        return (self.field,)

    def headers(self, config: BaseModel) -> dict[str, str]:
        value = secret(config, self.field)
        return {} if value is None else {"Authorization": f"Bearer {value}"}


@dataclass(frozen=True, slots=True)
class BasicAuth:
    """``Authorization: Basic base64(<username>:<secret>)``: the password from the config field
    ``field``, the user name given here (vendors that ignore it, like Mailchimp) or read from
    the config field ``username_field``."""

    field: str
    username: str = ""
    username_field: str | None = None

    @property
    def secret_fields(self) -> tuple[str, ...]:
        return (self.field,)

    def headers(self, config: BaseModel) -> dict[str, str]:
        value = secret(config, self.field)
        if value is None:
            return {}
        user = self.username
        if self.username_field is not None:
            user = str(getattr(config, self.username_field, None) or "")
        token = base64.b64encode(f"{user}:{value}".encode()).decode("ascii")
        return {"Authorization": f"Basic {token}"}


@dataclass(frozen=True, slots=True)
class RateLimitHeaders:
    """A vendor's window headers, read by the base class on every answer.

    When ``remaining`` reads 0 or less on an accepted answer, every request to the account is
    held until the window resets: the ``reset`` header's value (``reset_unit``: seconds to
    wait, milliseconds to wait, or Unix time), else ``default_reset`` seconds. A 429 without
    ``Retry-After`` is a spent window too: a declaration with a ``reset`` header then holds the
    account for it whatever ``remaining`` says (one without waits for ``remaining`` to say 0).
    Waits are capped by the engine's longest allowed wait. Example::

        RateLimitHeaders("X-RateLimit-Remaining", reset="X-RateLimit-Reset", reset_unit="epoch")
    """

    remaining: str
    reset: str | None = None
    reset_unit: ResetUnit = "seconds"
    default_reset: float | None = None

    def wait(
        self,
        headers: Mapping[str, str],
        *,
        rate_limited: bool = False,
        now: Callable[[], float] = time.time,
    ) -> float | None:
        """Seconds to hold the account after an answer with ``headers`` (None: no hold);
        ``rate_limited`` for a 429 without Retry-After."""
        left = number(headers.get(self.remaining))
        spent = left is not None and left <= 0
        if rate_limited and self.reset is not None:
            spent = True
        if not spent:
            return None
        value = number(headers.get(self.reset)) if self.reset is not None else None
        seconds: float | None = None
        if value is not None:
            if self.reset_unit == "milliseconds":
                seconds = value / 1000.0
            elif self.reset_unit == "epoch":
                seconds = value - now()
            else:
                seconds = value
        if seconds is None or seconds <= 0:
            seconds = self.default_reset
        return seconds if seconds is not None and seconds > 0 else None


def number(value: str | None) -> float | None:
    """A header's value as a finite number; None when absent or unreadable."""
    if value is None:
        return None
    try:
        parsed = float(value.strip())
    except ValueError:
        return None
    return parsed if math.isfinite(parsed) else None
