"""The command line's HTTP clients, made cheaply where they never speak TLS.

An ``httpx`` client loads the system's trust store when it is made, whether or not it
ever connects over TLS: about 60 ms of CPU, a fifth of a short command such as
``aether mission show``. A client of a plain ``http://`` gateway (what ``aether up``
serves) or of a local service's health endpoint gets a TLS context that trusts no
certificate instead (``aether_runtime.tls.for_url``): it is made in a couple of
milliseconds, and anything that did try TLS through it (an ``https`` URL given to a
request, or a redirect followed to one) would fail verification rather than connect
unverified. An ``https://`` gateway is verified against the trust store as before.
"""

from __future__ import annotations

from typing import Any

import httpx

from aether_runtime import tls


def client(base_url: str = "", **options: Any) -> httpx.Client:
    """An ``httpx.Client`` for ``base_url`` (empty: requests name whole plain-HTTP URLs)."""
    return httpx.Client(base_url=base_url, verify=tls.for_url(base_url), **options)
