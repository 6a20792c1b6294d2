"""``python -m aether_gateway``: serve the gateway with uvicorn."""

from __future__ import annotations

from types import FrameType

import uvicorn

from aether_gateway.app import Gateway, shared_routes
from aether_gateway.bootstrap import bootstrap_app
from aether_gateway.config import SERVICE_NAME, GatewaySettings
from aether_runtime import configure_logging, listen
from aether_runtime.server import Server
from aether_runtime.settings import settings_or_exit


class _Server(Server):
    """Ends open event streams as soon as a stop is asked for.

    uvicorn waits for open connections before it runs the app's shutdown, and an event
    stream never ends by itself; telling the streams first lets the stop be prompt.
    """

    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        super().__init__(config)
        self._gateway = gateway

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._gateway.context.closing.set()
        super().handle_exit(sig, frame)


def prestart() -> None:
    """Done once by a prestarter (``aether.prestart``) for every gateway it forks: the
    routes, which hold no gateway's state, built before the fork (about a quarter of a
    second of CPU a start otherwise)."""
    shared_routes()


def main() -> None:
    settings = settings_or_exit(GatewaySettings.from_env, SERVICE_NAME)
    configure_logging(SERVICE_NAME, settings.runtime.log_level)
    sock = listen.bind_or_exit(settings.runtime.host, settings.runtime.port)
    app = bootstrap_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.runtime.host,
        port=settings.runtime.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
        # Whose X-Forwarded-For names the client (the sign-in limit counts per address).
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )
    _Server(config, app.gateway).run(sockets=[sock])


if __name__ == "__main__":
    main()
