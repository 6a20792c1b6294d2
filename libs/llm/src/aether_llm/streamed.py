"""A streamed Messages API reply folded into its final JSON, without the SDK's accumulator.

``messages.stream(...).get_final_message()`` builds a pydantic object for every
server-sent event and a pydantic snapshot of the whole message that each event updates
(re-parsing a tool call's input at every piece of it); a caller that only wants the final
reply pays for all of it, about a millisecond of CPU for a short reply on a loaded
machine, more than the rest of the call. Here the request still goes through the SDK
(its request building, retries, status errors, the client's transport and metering) and
is still streamed, so a long reply keeps its connection busy and the client's read
timeout still applies between events rather than to the whole reply. The SDK's own
decoder (``AsyncStream.raw_events``) splits the events; they are folded here as the API
documents them and as the SDK's accumulator does, into the same content, stop reason and
usage: content blocks as the JSON the API sent (``None`` values left out where
``model_dump(exclude_none=True)`` leaves them out), a tool call's input parsed once, at
the end, in the SDK's partial mode (a call cut off by the output limit keeps what
arrived of it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jiter import from_json

if TYPE_CHECKING:
    # The SDK is imported by the calls below, not with this module: a service imports it
    # when it first calls the model (``aether_llm.client``).
    import anthropic
    import httpx2
    from anthropic.types import MessageParam, TextBlockParam, ToolUnionParam
    from anthropic.types import Usage as ApiUsage

JSON = dict[str, Any]

# Blocks whose input arrives as pieces of JSON (the SDK's ``TRACKS_TOOL_INPUT``).
_TRACKS_INPUT = frozenset({"tool_use", "server_tool_use"})


class UnreadableToolInput(ValueError):
    """A tool call's arguments in a reply that do not parse (nested past the parser's
    depth, a lone surrogate): what the model sent, not a fault of the caller's."""


@dataclass
class StreamedReply:
    """The final reply: its content blocks (JSON), stop reason and usage."""

    content: list[JSON]
    stop_reason: str | None
    usage: ApiUsage


async def stream_reply(
    client: anthropic.AsyncAnthropic,
    *,
    model: str,
    max_tokens: int,
    system: Iterable[TextBlockParam],
    tools: Iterable[ToolUnionParam],
    messages: Iterable[MessageParam],
) -> StreamedReply:
    """Ask for one reply, streamed, and fold its events. Raises what the SDK raises: an
    ``APIStatusError`` for an error status or an error event in the stream, an
    ``APIConnectionError``/``APITimeoutError`` for the transport, the reply's stream
    cut or stalled past the read timeout as well (the SDK raises those as they come from
    its HTTP client, which a caller of the SDK's errors alone would not catch)."""
    import anthropic
    import httpx2

    async with client.messages.with_streaming_response.create(
        model=model,
        max_tokens=max_tokens,
        system=system,
        tools=tools,
        messages=messages,
        stream=True,
    ) as response:
        http = response.http_response
        fold = _Fold()
        try:
            async for sse in anthropic.AsyncStream.raw_events(http):
                if sse.event is None or sse.event == "ping":
                    continue
                if sse.event == "error":
                    # As the SDK's stream raises it (``AsyncStream.__stream__``).
                    body: object = sse.data
                    try:
                        body = sse.json()
                        message = f"{body}"
                    except ValueError:
                        message = sse.data or f"Error code: {http.status_code}"
                    raise client._make_status_error(message, body=body, response=http)
                if sse.data:
                    fold.add(json.loads(sse.data))
        except httpx2.TimeoutException as error:
            raise anthropic.APITimeoutError(http.request) from error
        except httpx2.TransportError as error:
            raise anthropic.APIConnectionError(
                message=f"the reply's stream broke off: {error!r}", request=http.request
            ) from error
        return fold.reply(http.request)


class _Fold:
    """The events of one streamed message, folded as the SDK's ``accumulate_event``."""

    def __init__(self) -> None:
        self.message: JSON | None = None
        self.inputs: dict[int, str] = {}

    def add(self, event: JSON) -> None:
        kind = event.get("type")
        if self.message is None:
            if kind != "message_start":
                raise RuntimeError(f'unexpected event order, got {kind} before "message_start"')
            self.message = dict(event["message"])
            self.message["content"] = list(self.message.get("content") or [])
            self.message["usage"] = dict(self.message.get("usage") or {})
            return
        content: list[JSON] = self.message["content"]
        if kind == "content_block_start":
            content.append(dict(event["content_block"]))
        elif kind == "content_block_delta":
            index: int = event["index"]
            block, delta = content[index], event["delta"]
            match delta.get("type"):
                case "text_delta" if block.get("type") == "text":
                    block["text"] = block.get("text", "") + delta["text"]
                case "input_json_delta" if block.get("type") in _TRACKS_INPUT:
                    self.inputs[index] = self.inputs.get(index, "") + delta["partial_json"]
                case "citations_delta" if block.get("type") == "text":
                    block["citations"] = [*(block.get("citations") or []), delta["citation"]]
                case "thinking_delta" if block.get("type") == "thinking":
                    block["thinking"] = block.get("thinking", "") + delta["thinking"]
                case "signature_delta" if block.get("type") == "thinking":
                    block["signature"] = delta["signature"]
        elif kind == "message_delta":
            delta = event.get("delta") or {}
            self.message["stop_reason"] = delta.get("stop_reason")
            self.message["stop_sequence"] = delta.get("stop_sequence")
            usage = event.get("usage") or {}
            totals: JSON = self.message["usage"]
            totals["output_tokens"] = usage.get("output_tokens")
            # Totals, not increments; one left out keeps the value message_start gave.
            for name in (
                "input_tokens",
                "cache_creation_input_tokens",
                "cache_read_input_tokens",
                "server_tool_use",
            ):
                if usage.get(name) is not None:
                    totals[name] = usage[name]

    def reply(self, request: httpx2.Request) -> StreamedReply:
        import anthropic
        from anthropic.types import Usage as ApiUsage

        if self.message is None:
            raise anthropic.APIError("the reply's stream held no message", request, body=None)
        content: list[JSON] = self.message["content"]
        for index, pieces in self.inputs.items():
            if pieces:
                try:
                    content[index]["input"] = from_json(pieces.encode(), partial_mode=True)
                except ValueError as error:
                    raise UnreadableToolInput(
                        "Unable to parse tool parameter JSON from model. Please retry your "
                        f"request or adjust your prompt. Error: {error}. JSON: {pieces}"
                    ) from error
        usage: JSON = self.message["usage"]
        try:
            # Validated in pydantic's compiled core: about 4 µs, where the SDK's own
            # ``construct`` (which takes anything) spends 60 walking the model's fields.
            api_usage = ApiUsage.model_validate(usage)
        except ValueError:
            # A figure the API left null or sent in another shape: taken as it came, as
            # the SDK's accumulator does.
            api_usage = ApiUsage.model_construct(**usage)
        return StreamedReply(
            content=[_without_none(block) for block in content],
            stop_reason=self.message.get("stop_reason"),
            usage=api_usage,
        )


def _without_none(value: Any) -> Any:
    """``value`` as ``model_dump(exclude_none=True)`` gives it: ``None`` left out of the
    blocks' own fields and the objects in them, but not out of a tool's ``input``, a free
    object that pydantic dumps as it is."""
    if isinstance(value, dict):
        return {
            k: v if k == "input" else _without_none(v) for k, v in value.items() if v is not None
        }
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value
