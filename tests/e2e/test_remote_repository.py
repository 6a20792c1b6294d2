"""A mission on a remote repository (served by a real ``git daemon``) through all five
services: the gateway names its default branch, shows each planned task's estimate, and
serves every task's diff from the git broker's clone, as does ``aether mission diff``."""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path

import httpx
import nats
import pytest
from dulwich.repo import Repo

from aether.cli import main
from aether.stack import Stack
from aether_events import PlanProduced
from aether_runtime import tls
from tests.gitdaemon import bare_copy, git_daemon
from tests.support import MissionLog

pytestmark = pytest.mark.e2e


def cli(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(list(argv)) == 0
    return out.getvalue()


async def test_a_remote_repositorys_branch_estimates_and_diffs_come_through_the_broker(
    running: Stack, repo: Path, tmp_path: Path
) -> None:
    with Repo(str(repo)) as r:
        r.refs[b"refs/heads/trunk"] = r.refs[b"refs/heads/main"]
    served = tmp_path / "served"
    served.mkdir()
    bare_copy(repo, served, "upstream.git", head="trunk")
    with git_daemon(served) as daemon:
        url = f"{daemon}/upstream.git"
        async with httpx.AsyncClient(
            verify=tls.shared(),
            base_url=running.gateway_url,
            timeout=30,
            headers=running.auth_headers,
        ) as http:
            branch = await http.get("/repositories/default-branch", params={"repository": url})
            assert branch.status_code == 200, branch.text
            assert branch.json()["default_branch"] == "trunk"

            created = await http.post(
                "/missions", json={"repository": url, "requirement": "alpha, beta, then both"}
            )
            assert created.status_code == 202, created.text
            mission_id = created.json()["mission_id"]
            nc = await nats.connect(running.nats_url)
            log = await MissionLog(nc, mission_id).start()
            try:
                await log.wait_for(lambda log: bool(log.of_type(PlanProduced)), timeout=90)
                for _ in range(100):
                    shown = (await http.get(f"/missions/{mission_id}")).json()
                    if shown.get("plan_estimates"):
                        break
                    await asyncio.sleep(0.1)
                # The plan's tiers (small, standard, standard) at the default estimates.
                (estimate,) = shown["plan_estimates"]
                assert estimate["tasks"] == {"a": 0.05, "b": 0.4, "c": 0.4}
                assert estimate["total_usd"] == pytest.approx(0.85)
                for _ in range(100):
                    approved = await http.post(
                        f"/missions/{mission_id}/plan/approve", json={"version": 1}
                    )
                    if approved.status_code != 409:
                        break
                    await asyncio.sleep(0.1)
                assert approved.status_code == 202, approved.text
                await log.completion(timeout=180)
            finally:
                await log.stop()
                await nc.close()

            async def diff_of(task_id: str) -> httpx.Response:
                for _ in range(100):
                    answer = await http.get(f"/missions/{mission_id}/tasks/{task_id}/diff")
                    if "not committed" not in answer.text:
                        return answer
                    await asyncio.sleep(0.1)
                return answer

            found = await diff_of("c")
        assert found.status_code == 200, found.text
        (changed,) = found.json()["files"]
        assert (changed["path"], changed["lines"][1:]) == ("c.txt", ["+alpha", "+beta"])

    # The command line asks the gateway too: the repository is no directory here.
    text = await asyncio.to_thread(
        cli,
        "mission",
        "diff",
        mission_id,
        "a",
        "--url",
        running.gateway_url,
        "--token",
        running.admin_token,
    )
    assert "+++ b/a.txt" in text and "+alpha" in text
    stat = await asyncio.to_thread(
        cli,
        "mission",
        "diff",
        mission_id,
        "b",
        "--stat",
        "--url",
        running.gateway_url,
        "--token",
        running.admin_token,
    )
    assert "b.txt" in stat and "1 file changed, 1 insertion(+), 0 deletions(-)" in stat
