"""Human output of the command line: one line per event, missions, tasks, tokens."""

from __future__ import annotations

from typing import Any

from aether.client import SseEvent


def short(text: str, width: int = 60) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def counted(number: int, noun: str) -> str:
    """``1 task``, ``2 tasks``: a count as people write it (nouns taking a plain s)."""
    return f"{number} {noun}" + ("" if number == 1 else "s")


def wave_number(wave: int) -> int:
    """A wave as people count it, from 1 (as ``show``'s graph and the web board do); the
    events number them from 0."""
    return wave + 1


def money(value: float | None, complete: bool = True) -> str:
    """A cost; ``+`` marks a lower bound (some call's price was unknown)."""
    if value is None:
        return "unknown"
    return f"${value:.4f}" + ("" if complete else "+")


def task_cost(value: float | None, complete: bool = True) -> str:
    """A task's or a board's cost as ``money`` gives it, or ``-`` before anything was spent
    (a task not yet worked)."""
    return "-" if value is None and complete else money(value, complete)


def mission_cost(m: dict[str, Any]) -> str:
    """A mission's cost: $0 before any model call (the gateway has no figure yet), unknown
    only when a call's price is."""
    complete = m.get("cost_complete", True)
    value = m.get("cost_usd")
    return money(0.0 if value is None and complete else value, complete)


def describe(event: SseEvent) -> str:
    """One line per event, for people."""
    d = event.data
    kind = event.event
    task = d.get("task_id") or (d.get("task") or {}).get("id") or ""
    detail = ""
    if kind == "plan_produced":
        offline = " [OFFLINE model]" if d.get("offline") else ""
        detail = f"v{d['version']}: {counted(len(d['tasks']), 'task')} by {d.get('model')}{offline}"
    elif kind == "repository_prepared":
        detail = f"{d['integration_branch']} from {d['base_branch']}@{d['base_sha'][:10]}"
    elif kind == "task_ready":
        detail = f"attempt {d['attempt']}, wave {wave_number(d.get('wave', 0))}, model {d['model']}"
    elif kind == "workspace_ready":
        detail = f"{d['branch']} at {d['base_sha'][:10]}"
    elif kind == "agent_completed":
        detail = f"{d['commit_sha'][:10]} {', '.join(d.get('files_changed', []))}"
    elif kind == "branch_merged":
        detail = f"{d['merge_sha'][:10]}" + (" (fast-forward)" if d.get("fast_forward") else "")
        detail += " (resolution of a conflict)" if d.get("resolution") else ""
    elif kind == "merge_conflicted":
        detail = merge_refused(d)
    elif kind == "merge_withheld":
        detail = f"{str(d.get('commit_sha', ''))[:10]} {merge_withheld(d)}"
    elif kind in ("agent_failed", "mission_failed", "plan_failed", "task_escalated"):
        detail = d.get("reason", "")
    elif kind in ("mission_paused", "mission_cancelled", "task_skipped"):
        detail = d.get("reason", "") or (f"by {d['requested_by']}" if d.get("requested_by") else "")
    elif kind == "mission_message_posted":
        detail = f"{d.get('author') or 'someone'}: {short(d.get('text', ''))}"
    elif kind == "plan_clarification_requested":
        detail = " / ".join(d.get("questions", []))
    elif kind == "mission_answered":
        detail = short(d.get("answer", ""))
    elif kind in ("budget_warning", "budget_exceeded"):
        detail = f"{d.get('scope')}: ${d['spent_usd']:.4f} of ${d['budget_usd']:.2f}"
    elif kind == "budget_raised":
        detail = f"to ${d['budget_usd']:.2f}"
    elif kind == "wave_started":
        detail = f"wave {wave_number(d['wave'])}: {', '.join(d.get('task_ids', []))}"
    elif kind == "wave_completed":
        detail = f"wave {wave_number(d['wave'])}"
    elif kind in ("task_retried", "task_timed_out"):
        detail = f"attempt {d['attempt']}" + (f": {d['reason']}" if d.get("reason") else "")
    elif kind == "agent_progress":
        detail = f"turn {d.get('turns', 0)}: {d.get('last_action', '')}"
    elif kind == "mission_completed":
        usage = d.get("usage") or {}
        cost = money(usage.get("cost_usd"), usage.get("cost_complete", True))
        detail = (
            f"{d['integration_branch']} @ {d['final_sha'][:10]}, "
            f"{counted(d['tasks_merged'], 'task')}, "
            f"cost {cost}"
        )
    elif kind == "branch_pushed":
        there = " (already there)" if d.get("already_there") else ""
        detail = f"{d['integration_branch']} @ {d['sha'][:10]} to {d['remote']}{there}"
    elif kind == "branch_push_failed":
        detail = f"to {d['remote']}: {d['reason']}"
    elif kind == "usage_recorded":
        usage = d.get("usage") or {}
        detail = f"{d.get('model')} in={usage.get('input_tokens')} out={usage.get('output_tokens')}"
    seq = f"#{event.id}" if event.id else ""
    return f"{seq:>6} {kind:<22} {task:<10} {detail}".rstrip()


def merge_refused(d: dict[str, Any]) -> str:
    """Why the git broker did not merge an attempt (a ``merge_conflicted`` event). Only a
    ``conflict`` is one: a failed verification, paths no checkout may write, conflict
    markers or a missing commit say what happened in ``detail`` (a broker before v8 sent
    no ``refusal``, and files only with a conflict)."""
    files = ", ".join(d.get("files") or [])
    refusal = d.get("refusal") or ""
    if refusal == "conflict" or (not refusal and files):
        return f"conflict in {files}" if files else "conflict"
    if refusal == "unsafe_paths":
        return f"not merged: paths no checkout may write: {files}"
    # The first line: a verification's output follows it, too long for one line.
    lines = [line for line in str(d.get("detail") or "").splitlines() if line.strip()]
    reason = lines[0] if lines else refusal or "no reason given"
    return f"not merged: {short(reason, 120)}"


def merge_withheld(d: dict[str, Any]) -> str:
    """Why the git broker kept an attempt out (a ``merge_withheld`` event: its mission was
    cancelled first). A verification the cancel stopped is told as a failed one is (its
    first line; its output is in the event's ``verification``)."""
    lines = [line for line in str(d.get("verification") or "").splitlines() if line.strip()]
    return f"not merged: {short(lines[0] if lines else str(d.get('reason') or ''), 120)}"


def mission_lines(missions: list[dict[str, Any]]) -> list[str]:
    """``aether mission list``: a header, then a line per mission."""
    if not missions:
        return []
    header = _mission_columns("mission", "status", "created", "cost", "repository", "requirement")
    return [header] + [mission_line(m) for m in missions]


def mission_line(m: dict[str, Any]) -> str:
    created = str(m.get("created_at", ""))[:19].replace("T", " ")
    cost = mission_cost(m)
    return _mission_columns(
        m["id"],
        m["status"],
        created,
        cost,
        short(m.get("repository", ""), 30),
        short(m.get("requirement", ""), 50),
    )


def _mission_columns(
    mission: str, status: str, created: str, cost: str, repository: str, requirement: str
) -> str:
    return f"{mission:<18}  {status:<17} {created:<19}  {cost:>10}  {repository:<30}  {requirement}"


# What the watcher can do when the mission waits on a person, by its status as people
# read it; the board, the feed's stderr and `show` say the same.
HINTS = {
    "awaiting approval": (
        "approve with `aether mission approve {id}`, or ask for changes with "
        '`aether mission message {id} "…"`'
    ),
    "awaiting input": 'the planner has questions: answer with `aether mission message {id} "…"`',
    "paused": "resume with `aether mission resume {id}`",
    "plan failed": "see why with `aether mission show {id}`",
    "failed": "see why with `aether mission show {id}`",
}


def escalated_hint(mission_id: str, task_id: str) -> str:
    """What to run about a task that failed all its tries."""
    return (
        f"task {task_id} is escalated: `aether mission retry {mission_id} {task_id}` "
        f"(or `aether mission skip {mission_id} {task_id}`)"
    )


def next_steps(m: dict[str, Any]) -> list[str]:
    """`show`'s "next" lines: what the mission waits on a person for, and each escalated
    task of a mission not ended."""
    state = str(m.get("status", "")).replace("_", " ")
    steps = []
    if state in ("awaiting approval", "awaiting input", "paused"):
        steps.append(HINTS[state].format(id=m["id"]))
    if state in ("running", "paused"):
        steps += [
            escalated_hint(m["id"], t["task_id"])
            for t in m.get("tasks") or []
            if t.get("status") == "escalated"
        ]
    return steps


def mission_detail(m: dict[str, Any], spent_globally: list[str] | None = None) -> str:
    """A mission for `show`; ``spent_globally`` names the daily or monthly budgets used up
    (``daily:2026-12-05``), which stop this mission's tasks as well as every other's."""
    lines = [
        f"{m['id']}  {m['status']}" + ("  [OFFLINE model]" if m.get("offline") else ""),
        f"  repository   {m['repository']} ({m['base_branch'] or 'its default branch'})",
        f"  requirement  {short(m['requirement'], 100)}",
    ]
    if m.get("integration_branch"):
        head = f" @ {m['final_sha'][:10]}" if m.get("final_sha") else ""
        lines.append(f"  branch       {m['integration_branch']}{head}")
    lines.extend(delivery_lines(m.get("delivery"), m["id"]))
    asked = runtime_asked(m)
    if asked:
        lines.append(f"  runtime      {asked}")
    if m.get("plan_version") is not None:
        approved = m.get("approved_version")
        state = f"approved v{approved}" if approved is not None else "not approved"
        lines.append(f"  plan         v{m['plan_version']} by {m.get('model')} ({state})")
    budget = m.get("budget_usd")
    spent = mission_cost(m)
    budget_text = f" of ${budget:.2f}" if budget is not None else " (no budget)"
    flags = ""
    if m.get("budget_exceeded"):
        # The scheduler also stops when the next task's estimate would not fit, well
        # before the money is spent: "EXCEEDED" alone then reads as a wrong sum.
        value = m.get("cost_usd")
        spent_all = budget is None or (value is not None and value >= budget)
        flags = " EXCEEDED" if spent_all else " (the next task does not fit)"
        flags += f": no task starts until `aether mission budget {m['id']} USD` raises it"
    elif m.get("budget_warning"):
        flags = " (warning)"
    lines.append(
        f"  cost         {spent}{budget_text}{flags}; tokens in {m.get('tokens_in', 0)}"
        f" out {m.get('tokens_out', 0)}"
    )
    if m["status"] in ("running", "paused"):
        for scope in spent_globally or []:
            kind, _, period = scope.partition(":")
            turns = "day" if kind == "daily" else "month"
            lines.append(
                f"  budget       the {kind} budget across all missions ({period}) is spent: "
                f"no task starts until the {turns} turns (UTC)"
            )
    if m.get("error"):
        lines.append(f"  error        {m['error']}")
    for question in m.get("questions") or []:
        lines.append(f"  question     {question}")
    if m.get("answer"):
        lines.append(f"  answer       {m['answer']}")
    tasks = m.get("tasks") or []
    if tasks:
        lines.append("  tasks:")
        # A runtime column only where the mission or a task named one: without, every
        # task runs with its runner's default, which the line need not repeat.
        runtimes = [task_runtime(m, t) for t in tasks]
        width = max(len(r) for r in runtimes) if any(r != DEFAULT_RUNTIME for r in runtimes) else 0
        for t, runtime in zip(tasks, runtimes, strict=True):
            after = f" (after {', '.join(t['depends_on'])})" if t.get("depends_on") else ""
            activity = task_note(t)
            note = f"  — {short(activity, 40)}" if activity else ""
            through = f"{runtime:<{width}}  " if width else ""
            lines.append(
                f"    {t['task_id']:<10} {t['status']:<11} try {t.get('attempt', 0)}  "
                f"{through}"
                f"{task_cost(t.get('cost_usd'), t.get('cost_complete', True)):>9}  "
                f"{short(t['title'] + after, 60)}{note}"
            )
            drift = t.get("files_outside_scope") or []
            if drift:
                lines.append(f"{'':15}outside scope: {short(', '.join(drift), 70)}")
    lines += [f"  next         {step}" for step in next_steps(m)]
    lines += plan_lines(m)
    steps = m.get("failed_steps") or []
    if steps:
        lines.append("  failed steps:")
        for step in steps:
            lines.append(
                f"    {step['service']:<12} {step['failed_event_type']:<18} "
                f"{step['status']:<9} {step['attempts']:>3} tries  event {step['failed_event_id']}"
                f"  — {short(step['error'], 50)}"
            )
    messages = m.get("messages") or []
    if messages:
        lines.append("  conversation:")
        for msg in messages[-10:]:
            author = msg.get("author") or ""
            lines.append(f"    {msg['kind']:<8} {author:<16} {short(msg['text'], 70)}")
    return "\n".join(lines)


# What a task runs with when neither it nor its mission named a runtime.
DEFAULT_RUNTIME = "default"


def runtime_asked(m: dict[str, Any]) -> str:
    """The runtime the mission asked for its tasks, and per tier where it differs (""
    when it asked for none: each runner's default)."""
    overrides = m.get("runtime_overrides") or {}
    tiers = ", ".join(f"{tier}: {name}" for tier, name in sorted(overrides.items()))
    if not m.get("runtime"):
        return f"{DEFAULT_RUNTIME} ({tiers})" if tiers else ""
    return f"{m['runtime']} ({tiers})" if tiers else str(m["runtime"])


def task_runtime(m: dict[str, Any], t: dict[str, Any]) -> str:
    """The runtime that works a task: the one its current attempt runs with (asked for by
    its TaskReady, named by its agent's start), else the one its mission asked for its
    tier, else ``default`` (its runner's)."""
    if t.get("runtime"):
        return str(t["runtime"])
    overrides = m.get("runtime_overrides") or {}
    return str(overrides.get(t.get("tier")) or m.get("runtime") or DEFAULT_RUNTIME)


def task_note(t: dict[str, Any]) -> str:
    """What a task's line says after its title, as the live board does: the agent's
    latest action while it works, what went wrong when it failed, the merge once merged.
    An agent's last action is sampled, often a turn before its end: shown beside a task
    that is done, it read as if the model still asked (``merged … — model asks:
    read_file``)."""
    status = t.get("status")
    if status == "running":
        return str((t.get("agent") or {}).get("last_action") or "working")
    if status == "merged" and t.get("merge_sha"):
        resolved = " (resolution of a conflict)" if t.get("resolution") else ""
        return f"merged {str(t['merge_sha'])[:10]}{resolved}"
    return str(t.get("error") or "")


def delivery_lines(delivery: dict[str, Any] | None, mission_id: str) -> list[str]:
    """Where the git broker delivered the result (``AETHER_PUSH_REMOTE``), or why not."""
    if not delivery:
        return []
    if delivery["status"] == "pending":
        if not delivery["sha"]:
            return [f"  delivery     to {delivery['remote']} once the mission completes"]
        where = f"{delivery['branch']} @ {delivery['sha'][:10]} to {delivery['remote']}"
        return [f"  delivery     pushing {where}"]
    where = f"{delivery['branch']} @ {delivery['sha'][:10]} to {delivery['remote']}"
    if delivery["status"] == "pushed":
        there = " (it was already there)" if delivery.get("already_there") else ""
        return [f"  delivered    {where}{there}"]
    reason = delivery.get("reason") or "no reason given"
    if delivery["status"] == "retrying":
        return [f"  delivery     pushing again (it failed: {reason})", f"{'':15}{where}"]
    return [
        f"  delivery     FAILED: {reason}",
        f"{'':15}{where}",
        f"{'':15}{deliver_again(mission_id)}",
    ]


def deliver_again(mission_id: str) -> str:
    """The next step after a failed push."""
    return f"once that is fixed, push it again with `aether mission deliver {mission_id}`"


def plan_lines(m: dict[str, Any]) -> list[str]:
    """The latest plan: its waves and edges, each task's tier, files and acceptance
    criteria, and what changed since the version before."""
    plans = m.get("plans") or []
    if not plans:
        return []
    latest = plans[-1]
    lines = []
    layers = (m.get("graph") or {}).get("layers") or []
    tasks = {t["id"]: t for t in latest.get("tasks", [])}
    if layers:
        lines.append("  graph:")
        for number, layer in enumerate(layers, start=1):
            parts = []
            for task_id in layer:
                after = (tasks.get(task_id) or {}).get("depends_on") or []
                parts.append(task_id + (f" ← {', '.join(after)}" if after else ""))
            lines.append(f"    wave {number}  {'; '.join(parts)}")
    if len(plans) > 1:
        lines.append(f"  plan v{latest['version']} against v{plans[-2]['version']}:")
        lines += [f"    {change}" for change in plan_changes(plans[-2], latest)] or [
            "    (no change to the tasks)"
        ]
    estimate = next(
        (e for e in m.get("plan_estimates") or [] if e.get("version") == latest["version"]), None
    )
    costs: dict[str, float] = (estimate or {}).get("tasks") or {}
    total = f", estimated ≈ ${estimate['total_usd']:.2f}" if estimate else ""
    lines.append(f"  plan v{latest['version']} tasks{total}:")
    for task in tasks.values():
        cost = f" ≈ ${costs[task['id']]:.2f}" if task["id"] in costs else ""
        lines.append(
            f"    {task['id']:<10} [{task.get('tier', 'standard')}]{cost} "
            f"{short(task['title'], 80)}"
        )
        if task.get("files"):
            lines.append(f"      files   {', '.join(task['files'])}")
        for criterion in task.get("acceptance_criteria") or []:
            lines.append(f"      accept  {short(criterion, 90)}")
    # What the planner changed or could not do (a repository command that does not
    # exist, a file list instead of the files): the plan is not what was asked without it.
    lines += [f"  plan note    {repair}" for repair in latest.get("repairs") or []]
    return lines


def plan_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Tasks added, removed and changed between two plan versions."""
    before = {t["id"]: t for t in old.get("tasks", [])}
    after = {t["id"]: t for t in new.get("tasks", [])}
    changes = [f"+ {i}: {short(t['title'], 70)}" for i, t in after.items() if i not in before]
    changes += [f"- {i}: {short(t['title'], 70)}" for i, t in before.items() if i not in after]
    for task_id in after.keys() & before.keys():
        fields = [
            name
            for name in ("title", "files", "depends_on", "tier", "acceptance_criteria")
            if after[task_id].get(name) != before[task_id].get(name)
        ]
        if fields:
            changes.append(f"~ {task_id}: {', '.join(fields)} changed")
    return sorted(changes, key=lambda c: c[2:])


def token_line(t: dict[str, Any]) -> str:
    state = "revoked" if t.get("revoked_at") else "active"
    expires = str(t.get("expires_at") or "never")[:10]
    return (
        f"{t['id']}  {t['name']:<20} {','.join(t['scopes']):<18} {t['prefix']}…  {state:<8}"
        f" expires {expires}"
    )
