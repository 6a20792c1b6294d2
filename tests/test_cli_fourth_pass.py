"""What a demanding newcomer still met on a fourth pass over the command line: a bad
value refused by the gateway under its own field's name rather than the option typed,
a transcript whose attempt started after its first entries, a watch of a cancelled
mission that read as a failed command, and ``--json`` errors that were not JSON."""

from __future__ import annotations

import argparse
import contextlib
import io
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from json import loads
from pathlib import Path
from typing import Any, cast

import pytest

from aether.cli import _parser, main
from aether.clidoc import _commands
from aether.client import GatewayClient, SseEvent
from aether.gitview import create_sample_repository
from aether.repocheck import RepositoryProblem, check_repository
from aether.transcript import task_transcript

# Options and arguments whose value is free text, a path or a name: nothing the command
# line could check better than the gateway (or the command) does with a sentence of its
# own. Any other option that takes a value is checked where it is parsed.
FREE_TEXT = {
    "url",
    "token",
    "home",
    "nats_url",
    "database_url",
    "requirement",
    "repo",
    "base",
    "model",  # TIER=MODEL, checked by submit before anything is sent
    "runtime",
    "verify",
    "idempotency_key",
    "mission_id",
    "task_id",
    "text",
    "reason",
    "event_id",
    "service",
    "name",
    "token_id",
    "mission",
    "file",
    "master_file",
    "out",
}
AETHER = [sys.executable, "-m", "aether.cli", "--token", "t"]
BAD_VALUES = ("abc", "-1", "nan", "", "1e999")


def _valued(command: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        action
        for action in command._actions
        if action.nargs != 0
        and not isinstance(action, argparse._SubParsersAction | argparse._HelpAction)
    ]


def _base_argv(command: argparse.ArgumentParser) -> list[str]:
    """Values that parse for the command's required options and arguments."""
    argv: list[str] = []
    for action in _valued(command):
        value = "5" if action.type not in (None, str, Path) else "x"
        if action.choices:
            value = next(iter(action.choices))
        if not action.option_strings:
            argv.append(value)
        elif action.required:
            argv += [action.option_strings[-1], value]
    return argv


def _checked_options() -> list[tuple[list[str], str]]:
    found = []
    for path, command in _commands(_parser(), ["aether"]):
        for action in _valued(command):
            if action.choices or action.dest in FREE_TEXT or action.type is Path:
                continue
            found.append((path[1:], action.dest))
    return found


def test_every_option_taking_a_value_is_checked_or_known_as_free_text() -> None:
    """A value the command line does not check is refused by the gateway under its own
    name: `mission list --since yesterday` read "since must be an ISO 8601 date or
    date-time", `--limit 0` "limit: must be at least 1", `mission budget M -3` named
    `budget_usd`. Every option taking a value has a type that checks it, choices, or is
    free text; a new one must be one of the three."""
    unchecked = [
        f"{' '.join(path)} {dest}"
        for path, dest in _checked_options()
        for command in [_command(path)]
        if _action(command, dest).type in (None, str, int, float)
    ]
    assert unchecked == []


def _command(path: list[str]) -> argparse.ArgumentParser:
    for found, command in _commands(_parser(), ["aether"]):
        if found[1:] == path:
            return command
    raise AssertionError(path)


def _action(command: argparse.ArgumentParser, dest: str) -> argparse.Action:
    return next(a for a in command._actions if a.dest == dest)


@pytest.mark.parametrize(
    ("path", "dest"), _checked_options(), ids=lambda p: "-".join(p) if isinstance(p, list) else p
)
def test_a_bad_value_of_a_checked_option_is_a_usage_line_naming_it_as_typed(
    path: list[str], dest: str, capsys
) -> None:
    command = _command(path)
    action = _action(command, dest)
    base = _base_argv(command)
    command.parse_args(base)  # the values given the others parse
    capsys.readouterr()
    # As argparse names it: each of its spellings (``-n/--lines``), or an argument's metavar.
    named = "/".join(action.option_strings) or str(action.metavar or action.dest)
    for bad in BAD_VALUES:
        if action.option_strings:
            argv = [*base, f"{action.option_strings[-1]}={bad}"]
        else:
            positionals = [a for a in _valued(command) if not a.option_strings]
            at = positionals.index(action)
            argv = [v if i != at else bad for i, v in enumerate(base)]
        with pytest.raises(SystemExit) as ended:
            _parser().parse_args([*path, *argv])
        assert ended.value.code == 2, (path, dest, bad)
        err = capsys.readouterr().err
        assert f"error: argument {named}: " in err, err
        assert "invalid" not in err, err  # argparse's own "invalid int value: 'abc'"


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (
            ["mission", "list", "--since", "yesterday"],
            "argument --since: 'yesterday' is not a day: give YYYY-MM-DD",
        ),
        (["usage", "--since", "last week"], "argument --since: 'last week' is not a day"),
        (["mission", "list", "--limit", "500"], "argument --limit: 500 is too many: give at most"),
        (
            ["mission", "list", "--status", "running,done"],
            "argument --status: 'done' is not a mission status: give one of requested,",
        ),
        (["mission", "budget", "m-1", "-3"], "argument USD: -3 is not a budget"),
        (["mission", "logs", "m-1", "t1", "--attempt", "0"], "argument --attempt: 0 is too few"),
        (["tokens", "create", "ci", "--scope", "read", "--expires-days", "0"], "0 is too few"),
    ],
)
def test_values_the_gateway_refused_under_its_own_names_are_refused_here(
    argv: list[str], said: str, capsys
) -> None:
    with pytest.raises(SystemExit) as ended:
        main(["--url", "http://127.0.0.1:9", "--token", "t", *argv])
    assert ended.value.code == 2
    assert said in capsys.readouterr().err


def test_the_values_a_gateway_takes_still_parse() -> None:
    listing = _parser().parse_args(
        ["mission", "list", "--since", "2025-01-31", "--status", "running,paused", "--limit", "200"]
    )
    assert (listing.since, listing.status, listing.limit) == ("2025-01-31", ["running,paused"], 200)
    assert _parser().parse_args(["usage", "--since", "2025-01-31T10:00:00Z"]).since
    assert _parser().parse_args(["mission", "budget", "m-1", "12.5"]).budget_usd == 12.5
    assert _parser().parse_args(["logs", "-n", "0"]).lines == 0


class _StartAfterEntries:
    """The gateway's side of ``logs M t1 -f`` for an attempt whose start the runner
    published after its first entries (held with them, or carried by its result): the
    stream brings the telemetry first; the listing made when the stream opens has the
    entries but not yet the start."""

    def __init__(self) -> None:
        self.status = "running"

    @staticmethod
    def entry(sequence: int) -> dict[str, object]:
        return {
            "task_id": "t1",
            "attempt": 1,
            "sequence": sequence,
            "kind": "note",
            "text": f"step {sequence}",
            "occurred_at": f"2026-11-30T12:00:0{sequence}.5Z",
        }

    @staticmethod
    def step(kind: str, event_id: str) -> dict[str, object]:
        # A whole second: its string sorts after "12:00:00.5Z" though it is earlier.
        return {
            "task_id": "t1",
            "attempt": 1,
            "event_id": event_id,
            "occurred_at": "2026-11-30T12:00:00Z",
        }

    def activity(self, mission_id: str, task_id: str, attempt: int | None) -> dict[str, object]:
        return {"entries": [], "position": 3}

    def transcript(self, *args: object) -> dict[str, object]:
        return {"entries": [self.entry(0)], "next": None}

    def show(self, mission_id: str) -> dict[str, object]:
        return {"status": self.status}

    def events(self, *args: object, on_open: Any = None, **kwargs: object) -> Iterator[SseEvent]:
        on_open()
        yield SseEvent(None, "transcript_recorded", self.entry(1))
        yield SseEvent(None, "transcript_recorded", self.entry(2))
        yield SseEvent("4", "agent_started", self.step("agent_started", "e-1"))
        yield SseEvent(None, "transcript_recorded", self.entry(3))
        self.status = "completed"
        yield SseEvent("5", "agent_completed", self.step("agent_completed", "e-2"))


@pytest.mark.parametrize("json", [False, True])
def test_an_attempts_start_is_printed_before_its_entries_however_they_arrive(
    json: bool, capsys
) -> None:
    args = _parser().parse_args(
        [*(["--json"] if json else []), "mission", "logs", "m-1", "t1", "-f"]
    )
    assert task_transcript(cast(GatewayClient, _StartAfterEntries()), args) == 0
    out = capsys.readouterr().out.splitlines()
    if json:
        read = [loads(line) for line in out]
        order = [(r["type"], r.get("sequence")) for r in read]
    else:
        order = [
            ("agent_started" if "started" in line else "agent_completed", None)
            if " t1 a1 " in line
            else ("transcript_recorded", int(line.split("#")[1].split()[0]))
            for line in out
            if not line.startswith(" ")
        ]
    assert order == [
        ("agent_started", None),
        *[("transcript_recorded", n) for n in range(4)],
        ("agent_completed", None),
    ]


def test_a_listed_transcript_puts_each_attempts_start_first_and_its_end_last(capsys) -> None:
    """Sorted by their times' strings, a start at a whole second came after the entries
    of its first half second ("12:00:00Z" > "12:00:00.5Z")."""
    gateway = _StartAfterEntries()
    gateway.status = "completed"
    started = {"type": "agent_started", "data": gateway.step("agent_started", "e-1")}
    ended = {"type": "agent_completed", "data": gateway.step("agent_completed", "e-2")}
    for step in (started, ended):
        step["occurred_at"] = step["data"]["occurred_at"]  # type: ignore[index]
    gateway.activity = lambda *_: {"entries": [ended, started], "position": 3}  # type: ignore[method-assign]
    gateway.transcript = lambda *_: {  # type: ignore[method-assign]
        "entries": [gateway.entry(0), gateway.entry(1)],
        "next": None,
    }
    args = _parser().parse_args(["--json", "mission", "logs", "m-1", "t1"])
    assert task_transcript(cast(GatewayClient, gateway), args) == 0
    read = [loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["type"], r.get("sequence")) for r in read] == [
        ("agent_started", None),
        ("transcript_recorded", 0),
        ("transcript_recorded", 1),
        ("agent_completed", None),
    ]


def test_ctrl_c_stops_the_watch_and_says_the_mission_goes_on() -> None:
    """Ctrl-C during `submit --watch` ended without a word: whether the mission was
    stopped with it was left to guess. The watch here has no gateway (it keeps trying)."""
    mission = "m-0123456789abcdef"
    watcher = subprocess.Popen(
        [*AETHER, "mission", "watch", mission, "--events", "--url", "http://127.0.0.1:9"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stderr is not None
        assert "cannot connect" in watcher.stderr.readline()  # it runs, and tries again
        watcher.send_signal(signal.SIGINT)
        _, err = watcher.communicate(timeout=30)
    finally:
        watcher.kill()
        watcher.wait()
    assert watcher.returncode == 130
    assert f"stopped watching; {mission} goes on (`aether mission watch {mission}`" in err
    assert f"`aether mission cancel {mission}` stops it" in err
    assert "Traceback" not in err


def test_the_watchs_exit_status_is_in_its_help_and_submits() -> None:
    for argv in (["mission", "watch", "--help"], ["mission", "submit", "--help"]):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            _parser().parse_args(argv)
        text = " ".join(out.getvalue().split())
        assert "3 when it ended otherwise (failed, its plan failed, or cancelled)" in text


def _closed_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


@pytest.mark.parametrize(
    ("argv", "code", "said"),
    [
        (["mission", "show", "../x"], 1, "'../x' is not a mission id"),
        (["mission", "show", "m-0123456789abcdef"], 1, "cannot reach the gateway at"),
        (["mission", "submit", "--repo", "REPO", "x", "--model", "huge=m"], 2, "--model takes"),
        (["mission", "submit", "--repo", "REPO", "x", "--model", "huge"], 2, "--model takes"),
    ],
)
def test_with_json_every_error_is_json_on_standard_error(
    argv: list[str], code: int, said: str, tmp_path: Path, capsys
) -> None:
    """Only the gateway's refusals were: a check made before anything was sent, and an
    unreachable gateway, printed `error: …` lines a script could not parse."""
    repo = tmp_path / "repo"
    create_sample_repository(repo)
    argv = [str(repo) if arg == "REPO" else arg for arg in argv]
    assert main(["--json", "--url", _closed_url(), "--token", "t", *argv]) == code
    captured = capsys.readouterr()
    assert captured.out == ""
    answer = loads(captured.err)
    assert said in answer["error"] and answer["status"] is None, answer


def test_a_bare_repository_whose_head_has_no_commit_says_to_pass_base(tmp_path: Path) -> None:
    """Its HEAD's branch (git's default) was not the one pushed to it: the refusal read
    "has no branch 'trunk' (it has: main)", as if a --base given had been mistyped."""
    work, bare = tmp_path / "work", tmp_path / "bare.git"
    create_sample_repository(work)
    git = ["git", "-c", "init.defaultBranch=trunk"]
    subprocess.run([*git, "init", "-q", "--bare", str(bare)], check=True)
    subprocess.run(["git", "-C", str(work), "push", "-q", str(bare), "main"], check=True)
    with pytest.raises(RepositoryProblem) as problem:
        check_repository(bare)
    assert str(problem.value) == (
        f"{bare}'s HEAD is on branch 'trunk', which has no commit yet: pass --base with one of main"
    )
    assert check_repository(bare, "main").base == "main"


def test_a_bad_option_value_under_json_is_a_json_error_with_the_usage(capsys: Any) -> None:
    """With ``--json``, a value an option cannot take was argparse's plain usage text
    while every other error was JSON: a script parsing stderr got text."""
    with pytest.raises(SystemExit) as ended:
        main(["--json", "mission", "list", "--since", "yesterday"])
    assert ended.value.code == 2
    said = loads(capsys.readouterr().err)
    assert said["status"] is None
    assert said["error"].startswith("aether mission list: argument --since: 'yesterday'")
    assert said["detail"]["usage"].startswith("usage: aether mission list")
    # Without --json (in the same process): the usage line, as before.
    with pytest.raises(SystemExit) as ended:
        main(["mission", "list", "--since", "yesterday"])
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: aether mission list") and "error: argument --since" in err
