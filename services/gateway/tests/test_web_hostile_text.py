"""What a prompt-injected model writes reaches the board as text, never as markup: a
task's title and description, a clarifying question, an agent's activity, transcript
entries (its text, tool name, arguments, result), its summary, an escalation's reason,
and a file name and the lines of the diff the board shows. Each carries an element that
would show up in the page had it been parsed as HTML, in a real browser (Debian's
chromium, driven by Playwright) against a real gateway on real NATS and PostgreSQL.
"""

# The browser fixtures are imported from tests.web.browser, then named as parameters.
# ruff: noqa: F811
from __future__ import annotations

from pathlib import Path
from typing import Any

from dulwich import porcelain
from dulwich.repo import Repo
from msgspec.structs import replace

from aether_events import (
    AgentProgress,
    AgentStarted,
    EventPublisher,
    PlanClarificationRequested,
    PlannedTask,
    PlanProduced,
    RepositoryPrepared,
    TaskEscalated,
    TranscriptRecorded,
    WorkspaceReady,
)
from tests.web.browser import artefacts, browser, chromium, expect  # noqa: F401 (fixtures)

from .conftest import GatewayServer, Script
from .test_web import signed_in

# No "/" in it, so that it can be a file's name too.
PROBE = '<img class="xss-probe" src=x onerror="document.title=1"><svg class="xss-probe">'
NAME = f"{PROBE}.py"


def hostile_repository(path: Path) -> tuple[str, str]:
    """A base commit and a task's commit adding a file named with markup."""
    porcelain.init(str(path))
    (path / "ok.py").write_text("x = 1\n")
    porcelain.add(str(path), [str(path / "ok.py")])
    base = porcelain.commit(str(path), b"base", author=b"t <t@t>", committer=b"t <t@t>")
    (path / NAME).write_text(f"# {PROBE}\n'</pre>{PROBE}'\n")
    porcelain.add(str(path), [str(path / NAME)])
    head = porcelain.commit(str(path), b"task", author=b"t <t@t>", committer=b"t <t@t>")
    with Repo(str(path)) as repo:
        repo.refs[b"refs/heads/main"] = base
    return base.decode(), head.decode()


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


async def test_what_a_model_writes_is_text_on_every_page_never_markup(
    gateway_server: GatewayServer,
    nc: Any,
    script: Script,
    browser: Any,
    artefacts: Path,
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    base, head = hostile_repository(repo)
    publisher = EventPublisher(nc.jetstream())
    page = await signed_in(browser, gateway_server)
    task = PlannedTask(
        id="t1",
        title=f"Title {PROBE}",
        description=f"Description {PROBE}",
        files=[NAME],
        acceptance_criteria=[f"criterion {PROBE}"],
    )
    await publisher.publish_all(
        [
            script.requested(repository=str(repo), requirement=f"Requirement {PROBE}"),
            RepositoryPrepared(
                **script.meta(),  # type: ignore[arg-type]
                repository_path=str(repo),
                base_branch="main",
                base_sha=base,
                integration_branch=f"aether/{script.mission_id}",
            ),
            PlanClarificationRequested(
                **script.meta(),  # type: ignore[arg-type]
                questions=[f"Question {PROBE}"],
            ),
            PlanProduced(
                **script.meta(),  # type: ignore[arg-type]
                version=1,
                tasks=[task],
                rationale=f"Rationale {PROBE}",
                model=f"model {PROBE}",
            ),
        ]
    )
    await page.goto(gateway_server.base_url + "/board/")
    row = page.locator(f'tr[data-mission="{script.mission_id}"]')
    await expect(row).to_contain_text("Requirement <img class=")  # cut to one line
    await row.locator("a").click()
    await expect(page.locator("#plan-graph .node")).to_have_count(1)
    await expect(page.locator("body")).to_contain_text(f"Title {PROBE}")
    await publisher.publish_all(
        [
            script.approved(),
            replace(script.task_ready("t1"), task=task),
            WorkspaceReady(
                **script.meta(),  # type: ignore[arg-type]
                task=task,
                attempt=1,
                model="claude-test",
                branch=f"aether/{script.mission_id}/t1",
                worktree_path="/tmp/none",
                base_sha=base,
            ),
            AgentStarted(
                **script.meta(),  # type: ignore[arg-type]
                task_id="t1",
                attempt=1,
                runner_id="runner-1",
                model="claude-test",
            ),
            AgentProgress(
                **script.meta(),  # type: ignore[arg-type]
                task_id="t1",
                attempt=1,
                runner_id="runner-1",
                turns=1,
                tool_calls=1,
                last_action=f"write_file {NAME}",
            ),
            entry(script, 0, "prompt", text=f"<task>{PROBE}</task>"),
            entry(script, 1, "turn", text=f"Turn {PROBE}", tool=f"tool{PROBE}"),
            entry(
                script,
                2,
                "tool_call",
                tool=f"tool{PROBE}",
                arguments=f'{{"path": "{PROBE}", "__proto__": {{"polluted": 1}}}}',
                result=f"Result {PROBE}",
            ),
            replace(script.agent_completed("t1"), commit_sha=head, summary=f"Summary {PROBE}"),
            TaskEscalated(
                **script.meta(),  # type: ignore[arg-type]
                task_id="t1",
                attempt=1,
                reason=f"Reason {PROBE}",
            ),
        ]
    )
    card = page.locator('#task-board article[data-task="t1"]')
    await expect(card).to_contain_text(f"Title {PROBE}")
    await expect(page.locator(".xss-probe")).to_have_count(0)
    await page.screenshot(path=str(artefacts / "hostile-mission.png"), full_page=True)

    await card.locator("a.task-title").click()
    entries = page.locator("#agent-transcript li.entry")
    await expect(entries).to_have_count(3)
    await expect(page.locator('#agent-transcript li[data-kind="turn"]')).to_contain_text(
        f"Turn {PROBE}"
    )
    await expect(page.locator("#agent-transcript")).to_contain_text(f"Result {PROBE}")
    await expect(page.locator(".diff-file")).to_contain_text(f"'</pre>{PROBE}'")
    await expect(page.locator("body")).to_contain_text(f"Summary {PROBE}")
    await page.screenshot(path=str(artefacts / "hostile-task.png"), full_page=True)
    # Nothing became an element, no handler ran, nothing was polluted.
    await expect(page.locator(".xss-probe")).to_have_count(0)
    assert await page.evaluate("document.querySelectorAll('img[src=x], [onerror]').length") == 0
    assert await page.title() != "1"
    assert await page.evaluate("({}).polluted === undefined")
