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
            "take `--home` or the servers' URLs.\n",
            "A read the gateway refuses for a while (a `429`: its read limit; a `503`: the "
            "database or the bus away) with a `Retry-After` of at most 10 s is asked again "
            "once that has passed, four tries at most; `mission watch` opens its event "
            "stream again no sooner than a refusal's `Retry-After` says (a `429` or any "
            "`5xx`; at most 5 minutes), else after its own backoff (1 s doubling to 10 s, "
            "back to 1 s once an event arrives).\n",
            "A command the gateway refuses prints `error: ` and the gateway's reason as a "
            "sentence, and exits 1; with `--json` it prints "
            '`{"error": …, "status": <HTTP status>, "detail": …}` on standard error instead; '
            "so does any other error of a command given `--json` (a check made before "
            'anything is sent, an unreachable gateway), with `"status": null`. A value an '
            "option cannot take is a usage line naming the option, exit status 2 (with "
            "`--json`, that JSON, the usage in `detail`).\n",
            "A command asking for the state a mission is already in does nothing, says so "
            "(`… is already cancelled: nothing to do`; with `--json` "
            '`{"mission_id": …, "unchanged": true, "reason": …}`) and exits 0: `cancel` of a '
            "cancelled mission, `pause` of a paused one, `resume` of one that is not paused "
            "(and has not ended), `approve` of a latest plan already approved, `skip` of a "
            "skipped task, `budget` of the budget it has, `deliver` of a result already "
            "pushed. The rest stay refusals: pausing, resuming or cancelling an ended mission "
            "(a completed one is not cancelled), approving a plan that is not the latest, a "
            "lower budget, and `retry`, which asks for a new run of an escalated or failed "
            "task, not a state.\n",
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
