"""Structured JSON logs carrying the service, mission, task and event ids."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from contextlib import AbstractContextManager
from datetime import UTC, datetime

import msgspec

_service: str = "aether"
_EMPTY: dict[str, str] = {}
_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar(
    "aether_log_context",
    default=_EMPTY,  # never mutated: log_context sets a new dict
)

NOISY = ("uvicorn.access", "nats", "faststream", "httpx", "httpcore", "httpx2", "httpcore2")

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}
# Extras that are no data: uvicorn's ``color_message`` repeats ``msg`` with terminal
# colour escapes, noise in a JSON line.
_DROPPED = _STANDARD | {"color_message"}
# A value JSON has no form for is written as its ``str``.
_ENCODER = msgspec.json.Encoder(enc_hook=str)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, service, logger, message, context, extras."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": _service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        data.update(_context.get())
        for key, value in record.__dict__.items():
            if key not in _DROPPED and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        try:
            return _ENCODER.encode(data).decode()
        except (TypeError, ValueError):  # a mapping keyed by what JSON cannot key by
            return json.dumps(data, default=str)


def configure_logging(service: str, level: str = "INFO") -> None:
    """Send every logger's records to stderr as JSON lines tagged with ``service``."""
    global _service
    _service = service
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # What a record would otherwise look up and no line shows: the caller's file and
    # line (a walk up the stack for every record), the thread and the process.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Libraries that log every request or message at INFO; the anthropic SDK carries its
    # own copies of httpx and httpcore (``httpx2``, ``httpcore2``), which log every model
    # call's request line.
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log_context(**ids: str | None) -> AbstractContextManager[None]:
    """Attach ids (mission_id, task_id, event_id, …) to every record logged inside."""
    return _LogContext({k: v for k, v in ids.items() if v is not None})


class _LogContext:
    """A class rather than a generator: one is entered for every delivery a service
    handles, and a generator's context manager cost twice as much."""

    __slots__ = ("_ids", "_token")

    def __init__(self, ids: dict[str, str]) -> None:
        self._ids = ids

    def __enter__(self) -> None:
        self._token = _context.set({**_context.get(), **self._ids})

    def __exit__(self, *exc: object) -> None:
        _context.reset(self._token)
