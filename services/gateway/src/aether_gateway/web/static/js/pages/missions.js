// Missions: the list (live), its filters, and the new-mission form.

import { ApiError, get, query, Write } from "../api.js";
import { age, clear, debounce, firstLine, h, money, pill, put } from "../dom.js";
import { LiveStream, reloaded } from "../live.js";
import { RuntimeChoices } from "../runtimes.js";
import { offerSendAgain } from "../sendagain.js";

const STATUSES = [
  "requested", "preparing", "awaiting_input", "awaiting_approval", "plan_failed",
  "running", "paused", "completed", "answered", "failed", "cancelled",
];

function progress(mission, counts) {
  const c = counts[mission.id];
  if (!c) return h("span", { class: "muted" }, "—");
  const pct = c.total ? Math.round((100 * c.merged) / c.total) : 0;
  return h(
    "div",
    { class: "progress", title: `${c.merged} of ${c.total} tasks merged` },
    h("div", { class: "bar" }, h("i", { style: { width: `${pct}%` } })),
    h("span", {}, `${c.merged}/${c.total}`),
  );
}

function cost(mission) {
  const spent = mission.cost_usd || 0;
  if (!mission.budget_usd) return h("span", {}, money(mission.cost_usd));
  const ratio = spent / mission.budget_usd;
  const level = ratio >= 1 ? "over" : ratio >= 0.8 ? "warn" : "ok";
  return h(
    "div",
    { class: "cost-mini " + level },
    h("div", { class: "bar" }, h("i", { style: { width: `${Math.min(100, ratio * 100).toFixed(1)}%` } })),
    h("span", {}, `${money(mission.cost_usd)} / ${money(mission.budget_usd)}`),
  );
}

function row(mission, counts) {
  const href = `/board/missions/${encodeURIComponent(mission.id)}`;
  return h(
    "tr",
    { "data-mission": mission.id },
    h("td", {}, pill(mission.status)),
    h("td", { class: "req" }, h("a", { href, "data-nav": true }, firstLine(mission.requirement) || mission.id), h("div", { class: "muted mono small" }, mission.id)),
    h("td", { class: "mono small", title: mission.repository }, firstLine(mission.repository, 40), h("div", { class: "muted" }, mission.base_branch || "default branch")),
    h("td", {}, progress(mission, counts)),
    h("td", {}, cost(mission)),
    h("td", { title: mission.created_at }, age(mission.created_at)),
  );
}

// The form, and what stops its reading of the runners' runtimes when the page is left.
function newMissionForm(onCreated) {
  const choices = new RuntimeChoices();
  const field = (name, label, input, hint) =>
    h("div", { class: "field", "data-field": name }, h("label", { for: "nm-" + name }, label), input, hint ? h("small", { class: "muted" }, hint) : null, h("p", { class: "field-error", id: "nm-" + name + "-error" }));
  const form = h(
    "form",
    { class: "card new-mission", id: "new-mission" },
    h("h2", {}, "New mission"),
    field("repository", "Repository", h("input", { id: "nm-repository", name: "repository", required: true, placeholder: "/path/to/repo or URL" })),
    field("base_branch", "Base branch", h("input", { id: "nm-base_branch", name: "base_branch", placeholder: "the repository's default" }), h("span", { id: "nm-base-hint" }, "Left empty: the repository's default branch")),
    field("requirement", "Requirement", h("textarea", { id: "nm-requirement", name: "requirement", rows: 5, required: true, placeholder: "What should change, and how will you know it is done?" })),
    choices.fields(),
    h(
      "div",
      { class: "row" },
      field("budget_usd", "Budget (USD)", h("input", { id: "nm-budget_usd", name: "budget_usd", inputmode: "decimal", placeholder: "no limit" })),
      h("label", { class: "check" }, h("input", { type: "checkbox", name: "auto_approve", id: "nm-auto_approve" }), " Approve the plan automatically"),
    ),
    h("p", { class: "field-error", id: "nm-error", role: "alert" }),
    h("div", { class: "send-again-slot", id: "nm-again" }),
    h("div", { class: "notice", id: "nm-warning", role: "status", hidden: true }),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Submit mission")),
  );
  const warning = form.querySelector("#nm-warning");
  const again = form.querySelector("#nm-again");
  // The last request that failed where sending it again may succeed: submitting the
  // same mission again sends it with its Idempotency-Key, as "Send again" does, so a
  // request that did reach the gateway does not become two missions.
  let unanswered = null;
  // Left empty, the base branch is the repository's own default branch, which the git
  // broker reads when it prepares the repository; the hint names it when the gateway can.
  let detected = null;
  const repository = form.querySelector("#nm-repository");
  const baseInput = form.querySelector("#nm-base_branch");
  const hint = form.querySelector("#nm-base-hint");
  repository.addEventListener("change", async () => {
    detected = null;
    const path = repository.value.trim();
    if (!path) return;
    try {
      const found = await get(`/repositories/default-branch?repository=${encodeURIComponent(path)}`);
      if (repository.value.trim() !== path) return;
      detected = found.default_branch;
      baseInput.placeholder = detected;
      hint.textContent = `Left empty: ${detected}, the repository's default branch`;
    } catch (error) {
      if (repository.value.trim() !== path) return;
      baseInput.placeholder = "the repository's default";
      // Why it could not be read now (unreachable, no such repository), when the gateway says.
      const why = error.explained && error.status !== 403 ? ` (not read now: ${error.explained()})` : "";
      hint.textContent = `Left empty: the repository's default branch, read when the mission starts${why}`;
    }
  });
  function clearErrors() {
    for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
    choices.clearErrors();
    clear(again);
    warning.hidden = true;
    clear(warning);
  }

  async function send(write) {
    clearErrors();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    let accepted;
    try {
      accepted = await write.send();
    } catch (error) {
      failed(error, write);
      return;
    } finally {
      button.disabled = false;
    }
    unanswered = null;
    form.reset();
    choices.reset();
    detected = null;
    baseInput.placeholder = "the repository's default";
    hint.textContent = "Left empty: the repository's default branch";
    if (!accepted.warning) {
      onCreated(accepted.mission_id);
      return;
    }
    // Kept, with something to know first (its runtime could not be checked): said here,
    // with the way to the mission, rather than lost in a page change.
    const href = `/board/missions/${encodeURIComponent(accepted.mission_id)}`;
    put(warning, `Mission submitted, but ${accepted.warning}. `, h("a", { href, "data-nav": true, id: "nm-warning-mission" }, "Open the mission"));
    warning.hidden = false;
  }

  function failed(error, write) {
    unanswered = Write.mayResend(error) ? write : null;
    const detail = error instanceof ApiError && error.body.detail;
    if (detail && Array.isArray(detail.unknown_runtimes)) {
      // A runtime no live runner has now (its runner stopped since the list was read):
      // the gateway's message, which names those they have, beside the choice that
      // names it; everything typed and chosen stays, and the list is read again.
      choices.refused(detail.unknown_runtimes, error.message);
      return;
    }
    const fields = error instanceof ApiError ? error.fields() : {};
    let placed = false;
    for (const [key, message] of Object.entries(fields)) {
      const slot = form.querySelector(`#nm-${CSS.escape(key)}-error`);
      if (slot) {
        slot.textContent = message;
        placed = true;
      }
    }
    if (!placed) form.querySelector("#nm-error").textContent = error.message;
    offerSendAgain(again, unanswered, error, send, "nm-send-again");
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const body = {
      repository: String(data.get("repository") || "").trim(),
      requirement: String(data.get("requirement") || "").trim(),
      auto_approve: data.get("auto_approve") === "on",
    };
    const branch = String(data.get("base_branch") || "").trim();
    // What the hint showed is what is sent; with no hint the broker reads the default.
    if (branch || detected) body.base_branch = branch || detected;
    const budget = String(data.get("budget_usd") || "").trim();
    if (budget) {
      const value = Number(budget);
      // Sent as typed when it is no number, so the gateway's own message explains it.
      body.budget_usd = Number.isFinite(value) ? value : budget;
    }
    Object.assign(body, choices.body());
    const write = new Write("/missions", body);
    await send(unanswered && unanswered.text === write.text ? unanswered : write);
  });
  return { form, stop: choices.start() };
}

export async function missionsPage(main, { me, navigate }) {
  const params = new URLSearchParams(location.search);
  const filters = { status: params.get("status") || "", repository: params.get("repository") || "" };
  const tbody = h("tbody", {});
  const more = h("div", { class: "more" });
  const statusSelect = h("select", { id: "filter-status", "aria-label": "Filter by status" }, h("option", { value: "" }, "Any status"), STATUSES.map((st) => h("option", { value: st }, st.replace("_", " "))));
  statusSelect.value = filters.status;
  const repoInput = h("input", { id: "filter-repository", placeholder: "Repository", "aria-label": "Filter by repository", value: filters.repository });
  const error = h("p", { class: "field-error", role: "alert" });

  let counts = {};
  let missions = [];
  let cursor = null;

  async function taskCounts(list) {
    // Merged / total for the whole page in one call.
    const ids = list.filter((m) => m.plan_version !== null).map((m) => m.id);
    if (!ids.length) return {};
    const answer = await get(`/tasks/progress?${ids.map((id) => "mission_id=" + encodeURIComponent(id)).join("&")}`);
    return answer.missions;
  }

  function draw() {
    clear(tbody);
    if (!missions.length) {
      const filtered = filters.status || filters.repository;
      const clearFilters = () => {
        statusSelect.value = "";
        repoInput.value = "";
        applyFilters();
      };
      const said = filtered
        ? ["No missions match these filters. ", h("button", { type: "button", class: "small ghost", id: "clear-filters", onclick: clearFilters }, "Show all missions")]
        : ["No missions yet.", me.canWrite ? " Submit one with the form." : ""];
      tbody.append(h("tr", {}, h("td", { colspan: 6, class: "empty", id: "missions-empty" }, said)));
    }
    for (const mission of missions) tbody.append(row(mission, counts));
    clear(more);
    if (cursor) more.append(h("button", { class: "ghost", type: "button", onclick: () => load(true) }, "Older missions"));
  }

  async function load(append = false) {
    try {
      const page = await get(`/missions${query({ status: filters.status, repository: filters.repository, limit: 50, cursor: append ? cursor : null })}`);
      missions = append ? missions.concat(page.missions) : page.missions;
      cursor = page.next_cursor;
      counts = { ...counts, ...(await taskCounts(page.missions)) };
      error.textContent = "";
      draw();
    } catch (failure) {
      error.textContent = failure.message;
    }
  }

  const applyFilters = () => {
    filters.status = statusSelect.value;
    filters.repository = repoInput.value.trim();
    history.replaceState(null, "", "/board/" + query(filters));
    load();
  };
  statusSelect.addEventListener("change", applyFilters);
  repoInput.addEventListener("change", applyFilters);

  const newMission = me.canWrite ? newMissionForm((id) => navigate(`/board/missions/${encodeURIComponent(id)}`)) : null;
  main.append(
    h(
      "div",
      { class: "missions-layout" },
      h(
        "section",
        { class: "card" },
        h("div", { class: "card-head" }, h("h1", {}, "Missions"), h("div", { class: "filters" }, statusSelect, repoInput)),
        error,
        h(
          "div",
          { class: "table-scroll" },
          h(
            "table",
            { class: "missions", id: "missions" },
            h("thead", {}, h("tr", {}, ["Status", "Mission", "Repository", "Progress", "Cost / budget", "Age"].map((t) => h("th", {}, t)))),
            tbody,
          ),
        ),
        more,
      ),
      newMission ? newMission.form : null,
    ),
  );
  // Live from the read model's position before the list is read: nothing older needs
  // replaying, nothing newer is missed.
  const position = await get("/events/position").catch(() => ({ sequence: 0 }));
  await load();
  const refresh = debounce(() => load(), 250);
  const live = new LiveStream("/events/stream", { onEvent: refresh, after: position.sequence, onReset: reloaded(load) }).start();
  const ages = setInterval(draw, 30000);
  return () => {
    live.stop();
    clearInterval(ages);
    if (newMission) newMission.stop();
  };
}
