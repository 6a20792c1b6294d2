"""The ``aether`` command line."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aether.client import ApiError, GatewayClient, SseEvent

TERMINAL = {"mission_completed", "mission_failed", "mission_cancelled"}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        result: int = args.run(args)
    except ApiError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aether", description="Turn a software requirement into merged code."
    )
    parser.add_argument("--url", help="gateway URL (default $AETHER_URL or http://127.0.0.1:8100)")
    sub = parser.add_subparsers(title="commands")

    up = sub.add_parser("up", help="run NATS, PostgreSQL and the five services locally")
    up.add_argument("--home", type=Path, default=Path(os.environ.get("AETHER_HOME", ".aether")))
    up.add_argument("--quiet", action="store_true", help="do not echo service logs")
    up.set_defaults(run=_up)

    demo = sub.add_parser("demo", help="run a whole mission on a sample repository")
    demo.add_argument("--home", type=Path, help="where to keep the demo (default: a temp dir)")
    demo.add_argument("--verbose", action="store_true", help="echo service logs")
    demo.set_defaults(run=_demo)

    mission = sub.add_parser("mission", help="submit, list, show, watch and approve missions")
    msub = mission.add_subparsers(title="mission commands")
    submit = msub.add_parser("submit", help="submit a mission")
    submit.add_argument("requirement")
    submit.add_argument("--repo", required=True, help="path of the git repository")
    submit.add_argument("--base", default="main", help="base branch (default main)")
    submit.add_argument("--budget", type=float, help="budget in USD")
    submit.add_argument("--concurrency", type=int, default=4)
    submit.add_argument("--auto-approve", action="store_true")
    submit.add_argument("--verify", help="command that must pass on the merged tree")
    submit.add_argument("--watch", action="store_true", help="watch the mission afterwards")
    submit.set_defaults(run=_submit)
    listing = msub.add_parser("list", help="list missions")
    listing.add_argument("--status")
    listing.set_defaults(run=_list)
    show = msub.add_parser("show", help="show one mission with its plan and tasks")
    show.add_argument("mission_id")
    show.set_defaults(run=_show)
    watch = msub.add_parser("watch", help="follow a mission's events live")
    watch.add_argument("mission_id")
    watch.set_defaults(run=_watch)
    approve = msub.add_parser("approve", help="approve a mission's plan")
    approve.add_argument("mission_id")
    approve.add_argument("--version", type=int, help="plan version (default: the latest)")
    approve.set_defaults(run=_approve)
    return parser


# --- mission commands --------------------------------------------------------------


def _client(args: argparse.Namespace) -> GatewayClient:
    return GatewayClient(args.url)


def _submit(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "repository": str(Path(args.repo).resolve()) if "://" not in args.repo else args.repo,
        "requirement": args.requirement,
        "base_branch": args.base,
        "auto_approve": args.auto_approve,
        "max_concurrency": args.concurrency,
    }
    if args.budget is not None:
        body["budget_usd"] = args.budget
    if args.verify:
        body["verify_command"] = args.verify
    created = _client(args).submit(body)
    print(created["mission_id"])
    if args.watch:
        args.mission_id = created["mission_id"]
        return _watch(args)
    return 0


def _list(args: argparse.Namespace) -> int:
    for m in _client(args).list(args.status):
        requirement = _short(m.get("requirement", ""))
        print(f"{m['id']}  {m['status']:<18} {m.get('repository', '')}  {requirement}")
    return 0


def _show(args: argparse.Namespace) -> int:
    print(json.dumps(_client(args).show(args.mission_id), indent=2, default=str))
    return 0


def _approve(args: argparse.Namespace) -> int:
    _client(args).approve(args.mission_id, args.version)
    print(f"approved the plan of {args.mission_id}")
    return 0


def _watch(args: argparse.Namespace) -> int:
    last: str | None = None
    while True:
        try:
            for event in _client(args).events(args.mission_id, last_event_id=last):
                last = event.id or last
                print(describe(event), flush=True)
                if event.event in TERMINAL:
                    return 0 if event.event == "mission_completed" else 1
        except (OSError, ApiError) as error:  # reconnect from the last event seen
            if isinstance(error, ApiError) and error.status < 500:
                raise
            time.sleep(1.0)
            continue
        return 0


def _short(text: str, width: int = 60) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def describe(event: SseEvent) -> str:
    """One line per event, for people."""
    d = event.data
    kind = event.event
    task = d.get("task_id") or (d.get("task") or {}).get("id") or ""
    detail = ""
    if kind == "plan_produced":
        offline = " [OFFLINE model]" if d.get("offline") else ""
        detail = f"v{d['version']}: {len(d['tasks'])} tasks by {d.get('model')}{offline}"
    elif kind == "repository_prepared":
        detail = f"{d['integration_branch']} from {d['base_branch']}@{d['base_sha'][:10]}"
    elif kind == "task_ready":
        detail = f"attempt {d['attempt']}, wave {d['wave']}, model {d['model']}"
    elif kind == "workspace_ready":
        detail = f"{d['branch']} at {d['base_sha'][:10]}"
    elif kind == "agent_completed":
        detail = f"{d['commit_sha'][:10]} {', '.join(d.get('files_changed', []))}"
    elif kind == "branch_merged":
        detail = f"{d['merge_sha'][:10]}" + (" (fast-forward)" if d.get("fast_forward") else "")
    elif kind in ("merge_conflicted",):
        detail = "conflict in " + ", ".join(d.get("files", []))
    elif kind in ("agent_failed", "mission_failed", "plan_failed", "task_escalated"):
        detail = d.get("reason", "")
    elif kind == "mission_completed":
        usage = d.get("usage") or {}
        cost = usage.get("cost_usd")
        detail = (
            f"{d['integration_branch']} @ {d['final_sha'][:10]}, {d['tasks_merged']} tasks, "
            f"cost {'unknown' if cost is None else f'${cost:.4f}'}"
        )
    elif kind == "usage_recorded":
        usage = d.get("usage") or {}
        detail = f"{d.get('model')} in={usage.get('input_tokens')} out={usage.get('output_tokens')}"
    seq = f"#{event.id}" if event.id else ""
    return f"{seq:>6} {kind:<22} {task:<10} {detail}".rstrip()


# --- local stack -------------------------------------------------------------------


def _offline_banner() -> None:
    if not os.environ.get("ANTHROPIC_API_KEY"):
        print(
            "No ANTHROPIC_API_KEY: planner and agents use the OFFLINE model "
            "(deterministic, not a language model; for demos and tests).",
            file=sys.stderr,
        )


def _up(args: argparse.Namespace) -> int:
    from aether.stack import Stack

    _offline_banner()
    stack = Stack(home=args.home, echo_logs=None if args.quiet else sys.stdout)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
        print(
            f"\nAether is up. Gateway: {stack.gateway_url}  (NATS {stack.nats_url})\n"
            f'  aether mission submit --repo PATH "requirement" --watch\n'
            f"Logs: {stack.home / 'logs'}. Ctrl-C stops everything.\n",
            flush=True,
        )
        while not stopping:
            for name, service in list(stack.processes.items()):
                if service.process.poll() is not None:
                    print(
                        f"{name} exited with {service.process.returncode}; stopping",
                        file=sys.stderr,
                    )
                    stopping = True
            time.sleep(0.5)
    finally:
        print("stopping…", file=sys.stderr)
        stack.stop()
    return 0


DEMO_REQUIREMENT = """\
- Add src/greeting.py with a greet(name) function that returns a friendly greeting
- Add src/farewell.py with a farewell(name) function that says goodbye
- Write docs/usage.md explaining how to use greet and farewell together (after 1, 2)
"""


def _demo(args: argparse.Namespace) -> int:
    from aether.gitview import create_sample_repository, diff_stat, format_stat
    from aether.stack import Stack

    _offline_banner()
    home = (args.home or Path(tempfile.mkdtemp(prefix="aether-demo-"))).resolve()
    repo = home / "sample-repo"
    base_sha = create_sample_repository(repo)
    print(f"sample repository: {repo} (main @ {base_sha[:10]})")
    stack = Stack(
        home=home / "stack", random_ports=True, echo_logs=sys.stderr if args.verbose else None
    )
    try:
        stack.start()
        client = GatewayClient(stack.gateway_url)
        created = client.submit(
            {"repository": str(repo), "requirement": DEMO_REQUIREMENT, "max_concurrency": 4}
        )
        mission_id = created["mission_id"]
        print(f"mission {mission_id} submitted; following its events:")
        final: dict[str, Any] | None = None
        for event in client.events(mission_id):
            print(describe(event), flush=True)
            if event.event == "plan_produced":
                for task in event.data["tasks"]:
                    deps = f" (after {', '.join(task['depends_on'])})" if task["depends_on"] else ""
                    print(f"         plan: {task['id']}: {task['title']}{deps}")
                client.approve(mission_id, event.data["version"])
                print("         plan approved")
            if event.event in TERMINAL:
                final = event.data if event.event == "mission_completed" else None
                break
        if final is None:
            print("the mission did not complete", file=sys.stderr)
            return 1
        print(f"\nresult branch: {final['integration_branch']} @ {final['final_sha']}")
        print(format_stat(diff_stat(repo, base_sha, final["final_sha"])))
        print(f"\ninspect it with: git -C {repo} log --stat {final['integration_branch']}")
        return 0
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
