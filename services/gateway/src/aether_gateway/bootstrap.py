"""The one place the gateway's real parts are built from its settings."""

from __future__ import annotations

from aether_gateway.adapters.db import Database
from aether_gateway.adapters.oidc import OidcVerifier
from aether_gateway.app import Gateway, GatewayApp, create_app
from aether_gateway.config import GatewaySettings


def bootstrap(settings: GatewaySettings | None = None) -> Gateway:
    """The gateway from ``settings`` (default: the environment): its PostgreSQL pool and,
    when OIDC is configured, the verifier of the provider's tokens."""
    settings = settings or GatewaySettings.from_env()
    db = Database(settings.database_url, max_size=settings.db_pool_max_size)
    oidc = (
        OidcVerifier(settings.oidc, public_url=settings.base_url)
        if settings.oidc is not None
        else None
    )
    return Gateway(settings, db=db, oidc=oidc)


def bootstrap_app(settings: GatewaySettings | None = None) -> GatewayApp:
    """The ASGI app of the gateway ``bootstrap`` builds (``app.gateway`` is it)."""
    return create_app(bootstrap(settings))
