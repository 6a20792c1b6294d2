// An agent's transcript on the task page: every model turn, tool call (arguments and an
// excerpt of its result) and command (exit status and output) of each attempt, from the
// gateway's durable record, then live as the runner publishes each entry. Entries are
// keyed by attempt and sequence, so one that comes both from a page and live is drawn
// once, and a page asked for after a reconnect fills whatever the drop missed.
//
// A flooded transcript (an attempt may publish tens of thousands of entries) is drawn
// SHOWN entries at a time: past them a button draws the next ones, and live entries wait
// for it. An entry after the last one drawn is appended without a look at the others.
//
// The gateway keeps at most so many entries of one attempt (AETHER_TRANSCRIPT_MAX_ENTRIES)
// and counts the rest: every page says, by attempt, how many it did not keep, and while
// entries arrive live the card asks for those counts again (at most every COUNT_MS), so
// it says so as an attempt floods past the cap, not only after a reload.

import { get } from "./api.js";
import { h, money, tokens } from "./dom.js";

const LABEL = {
  prompt: "task prompt",
  turn: "model turn",
  tool_call: "tool call",
  command: "command",
  note: "note",
  output: "output",
};

// The most entries one load draws (a multiple of the gateway's page of 500).
export const SHOWN = 2000;

// How often, at most, the counts of entries the gateway did not keep are asked for again
// while entries arrive live (one small read; the gateway stores an entry a moment after
// the board sees it, so the ask waits that long after the first entry it follows).
export const COUNT_MS = 1500;

// A sequence after every entry of an attempt: a page asked for after it holds no entry,
// only the attempt's count of entries not kept.
const AFTER_ALL = "9223372036854775807";

/** What the card says of an attempt whose ``entries`` the gateway did not keep. */
export function droppedLine(attempt, entries) {
  const count = `${entries.toLocaleString()} ${entries === 1 ? "entry" : "entries"}`;
  return `Attempt ${attempt}: ${count} not kept by the gateway, past the most it keeps of one attempt (AETHER_TRANSCRIPT_MAX_ENTRIES); only the entries before ${entries === 1 ? "it" : "them"} are stored`;
}

function pretty(args) {
  if (!args) return "";
  try {
    return JSON.stringify(JSON.parse(args), null, 2);
  } catch {
    return args; // a CLI agent's command line, or an excerpt cut mid-JSON
  }
}

function block(cls, text, open = false) {
  if (!text) return null;
  const lines = text.split("\n").length;
  if (lines <= 6 && text.length <= 400) return h("pre", { class: cls }, text);
  const first = text.split("\n")[0].slice(0, 120);
  return h("details", { class: cls, open }, h("summary", {}, `${first} … (${lines} lines)`), h("pre", {}, text));
}

function usageLine(usage) {
  if (!usage) return null;
  const parts = [`${tokens(usage.input_tokens)} in`, `${tokens(usage.output_tokens)} out`];
  if (usage.cache_read_input_tokens) parts.push(`${tokens(usage.cache_read_input_tokens)} cached`);
  if (usage.cost_usd !== null && usage.cost_usd !== undefined) parts.push(money(usage.cost_usd, 4));
  return h("span", { class: "usage" }, parts.join(" · "));
}

// Every runtime but the built-in loop numbers one run's entries without a hole, each run
// from a multiple of this (``aether_events.TRANSCRIPT_RUN_STRIDE``); the built-in loop's
// numbers are its journal's records, some of which show nothing.
const RUN_STRIDE = 1000000;
const UNNUMBERED = new Set(["", "builtin"]);

/**
 * How many entries of ``entry``'s run are missing just before it, after ``previous``
 * (the entry held before it, or null), as the gateway's ``missing_before`` counts them:
 * dropped by the telemetry stream before the gateway stored them. None is told for the
 * built-in loop, nor at a run's end.
 */
export function missingBefore(entry, previous) {
  if (UNNUMBERED.has(entry.runtime || "")) return 0;
  const runStart = entry.sequence - (entry.sequence % RUN_STRIDE);
  if (previous && previous.attempt === entry.attempt && previous.sequence >= runStart) return Math.max(entry.sequence - previous.sequence - 1, 0);
  return entry.sequence - runStart;
}

/** One entry as a list item (``entry`` as the route or the live event gives it). */
export function entryItem(entry) {
  const kind = entry.kind;
  const head = [h("span", { class: "kind" }, LABEL[kind] || kind)];
  const body = [];
  if (kind === "turn") {
    if (entry.tool) head.push(h("span", { class: "tool" }, "asks: " + entry.tool));
    if (entry.stop_reason) head.push(h("span", { class: "muted" }, `(${entry.stop_reason})`));
    head.push(usageLine(entry.usage));
    body.push(entry.text ? h("p", { class: "says wrap" }, entry.text) : null);
  } else if (kind === "tool_call" || kind === "command") {
    head.push(h("span", { class: "tool" }, entry.tool));
    if (kind === "command") {
      const ok = entry.exit_code === 0;
      const status = entry.exit_code === null || entry.exit_code === undefined ? entry.status || "did not exit" : `exit ${entry.exit_code}`;
      head.push(h("span", { class: "exit " + (ok ? "ok" : "bad"), title: entry.status || "" }, status));
    } else if (entry.is_error) {
      head.push(h("span", { class: "exit bad" }, "error"));
    }
    body.push(block("args", pretty(entry.arguments)));
    body.push(block("result", entry.result));
  } else {
    if (entry.tool) head.push(h("span", { class: "tool" }, entry.tool));
    body.push(block("text", entry.text, kind === "output"));
  }
  if (entry.truncated) head.push(h("span", { class: "cut", title: "the runner kept an excerpt" }, "excerpt"));
  return h(
    "li",
    { class: "entry e-" + kind, "data-attempt": entry.attempt, "data-seq": entry.sequence, "data-kind": kind, "data-runtime": entry.runtime || "" },
    h("div", { class: "entry-head" }, ...head),
    ...body,
  );
}

export class TranscriptView {
  constructor(missionBase, taskId) {
    this.url = `${missionBase}/tasks/${encodeURIComponent(taskId)}/transcript`;
    this.taskId = taskId;
    this.list = h("ol", { class: "agent-transcript", id: "agent-transcript" });
    this.more = h("button", { type: "button", class: "secondary", id: "transcript-more", hidden: true, onclick: () => this.load() }, "Show the next entries");
    // By attempt, the entries the gateway did not keep (its cap on one attempt's).
    this.notes = h("ul", { class: "dropped-notes", id: "transcript-dropped", hidden: true });
    this.el = h("section", { class: "card", id: "transcript-card" }, h("h2", {}, "Agent transcript"), this.notes, this.list, h("div", { class: "more" }, this.more));
    this.dropped = new Map();
    this.countTimer = null;
    this.countFor = new Set();
    this.seen = new Set();
    this.last = { after_attempt: 0, after: -1 };
    this.loading = null;
    this.empty = null;
    // Whether every stored entry up to now is drawn (live entries are drawn only then).
    this.complete = false;
  }

  /** Fetch the entries after the last one held, at most SHOWN of them. */
  load() {
    // One page run at a time: a reconnect while the first load runs waits for it.
    // A failed load (the gateway restarting) must not stop the ones after it.
    this.loading = (this.loading || Promise.resolve()).catch(() => {}).then(() => this.pages());
    return this.loading;
  }

  /** What the page asks for on a reconnect and every few seconds: the entries it may
   * have missed, unless the next ones wait for the button. */
  catchUp() {
    return this.more.hidden ? this.load() : this.counts(null);
  }

  /** What the page asks for on a reconnect: entries stored late into a gap of what is
   * drawn (the telemetry stream's order is not the attempt's) that came while the page
   * did not follow the stream. Telemetry is not replayed, and ``catchUp`` asks only after
   * the last entry drawn, so they are asked for again from the entry before the first
   * gap up to the last drawn, at most SHOWN of them. */
  refill() {
    this.loading = (this.loading || Promise.resolve()).catch(() => {}).then(() => this.refillPages());
    return this.loading;
  }

  async refillPages() {
    const gap = this.list.querySelector("li.gap-mark");
    if (!gap) return;
    let before = gap.previousElementSibling;
    while (before && !before.classList.contains("entry")) before = before.previousElementSibling;
    let cursor = before ? { after_attempt: Number(before.dataset.attempt), after: Number(before.dataset.seq) } : null;
    const last = this.last;
    for (let asked = 0; asked < SHOWN; ) {
      const query = cursor ? `?after_attempt=${cursor.after_attempt}&after=${cursor.after}` : "";
      const page = await get(this.url + query);
      for (const entry of page.entries) {
        // Past the last drawn: the catch-up's, or the button's, to draw.
        if (entry.attempt > last.after_attempt || (entry.attempt === last.after_attempt && entry.sequence > last.after)) return;
        this.add(entry, false);
      }
      asked += page.entries.length;
      if (!page.next) return;
      cursor = page.next;
    }
  }

  /** Ask for the counts of entries the gateway did not keep: of ``attempt``, or of every
   * attempt (null). A page after every entry holds only the counts. */
  async counts(attempt) {
    const query = attempt === null ? `?after_attempt=2147483647&after=${AFTER_ALL}&limit=1` : `?attempt=${attempt}&after=${AFTER_ALL}&limit=1`;
    const page = await get(this.url + query);
    this.noteDropped(page.dropped);
  }

  /** Ask for the counts again soon, for the attempt of an entry just seen live: once
   * every COUNT_MS at most, however fast entries arrive. */
  countSoon(attempt) {
    this.countFor.add(attempt);
    if (this.countTimer !== null) return;
    this.countTimer = setTimeout(async () => {
      const attempts = [...this.countFor];
      this.countFor.clear();
      try {
        for (const each of attempts) await this.counts(each).catch(() => {});
      } finally {
        this.countTimer = null;
      }
    }, COUNT_MS);
  }

  stop() {
    clearTimeout(this.countTimer);
  }

  /** Say, by attempt, how many entries the gateway did not keep (``dropped`` as the
   * route gives it). A count only grows: an older answer never takes a newer one back. */
  noteDropped(dropped) {
    let changed = false;
    for (const { attempt, entries } of dropped || []) {
      if (entries > (this.dropped.get(attempt) || 0)) {
        this.dropped.set(attempt, entries);
        changed = true;
      }
    }
    if (!changed) return;
    const lines = [...this.dropped.entries()].sort((a, b) => a[0] - b[0]);
    this.notes.replaceChildren(...lines.map(([attempt, entries]) => h("li", { class: "dropped-note", "data-attempt": attempt, "data-dropped": entries }, droppedLine(attempt, entries))));
    this.notes.hidden = false;
  }

  async pages() {
    let cursor = this.last.after < 0 ? null : this.last;
    let drawn = 0;
    this.complete = false;
    for (;;) {
      const query = cursor ? `?after_attempt=${cursor.after_attempt}&after=${cursor.after}` : "";
      const page = await get(this.url + query);
      this.noteDropped(page.dropped);
      // One layout for the page, not one an entry (reading the scroll position after
      // each insert would lay the whole list out again every time).
      const stick = this.atEnd();
      for (const entry of page.entries) this.add(entry, false);
      if (stick) this.list.scrollTop = this.list.scrollHeight;
      drawn += page.entries.length;
      if (!page.next) break;
      cursor = page.next;
      if (drawn >= SHOWN) {
        // The rest waits for the button (it goes on from the last entry drawn).
        this.more.hidden = false;
        return;
      }
    }
    this.complete = true;
    this.more.hidden = true;
    if (!this.list.childElementCount) {
      this.empty = h("li", { class: "muted empty-line" }, "No agent has recorded anything for this task yet.");
      this.list.append(this.empty);
    }
  }

  /** A ``transcript_recorded`` event seen live. */
  live(event) {
    if (event.task_id !== this.taskId) return;
    // Whether the gateway kept it is known only once it has stored it: asked soon.
    this.countSoon(event.attempt);
    // Past what is drawn while a load runs or the rest waits for the button: that load,
    // or the button's, fetches it in its place. One before the last drawn (a late entry
    // into a gap) no load would fetch again: drawn now.
    const beyond = event.attempt > this.last.after_attempt || (event.attempt === this.last.after_attempt && event.sequence > this.last.after);
    if (beyond && (!this.complete || !this.more.hidden)) return;
    // Past the last entry drawn of an attempt the gateway has stopped keeping (every
    // stored entry is drawn): not stored, so not drawn either; a flood past the cap must
    // not grow the page without end, and a reload would not show it.
    if (beyond && this.dropped.get(event.attempt)) return;
    this.add(event);
  }

  atEnd() {
    return this.list.scrollTop + this.list.clientHeight >= this.list.scrollHeight - 8;
  }

  /** Draw ``entry`` in its place (once); ``follow``: keep the list scrolled to its end if
   * it was. */
  add(entry, follow = true) {
    const key = `${entry.attempt}:${entry.sequence}`;
    if (this.seen.has(key)) return;
    this.seen.add(key);
    if (this.empty) {
      this.empty.remove();
      this.empty = null;
    }
    if (entry.attempt > this.last.after_attempt || (entry.attempt === this.last.after_attempt && entry.sequence > this.last.after)) {
      this.last = { after_attempt: entry.attempt, after: entry.sequence };
    }
    const item = entryItem(entry);
    const stick = follow && this.atEnd();
    const tail = this.list.lastElementChild;
    if (!tail || tail.classList.contains("empty-line") || Number(tail.dataset.attempt) < entry.attempt || (Number(tail.dataset.attempt) === entry.attempt && Number(tail.dataset.seq) < entry.sequence)) {
      // After every entry drawn (a page's, or a live one in order): no look at the rest.
      if (!tail || Number(tail.dataset.attempt) !== entry.attempt) {
        this.list.append(h("li", { class: "attempt-mark", "data-attempt": entry.attempt, "data-seq": -1 }, `Attempt ${entry.attempt}`));
      }
      this.list.append(item);
      // Entries missing just before it: a look at the one entry before it alone.
      this.markGap(item);
      if (stick) this.list.scrollTop = this.list.scrollHeight;
      return;
    }
    // In (attempt, sequence) order: an entry can arrive live before an older one's page.
    let before = null;
    for (const other of this.list.children) {
      const a = Number(other.dataset.attempt);
      const s = Number(other.dataset.seq);
      if (a > entry.attempt || (a === entry.attempt && s > entry.sequence)) {
        before = other;
        break;
      }
    }
    if (!this.list.querySelector(`[data-attempt="${entry.attempt}"]`)) {
      const mark = h("li", { class: "attempt-mark", "data-attempt": entry.attempt, "data-seq": -1 }, `Attempt ${entry.attempt}`);
      this.list.insertBefore(mark, before);
    }
    this.list.insertBefore(item, before);
    // The gap before it, and the one before the entry after it, may have changed.
    this.markGap(item);
    let next = item.nextElementSibling;
    while (next && !next.classList.contains("entry")) next = next.nextElementSibling;
    if (next) this.markGap(next);
    if (stick) this.list.scrollTop = this.list.scrollHeight;
  }

  /** Say, just before the entry ``el``, how many entries of its run are missing there. */
  markGap(el) {
    let previous = el.previousElementSibling;
    if (previous && previous.classList.contains("gap-mark")) {
      const stale = previous;
      previous = previous.previousElementSibling;
      stale.remove();
    }
    while (previous && !previous.classList.contains("entry")) previous = previous.previousElementSibling;
    const at = (item) => ({ attempt: Number(item.dataset.attempt), sequence: Number(item.dataset.seq), runtime: item.dataset.runtime });
    const missing = missingBefore(at(el), previous ? at(previous) : null);
    if (!missing) return;
    const said = `${missing.toLocaleString()} ${missing === 1 ? "entry" : "entries"} missing: the telemetry stream dropped ${missing === 1 ? "it" : "them"} before the gateway stored ${missing === 1 ? "it" : "them"}`;
    const mark = h("li", { class: "gap-mark", "data-attempt": el.dataset.attempt, "data-seq": Number(el.dataset.seq) - 0.5, "data-missing": missing }, said);
    this.list.insertBefore(mark, el);
  }
}
