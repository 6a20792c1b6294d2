"""The runtime shell shared by Aether's services.

Its names are imported on first use: a process that needs one module of the runtime (the
command line's stack needs the bus's credentials, not the service shell and FastStream
behind it) does not pay for the rest, about 0.3 s of CPU at start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aether_runtime.consumers import ConsumerSpec, ensure_consumer
    from aether_runtime.failures import RetryLater
    from aether_runtime.logs import configure_logging, log_context
    from aether_runtime.projection import Projection, stored_sequence
    from aether_runtime.service import Delivery, Service, note, serve
    from aether_runtime.settings import RuntimeSettings

# Each name and the module it comes from.
_HOMES = {
    "ConsumerSpec": "aether_runtime.consumers",
    "ensure_consumer": "aether_runtime.consumers",
    "RetryLater": "aether_runtime.failures",
    "configure_logging": "aether_runtime.logs",
    "log_context": "aether_runtime.logs",
    "Projection": "aether_runtime.projection",
    "stored_sequence": "aether_runtime.projection",
    "Delivery": "aether_runtime.service",
    "Service": "aether_runtime.service",
    "note": "aether_runtime.service",
    "serve": "aether_runtime.service",
    "RuntimeSettings": "aether_runtime.settings",
}

__all__ = [
    "ConsumerSpec",
    "Delivery",
    "Projection",
    "RetryLater",
    "RuntimeSettings",
    "Service",
    "configure_logging",
    "ensure_consumer",
    "log_context",
    "note",
    "serve",
    "stored_sequence",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
