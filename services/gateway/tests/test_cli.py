"""The ``aether`` command line against a real gateway: every gateway command, human and
JSON output, and ``watch`` resuming after the gateway restarts under it."""

from __future__ import annotations

import asyncio
import json

import msgspec

from aether.cli import main
from aether.commands import DID_NOT_COMPLETE
from aether.gitview import create_sample_repository
from aether_events import (
    AgentStarted,
    BranchPushed,
    EventPublisher,
    MissionCancelled,
    RepositoryPrepared,
    TaskEscalated,
)

from .conftest import ADMIN_TOKEN, eventually


class Cli:
    def __init__(self, server, capsys) -> None:
        self.server = server
        self.capsys = capsys

    async def __call__(self, *argv: str, token: str = ADMIN_TOKEN) -> tuple[int, str, str]:
        """Run one command (in a thread: the client is synchronous) and its output."""
        self.capsys.readouterr()
        args = ["--url", self.server.base_url, "--token", token, *argv]
        code = await asyncio.to_thread(main, args)
        out, err = self.capsys.readouterr()
        return code, out, err

    async def json(self, *argv: str) -> object:
        code, out, err = await self(*argv, "--json")
        assert code == 0, err
        return json.loads(out)


async def test_mission_commands_for_people_and_for_scripts(
    gateway_server, nc, capsys, script, tmp_path
):
    cli = Cli(gateway_server, capsys)
    code, out, _ = await cli("mission", "list")
    assert code == 0 and out.startswith("no missions yet: `aether mission submit")
    code, out, _ = await cli("mission", "list", "--status", "failed")
    assert code == 0 and out.strip() == "no missions match"
    repository = tmp_path / "repo"
    create_sample_repository(repository)  # submit checks the repository before sending
    created = await cli.json(
        "mission", "submit", "Add a greeting", "--repo", str(repository), "--budget", "2"
    )
    mission_id = created["mission_id"]
    code, out, _ = await cli("mission", "list")
    assert code == 0 and mission_id in out and "requested" in out
    assert out.splitlines()[0].split() == [
        "mission",
        "status",
        "created",
        "cost",
        "repository",
        "requirement",
    ]
    listed = await cli.json("mission", "list", "--status", "requested")
    assert [m["id"] for m in listed["missions"]] == [mission_id]

    code, out, _ = await cli("mission", "show", mission_id)
    assert out.startswith(f"{mission_id}  requested")
    assert "of $2.00" in out
    shown = await cli.json("mission", "show", mission_id)
    assert shown["budget_usd"] == 2.0

    assert (await cli.json("mission", "budget", mission_id, "5"))["mission_id"] == mission_id
    code, out, _ = await cli("mission", "pause", mission_id, "--reason", "later")
    assert code == 0 and "pausing" in out

    async def paused():
        return (await cli.json("mission", "show", mission_id))["status"] == "paused"

    await eventually(paused, what="the pause")
    code, out, _ = await cli("mission", "resume", mission_id)
    assert code == 0
    code, out, _ = await cli("mission", "message", mission_id, "Use English")
    assert code == 0 and "message posted" in out
    code, _, err = await cli("mission", "resume", "m-nosuchmission")
    assert code == 1 and err == "error: mission 'm-nosuchmission' not found\n"
    code, out, _ = await cli("mission", "cancel", mission_id)
    assert code == 0

    # Submitted for a person: the id alone on stdout, and on stderr what to do next.
    code, out, err = await cli("mission", "submit", "Add a farewell", "--repo", str(repository))
    assert code == 0, err
    second = out.strip()
    assert second.startswith("m-") and second != mission_id
    assert f"follow it: `aether mission watch {second}`" in err
    assert f"approve its plan: `aether mission approve {second}`" in err
    code, out, err = await cli(
        "mission", "submit", "Add more", "--repo", str(repository), "--auto-approve"
    )
    assert code == 0 and "follow it:" in err and "approve its plan" not in err


async def test_retry_skip_and_approve_from_the_command_line(gateway_server, nc, capsys, script):
    cli = Cli(gateway_server, capsys)
    await EventPublisher(nc.jetstream()).publish_all(
        [script.requested(), script.prepared(), script.plan(version=1)]
    )
    code, out, err = await cli("mission", "approve", script.mission_id)
    assert code == 0, err
    assert out.strip() == f"approved plan v1 of {script.mission_id}"
    await EventPublisher(nc.jetstream()).publish_all(
        [
            script.task_ready("t1"),
            TaskEscalated(**script.meta(), task_id="t1", attempt=1, reason="stuck"),
        ]
    )
    code, out, err = await cli("mission", "retry", script.mission_id, "t1")
    assert code == 0, err
    code, _, err = await cli("mission", "skip", script.mission_id, "t2")
    assert code == 1
    assert err == ("error: task 't2' is pending; only an escalated or failed task can be skipped\n")


async def test_tokens_usage_agents_and_rebuild(gateway_server, capsys):
    cli = Cli(gateway_server, capsys)
    code, out, _ = await cli("tokens", "create", "ci", "--scope", "write")
    assert code == 0
    secret = next(line for line in out.splitlines() if line.startswith("aet_"))
    code, out, _ = await cli("tokens", "whoami", token=secret)
    assert out.strip().startswith("ci (token")
    code, _, err = await cli("tokens", "list", token=secret)
    assert code == 1 and "(the token lacks the scope this needs)" in err
    [token] = (await cli.json("tokens", "list"))["tokens"]
    assert token["name"] == "ci" and "token" not in token
    code, out, _ = await cli("tokens", "revoke", token["id"])
    assert code == 0 and "revoked" in out
    code, _, err = await cli("tokens", "whoami", token=secret)
    assert code == 1 and "refused the token" in err

    assert (await cli.json("usage", "--by", "month"))["group_by"] == "month"
    # No call yet: said so, not a total of "unknown" cost.
    code, out, _ = await cli("usage")
    assert code == 0 and out.strip() == "no model calls recorded", out
    code, out, _ = await cli("agents")
    assert out.strip() == "no agents seen"
    code, out, _ = await cli("admin", "rebuild-read-model")
    assert code == 0 and out.startswith("read model rebuilt")


async def test_watch_follows_a_mission_across_a_gateway_restart(gateway_server, nc, capsys, script):
    cli = Cli(gateway_server, capsys)
    publisher = EventPublisher(nc.jetstream())
    events = script.happy_path()
    acks = await publisher.publish_all(events[:4])
    watching = asyncio.create_task(cli("mission", "watch", script.mission_id, "--events"))

    async def folded():
        return gateway_server.gateway.hub.subscriber_count == 1

    await eventually(folded, what="the watch to connect")
    await gateway_server.restart()  # drops the watcher's connection
    acks += await publisher.publish_all(events[4:])
    code, out, err = await asyncio.wait_for(watching, 60)
    assert code == 0, err
    lines = [line.split()[0] for line in out.splitlines() if line.strip().startswith("#")]
    assert lines == [f"#{a.seq}" for a in acks]
    assert "reconnecting" in err


async def test_a_watch_that_sees_its_mission_cancelled_says_so_with_its_own_exit_status(
    gateway_server, nc, capsys, script
):
    """It exited 1, the status of a command that failed (refused, say): the watch worked,
    yet the mission left no result, which `submit --watch && …` must not take as done."""
    cli = Cli(gateway_server, capsys)
    publisher = EventPublisher(nc.jetstream())
    cancelled = MissionCancelled(**script.meta(), reason="not needed after all")
    await publisher.publish_all([*script.happy_path()[:3], cancelled])
    code, out, err = await cli("mission", "watch", script.mission_id, "--events")
    assert code == DID_NOT_COMPLETE == 3, err
    assert f"mission {script.mission_id} cancelled: not needed after all" in out
    code, _, err = await cli("mission", "watch", script.mission_id, "--events", "--json")
    assert code == DID_NOT_COMPLETE, err


async def test_watch_waits_for_the_delivery_its_mission_announced(
    gateway_server, nc, capsys, script
):
    cli = Cli(gateway_server, capsys)
    publisher = EventPublisher(nc.jetstream())
    remote = "https://git.example/app"
    events = script.happy_path()
    at = next(i for i, e in enumerate(events) if isinstance(e, RepositoryPrepared))
    events[at] = script.prepared(delivery_remote=remote)
    await publisher.publish_all(events)
    watching = asyncio.create_task(cli("mission", "watch", script.mission_id, "--events"))

    async def completed_and_waiting():
        return gateway_server.gateway.hub.subscriber_count == 1

    await eventually(completed_and_waiting, what="the watch to follow the completed mission")
    await asyncio.sleep(0.5)  # it has had the whole history, the completion included
    assert not watching.done(), "the watch ended before the announced push was reported"
    done = events[-1]
    await publisher.publish(
        BranchPushed(
            **script.meta(),
            integration_branch=done.integration_branch,  # type: ignore[attr-defined]
            sha=done.final_sha,  # type: ignore[attr-defined]
            remote=remote,
        )
    )
    code, out, err = await asyncio.wait_for(watching, 60)
    assert code == 0, err
    assert f"(completed; waiting for the push to {remote})" in err
    assert "branch_pushed" in out
    assert f"delivered to {remote}" in out


async def test_the_event_feed_says_what_to_run_when_the_plan_awaits_approval(
    gateway_server, nc, capsys, script
):
    """Without a terminal (``--events``, or ``submit --watch`` piped), the feed has no board
    to show the approval hint on: it says what to run once the events go quiet."""
    cli = Cli(gateway_server, capsys)
    publisher = EventPublisher(nc.jetstream())
    events = script.happy_path()
    await publisher.publish_all(events[:3])  # requested, prepared, plan v1
    watching = asyncio.create_task(cli("mission", "watch", script.mission_id, "--events"))
    hint = f"» awaiting approval — approve with `aether mission approve {script.mission_id}`"
    said = []

    async def hinted():
        said.append(capsys.readouterr().err)
        return hint in "".join(said)

    try:
        await eventually(hinted, timeout=20, what="the feed to say how to approve the plan")
    finally:
        # The watch runs in a thread that cannot be cancelled: end it with the mission.
        await publisher.publish_all(events[3:])
        code, out, err = await asyncio.wait_for(watching, 60)
    assert code == 0, err
    assert "".join(said).count("» awaiting approval") == 1
    assert "mission_completed" in out


async def test_usage_and_agents_take_last_or_a_start_of_an_id_for_their_mission(
    gateway_server, nc, capsys, script
):
    cli = Cli(gateway_server, capsys)
    started = AgentStarted(**script.meta(), task_id="t1", attempt=1, runner_id="r-1", model="m")
    await EventPublisher(nc.jetstream()).publish_all(
        [
            script.requested(),
            script.prepared(),
            script.task_ready("t1"),
            started,
            script.usage(0.25),
        ]
    )

    async def folded():
        report = await cli.json("usage", "--mission", script.mission_id)
        return report if report["total"]["calls"] == 1 else None  # type: ignore[index]

    whole = await eventually(folded, what="the usage to be folded")
    assert await cli.json("usage", "--mission", "@last") == whole
    assert await cli.json("usage", "--mission", script.mission_id[:8]) == whole
    runners = await cli.json("agents", "--mission", "@last")
    assert [a["runner_id"] for a in runners["agents"]] == ["r-1"]  # type: ignore[index]


async def test_list_finds_a_local_repositorys_missions_by_a_relative_path(
    gateway_server, nc, capsys, tmp_path, monkeypatch
):
    cli = Cli(gateway_server, capsys)
    create_sample_repository(tmp_path / "repo")
    monkeypatch.chdir(tmp_path)
    created = await cli.json("mission", "submit", "Add a greeting", "--repo", "repo")
    mission_id = created["mission_id"]  # type: ignore[index]

    async def listed():
        found = await cli.json("mission", "list", "--repo", str(tmp_path / "repo"))
        return [m["id"] for m in found["missions"]] or None  # type: ignore[index]

    assert await eventually(listed, what="the mission to be folded") == [mission_id]
    relative = await cli.json("mission", "list", "--repo", "repo")
    assert [m["id"] for m in relative["missions"]] == [mission_id]  # type: ignore[index]


async def test_logs_of_a_task_the_plan_does_not_have_is_an_error_not_an_empty_transcript(
    gateway_server, nc, capsys, script
):
    cli = Cli(gateway_server, capsys)
    await EventPublisher(nc.jetstream()).publish_all(
        [script.requested(), script.prepared(), script.plan(task_ids=("t1", "t2"))]
    )

    async def planned():
        shown = await cli.json("mission", "show", script.mission_id)
        return shown["tasks"] or None  # type: ignore[index]

    await eventually(planned, what="the plan to be folded")
    code, out, err = await cli("mission", "logs", script.mission_id, "t9")
    assert code == 1 and out == ""
    assert f"mission {script.mission_id} has no task 't9' (it has: t1, t2)" in err
    code, out, err = await cli("mission", "logs", script.mission_id, "t1")
    assert code == 0, err
    assert out.strip() == f"no transcript for task t1 of {script.mission_id} yet"

    await EventPublisher(nc.jetstream()).publish(script.completed())

    async def ended():
        shown = await cli.json("mission", "show", script.mission_id)
        return shown["status"] == "completed"  # type: ignore[index]

    await eventually(ended, what="the completion to be folded")
    code, out, err = await cli("mission", "logs", script.mission_id, "t2", "--attempt", "2")
    assert code == 0, err
    assert out.strip() == f"no transcript for task t2 attempt 2 of {script.mission_id}"


async def test_show_names_the_runtime_that_works_each_task(gateway_server, nc, capsys, script):
    """The mission asked for Claude Code on its complex tasks and nothing else: t1 (complex)
    runs with it, t2's runner started it with its own default (builtin), and t3, not yet
    ready, will run with its runner's default."""
    cli = Cli(gateway_server, capsys)
    plan = script.plan(task_ids=("t1", "t2", "t3"))
    tiers = {"t1": "complex", "t2": "standard", "t3": "standard"}
    plan = msgspec.structs.replace(
        plan, tasks=[msgspec.structs.replace(t, tier=tiers[t.id]) for t in plan.tasks]
    )
    ready = script.task_ready("t1")
    await EventPublisher(nc.jetstream()).publish_all(
        [
            script.requested(runtime_overrides={"complex": "claude-code"}),
            script.prepared(),
            plan,
            script.approved(),
            msgspec.structs.replace(ready, runtime="claude-code"),
            AgentStarted(
                **script.meta(),
                task_id="t1",
                attempt=1,
                runner_id="r-1",
                model="m",
                runtime="claude-code",
            ),
            script.task_ready("t2"),
            AgentStarted(
                **script.meta(),
                task_id="t2",
                attempt=1,
                runner_id="r-2",
                model="m",
                runtime="builtin",
            ),
        ]
    )

    async def started():
        shown = await cli.json("mission", "show", script.mission_id)
        return [t["runtime"] for t in shown["tasks"]] == ["claude-code", "builtin", None]

    await eventually(started, what="the agents' starts to be folded")
    shown = await cli.json("mission", "show", script.mission_id)
    assert (shown["runtime"], shown["runtime_overrides"]) == (None, {"complex": "claude-code"})
    code, out, err = await cli("mission", "show", script.mission_id)
    assert code == 0, err
    assert "\n  runtime      default (complex: claude-code)\n" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if " try " in line}
    assert [lines[t][:5] for t in ("t1", "t2", "t3")] == [
        ["t1", "running", "try", "1", "claude-code"],
        ["t2", "running", "try", "1", "builtin"],
        ["t3", "pending", "try", "0", "default"],
    ]


async def test_show_adds_no_runtime_where_neither_mission_nor_task_named_one(
    gateway_server, nc, capsys, script
):
    cli = Cli(gateway_server, capsys)
    await EventPublisher(nc.jetstream()).publish_all(
        [script.requested(), script.prepared(), script.plan(), script.approved()]
    )

    async def planned():
        return (await cli.json("mission", "show", script.mission_id))["tasks"] or None

    await eventually(planned, what="the plan to be folded")
    code, out, err = await cli("mission", "show", script.mission_id)
    assert code == 0, err
    assert "\n  runtime " not in out
    tasks = [line for line in out.splitlines() if " try " in line]
    assert len(tasks) == 2 and not any("default" in line for line in tasks)
