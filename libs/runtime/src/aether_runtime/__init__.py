"""The runtime shell shared by Aether's services."""

from aether_runtime.consumers import ConsumerSpec, ensure_consumer
from aether_runtime.failures import RetryLater
from aether_runtime.logs import configure_logging, log_context
from aether_runtime.projection import Projection, stored_sequence
from aether_runtime.service import Delivery, Service, serve
from aether_runtime.settings import RuntimeSettings

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
    "serve",
    "stored_sequence",
]
