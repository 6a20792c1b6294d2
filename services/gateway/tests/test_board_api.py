"""The queries the web board adds to the API, and the board's own pages and assets."""

from __future__ import annotations

from pathlib import Path

from dulwich import porcelain
from dulwich.repo import Repo
from msgspec.structs import replace

from aether_events import EventPublisher, new_mission_id
from aether_gateway.web import static_directory
from aether_git_broker.sources import RemoteSource, parse_repository
from tests.gitdaemon import bare_copy, git_daemon

from .conftest import BrokerReadApi, Script, eventually


def two_commits(path: Path) -> tuple[str, str]:
    porcelain.init(str(path))
    (path / "a.txt").write_text("one\ntwo\n")
    porcelain.add(str(path), [str(path / "a.txt")])
    base = porcelain.commit(str(path), b"base", author=b"t <t@t>", committer=b"t <t@t>")
    (path / "a.txt").write_text("one\n2\n")
    (path / "bin.dat").write_bytes(b"\0\1\2")
    porcelain.add(str(path), [str(path / "a.txt"), str(path / "bin.dat")])
    head = porcelain.commit(str(path), b"task", author=b"t <t@t>", committer=b"t <t@t>")
    return base.decode(), head.decode()


async def test_position_follows_the_read_model(http, nc, script: Script):
    before = (await http.get("/events/position")).json()["sequence"]
    acks = await EventPublisher(nc.jetstream()).publish_all(script.happy_path())

    async def folded():
        position = (await http.get("/events/position")).json()["sequence"]
        return position if position >= acks[-1].seq else None

    assert await eventually(folded, what="the read model folding") >= acks[-1].seq > before


async def test_task_diff_is_read_from_the_local_repository(http, nc, script: Script, tmp_path):
    base, head = two_commits(tmp_path / "repo")
    events = [
        script.requested(repository=str(tmp_path / "repo")),
        replace(script.prepared(), base_sha=base),
        script.plan(task_ids=("t1",)),
        script.approved(),
        script.task_ready("t1"),
    ]
    publisher = EventPublisher(nc.jetstream())
    await publisher.publish_all(events)
    url = f"/missions/{script.mission_id}/tasks/t1/diff"

    async def task_known():
        answer = await http.get(f"/missions/{script.mission_id}/tasks/t1")
        return answer if answer.status_code == 200 else None

    await eventually(task_known, what="the task")
    missing = await http.get(url)
    assert missing.status_code == 404
    assert "not committed" in missing.text

    await publisher.publish(replace(script.agent_completed("t1"), commit_sha=head))

    async def diff():
        answer = await http.get(url)
        return answer.json() if answer.status_code == 200 else None

    found = await eventually(diff, what="the diff")
    assert (found["base_sha"], found["head_sha"]) == (base, head)
    by_path = {f["path"]: f for f in found["files"]}
    assert by_path["a.txt"]["lines"][1:] == [" one", "-two", "+2"]
    assert (by_path["a.txt"]["added"], by_path["a.txt"]["removed"]) == (1, 1)
    assert by_path["bin.dat"]["binary"] is True
    assert (found["added"], found["removed"]) == (1, 1)


def served_remotely(tmp_path: Path, head: str | None = None) -> tuple[Path, str]:
    """A repository with two commits, as a bare copy served by ``git daemon``."""
    base, tip = two_commits(tmp_path / "work")
    if head is not None:
        with Repo(str(tmp_path / "work")) as work:
            work.refs[f"refs/heads/{head}".encode()] = work.head()
    served = tmp_path / "served"
    served.mkdir()
    bare_copy(tmp_path / "work", served, "upstream.git", head=head)
    return served, f"{base} {tip}"


async def test_task_diff_of_a_remote_repository_is_read_through_the_broker(
    http, nc, script: Script, tmp_path, broker_read_api: BrokerReadApi
):
    served, shas = served_remotely(tmp_path)
    base, head = shas.split()
    with git_daemon(served) as daemon:
        url = f"{daemon}/upstream.git"
        await EventPublisher(nc.jetstream()).publish_all(
            [
                script.requested(repository=url),
                replace(script.prepared(), base_sha=base),
                script.plan(task_ids=("t1",)),
                script.approved(),
                script.task_ready("t1"),
                replace(script.agent_completed("t1"), commit_sha=head),
            ]
        )
        diff_url = f"/missions/{script.mission_id}/tasks/t1/diff"

        async def answered():
            answer = await http.get(diff_url)
            return answer if "not committed" not in answer.text else None

        # Before the broker has cloned it, it has nothing to read from: a 404 saying so.
        missing = await eventually(answered, what="the diff's answer")
        assert missing.status_code == 404
        assert "holds no clone" in missing.text
        # The broker's own fetch, over git's protocol, as when it prepares the mission.
        source = parse_repository(url)
        assert isinstance(source, RemoteSource)
        broker_read_api.remotes.fetch(source, "master")
        found = await http.get(diff_url)
    assert found.status_code == 200, found.text
    by_path = {f["path"]: f for f in found.json()["files"]}
    assert by_path["a.txt"]["lines"][1:] == [" one", "-two", "+2"]
    assert by_path["bin.dat"]["binary"] is True
    assert found.json()["mission_id"] == script.mission_id


async def test_without_the_broker_diffs_are_unavailable_with_the_reason(
    make_gateway, nc, script: Script
):
    server = await make_gateway(broker_url="")
    await EventPublisher(nc.jetstream()).publish_all(
        [
            script.requested(repository="/nowhere"),
            script.prepared(),
            script.plan(task_ids=("t1",)),
            script.approved(),
            script.task_ready("t1"),
            script.agent_completed("t1"),
        ]
    )
    async with server.client() as client:

        async def diff():
            answer = await client.get(f"/missions/{script.mission_id}/tasks/t1/diff")
            return answer if answer.status_code == 503 else None

        answer = await eventually(diff, what="the diff's answer")
        assert "AETHER_GATEWAY_BROKER_URL" in answer.json()["error"]
        branch = await client.get("/repositories/default-branch", params={"repository": "/r"})
        assert branch.status_code == 503


async def test_board_pages_and_assets_are_served_without_a_token(gateway_server):
    async with gateway_server.client(token=None, follow_redirects=False) as anonymous:
        root = await anonymous.get("/")
        assert root.status_code in (301, 302, 307, 308)
        assert root.headers["location"] == "/board/"
        for path in ("/board/", "/board/missions/m-1/tasks/t1", "/board/usage"):
            page = await anonymous.get(path)
            assert page.status_code == 200, path
            assert page.headers["content-type"].startswith("text/html")
            assert "script-src 'self'" in page.headers["content-security-policy"]
            assert '<script type="module" src="/board/static/js/main.js">' in page.text
        script = await anonymous.get("/board/static/js/main.js")
        assert script.status_code == 200
        assert script.text == (static_directory() / "js" / "main.js").read_text()
        assert (await anonymous.get("/board/static/nope.js")).status_code == 404
        # A name longer than the file system looks up is no such file either.
        for name in ("a" * 5000 + ".js", "a/" * 3000 + "x.js"):
            missing = await anonymous.get(f"/board/static/{name}")
            assert missing.status_code == 404, missing.text
            assert missing.json()["error"] == "no such file of the board"
        # Data still needs a token.
        assert (await anonymous.get("/missions")).status_code == 401
        assert (await anonymous.get("/events/position")).status_code == 401


def test_the_board_fetches_nothing_from_another_origin():
    for path in static_directory().rglob("*"):
        if path.suffix in (".js", ".css", ".html"):
            text = path.read_text()
            assert "http://" not in text.replace("http://www.w3.org/2000/svg", ""), path
            assert "https://" not in text, path
            assert "innerHTML" not in text, path


async def test_progress_counts_tasks_of_several_missions_in_one_call(http, nc):
    first, second, idle = Script(new_mission_id()), Script(new_mission_id()), new_mission_id()
    publisher = EventPublisher(nc.jetstream())
    await publisher.publish_all(first.happy_path())
    await publisher.publish_all(
        [
            second.requested(),
            second.prepared(),
            second.plan(task_ids=("a", "b", "c")),
            second.approved(),
            second.task_ready("a"),
        ]
    )

    async def counts():
        answer = await http.get(
            "/tasks/progress",
            params=[
                ("mission_id", first.mission_id),
                ("mission_id", f"{second.mission_id},{idle}"),
            ],
        )
        assert answer.status_code == 200, answer.text
        found = answer.json()["missions"]
        return found if len(found) == 2 and found[first.mission_id]["merged"] == 1 else None

    found = await eventually(counts, what="both missions' tasks")
    assert found[first.mission_id] == {"total": 1, "merged": 1, "running": 0, "failed": 0}
    assert found[second.mission_id]["total"] == 3
    assert found[second.mission_id]["merged"] == 0
    assert idle not in found
    too_many = await http.get("/tasks/progress", params={"mission_id": ",".join(["m-x"] * 201)})
    assert too_many.status_code == 400


async def test_default_branch_of_a_local_repository_for_writers_only(
    http, gateway_server, tmp_path
):
    two_commits(tmp_path / "repo")
    with Repo(str(tmp_path / "repo")) as repo:
        repo.refs[b"refs/heads/trunk"] = repo.head()
        repo.refs.set_symbolic_ref(b"HEAD", b"refs/heads/trunk")
    url = "/repositories/default-branch"
    found = await http.get(url, params={"repository": str(tmp_path / "repo")})
    assert found.status_code == 200, found.text
    assert found.json()["default_branch"] == "trunk"
    not_a_repository = await http.get(url, params={"repository": str(tmp_path)})
    assert not_a_repository.status_code == 404
    assert "not a git repository" in not_a_repository.json()["detail"]["reason"]
    relative = await http.get(url, params={"repository": "relative/path"})
    assert relative.status_code == 400
    assert "not an absolute path" in relative.json()["error"]
    unreachable = await http.get(url, params={"repository": "git://127.0.0.1:9/r.git"})
    assert unreachable.status_code == 502
    assert "could not fetch from git://127.0.0.1:9/r.git" in unreachable.json()["error"]
    served, _ = served_remotely(tmp_path, head="trunk")
    with git_daemon(served) as daemon:
        remote = await http.get(url, params={"repository": f"{daemon}/upstream.git"})
    assert remote.status_code == 200, remote.text
    assert remote.json()["default_branch"] == "trunk"
    created = await http.post("/admin/tokens", json={"name": "viewer", "scopes": ["read"]})
    async with gateway_server.client(token=created.json()["token"]) as reader:
        refused = await reader.get(url, params={"repository": str(tmp_path / "repo")})
        assert refused.status_code == 403


async def test_each_plan_version_has_an_estimate_per_task_from_its_tier(
    make_gateway, nc, script: Script
):
    server = await make_gateway(estimate_usd={"small": 0.1, "standard": 0.5, "complex": 2.0})
    offline = script.plan(version=1, task_ids=("t1", "t2"))
    tiers = {"t1": "small", "t2": "complex", "t3": "standard"}
    real = replace(
        script.plan(version=2, task_ids=("t1", "t2", "t3")),
        offline=False,
        model="claude-test",
    )
    real = replace(real, tasks=[replace(t, tier=tiers[t.id]) for t in real.tasks])
    await EventPublisher(nc.jetstream()).publish_all(
        [script.requested(), script.prepared(), offline, real]
    )
    async with server.client() as client:

        async def both_plans():
            answer = await client.get(f"/missions/{script.mission_id}")
            found = answer.json() if answer.status_code == 200 else {}
            return found if len(found.get("plans", [])) == 2 else None

        found = await eventually(both_plans, what="both plan versions")
        schema = (await client.get("/schema/openapi.json")).json()
    by_version = {e["version"]: e for e in found["plan_estimates"]}
    # The offline model is free: its plan is estimated at nothing.
    assert by_version[1] == {"version": 1, "tasks": {"t1": 0.0, "t2": 0.0}, "total_usd": 0.0}
    assert by_version[2]["tasks"] == {"t1": 0.1, "t2": 2.0, "t3": 0.5}
    assert by_version[2]["total_usd"] == 2.6
    assert "plan_estimates" in schema["components"]["schemas"]["MissionDetail"]["properties"]


async def test_a_missions_diff_is_its_branch_against_its_base_as_tasks_merge(
    http, nc, script: Script, tmp_path, gateway_server, capsys
):
    """`mission diff` took a task only: the whole change was `git diff` of the branch."""
    import asyncio

    from aether.cli import main

    from .conftest import ADMIN_TOKEN

    repo = tmp_path / "repo"
    base, head = two_commits(repo)
    publisher = EventPublisher(nc.jetstream())
    await publisher.publish_all(
        [
            script.requested(repository=str(repo)),
            replace(script.prepared(), base_sha=base),
            script.plan(task_ids=("t1",)),
            script.approved(),
            script.task_ready("t1"),
            replace(script.agent_completed("t1"), commit_sha=head),
        ]
    )
    url = f"/missions/{script.mission_id}/diff"

    async def cli(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        args = ["--url", gateway_server.base_url, "--token", ADMIN_TOKEN, *argv]
        code = await asyncio.to_thread(main, args)
        return code, *capsys.readouterr()

    async def running():
        answer = await http.get(f"/missions/{script.mission_id}/tasks/t1")
        return answer.status_code == 200 and answer.json()["status"] == "completed"

    await eventually(running, what="the task's commit")
    nothing = await http.get(url)
    assert nothing.status_code == 404
    assert nothing.json()["detail"] == {"reason": "no task has been merged yet"}
    code, out, err = await cli("mission", "diff", script.mission_id)
    assert (code, out) == (1, "")
    assert err.startswith(f"error: nothing has been merged into {script.mission_id}'s branch yet")

    # Merged: the branch's head is the merge's.
    await publisher.publish(replace(script.merged("t1"), merge_sha=head))

    async def merged():
        answer = await http.get(url)
        return answer.json() if answer.status_code == 200 else None

    found = await eventually(merged, what="the mission's diff")
    assert (found["base_sha"], found["head_sha"]) == (base, head)
    assert found["integration_branch"] == f"aether/{script.mission_id}"
    by_path = {f["path"]: f for f in found["files"]}
    assert by_path["a.txt"]["lines"][1:] == [" one", "-two", "+2"]
    assert by_path["bin.dat"]["binary"] is True
    code, out, err = await cli("mission", "diff", script.mission_id, "--stat")
    assert code == 0, err
    assert "a.txt" in out and "bin.dat" in out
    code, out, err = await cli("mission", "diff", script.mission_id)
    assert code == 0, err
    assert "-two\n+2" in out
    # A read token may read it; the route is documented.
    schema = (await http.get("/schema/openapi.json")).json()
    assert "/missions/{mission_id}/diff" in schema["paths"]
