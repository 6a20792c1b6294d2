// One task: what it is, every attempt and what it cost, the agent's activity (live while
// it runs, then from the mission's stored events), the agent's full transcript, and its
// branch's diff.

import { get } from "../api.js";
import { age, debounce, h, money, pill, put, short, time, tokens } from "../dom.js";
import { LiveStream, onLiveState } from "../live.js";
import { diffView } from "../diff.js";
import { mergeAccount, mergeRefused, mergeWithheld } from "../fold.js";
import { TranscriptView } from "../transcript.js";

const DESCRIBE = {
  task_ready: (e) => `ready for attempt ${e.attempt} on ${e.model}${e.wave !== undefined && e.wave !== null ? `, wave ${e.wave + 1}` : ""}`,
  workspace_ready: (e) => `workspace ready on branch ${e.branch || ""}`,
  agent_started: (e) => `agent started on ${e.runner_id} (${e.model}${e.runtime ? ", " + e.runtime : ""})`,
  agent_completed: (e) => `agent finished: commit ${short(e.commit_sha)}${e.summary ? " — " + e.summary : ""}`,
  agent_failed: (e) => `agent failed: ${e.reason}`,
  branch_merged: (e) =>
    `merged as ${short(e.merge_sha)}${e.fast_forward ? " (fast-forward)" : ""}${e.resolution ? " (resolution of a conflict)" : ""}`,
  merge_conflicted: mergeRefused,
  merge_withheld: mergeWithheld,
  task_retried: (e) => `retry: ${e.reason}`,
  task_timed_out: () => "timed out",
  task_escalated: (e) => `escalated to a person: ${e.reason}`,
  task_skipped: (e) => `skipped${e.reason ? ": " + e.reason : ""}`,
  task_retry_requested: (e) => `retry requested${e.requested_by ? " by " + e.requested_by : ""}`,
  usage_recorded: (e) => `model call (${e.model}): ${tokens(e.usage.input_tokens)} in, ${tokens(e.usage.output_tokens)} out, ${tokens(e.usage.cache_read_input_tokens)} cached, ${money(e.usage.cost_usd, 4)}`,
  workspace_failed: (e) => `workspace failed: ${e.reason}`,
};

function describe(type, event) {
  const fn = DESCRIBE[type];
  return fn ? fn(event) : type.replaceAll("_", " ");
}

export async function taskPage(main, { params: [missionId, taskId] }) {
  const missionBase = `/missions/${encodeURIComponent(missionId)}`;
  const base = `${missionBase}/tasks/${encodeURIComponent(taskId)}`;
  const header = h("section", { class: "card", id: "task-head" });
  const attempts = h("section", { class: "card", id: "attempts" });
  const transcript = h("ol", { class: "transcript", id: "transcript" });
  const diffCard = h("section", { class: "card", id: "diff" });
  const agentTranscript = new TranscriptView(missionBase, taskId);
  main.append(
    h("div", { class: "task-layout" }, header, attempts, h("section", { class: "card" }, h("h2", {}, "Activity"), transcript), agentTranscript.el, diffCard),
  );
  let lastSeq = 0;
  let task = null;

  function line(type, event, live = false) {
    // A refused or withheld merge's verification output (a failed one's, or what one the
    // cancel stopped printed until then), folded under the line.
    const [, output] = mergeAccount(type, event).split("\n--- output ---\n");
    const shown = output && output.trim() ? h("details", { class: "verify-output" }, h("summary", {}, "verification output"), h("pre", { class: "small" }, output)) : null;
    return h("li", { class: "t-" + type + (live ? " live" : "") }, h("time", { title: event.occurred_at }, new Date(event.occurred_at).toLocaleTimeString()), h("span", { class: "kind" }, type.replaceAll("_", " ")), h("span", { class: "wrap" }, describe(type, event)), shown);
  }

  async function loadEvents() {
    for (;;) {
      const page = await get(`/events?mission_id=${encodeURIComponent(missionId)}&task_id=${encodeURIComponent(taskId)}&after=${lastSeq}&limit=500`);
      for (const stored of page.events) {
        transcript.append(line(stored.type, stored.data));
        lastSeq = stored.seq;
      }
      if (page.next_after === null) break;
    }
    if (!transcript.childElementCount) transcript.append(h("li", { class: "muted empty-line" }, "Nothing has happened to this task yet."));
  }

  function drawHeader() {
    const t = task;
    put(header, 
      h("div", { class: "crumbs" }, h("a", { href: "/board/", "data-nav": true }, "Missions"), " / ", h("a", { href: `/board${missionBase}`, "data-nav": true, class: "mono" }, missionId), " / ", h("span", { class: "mono" }, t.task_id)),
      h("div", { class: "title-row" }, h("h1", {}, t.title), h("span", { id: "task-status" }, pill(t.status))),
      t.description ? h("p", { class: "wrap" }, t.description) : null,
      h(
        "dl",
        { class: "facts" },
        h("div", {}, h("dt", {}, "Tier"), h("dd", {}, t.tier)),
        h("div", {}, h("dt", {}, "Agent runtime"), h("dd", { class: "mono", id: "task-runtime" }, t.runtime || (t.attempt ? "the runner's default" : "—"))),
        h("div", {}, h("dt", {}, "Depends on"), h("dd", { class: "mono" }, t.depends_on.join(", ") || "—")),
        h("div", {}, h("dt", {}, "Files"), h("dd", { class: "mono" }, t.files.join(", ") || "—")),
        h("div", {}, h("dt", {}, "Branch"), h("dd", { class: "mono" }, t.branch || "—")),
        h("div", {}, h("dt", {}, "Commit"), h("dd", { class: "mono" }, short(t.commit_sha))),
        h("div", {}, h("dt", {}, "Merge"), h("dd", { class: "mono", id: "merge-sha" }, short(t.merge_sha), t.resolution ? " (resolution of a conflict)" : "")),
        h("div", {}, h("dt", {}, "Cost"), h("dd", {}, money(t.cost_usd, 4))),
        h("div", {}, h("dt", {}, "Updated"), h("dd", { title: time(t.updated_at) }, age(t.updated_at) + " ago")),
      ),
      t.summary ? h("p", { class: "summary wrap" }, t.summary) : null,
      t.error ? h("p", { class: "field-error" }, t.error) : null,
    );
  }

  function drawAttempts() {
    put(attempts, h("h2", {}, "Attempts"));
    const sessions = task.sessions || [];
    if (!sessions.length) {
      attempts.append(h("p", { class: "muted" }, "No agent has started on this task yet."));
      return;
    }
    const rows = sessions.map((s) =>
      h(
        "tr",
        { "data-attempt": s.attempt },
        h("td", {}, String(s.attempt)),
        h("td", {}, pill(s.status)),
        h("td", { class: "mono small" }, s.runner_id || "—"),
        h("td", { class: "small" }, s.model || "—"),
        h("td", {}, String(s.turns)),
        h("td", {}, String(s.tool_calls)),
        h("td", {}, `${tokens(s.tokens_in)} / ${tokens(s.tokens_out)}`),
        h("td", {}, money(s.cost_usd, 4)),
        h("td", { class: "small wrap" }, s.error || s.last_action || ""),
      ),
    );
    const head = ["#", "Status", "Runner", "Model", "Turns", "Tool calls", "Tokens in / out", "Cost", "Last action"];
    attempts.append(
      h("div", { class: "table-scroll" }, h("table", { class: "attempts" }, h("thead", {}, h("tr", {}, head.map((x) => h("th", {}, x)))), h("tbody", {}, rows))),
    );
  }

  async function loadDiff() {
    put(diffCard, h("h2", {}, "Diff against its base"));
    if (!task.commit_sha) {
      diffCard.append(h("p", { class: "muted" }, "No commit yet: the diff shows once the agent has committed."));
      return;
    }
    try {
      const diff = await get(base + "/diff");
      diffCard.append(diffView(diff));
    } catch (error) {
      diffCard.append(h("p", { class: "muted", id: "diff-error" }, error.explained ? error.explained() : error.message));
    }
  }

  async function load() {
    task = await get(base);
    document.title = `${task.title} · ${missionId} · Aether`;
    drawHeader();
    drawAttempts();
  }

  try {
    await load();
  } catch (error) {
    for (const el of main.querySelectorAll(".task-layout > .card:not(#task-head)")) el.hidden = true;
    const title = error.status === 404 ? "Task not found" : "The task could not be loaded";
    const back = h("a", { href: `/board${missionBase}`, "data-nav": true }, "Back to the mission");
    put(header, h("h1", {}, title), h("p", { class: "field-error" }, error.message), back);
    return null;
  }
  const position = await get("/events/position").catch(() => ({ sequence: 0 }));
  await loadEvents();
  await agentTranscript.load().catch(() => {});
  await loadDiff();
  let diffShownFor = task.commit_sha;
  let lastLive = 0;
  const reload = debounce(async () => {
    // A read model behind the last event shown is asked again until it has caught up.
    const at = await get("/events/position").catch(() => ({ sequence: lastLive }));
    await load().catch(() => {});
    if (at.sequence < lastLive) reload();
    if (task.commit_sha !== diffShownFor) {
      diffShownFor = task.commit_sha;
      await loadDiff();
    }
  }, 300);
  const live = new LiveStream(missionBase + "/events", {
    telemetry: true,
    after: Math.max(position.sequence, lastSeq),
    // A reset stream: the task loaded again, followed from the stream's newest event (a
    // replay would list events already shown again).
    onReset: async () => {
      await load();
      return null;
    },
    onEvent: (type, event, seq) => {
      if (event.task_id !== taskId && !(event.task && event.task.id === taskId)) return;
      lastLive = seq;
      const empty = transcript.querySelector(".empty-line");
      if (empty) empty.remove();
      transcript.append(line(type, event));
      reload();
    },
    onTelemetry: (type, event) => {
      if (type === "transcript_recorded") {
        agentTranscript.live(event);
        return;
      }
      if (type !== "agent_progress" || event.task_id !== taskId) return;
      const empty = transcript.querySelector(".empty-line");
      if (empty) empty.remove();
      transcript.append(line("agent_progress", { ...event, occurred_at: event.occurred_at }, true));
    },
  }).start();
  DESCRIBE.agent_progress = (e) => `turn ${e.turns}, ${e.tool_calls} tool calls${e.last_action ? ": " + e.last_action : ""}`;
  // Telemetry is not replayed: whatever the transcript missed before the stream went live
  // (on opening, after a drop) is asked for then, and every few seconds, since an entry
  // can reach the database a moment after the ask that should have found it.
  const refresh = () => agentTranscript.catchUp().catch(() => {});
  let opened = false;
  const unwatch = onLiveState((state) => {
    if (state !== "live") return;
    refresh();
    // After a drop, entries stored late into a gap meanwhile are asked for too.
    if (opened) agentTranscript.refill().catch(() => {});
    opened = true;
  });
  const timer = setInterval(refresh, 5000);
  return () => {
    clearInterval(timer);
    unwatch();
    live.stop();
    agentTranscript.stop();
  };
}
