// The new-mission form's choice of agent runtimes: one for the mission's tasks and,
// optionally, one per model tier (sent as `runtime_overrides`), among those the live
// runners have (GET /runtimes, which also names the tiers).
//
// The list is read again while the form stays open: when the tab comes back into view or
// the window gets the focus, and every REFRESH_MS while it is visible. One read at a time,
// and none within MIN_GAP_MS of the last (the gateway itself reads the runners' registry
// at most every two seconds), so focus changes cannot make a storm of requests. A runtime
// someone chose that no live runner has any more stays chosen, marked as unavailable: the
// gateway then refuses the mission with a 400 saying so, rather than the form quietly
// sending something else.

import { get } from "./api.js";
import { h, put } from "./dom.js";

export const REFRESH_MS = 15000;
const MIN_GAP_MS = 2000;

const GONE = "no live runner has it now";

function offerLabel(offer, live) {
  return `${offer.name} (${offer.runners.length} of ${live} live runner${live === 1 ? "" : "s"})`;
}

// One choice: its select, the note that says when its runtime is gone, and the slot for
// the gateway's refusal.
function choice(id, name, first, attrs = {}) {
  return {
    select: h("select", { id, name, "aria-describedby": id + "-gone", ...attrs }, h("option", { value: "" }, first)),
    gone: h("p", { class: "field-note", id: id + "-gone" }),
    error: h("p", { class: "field-error", id: id + "-error", role: "alert" }),
  };
}

export class RuntimeChoices {
  constructor() {
    this.mission = choice("nm-runtime", "runtime", "The runners' default");
    this.note = h("p", { class: "notice", id: "nm-runtime-note", role: "status", hidden: true });
    this.tierList = h("div", { class: "tier-runtimes" });
    this.tiers = h(
      "details",
      { class: "tiers", id: "nm-tiers", hidden: true },
      h("summary", { id: "nm-tiers-summary" }, "Runtime per model tier (optional)"),
      h("p", { class: "muted small" }, "The tasks the planner puts in a tier run with the runtime chosen for it instead of the one above."),
      this.tierList,
    );
    this.choices = new Map([["", this.mission]]); // tier ("" for the mission's) -> choice
    this.found = null; // the last answer of GET /runtimes
    this.failure = null; // why the last read failed (null: it did not)
    this.shown = ""; // what the options were last drawn from
    this.timer = null;
    this.busy = false;
    this.lastAt = -Infinity;
    this.stopped = true;
    this.onChange(this.mission);
    this.wake = () => {
      if (document.visibilityState !== "hidden") this.refresh();
    };
  }

  /** The form's fields: the mission's runtime, its note, and the per-tier choices. */
  fields() {
    const { select, gone, error } = this.mission;
    return [
      h(
        "div",
        { class: "field", "data-field": "runtime" },
        h("label", { for: select.id }, "Agent runtime"),
        select,
        h("small", { class: "muted" }, "The agent that works the tasks, among those the live runners have"),
        gone,
        error,
      ),
      this.note,
      this.tiers,
    ];
  }

  /** Reads the list now and keeps it fresh; what it returns stops that. */
  start() {
    this.stopped = false;
    window.addEventListener("focus", this.wake);
    document.addEventListener("visibilitychange", this.wake);
    this.refresh();
    return () => this.stop();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    window.removeEventListener("focus", this.wake);
    document.removeEventListener("visibilitychange", this.wake);
  }

  /** What the request carries: `runtime` and `runtime_overrides`, each only when chosen. */
  body() {
    const out = {};
    if (this.mission.select.value) out.runtime = this.mission.select.value;
    const overrides = {};
    for (const [tier, { select }] of this.choices) if (tier && select.value) overrides[tier] = select.value;
    if (Object.keys(overrides).length) out.runtime_overrides = overrides;
    return out;
  }

  /** Back to every runner's default, and the list read again (after a submitted mission). */
  reset() {
    for (const { select } of this.choices.values()) select.value = "";
    this.tiers.open = false;
    this.shown = "";
    this.draw();
    this.refresh();
  }

  /** Before a submit: no choice is marked as refused any more. */
  clearErrors() {
    for (const one of this.choices.values()) this.cleared(one);
  }

  /** The gateway refused runtimes no live runner has: its message beside each choice that
   * names one (the mission's when none does), every choice kept, and the list read again. */
  refused(unknown, message) {
    let placed = false;
    for (const [tier, one] of this.choices) {
      if (!one.select.value || !unknown.includes(one.select.value)) continue;
      one.error.textContent = message;
      one.select.setAttribute("aria-invalid", "true");
      if (tier) this.tiers.open = true;
      placed = true;
    }
    if (!placed) this.mission.error.textContent = message;
    this.shown = "";
    this.refresh();
  }

  /** Read the list again now, unless a read is under way (its answer will do) or was
   * made just now (then once the gap has passed). */
  async refresh() {
    if (this.stopped || this.busy) return;
    clearTimeout(this.timer);
    const gap = performance.now() - this.lastAt;
    if (gap < MIN_GAP_MS) {
      this.timer = setTimeout(() => this.refresh(), MIN_GAP_MS - gap);
      return;
    }
    this.busy = true;
    this.lastAt = performance.now();
    try {
      this.found = await get("/runtimes");
      this.failure = null;
    } catch (error) {
      this.failure = error;
    } finally {
      this.busy = false;
    }
    // A form no longer on the page (left while its page was still loading) stops here.
    if (!this.mission.select.isConnected) this.stop();
    if (this.stopped) return;
    this.draw();
    if (document.visibilityState !== "hidden") {
      // A hidden tab reads nothing: it reads again when it is shown.
      this.timer = setTimeout(() => this.refresh(), REFRESH_MS);
    }
  }

  draw() {
    const found = this.found;
    if (found && Array.isArray(found.tiers)) this.drawTiers(found.tiers);
    const chosen = [...this.choices.values()].map((one) => one.select.value);
    const key = JSON.stringify([found, chosen]);
    if (key !== this.shown) {
      // Drawn again only when something changed: a list open under someone's pointer is
      // not rebuilt for nothing.
      this.shown = key;
      for (const [tier, one] of this.choices) this.drawChoice(tier, one);
    }
    this.drawNote();
  }

  drawTiers(tiers) {
    for (const tier of tiers) {
      // Tiers become element ids: only plain names are taken.
      if (typeof tier !== "string" || !/^[a-z][a-z0-9]*$/.test(tier) || this.choices.has(tier)) continue;
      const one = choice("nm-runtime-" + tier, "runtime_overrides." + tier, "As the mission's runtime", { "data-tier": tier });
      this.choices.set(tier, one);
      this.onChange(one);
      this.tierList.append(
        h(
          "div",
          { class: "field", "data-field": "runtime_overrides." + tier },
          h("label", { for: one.select.id }, `${tier[0].toUpperCase()}${tier.slice(1)} tasks`),
          one.select,
          one.gone,
          one.error,
        ),
      );
    }
    this.tiers.hidden = this.choices.size < 2;
  }

  drawChoice(tier, { select, gone }) {
    const chosen = select.value;
    const found = this.found;
    const offers = found ? found.runtimes : [];
    const live = found ? found.runners.length : 0;
    let first = tier ? "As the mission's runtime" : "The runners' default";
    if (!tier && found) {
      const defaults = [...new Set(found.runners.map((runner) => runner.default_runtime).filter(Boolean))];
      if (defaults.length === 1) first = `The runners' default (${defaults[0]})`;
      else if (defaults.length) first = `Each runner's default (${defaults.join(", ")})`;
    }
    // A choice the live runners no longer have stays chosen and says so (with no runner
    // live at all, nothing is checked: the mission is kept, with a warning).
    const missing = Boolean(chosen) && !offers.some((offer) => offer.name === chosen);
    put(
      select,
      h("option", { value: "" }, first),
      offers.map((offer) => h("option", { value: offer.name }, offerLabel(offer, live))),
      missing ? h("option", { value: chosen, "data-unavailable": true }, `${chosen} (unavailable)`) : null,
    );
    select.value = chosen;
    select.classList.toggle("unavailable", missing);
    gone.textContent = missing ? `${chosen} is unavailable: ${GONE}. Choose another, or the mission is refused unless a runner that has it comes back.` : "";
    if (missing && tier) this.tiers.open = true;
  }

  drawNote() {
    const note = this.note;
    if (this.failure) {
      const shown = this.found ? "the choices shown are those read last" : "the mission runs with the runners' default";
      note.textContent = `The runners' runtimes could not be read (${this.failure.message}): ${shown}.`;
      note.hidden = false;
      return;
    }
    const live = this.found ? this.found.runners.length : 0;
    note.textContent = live ? "" : "No agent runner is live now: the mission is kept, and its tasks wait for a runner and run with that runner's default runtime.";
    note.hidden = live > 0;
  }

  cleared({ select, error }) {
    error.textContent = "";
    select.removeAttribute("aria-invalid");
  }

  onChange(one) {
    one.select.addEventListener("change", () => {
      // A new choice answers the refusal beside it (and is no longer unavailable).
      this.cleared(one);
      this.draw();
    });
  }
}
