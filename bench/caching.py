"""Prompt caching: how much of its input the built-in agent loop reads from the cache, and
what the planner writes to it, before and after the placement of ``docs/caching.md``.

Everything goes through the real anthropic SDK to the local Messages API server with
prefix-cache accounting (``aether_llm.prompt_cache``: Anthropic's documented rules, with
token counts approximated at four characters a token).

- Agent loop: the real tool-use loop (``aether_agent_runner.adapters.model.Agent``) on a scratch
  repository, a scripted ten-turn task (look around, read, edit, check, finish) in two
  shapes: *narrow*, one tool call a turn, and *wide*, whose second turn reads twelve files
  at once (25 new blocks, past the API's 20-block look-back). Each runs with the
  breakpoint placement at ``--before`` (read from git history in this run) and with the
  current one, against a server applying the documented look-back and one checking only
  the marked positions themselves ("marks only", as a server without the look-back would).
- Planner: the real model adapter (``aether_planner.adapters.model.PlannerModel``) with a
  repository context of about 7,300 tokens, in six missions: one call; a rejected plan
  and its correction; questions, answered two or ten minutes later; a plan, then
  feedback two or ten minutes later.
- Claude Code: the Claude Code runtime (the real CLI from the claude-agent-sdk wheel, its
  own breakpoint placement) on the same scratch repository, a scripted ten-call task with
  its file tools, its usage taken from the runtime's per-call usage events. Skipped, with
  the reason, when the CLI cannot run here.

    uv run python bench/caching.py [--before 96fae97] [--model claude-sonnet-5-5]

Costs are priced by the bundled price table. A figure, not a test: it never fails on one.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import subprocess
import sys
import tempfile
import types
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anthropic

from aether_agent_runner.adapters.conversation import Conversation, identity
from aether_agent_runner.adapters.journal import Journal
from aether_agent_runner.adapters.model import Agent, Breakpoints, cache_breakpoints
from aether_agent_runner.adapters.tools import ToolBox
from aether_agent_runner.adapters.workspace import Workspace
from aether_agent_runner.domain import Limits
from aether_agent_runner.runtimes.prompt import SYSTEM, repository_map
from aether_events import Usage
from aether_llm import MessagesServer, PromptCache, Reply, load_prices, text_block, tool_use_block

ROOT = Path(__file__).resolve().parent.parent
# Where the agent loop's module is now, and where it was before the runner's rooms.
AGENT_PATHS = (
    "services/agent-runner/src/aether_agent_runner/adapters/model.py",
    "services/agent-runner/src/aether_agent_runner/agent.py",
)
PLANNER_PATHS = ("services/planner/src/aether_planner/adapters/model.py",)
TURNS = 10


class Clock:
    """The server's clock, moved by the scenarios (a revision ten minutes later)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Totals:
    plain: int = 0
    written: int = 0
    read: int = 0
    output: int = 0
    cost: float = 0.0
    uncached_cost: float = 0.0
    unread: int = 0
    calls: int = 0

    @property
    def input(self) -> int:
        return self.plain + self.written + self.read

    def add(self, model: str, usage: Any) -> None:
        prices = load_prices()
        plain, written = usage.input_tokens, usage.cache_creation_input_tokens or 0
        read, output = usage.cache_read_input_tokens or 0, usage.output_tokens
        self.plain, self.written, self.read = (
            self.plain + plain,
            self.written + written,
            self.read + read,
        )
        self.output += output
        billed = Usage(
            input_tokens=plain,
            output_tokens=output,
            cache_creation_input_tokens=written,
            cache_read_input_tokens=read,
        )
        flat = Usage(input_tokens=plain + written + read, output_tokens=output)
        self.cost += prices.cost(model, billed) or 0.0
        self.uncached_cost += prices.cost(model, flat) or 0.0


def from_history(
    commit: str, paths: tuple[str, ...], name: str, only: tuple[str, ...] = ()
) -> types.ModuleType:
    """The module as it was at ``commit``, from the first of ``paths`` that existed then
    (modules move); its imports resolve to today's code. With ``only``, just those
    top-level functions and the standard-library imports: a module whose project imports
    have moved since still gives the function being compared."""
    for path in paths:
        shown = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{commit}:{path}"],
            capture_output=True,
            text=True,
            check=False,
        )
        if shown.returncode == 0:
            break
    else:
        raise SystemExit(f"none of {', '.join(paths)} exists at {commit}")
    tree = ast.parse(shown.stdout)
    if only:
        tree.body = [
            node
            for node in tree.body
            if (isinstance(node, ast.FunctionDef) and node.name in only)
            or (
                isinstance(node, ast.Import)
                and all(a.name.split(".")[0] in sys.stdlib_module_names for a in node.names)
            )
            or (
                isinstance(node, ast.ImportFrom)
                and (node.module or "").split(".")[0] in {*sys.stdlib_module_names, "__future__"}
            )
        ]
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(tree, f"{commit}:{path}", "exec"), module.__dict__)
    return module


# --- the agent loop -------------------------------------------------------------------


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return tool_use_block(name, arguments)


def agent_script(wide: bool) -> list[list[dict[str, Any]]]:
    second = (
        [call("read_file", path=f"src/m{i}.py") for i in range(12)]
        if wide
        else [call("read_file", path="src/m0.py")]
    )
    return [
        [text_block("Let me look at the layout first."), call("list_dir", path="src")],
        second,
        [call("search", pattern="def value_3_")],
        [call("read_file", path="src/app.py")],
        [call("edit_file", path="src/app.py", old_text='"Hello, "', new_text='"Hi, "')],
        [call("read_file", path="src/app.py")],
        [call("write_file", path="src/notes.txt", content="the greeting is shorter\n")],
        [call("search", pattern="Hi, ")],
        [call("read_file", path="src/m1.py")],
        [call("finish", summary="the greeting is now Hi")],
    ]


def scratch_repository(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "README.md").write_text("# demo\n\nA small project with a greeting.\n")
    (root / "src" / "app.py").write_text(
        'def greet(name):\n    return "Hello, " + name\n\n\ndef shout(name):\n'
        "    return greet(name).upper()\n"
    )
    for i in range(12):
        body = "".join(f"def value_{i}_{n}():\n    return {n} * {i}\n\n" for n in range(30))
        (root / "src" / f"m{i}.py").write_text(body)
    return root


class Quiet:
    async def model_called(self, turn: int, usage: Usage) -> None:
        return None

    async def progressed(self, progress: Any, *, always: bool = False) -> None:
        return None


async def agent_task(model: str, wide: bool, breakpoints: Breakpoints, lookback: int) -> Totals:
    script = agent_script(wide)
    cache = PromptCache(lookback=lookback)
    usages: list[Any] = []

    def respond(request: dict[str, Any]) -> Reply:
        turn = sum(1 for m in request["messages"] if m["role"] == "assistant")
        return Reply(script[turn], "tool_use", output_tokens=80)

    server = MessagesServer(respond, cache=cache).start()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            worktree = scratch_repository(Path(scratch) / "repo")
            journal = Journal(Path(scratch))

            async def has_changes() -> bool:
                return True

            class Recorder(Quiet):
                async def model_called(self, turn: int, usage: Usage) -> None:
                    usages.append(usage)

            agent = Agent(
                client=anthropic.AsyncAnthropic(
                    api_key="bench", base_url=server.url, max_retries=0
                ),
                model=model,
                system=SYSTEM,
                toolbox=ToolBox(Workspace(worktree), None),
                limits=Limits(max_turns=TURNS),
                journal=journal.append,
                observer=Recorder(),
                has_changes=has_changes,
                breakpoints=breakpoints,
            )
            prompt = (
                "<mission>\nMake the greeting shorter.\n</mission>\n\n<task>\n"
                '{"id": "t1", "title": "Shorter greeting", "files": ["src/app.py"]}\n</task>'
                f"\n\n<repository>\n{repository_map(worktree)}\n</repository>"
            )
            conversation = Conversation.fresh(prompt)
            journal.start(conversation.begin_record(identity("m", "t1", 1, "base")))
            outcome = await agent.run(conversation)
            if not outcome.finished or outcome.turns != TURNS:
                raise RuntimeError(f"the scripted task did not run its {TURNS} turns: {outcome}")
    finally:
        server.stop()
    totals = Totals()
    for usage in usages:
        totals.add(model, usage)
    totals.unread = cache.writes()[1]
    return totals


# --- Claude Code ----------------------------------------------------------------------


def claude_code_script(worktree: Path) -> list[dict[str, Any]]:
    """The Claude Code task's replies, one a call: its file tools on the scratch repository
    (absolute paths, as the CLI's tools take them), then the answer."""
    app, src = str(worktree / "src" / "app.py"), str(worktree / "src")
    return [
        call("Glob", pattern="src/*.py"),
        call("Read", file_path=str(worktree / "src" / "m0.py")),
        call("Grep", pattern="def value_3_", path=src),
        call("Read", file_path=app),
        call("Edit", file_path=app, old_string='"Hello, "', new_string='"Hi, "'),
        call("Read", file_path=app),
        call("Write", file_path=str(worktree / "src" / "notes.txt"), content="shorter\n"),
        call("Grep", pattern="Hi, ", path=src),
        call("Read", file_path=str(worktree / "src" / "m1.py")),
        text_block("the greeting is now Hi"),
    ]


def committed(worktree: Path) -> str:
    """Make ``worktree`` a git repository with its files committed; the commit."""
    for args in (
        ["init", "-q", "-b", "main"],
        ["add", "-A"],
        ["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "0"],
    ):
        subprocess.run(["git", *args], cwd=worktree, check=True, capture_output=True)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=worktree, check=True, capture_output=True, text=True
    ).stdout.strip()


async def claude_code_task(model: str) -> Totals | str:
    """The Claude Code runtime's totals on the scripted task, or why it could not run."""
    try:
        import claude_agent_sdk  # noqa: F401
    except ImportError as error:
        return f"claude-agent-sdk is not installed ({error})"
    from aether_agent_runner.adapters.git import GitDir
    from aether_agent_runner.adapters.journal import state_dir
    from aether_agent_runner.runtimes import Job
    from aether_agent_runner.runtimes.claude_code import ClaudeCodeRuntime
    from aether_events import PlannedTask, WorkspaceReady

    cache = PromptCache()
    usages: list[Usage] = []
    with tempfile.TemporaryDirectory() as scratch:
        worktree = scratch_repository(Path(scratch) / "repo").resolve()
        sha = committed(worktree)
        git = GitDir.clone(worktree, "main")
        script = claude_code_script(worktree)

        def respond(request: dict[str, Any]) -> Reply:
            turn = sum(1 for m in request["messages"] if m["role"] == "assistant")
            block = script[min(turn, len(script) - 1)]
            stop = "tool_use" if block["type"] == "tool_use" else "end_turn"
            return Reply([block], stop, output_tokens=80)

        class Recorder(Quiet):
            async def model_called(self, turn: int, usage: Usage) -> None:
                usages.append(usage)

        async def has_changes() -> bool:
            return True

        ready = WorkspaceReady(
            event_id="e1",
            mission_id="m-bench",
            occurred_at=datetime.now(UTC),
            correlation_id="e0",
            task=PlannedTask(id="t1", title="Shorter greeting", files=["src/app.py"]),
            attempt=1,
            model=model,
            branch="main",
            worktree_path=str(worktree),
            base_sha=sha,
        )
        server = MessagesServer(respond, cache=cache).start()
        try:
            outcome = await ClaudeCodeRuntime(base_url=server.url, api_key="bench").run(
                Job(
                    ready=ready,
                    worktree=worktree,
                    git=git,
                    limits=Limits(max_turns=TURNS + 2, max_seconds=300),
                    journal=Journal(state_dir(git)),
                    identity=identity("m-bench", "t1", 1, sha),
                    observer=Recorder(),
                    toolbox=ToolBox(Workspace(worktree), None),
                    has_changes=has_changes,
                )
            )
        finally:
            server.stop()
    if not outcome.finished:
        return f"the Claude Code CLI could not run the task: {outcome.reason[:300]}"
    totals = Totals()
    for usage in usages:
        totals.add(model, usage)
    totals.unread = cache.writes()[1]
    totals.calls = len(usages)
    return totals


# --- the planner ----------------------------------------------------------------------

PLAN: dict[str, Any] = {
    "rationale": "two steps",
    "tasks": [
        {
            "id": "t1",
            "title": "Parser",
            "description": "parse the input",
            "files": ["src/parse.py"],
            "depends_on": [],
            "tier": "standard",
        },
        {
            "id": "t2",
            "title": "CLI",
            "description": "wire the flag",
            "files": ["src/cli.py"],
            "depends_on": ["t1"],
            "tier": "small",
        },
    ],
}
REJECTED: dict[str, Any] = {
    "rationale": "one step",
    "tasks": [{**PLAN["tasks"][0], "depends_on": ["t1"]}],
}


def planner_context(tokens: int = 7_300) -> str:
    """About ``tokens`` tokens of repository context, as the planner renders it."""
    parts = ["<repository>"]
    for path in sorted((ROOT / "libs").rglob("*.py")):
        text = path.read_text()
        parts.append(f'<file path="{path.relative_to(ROOT).as_posix()}">\n{text}\n</file>')
        if sum(len(p) for p in parts) > tokens * 4:
            break
    return "\n".join(parts)[: tokens * 4] + "\n</repository>"


async def planner_mission(
    model: str, planner_module: types.ModuleType, scenario: str, context: str
) -> Totals:
    clock = Clock()
    cache = PromptCache(clock=clock)
    first_reply: tuple[str, dict[str, Any]] = ("submit_plan", PLAN)
    if scenario == "correction":
        first_reply = ("submit_plan", REJECTED)
    elif scenario.startswith("answer"):
        first_reply = ("ask_clarifying_questions", {"questions": ["Which output format?"]})
    replies = [first_reply, ("submit_plan", PLAN)]

    def respond(request: dict[str, Any]) -> Reply:
        tool, arguments = replies.pop(0)
        return Reply([tool_use_block(tool, arguments)], "tool_use", output_tokens=400)

    server = MessagesServer(respond, cache=cache).start()
    totals = Totals()
    try:
        client = anthropic.AsyncAnthropic(api_key="bench", base_url=server.url, max_retries=0)
        planner = planner_module.PlannerModel(client)
        mission = "Mission (at most 20 tasks).\n\n<requirement>\nAdd a --json flag\n</requirement>"
        first = await planner.call(
            key="1", model=model, context=context, mission=mission, plan_only=False
        )
        totals.add(model, first.message.usage)
        if scenario == "correction":
            again = await planner.call(
                key="2",
                model=model,
                context=context,
                mission=mission,
                plan_only=False,
                correction=(first.message, "- task t1 depends on itself"),
            )
            totals.add(model, again.message.usage)
        elif scenario != "one call":
            clock.now += 120 if scenario.endswith("2 min") else 600
            revision = scenario.startswith("revision")
            turn = (
                "You proposed:\n(the plan)\n\nThe user's feedback on it:\nOne task please"
                if revision
                else "You asked:\nWhich output format?\n\nThe user answered:\nJSON lines"
            )
            later = f"{mission}\n\n<conversation>\n{turn}\n</conversation>"
            # A revision must be a plan (submit_plan forced); an answer may still be anything.
            again = await planner.call(
                key="2", model=model, context=context, mission=later, plan_only=revision
            )
            totals.add(model, again.message.usage)
    finally:
        server.stop()
    totals.unread = cache.writes()[1]
    return totals


# --- printing -------------------------------------------------------------------------


def share(t: Totals) -> str:
    return f"{t.read / t.input:6.1%}" if t.input else "     -"


def versus(t: Totals) -> str:
    if not t.uncached_cost:
        return "     -"
    return f"{t.cost / t.uncached_cost - 1:+6.1%}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="96fae97", help="the commit of the old placement")
    parser.add_argument("--model", default="claude-sonnet-5-5")
    args = parser.parse_args()
    model = args.model
    old_agent = from_history(
        args.before, AGENT_PATHS, "aether_agent_before", only=("with_cache_breakpoint",)
    )
    old_planner = from_history(args.before, PLANNER_PATHS, "aether_planner_before")
    before: Breakpoints = lambda messages, final: old_agent.with_cache_breakpoint(messages)  # noqa: E731
    after: Breakpoints = cache_breakpoints
    placements: list[tuple[str, Breakpoints]] = [
        (f"before ({args.before})", before),
        ("after", after),
    ]
    servers: list[tuple[str, int]] = [("look-back 20", 20), ("marks only", 1)]

    print(f"prompt caching, model {model}, priced by {load_prices().source.split(' ')[0]}")
    print(f"\nagent loop: a scripted {TURNS}-turn task through the real loop and SDK")
    header = (
        f"{'task':7} {'placement':18} {'server':13} {'read share':>10} {'plain':>7} "
        f"{'written':>8} {'read':>8} {'unread':>7} {'cost $':>9} {'vs none':>7}"
    )
    print(header)
    for wide in (False, True):
        for server_name, lookback in servers:
            for name, breakpoints in placements:
                t = await agent_task(model, wide, breakpoints, lookback)
                print(
                    f"{'wide' if wide else 'narrow':7} {name:18} {server_name:13} {share(t):>10} "
                    f"{t.plain:7,} {t.written:8,} {t.read:8,} {t.unread:7,} {t.cost:9.5f} "
                    f"{versus(t):>7}"
                )
    print(
        "\n  read share: cache reads / all input tokens over the ten calls; unread: tokens "
        "written\n  that no later call read; vs none: cost next to the same calls without "
        "caching."
    )

    print("\nClaude Code: the runtime and its CLI on a scripted ten-call task (look-back 20)")
    claude = await claude_code_task(model)
    if isinstance(claude, str):
        print(f"  skipped: {claude}")
    else:
        print(
            f"{'calls':>5} {'read share':>10} {'plain':>7} {'written':>8} {'read':>8} "
            f"{'unread':>7} {'cost $':>9} {'vs none':>7}"
        )
        t = claude
        print(
            f"{t.calls:5} {share(t):>10} {t.plain:7,} {t.written:8,} {t.read:8,} "
            f"{t.unread:7,} {t.cost:9.5f} {versus(t):>7}"
        )

    context = planner_context()
    print(f"\nplanner: the model adapter, a repository context of ~{len(context) // 4:,} tokens")
    print(
        f"{'mission':16} {'placement':18} {'calls':>5} {'plain':>7} {'written':>8} {'read':>8} "
        f"{'unread':>7} {'cost $':>9} {'vs none':>7}"
    )
    import aether_planner.adapters.model as new_planner

    scenarios = [
        ("one call", 1),
        ("correction", 2),
        ("answer 2 min", 2),
        ("answer 10 min", 2),
        ("revision 2 min", 2),
        ("revision 10 min", 2),
    ]
    planners: list[tuple[str, types.ModuleType]] = [
        (f"before ({args.before})", old_planner),
        ("after", new_planner),
    ]
    for scenario, calls in scenarios:
        for name, module in planners:
            t = await planner_mission(model, module, scenario, context)
            print(
                f"{scenario:16} {name:18} {calls:5} {t.plain:7,} {t.written:8,} {t.read:8,} "
                f"{t.unread:7,} {t.cost:9.5f} {versus(t):>7}"
            )
    print(
        "\n  A write of the planner's prefix pays only when a second call with the same tool "
        "choice\n  reads it within five minutes (a revision forces submit_plan, so it cannot read "
        f"a first\n  call's entry): the break-even is {break_even(model)}."
    )


def break_even(model: str) -> str:
    price = load_prices().price_of(model)
    if price is None:
        return "unknown for this model"
    premium = price.cache_write - price.input
    saving = price.input - price.cache_read
    return f"{premium / saving:.0%} of planner calls followed by such a call"


if __name__ == "__main__":
    asyncio.run(main())
