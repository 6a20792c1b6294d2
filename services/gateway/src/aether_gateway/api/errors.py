"""Errors as the API answers them: ``{"error": "<what went wrong>", "detail": <more>}``.

Every ``503`` and ``429`` says when to come back (``Retry-After``, whole seconds), so a
client (the board, the CLI) backs off by the gateway's word: each cause names its own
wait where it is raised, and an answer that names none is given ``DEFAULT_RETRY_SECONDS``
on its way out (``on_http_error``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import (
    ClientException,
    HTTPException,
    NotFoundException,
    ServiceUnavailableException,
    ValidationException,
)
from litestar.openapi import ResponseSpec
from litestar.status_codes import HTTP_409_CONFLICT

from aether_gateway.adapters.faults import DATABASE_ERRORS, describe
from aether_gateway.domain.commands import Refusal

log = logging.getLogger("aether.gateway.api")

# When each cause of a 503 is worth asking about again, in seconds.
# The database: its pool reconnects on its own, at once.
DATABASE_RETRY_SECONDS = 1
# The event bus: the gateway's connection is tried again every half second.
BUS_RETRY_SECONDS = 2
# The runners' registry on the bus (read at most every two seconds).
RUNNERS_RETRY_SECONDS = 2
# A 503 or 429 raised without one (none is, but a new cause may forget).
DEFAULT_RETRY_SECONDS = 5
_RETRIED = frozenset({429, 503})


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every error: one sentence saying what is wrong, and details when there are any."""

    error: str
    detail: Any = None


def error_responses(*codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI descriptions of the error answers a route may give. A route that takes a
    token (it may answer 401) counts its caller's requests, so it may answer 429 too;
    every route may answer 400 (``inputs.InputGuard`` refuses some query strings and
    paths before any route sees them)."""
    if 401 in codes and 429 not in codes:
        codes = (*codes, 429)
    if 400 not in codes:
        codes = (400, *codes)
    descriptions = {
        400: (
            "The request is invalid; `error` names each invalid field and why. On every"
            " route: a query parameter or the path holding a control character (U+0000–"
            "U+001F, U+007F–U+009F) or a lone surrogate, or not UTF-8; in a JSON body, a"
            " string holding NUL or an unpaired surrogate, an unknown field, a value of"
            " the wrong type"
        ),
        401: "No valid credentials: send `Authorization: Bearer <token>`",
        403: "The token's scopes do not allow this",
        404: "No such mission (or task, or token)",
        409: (
            "The mission's state does not allow this now, or the first request with this "
            "Idempotency-Key is still running (`Retry-After` says when to try again)"
        ),
        422: "The Idempotency-Key was used before with a different request",
        429: "Too many requests; `Retry-After` says when to try again",
        502: "The git broker, or a remote repository it reads, answered with an error",
        503: (
            "The event bus, the database, the identity provider or the git broker is"
            " unavailable; `Retry-After` says when to try again"
        ),
        504: "The git broker did not answer in time; try again",
    }
    return {
        code: ResponseSpec(
            data_container=ErrorBody, description=descriptions[code], generate_examples=False
        )
        for code in codes
    }


def not_found(what: str, **detail: Any) -> NotFoundException:
    return NotFoundException(detail=f"{what} not found", extra=detail or None)


def mission_not_found(mission_id: str) -> NotFoundException:
    return not_found(f"mission {mission_id!r}", mission_id=mission_id)


def conflict(message: str, **detail: Any) -> HTTPException:
    return HTTPException(status_code=HTTP_409_CONFLICT, detail=message, extra=detail or None)


def retry_seconds(seconds: float) -> int:
    """A wait as ``Retry-After`` says it: whole seconds, rounded up, at least one."""
    return max(1, math.ceil(seconds))


def service_unavailable(message: str, retry_after: float, **detail: Any) -> HTTPException:
    """A 503 saying when to try again."""
    return ServiceUnavailableException(
        detail=message,
        extra=detail or None,
        headers={"Retry-After": str(retry_seconds(retry_after))},
    )


def unavailable(
    status: int, message: str, retry_after: float | None = None, **detail: Any
) -> HTTPException:
    """A 5xx of a service behind the gateway (``status``), with its reason, and when to
    ask again (``retry_after``, for a 503)."""
    headers = None if retry_after is None else {"Retry-After": str(retry_seconds(retry_after))}
    return HTTPException(status_code=status, detail=message, extra=detail or None, headers=headers)


def bad_request(message: str, **detail: Any) -> ClientException:
    return ClientException(detail=message, extra=detail or None)


def refused(refusal: Refusal) -> HTTPException:
    """A command the domain refused, as the HTTP error it is."""
    if refusal.kind == "not_found":
        return NotFoundException(detail=refusal.message, extra=refusal.detail)
    return conflict(refusal.message, **(refusal.detail or {}))


def _error_response(
    status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None
) -> Response[ErrorBody]:
    return Response(ErrorBody(error=error, detail=detail), status_code=status, headers=headers)


def on_validation_error(
    request: Request[Any, Any, Any], exc: ValidationException
) -> Response[ErrorBody]:
    """Name each invalid field and why, in one sentence and in detail."""
    problems = exc.extra if isinstance(exc.extra, list) else []
    messages = [
        f"{p.get('key') or p.get('source') or 'request'}: {p.get('message')}"
        for p in problems
        if isinstance(p, dict)
    ]
    error = "invalid request" + (f" ({'; '.join(messages)})" if messages else "")
    return _error_response(exc.status_code, error, problems or exc.detail)


def on_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    headers = exc.headers
    if exc.status_code in _RETRIED and not any(k.lower() == "retry-after" for k in headers or {}):
        headers = {**(headers or {}), "Retry-After": str(DEFAULT_RETRY_SECONDS)}
    return _error_response(exc.status_code, exc.detail, exc.extra, headers)


def on_unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    if isinstance(exc, DATABASE_ERRORS):
        # The database went away (restarted, its connections lost) or the pool had no
        # connection in time: nothing wrong with the request, which may be sent again
        # once the pool has reconnected, as it does on its own.
        log.warning(
            "the database did not answer", extra={"path": request.url.path, "error": describe(exc)}
        )
        return _error_response(
            503,
            "the database is unavailable; try again",
            None,
            {"retry-after": str(DATABASE_RETRY_SECONDS)},
        )
    log.exception("unhandled error", extra={"path": request.url.path}, exc_info=exc)
    return _error_response(500, "internal error", None)
