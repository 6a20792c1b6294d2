"""Errors as the API answers them: ``{"error": "<what went wrong>", "detail": <more>}``."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import (
    ClientException,
    HTTPException,
    NotFoundException,
    ValidationException,
)
from litestar.openapi import ResponseSpec
from litestar.status_codes import HTTP_409_CONFLICT

from aether_gateway.adapters.faults import DATABASE_ERRORS, describe
from aether_gateway.domain.commands import Refusal

log = logging.getLogger("aether.gateway.api")


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every error: one sentence saying what is wrong, and details when there are any."""

    error: str
    detail: Any = None


def error_responses(*codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI descriptions of the error answers a route may give. A route that takes a
    token (it may answer 401) counts its caller's requests, so it may answer 429 too."""
    if 401 in codes and 429 not in codes:
        codes = (*codes, 429)
    descriptions = {
        400: "The request is invalid; `error` names each invalid field and why",
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
        503: "The event bus, the database or the git broker is unavailable; try again",
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


def unavailable(status: int, message: str, **detail: Any) -> HTTPException:
    """A 5xx of a service behind the gateway (``status``), with its reason."""
    return HTTPException(status_code=status, detail=message, extra=detail or None)


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
    return _error_response(exc.status_code, exc.detail, exc.extra, exc.headers)


def on_unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    if isinstance(exc, DATABASE_ERRORS):
        # The database went away (restarted, its connections lost) or the pool had no
        # connection in time: nothing wrong with the request, which may be sent again
        # once the pool has reconnected, as it does on its own.
        log.warning(
            "the database did not answer", extra={"path": request.url.path, "error": describe(exc)}
        )
        return _error_response(
            503, "the database is unavailable; try again", None, {"retry-after": "1"}
        )
    log.exception("unhandled error", extra={"path": request.url.path}, exc_info=exc)
    return _error_response(500, "internal error", None)
