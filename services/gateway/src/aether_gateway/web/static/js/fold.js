// What one live event changes on the page, before the read model is asked again.
// Only statuses are folded here (setting one twice is harmless, so an event seen both
// in a snapshot and on the stream does no damage); sums such as cost come from the
// gateway's read model, which the page reloads once events go quiet.

const TASK_STATUS = {
  task_ready: "ready",
  workspace_ready: "running",
  agent_started: "running",
  agent_completed: "completed",
  agent_failed: "failed",
  workspace_failed: "failed",
  branch_merged: "merged",
  merge_conflicted: "conflicted",
  merge_withheld: "completed",
  task_retried: "pending",
  task_timed_out: "failed",
  task_escalated: "escalated",
  task_skipped: "skipped",
  task_retry_requested: "pending",
};

const MISSION_STATUS = {
  repository_prepared: "preparing",
  plan_produced: "awaiting_approval",
  plan_failed: "plan_failed",
  plan_approved: "running",
  plan_clarification_requested: "awaiting_input",
  mission_paused: "paused",
  mission_completed: "completed",
  mission_answered: "answered",
  mission_failed: "failed",
  mission_cancelled: "cancelled",
};

const TERMINAL = new Set(["completed", "answered", "failed", "cancelled"]);

/** The task a mission event is about, and the status it leaves it in (or null). */
export function taskChange(type, event) {
  const status = TASK_STATUS[type];
  if (!status) return null;
  const taskId = event.task_id || (event.task && event.task.id);
  if (!taskId) return null;
  // A refused merge says why as the read model does (``domain.fold.merge_refused``).
  const error = type === "merge_conflicted" ? mergeRefused(event) : event.reason || null;
  return { taskId, status, attempt: event.attempt || null, error };
}

/** The mission's status after ``type``, or null when the event does not say. */
export function missionChange(current, type) {
  if (TERMINAL.has(current)) return null;
  const next = MISSION_STATUS[type];
  if (!next) return null;
  if (current === "paused" && !TERMINAL.has(next) && type !== "mission_paused") return null;
  return next;
}

/**
 * What the header says of a mission's delivery (the git broker's push to
 * AETHER_PUSH_REMOTE): null where none is announced, else its label, one line of where,
 * and why not.
 */
export function delivery(d) {
  if (!d) return null;
  if (d.status === "pending") {
    // Announced when the repository was prepared; the push follows the completion.
    const where = d.sha ? `pushing ${d.branch} @ ${d.sha.slice(0, 10)} to ${d.remote}` : `to ${d.remote} once the mission completes`;
    return { label: "Delivery", where, failed: false, reason: null };
  }
  const where = `${d.branch} @ ${d.sha.slice(0, 10)} to ${d.remote}`;
  if (d.status === "pushed") {
    return { label: "Delivered", where: where + (d.already_there ? " (already there)" : ""), failed: false, reason: null };
  }
  const reason = d.reason || "no reason given";
  if (d.status === "retrying") return { label: "Delivery retrying", where, failed: false, reason };
  return { label: "Delivery failed", where, failed: true, reason };
}

/**
 * Why the git broker did not merge an attempt (a ``merge_conflicted`` event), as the
 * command line tells it (``aether.render.merge_refused``). Only a ``conflict`` is one: a
 * failed verification, paths no checkout may write, conflict markers left or a missing
 * commit say what happened in ``detail`` (a broker before v8 sent no ``refusal``, and
 * files only with a conflict).
 */
export function mergeRefused(e) {
  const files = (e.files || []).join(", ");
  const refusal = e.refusal || "";
  if (refusal === "conflict" || (!refusal && files)) return files ? `merge conflict in ${files}` : "merge conflict";
  if (refusal === "unsafe_paths") return `not merged: paths no checkout may write: ${files}`;
  // The first line: a verification's output follows it, shown whole on the line's title.
  const first = String(e.detail || "").split("\n").find((line) => line.trim());
  const reason = first ? first.trim() : refusal || "no reason given";
  return `not merged: ${reason.length > 120 ? reason.slice(0, 119) + "…" : reason}`;
}

/**
 * Why the git broker kept an attempt out (a ``merge_withheld`` event: its mission was
 * cancelled first), as the command line tells it (``aether.render.merge_withheld``): a
 * verification the cancel stopped as a failed one is (its first line; its output in
 * ``verification``).
 */
export function mergeWithheld(e) {
  const first = String(e.verification || "").split("\n").find((line) => line.trim());
  const reason = first ? first.trim() : e.reason || "";
  return `not merged: ${reason.length > 120 ? reason.slice(0, 119) + "…" : reason}`;
}

/** A refused or withheld merge's whole account, a verification's output with it. */
export function mergeAccount(type, e) {
  if (type === "merge_conflicted") return String(e.detail || "");
  if (type === "merge_withheld") return String(e.verification || "");
  return "";
}

/** Board column of a task status. */
export function column(status) {
  switch (status) {
    case "pending":
      return "pending";
    case "ready":
      return "ready";
    case "running":
      return "running";
    case "completed":
    case "conflicted":
      return "merging";
    case "merged":
    case "skipped":
      return "merged";
    default:
      return "failed";
  }
}

export const COLUMNS = [
  ["pending", "Pending"],
  ["ready", "Ready"],
  ["running", "Running"],
  ["merging", "Merging"],
  ["merged", "Merged"],
  ["failed", "Failed / escalated"],
];

/** Layers of a task list by dependency depth (tasks in a cycle form one last layer). */
export function layers(tasks) {
  const ids = tasks.map((t) => t.id);
  const known = new Set(ids);
  const deps = new Map(tasks.map((t) => [t.id, (t.depends_on || []).filter((d) => known.has(d))]));
  const placed = new Set();
  const out = [];
  while (placed.size < ids.length) {
    const layer = ids.filter((id) => !placed.has(id) && deps.get(id).every((d) => placed.has(d)));
    if (!layer.length) {
      out.push(ids.filter((id) => !placed.has(id)));
      break;
    }
    out.push(layer);
    for (const id of layer) placed.add(id);
  }
  return out;
}

/** What changed between two versions of a plan. */
export function planDiff(older, newer) {
  const before = new Map(older.tasks.map((t) => [t.id, t]));
  const after = new Map(newer.tasks.map((t) => [t.id, t]));
  const added = newer.tasks.filter((t) => !before.has(t.id));
  const removed = older.tasks.filter((t) => !after.has(t.id));
  const changed = [];
  for (const task of newer.tasks) {
    const old = before.get(task.id);
    if (!old) continue;
    const fields = ["title", "description", "files", "depends_on", "tier", "acceptance_criteria"].filter(
      (f) => JSON.stringify(old[f]) !== JSON.stringify(task[f]),
    );
    if (fields.length) changed.push({ task, fields });
  }
  return { added, removed, changed };
}
