"""A stop order for a command another thread runs: whoever gives it need not know the
thread, its event loop or the command's process, and an order given before the command
starts stops it as it starts."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator


class StopOrder:
    """Thread-safe: ``stop`` from any thread calls every hook registered with ``on_stop``
    (at once for a hook registered after the order), once, and keeps the reason."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reason: str | None = None
        self._hooks: list[Callable[[], None]] = []

    @property
    def reason(self) -> str | None:
        """Why it was stopped, or ``None`` while it is not."""
        return self._reason

    def stop(self, reason: str) -> None:
        """Stop whatever is registered now or later; a second order changes nothing."""
        with self._lock:
            if self._reason is not None:
                return
            self._reason = reason
            hooks = list(self._hooks)
        for hook in hooks:
            hook()

    @contextlib.contextmanager
    def on_stop(self, hook: Callable[[], None]) -> Iterator[None]:
        """Call ``hook`` when the order comes while the block runs (or at once when it has
        come already). ``hook`` must not block and may be called from another thread,
        even just after the block ended."""
        with self._lock:
            given = self._reason is not None
            if not given:
                self._hooks.append(hook)
        try:
            if given:
                hook()
            yield
        finally:
            with self._lock:
                if hook in self._hooks:
                    self._hooks.remove(hook)
