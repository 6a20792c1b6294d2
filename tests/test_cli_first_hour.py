"""What a newcomer meets in the first hour and was misled by: a mistyped port, a
repository's subdirectory, an empty requirement, a refused merge told as a conflict, a
`show` that did not say what to run next, and a stack asked about while it starts."""

from __future__ import annotations

import io
import json
import socket
import time
from pathlib import Path

import pytest

from aether import locate
from aether.cli import _parser, main
from aether.client import SseEvent
from aether.gitview import create_sample_repository
from aether.localstack import down, status
from aether.render import describe, mission_detail
from aether.repocheck import RepositoryProblem, check_repository
from aether.supervise import HomeLock, write_state
from aether.watch import Board, render
from tests.test_cli import META, PLAN, PREPARED


@pytest.mark.parametrize("value", ["70000", "-5", "65535", "abc"])
def test_a_port_base_that_cannot_be_one_is_a_usage_line(value: str, capsys) -> None:
    with pytest.raises(SystemExit) as ended:
        _parser().parse_args(["up", "--port-base", value])
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert "argument --port-base:" in err
    assert "0 for free ports" in err or "not a port number" in err
    assert _parser().parse_args(["up", "--port-base", "0"]).port_base == 0
    assert _parser().parse_args(["up", "--port-base", "65531"]).port_base == 65531


def test_a_repositorys_subdirectory_is_named_as_such_not_as_no_repository(tmp_path: Path):
    repo = tmp_path / "repo"
    create_sample_repository(repo)
    (repo / "sub").mkdir()
    with pytest.raises(RepositoryProblem) as problem:
        check_repository(repo / "sub")
    # Not "run `git init`", which would nest a second repository in the first.
    assert str(problem.value) == (
        f"{repo / 'sub'} is not the top directory of a git repository: it is inside "
        f"{repo} (give --repo {repo} for that one)"
    )
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(RepositoryProblem, match="is not a git repository \\(run `git init`"):
        check_repository(plain)


def _closed_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


@pytest.mark.parametrize(("requirement", "stdin"), [("   ", ""), ("-", " \n")])
def test_an_empty_requirement_is_refused_before_anything_is_sent(
    tmp_path: Path, monkeypatch, capsys, requirement: str, stdin: str
) -> None:
    """Sent, it came back as the gateway's "Expected `str` of length >= 1"; ``-`` was
    sent as the requirement itself rather than read from standard input."""
    repo = tmp_path / "repo"
    create_sample_repository(repo)
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    url = _closed_url()  # were anything sent, the error would be that it is unreachable
    argv = ["mission", "submit", "--repo", str(repo), "--url", url, requirement]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the requirement is empty: say what you want done")
    assert "cannot reach" not in err


def ev(seq: int, kind: str, **data: object) -> SseEvent:
    """An SSE message as the gateway sends it: the whole event, tagged."""
    return SseEvent(str(seq), kind, {"type": kind, **META, **data})


def planned_board() -> Board:
    board = Board("m-1")
    board.apply(ev(1, "repository_prepared", **PREPARED))
    board.apply(ev(2, "plan_produced", **{**PLAN, "tasks": PLAN["tasks"][:1]}))
    board.apply(ev(3, "plan_approved", version=1))
    return board


def test_a_merge_refused_by_the_verification_is_not_told_as_a_conflict() -> None:
    refused = ev(
        9,
        "merge_conflicted",
        task_id="a",
        attempt=1,
        files=[],
        integration_sha="0" * 40,
        refusal="verification_failed",
        detail="verification failed: `false` exited with 1 after 0.0s\n--- output ---\n",
    )
    line = describe(refused)
    assert "not merged: verification failed: `false` exited with 1 after 0.0s" in line
    assert "conflict in" not in line
    board = planned_board()
    board.apply(refused)
    assert board.tasks["a"].activity.startswith("not merged: verification failed")
    conflict = ev(
        10, "merge_conflicted", task_id="a", attempt=2, files=["x.py"], refusal="conflict"
    )
    assert describe(conflict).endswith("conflict in x.py")
    # A broker before the refusal field: files only with a conflict.
    assert describe(ev(11, "merge_conflicted", task_id="a", files=["y.py"])).endswith(
        "conflict in y.py"
    )


def test_show_and_the_board_say_what_to_run_when_the_mission_waits_on_a_person() -> None:
    task = {"task_id": "a", "title": "A", "status": "escalated", "attempt": 3}
    mission = {
        "id": "m-1",
        "status": "running",
        "repository": "/r",
        "base_branch": "main",
        "requirement": "x",
        "tasks": [task],
    }
    retry = "task a is escalated: `aether mission retry m-1 a` (or `aether mission skip m-1 a`)"
    assert f"  next         {retry}" in mission_detail(mission).splitlines()
    waiting = {**mission, "status": "awaiting_approval", "tasks": [{**task, "status": "pending"}]}
    assert "  next         approve with `aether mission approve m-1`" in mission_detail(waiting)
    done = {**mission, "status": "completed"}
    assert "next" not in mission_detail(done)
    board = planned_board()
    board.apply(ev(4, "task_escalated", task_id="a", attempt=3, reason="failed 3 times"))
    assert f"> {retry}" in render(board)  # a command that runs as shown


@pytest.fixture
def starting_home(tmp_path: Path):
    """A home whose `up` holds the lock but has not recorded its stack yet: the state
    file is still what the stack before it left when it stopped."""
    home = tmp_path / "home"
    lock = HomeLock(home)
    lock.acquire()
    write_state(home, {"pid": None, "home": str(home), "processes": {}})
    try:
        yield home
    finally:
        lock.release()


def test_status_and_down_while_up_starts_say_so_without_a_traceback(starting_home, capsys):
    assert status(starting_home) == 3
    assert capsys.readouterr().out.startswith(f"stack on {starting_home}: starting (aether up")
    assert down(starting_home, timeout=1) == 1
    assert "has not recorded its pid yet" in capsys.readouterr().out
    # As `up` now records itself before it starts anything.
    write_state(
        starting_home,
        {"pid": 4242, "started_at": time.time() - 5, "home": str(starting_home), "processes": {}},
    )
    assert status(starting_home) == 3
    assert "starting for " in capsys.readouterr().out


def test_the_cli_says_a_stack_that_does_not_answer_yet_is_starting(
    starting_home, monkeypatch, capsys
):
    monkeypatch.setattr(locate, "DEFAULT_URL", _closed_url())
    for name in ("AETHER_URL", "AETHER_TOKEN", "AETHER_HOME"):
        monkeypatch.delenv(name, raising=False)
    assert main(["mission", "list", "--home", str(starting_home)]) == 1
    hint = capsys.readouterr().err.splitlines()[1]
    assert f"the stack on {starting_home} (aether up pid ?) does not answer yet" in hint
    assert "no stack is running" not in hint


def test_a_stopped_up_hands_the_latest_home_back_to_the_stack_still_running(
    tmp_path: Path, monkeypatch
) -> None:
    """A second stack started and stopped left every command run elsewhere pointing at
    it ("no stack is running") while the first still ran."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    running, stopped = tmp_path / "running", tmp_path / "stopped"
    lock = HomeLock(running)
    lock.acquire()
    try:
        write_state(running, {"pid": 1, "home": str(running), "processes": {}})
        locate.remember_home(running)
        previous = locate.remembered_home()
        stopped.mkdir()
        locate.remember_home(stopped)
        locate.hand_back_home(stopped, previous)
        assert locate.remembered_home() == running.resolve()
    finally:
        lock.release()
    # Once the first has stopped too, the latest stays the latest.
    locate.remember_home(stopped)
    locate.hand_back_home(stopped, running.resolve())
    assert locate.remembered_home() == stopped.resolve()
    assert json.loads((running / "stack.json").read_text())["pid"] == 1


def test_a_requirement_over_the_gateways_limit_is_a_sentence_before_anything_is_sent(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """Sent, it came back as the gateway's "Expected `str` of length <= 20000"."""
    import msgspec

    from aether.commands import REQUIREMENT_LIMIT
    from aether_gateway.api.bodies import CreateMission

    info = msgspec.inspect.type_info(CreateMission)
    assert isinstance(info, msgspec.inspect.StructType)
    [requirement] = [f.type for f in info.fields if f.name == "requirement"]
    assert isinstance(requirement, msgspec.inspect.StrType)
    assert requirement.max_length == REQUIREMENT_LIMIT
    repo = tmp_path / "repo"
    create_sample_repository(repo)
    monkeypatch.setattr("sys.stdin", io.StringIO("x" * 20_001))
    argv = ["mission", "submit", "--repo", str(repo), "--url", _closed_url(), "-"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "error: the requirement is 20,001 characters; a requirement may have at most 20,000: "
        "shorten it (keep it in a file and pass - to read it from standard input: "
    )
    assert "cannot reach" not in err


def test_a_message_over_the_gateways_limit_is_the_same_sentence_before_anything_is_sent(
    monkeypatch, capsys
) -> None:
    """Sent, it came back as the gateway's "Expected `str` of length <= 20000"; a blank
    one as a pattern's refusal."""
    import msgspec

    from aether.commands import MESSAGE_LIMIT
    from aether_gateway.api.bodies import PostMessage

    info = msgspec.inspect.type_info(PostMessage)
    assert isinstance(info, msgspec.inspect.StructType)
    [text] = [f.type for f in info.fields if f.name == "text"]
    assert isinstance(text, msgspec.inspect.StrType)
    assert text.max_length == MESSAGE_LIMIT
    closed = _closed_url()
    assert main(["mission", "message", "m-1", "x" * 20_001, "--url", closed]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "error: the message is 20,001 characters; a message may have at most 20,000: "
        "shorten it (keep it in a file and pass - to read it from standard input: "
        "`aether mission message m-1 - < notes.md`)"
    )
    assert "cannot reach" not in err
    monkeypatch.setattr("sys.stdin", io.StringIO("  \n"))
    assert main(["mission", "message", "m-1", "-", "--url", closed]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the message is empty: ")
    assert "cannot reach" not in err


def test_a_missing_base_names_the_repositorys_own_branches_not_the_missions(
    tmp_path: Path,
) -> None:
    """After ten missions the mission branches (``aether/m-…``, sorted first) were all
    the list showed: the user's own dropped off it."""
    from dulwich.repo import Repo

    repo = tmp_path / "repo"
    head = create_sample_repository(repo).encode()
    with Repo(str(repo)) as opened:
        for n in range(12):
            opened.refs[f"refs/heads/aether/m-{n:016x}".encode()] = head
        opened.refs[b"refs/heads/aether/m-ffffffffffffffff/t1"] = head
        opened.refs[b"refs/heads/feature"] = head
    with pytest.raises(RepositoryProblem) as problem:
        check_repository(repo, "mian")
    assert str(problem.value) == (
        f"{repo} has no branch 'mian' (it has: feature, main; and 13 mission branches aether/…)"
    )
    with Repo(str(repo)) as opened:
        for n in range(11):
            opened.refs[f"refs/heads/topic-{n:02d}".encode()] = head
    with pytest.raises(RepositoryProblem) as problem:
        check_repository(repo, "mian")
    own = ", ".join(["feature", "main", *(f"topic-{n:02d}" for n in range(8))])
    assert str(problem.value) == (
        f"{repo} has no branch 'mian' (it has: {own} and 3 more; and 13 mission branches aether/…)"
    )


def test_every_option_and_argument_of_every_command_has_help() -> None:
    """`usage --by` and `agents --status` had none: their choices showed, not what they
    do. An option hidden on purpose says so with ``argparse.SUPPRESS``."""
    import argparse

    from aether.clidoc import _commands

    missing = [
        f"{' '.join(path)} {action.option_strings[-1] if action.option_strings else action.dest}"
        for path, command in _commands(_parser(), ["aether"])
        for action in command._actions
        if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
        and not (action.help or "").strip()
    ]
    assert missing == []


@pytest.mark.parametrize("ref", ["", "  ", "../x", "m x", "m-1/2"])
def test_a_mission_argument_that_cannot_be_an_id_is_a_sentence_before_anything_is_sent(
    ref: str, capsys
) -> None:
    """An empty mission argument asked for the missions' list as if it were one mission
    and crashed on it (a traceback); a path-like one read "error: Not Found". Refused
    before anything is sent: the gateway here is a closed port."""
    for command in (["mission", "show", ref], ["mission", "logs", ref, "t1"]):
        assert main(["--url", _closed_url(), "--token", "t", *command]) == 1
        err = capsys.readouterr().err
        assert err == (
            f"error: {ref!r} is not a mission id: give its id (m-…), a unique start of one, "
            "or @last (the newest); `aether mission list` lists them\n"
        ), err


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--budget", "-3", "argument --budget: -3 is not a budget: give US dollars above 0"),
        ("--budget", "0", "argument --budget: 0 is not a budget"),
        ("--budget", "nan", "argument --budget: nan is not a budget"),
        ("--budget", "abc", "argument --budget: 'abc' is not an amount: give US dollars"),
        ("--concurrency", "0", "argument --concurrency: 0 is too few: give 1 or more"),
        ("--max-tasks", "-1", "argument --max-tasks: -1 is too few: give 1 or more"),
    ],
)
def test_submits_numbers_are_checked_and_named_as_options_not_as_the_apis_fields(
    option: str, value: str, said: str, capsys
) -> None:
    """They were sent and refused by the gateway under its own field names
    ("invalid request (max_concurrency: must be at least 1)")."""
    with pytest.raises(SystemExit) as ended:
        _parser().parse_args(["mission", "submit", "--repo", ".", "x", option, value])
    assert ended.value.code == 2
    assert said in capsys.readouterr().err


def test_a_model_override_of_a_tier_that_does_not_exist_names_the_tiers(
    tmp_path: Path, capsys
) -> None:
    """It read "invalid request (body: Invalid enum value 'huge' - at `key` in
    `$.model_overrides`)"; now refused before anything is sent."""
    repo = tmp_path / "repo"
    create_sample_repository(repo)
    argv = ["--url", _closed_url(), "--token", "t", "mission", "submit", "--repo", str(repo)]
    assert main([*argv, "x", "--model", "huge=claude-x"]) == 2
    assert capsys.readouterr().err == (
        "error: --model takes a tier of small, standard or complex, not 'huge' "
        "(e.g. --model complex=claude-opus-4-1)\n"
    )
