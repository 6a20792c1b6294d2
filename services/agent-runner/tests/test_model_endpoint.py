"""The metered model endpoint: a small real program calls the model with the real anthropic
SDK from inside the real sandbox (bubblewrap), through the runner's endpoint, against the
local Messages API server. Each call's usage is published while the tool runs; a call past
the cost cap or the turn limit is refused and ends the attempt; the real key is nowhere in
the sandbox; a wrong key, another path or another model is refused before the model."""

from __future__ import annotations

import asyncio
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from aether_agent_runner.adapters.model import Progress
from aether_agent_runner.domain import Limits
from aether_agent_runner.runtimes.model_endpoint import Meter, ModelEndpoint
from aether_agent_runner.runtimes.spec import CommandSpec
from aether_events import AgentCompleted, AgentFailed, AgentProgress, Usage, UsageRecorded
from aether_llm import LLMSettings, Reply, load_prices, text_block

from .test_command_runtime import needs_sandbox, processes_naming, until

MODEL = "claude-sonnet-5-5"
REAL_KEY = "sk-ant-real-" + uuid.uuid4().hex

TOOL = r"""
import json, os, sys, time
import anthropic

mode, model = sys.argv[1], sys.argv[2]
prompt = sys.stdin.read()
client = anthropic.Anthropic(max_retries=0)  # its endpoint and key from the environment


def say(text):
    print(json.dumps({"text": text}), flush=True)


def ask(n, stream=False):
    messages = [{"role": "user", "content": prompt}]
    for i in range(n):
        messages += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": f"go {i}"}]
    if stream:
        with client.messages.stream(model=model, max_tokens=100, messages=messages) as events:
            for _ in events.text_stream:
                pass
            reply = events.get_final_message()
    else:
        reply = client.messages.create(model=model, max_tokens=100, messages=messages)
    say(f"call {n}: {reply.content[0].text}")


if mode == "calls":
    ask(0)
    ask(1, stream=True)
    ask(2, stream=True)
    with open("agent.txt", "w") as out:
        out.write("made three calls\n")
    say("made three calls")
if mode == "forever":
    n = 0
    try:
        while True:
            ask(n, stream=n % 2 == 1)
            n += 1
    except anthropic.APIStatusError as error:
        say(f"refused {error.status_code} {error.body['error']['type']}")
    time.sleep(600)  # only the runner ends it now
if mode == "probe":
    import urllib.error, urllib.request
    base, key = os.environ["ANTHROPIC_BASE_URL"], os.environ["ANTHROPIC_API_KEY"]

    def status(method, path, key, body):
        request = urllib.request.Request(base + path, data=body, method=method, headers={
            "x-api-key": key, "anthropic-version": "2023-06-01",
            "content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, json.load(answer).get("type")
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)["error"]["type"]
        except OSError as error:
            return "cut", type(error).__name__

    good = json.dumps({"model": model, "max_tokens": 10,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    other = json.dumps({"model": "claude-opus-99", "max_tokens": 10,
                        "messages": [{"role": "user", "content": prompt}]}).encode()
    large = b'{"model": "' + model.encode() + b'", "pad": "' + b"a" * (33 << 20) + b'"}'
    probes = [
        ("wrong-key", "POST", "/v1/messages", "sk-ant-guess", good),
        ("no-key", "POST", "/v1/messages", "", good),
        ("models", "GET", "/v1/models", key, None),
        ("complete", "POST", "/v1/complete", key, good),
        ("batches", "POST", "/v1/messages/batches", key, good),
        ("dot-dot", "POST", "/v1/messages/%2e%2e/complete", key, good),
        ("get-messages", "GET", "/v1/messages", key, None),
        ("other-model", "POST", "/v1/messages", key, other),
        ("not-json", "POST", "/v1/messages", key, b"{not json"),
        ("too-large", "POST", "/v1/messages", key, large),
        ("good", "POST", "/v1/messages", key, good),
    ]
    for name, method, path, used, body in probes:
        code, kind = status(method, path, used, body)
        say(f"{name} {code} {kind}")
    # Everything of the sandbox a tool could read the key from: its variables, every
    # process's variables and command line, and the files of every place it may write
    # or was given (its home, /tmp, the worktree, the prompt's directory).
    seen = [json.dumps(dict(os.environ))]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            for part in ("environ", "cmdline"):
                try:
                    with open(f"/proc/{entry}/{part}", "rb") as held:
                        seen.append(held.read().decode(errors="replace"))
                except OSError:
                    pass
    for root in {os.environ.get("HOME", "/tmp"), "/tmp", os.getcwd(), os.path.dirname(sys.argv[3])}:
        for where, _, files in os.walk(root):
            for name in files:
                try:
                    with open(os.path.join(where, name), "rb") as held:
                        seen.append(held.read(1 << 20).decode(errors="replace"))
                except OSError:
                    pass
    with open("seen.txt", "w") as out:
        out.write("\n".join(seen))
    say("probed")
"""


class Endpoint:
    """The runner's model settings: the scripted server, and a key of the test's own."""

    def __init__(self, url: str) -> None:
        self.url = url

    def llm(self) -> LLMSettings:
        return LLMSettings(api_key=REAL_KEY, base_url=self.url, max_retries=0)


@pytest.fixture
def tool_spec(tmp_path: Path) -> Callable[..., CommandSpec]:
    """``tool_spec(mode, *arguments)``: the SDK-using tool, with the model endpoint."""
    where = tmp_path / "tool"
    where.mkdir()
    program = where / "sdk_agent.py"
    program.write_text(TOOL)

    def make(mode: str, *arguments: str) -> CommandSpec:
        return CommandSpec(
            name="sdk-agent",
            command=[sys.executable, str(program), mode, MODEL, *arguments],
            prompt="stdin",
            usage="json",
            model_endpoint=True,
            read_only=[str(where)],
        )

    return make


def replies(count: int, input_tokens: int, output_tokens: int) -> list[Any]:
    return [
        (
            lambda request, n=n: Reply(
                [text_block(f"reply {n}")],
                "end_turn",
                input_tokens=input_tokens,
                output_tokens=output_tokens,
            )
        )
        for n in range(count)
    ]


def priced(input_tokens: int, output_tokens: int) -> Usage:
    return load_prices().priced(
        MODEL, Usage(input_tokens=input_tokens, output_tokens=output_tokens)
    )


@needs_sandbox
async def test_usage_of_each_sdk_call_is_published_while_the_tool_runs(
    tool_spec: Any,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    scripted = model({"t1": replies(3, 700, 40)})
    held = threading.Event()
    scripted.script.gates[("t1", 2)] = held  # the third call waits until the test says
    await start_runner(
        Endpoint(scripted.url), runtime="sdk-agent", command_runtimes=(tool_spec("calls"),)
    )
    await publish(workspace_ready(task_repo, mission_id))
    try:
        # Two calls (one whole, one streamed) answered, the third one waiting: their usage
        # is already out, while the tool is still at work.
        await events.wait_for(lambda log: len(log.of(UsageRecorded)) == 2)
        assert not events.of(AgentCompleted)
        assert not events.of(AgentFailed)
    finally:
        held.set()
    done = await events.first(AgentCompleted)

    each = priced(700, 40)
    assert [u.usage for u in events.of(UsageRecorded)] == [each, each, each]
    assert done.usage == each.plus(each).plus(each)
    assert done.turns == 3
    # The model got the runner's own key; the tool never had it.
    assert scripted.server.api_keys == [REAL_KEY] * 3
    actions = [p.last_action for p in events.of(AgentProgress)]
    assert "call 1: reply 1" in actions  # the streamed reply reached the tool whole


@needs_sandbox
@pytest.mark.parametrize(
    ("settings", "cap", "reason"),
    [({}, 2.5, "cost limit reached"), ({"max_turns": 3}, None, "turn limit reached")],
    ids=["cost-cap", "turn-limit"],
)
async def test_a_limit_reached_refuses_the_next_call_and_stops_the_tool(
    settings: dict[str, Any],
    cap: float | None,
    reason: str,
    tool_spec: Any,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    """Three calls fit (the cap is two and a half calls' price: the third starts under it),
    the fourth is refused; the tool, which would wait ten minutes, is stopped at once."""
    each = priced(200_000, 2_000)
    assert each.cost_usd
    scripted = model({"t1": replies(10, 200_000, 2_000)})
    marker = uuid.uuid4().hex
    await start_runner(
        Endpoint(scripted.url),
        runtime="sdk-agent",
        command_runtimes=(tool_spec("forever", marker),),
        max_seconds=600.0,
        **settings,
    )
    max_cost = None if cap is None else cap * each.cost_usd
    await publish(workspace_ready(task_repo, mission_id, max_cost_usd=max_cost))
    failed = await events.first(AgentFailed)

    assert failed.reason.startswith(reason), failed.reason
    assert failed.retryable is False
    assert len(scripted.script.calls) == 3  # the refused call never reached the model
    assert [u.usage for u in events.of(UsageRecorded)] == [each, each, each]
    await until(lambda: processes_naming(marker) == [])


@needs_sandbox
async def test_the_real_key_is_nowhere_in_the_sandbox_and_only_messages_with_the_attempts_key_pass(
    tool_spec: Any,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    scripted = model({"t1": replies(1, 70, 9)})
    await start_runner(
        Endpoint(scripted.url),
        runtime="sdk-agent",
        command_runtimes=(tool_spec("probe", "{prompt_file}"),),
    )
    await publish(workspace_ready(task_repo, mission_id))
    done = await events.first(AgentCompleted)

    actions = {p.last_action for p in events.of(AgentProgress)}
    expected = {
        "wrong-key 401 authentication_error",
        "no-key 401 authentication_error",
        "models 404 not_found_error",
        "complete 404 not_found_error",
        "batches 404 not_found_error",
        "dot-dot 404 not_found_error",
        "get-messages 405 invalid_request_error",
        "other-model 400 invalid_request_error",
        "not-json 400 invalid_request_error",
        "too-large 413 request_too_large",
        "good 200 message",
    }
    assert expected <= actions, expected - actions
    # Only the good call reached the model, with the real key.
    assert scripted.server.api_keys == [REAL_KEY]
    assert done.usage == priced(70, 9)
    seen = (task_repo.worktree / "seen.txt").read_text()
    assert "aether-attempt-" in seen  # what the tool was given instead: the dump is whole
    assert REAL_KEY not in seen


@needs_sandbox
async def test_a_run_after_a_runner_crash_counts_its_calls_on_from_the_journalled_ones(
    tool_spec: Any,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    """A runner died after two metered calls of the attempt (journalled and published): the
    next run starts the tool over, and its calls are the attempt's third to fifth, so no
    usage event of it has an earlier one's id (the stream would drop it as a copy), and the
    earlier calls still count."""
    import json

    import msgspec

    from aether_agent_runner.adapters.conversation import identity
    from aether_agent_runner.runtimes.session import COMMAND_START, start_record, turn_record

    from .conftest import git
    from .test_acp_runtime import _journal_dir

    worktree = task_repo.worktree
    base = git(worktree, "rev-parse", "HEAD")
    journal = _journal_dir(worktree)
    journal.mkdir(parents=True, exist_ok=True)
    me = identity(mission_id, "t1", 1, base)
    tokens = Usage(input_tokens=700, output_tokens=40)
    records = [start_record(me, "run", kind=COMMAND_START), *[turn_record(MODEL, tokens)] * 2]
    (journal / "transcript.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    scripted = model({"t1": replies(3, 700, 40)})
    await start_runner(
        Endpoint(scripted.url), runtime="sdk-agent", command_runtimes=(tool_spec("calls"),)
    )
    await publish(msgspec.structs.replace(workspace_ready(task_repo, mission_id), base_sha=base))
    done = await events.first(AgentCompleted)

    steps = [u.step for u in events.of(UsageRecorded)]
    assert [step.rsplit(":", 1)[1] for step in steps] == ["turn3", "turn4", "turn5"]
    each = priced(700, 40)
    assert done.usage == each.plus(each).plus(each).plus(each).plus(each)
    assert done.turns == 5


# --- the endpoint itself, against a model server that streams slowly --------------------


class Told:
    """An observer that keeps what it is told."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, Usage]] = []

    async def model_called(self, turn: int, usage: Usage) -> None:
        self.calls.append((turn, usage))

    async def progressed(self, progress: Progress, *, always: bool = False) -> None:
        return None


@pytest.fixture
async def slow_stream() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A Messages API server whose streamed reply stops after ``message_start`` until the
    event is set; its URL."""
    from aiohttp import web

    go_on = asyncio.Event()

    async def messages(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        start = {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": MODEL,
                "content": [],
                "stop_reason": None,
                "usage": {"input_tokens": 500, "output_tokens": 1},
            },
        }
        await response.write(f"event: message_start\ndata: {_json(start)}\n\n".encode())
        await go_on.wait()
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 30},
        }
        await response.write(f"event: message_delta\ndata: {_json(delta)}\n\n".encode())
        await response.write(b'event: message_stop\ndata: {"type": "message_stop"}\n\n')
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", go_on
    go_on.set()
    await runner.cleanup()


def _json(data: Any) -> str:
    import json

    return json.dumps(data)


async def test_a_stream_passes_through_event_by_event_and_counts_at_its_end(
    tmp_path: Path, slow_stream: tuple[str, asyncio.Event]
) -> None:
    import aiohttp

    url, go_on = slow_stream
    told = Told()
    meter = Meter(Limits(), told, load_prices())
    endpoint = ModelEndpoint(url, REAL_KEY, meter, frozenset({MODEL}))
    socket_path = tmp_path / "model.sock"
    body = {"model": MODEL, "max_tokens": 50, "stream": True, "messages": []}
    headers = {"x-api-key": endpoint.placeholder, "anthropic-version": "2023-06-01"}
    async with (
        endpoint.serving(socket_path),
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket_path))) as session,
        session.post("http://model/v1/messages", json=body, headers=headers) as answer,
    ):
        assert answer.status == 200
        first = b""
        async with asyncio.timeout(30):
            while b"\n\n" not in first:
                first += await answer.content.readany()
        # The model's first event is here while the model still holds the rest.
        assert b"message_start" in first
        assert told.calls == []
        go_on.set()
        rest = await answer.content.read()
    assert b"message_stop" in rest
    assert told.calls == [
        (1, load_prices().priced(MODEL, Usage(input_tokens=500, output_tokens=30)))
    ]
    assert meter.turns == 1
