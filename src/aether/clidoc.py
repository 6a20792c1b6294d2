"""The command-line reference, generated from the parser itself so it cannot drift:
``python -m aether.clidoc > docs/cli.md`` (a test checks the file is current)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator

from aether.cli import _parser

WIDTH = "100"  # argparse wraps help to the terminal width: fixed here for a stable file


def _commands(
    parser: argparse.ArgumentParser, path: list[str]
) -> Iterator[tuple[list[str], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _commands(child, [*path, name])


def reference() -> str:
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        parser = _parser()
        parts = [
            "# Command-line reference\n",
            "Generated from the parser by `python -m aether.clidoc > docs/cli.md`; do not edit.",
            "Global options (`--url`, `--token`, `--home`, `--json`) may be given before the "
            "command or after it; `up`, `down`, `status` and `logs` take only `--home` and "
            "print for people (`logs --raw` prints the JSON lines); `backup` and `restore` "
            "take `--home` or the servers' URLs.",
            "A read the gateway refuses for a while (a `429`: its read limit; a `503`: the "
            "database or the bus away) with a `Retry-After` of at most 10 s is asked again "
            "once that has passed, four tries at most; `mission watch` opens its event "
            "stream again no sooner than a refusal's `Retry-After` says (a `429` or any "
            "`5xx`; at most 5 minutes), else after its own backoff (1 s doubling to 10 s, "
            "back to 1 s once an event arrives).\n",
        ]
        for path, command in _commands(parser, ["aether"]):
            command.prog = " ".join(path)
            parts.append(f"## {' '.join(path)}\n\n```\n{command.format_help().rstrip()}\n```\n")
        return "\n".join(parts)
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous


if __name__ == "__main__":
    print(reference(), end="")
