"""The chaos mission and the model that works it, counting every call it answers.

The mission is a fixed graph of 20 small tasks in four layers. Each task writes one file;
a task with dependencies also writes which of its dependencies' files its worktree already
held (from the repository map in the agent's first message), so a task started before its
dependencies merged leaves a different final tree.

Every reply carries the call's serial number as its input-token count. The services record
a reply's usage on the stream (``UsageRecorded``) when, and only when, they keep the reply,
so the stream tells which call each step used, and every other call is visible as one
whose reply was not kept.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aether_llm import ApiError, Reply, tool_use_block
from tests.support import ScriptedModel, Turn, finish

# id -> dependencies; four layers, every task after the first layer depends on two.
GRAPH: dict[str, list[str]] = {
    **{f"t{i}": [] for i in range(1, 9)},
    "t9": ["t1", "t2"],
    "t10": ["t3", "t4"],
    "t11": ["t5", "t6"],
    "t12": ["t7", "t8"],
    "t13": ["t1", "t8"],
    "t14": ["t4", "t5"],
    "t15": ["t9", "t10"],
    "t16": ["t11", "t12"],
    "t17": ["t13", "t14"],
    "t18": ["t9", "t14"],
    "t19": ["t15", "t16"],
    "t20": ["t17", "t18", "t19"],
}

_REPOSITORY = re.compile(r"<repository>\n(.*?)\n</repository>", re.DOTALL)


def file_of(task_id: str) -> str:
    return f"chaos/{task_id}.txt"


def chaos_plan() -> dict[str, Any]:
    """The plan the model submits: GRAPH, one file per task, all small."""
    return {
        "rationale": "a fixed graph of 20 tasks in four layers for the chaos benchmark",
        "tasks": [
            {
                "id": task_id,
                "title": f"Write {file_of(task_id)}",
                "description": f"write {file_of(task_id)}",
                "files": [file_of(task_id)],
                "depends_on": deps,
                "tier": "small",
            }
            for task_id, deps in GRAPH.items()
        ],
    }


def expected_content(task_id: str, present: set[str]) -> str:
    """What a task writes, given the files its worktree held when it started."""
    lines = [task_id]
    for dep in GRAPH[task_id]:
        seen = "saw" if file_of(dep) in present else "missing"
        lines.append(f"{seen} {file_of(dep)}")
    return "\n".join(lines) + "\n"


def _write_task(task_id: str, command: str | None = None) -> Turn:
    def turn(request: dict[str, Any]) -> Reply:
        first = request["messages"][0]["content"]
        text = first if isinstance(first, str) else "".join(b.get("text", "") for b in first)
        found = _REPOSITORY.search(text)
        present = set(found.group(1).splitlines()) if found else set()
        content = expected_content(task_id, present)
        blocks = [tool_use_block("write_file", {"path": file_of(task_id), "content": content})]
        if command is not None:
            blocks.append(
                tool_use_block("run_command", {"command": command.replace("{}", task_id)})
            )
        return Reply(blocks, "tool_use", 100, 20)

    return turn


@dataclass
class ModelCall:
    """One request the model server answered: which step asked, and when."""

    serial: int
    kind: str  # "plan" or "agent"
    task_id: str | None
    turn: int
    arrived: float  # wall-clock seconds (time.time())
    answered: float


@dataclass
class ChaosModel:
    """A Messages API responder for the chaos mission that records every call.
    ``command``: what each task's agent also runs beside its write (``{}`` stands for
    the task's id), so that its finish check scans every file and its commit tells the
    git broker what the worktree holds besides."""

    command: str | None = None
    calls: list[ModelCall] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.script = ScriptedModel(
            plan=chaos_plan(),
            scripts={
                t: [_write_task(t, self.command), finish(f"wrote {file_of(t)}")] for t in GRAPH
            },
        )

    def __call__(self, request: dict[str, Any]) -> Reply | ApiError:
        # One call at a time (the server answers on several threads): replies are
        # instant, and the serial and the script's call log must agree.
        with self._lock:
            arrived = time.time()
            reply = self.script(request)
            label = self.script.calls[-1]
            serial = len(self.calls) + 1
            if label == "plan":
                call = ModelCall(serial, "plan", None, 0, arrived, arrived)
            else:
                task_id, _, turn = label.partition(":")
                call = ModelCall(serial, "agent", task_id, int(turn), arrived, arrived)
            # The serial travels back in the usage, and from there onto the stream.
            reply.input_tokens = serial
            call.answered = time.time()
            self.calls.append(call)
            return reply
