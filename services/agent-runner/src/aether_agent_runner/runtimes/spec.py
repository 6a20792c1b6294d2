"""The declarative spec of a command runtime: how to start another CLI agent."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec


class CommandSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One CLI agent as a runtime.

    ``command`` is the program and its arguments; in each, ``{prompt}`` is the task's
    prompt, ``{prompt_file}`` a file holding it and ``{model}`` the attempt's model.
    ``prompt`` says where the prompt goes besides: on standard input (``stdin``) or
    nowhere more (``argument``: only where the command line names it). ``usage``
    ``json`` reads standard-output lines that are JSON objects with a ``usage`` object
    (``input_tokens``, ``output_tokens``, ``cache_creation_input_tokens``,
    ``cache_read_input_tokens``, optionally ``cost_usd``) and adds them up; ``none``: the
    tool does not report usage, which is then unknown (never zero). ``env`` names more of
    the runner's variables to pass (never one that looks secret).

    The tool runs in the runner's sandbox, the worktree its only writable place.
    ``read_only`` are more host paths it may read (its installation, when that is not on
    ``PATH`` or in a system directory). ``model_endpoint`` gives it ``ANTHROPIC_API_KEY``
    and an ``ANTHROPIC_BASE_URL`` that reaches the runner's model endpoint and nothing
    else: with ``network`` ``none`` (the default) through a relay from the sandbox's own
    loopback to a unix socket the runner serves. ``network`` ``host`` gives the tool the
    host's whole network instead: an operator's explicit choice, for a tool that must
    reach its vendor.

    ``protocol`` ``acp``: the tool is an Agent Client Protocol agent; the runner speaks the
    protocol to it over its standard input and output (the prompt goes in a session's
    prompt, ``prompt`` and ``usage`` are not used: usage is what its prompt response
    reports, else unknown) and serves its file reads and writes inside the worktree.
    """

    name: str
    command: list[str]
    prompt: Literal["stdin", "argument"] = "stdin"
    usage: Literal["none", "json"] = "none"
    model_endpoint: bool = False
    env: list[str] = msgspec.field(default_factory=list)
    network: Literal["none", "host"] = "none"
    read_only: list[str] = msgspec.field(default_factory=list)
    protocol: Literal["lines", "acp"] = "lines"


def load_specs(path: str) -> tuple[CommandSpec, ...]:
    """The specs in a JSON file (a list of objects); a bad file stops the runner."""
    specs = msgspec.json.decode(Path(path).read_bytes(), type=list[CommandSpec])
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: command runtimes need different names")
    for spec in specs:
        if not spec.command:
            raise ValueError(f"{path}: the command runtime {spec.name!r} names no command")
        relative = [entry for entry in spec.read_only if not Path(entry).is_absolute()]
        if relative:
            raise ValueError(f"{path}: read_only paths must be absolute: {relative}")
    return tuple(specs)
