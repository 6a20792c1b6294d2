"""The TLS context an HTTP client is given: the trust store loaded once per process.

An ``httpx`` client (or transport, the anthropic SDK's ``httpx2`` ones included) given
no context loads the trust store when it is made, whether or not it ever speaks TLS:
20 to 60 ms of CPU, more than most of the requests it then sends. Aether's processes
make clients often: the model client of every agent and planner, the OIDC verifier's
discovery and each sign-in's exchange, the broker's read API, each command of the
command line. Two contexts serve them all:

- ``shared()``: the trust store as ``httpx`` loads it by default (``SSL_CERT_FILE`` or
  ``SSL_CERT_DIR`` where set, else ``certifi``'s bundle), verified, loaded on first use
  and shared by every client of the process (an ``ssl.SSLContext`` is safe to share:
  each connection takes its own state from it). For a service, which lives long and may
  speak TLS to anything (a model API, an identity provider).
- ``for_url(url)``: for a short-lived process that speaks to one place (a command of the
  command line): a context that verifies and trusts nothing for a plain ``http://``
  URL, made in a millisecond or two (TLS through it, a redirect to ``https`` say, fails
  verification rather than connecting unverified), and ``shared()`` otherwise.
"""

from __future__ import annotations

import ssl
import threading

_lock = threading.Lock()
_shared: ssl.SSLContext | None = None


def shared() -> ssl.SSLContext:
    """The process's verifying context, the trust store loaded the first time."""
    global _shared
    with _lock:
        if _shared is None:
            import httpx  # here: the command line imports this module for ``for_url``

            _shared = httpx.create_ssl_context()
        return _shared


def for_url(url: str) -> ssl.SSLContext:
    """A context for a client of ``url`` alone (see the module's note)."""
    if url.lower().startswith("https://"):
        return shared()
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, and trusts nothing
