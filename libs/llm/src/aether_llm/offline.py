"""The offline model: deterministic, keyless, served over the Messages API.

It exists so that Aether runs end to end on a machine with no Anthropic key (the demo, the
tests). It is not a language model and says so: every reply names the model
``aether-offline``, and the services label plans, usage and missions made with it.

* Asked to plan (a request offering the ``submit_plan`` tool), it splits the requirement
  found between ``<requirement>`` tags into tasks: one per bullet or numbered line (else
  per sentence). A task's files are the paths it mentions (else ``notes/<task>.md``), and
  ``(after 1, 2)`` in an item makes it depend on items 1 and 2.
* Asked to work a task (a request offering ``read_file``, ``write_file`` and ``finish``),
  it reads every file the task names (the JSON between ``<task>`` tags), creates the
  missing ones, appends a section marked "added by the aether offline model" to each
  existing text file it could read whole (as comments in code), and leaves every other
  file untouched. It never deletes or shortens content it did not write.
* Asked the same through the Claude Code CLI (a request offering its ``Read``, ``Write``
  and ``Edit``), it does the same with those tools on absolute paths under the CLI's
  working directory, appends to an existing file with an ``Edit`` whose old text is the
  whole file as read (so a file it misread is refused by the CLI, not overwritten), and
  ends with its summary as text.
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
    if {"read_file", "write_file", "finish"} <= tools:
        return _work(request)
    if {"Read", "Write", "Edit"} <= tools and _tagged(request, "task") is not None:
        return _work_claude_code(request)
    answer = text_block("The offline model can only plan and write the files a task names.")
    return _reply(request, [answer], "end_turn")


_PARTIAL = re.compile(r"\[lines \d+-\d+ of \d+[^\]]*\]\s*$")
_HASH_COMMENT = (".py", ".sh", ".toml", ".yaml", ".yml", ".cfg", ".rb", ".r", ".pl", ".ini")
_SLASH_COMMENT = (".js", ".ts", ".jsx", ".tsx", ".go", ".rs", ".c", ".h", ".cpp", ".java", ".kt")
_PROSE = (".md", ".txt", ".rst")
MARK = "added by the aether offline model (no intelligence involved)"


def _section(path: str, task: JSON) -> str | None:
    """The marked section appended to an existing file, or None for a format where an
    appended section could break the file (JSON, lock files, unknown kinds)."""
    title = " ".join(str(task.get("title", "")).split())
    lines = [f"--- {MARK}, task {task.get('id')} ---", title]
    if path.endswith(_HASH_COMMENT):
        return "\n" + "".join(f"# {line}\n" for line in lines)
    if path.endswith(_SLASH_COMMENT):
        return "\n" + "".join(f"// {line}\n" for line in lines)
    if path.endswith(_PROSE):
        return f"\n<!-- {MARK}, task {task.get('id')} -->\n{title}\n"
    return None


def _calls(message: JSON, path_key: str = "path") -> dict[str, tuple[str, str]]:
    """The tool calls of an assistant message: id → (tool, the input's ``path_key``: the
    built-in loop's tools name their file ``path``, Claude Code's ``file_path``)."""
    content = message.get("content")
    found: dict[str, tuple[str, str]] = {}
    for block in content if isinstance(content, list) else []:
        if isinstance(block, dict) and block.get("type") == "tool_use":
            path = str((block.get("input") or {}).get(path_key, ""))
            found[str(block.get("id"))] = (str(block.get("name")), path)
    return found


def _results(message: JSON) -> dict[str, tuple[str, bool]]:
    """The tool results of a user message: tool_use_id → (text, is_error)."""
    content = message.get("content")
    found: dict[str, tuple[str, bool]] = {}
    for block in content if isinstance(content, list) else []:
        if isinstance(block, dict) and block.get("type") == "tool_result":
            text = block.get("content")
            if isinstance(text, list):
                text = "".join(str(part.get("text", "")) for part in text if isinstance(part, dict))
            found[str(block.get("tool_use_id"))] = (str(text or ""), bool(block.get("is_error")))
    return found


def _work(request: JSON) -> Reply:
    """Work a task without ever removing a byte it did not write: read each named file
    first; create the missing ones; append a marked section to an existing text file only
    when it was read whole; leave any other file as it is."""
    task = json.loads(_tagged(request, "task") or "{}")
    files = [str(f) for f in task.get("files") or []] or [f"notes/{task.get('id', 'task')}.md"]
    messages = request.get("messages", [])
    previous = _calls(messages[-2]) if len(messages) >= 2 else {}
    results = _results(messages[-1]) if messages else {}
    tools_used = {tool for tool, _ in previous.values()}
    if not results or not tools_used:
        blocks = [text_block(f"Offline model: reading {len(files)} file(s) before writing.")]
        blocks += [tool_use_block("read_file", {"path": path}) for path in files]
        return _reply(request, blocks, "tool_use")
    if tools_used == {"read_file"}:
        return _write(request, task, previous, results)
    written = [path for tool, path in previous.values() if tool == "write_file"]
    summary = "Offline model (deterministic, no intelligence): " + (
        f"wrote {', '.join(written)}." if written else "changed nothing."
    )
    return _reply(request, [tool_use_block("finish", {"summary": summary})], "tool_use")


def _write(
    request: JSON,
    task: JSON,
    reads: dict[str, tuple[str, str]],
    results: dict[str, tuple[str, bool]],
) -> Reply:
    writes: list[JSON] = []
    left: list[str] = []
    for call_id, (_, path) in reads.items():
        text, is_error = results.get(call_id, ("", True))
        if is_error and "no such path" in text:
            writes.append(
                tool_use_block("write_file", {"path": path, "content": _file_body(path, task)})
            )
            continue
        section = _section(path, task)
        whole = not is_error and not _PARTIAL.search(text) and "\ufffd" not in text
        if section is None or not whole:
            left.append(path)
            continue
        body = text if text.endswith("\n") or not text else text + "\n"
        writes.append(tool_use_block("write_file", {"path": path, "content": body + section}))
    return _writing(request, task, writes, left, "write_file", "path", "")


_CWD = re.compile(r"Primary working directory: (\S+)")
# A line of the CLI's Read result: its number, then a tab or an arrow, then the line.
_NUMBERED = re.compile(r"^ *\d+(?:\t|\u2192)(.*)$")


def _work_claude_code(request: JSON) -> Reply:
    """``_work`` with the Claude Code CLI's tools: read each named file, then create the
    missing ones with ``Write`` and append to each one read whole with ``Edit``, then
    answer with the summary (the CLI's turn ends on text)."""
    task = json.loads(_tagged(request, "task") or "{}")
    files = [str(f) for f in task.get("files") or []] or [f"notes/{task.get('id', 'task')}.md"]
    system = _text_of(request.get("system"))
    found = _CWD.search(system) or _CWD.search(
        "\n".join(_text_of(m.get("content")) for m in request.get("messages", []))
    )
    root = found.group(1).rstrip("/") if found else "."
    messages = request.get("messages", [])
    assistant = [m for m in messages if m.get("role") == "assistant"]
    previous = _calls(assistant[-1], "file_path") if assistant else {}
    tools_used = {tool for tool, _ in previous.values()}
    if not tools_used:
        blocks = [text_block(f"Offline model: reading {len(files)} file(s) before writing.")]
        blocks += [tool_use_block("Read", {"file_path": f"{root}/{path}"}) for path in files]
        return _reply(request, blocks, "tool_use")
    if tools_used == {"Read"}:
        results: dict[str, tuple[str, bool]] = {}
        for message in messages:
            if message.get("role") == "user":
                results.update(_results(message))
        return _write_claude_code(request, task, root, previous, results)
    written = [path.removeprefix(f"{root}/") for tool, path in previous.values() if tool != "Read"]
    summary = "Offline model (deterministic, no intelligence): " + (
        f"wrote {', '.join(written)}." if written else "changed nothing."
    )
    return _reply(request, [text_block(summary)], "end_turn")


def _as_read(result: str) -> str | None:
    """The file's text from the CLI's numbered Read result, or None when it is not one
    whole (a line without its number: a note of the CLI, a cut)."""
    lines = result.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    text: list[str] = []
    for line in lines:
        found = _NUMBERED.match(line)
        if found is None:
            break
        text.append(found.group(1))
    else:
        return "\n".join(text) if text else None
    return None


def _write_claude_code(
    request: JSON,
    task: JSON,
    root: str,
    reads: dict[str, tuple[str, str]],
    results: dict[str, tuple[str, bool]],
) -> Reply:
    writes: list[JSON] = []
    left: list[str] = []
    for call_id, (_, file_path) in reads.items():
        path = file_path.removeprefix(f"{root}/")
        text, is_error = results.get(call_id, ("", True))
        if is_error and "does not exist" in text.lower():
            body = _file_body(path, task)
            writes.append(tool_use_block("Write", {"file_path": file_path, "content": body}))
            continue
        section = _section(path, task)
        whole = None if is_error else _as_read(text)
        if section is None or not whole:
            left.append(path)
            continue
        grown = (whole if whole.endswith("\n") else whole + "\n") + section
        edit = {"file_path": file_path, "old_string": whole, "new_string": grown}
        writes.append(tool_use_block("Edit", edit))
    return _writing(request, task, writes, left, "Write", "file_path", f"{root}/")


def _writing(
    request: JSON,
    task: JSON,
    writes: list[JSON],
    left: list[str],
    write_tool: str,
    path_key: str,
    root: str,
) -> Reply:
    """The reply that makes ``writes``; with none, one that writes a note saying which
    files were ``left`` as they were (``write_tool`` with its ``path_key``, under
    ``root``: the built-in loop's or Claude Code's spelling)."""
    if not writes:
        note = f"{root}notes/{task.get('id', 'task')}-offline.md"
        content = (
            f"# {task.get('title', '')}\n\n_{MARK}._ It left {', '.join(left)} unchanged: "
            "it only appends marked sections to text files it can read whole.\n"
        )
        writes.append(tool_use_block(write_tool, {path_key: note, "content": content}))
    blocks = [text_block("Offline model: creating missing files, appending marked sections.")]
    return _reply(request, blocks + writes, "tool_use")


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
