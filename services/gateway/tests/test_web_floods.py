"""The board under the largest answers an attempt can make it draw, in a real browser
(Debian's chromium, driven by Playwright) against a real gateway on real NATS and
PostgreSQL: a transcript flooded with entries (an attempt's credential publishes what it
likes, past the runner's own bounds) is drawn a bounded number of entries at a time, and
the task page's diff of the largest file the broker's diff lines (20,000 lines) renders
in a bounded time. The times measured are printed (``-s``)."""

# The browser fixtures are imported from tests.web.browser, then named as parameters.
# ruff: noqa: F811
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dulwich import porcelain
from dulwich.repo import Repo
from msgspec.structs import replace

from aether_events import (
    AgentStarted,
    EventPublisher,
    PlannedTask,
    PlanProduced,
    RepositoryPrepared,
    TranscriptEntries,
    TranscriptRecorded,
    WorkspaceReady,
)
from tests.web.browser import artefacts, browser, chromium, expect  # noqa: F401 (fixtures)

from .conftest import GatewayServer, Script, eventually
from .test_web import signed_in

# What the board draws at one time (``SHOWN`` in transcript.js).
SHOWN = 2000
FLOOD = SHOWN + 600


def entry(script: Script, sequence: int) -> TranscriptRecorded:
    return TranscriptRecorded(
        **script.meta(),  # type: ignore[arg-type]
        task_id="t1",
        attempt=1,
        runner_id="runner-1",
        sequence=sequence,
        kind="command",
        runtime="builtin",
        tool="run_command",
        arguments='{"command": "yes"}',
        result=f"line {sequence}\n" * 8,
        exit_code=0,
    )


def repository(path: Path, lines: int) -> tuple[str, str]:
    """A base commit and a task's commit rewriting every line of a ``lines``-line file."""
    porcelain.init(str(path))
    (path / "big.txt").write_text("".join(f"old {n}\n" for n in range(lines)))
    porcelain.add(str(path), [str(path / "big.txt")])
    base = porcelain.commit(str(path), b"base", author=b"t <t@t>", committer=b"t <t@t>")
    (path / "big.txt").write_text("".join(f"new {n}\n" for n in range(lines)))
    porcelain.add(str(path), [str(path / "big.txt")])
    head = porcelain.commit(str(path), b"task", author=b"t <t@t>", committer=b"t <t@t>")
    with Repo(str(path)) as repo:
        repo.refs[b"refs/heads/main"] = base
    return base.decode(), head.decode()


async def started_task(publisher: EventPublisher, script: Script, repo: Path, base: str) -> None:
    task = PlannedTask(id="t1", title="flooded", description="d", files=["big.txt"])
    await publisher.publish_all(
        [
            script.requested(repository=str(repo)),
            RepositoryPrepared(
                **script.meta(),  # type: ignore[arg-type]
                repository_path=str(repo),
                base_branch="main",
                base_sha=base,
                integration_branch=f"aether/{script.mission_id}",
            ),
            PlanProduced(**script.meta(), version=1, tasks=[task], rationale="r", model="m"),  # type: ignore[arg-type]
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
        ]
    )


async def test_a_flooded_transcript_is_drawn_a_bounded_number_of_entries_at_a_time(
    gateway_server: GatewayServer, nc: Any, script: Script, browser: Any, tmp_path: Path
) -> None:
    base, _ = repository(tmp_path / "repo", 3)
    publisher = EventPublisher(nc.jetstream())
    await started_task(publisher, script, tmp_path / "repo", base)
    entries = [entry(script, n) for n in range(FLOOD)]
    await publisher.publish_all(
        [
            TranscriptEntries(
                **script.meta(),  # type: ignore[arg-type]
                task_id="t1",
                attempt=1,
                runner_id="runner-1",
                entries=entries[at : at + 64],
            )
            for at in range(0, FLOOD, 64)
        ]
    )
    url = f"/missions/{script.mission_id}/tasks/t1/transcript"
    async with gateway_server.client() as http:

        async def stored() -> bool:
            # The cursor is (attempt, sequence): without the attempt, every entry of
            # attempt 1 is after (0, FLOOD - 2) and the first one folded would do.
            page = (await http.get(url, params={"after_attempt": 1, "after": FLOOD - 2})).json()
            return bool(page.get("entries"))

        await eventually(stored, what="the flood stored", timeout=120)
    page = await signed_in(browser, gateway_server)
    drawn = page.locator("#agent-transcript li.entry")
    began = time.monotonic()
    await page.goto(f"{gateway_server.base_url}/board/missions/{script.mission_id}/tasks/t1")
    await expect(drawn).to_have_count(SHOWN, timeout=60_000)
    print(f"\n{SHOWN} of {FLOOD} transcript entries drawn in {time.monotonic() - began:.2f} s")
    # The rest waits for the button, whatever the page's periodic catch-up does.
    more = page.locator("#transcript-more")
    await expect(more).to_be_visible()
    await page.wait_for_timeout(6000)  # past the page's 5 s catch-up
    assert await drawn.count() == SHOWN
    await more.click()
    await expect(drawn).to_have_count(FLOOD, timeout=60_000)
    await expect(more).to_be_hidden()
    last = page.locator("#agent-transcript li.entry").last
    assert await last.get_attribute("data-seq") == str(FLOOD - 1)
    # Drawn once each, in order.
    sequences = await page.evaluate(
        "[...document.querySelectorAll('#agent-transcript li.entry')].map(e => +e.dataset.seq)"
    )
    assert sequences == list(range(FLOOD))


def widest_repository(path: Path) -> tuple[str, str]:
    """A base commit and a task's commit rewriting ten files of 990 lines each, every
    line 190 characters of words the board highlights: about 20,000 lines of diff, 1,981 a
    file, about 3.8 million characters, at the bounds of what the broker lines up."""
    porcelain.init(str(path))
    names = [f"f{n}.py" for n in range(10)]
    words = "return 'x' if not None else 42  # " * 5

    def write(tag: str) -> None:
        for name in names:
            text = "".join(f"{tag} {n} {words}"[:190] + "\n" for n in range(990))
            (path / name).write_text(text)

    write("old")
    porcelain.add(str(path), [str(path / name) for name in names])
    base = porcelain.commit(str(path), b"base", author=b"t <t@t>", committer=b"t <t@t>")
    write("new")
    porcelain.add(str(path), [str(path / name) for name in names])
    head = porcelain.commit(str(path), b"task", author=b"t <t@t>", committer=b"t <t@t>")
    with Repo(str(path)) as repo:
        repo.refs[b"refs/heads/main"] = base
    return base.decode(), head.decode()


async def test_the_largest_diff_the_broker_lines_renders_in_a_bounded_time(
    gateway_server: GatewayServer, nc: Any, script: Script, browser: Any, tmp_path: Path
) -> None:
    base, head = widest_repository(tmp_path / "repo")
    publisher = EventPublisher(nc.jetstream())
    await started_task(publisher, script, tmp_path / "repo", base)
    await publisher.publish(replace(script.agent_completed("t1"), commit_sha=head))
    page = await signed_in(browser, gateway_server)
    began = time.monotonic()
    await page.goto(f"{gateway_server.base_url}/board/missions/{script.mission_id}/tasks/t1")
    await expect(page.locator(".diff-file")).to_have_count(10, timeout=60_000)
    await expect(page.locator(".diff-file").last).to_contain_text("new 989 ", timeout=60_000)
    took = time.monotonic() - began
    rows = await page.locator("table.diff tr").count()
    # Responsive: a script answers at once once it is drawn.
    answered = time.monotonic()
    assert await page.evaluate("1 + 1") == 2
    print(
        f"\n{rows} diff rows drawn in {took:.2f} s"
        f" (then answered in {time.monotonic() - answered:.3f} s)"
    )
    assert took < 30, took
