"""The web mission board: static files served by the gateway itself, same origin, same
auth (the browser holds an API token and calls the REST and SSE API like any client).

The pages are plain ES modules, a stylesheet and an HTML shell, shipped as package data:
no build step, no CDN, nothing fetched from anywhere but this gateway.
"""

from __future__ import annotations

from aether_gateway.web.routes import WEB_ROUTES, static_directory

__all__ = ["WEB_ROUTES", "static_directory"]
