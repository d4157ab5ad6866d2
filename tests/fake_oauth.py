"""A vendor's OAuth 2.0 token endpoint, served by the vendor fakes (``vendor.issuer = ...``).

It issues access tokens that live ``lifetime`` seconds (one or two in tests, an hour at
Google), answers a refresh token it does not know (or one ``revoke()``d) with ``invalid_grant``
and a wrong client with ``invalid_client``, each in the vendor's own shape (``style``): Google's
and LinkedIn's RFC 6749 errors, Salesforce's ``invalid_client_id`` and its answer with
``instance_url`` and no ``expires_in``, HubSpot's ``BAD_REFRESH_TOKEN``. Salesforce's JWT bearer
grant is checked for real: the RS256 signature against ``public_key``, ``iss``, ``sub``, ``aud``
and ``exp``. The fake's API accepts a token only while it lives (``valid``), so an expired
one gets the vendor's 401.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import parse_qs

from tests.contract import CapturedRequest

Style = Literal["google", "linkedin", "hubspot", "salesforce"]

#: Where each vendor's token endpoint lives (on the fake's server).
PATHS: dict[Style, str] = {
    "google": "/token",
    "linkedin": "/oauth/v2/accessToken",
    "hubspot": "/oauth/v1/token",
    "salesforce": "/services/oauth2/token",
}


class TokenIssuer:
    """Issues short-lived tokens for one client and refresh token (or JWT bearer user)."""

    def __init__(
        self,
        style: Style,
        *,
        client_id: str,
        client_secret: str | None,
        refresh_token: str | None,
        lifetime: float = 1.5,
        clock: Callable[[], float] = time.monotonic,
        public_key: Any = None,
        username: str | None = None,
        audience: str | None = None,
    ) -> None:
        self.style = style
        self.path = PATHS[style]
        self.client_id = client_id
        self.client_secret = client_secret
        self.refresh_token = refresh_token
        self.lifetime = lifetime
        self.clock = clock
        self.public_key = public_key
        self.username = username
        self.audience = audience
        #: What the fake's ``instance_url`` answers (Salesforce): set by the vendor fake.
        self.instance_url = ""
        self.issued: dict[str, float] = {}  # token -> when it expires
        self.tokens: list[str] = []  # every token issued, in order
        self.refusals = 0
        #: Tokens issued while the previous one still lived (renewed before expiry).
        self.early = 0
        self.event = threading.Condition()
        self._seq = itertools.count(1)

    # -- what tests look at -------------------------------------------------------------

    @property
    def grants(self) -> int:
        return len(self.tokens)

    def valid(self, token: str) -> bool:
        expires = self.issued.get(token)
        return expires is not None and self.clock() < expires

    def revoke(self) -> None:
        """The user revoked the app: the refresh token is refused from now on."""
        self.refresh_token = "revoked-" + (self.refresh_token or "")
        self.public_key = None

    def expire_all(self) -> None:
        """Every token issued so far stops working (a session timeout, a password reset)."""
        self.issued = dict.fromkeys(self.issued, float("-inf"))

    def wait_for(self, grants: int, timeout: float = 30) -> None:
        """Block until ``grants`` tokens were issued (an observable event, no fixed sleep)."""
        with self.event:
            if not self.event.wait_for(lambda: self.grants >= grants, timeout):
                raise AssertionError(f"{self.grants} of {grants} tokens issued after {timeout}s")

    # -- the endpoint -------------------------------------------------------------------

    def answer(self, req: CapturedRequest) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) for a token request."""
        form = {k: v[0] for k, v in parse_qs(req.body.decode("utf-8")).items()}
        kind = form.get("grant_type")
        if kind == "refresh_token":
            if form.get("client_id") != self.client_id or (
                self.client_secret is not None and form.get("client_secret") != self.client_secret
            ):
                return self._refuse_client()
            if self.refresh_token is None or form.get("refresh_token") != self.refresh_token:
                return self._refuse_grant()
        elif kind == "urn:ietf:params:oauth:grant-type:jwt-bearer" and self.style == "salesforce":
            claims = self._verified(form.get("assertion", ""))
            if claims is None:
                return self._refuse_grant()
            if claims.get("iss") != self.client_id:
                return self._refuse_client()
        else:
            return 400, {"error": "unsupported_grant_type", "error_description": "grant type"}
        return 200, self._issue()

    def _issue(self) -> dict[str, Any]:
        token = f"{self.style}-access-{next(self._seq):04d}-{time.monotonic_ns() % 10**9:09d}"
        with self.event:
            if self.tokens and self.valid(self.tokens[-1]):
                self.early += 1
            self.issued[token] = self.clock() + self.lifetime
            self.tokens.append(token)
            self.event.notify_all()
        if self.style == "salesforce":  # no expires_in: the org's session timeout decides
            return {
                "access_token": token,
                "instance_url": self.instance_url,
                "id": "https://login.salesforce.com/id/00Dxx0000001gPL/005xx000001Sv6A",
                "token_type": "Bearer",
                "issued_at": str(int(time.time() * 1000)),
                "signature": "c2lnbmF0dXJl",
            }
        body: dict[str, Any] = {"access_token": token, "expires_in": self.lifetime}
        if self.style == "google":
            body.update(scope="https://www.googleapis.com/auth/adwords", token_type="Bearer")
        elif self.style == "linkedin":
            body.update(refresh_token=self.refresh_token, refresh_token_expires_in=31_536_000)
        else:  # hubspot
            body.update(token_type="bearer", refresh_token=self.refresh_token)
        return body

    def _refuse_grant(self) -> tuple[int, dict[str, Any]]:
        self.refusals += 1
        if self.style == "hubspot":
            return 400, {
                "status": "BAD_REFRESH_TOKEN",
                "message": "missing or unknown refresh token",
                "correlationId": "2c5c0d63-0000-4000-8000-000000000000",
            }
        description = {
            "google": "Token has been expired or revoked.",
            "linkedin": "The provided authorization grant or refresh token is invalid, expired"
            " or revoked",
            "salesforce": "expired access/refresh token",
        }[self.style]
        return 400, {"error": "invalid_grant", "error_description": description}

    def _refuse_client(self) -> tuple[int, dict[str, Any]]:
        self.refusals += 1
        if self.style == "hubspot":
            return 400, {"status": "BAD_CLIENT_ID", "message": "missing or unknown client id"}
        if self.style == "salesforce":
            return 400, {"error": "invalid_client_id", "error_description": "client identifier"}
        return 401, {
            "error": "invalid_client",
            "error_description": "The OAuth client was not found.",
        }

    def _verified(self, assertion: str) -> dict[str, Any] | None:
        """The claims of a JWT bearer assertion that checks out, else None."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        parts = assertion.split(".")
        if len(parts) != 3 or self.public_key is None:
            return None
        try:
            header = json.loads(_unb64(parts[0]))
            claims = json.loads(_unb64(parts[1]))
            self.public_key.verify(
                _unb64(parts[2]),
                f"{parts[0]}.{parts[1]}".encode("ascii"),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (ValueError, InvalidSignature):
            return None
        fresh = isinstance(claims.get("exp"), int) and 0 < claims["exp"] - time.time() <= 300
        ok = (
            header.get("alg") == "RS256"
            and claims.get("sub") == self.username
            and claims.get("aud") == self.audience
            and fresh
        )
        return claims if ok else None


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def rsa_key_pair() -> tuple[str, Any]:
    """(PEM of a new RSA private key, its public key) for the JWT bearer flow."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    return pem, key.public_key()
