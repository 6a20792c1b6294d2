// One mission: status, cost against budget, the plan as a graph, the board of tasks,
// the conversation with the planner, failed steps, and the commands a writer may give.

import { ApiError, get, Write } from "../api.js";
import { age, clear, debounce, firstLine, h, money, pill, put, short, time, tokens } from "../dom.js";
import { COLUMNS, column, delivery, missionChange, planDiff, taskChange } from "../fold.js";
import { planGraph, setNodeCost, setNodeStatus } from "../graph.js";
import { LiveStream, record } from "../live.js";
import { offerSendAgain } from "../sendagain.js";

const ACTIVE = new Set(["requested", "preparing", "awaiting_input", "awaiting_approval", "running"]);
const TERMINAL = new Set(["completed", "answered", "failed", "cancelled"]);

export function costBar(spent, budget, { exceeded = false } = {}) {
  if (!budget) {
    return h("div", { class: "costbar none", id: "costbar" }, h("span", {}, `${spent ? money(spent, 4) + " spent" : "Nothing spent yet"} · no budget set`));
  }
  const ratio = (spent || 0) / budget;
  const level = exceeded || ratio >= 1 ? "over" : ratio >= 0.8 ? "warn" : "ok";
  const note = level === "over" ? "budget used up: no new work starts" : level === "warn" ? "over 80 % of the budget" : `${money(budget - (spent || 0))} left`;
  return h(
    "div",
    { class: "costbar " + level, id: "costbar", "data-level": level },
    h("div", { class: "bar" }, h("i", { style: { width: `${Math.min(100, ratio * 100).toFixed(1)}%` } }), h("b", { style: { left: "80%" } })),
    h("div", { class: "costbar-text" }, h("strong", {}, `${money(spent || 0, 4)} of ${money(budget)}`), h("span", {}, ` · ${(ratio * 100).toFixed(0)} % · ${note}`)),
  );
}

// What a task runs with when neither it nor its mission named a runtime.
const DEFAULT_RUNTIME = "default";

/** The runtime the mission asked for its tasks, and per tier where it differs, as the
 * command line shows it (`default (complex: codex)`). */
export function runtimeAsked(m) {
  const overrides = Object.entries(m.runtime_overrides || {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const tiers = overrides.map(([tier, name]) => `${tier}: ${name}`).join(", ");
  const runtime = m.runtime || DEFAULT_RUNTIME;
  return tiers ? `${runtime} (${tiers})` : runtime;
}

/** The runtime that works a task: its current attempt's, else the one its mission asked
 * for its tier, else the mission's, else its runner's default. */
export function taskRuntime(m, t) {
  return t.runtime || (m.runtime_overrides || {})[t.tier] || m.runtime || DEFAULT_RUNTIME;
}

function cacheRatio(m) {
  const total = m.tokens_in + m.tokens_cache_read + m.tokens_cache_write;
  return total ? Math.round((100 * m.tokens_cache_read) / total) + " %" : "—";
}

export async function missionPage(main, { me, params: [missionId], navigate }) {
  const base = `/missions/${encodeURIComponent(missionId)}`;
  const boardBase = `/board/missions/${encodeURIComponent(missionId)}`;
  let detail = null;
  let shownVersion = null;
  let graphNodes = new Map();
  const cards = new Map();
  const activity = new Map(); // task id -> last action seen live

  const header = h("section", { class: "card mission-head", id: "mission-head" });
  const commands = h("section", { class: "card commands", id: "commands" });
  const planCard = h("section", { class: "card plan", id: "plan" });
  const boardCard = h("section", { class: "card", id: "board" });
  const side = h("section", { class: "card conversation", id: "conversation" });
  const steps = h("section", { class: "card steps", id: "steps", hidden: true });
  const commandError = h("p", { class: "field-error", id: "command-error", role: "alert" });
  // "Send again" for the last command that failed where sending it again may succeed.
  const commandAgain = h("div", { class: "send-again-slot", id: "command-again" });
  main.append(h("div", { class: "mission-layout" }, header, commands, planCard, boardCard, h("div", { class: "two" }, side, steps)));

  // Made once and moved into each redraw, so what a person is typing survives it.
  const messageText = h("textarea", { id: "message-text", rows: 3, "aria-label": "Message to the planner" });
  const budgetInput = h("input", { id: "budget-input", inputmode: "decimal", placeholder: "new budget, USD", size: 12 });
  let shownJson = "";

  // A snapshot holds every event up to the read model's position, read just before it;
  // live events after that position are kept and applied again on top of the snapshot,
  // so a snapshot that lags the stream never moves a card back.
  let snapshotAt = 0;
  let tail = [];

  async function load() {
    let fresh;
    let position;
    try {
      position = (await get("/events/position")).sequence;
      fresh = await get(base);
    } catch (error) {
      // A page already drawn stays as it is until the gateway answers again.
      if (detail && error.status !== 404) return false;
      for (const el of [commands, planCard, boardCard, side, steps]) el.hidden = true;
      const title = error.status === 404 ? "Mission not found" : "The mission could not be loaded";
      put(header, h("h1", {}, title), h("p", { class: "field-error" }, error.message), h("a", { href: "/board/", "data-nav": true }, "Back to the missions"));
      return false;
    }
    snapshotAt = position;
    tail = tail.filter((e) => e.seq > position);
    if (tail.length) reload(); // the read model is behind what is shown: look again soon
    const json = JSON.stringify(fresh);
    if (json === shownJson && !tail.length) return true; // nothing new: keep the page as it is
    shownJson = json;
    detail = fresh;
    const focused = document.activeElement;
    if (shownVersion === null || shownVersion > (detail.plan_version || 0)) shownVersion = detail.plan_version;
    const started = performance.now();
    document.title = `${firstLine(detail.requirement, 60)} · Aether`;
    drawHeader();
    drawCommands();
    drawPlan();
    drawBoard();
    drawConversation();
    drawSteps();
    for (const e of tail) applyLocal(e.type, e.event);
    // A redraw replaces the command buttons: the one that had the focus gets it back.
    const refocus = focused && !focused.isConnected && focused.id ? document.getElementById(focused.id) : focused;
    if (refocus && refocus !== document.activeElement && refocus.isConnected) refocus.focus();
    record("redraw", performance.now() - started);
    if (!performance.getEntriesByName("aether:mission-rendered").length) performance.mark("aether:mission-rendered");
    return true;
  }

  function drawHeader() {
    const m = detail;
    put(header, 
      h("div", { class: "crumbs" }, h("a", { href: "/board/", "data-nav": true }, "Missions"), " / ", h("span", { class: "mono" }, m.id)),
      h("div", { class: "title-row" }, h("h1", { title: m.requirement }, firstLine(m.requirement, 120)), h("span", { id: "mission-status" }, pill(m.status))),
      h(
        "dl",
        { class: "facts" },
        h("div", {}, h("dt", {}, "Repository"), h("dd", { class: "mono" }, m.repository)),
        h("div", {}, h("dt", {}, "Base"), h("dd", { class: "mono" }, m.base_branch || "the repository's default", m.base_sha ? " @ " + short(m.base_sha) : "")),
        h("div", {}, h("dt", {}, "Integration branch"), h("dd", { class: "mono", id: "integration-branch" }, m.integration_branch || "—")),
        m.final_sha ? h("div", {}, h("dt", {}, "Result"), h("dd", { class: "mono", id: "final-sha" }, short(m.final_sha))) : null,
        deliveryFact(delivery(m.delivery)),
        h("div", {}, h("dt", {}, "Agent runtime"), h("dd", { class: "mono", id: "mission-runtime", title: "default: each runner's own" }, runtimeAsked(m))),
        h("div", {}, h("dt", {}, "Tokens in / out"), h("dd", {}, `${tokens(m.tokens_in)} / ${tokens(m.tokens_out)}`)),
        h("div", {}, h("dt", {}, "Prompt-cache hits"), h("dd", { id: "cache-ratio" }, cacheRatio(m))),
        h("div", {}, h("dt", {}, "Age"), h("dd", { title: time(m.created_at) }, age(m.created_at))),
        m.offline ? h("div", {}, h("dt", {}, "Model"), h("dd", {}, h("span", { class: "tag warn" }, "offline model (demo)"))) : null,
      ),
      costBar(m.cost_usd, m.budget_usd, { exceeded: m.budget_exceeded }),
      m.cost_complete ? null : h("p", { class: "muted small" }, "Some calls had no known price: the cost shown is a lower bound."),
      m.error ? h("p", { class: "field-error" }, m.error) : null,
      m.requirement.includes("\n") ? h("details", {}, h("summary", {}, "Requirement"), h("pre", { class: "wrap" }, m.requirement)) : null,
    );
  }

  function deliveryFact(d) {
    if (!d) return null;
    const where = h("span", { class: "mono" }, d.where);
    const said = d.reason ? [h("span", { class: d.failed ? "field-error" : "muted" }, d.reason), h("br"), where] : [where];
    if (d.failed && me.canWrite) {
      // The broker gave up: once the remote is fixed, a writer asks for the push again.
      const again = h("button", { type: "button", class: "small", id: "retry-delivery" }, "Push again");
      again.addEventListener("click", () => command("/delivery/retry", {}, again));
      said.push(" ", again);
    }
    return h("div", {}, h("dt", {}, d.label), h("dd", { id: "delivery" }, ...said));
  }

  /** Send a command (``done`` follows its success); its failure is said below the
   * buttons, with "Send again" where sending the same request again may succeed. */
  function command(path, body, button, done = null) {
    return sendCommand(new Write(base + path, body), button, done);
  }

  async function sendCommand(write, button, done) {
    commandError.textContent = "";
    clear(commandAgain);
    if (button) button.disabled = true;
    try {
      await write.send();
    } catch (error) {
      const fields = error instanceof ApiError ? Object.values(error.fields()) : [];
      commandError.textContent = fields.length ? fields.join("; ") : error.message;
      commands.hidden = false;
      offerSendAgain(commandAgain, write, error, (w) => sendCommand(w, null, done), "command-send-again");
      return false;
    } finally {
      if (button) button.disabled = false;
    }
    reload();
    if (done) done();
    return true;
  }

  function drawCommands() {
    const m = detail;
    clear(commands);
    if (!me.canWrite) {
      commands.hidden = true;
      return;
    }
    if (TERMINAL.has(m.status)) {
      // Nothing left to command here; a failed "Push again" is said here all the same.
      commands.append(commandError, commandAgain);
      commands.hidden = !commandError.textContent;
      return;
    }
    commands.hidden = false;
    const button = (label, cls, path, body, id, done = null) => {
      const b = h("button", { type: "button", class: cls, id });
      b.textContent = label;
      b.addEventListener("click", () => command(path, typeof body === "function" ? body() : body, b, done));
      return b;
    };
    commands.append(
      h(
        "div",
        { class: "buttons" },
        m.status === "awaiting_approval" ? button(`Approve plan v${m.plan_version}`, "primary", "/plan/approve", { version: m.plan_version }, "approve") : null,
        ACTIVE.has(m.status) ? button("Pause", "", "/pause", {}, "pause") : null,
        m.status === "paused" ? button("Resume", "primary", "/resume", {}, "resume") : null,
        !TERMINAL.has(m.status) ? cancelButton() : null,
        h("span", { class: "spacer" }),
        h("label", { class: "inline" }, "Raise budget ", budgetInput),
        button("Raise", "", "/budget", () => ({ budget_usd: Number(budgetInput.value) || budgetInput.value }), "raise-budget", () => (budgetInput.value = "")),
      ),
      commandError,
      commandAgain,
    );
  }

  // Cancelling cannot be undone: the first click asks, a second within a few seconds
  // cancels. Kept outside the button, so a redraw between the clicks does not forget it.
  let cancelArmedUntil = 0;

  function cancelButton() {
    const armed = () => Date.now() < cancelArmedUntil;
    const b = h("button", { type: "button", class: "danger", id: "cancel" }, armed() ? "Click again to cancel" : "Cancel mission");
    b.addEventListener("click", async () => {
      if (!armed()) {
        cancelArmedUntil = Date.now() + 5000;
        b.textContent = "Click again to cancel";
        setTimeout(() => {
          if (!armed() && b.isConnected) b.textContent = "Cancel mission";
        }, 5100);
        return;
      }
      cancelArmedUntil = 0;
      await command("/cancel", {}, b);
    });
    return b;
  }

  let planKey = "";

  function drawPlan() {
    const m = detail;
    const key = JSON.stringify([shownVersion, m.approved_version, m.plan_version, (m.plans || []).length]);
    if (key === planKey && graphNodes.size) {
      const tasks = new Map((m.tasks || []).map((t) => [t.task_id, t]));
      for (const [id, node] of graphNodes) {
        const task = tasks.get(id);
        if (!task) continue;
        if (node.dataset.status !== task.status) setNodeStatus(node, task.status);
        setNodeCost(node, task.cost_usd ? money(task.cost_usd) : "");
      }
      return;
    }
    planKey = key;
    clear(planCard);
    const plans = m.plans || [];
    const plan = plans.find((p) => p.version === shownVersion);
    const head = h("div", { class: "card-head" }, h("h2", {}, "Plan"));
    planCard.append(head);
    if (!plan) {
      planCard.append(h("p", { class: "muted" }, m.status === "plan_failed" ? "The planner could not produce a plan." : "No plan yet: the planner is at work."));
      graphNodes = new Map();
      return;
    }
    if (plans.length > 1) {
      const select = h("select", { id: "plan-version" }, plans.map((p) => h("option", { value: p.version }, `version ${p.version}${p.version === m.approved_version ? " (approved)" : ""}`)));
      select.value = String(shownVersion);
      select.addEventListener("change", () => {
        shownVersion = Number(select.value);
        drawPlan();
      });
      head.append(select);
    }
    head.append(h("span", { class: "muted small" }, `${plan.tasks.length} tasks · ${plan.model || "planner"}${plan.offline ? " (offline)" : ""}`));
    const estimate = (m.plan_estimates || []).find((e) => e.version === plan.version);
    if (estimate) head.append(h("span", { class: "muted small", id: "plan-estimate" }, `estimated ≈ $${estimate.total_usd.toFixed(2)}`));
    const current = plan.version === (m.approved_version ?? m.plan_version);
    const tasks = new Map((m.tasks || []).map((t) => [t.task_id, t]));
    const { svg, nodes } = planGraph(plan, {
      statusOf: (id) => (current && tasks.has(id) ? tasks.get(id).status : null),
      costOf: (id) => (current && tasks.has(id) && tasks.get(id).cost_usd ? money(tasks.get(id).cost_usd) : ""),
      estimateOf: (id) => (estimate && id in estimate.tasks ? estimate.tasks[id] : null),
      onOpen: (id) => navigate(`${boardBase}/tasks/${encodeURIComponent(id)}`),
    });
    graphNodes = current ? nodes : new Map();
    if (plan.rationale) planCard.append(h("p", { class: "rationale" }, plan.rationale));
    // What the planner changed or could not do as asked (a repository command that does
    // not exist, say): without them the plan reads as if it were what was asked.
    if ((plan.repairs || []).length) {
      planCard.append(h("div", { class: "plan-notes", id: "plan-notes" }, h("h3", {}, "Planner's notes"), h("ul", {}, plan.repairs.map((note) => h("li", {}, note)))));
    }
    planCard.append(h("div", { class: "graph-wrap" }, svg));
    const older = plans.find((p) => p.version === plan.version - 1);
    if (older) {
      const diff = planDiff(older, plan);
      planCard.append(
        h(
          "details",
          { class: "plan-diff", id: "plan-diff", open: true },
          h("summary", {}, `Changes from version ${older.version}`),
          h(
            "ul",
            {},
            diff.added.map((t) => h("li", { class: "add" }, "+ ", h("b", {}, t.id), " ", t.title)),
            diff.removed.map((t) => h("li", { class: "del" }, "− ", h("b", {}, t.id), " ", t.title)),
            diff.changed.map(({ task, fields }) => h("li", { class: "chg" }, "~ ", h("b", {}, task.id), ` ${task.title}: ${fields.join(", ")} changed`)),
            !diff.added.length && !diff.removed.length && !diff.changed.length ? h("li", { class: "muted" }, "no change") : null,
          ),
        ),
      );
    }
  }

  function card(task) {
    const href = `${boardBase}/tasks/${encodeURIComponent(task.task_id)}`;
    // Named where the mission or the task names a runtime, as the command line does.
    const named = task.runtime || detail.runtime || Object.keys(detail.runtime_overrides || {}).length;
    const runtime = named ? taskRuntime(detail, task) : null;
    const el = h(
      "article",
      { class: `task s-${task.status}`, "data-task": task.task_id, "data-status": task.status },
      h("a", { href, "data-nav": true, class: "task-title" }, task.title),
      h("div", { class: "task-meta" }, h("span", { class: "mono" }, task.task_id), pill(task.status), runtime ? h("span", { class: "tag runtime", "data-runtime": runtime, title: "agent runtime" }, runtime) : null, task.attempt > 1 ? h("span", { class: "tag" }, `attempt ${task.attempt}`) : null, task.cost_usd ? h("span", { class: "cost" }, money(task.cost_usd)) : null),
      h("div", { class: "activity" }, activity.get(task.task_id) || (task.agent && task.agent.last_action) || ""),
      task.error && ["failed", "escalated", "conflicted"].includes(task.status) ? h("div", { class: "task-error" }, firstLine(task.error, 140)) : null,
    );
    if (me.canWrite && task.status === "escalated") {
      const retry = h("button", { type: "button", class: "small", "data-action": "retry" }, "Retry");
      retry.addEventListener("click", () => command(`/tasks/${encodeURIComponent(task.task_id)}/retry`, {}, retry));
      const skip = h("button", { type: "button", class: "small ghost", "data-action": "skip" }, "Skip");
      skip.addEventListener("click", () => command(`/tasks/${encodeURIComponent(task.task_id)}/skip`, {}, skip));
      el.append(h("div", { class: "task-actions" }, retry, skip));
    }
    return el;
  }

  const lanes = new Map();

  let boardGrid = null;
  let boardEmpty = null;

  function drawBoard() {
    // Built once; afterwards only the cards whose task changed are replaced, so a
    // redraw of a big mission stays cheap and the lanes keep their scroll positions.
    if (boardGrid === null) {
      boardGrid = h("div", { class: "board", id: "task-board" });
      for (const [key, label] of COLUMNS) {
        const list = h("div", { class: "lane-body" });
        const count = h("span", { class: "count" });
        lanes.set(key, { list, count });
        boardGrid.append(h("div", { class: `lane lane-${key}`, "data-column": key }, h("h3", {}, label, count), list));
      }
      boardEmpty = h("p", { class: "muted" }, "Tasks appear here once a plan is approved.");
      boardCard.append(h("div", { class: "card-head" }, h("h2", {}, "Tasks")), boardGrid, boardEmpty);
    }
    const seen = new Set();
    for (const task of detail.tasks || []) {
      seen.add(task.task_id);
      const entry = cards.get(task.task_id);
      const json = JSON.stringify(task);
      if (entry && entry.json === json && entry.el.parentElement === lanes.get(column(task.status)).list) continue;
      const el = card(task);
      if (entry) entry.el.remove();
      cards.set(task.task_id, { el, task, json });
      lanes.get(column(task.status)).list.append(el);
    }
    for (const [id, entry] of cards) {
      if (!seen.has(id)) {
        entry.el.remove();
        cards.delete(id);
      }
    }
    counts();
    boardEmpty.hidden = (detail.tasks || []).length > 0;
  }

  function counts() {
    for (const { list, count } of lanes.values()) count.textContent = String(list.childElementCount);
  }

  function drawConversation() {
    const m = detail;
    clear(side);
    side.append(h("h2", {}, m.status === "awaiting_input" ? "The planner asks" : "Conversation"));
    if (m.questions && m.questions.length) {
      side.append(h("ol", { class: "questions", id: "questions" }, m.questions.map((q) => h("li", {}, q))));
    }
    const list = h("ul", { class: "messages" });
    for (const msg of m.messages || []) {
      list.append(h("li", { class: "msg-" + msg.kind }, h("div", { class: "muted small" }, `${msg.kind}${msg.author ? " · " + msg.author : ""} · ${time(msg.occurred_at)}`), h("div", { class: "wrap" }, msg.text)));
    }
    if (!(m.messages || []).length) list.append(h("li", { class: "muted" }, "No messages."));
    side.append(list);
    if (me.canWrite && !TERMINAL.has(m.status)) {
      const text = messageText;
      text.placeholder = m.status === "awaiting_input" ? "Answer the planner's questions" : m.status === "awaiting_approval" ? "Feedback on the plan: the planner revises it" : "A note for the planner";
      const send = h("button", { type: "submit", class: "primary", id: "send-message" }, m.status === "awaiting_input" ? "Send answers" : m.status === "awaiting_approval" ? "Send feedback" : "Send");
      const form = h("form", { class: "message-form" }, text, messageError, messageAgain, send);
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        // The same words as a message that got no answer: sent with its key, as "Send
        // again" would, so a message that did arrive is not posted twice.
        const write = new Write(base + "/messages", { text: text.value });
        sendMessage(unansweredMessage && unansweredMessage.text === write.text ? unansweredMessage : write, send);
      });
      side.append(form);
    }
  }

  // Made once, like the text, so a failure and its "Send again" survive a redraw.
  const messageError = h("p", { class: "field-error", id: "message-error" });
  const messageAgain = h("div", { class: "send-again-slot", id: "message-again" });
  let unansweredMessage = null;

  async function sendMessage(write, button) {
    messageError.textContent = "";
    clear(messageAgain);
    if (button) button.disabled = true;
    try {
      await write.send();
    } catch (failure) {
      const fields = failure instanceof ApiError ? Object.values(failure.fields()) : [];
      messageError.textContent = fields.length ? fields.join("; ") : failure.message;
      unansweredMessage = Write.mayResend(failure) ? write : null;
      offerSendAgain(messageAgain, unansweredMessage, failure, (w) => sendMessage(w, null), "message-send-again");
      return;
    } finally {
      if (button) button.disabled = false;
    }
    unansweredMessage = null;
    // The words sent leave the box, unless others were typed meanwhile.
    if (JSON.stringify({ text: messageText.value }) === write.text) messageText.value = "";
    reload();
  }

  function drawSteps() {
    const failed = detail.failed_steps || [];
    clear(steps);
    steps.hidden = !failed.length;
    if (!failed.length) return;
    steps.append(h("h2", {}, "Failed steps"));
    for (const step of failed) {
      const retry = me.canWrite && step.status !== "retried" ? h("button", { type: "button", class: "small" }, "Retry step") : null;
      if (retry) retry.addEventListener("click", () => command(`/steps/${encodeURIComponent(step.failed_event_id)}/retry`, {}, retry));
      steps.append(h("div", { class: "step" }, h("div", {}, h("b", {}, step.service), ` could not handle `, h("span", { class: "mono" }, step.failed_event_type), ` (${step.status}, ${step.attempts} attempts)`), h("pre", { class: "wrap small" }, step.error), retry || ""));
    }
  }

  const reload = debounce(async () => {
    if (await load().catch(() => false)) {
      /* drawn */
    }
  }, 300);

  function apply(type, event, seq) {
    shownJson = ""; // the page now differs from the last snapshot: redraw from the next
    if (seq > snapshotAt) tail.push({ type, event, seq });
    applyLocal(type, event);
    reload();
  }

  function applyLocal(type, event) {
    const change = taskChange(type, event);
    if (change) {
      const entry = cards.get(change.taskId);
      if (entry && entry.task.status !== change.status) {
        entry.task = { ...entry.task, status: change.status, attempt: change.attempt || entry.task.attempt, error: change.error || entry.task.error };
        entry.json = "";
        const el = card(entry.task);
        entry.el.replaceWith(el);
        entry.el = el;
        lanes.get(column(change.status)).list.append(el);
        counts();
      }
      const node = graphNodes.get(change.taskId);
      if (node) setNodeStatus(node, change.status);
    }
    const next = detail && missionChange(detail.status, type);
    if (next && next !== detail.status) {
      detail = { ...detail, status: next };
      clear(document.getElementById("mission-status")).append(pill(next));
      drawCommands();
    }
  }

  function telemetry(type, event) {
    if (type !== "agent_progress" || !event.task_id) return;
    const text = event.last_action || `turn ${event.turns}, ${event.tool_calls} tool calls`;
    activity.set(event.task_id, text);
    const entry = cards.get(event.task_id);
    if (entry) entry.el.querySelector(".activity").textContent = text;
  }

  if (!(await load())) return null;
  // The stream reset under the page: drawn again from the REST API, followed from there.
  const reset = async () => {
    shownJson = "";
    tail = [];
    return (await load()) ? snapshotAt : null;
  };
  const live = new LiveStream(base + "/events", { onEvent: apply, onTelemetry: telemetry, telemetry: true, after: snapshotAt, onReset: reset }).start();
  return () => live.stop();
}
