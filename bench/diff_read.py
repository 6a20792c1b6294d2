"""What asking the git broker for a task's diff costs over reading it in process.

Builds a repository whose task commit changes F files (default 200, 40 lines each, one
binary), then times the diff computed in process (what the gateway did when it read the
repository itself) and asked of the broker's read API over HTTP (its real code under
uvicorn, with the read token), R times each, alternating (default 30), and prints the
medians and their ratio.

    uv run python bench/diff_read.py [--files 200] [--rounds 30]

A figure, not a test: it prints numbers and never fails on them.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from dulwich import porcelain
from dulwich.repo import Repo

from aether.infra import free_port
from aether_git_broker.adapters.diff import commit_diff
from aether_git_broker.adapters.readapi import ReadApi
from aether_git_broker.adapters.remote import Remotes

TOKEN = "bench-read-token-0123456789"


def repository(path: Path, files: int) -> tuple[str, str]:
    porcelain.init(str(path))
    names = [f"src/m{i}.py" for i in range(files)]
    (path / "src").mkdir()
    for name in names:
        (path / name).write_text("".join(f"value_{j} = {j}\n" for j in range(40)))
    porcelain.add(str(path), [str(path / n) for n in names])
    base = porcelain.commit(str(path), b"base", author=b"b <b@b>", committer=b"b <b@b>")
    for name in names:
        (path / name).write_text("".join(f"value_{j} = {j * 2}\n" for j in range(40)))
    (path / "logo.png").write_bytes(b"\x89PNG\0" * 100)
    porcelain.add(str(path), [str(path / n) for n in [*names, "logo.png"]])
    head = porcelain.commit(str(path), b"task", author=b"b <b@b>", committer=b"b <b@b>")
    return base.decode(), head.decode()


def serve(data: Path) -> tuple[uvicorn.Server, str]:
    routes = ReadApi(TOKEN, (), Remotes(str(data))).routes()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await routes[scope["path"]](scope, receive, send)

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, port=port, lifespan="off", log_config=None, access_log=False)
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server, f"http://127.0.0.1:{port}"


def medians_ms(runs: list[Any], rounds: int) -> list[float]:
    """Each run's median time; the runs alternate round by round, so a busy moment of
    the machine weighs on each alike."""
    for run in runs:
        run()  # warm up
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds):
        for run, taken in zip(runs, times, strict=True):
            began = time.perf_counter()
            run()
            taken.append(time.perf_counter() - began)
    return [statistics.median(taken) * 1000 for taken in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aether-bench-diff-") as tmp:
        repo = Path(tmp) / "repo"
        base, head = repository(repo, args.files)
        server, url = serve(Path(tmp) / "data")

        def in_process() -> None:
            with Repo(str(repo)) as r:
                commit_diff(r, base, head)

        query = {"repository": str(repo), "base": base, "head": head}
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {TOKEN}"}) as http:

            def through_broker() -> None:
                answer = http.get("/repository/diff", params=query)
                answer.raise_for_status()

            size = len(http.get("/repository/diff", params=query).content)
            local, remote = medians_ms([in_process, through_broker], args.rounds)
        server.should_exit = True
    kib = size / 1024
    print(f"diff of {args.files + 1} files ({kib:.0f} KiB of JSON), median of {args.rounds}")
    print(f"  in process      {local:8.1f} ms")
    print(f"  via the broker  {remote:8.1f} ms  (x{remote / local:.2f})")


if __name__ == "__main__":
    main()
