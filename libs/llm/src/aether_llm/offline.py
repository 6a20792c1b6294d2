"""The offline model: deterministic, keyless, served over the Messages API.

It exists so that Aether runs end to end on a machine with no Anthropic key (the demo, the
tests). It is not a language model and says so: every reply names the model
``aether-offline``, and the services label plans, usage and missions made with it.

* Asked to plan (a request offering the ``submit_plan`` tool), it splits the requirement
  found between ``<requirement>`` tags into tasks: one per bullet or numbered line (else
  per sentence). A task's files are the paths it mentions (else ``notes/<task>.md``), and
  ``(after 1, 2)`` in an item makes it depend on items 1 and 2.
* Asked to work a task (a request offering ``write_file`` and ``finish``), it writes every
  file the task names (the JSON between ``<task>`` tags), then finishes.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aether_llm.config import OFFLINE_MODEL
from aether_llm.messages_server import JSON, MessagesServer, Reply, text_block, tool_use_block

_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+(.*\S)\s*$")
_AFTER = re.compile(r"\(\s*after\s+([^)]*)\)", re.IGNORECASE)
_PATH = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.[A-Za-z0-9]{1,8})(?![\w/-])")
_TAG = re.compile(r"<(requirement|task)>(.*?)</\1>", re.DOTALL)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content or []:
        if isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
    return "\n".join(parts)


def _tagged(request: JSON, tag: str) -> str | None:
    sources = [_text_of(m.get("content")) for m in request.get("messages", [])]
    system = request.get("system")
    sources.append(_text_of(system) if system is not None else "")
    for text in sources:
        for found in _TAG.finditer(text):
            if found.group(1) == tag:
                return found.group(2).strip()
    return None


def _estimate_tokens(value: object) -> int:
    return max(1, len(json.dumps(value)) // 4)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "task"


def split_requirement(requirement: str) -> list[JSON]:
    """The offline plan: tasks with ids t1…tn, files and dependencies from the text."""
    lines = [m.group(1) for line in requirement.splitlines() if (m := _BULLET.match(line))]
    if not lines:
        flat = " ".join(requirement.split())
        lines = [s.strip() for s in re.split(r"(?<=[.;!?])\s+", flat) if s.strip()]
    tasks: list[JSON] = []
    for index, item in enumerate(lines, start=1):
        depends_on: list[str] = []
        after = _AFTER.search(item)
        if after:
            depends_on = [f"t{n}" for n in re.findall(r"\d+", after.group(1)) if 0 < int(n) < index]
        title = _AFTER.sub("", item).strip().rstrip(".;")
        files = list(dict.fromkeys(m.group(1) for m in _PATH.finditer(title)))
        if not files:
            files = [f"notes/t{index}-{_slug(title)}.md"]
        tasks.append(
            {
                "id": f"t{index}",
                "title": title[:120],
                "description": title,
                "files": files,
                "depends_on": depends_on,
                "tier": "standard",
                "acceptance_criteria": [
                    f"{path} exists and describes the change" for path in files
                ],
            }
        )
    return tasks


def _file_body(path: str, task: JSON) -> str:
    title = str(task.get("title", ""))
    description = str(task.get("description", title))
    text = f"{title}\n\n{description}\n\n(written by the offline model for task {task.get('id')})"
    if path.endswith(".md"):
        note = f"_Written by the offline model for task {task.get('id')}._"
        return f"# {title}\n\n{description}\n\n{note}\n"
    if path.endswith(".py"):
        return '"""' + text.replace('"""', "'''") + '"""\n'
    if path.endswith((".js", ".ts", ".go", ".rs", ".c", ".java")):
        return "".join(f"// {line}\n" for line in text.splitlines())
    if path.endswith((".sh", ".toml", ".yaml", ".yml", ".cfg")):
        return "".join(f"# {line}\n" for line in text.splitlines())
    return text + "\n"


def respond(request: JSON) -> Reply:
    """The offline model's answer to one Messages API request."""
    tools = {tool.get("name") for tool in request.get("tools", [])}
    if "submit_plan" in tools:
        requirement = _tagged(request, "requirement") or ""
        plan = {
            "rationale": "Offline model: one task per item of the requirement, "
            "in the order written; '(after N)' marks a dependency.",
            "tasks": split_requirement(requirement),
        }
        content = [tool_use_block("submit_plan", plan)]
        return _reply(request, content, "tool_use")
    if {"write_file", "finish"} <= tools:
        return _work(request)
    answer = text_block("The offline model can only plan and write the files a task names.")
    return _reply(request, [answer], "end_turn")


def _work(request: JSON) -> Reply:
    task = json.loads(_tagged(request, "task") or "{}")
    files = [str(f) for f in task.get("files") or []] or [f"notes/{task.get('id', 'task')}.md"]
    last = request.get("messages", [])[-1] if request.get("messages") else {}
    already = last.get("role") == "user" and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in last.get("content", [])
    )
    if not already:
        blocks = [text_block(f"Writing {len(files)} file(s) for task {task.get('id')}.")]
        blocks += [
            tool_use_block("write_file", {"path": path, "content": _file_body(path, task)})
            for path in files
        ]
        return _reply(request, blocks, "tool_use")
    summary = f"Offline model wrote {', '.join(files)}."
    return _reply(request, [tool_use_block("finish", {"summary": summary})], "tool_use")


def _reply(request: JSON, content: list[JSON], stop_reason: str) -> Reply:
    return Reply(
        content=content,
        stop_reason=stop_reason,
        input_tokens=_estimate_tokens(request.get("messages", [])),
        output_tokens=_estimate_tokens(content),
        model=OFFLINE_MODEL,
    )


def start_offline_server(port: int = 0) -> MessagesServer:
    """Start the offline model on ``127.0.0.1:port`` in a background thread."""
    return MessagesServer(respond, port=port).start()
