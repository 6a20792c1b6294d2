"""A small client of the gateway's REST and SSE API (the CLI talks only to the gateway)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8100"


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        try:
            parsed = json.loads(body)
            message = parsed.get("error") or parsed.get("detail") or body
        except (ValueError, AttributeError):
            message = body
        super().__init__(f"{status}: {message}")
        self.status = status


@dataclass
class SseEvent:
    id: str | None
    event: str
    data: dict[str, Any]


class GatewayClient:
    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        self.url = (url or os.environ.get("AETHER_URL") or DEFAULT_URL).rstrip("/")
        headers = {}
        token = token or os.environ.get("AETHER_TOKEN")
        if token:
            headers["authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=30.0)

    def _check(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise ApiError(response.status_code, response.text)
        return response.json() if response.content else None

    def submit(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"idempotency-key": idempotency_key} if idempotency_key else {}
        result: dict[str, Any] = self._check(
            self._http.post("/missions", json=body, headers=headers)
        )
        return result

    def list(self, status: str | None = None) -> list[dict[str, Any]]:
        params = {"status": status} if status else {}
        result = self._check(self._http.get("/missions", params=params))
        items: list[dict[str, Any]] = result["missions"]
        return items

    def show(self, mission_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._check(self._http.get(f"/missions/{mission_id}"))
        return result

    def approve(self, mission_id: str, version: int | None = None) -> dict[str, Any]:
        body = {"version": version} if version is not None else {}
        result: dict[str, Any] = self._check(
            self._http.post(f"/missions/{mission_id}/plan/approve", json=body)
        )
        return result

    def events(
        self, mission_id: str, last_event_id: str | None = None, until_terminal: bool = True
    ) -> Iterator[SseEvent]:
        """The mission's events, replayed then live, over SSE."""
        headers = {"last-event-id": last_event_id} if last_event_id else {}
        params = {"until_terminal": "1"} if until_terminal else {}
        with self._http.stream(
            "GET",
            f"/missions/{mission_id}/events",
            headers=headers,
            params=params,
            timeout=httpx.Timeout(30.0, read=None),
        ) as response:
            if response.status_code >= 400:
                raise ApiError(response.status_code, response.read().decode())
            yield from parse_sse(response.iter_lines())


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
