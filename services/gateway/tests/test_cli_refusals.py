"""The command line's refusals against a real gateway: a sentence, not a status code
(which ``--json`` gives scripts), and a command asking for the state the mission is
already in (a second cancel, a pause of a paused mission…) a success that says so."""

from __future__ import annotations

import json

from aether_events import (
    AgentStarted,
    EventPublisher,
    MergeConflicted,
    MergeWithheld,
    TaskEscalated,
)

from .conftest import ADMIN_TOKEN, eventually
from .test_cli import Cli


async def test_a_refusal_is_a_sentence_and_its_status_is_for_scripts(gateway_server, capsys):
    cli = Cli(gateway_server, capsys)
    code, out, err = await cli("mission", "cancel", "m-nosuchmission")
    # It read "error: 404: mission 'm-nosuchmission' not found".
    assert (code, out, err) == (1, "", "error: mission 'm-nosuchmission' not found\n")
    code, out, err = await cli("mission", "cancel", "m-nosuchmission", "--json")
    assert code == 1 and out == ""
    answer = json.loads(err)
    assert answer["status"] == 404
    assert answer["error"] == "mission 'm-nosuchmission' not found"


async def test_asking_for_the_state_a_mission_is_in_succeeds_and_says_so(
    gateway_server, nc, capsys, script
):
    cli = Cli(gateway_server, capsys)
    mission = script.mission_id
    publisher = EventPublisher(nc.jetstream())
    await publisher.publish_all(
        [script.requested(budget_usd=2.0), script.prepared(), script.plan(task_ids=("t1",))]
    )

    async def status(wanted: str) -> bool:
        shown = await cli.json("mission", "show", mission)
        return shown["status"] == wanted  # type: ignore[index]

    await eventually(lambda: status("awaiting_approval"), what="the plan")
    # Resume of a mission that was never paused: nothing to resume.
    assert await cli("mission", "resume", mission) == (
        0,
        f"mission {mission} is not paused (it is awaiting approval): nothing to do\n",
        "",
    )
    assert (await cli("mission", "approve", mission))[0] == 0
    await eventually(lambda: status("running"), what="the approval")
    assert await cli("mission", "approve", mission) == (
        0,
        f"plan v1 of {mission} is already approved: nothing to do\n",
        "",
    )
    assert await cli.json("mission", "approve", mission) == {
        "mission_id": mission,
        "unchanged": True,
        "reason": f"plan v1 of {mission} is already approved",
    }
    # A plan version that is not the latest is still refused.
    code, _, err = await cli("mission", "approve", mission, "--version", "2")
    assert code == 1
    assert err == "error: plan version 2 is not the latest (the latest is 1)\n"

    # The same budget again is no change; a lower one is still refused.
    assert await cli("mission", "budget", mission, "2") == (
        0,
        f"the budget of {mission} is already $2.00: nothing to do\n",
        "",
    )
    code, _, err = await cli("mission", "budget", mission, "1")
    assert code == 1
    assert err == "error: the new budget must be more than the current one ($2.00)\n"

    await publisher.publish_all(
        [
            script.task_ready("t1"),
            TaskEscalated(**script.meta(), task_id="t1", attempt=1, reason="stuck"),  # type: ignore[arg-type]
        ]
    )
    assert (await cli("mission", "skip", mission, "t1"))[0] == 0

    async def skipped() -> bool:
        shown = await cli.json("mission", "show", mission)
        return shown["tasks"][0]["status"] == "skipped"  # type: ignore[index]

    await eventually(skipped, what="the skip")
    assert await cli("mission", "skip", mission, "t1") == (
        0,
        f"task t1 of {mission} is already skipped: nothing to do\n",
        "",
    )

    assert (await cli("mission", "pause", mission))[0] == 0
    await eventually(lambda: status("paused"), what="the pause")
    # It was "error: 409: the mission is already paused".
    assert await cli("mission", "pause", mission) == (
        0,
        f"mission {mission} is already paused: nothing to do\n",
        "",
    )
    assert (await cli("mission", "resume", mission))[0] == 0
    await eventually(lambda: status("running"), what="the resume")
    assert await cli("mission", "resume", mission) == (
        0,
        f"mission {mission} is not paused (it is running): nothing to do\n",
        "",
    )

    assert (await cli("mission", "cancel", mission))[0] == 0
    await eventually(lambda: status("cancelled"), what="the cancel")
    # It was "error: 409: the mission is cancelled", exit 1.
    assert await cli("mission", "cancel", mission) == (
        0,
        f"mission {mission} is already cancelled: nothing to do\n",
        "",
    )
    # An ended mission is not paused, nor resumed: those refusals stand, as sentences.
    for verb in ("pause", "resume"):
        assert await cli("mission", verb, mission) == (
            1,
            "",
            "error: the mission is cancelled\n",
        )


async def test_mission_logs_says_why_a_completed_attempt_was_not_merged(
    gateway_server, nc, capsys, script
):
    """Every task's steps showed "completed" for an attempt the verification then
    refused, and nothing after it."""
    cli = Cli(gateway_server, capsys)
    mission = script.mission_id
    await EventPublisher(nc.jetstream()).publish_all(
        [
            script.requested(),
            script.prepared(),
            script.plan(task_ids=("t1",)),
            script.approved(),
            script.task_ready("t1"),
            AgentStarted(**script.meta(), task_id="t1", attempt=1, runner_id="r-1", model="m"),  # type: ignore[arg-type]
            script.agent_completed("t1"),
            MergeConflicted(
                **script.meta(),  # type: ignore[arg-type]
                task_id="t1",
                attempt=1,
                files=[],
                integration_sha="a" * 40,
                detail="verification failed: `pytest -q` exited with 1 after 0.2s\n"
                "--- output ---\n1 failed",
                refusal="verification_failed",
            ),
        ]
    )

    async def listed() -> list[str] | None:
        code, out, err = await cli("mission", "logs", mission)
        assert code == 0, err
        lines = out.splitlines()
        return lines if len(lines) == 3 else None

    lines = await eventually(listed, what="the attempt's steps")
    assert "t1 a1  completed  commit cccccccccc" in lines[1]
    assert lines[2].endswith(
        "t1 a1  refused    not merged: verification failed: `pytest -q` exited with 1 after 0.2s"
    )


async def test_mission_logs_tells_a_verification_a_cancel_stopped(
    gateway_server, nc, capsys, script
):
    """A withheld merge said only that the mission was cancelled; the verification it
    stopped is told as a failed one is, and its output is in --json."""
    cli = Cli(gateway_server, capsys)
    mission = script.mission_id
    stopped = "verification stopped: `make test` was stopped after 3.2s (cancelled by alice)"
    await EventPublisher(nc.jetstream()).publish_all(
        [
            script.requested(),
            script.prepared(),
            script.plan(task_ids=("t1",)),
            script.approved(),
            script.task_ready("t1"),
            script.agent_completed("t1"),
            MergeWithheld(
                **script.meta(),  # type: ignore[arg-type]
                task_id="t1",
                attempt=1,
                commit_sha="c" * 40,
                integration_sha="a" * 40,
                reason="the mission was cancelled by alice",
                verification=f"{stopped}\n--- output ---\nchecked 3 of 5\n",
            ),
        ]
    )

    async def listed() -> list[str] | None:
        code, out, err = await cli("mission", "logs", mission)
        assert code == 0, err
        lines = out.splitlines()
        return lines if len(lines) == 2 else None

    lines = await eventually(listed, what="the attempt's steps")
    assert lines[1].endswith(f"t1 a1  refused    not merged: {stopped}")
    code, out, _ = await cli("mission", "logs", mission, "--json")
    assert code == 0
    [withheld] = [json.loads(line) for line in out.splitlines() if "merge_withheld" in line]
    assert withheld["verification"].endswith("--- output ---\nchecked 3 of 5\n")


async def test_at_last_with_no_mission_yet_says_how_to_make_one(gateway_server, capsys):
    cli = Cli(gateway_server, capsys)
    assert await cli("mission", "show", "@last") == (
        1,
        "",
        "error: there is no mission yet: submit one with "
        '`aether mission submit --repo PATH "what you want done"`\n',
    )


async def test_following_a_missions_logs_ends_saying_how_it_ended_and_what_next(
    gateway_server, nc, capsys, script
):
    """``mission logs -f`` (every task's steps, and one task's transcript) stopped without
    a word when the mission ended, which read like a dropped connection."""
    import asyncio

    from aether.cli import main

    mission = script.mission_id
    publisher = EventPublisher(nc.jetstream())
    await publisher.publish_all(
        [
            script.requested(),
            script.prepared(),
            script.plan(task_ids=("t1",)),
            script.approved(),
            script.task_ready("t1"),
        ]
    )
    cli = Cli(gateway_server, capsys)

    async def shown() -> bool:
        return (await cli.json("mission", "show", mission))["status"] == "running"  # type: ignore[index]

    await eventually(shown, what="the running mission")
    capsys.readouterr()
    base = ["--url", gateway_server.base_url, "--token", ADMIN_TOKEN, "mission", "logs"]
    steps = asyncio.create_task(asyncio.to_thread(main, [*base, mission, "-f"]))
    transcript = asyncio.create_task(asyncio.to_thread(main, [*base, mission, "t1", "-f"]))
    await publisher.publish_all(
        [script.agent_completed("t1"), script.merged("t1"), script.completed()]
    )
    assert await asyncio.wait_for(steps, 60) == 0
    assert await asyncio.wait_for(transcript, 60) == 0
    err = capsys.readouterr().err
    said = f"{mission} completed: `aether mission diff {mission}` shows what it changed"
    assert err.count(said + "\n") == 2, err
    # Asked of a mission that has ended: it says so at once.
    code, _, err = await cli("mission", "logs", mission, "-f")
    assert code == 0 and err.endswith(said + "\n"), err
