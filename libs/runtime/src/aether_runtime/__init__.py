"""The runtime shell shared by Aether's services."""

from aether_runtime.failures import RetryLater
from aether_runtime.logs import configure_logging, log_context
from aether_runtime.projection import Projection, stored_sequence
from aether_runtime.service import ConsumerSpec, Delivery, Service, serve
from aether_runtime.settings import RuntimeSettings

__all__ = [
    "ConsumerSpec",
    "Delivery",
    "Projection",
    "RetryLater",
    "RuntimeSettings",
    "Service",
    "configure_logging",
    "log_context",
    "serve",
    "stored_sequence",
]
