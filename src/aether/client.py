"""A small client of the gateway's REST and SSE API (the CLI talks only to the gateway)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from aether import http as aether_http

DEFAULT_URL = "http://127.0.0.1:8100"


class ApiError(Exception):
    """The gateway answered with an error (``status``) and said why: ``message`` is its
    sentence, ``detail`` what it added (the mission's status of a refused command…),
    ``retry_after`` the seconds its ``Retry-After`` said to wait (a 429 or 503's), or None."""

    def __init__(self, status: int, body: str, retry_after: float | None = None) -> None:
        detail: Any = None
        try:
            parsed = json.loads(body)
            message = parsed.get("error") or parsed.get("detail") or body
            if isinstance(parsed.get("error"), str):
                detail = parsed.get("detail")
        except (ValueError, AttributeError):
            message = body
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = str(message).strip() or f"the gateway answered {status}"
        self.detail = detail
        self.retry_after = retry_after


@dataclass
class SseEvent:
    """One Server-Sent Event: ``id`` is the stream sequence (``None`` for telemetry)."""

    id: str | None
    event: str
    data: dict[str, Any]


# A read refused for a while (a ``429``: the gateway's read limit; a ``503``: the database
# or the bus away) is asked again this many times at most, and only when the gateway says
# it may be asked again within this many seconds.
READ_RETRIES = 4
READ_RETRY_SECONDS = 10.0
_TRY_AGAIN = frozenset({429, 503})


def _retry_after(response: httpx.Response) -> float | None:
    """The seconds a ``429`` or ``503`` says to wait (whole seconds, as the gateway says
    them), if it is one that says so."""
    if response.status_code not in _TRY_AGAIN:
        return None
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


def _clean(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None and v != []}


class GatewayClient:
    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        self.url = (url or os.environ.get("AETHER_URL") or DEFAULT_URL).rstrip("/")
        headers = {}
        token = token or os.environ.get("AETHER_TOKEN")
        if token:
            headers["authorization"] = f"Bearer {token}"
        self._http = aether_http.client(self.url, headers=headers, timeout=30.0)

    def close(self) -> None:
        self._http.close()

    def _check(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise ApiError(response.status_code, response.text, _retry_after(response))
        return response.json() if response.content else None

    def _get(self, path: str, **params: Any) -> Any:
        """A read; one refused for a short while (``429`` or ``503`` with a
        ``Retry-After`` of at most ``READ_RETRY_SECONDS``) is asked again once it says."""
        for _ in range(READ_RETRIES):
            response = self._http.get(path, params=_clean(params))
            wait = _retry_after(response)
            if wait is None or wait > READ_RETRY_SECONDS:
                break
            time.sleep(wait)
        return self._check(response)

    def _post(
        self, path: str, body: dict[str, Any] | None = None, idempotency_key: str | None = None
    ) -> Any:
        headers = {"idempotency-key": idempotency_key} if idempotency_key else {}
        return self._check(self._http.post(path, json=body, headers=headers))

    # --- missions ----------------------------------------------------------------------

    def submit(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._post("/missions", body, idempotency_key)
        return result

    def missions(
        self,
        status: list[str] | None = None,
        repository: str | None = None,
        since: str | None = None,
        until: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """One page of missions: ``{"missions": [...], "next_cursor": ...}``."""
        page: dict[str, Any] = self._get(
            "/missions",
            status=status,
            repository=repository,
            since=since,
            until=until,
            cursor=cursor,
            limit=limit,
        )
        return page

    def show(self, mission_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._get(f"/missions/{mission_id}")
        return result

    def task(self, mission_id: str, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._get(f"/missions/{mission_id}/tasks/{task_id}")
        return result

    def task_diff(self, mission_id: str, task_id: str) -> dict[str, Any]:
        """The task's commit against its base, as the git broker reads it (any repository
        the broker holds, local or remote)."""
        result: dict[str, Any] = self._get(f"/missions/{mission_id}/tasks/{task_id}/diff")
        return result

    def mission_diff(self, mission_id: str) -> dict[str, Any]:
        """The mission's integration branch against its base (every task merged so far),
        as the git broker reads it."""
        result: dict[str, Any] = self._get(f"/missions/{mission_id}/diff")
        return result

    def activity(
        self, mission_id: str, task_id: str | None = None, attempt: int | None = None
    ) -> dict[str, Any]:
        """The agents' starts, progress reports and ends on the mission's tasks."""
        params = _clean({"task_id": task_id, "attempt": attempt})
        result: dict[str, Any] = self._get(f"/missions/{mission_id}/activity", **params)
        return result

    def transcript(
        self,
        mission_id: str,
        task_id: str,
        attempt: int | None = None,
        after_attempt: int | None = None,
        after: int | None = None,
    ) -> dict[str, Any]:
        """One page of a task's transcript, after ``(after_attempt, after)``."""
        result: dict[str, Any] = self._get(
            f"/missions/{mission_id}/tasks/{task_id}/transcript",
            attempt=attempt,
            after_attempt=after_attempt,
            after=after,
        )
        return result

    def approve(self, mission_id: str, version: int | None = None) -> dict[str, Any]:
        body = {"version": version} if version is not None else {}
        result: dict[str, Any] = self._post(f"/missions/{mission_id}/plan/approve", body)
        return result

    def message(self, mission_id: str, text: str) -> dict[str, Any]:
        result: dict[str, Any] = self._post(f"/missions/{mission_id}/messages", {"text": text})
        return result

    def pause(self, mission_id: str, reason: str = "") -> dict[str, Any]:
        result: dict[str, Any] = self._post(f"/missions/{mission_id}/pause", {"reason": reason})
        return result

    def resume(self, mission_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._post(f"/missions/{mission_id}/resume")
        return result

    def cancel(self, mission_id: str, reason: str = "") -> dict[str, Any]:
        result: dict[str, Any] = self._post(f"/missions/{mission_id}/cancel", {"reason": reason})
        return result

    def retry(self, mission_id: str, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._post(f"/missions/{mission_id}/tasks/{task_id}/retry")
        return result

    def retry_delivery(self, mission_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._post(f"/missions/{mission_id}/delivery/retry")
        return result

    def steps(self, mission_id: str) -> list[dict[str, Any]]:
        """The mission's failed steps (events a service could not handle)."""
        result: dict[str, Any] = self._get(f"/missions/{mission_id}/steps")
        steps: list[dict[str, Any]] = result["steps"]
        return steps

    def retry_step(
        self, mission_id: str, event_id: str, service: str | None = None
    ) -> dict[str, Any]:
        path = f"/missions/{mission_id}/steps/{event_id}/retry"
        result: dict[str, Any] = self._check(
            self._http.post(path, params=_clean({"service": service}))
        )
        return result

    def skip(self, mission_id: str, task_id: str, reason: str = "") -> dict[str, Any]:
        result: dict[str, Any] = self._post(
            f"/missions/{mission_id}/tasks/{task_id}/skip", {"reason": reason}
        )
        return result

    def raise_budget(self, mission_id: str, budget_usd: float) -> dict[str, Any]:
        result: dict[str, Any] = self._post(
            f"/missions/{mission_id}/budget", {"budget_usd": budget_usd}
        )
        return result

    # --- other queries -----------------------------------------------------------------

    def usage(
        self, group_by: str = "day", mission_id: str | None = None, since: str | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = self._get(
            "/usage", group_by=group_by, mission_id=mission_id, since=since
        )
        return result

    def agents(self, mission_id: str | None = None, status: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._get("/agents", mission_id=mission_id, status=status)
        return result

    def runtimes(self) -> dict[str, Any]:
        result: dict[str, Any] = self._get("/runtimes")
        return result

    # --- administration ----------------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        result: dict[str, Any] = self._get("/auth/whoami")
        return result

    def create_token(
        self, name: str, scopes: list[str], expires_in_days: int | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "scopes": scopes}
        if expires_in_days is not None:
            body["expires_in_days"] = expires_in_days
        result: dict[str, Any] = self._post("/admin/tokens", body)
        return result

    def tokens(self, include_revoked: bool = False) -> list[dict[str, Any]]:
        result = self._get("/admin/tokens", include_revoked=include_revoked or None)
        tokens: list[dict[str, Any]] = result["tokens"]
        return tokens

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._check(self._http.delete(f"/admin/tokens/{token_id}"))
        return result

    def rebuild_read_model(self) -> dict[str, Any]:
        response = self._http.post("/admin/read-model/rebuild", timeout=600.0)
        result: dict[str, Any] = self._check(response)
        return result

    # --- live --------------------------------------------------------------------------

    def events(
        self,
        mission_id: str,
        last_event_id: str | None = None,
        until_terminal: bool = True,
        telemetry: bool = False,
        on_open: Callable[[], object] | None = None,
    ) -> Iterator[SseEvent]:
        """The mission's events, replayed then live, over SSE; ``on_open`` is called once
        the gateway has answered (from then on no new event is missed)."""
        headers = {"last-event-id": last_event_id} if last_event_id else {}
        params = {}
        if until_terminal:
            params["until_terminal"] = "1"
        if telemetry:
            params["telemetry"] = "1"
        with self._http.stream(
            "GET",
            f"/missions/{mission_id}/events",
            headers=headers,
            params=params,
            timeout=httpx.Timeout(30.0, read=None),
        ) as response:
            if response.status_code >= 400:
                body = response.read().decode()
                raise ApiError(response.status_code, body, _retry_after(response))
            if on_open is not None:
                on_open()
            yield from whole_messages(parse_sse(response.iter_lines()))


# What an event may carry (an attempt's result its start and usage, a TaskReady its
# waves): the gateway streams each right before the event, without an id of its own.
CARRIED = frozenset({"agent_started", "usage_recorded", "wave_completed", "wave_started"})


def whole_messages(events: Iterator[SseEvent]) -> Iterator[SseEvent]:
    """``events`` with those another carried held back until it comes: a stream cut
    between them is resumed after the event before, and sends them again with the one
    that carries them, so given at once they would count twice (a usage's tokens). Telemetry,
    which has no id either, passes as it comes."""
    held: list[SseEvent] = []
    for event in events:
        if event.id is None and event.event in CARRIED:
            held.append(event)
            continue
        if event.id is not None and held:
            yield from held
            held = []
        yield event


def parse_sse(lines: Iterator[str]) -> Iterator[SseEvent]:
    event_id: str | None = None
    event = "message"
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield SseEvent(event_id, event, json.loads("\n".join(data)))
            event_id, event, data = None, "message", []
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "id":
                event_id = value
            elif key == "event":
                event = value
            elif key == "data":
                data.append(value)
