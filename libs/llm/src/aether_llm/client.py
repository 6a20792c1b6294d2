"""Building the anthropic client, and turning a response's usage into an event payload.

The SDK is imported only where a client is built: importing it costs a service about
1.3 s of CPU (2 s on a loaded machine), which a planner or runner that never calls the
model need not pay at every start. ``LazyClient`` is how a service holds its client.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
from typing import TYPE_CHECKING, Literal

import httpx2

from aether_events import TIERS, Usage
from aether_llm.config import OFFLINE_MODEL, LLMSettings
from aether_llm.messages_server import MessagesServer
from aether_llm.metrics import metered_http_client, models_at_zero
from aether_llm.offline import start_offline_server
from aether_llm.pricing import PriceTable, load_prices

if TYPE_CHECKING:
    import anthropic
    from anthropic.types import Usage as ApiUsage

log = logging.getLogger("aether.llm")

_offline_lock = threading.Lock()
_offline_server: MessagesServer | None = None


def offline_base_url() -> str:
    """The URL of this process's offline model server, started on first use."""
    global _offline_server
    with _offline_lock:
        if _offline_server is None:
            _offline_server = start_offline_server()
            log.warning(
                "no ANTHROPIC_API_KEY: using the OFFLINE model (deterministic, not a "
                "language model; for demos and tests)",
                extra={"model": OFFLINE_MODEL, "url": _offline_server.url},
            )
        return _offline_server.url


def make_client(settings: LLMSettings) -> anthropic.AsyncAnthropic:
    """An async client for the configured endpoint, or for the offline model; its calls
    are metered (``aether_llm.metrics``)."""
    return LazyClient(settings).now()


class LazyClient:
    """The client ``make_client`` builds, built when it is first asked for.

    What a service shows from its start is done at once, as ``make_client`` does it: the
    offline model's server is started (and its warning logged) and the configured
    models' series are exported at zero. Only the SDK's client, and the SDK's import
    with it, waits for the first call.
    """

    def __init__(self, settings: LLMSettings) -> None:
        self._settings = settings
        self._base_url: str | None
        if settings.offline:
            self._base_url = settings.base_url or offline_base_url()
            self._api_key = "offline"
        else:
            self._base_url = settings.base_url
            self._api_key = settings.api_key or ""
        models_at_zero(settings.model_for(tier) for tier in TIERS)
        self._lock = threading.Lock()
        self._client: anthropic.AsyncAnthropic | None = None

    def now(self) -> anthropic.AsyncAnthropic:
        """The client, built (and the SDK imported) in this thread if it is not yet."""
        with self._lock:
            if self._client is None:
                import anthropic

                self._client = anthropic.AsyncAnthropic(
                    api_key=self._api_key,
                    base_url=self._base_url,
                    max_retries=self._settings.max_retries,
                    timeout=self._settings.timeout_seconds,
                    http_client=metered_http_client(),
                    open_telemetry=sdk_spans(),
                )
            return self._client

    def endpoint(self) -> tuple[str, str]:
        """The URL (no trailing slash) and key the client calls with, as the client would
        give them; it is built for them only when the URL is the SDK's default."""
        if self._base_url is None:
            return endpoint_of(self.now())
        # The URL as the SDK keeps it (an ``httpx2.URL``), without building the client.
        return str(httpx2.URL(self._base_url)).rstrip("/"), self._api_key

    async def aclose(self) -> None:
        """Close the client's connections, if it was built (a service's last step: the
        HTTP session is bound to the event loop that made its first call)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def get(self) -> anthropic.AsyncAnthropic:
        """The client; the first time, built in a worker thread, so that the SDK's import
        (a second or two of CPU) leaves the event loop turning between its steps."""
        if self._client is not None:
            return self._client
        return await asyncio.to_thread(self.now)


def sdk_spans() -> Literal[False] | None:
    """The SDK's ``open_telemetry`` option: ``None`` (its default, spans as the
    environment says) when an OpenTelemetry SDK is installed, ``False`` otherwise. With
    the OpenTelemetry API alone every span is a no-op, and the SDK still gathered each
    call's span attributes from its request and headers: about a quarter of a
    millisecond of CPU per model call, a tenth of the call's. (Decided by what is
    installed, not by a setting: a service reads only the settings it is handed.)"""
    try:
        found = importlib.util.find_spec("opentelemetry.sdk")
    except (ImportError, ValueError):
        found = None
    return None if found is not None else False


def endpoint_of(client: anthropic.AsyncAnthropic | LazyClient) -> tuple[str, str]:
    """The URL (no trailing slash) and key ``client`` calls the model with."""
    if isinstance(client, LazyClient):
        return client.endpoint()
    return str(client.base_url).rstrip("/"), client.api_key or ""


async def client_of(
    client: anthropic.AsyncAnthropic | LazyClient,
) -> anthropic.AsyncAnthropic:
    """``client`` itself, or the client a ``LazyClient`` builds."""
    return await client.get() if isinstance(client, LazyClient) else client


def usage_of(model: str, api_usage: ApiUsage, prices: PriceTable | None = None) -> Usage:
    """The event form of a response's usage, with its cost from the price table.

    The transport's metrics (``aether_llm.metrics``) price the same reply for
    ``aether_model_cost_usd_total``, with the same ``PriceTable.cost``: they count every
    HTTP reply as it passes (a call made again after a crash too), where the event is the
    step's one record, whose id the stream keeps once.
    """
    return (prices or load_prices()).priced(
        model,
        Usage(
            input_tokens=api_usage.input_tokens,
            output_tokens=api_usage.output_tokens,
            cache_creation_input_tokens=api_usage.cache_creation_input_tokens or 0,
            cache_read_input_tokens=api_usage.cache_read_input_tokens or 0,
        ),
    )


def add_usage(a: Usage, b: Usage) -> Usage:
    """Sum two usages (``aether_events.usage``: known costs add up, with a flag saying
    whether every part's was known)."""
    return a.plus(b)
