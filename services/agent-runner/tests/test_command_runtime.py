"""The generic command runtime, with a small real program that follows the spec (no CLI
agent installable here runs without its vendor's network), run inside the runner's
bubblewrap sandbox: success with usage, usage not reported, the model endpoint through the
relay and nothing else, and the failure cases — the tool missing, crashing, hanging (the
whole sandbox killed), printing garbage, writing outside the worktree (contained)."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aether_agent_runner.runtimes.spec import CommandSpec, load_specs
from aether_events import AgentCompleted, AgentFailed, AgentProgress, Usage, UsageRecorded
from aether_llm import load_prices

from .test_service import git_log

AGENT = r"""
import json, os, re, sys, time
mode = sys.argv[1]
prompt = sys.stdin.read()
task = json.loads(re.search(r"<task>(.*?)</task>", prompt, re.S).group(1))
print("reading the task", task["id"], flush=True)
if mode == "hang":
    # A detached grandchild, in a session of its own: the sandbox's end must take it too.
    import subprocess
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", sys.argv[2]],
                     start_new_session=True)
    time.sleep(600)
if mode == "escape":
    for target in sys.argv[2:]:
        try:
            with open(target, "w") as out:
                out.write("escaped")
            print("wrote", target, flush=True)
        except OSError as error:
            print("refused", target, error.strerror, flush=True)
if mode == "model":
    import urllib.request
    request = urllib.request.Request(
        os.environ["ANTHROPIC_BASE_URL"].rstrip("/") + "/v1/messages",
        data=json.dumps({"model": sys.argv[2], "max_tokens": 100,
                         "messages": [{"role": "user", "content": prompt}]}).encode(),
        headers={"x-api-key": os.environ["ANTHROPIC_API_KEY"],
                 "anthropic-version": "2023-06-01", "content-type": "application/json"})
    reply = json.load(urllib.request.urlopen(request, timeout=30))
    print(json.dumps({"usage": reply["usage"], "text": reply["content"][0]["text"]}), flush=True)
    import socket
    for address in sys.argv[3:]:
        host, port = address.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
            print("reached", address, flush=True)
        except OSError as error:
            print("unreachable", address, type(error).__name__, flush=True)
if mode == "garbage":
    sys.stdout.buffer.write(b"\x00\xff\xfe\x1b[31m{not json\n" + os.urandom(300) + b"\n")
    print(json.dumps({"usage": {"input_tokens": -5, "output_tokens": "many"}}))
with open("agent.txt", "w") as out:
    out.write("written by " + task["id"] + "\n")
if mode in ("ok", "garbage"):
    print(json.dumps({"usage": {"input_tokens": 1000, "output_tokens": 200,
                                "cache_read_input_tokens": 3000}}))
    print(json.dumps({"usage": {"input_tokens": 500, "output_tokens": 100}}))
if mode == "crash":
    print("something broke", file=sys.stderr)
    sys.exit(3)
print(json.dumps({"text": "wrote agent.txt for " + task["id"]}))
"""


@pytest.fixture
def spec(tmp_path: Path) -> Callable[..., CommandSpec]:
    """``spec(mode, executable=python, *arguments, **fields)``: the fake agent's spec. Its
    program lives outside the worktree, readable in the sandbox through ``read_only``."""
    tool = tmp_path / "tool"
    tool.mkdir()
    program = tool / "fake_agent.py"
    program.write_text(AGENT)

    def make(
        mode: str, executable: str = sys.executable, *arguments: str, **fields: Any
    ) -> CommandSpec:
        return CommandSpec(
            name="fake",
            command=[executable, str(program), mode, *arguments],
            prompt="stdin",
            usage="json",
            read_only=[str(tool)],
            **fields,
        )

    return make


def sandbox_works() -> bool:
    from aether_sandbox import SandboxSettings, SandboxUnavailable, open_sandbox

    try:
        open_sandbox(SandboxSettings())
    except SandboxUnavailable:
        return False
    return True


needs_sandbox = pytest.mark.skipif(not sandbox_works(), reason="bubblewrap cannot run here")


def processes_naming(marker: str) -> list[int]:
    """Host processes whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


async def run(
    spec: CommandSpec,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    mission_id: str,
    workspace_ready: Callable[..., Any],
    **settings: Any,
) -> None:
    await start_runner(model({}), runtime="fake", command_runtimes=(spec,), **settings)
    await publish(workspace_ready(task_repo, mission_id))


@pytest.mark.parametrize("mode", ["ok", "garbage"])
async def test_a_cli_agent_completes_the_task_with_its_reported_usage(
    mode: str,
    spec: Any,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    await run(spec(mode), task_repo, model, start_runner, publish, mission_id, workspace_ready)
    done = await events.first(AgentCompleted)

    assert done.files_changed == ["agent.txt"]
    assert (task_repo.worktree / "agent.txt").read_text() == "written by t1\n"
    assert done.summary == "wrote agent.txt for t1"
    counts = Usage(input_tokens=1500, output_tokens=300, cache_read_input_tokens=3000)
    priced = load_prices().priced("claude-sonnet-5-5", counts)
    assert done.usage == priced
    assert [u.usage for u in events.of(UsageRecorded)] == [priced]
    assert "Aether-Task: t1" in git_log(task_repo, task_repo.branch)
    actions = [p.last_action for p in events.of(AgentProgress)]
    assert "reading the task t1" in actions
    assert all("\x00" not in a and "\x1b" not in a for a in actions)


async def test_usage_a_tool_does_not_report_is_unknown_not_zero(
    spec: Any,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    await run(spec("quiet"), task_repo, model, start_runner, publish, mission_id, workspace_ready)
    done = await events.first(AgentCompleted)

    assert done.usage.cost_usd is None
    assert events.of(UsageRecorded) == []
    assert "Aether-Cost-USD: unknown" in git_log(task_repo, task_repo.branch)


@pytest.mark.parametrize(
    ("mode", "executable", "settings", "reason", "retryable"),
    [
        ("ok", "/nonexistent/agent-cli", {}, "cannot start '/nonexistent/agent-cli'", False),
        ("crash", None, {}, "fake exited with 3: ", True),
        ("hang", None, {"max_seconds": 2.0}, "wall-time limit reached: 2 s allowed", False),
    ],
    ids=["missing", "crashing", "hanging"],
)
async def test_a_cli_agent_that_cannot_finish_fails_the_task_with_the_reason(
    mode: str,
    executable: str | None,
    settings: dict[str, Any],
    reason: str,
    retryable: bool,
    spec: Any,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    marker = uuid.uuid4().hex
    chosen = spec(mode, executable or sys.executable, marker)
    await run(
        chosen, task_repo, model, start_runner, publish, mission_id, workspace_ready, **settings
    )
    failed = await events.first(AgentFailed)

    assert reason in failed.reason
    assert failed.retryable is retryable
    assert not events.of(AgentCompleted)
    if mode == "crash":
        assert "something broke" in failed.reason  # its last words are in the reason
    # Nothing of the tool outlives its attempt: the detached grandchild of "hang" went with
    # the sandbox (a killed process may take a moment to leave the process table).
    await until(lambda: processes_naming(marker) == [])


async def until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


@needs_sandbox
async def test_a_cli_agent_writing_outside_the_worktree_is_contained(
    tmp_path: Path,
    spec: Any,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    home = Path.home() / f"aether-escape-{uuid.uuid4().hex}"
    beside = tmp_path / "beside-the-worktree.txt"
    host_tmp = Path("/tmp") / f"aether-escape-{uuid.uuid4().hex}"
    git_config = task_repo.worktree / ".git"
    targets = [str(beside), str(host_tmp), str(home), str(git_config)]
    await run(
        spec("escape", sys.executable, *targets),
        task_repo,
        model,
        start_runner,
        publish,
        mission_id,
        workspace_ready,
    )
    done = await events.first(AgentCompleted)

    assert done.files_changed == ["agent.txt"]  # its work in the worktree is committed
    assert not beside.exists()
    assert not host_tmp.exists()
    assert not home.exists()
    assert git_config.read_bytes() != b"escaped"
    actions = [p.last_action for p in events.of(AgentProgress)]
    assert any(a.startswith(f"refused {home}") for a in actions)
    # The sandbox's private /tmp (which also holds the worktree's mount point, hence the
    # path beside it) took these writes, and none reached the host.
    assert said(actions, f"wrote {host_tmp}")
    assert said(actions, f"wrote {beside}")


def said(actions: list[str], line: str) -> bool:
    """Whether ``line`` is among the progress lines, whole or cut to 120 characters (a
    test directory's path can be longer than that)."""
    return any(a == line or (a.endswith("…") and line.startswith(a[:-1])) for a in actions)


@needs_sandbox
async def test_a_cli_agent_reaches_the_model_through_the_relay_and_nothing_else(
    spec: Any,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    from aether_llm import Reply, text_block

    scripted = model(
        {
            "t1": [
                lambda request: Reply(
                    [text_block("hi from the model")], "end_turn", input_tokens=70, output_tokens=9
                )
            ]
        }
    )
    endpoint = scripted.url.split("//", 1)[1].rstrip("/")
    chosen = spec(
        "model", sys.executable, "claude-sonnet-5-5", endpoint, "1.1.1.1:53", model_endpoint=True
    )
    await start_runner(scripted, runtime="fake", command_runtimes=(chosen,))
    await publish(workspace_ready(task_repo, mission_id))
    done = await events.first(AgentCompleted)

    [request] = scripted.script.requests
    assert "<task>" in request["messages"][0]["content"]  # the task's prompt, as sent
    priced = load_prices().priced("claude-sonnet-5-5", Usage(input_tokens=70, output_tokens=9))
    assert done.usage == priced
    actions = [p.last_action for p in events.of(AgentProgress)]
    assert "hi from the model" in actions
    # The model's own address is the sandbox's loopback inside: not the host's server.
    assert any(a.startswith(f"unreachable {endpoint}") for a in actions)
    assert any(a.startswith("unreachable 1.1.1.1:53") for a in actions)


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for ``name`` signed by its own key, and the key: the files."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@needs_sandbox
async def test_a_cli_agent_reaches_an_https_model_through_the_runners_endpoint(
    spec: Any,
    tmp_path: Path,
    task_repo: Any,
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    """An https endpoint by host name (as the real API is): the tool speaks plain HTTP to
    the runner's endpoint on its loopback, and the runner calls the model over TLS, checking
    the name; nothing else is reachable."""
    import ssl

    from aether_llm import LLMSettings, MessagesServer, Reply, text_block
    from aether_runtime import tls

    from .conftest import Script

    cert, key = self_signed(tmp_path / "tool", "localhost")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    # The runner's clients trust the test's own authority (in this process, beside the
    # system's), as an operator's would trust theirs.
    tls.shared().load_verify_locations(cert)
    reply = Reply([text_block("hi over tls")], "end_turn", input_tokens=70, output_tokens=9)
    script = Script({"t1": [lambda request: reply]})
    server = MessagesServer(script, ssl_context=context).start()
    try:
        port = server.url.rsplit(":", 1)[1]

        class Endpoint:
            def llm(self) -> LLMSettings:
                return LLMSettings(api_key="k", base_url=f"https://localhost:{port}")

        chosen = spec(
            "model", sys.executable, "claude-sonnet-5-5", f"127.0.0.1:{port}", model_endpoint=True
        )
        await start_runner(Endpoint(), runtime="fake", command_runtimes=(chosen,))
        await publish(workspace_ready(task_repo, mission_id))
        done = await events.first(AgentCompleted)
    finally:
        server.stop()

    assert len(script.requests) == 1
    assert server.api_keys == ["k"]
    assert done.summary and done.usage.input_tokens == 70
    actions = [p.last_action for p in events.of(AgentProgress)]
    assert "hi over tls" in actions
    # The endpoint's own address, dialled directly, is not reachable from inside.
    assert any(a.startswith(f"unreachable 127.0.0.1:{port}") for a in actions)


def test_specs_are_read_from_a_json_file_and_refuse_unknown_fields(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(
        '[{"name": "aider", "command": ["aider", "--message", "{prompt}"], "prompt": "argument"}]'
    )
    [aider] = load_specs(str(good))
    assert aider.command == ["aider", "--message", "{prompt}"] and aider.usage == "none"
    bad = tmp_path / "bad.json"
    bad.write_text('[{"name": "x", "command": ["x"], "shell": true}]')
    with pytest.raises(Exception, match="shell"):
        load_specs(str(bad))


@needs_sandbox
async def test_a_spec_may_give_the_host_network_as_an_explicit_choice(
    spec: Any,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    from aether_llm import Reply, text_block

    reply = Reply([text_block("hi")], "end_turn", input_tokens=70, output_tokens=9)
    scripted = model({"t1": [lambda request: reply]})
    endpoint = scripted.url.split("//", 1)[1].rstrip("/")
    chosen = spec(
        "model", sys.executable, "claude-sonnet-5-5", endpoint, model_endpoint=True, network="host"
    )
    await start_runner(scripted, runtime="fake", command_runtimes=(chosen,))
    await publish(workspace_ready(task_repo, mission_id))
    await events.first(AgentCompleted)

    assert len(scripted.script.requests) == 1
    actions = [p.last_action for p in events.of(AgentProgress)]
    # No relay: the tool dialled the runner's endpoint itself, on the host's network.
    assert f"reached {endpoint}" in actions


@needs_sandbox
async def test_cancelling_the_mission_kills_the_cli_agents_whole_sandbox(
    spec: Any,
    task_repo: Any,
    model: Callable[..., Any],
    start_runner: Callable[..., Any],
    publish: Callable[..., Any],
    events: Any,
    mission_id: str,
    workspace_ready: Callable[..., Any],
) -> None:
    from aether_events import MissionCancelled

    from .test_service import control_meta

    marker = uuid.uuid4().hex
    await run(
        spec("hang", sys.executable, marker),
        task_repo,
        model,
        start_runner,
        publish,
        mission_id,
        workspace_ready,
    )
    await events.first(AgentProgress)  # the tool has started and spoken
    await until(lambda: len(processes_naming(marker)) >= 2)  # it and its detached child

    await publish(MissionCancelled(**control_meta(mission_id), reason="not needed"))
    failed = await events.first(AgentFailed)

    assert failed.reason == "stopped: the mission was cancelled: not needed"
    await until(lambda: processes_naming(marker) == [])
