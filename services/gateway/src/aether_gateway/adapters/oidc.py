"""OIDC bearer tokens: JWTs verified against the identity provider's JWKS."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import jwt

from aether_gateway.domain.auth import Principal, parse_scopes

log = logging.getLogger("aether.gateway.oidc")

# Asymmetric algorithms only: a JWKS publishes public keys, and accepting HS256 would let
# anyone who knows a public key sign tokens with it.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")


@dataclass(frozen=True)
class OidcSettings:
    jwks_url: str
    issuer: str | None = None
    audience: str | None = None
    # The claim holding the caller's scopes (a space-separated string or a list) and the
    # prefix that marks Aether's among them (``aether:write``).
    scope_claim: str = "scope"
    scope_prefix: str = "aether:"


class InvalidToken(Exception):
    """The bearer token is not a valid OIDC token for this gateway."""


class OidcVerifier:
    """Verifies signatures with keys fetched (and cached) from the JWKS URL."""

    def __init__(self, settings: OidcSettings) -> None:
        self.settings = settings
        self._jwks = jwt.PyJWKClient(settings.jwks_url, cache_keys=True, lifespan=300, timeout=10)

    async def principal(self, token: str) -> Principal:
        """The caller the token names, with the Aether scopes it grants."""
        # PyJWKClient fetches the key set with blocking I/O (cached after the first call).
        claims = await asyncio.to_thread(self._verify, token)
        subject = str(claims.get("sub") or "")
        if not subject:
            raise InvalidToken("the token names no subject")
        raw: Any = claims.get(self.settings.scope_claim, "")
        granted = raw if isinstance(raw, str | list) else ""
        scopes = parse_scopes(granted, self.settings.scope_prefix)
        name = str(claims.get("preferred_username") or claims.get("email") or subject)
        return Principal(id=f"oidc:{subject}", name=name, scopes=scopes, kind="oidc")

    def _verify(self, token: str) -> dict[str, Any]:
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(ALGORITHMS),
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": self.settings.audience is not None,
                },
                leeway=30,
            )
        except jwt.PyJWTError as error:
            raise InvalidToken(str(error)) from error
        return claims
