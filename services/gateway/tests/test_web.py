"""The web board in a real browser (Debian's chromium, driven by Playwright) against a
real gateway on real NATS and PostgreSQL: the events a mission's services would publish
are published by the test, and the board must show each one live.

Screenshots of every page go to ``$AETHER_TEST_ARTEFACTS`` (default: the test's
temporary directory).
"""

# The browser fixtures are imported from tests.web.browser, then named as parameters.
# ruff: noqa: F811
from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
from dulwich import porcelain
from dulwich.repo import Repo
from playwright.async_api import TimeoutError as PlaywrightTimeout

from aether_events import (
    AgentProgress,
    AgentStarted,
    BranchPushFailed,
    BudgetRaised,
    DeliveryRetryRequested,
    Event,
    EventPublisher,
    MergeConflicted,
    MergeWithheld,
    MissionMessagePosted,
    MissionPaused,
    MissionRequested,
    MissionResumed,
    PlanApproved,
    PlanClarificationRequested,
    PlannedTask,
    RepositoryPrepared,
    StepFailed,
    StepRetryRequested,
    TaskEscalated,
    TaskRetryRequested,
    TranscriptRecorded,
    Usage,
    WorkspaceReady,
)
from tests.eventlog import EventLog
from tests.gitdaemon import bare_copy, git_daemon
from tests.web.browser import artefacts, browser, chromium, expect  # noqa: F401 (fixtures)

from .conftest import ADMIN_TOKEN, GatewayServer, Script, eventually

E = TypeVar("E", bound=Event)


async def goto(page: Any, url: str) -> None:
    """``page.goto``, asked again when Chromium saw the host's interfaces change as it
    loaded (``ERR_NETWORK_CHANGED``: other tests' container networks coming and going),
    whether the page itself failed (``goto`` raises) or one of the board's files did:
    ``goto`` then returns, the board's scripts do not run, and the page stays blank (a
    sign-in's ``fill`` waited its whole 30 s for a field never drawn). A board file that
    failed otherwise fails the test here, by name."""
    failed: list[tuple[str, str]] = []

    def note(request: Any) -> None:
        failed.append((request.url, request.failure or ""))

    page.on("requestfailed", note)
    try:
        for tries in range(3):
            failed.clear()
            try:
                await page.goto(url)
            except Exception as error:
                if "ERR_NETWORK_CHANGED" not in str(error) or tries == 2:
                    raise
                continue
            if tries < 2 and any("ERR_NETWORK_CHANGED" in why for _, why in failed):
                continue
            files = [
                f"{where}: {why}"
                for where, why in failed
                if "/board/static/" in where and "ERR_ABORTED" not in why
            ]
            assert not files, "the board's page loaded without its files:\n" + "\n".join(files)
            return
    finally:
        page.remove_listener("requestfailed", note)


async def signed_in(browser: Any, server: GatewayServer, token: str = ADMIN_TOKEN) -> Any:
    page = browser.pages[0] if browser.pages else await browser.new_page()
    await goto(page, server.base_url + "/board/")
    await page.fill("#token", token)
    await page.click("#signin button[type=submit]")
    await expect(page.locator("#missions")).to_be_visible()
    return page


def sample_repository(path: Path) -> tuple[str, str]:
    """A repository with a base commit and a task's commit on top: (base, head)."""
    porcelain.init(str(path))
    (path / "greet.py").write_text("def greet():\n    return 'hi'\n")
    porcelain.add(str(path), [str(path / "greet.py")])
    base = porcelain.commit(str(path), b"base", author=b"t <t@t>", committer=b"t <t@t>")
    (path / "greet.py").write_text("def greet(name):\n    return f'hello {name}'\n")
    (path / "test_greet.py").write_text("assert True\n")
    porcelain.add(str(path), [str(path / "greet.py"), str(path / "test_greet.py")])
    head = porcelain.commit(str(path), b"task", author=b"t <t@t>", committer=b"t <t@t>")
    with Repo(str(path)) as repo:
        repo.refs[b"refs/heads/main"] = base
    return base.decode(), head.decode()


def prepared(script: Script, repo: Path, base: str) -> RepositoryPrepared:
    return RepositoryPrepared(
        **script.meta(),  # type: ignore[arg-type]
        repository_path=str(repo),
        base_branch="main",
        base_sha=base,
        integration_branch=f"aether/{script.mission_id}",
    )


def workspace(script: Script, task_id: str, base: str) -> WorkspaceReady:
    return WorkspaceReady(
        **script.meta(),  # type: ignore[arg-type]
        task=PlannedTask(id=task_id, title=f"Task {task_id}"),
        attempt=1,
        model="claude-test",
        branch=f"aether/{script.mission_id}/{task_id}",
        worktree_path="/tmp/none",
        base_sha=base,
    )


async def test_board_follows_a_mission_from_sign_in_to_merge(
    gateway_server: GatewayServer,
    nc: Any,
    script: Script,
    browser: Any,
    artefacts: Path,
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    base, head = sample_repository(repo)
    publisher = EventPublisher(nc.jetstream())
    page = browser.pages[0] if browser.pages else await browser.new_page()
    await page.goto(gateway_server.base_url + "/")
    await expect(page.locator("#signin")).to_be_visible()
    await page.screenshot(path=str(artefacts / "1-sign-in.png"))
    page = await signed_in(browser, gateway_server)

    # A mission submitted elsewhere appears on the open list, live.
    await publisher.publish_all(
        [
            script.requested(repository=str(repo), budget_usd=0.05),
            prepared(script, repo, base),
            script.plan(task_ids=("t1", "t2")),
        ]
    )
    row = page.locator(f'tr[data-mission="{script.mission_id}"]')
    await expect(row.locator(".pill")).to_have_text("awaiting approval")
    await page.screenshot(path=str(artefacts / "2-missions.png"))

    await row.locator("a").click()
    await expect(page.locator("#plan-graph .node")).to_have_count(2)
    await expect(page.locator('#plan-graph [data-edge="t1->t2"]')).to_have_count(1)
    await page.click("#approve")
    history = await first_stored(nc, script.mission_id, PlanApproved)
    assert history.version == 1
    await expect(page.locator("#mission-status .pill")).to_have_text("running")
    await expect(page.locator("#approve")).to_have_count(0)

    # Tasks move across the board as their events arrive.
    await publisher.publish_all([script.task_ready("t1"), workspace(script, "t1", base)])
    await publisher.publish(
        AgentStarted(
            **script.meta(),  # type: ignore[arg-type]
            task_id="t1",
            attempt=1,
            runner_id="runner-1",
            model="claude-test",
        )
    )
    t1 = page.locator('#task-board article[data-task="t1"]')
    await expect(page.locator('[data-column="running"] article[data-task="t1"]')).to_have_count(1)
    await publisher.publish(
        AgentProgress(
            **script.meta(),  # type: ignore[arg-type]
            task_id="t1",
            attempt=1,
            runner_id="runner-1",
            turns=2,
            tool_calls=3,
            last_action="write_file greet.py",
        )
    )
    await expect(t1.locator(".activity")).to_have_text("write_file greet.py")
    await publisher.publish_all(
        [
            entry(script, 0, "prompt", text="<task>greet by name</task>"),
            entry(
                script,
                1,
                "turn",
                text="I will change greet.",
                tool="write_file",
                stop_reason="tool_use",
                usage=Usage(input_tokens=1200, output_tokens=40),
            ),
            entry(
                script,
                2,
                "tool_call",
                tool="write_file",
                arguments='{"path": "greet.py", "content": "def greet(name): ..."}',
                result="wrote greet.py (2 lines)",
            ),
        ]
    )
    await publisher.publish_all([script.usage(0.045), _completed(script, "t1", head)])
    await expect(page.locator('[data-column="merging"] article[data-task="t1"]')).to_have_count(1)
    await publisher.publish(script.merged("t1"))
    await expect(page.locator('[data-column="merged"] article[data-task="t1"]')).to_have_count(1)
    await expect(page.locator('#plan-graph .node[data-task="t1"]')).to_have_attribute(
        "data-status", "merged"
    )
    # 0.045 of 0.05 spent: the cost bar warns.
    await expect(page.locator("#costbar")).to_have_attribute("data-level", "warn")
    await page.screenshot(path=str(artefacts / "3-mission.png"), full_page=True)

    # The task's page: its activity from the stored events, and its diff.
    await t1.locator("a.task-title").click()
    await expect(page.locator("#transcript")).to_contain_text("merged as dddddddddd")
    # The agent's transcript: stored entries first, then one arriving live.
    entries = page.locator("#agent-transcript li.entry")
    await expect(entries).to_have_count(3)
    turn = page.locator('#agent-transcript li[data-kind="turn"]')
    await expect(turn).to_contain_text("I will change greet.")
    await expect(turn).to_contain_text("asks: write_file")
    await expect(turn).to_contain_text("1.2k in")
    call = page.locator('#agent-transcript li[data-kind="tool_call"]')
    await expect(call.locator("pre.args")).to_contain_text('"path": "greet.py"')
    await expect(call.locator("pre.result")).to_have_text("wrote greet.py (2 lines)")
    await publisher.publish(
        entry(
            script,
            3,
            "command",
            tool="run_command",
            arguments='{"command": "pytest -q"}',
            result="$ pytest -q\n[exit code 1 after 0.3 s]\n<b>1 failed</b>",
            exit_code=1,
            status="exit code 1 after 0.3 s",
            truncated=True,
        )
    )
    command = page.locator('#agent-transcript li[data-kind="command"]')
    await expect(command.locator(".exit")).to_have_text("exit 1")
    await expect(command.locator(".cut")).to_have_text("excerpt")
    # What a command printed is text on the page, never markup.
    await expect(command.locator("pre.result")).to_contain_text("<b>1 failed</b>")
    await expect(command.locator("pre.result b")).to_have_count(0)
    await expect(page.locator("#agent-transcript .attempt-mark")).to_have_text(["Attempt 1"])
    await expect(page.locator('.diff-file[data-path="greet.py"]')).to_contain_text("hello {name}")
    await expect(page.locator('.diff-file[data-path="test_greet.py"]')).to_have_count(1)
    await page.screenshot(path=str(artefacts / "4-task.png"), full_page=True)

    await page.click('#nav a[data-page="agents"]')
    await expect(page.locator('[data-runner="runner-1"]')).to_be_visible()
    await page.screenshot(path=str(artefacts / "5-agents.png"))
    await page.click('#nav a[data-page="usage"]')
    await expect(page.locator("#usage-model svg")).to_contain_text("claude-test")
    await page.screenshot(path=str(artefacts / "6-usage.png"), full_page=True)
    # A mission's spend opens its page.
    await page.click(f'#usage-mission a[data-mission="{script.mission_id}"]')
    await expect(page).to_have_url(re.compile(f"/board/missions/{script.mission_id}$"))


def entry(script: Script, sequence: int, kind: str, **fields: Any) -> TranscriptRecorded:
    return TranscriptRecorded(
        **script.meta(),  # type: ignore[arg-type]
        task_id="t1",
        attempt=1,
        runner_id="runner-1",
        sequence=sequence,
        kind=kind,  # type: ignore[arg-type]
        runtime="builtin",
        **fields,
    )


async def first_stored(nc: Any, mission_id: str, kind: type[E]) -> E:
    """The mission's first stored event of ``kind``, waited for as events arrive (the log
    reads the stream from its start, so one stored before the wait counts too)."""
    async with EventLog(nc, mission_id) as log:
        return await log.first(kind)


def _completed(script: Script, task_id: str, commit: str) -> Any:
    event = script.agent_completed(task_id)
    from msgspec.structs import replace

    return replace(event, commit_sha=commit, summary="greets by name")


async def test_read_only_token_sees_no_command_and_a_revoked_one_is_sent_to_sign_in(
    gateway_server: GatewayServer, nc: Any, script: Script, browser: Any, artefacts: Path
) -> None:
    async with gateway_server.client() as http:
        created = await http.post("/admin/tokens", json={"name": "viewer", "scopes": ["read"]})
        assert created.status_code == 201, created.text
    token = created.json()
    await EventPublisher(nc.jetstream()).publish_all(
        [
            script.requested(),
            script.prepared(),
            script.plan(),
            script.approved(),
            script.task_ready("t1"),
            _escalated(script, "t1"),
        ]
    )
    page = await signed_in(browser, gateway_server, token["token"])
    await expect(page.locator("#who")).to_contain_text("read-only")
    await expect(page.locator("#new-mission")).to_have_count(0)
    await page.locator(f'tr[data-mission="{script.mission_id}"] a').click()
    await expect(page.locator('[data-column="failed"] article[data-task="t1"]')).to_have_count(1)
    await expect(page.locator("#mission-status .pill")).to_have_text("running")
    for hidden in ("#pause", "#cancel", "#approve", "#message-text", "[data-action=retry]"):
        await expect(page.locator(hidden)).to_have_count(0)
    await expect(page.locator("#commands")).to_be_hidden()
    await page.screenshot(path=str(artefacts / "read-only-mission.png"))

    async with gateway_server.client() as http:
        revoked = await http.delete(f"/admin/tokens/{token['id']}")
        assert revoked.status_code in (200, 204), revoked.text
    # The board's next request finds the token revoked: the one a click makes, or one of
    # its own (the live stream's) that came first, and then there is no nav to click.
    with contextlib.suppress(PlaywrightTimeout):
        await page.click('#nav a[data-page="missions"]', timeout=5_000)
    await expect(page.locator("#signin")).to_be_visible()
    await expect(page.locator("#signin .notice")).to_contain_text("revoked")


async def test_writer_answers_the_planner_pauses_resumes_and_retries_a_task(
    gateway_server: GatewayServer, nc: Any, script: Script, browser: Any, artefacts: Path
) -> None:
    publisher = EventPublisher(nc.jetstream())
    await publisher.publish_all(
        [
            script.requested(),
            script.prepared(),
            PlanClarificationRequested(
                **script.meta(),  # type: ignore[arg-type]
                questions=["Which greeting: hello or hi?"],
            ),
        ]
    )
    page = await signed_in(browser, gateway_server)
    await page.goto(f"{gateway_server.base_url}/board/missions/{script.mission_id}")
    await expect(page.locator("#questions")).to_contain_text("hello or hi")
    await page.fill("#message-text", "hello, please")
    await page.click("#send-message")
    posted = await first_stored(nc, script.mission_id, MissionMessagePosted)
    assert posted.text == "hello, please"

    await publisher.publish_all(
        [script.plan(), script.approved(), script.task_ready("t1"), _escalated(script, "t1")]
    )
    await expect(page.locator("#mission-status .pill")).to_have_text("running")
    await page.click("#pause")
    await first_stored(nc, script.mission_id, MissionPaused)
    await expect(page.locator("#mission-status .pill")).to_have_text("paused")
    await page.click("#resume")
    await first_stored(nc, script.mission_id, MissionResumed)
    await expect(page.locator("#mission-status .pill")).to_have_text("running")

    await page.locator('article[data-task="t1"] [data-action=retry]').click()
    retried = await first_stored(nc, script.mission_id, TaskRetryRequested)
    assert retried.task_id == "t1"
    await expect(page.locator('[data-column="pending"] article[data-task="t1"]')).to_have_count(1)
    await page.screenshot(path=str(artefacts / "mission-commands.png"), full_page=True)


async def test_a_writer_sees_a_failed_delivery_and_has_it_pushed_again(
    gateway_server: GatewayServer, nc: Any, script: Script, browser: Any
) -> None:
    where = {"integration_branch": f"aether/{script.mission_id}", "sha": "e" * 40}
    remote = "https://git.example/app.git"
    # The repository's preparation announced the push; the mission completed.
    events = [
        script.prepared(delivery_remote=remote) if isinstance(e, RepositoryPrepared) else e
        for e in script.happy_path()
    ]
    publisher = EventPublisher(nc.jetstream())
    await publisher.publish_all(events)
    page = await signed_in(browser, gateway_server)
    await page.goto(f"{gateway_server.base_url}/board/missions/{script.mission_id}")
    delivery = page.locator("#delivery")
    await expect(delivery).to_contain_text(f"pushing aether/{script.mission_id} @ eeeeeeeeee")
    await expect(page.locator("#retry-delivery")).to_have_count(0)
    await publisher.publish(
        BranchPushFailed(
            **script.meta(),  # type: ignore[arg-type]
            **where,
            remote=remote,
            reason="the remote branch was moved",
        )
    )

    async def folded() -> bool:
        async with gateway_server.client() as http:
            mission = (await http.get(f"/missions/{script.mission_id}")).json()
        return bool((mission.get("delivery") or {}).get("status") == "failed")

    await eventually(folded, what="the failed push to be folded")
    await page.reload()
    await expect(delivery).to_contain_text("the remote branch was moved")
    await expect(delivery).to_contain_text("to https://git.example/app.git")
    await page.click("#retry-delivery")
    asked = await first_stored(nc, script.mission_id, DeliveryRetryRequested)
    assert asked.requested_by
    await expect(page.locator("#delivery")).not_to_contain_text("Push again")
    await expect(page.locator("dt", has_text="Delivery retrying")).to_have_count(1)


async def test_plan_versions_their_changes_a_budget_raise_and_a_failed_step_retry(
    gateway_server: GatewayServer, nc: Any, script: Script, browser: Any, artefacts: Path
) -> None:
    publisher = EventPublisher(nc.jetstream())
    prepared_event = script.prepared()
    await publisher.publish_all(
        [
            script.requested(budget_usd=1.0),
            prepared_event,
            script.plan(version=1, task_ids=("t1", "t2")),
            script.plan(version=2, task_ids=("t1", "t3")),
            StepFailed(
                **script.meta(),  # type: ignore[arg-type]
                service="planner",
                consumer="planner",
                failed_event_id=prepared_event.event_id,
                failed_event_type="repository_prepared",
                stream="AETHER_MISSIONS",
                stream_sequence=2,
                error="the model answered 529 five times",
                attempts=5,
            ),
        ]
    )
    page = await signed_in(browser, gateway_server)
    await page.goto(f"{gateway_server.base_url}/board/missions/{script.mission_id}")
    await expect(page.locator("#approve")).to_have_text("Approve plan v2")
    await expect(page.locator("#plan-version option")).to_have_count(2)
    changes = page.locator("#plan-diff")
    await expect(changes).to_contain_text("+ t3")
    await expect(changes).to_contain_text("− t2")
    await page.select_option("#plan-version", "1")
    await expect(page.locator('#plan-graph .node[data-task="t2"]')).to_have_count(1)
    await expect(page.locator("#plan-diff")).to_have_count(0)

    await page.fill("#budget-input", "2.5")
    await page.click("#raise-budget")
    raised = await first_stored(nc, script.mission_id, BudgetRaised)
    assert raised.budget_usd == 2.5
    await expect(page.locator("#costbar")).to_contain_text("of $2.50")

    await expect(page.locator("#steps")).to_contain_text("529 five times")
    await page.locator("#steps button").click()
    retry = await first_stored(nc, script.mission_id, StepRetryRequested)
    assert retry.failed_event_id == prepared_event.event_id
    await page.screenshot(path=str(artefacts / "plan-versions.png"), full_page=True)


async def test_form_errors_show_the_gateways_message_next_to_the_field(
    gateway_server: GatewayServer, nc: Any, browser: Any, artefacts: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    sample_repository(repo)
    with Repo(str(repo)) as r:
        r.refs[b"refs/heads/trunk"] = r.refs[b"refs/heads/main"]
        r.refs.set_symbolic_ref(b"HEAD", b"refs/heads/trunk")
    page = await signed_in(browser, gateway_server)
    await page.fill("#nm-repository", str(repo))
    await page.locator("#nm-repository").blur()
    await expect(page.locator("#nm-base-hint")).to_contain_text("trunk")
    await page.fill("#nm-requirement", "Add a greeting")
    await page.fill("#nm-budget_usd", "-3")
    await page.click("#new-mission button[type=submit]")
    await expect(page.locator("#nm-budget_usd-error")).to_contain_text("0")
    await expect(page.locator("#nm-error")).to_be_hidden()
    await page.screenshot(path=str(artefacts / "form-error.png"))

    await page.fill("#nm-budget_usd", "3")
    await page.click("#new-mission button[type=submit]")
    await expect(page.locator("#mission-head")).to_be_visible()
    mission_id = page.url.rstrip("/").rsplit("/", 1)[1]
    requested = await first_stored(nc, mission_id, MissionRequested)
    assert (requested.base_branch, requested.budget_usd) == ("trunk", 3.0)


async def test_board_resumes_after_a_gateway_restart_without_missing_or_doubling_events(
    gateway_server: GatewayServer, nc: Any, script: Script, browser: Any
) -> None:
    publisher = EventPublisher(nc.jetstream())
    await publisher.publish_all(
        [
            script.requested(),
            script.prepared(),
            script.plan(),
            script.approved(),
            script.task_ready("t1"),
        ]
    )
    page = await signed_in(browser, gateway_server)
    await page.goto(f"{gateway_server.base_url}/board/missions/{script.mission_id}/tasks/t1")
    transcript = page.locator("#transcript li")
    await expect(transcript).to_have_count(1)
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")

    await gateway_server.stop()
    await expect(page.locator("#live")).to_have_attribute("data-state", "reconnecting")
    # Published while no gateway runs: the board must get them when it reconnects.
    await publisher.publish(
        AgentStarted(
            **script.meta(),  # type: ignore[arg-type]
            task_id="t1",
            attempt=1,
            runner_id="runner-1",
            model="claude-test",
        )
    )
    await publisher.publish(entry(script, 0, "turn", text="worked while nobody watched"))
    await publisher.publish(script.agent_completed("t1"))
    await gateway_server.start()
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")
    # Telemetry is not replayed by the event stream: the page asks the transcript route.
    missed = page.locator("#agent-transcript li.entry")
    await expect(missed).to_have_count(1)
    await expect(missed.locator(".says")).to_have_text("worked while nobody watched")
    await publisher.publish(script.merged("t1"))
    await expect(page.locator("#task-status .pill")).to_have_text("merged")
    kinds = [k.strip().lower() for k in await page.locator("#transcript .kind").all_inner_texts()]
    assert kinds == [
        "task ready",
        "agent started",
        "agent completed",
        "branch merged",
    ]


async def test_board_follows_a_reset_stream_instead_of_retrying_a_refused_resume_point(
    gateway_server: GatewayServer, nc: Any, script: Script, browser: Any
) -> None:
    """A tab open across an event stream reset resumes after an id the new stream never
    reached; the gateway answers 400 naming its newest event. The board drops its resume
    point, loads the mission again from the REST API, says so, and follows the stream
    from the current point: it asks once, not for ever, and shows new events."""
    publisher = EventPublisher(nc.jetstream())
    await publisher.publish_all([script.requested(), script.prepared(), script.plan()])
    page = await signed_in(browser, gateway_server)
    refused: list[str] = []
    streams: list[str] = []

    def seen(response: Any) -> None:
        if f"/missions/{script.mission_id}/events" in response.url:
            streams.append(response.url)
            if response.status == 400:
                refused.append(response.url)

    page.on("response", seen)

    # How the reset reaches the page: the resume point it starts from (the read model's
    # position, read before the stream was reset) is past the newest event the stream has.
    async def from_before_the_reset(route: Any) -> None:
        answer = await route.fetch()
        position = await answer.json()
        await route.fulfill(response=answer, json={**position, "sequence": 10**9})

    await page.route("**/events/position", from_before_the_reset, times=1)
    await page.goto(f"{gateway_server.base_url}/board/missions/{script.mission_id}")
    await expect(page.locator("#mission-status .pill")).to_have_text("awaiting approval")
    await publisher.publish(script.approved())
    await expect(page.locator("#mission-status .pill")).to_have_text("running")
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")
    notice = page.locator("#live-notice")
    await expect(notice).to_be_visible()
    await expect(notice).to_contain_text("The event stream was reset")
    await publisher.publish(script.task_ready("t1"))
    await expect(page.locator("article[data-task=t1]")).to_have_attribute("data-status", "ready")
    assert len(refused) == 1, streams  # asked once with the refused point, then followed


def _escalated(script: Script, task_id: str) -> TaskEscalated:
    return TaskEscalated(
        **script.meta(),  # type: ignore[arg-type]
        task_id=task_id,
        attempt=1,
        reason="retries exhausted",
    )


async def test_the_pages_pure_rules_layers_plan_changes_and_status_folds(
    gateway_server: GatewayServer, browser: Any
) -> None:
    page = browser.pages[0] if browser.pages else await browser.new_page()
    await page.goto(gateway_server.base_url + "/board/")
    found = await page.evaluate(
        """async () => {
        const f = await import('/board/static/js/fold.js');
        const t = (id, deps = [], extra = {}) => ({ id, title: id, depends_on: deps, ...extra });
        return {
          layers: f.layers(
            [t('c', ['a', 'b']), t('a'), t('b', ['a']), t('x', ['y']), t('y', ['x'])],
          ),
          diff: f.planDiff(
            { tasks: [t('a'), t('b'), t('c', [], { tier: 'small' })] },
            { tasks: [t('a'), t('c', [], { tier: 'large' }), t('d')] },
          ),
          columns: ['pending', 'ready', 'running', 'completed', 'conflicted', 'merged', 'skipped',
                    'failed', 'escalated'].map(f.column),
          paused: [
            f.missionChange('paused', 'plan_approved'),
            f.missionChange('paused', 'mission_cancelled'),
            f.missionChange('completed', 'mission_paused'),
            f.missionChange('running', 'mission_paused'),
          ],
          task: f.taskChange('task_ready', { task: { id: 't9' }, attempt: 2 }),
          unrelated: f.taskChange('plan_produced', {}),
          delivery: [
            f.delivery(null),
            f.delivery({ status: 'pushed', branch: 'aether/m-1', sha: 'e'.repeat(40),
                         remote: 'https://git.example/app', already_there: true }),
            f.delivery({ status: 'failed', branch: 'aether/m-1', sha: 'e'.repeat(40),
                         remote: 'https://git.example/app', reason: 'someone moved it' }),
            f.delivery({ status: 'retrying', branch: 'aether/m-1', sha: 'e'.repeat(40),
                         remote: 'https://git.example/app', reason: 'someone moved it' }),
          ],
        };
      }"""
    )
    assert found["layers"] == [["a"], ["b"], ["c"], ["x", "y"]]
    assert [t["id"] for t in found["diff"]["added"]] == ["d"]
    assert [t["id"] for t in found["diff"]["removed"]] == ["b"]
    assert [(c["task"]["id"], c["fields"]) for c in found["diff"]["changed"]] == [("c", ["tier"])]
    assert found["columns"] == [
        "pending",
        "ready",
        "running",
        "merging",
        "merging",
        "merged",
        "merged",
        "failed",
        "failed",
    ]
    assert found["paused"] == [None, "cancelled", None, "paused"]
    assert found["task"] == {"taskId": "t9", "status": "ready", "attempt": 2, "error": None}
    assert found["unrelated"] is None
    where = "aether/m-1 @ eeeeeeeeee to https://git.example/app"
    assert found["delivery"] == [
        None,
        {
            "label": "Delivered",
            "where": where + " (already there)",
            "failed": False,
            "reason": None,
        },
        {"label": "Delivery failed", "where": where, "failed": True, "reason": "someone moved it"},
        {
            "label": "Delivery retrying",
            "where": where,
            "failed": False,
            "reason": "someone moved it",
        },
    ]


async def test_remote_repository_hint_and_each_planned_tasks_estimate(
    make_gateway: Any, nc: Any, script: Script, browser: Any, artefacts: Path, tmp_path: Path
) -> None:
    # Estimates from the gateway's settings (the scheduler's rule), not from the page.
    server = await make_gateway(estimate_usd={"small": 0.1, "standard": 0.5, "complex": 2.0})
    work = tmp_path / "work"
    base, _ = sample_repository(work)
    with Repo(str(work)) as r:
        r.refs[b"refs/heads/trunk"] = r.refs[b"refs/heads/main"]
    served = tmp_path / "served"
    served.mkdir()
    bare_copy(work, served, "upstream.git", head="trunk")
    page = await signed_in(browser, server)
    with git_daemon(served) as daemon:
        url = f"{daemon}/upstream.git"
        await page.fill("#nm-repository", url)
        await page.locator("#nm-repository").blur()
        await expect(page.locator("#nm-base-hint")).to_contain_text("trunk")
        await expect(page.locator("#nm-base_branch")).to_have_attribute("placeholder", "trunk")
    await page.screenshot(path=str(artefacts / "remote-default-branch.png"))
    # A remote that cannot be reached: the hint says why, and nothing is sent for it.
    await page.fill("#nm-repository", "git://127.0.0.1:9/none.git")
    await page.locator("#nm-repository").blur()
    await expect(page.locator("#nm-base-hint")).to_contain_text(
        "could not fetch from git://127.0.0.1:9/none.git"
    )
    await expect(page.locator("#nm-base_branch")).to_have_attribute(
        "placeholder", "the repository's default"
    )

    plan = script.plan(task_ids=("t1", "t2"))
    tiers = {"t1": "small", "t2": "complex"}
    real = msgspec.structs.replace(
        plan,
        offline=False,
        model="claude-test",
        tasks=[msgspec.structs.replace(t, tier=tiers[t.id]) for t in plan.tasks],
    )
    await EventPublisher(nc.jetstream()).publish_all(
        [script.requested(repository=url), prepared(script, work, base), real]
    )
    await page.goto(f"{server.base_url}/board/missions/{script.mission_id}")
    small = page.locator('#plan-graph .node[data-task="t1"]')
    await expect(small).to_have_attribute("data-estimate", "0.10")
    await expect(small.locator(".node-cost")).to_have_text("≈ $0.10")
    await expect(page.locator('#plan-graph .node[data-task="t2"]')).to_have_attribute(
        "data-estimate", "2.00"
    )
    await expect(page.locator("#plan-estimate")).to_have_text("estimated ≈ $2.10")
    await page.screenshot(path=str(artefacts / "plan-estimates.png"), full_page=True)


def refused(
    script: Script, attempt: int, refusal: str, files: list[str], detail: str
) -> MergeConflicted:
    return MergeConflicted(
        **script.meta(),  # type: ignore[arg-type]
        task_id="t1",
        attempt=attempt,
        files=files,
        integration_sha="a" * 40,
        detail=detail,
        refusal=refusal,
    )


async def test_the_task_page_tells_a_refused_merge_as_the_terminal_does(
    gateway_server: GatewayServer, nc: Any, script: Script, browser: Any
) -> None:
    """A merge refused by the verification command read "merge conflict in" with no
    files; each refusal now says what happened, as `aether mission logs` does."""
    publisher = EventPublisher(nc.jetstream())
    await publisher.publish_all(
        [
            script.requested(),
            script.prepared(),
            script.plan(task_ids=("t1",)),
            script.approved(),
            script.task_ready("t1"),
            refused(
                script,
                1,
                "verification_failed",
                [],
                "verification failed: `pytest -q` exited with 1 after 0.4s\n--- output ---\n"
                "1 failed",
            ),
            refused(script, 2, "unsafe_paths", ["../escape.py", ".git/hooks/x"], "paths…"),
            refused(script, 3, "missing_commit", [], f"commit {'c' * 40} is not in the repository"),
            refused(script, 4, "conflict", ["src/t1.py"], "both changed 1 file(s)"),
            refused(script, 5, "", [], "a broker before v8: the verification failed"),
        ]
    )
    page = await signed_in(browser, gateway_server)
    await page.goto(f"{gateway_server.base_url}/board/missions/{script.mission_id}/tasks/t1")
    lines = page.locator("#transcript li.t-merge_conflicted .wrap")
    await expect(lines).to_have_text(
        [
            "not merged: verification failed: `pytest -q` exited with 1 after 0.4s",
            "not merged: paths no checkout may write: ../escape.py, .git/hooks/x",
            f"not merged: commit {'c' * 40} is not in the repository",
            "merge conflict in src/t1.py",
            "not merged: a broker before v8: the verification failed",
        ]
    )


async def test_the_mission_page_tells_a_refused_merge_as_the_task_page_does(
    gateway_server: GatewayServer, nc: Any, script: Script, browser: Any
) -> None:
    """A task's card showed a refused merge's reason without "not merged:" (the read
    model's error was the broker's first line alone), read as what went wrong with the
    agent; the task page and the command line said "not merged: …"."""
    publisher = EventPublisher(nc.jetstream())
    verification = "verification failed: `pytest -q` exited with 1 after 0.4s"
    await publisher.publish_all(
        [
            script.requested(),
            script.prepared(),
            script.plan(task_ids=("t1", "t2")),
            script.approved(),
            script.task_ready("t1"),
            script.task_ready("t2"),
            refused(script, 1, "verification_failed", [], f"{verification}\n--- output ---\n1"),
        ]
    )
    page = await signed_in(browser, gateway_server)
    await page.goto(f"{gateway_server.base_url}/board/missions/{script.mission_id}")
    first = page.locator('article[data-task="t1"] .task-error')
    await expect(first).to_have_text(f"not merged: {verification}")
    # One refused while the page is open: told alike.
    later = MergeConflicted(
        **script.meta(),  # type: ignore[arg-type]
        task_id="t2",
        attempt=1,
        files=["../escape.py"],
        integration_sha="a" * 40,
        detail="paths…",
        refusal="unsafe_paths",
    )
    await publisher.publish(later)
    second = page.locator('article[data-task="t2"] .task-error')
    await expect(second).to_have_text("not merged: paths no checkout may write: ../escape.py")


async def test_the_task_page_shows_what_a_verification_stopped_by_a_cancel_printed(
    gateway_server: GatewayServer, nc: Any, script: Script, browser: Any
) -> None:
    """A verification the cancel stopped kept its output in the broker's log only: the
    withheld merge now carries it, shown as a failed verification's output is."""
    stopped = "verification stopped: `make test` was stopped after 3.2s (cancelled by alice)"
    await EventPublisher(nc.jetstream()).publish_all(
        [
            script.requested(),
            script.prepared(),
            script.plan(task_ids=("t1",)),
            script.approved(),
            script.task_ready("t1"),
            refused(
                script,
                1,
                "verification_failed",
                [],
                "verification failed: `make test` exited with 2 after 0.4s\n--- output ---\n"
                "1 failed",
            ),
            script.task_ready("t1", attempt=2),
            MergeWithheld(
                **script.meta(),  # type: ignore[arg-type]
                task_id="t1",
                attempt=2,
                commit_sha="c" * 40,
                integration_sha="a" * 40,
                reason="the mission was cancelled by alice",
                verification=f"{stopped}\n--- output ---\nchecked 3 of 5\n",
            ),
        ]
    )
    page = await signed_in(browser, gateway_server)
    await page.goto(f"{gateway_server.base_url}/board/missions/{script.mission_id}/tasks/t1")
    withheld = page.locator("#transcript li.t-merge_withheld")
    await expect(withheld.locator(".wrap").first).to_have_text(f"not merged: {stopped}")
    await withheld.locator("details.verify-output summary").click()
    await expect(withheld.locator("details.verify-output pre")).to_have_text("checked 3 of 5\n")
    # As a failed verification's is.
    failed = page.locator("#transcript li.t-merge_conflicted details.verify-output pre")
    await expect(failed).to_have_text("1 failed")


async def test_the_task_page_says_where_transcript_entries_are_missing(
    gateway_server: GatewayServer, nc: Any, script: Script, browser: Any
) -> None:
    """Entries the telemetry stream dropped before the gateway read them left no trace
    in the agent transcript card; where the runtime numbers a run without holes (not the
    built-in loop), the card says how many are missing there, and an entry that arrives
    live into a gap makes the card count again."""

    def said(attempt: int, sequence: int, runtime: str = "claude-code") -> TranscriptRecorded:
        return TranscriptRecorded(
            **script.meta(),  # type: ignore[arg-type]
            task_id="t1",
            attempt=attempt,
            runner_id="r-1",
            sequence=sequence,
            kind="turn",
            runtime=runtime,
            text=f"said {sequence}",
        )

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
    await publisher.publish_all(
        [said(1, 0), said(1, 3), said(2, 0, "builtin"), said(2, 4, "builtin")]
    )
    # Opened before the fold has the task, the page says "Task not found" for good (a
    # loaded machine can trail the publish by seconds).
    url = f"/missions/{script.mission_id}/tasks/t1/transcript"
    async with gateway_server.client() as http:

        async def stored() -> bool:
            answer = await http.get(url)
            return answer.status_code == 200 and len(answer.json()["entries"]) == 4

        await eventually(stored, what="the four entries stored")
    page = await signed_in(browser, gateway_server)
    await page.goto(f"{gateway_server.base_url}/board/missions/{script.mission_id}/tasks/t1")
    await expect(page.locator("#agent-transcript li.entry")).to_have_count(4)
    gaps = page.locator("#agent-transcript li.gap-mark")
    await expect(gaps).to_have_text(
        ["2 entries missing: the telemetry stream dropped them before the gateway stored them"]
    )
    # It sits right before the entry after the gap.
    after = page.locator("#agent-transcript li.gap-mark + li.entry")
    await expect(after).to_have_attribute("data-seq", "3")
    # One of them after all (late, not lost): one left. (Telemetry is not replayed: the
    # page must be following the stream when it comes.)
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")
    await publisher.publish(said(1, 1))
    await expect(gaps).to_have_text(
        ["1 entry missing: the telemetry stream dropped it before the gateway stored it"]
    )
    # Another one late while the page does not follow the stream (every stream ends as
    # it opens): telemetry is not replayed, and the page's catch-up asks only after the
    # last entry drawn; once the page follows the stream again it asks for the gap.
    closing = gateway_server.gateway.context.closing  # type: ignore[union-attr]
    closing.set()
    await expect(page.locator("#live")).to_have_attribute("data-state", "reconnecting")
    await publisher.publish(said(1, 2))
    async with gateway_server.client() as http:

        async def late_stored() -> bool:
            answer = await http.get(url, params={"after_attempt": 1, "after": 1})
            return [e["sequence"] for e in answer.json()["entries"]][:1] == [2]

        await eventually(late_stored, what="the late entry stored")
    closing.clear()
    await expect(gaps).to_have_count(0, timeout=30_000)
    drawn = page.locator('#agent-transcript li.entry[data-attempt="1"]')
    await expect(drawn).to_have_count(4)


async def test_a_board_page_that_loads_without_one_of_its_files_fails_by_name(
    gateway_server: GatewayServer, browser: Any
) -> None:
    # A script the board imports lost on the way: the page still "loads", blank.
    page = await browser.new_page()
    await page.route("**/static/js/dom.js", lambda route: route.abort("internetdisconnected"))
    with pytest.raises(AssertionError, match=r"/board/static/js/dom\.js: net::ERR_INTERNET_DIS"):
        await goto(page, gateway_server.base_url + "/board/")
    await page.unroute("**/static/js/dom.js")
    await goto(page, gateway_server.base_url + "/board/")
    await page.fill("#token", ADMIN_TOKEN)
    # The failed load's console line is not a script error of the board's.


async def test_the_task_page_says_how_many_entries_of_each_attempt_the_gateway_did_not_keep(
    make_gateway: Any, nc: Any, script: Script, browser: Any
) -> None:
    """An attempt publishing past the gateway's cap (``AETHER_TRANSCRIPT_MAX_ENTRIES``):
    the transcript card says, by attempt, how many entries were not kept, on opening
    and again as more arrive live (for an attempt already past the cap, and for one that
    goes past it while the page is open), and draws no live entry past the cap of an
    attempt it knows the gateway has stopped keeping."""
    cap = 5
    server = await make_gateway(transcript_max_entries=cap)

    def said(attempt: int, sequence: int) -> TranscriptRecorded:
        return TranscriptRecorded(
            **script.meta(),  # type: ignore[arg-type]
            task_id="t1",
            attempt=attempt,
            runner_id="r-1",
            sequence=sequence,
            kind="turn",
            runtime="claude-code",
            text=f"said {attempt}.{sequence}",
        )

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
    await publisher.publish_all([said(1, n) for n in range(cap + 3)])
    url = f"/missions/{script.mission_id}/tasks/t1/transcript"
    async with server.client() as http:

        async def counted() -> bool:
            return bool((await http.get(url)).json()["dropped"])

        await eventually(counted, what="the entries past the cap counted")
    page = await signed_in(browser, server)
    await page.goto(f"{server.base_url}/board/missions/{script.mission_id}/tasks/t1")
    first = page.locator('#agent-transcript li.entry[data-attempt="1"]')
    await expect(first).to_have_count(cap)
    notes = page.locator("#transcript-dropped li")
    await expect(notes).to_have_text(
        [
            "Attempt 1: 3 entries not kept by the gateway, past the most it keeps of one "
            "attempt (AETHER_TRANSCRIPT_MAX_ENTRIES); only the entries before them are stored"
        ]
    )
    # Live, without a reload: more of attempt 1 (past its cap, not drawn), and a second
    # attempt going past a cap of its own.
    await publisher.publish_all([said(1, n) for n in range(cap + 3, cap + 7)])
    await publisher.publish_all([said(2, n) for n in range(cap + 1)])
    await expect(notes).to_have_count(2)
    await expect(notes.nth(0)).to_have_attribute("data-dropped", "7")
    await expect(notes.nth(1)).to_have_text(
        "Attempt 2: 1 entry not kept by the gateway, past the most it keeps of one "
        "attempt (AETHER_TRANSCRIPT_MAX_ENTRIES); only the entries before it are stored"
    )
    await expect(notes.nth(0)).to_contain_text("Attempt 1: 7 entries not kept")
    assert await first.count() == cap
    seqs = await first.evaluate_all("items => items.map(e => +e.dataset.seq)")
    assert seqs == list(range(cap))
