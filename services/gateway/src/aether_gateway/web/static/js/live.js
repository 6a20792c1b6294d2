// Server-Sent Events over fetch (so the token travels in a header, not in the URL, and
// a refusal's Retry-After can be read, which EventSource cannot), resuming after a drop
// with Last-Event-ID: the gateway replays what was missed, and anything at or below the
// last id seen is dropped, so nothing is missed or doubled.

import { get, retryAfterSeconds, token, signedOut } from "./api.js";

const listeners = new Set();
const noticeListeners = new Set();
const pauseListeners = new Set();

// How long the stream waits before it is opened again. A refusal that says when (a 429:
// too many streams open, the read limit; a 503 with Retry-After) is asked again no
// sooner than that, plus up to a fifth more (at most JITTER_MS) so that the tabs it
// refused together do not all come back in the same instant; a wait longer than
// LONGEST_WAIT_MS is cut to it, so a page never stays frozen for hours on one answer
// (it is refused again, saying when, if it is still too soon). A drop or a refusal that
// does not say when backs off from FIRST_BACKOFF_MS, doubling up to LONGEST_BACKOFF_MS,
// each wait between half and all of it. The backoff starts again only after a
// connection that was worth it: one that delivered an event or stayed up STABLE_MS. A
// stream that is answered and then drops at once (a gateway shutting down, a proxy
// cutting it) backs off as a refusal does, rather than being opened every half second.
const FIRST_BACKOFF_MS = 500;
const LONGEST_BACKOFF_MS = 5000;
const STABLE_MS = 10_000;
const LONGEST_WAIT_MS = 300_000;
const JITTER_MS = 10_000;
// A wait at least this long is told to the person ("Live updates paused; …"); a shorter
// one is a blink the live indicator shows.
const PAUSE_NOTICE_MS = 1000;

/**
 * How long to wait (ms) before opening the stream again: ``retryAfter`` the seconds the
 * gateway said (null: it did not say), ``backoff`` the current backoff (ms), ``random``
 * a number in [0, 1).
 */
export function reconnectDelay(retryAfter, backoff, random = Math.random()) {
  if (retryAfter !== null && retryAfter !== undefined && Number.isFinite(retryAfter)) {
    const said = Math.min(Math.max(retryAfter * 1000, 250), LONGEST_WAIT_MS);
    return said + random * Math.min(said / 5, JITTER_MS);
  }
  return backoff / 2 + (random * backoff) / 2;
}

// The event types an event may carry (an attempt's result its start and usage, a task's
// readiness the waves decided with it). The gateway sends a carried event without an id,
// right before the event with its message's sequence as id (the one that carries it, or
// the last carried one a type filter lets through): it is held until then and applied
// with that sequence, or dropped with it when seen already.
const CARRIED = new Set(["agent_started", "usage_recorded", "wave_completed", "wave_started"]);

/**
 * How long pages take to apply live events and to redraw from the read model: kept for
 * anyone who asks (the benchmark in bench/board.py reads it), bounded in size.
 */
export const stats = (window.aetherBoard = window.aetherBoard || { applied: 0, applyMs: [], redraws: 0, redrawMs: [] });

export function record(kind, ms) {
  const list = kind === "apply" ? stats.applyMs : stats.redrawMs;
  if (kind === "apply") stats.applied += 1;
  else stats.redraws += 1;
  if (list.length >= 5000) list.shift();
  list.push(ms);
}
let current = null;

/** Subscribe to the status of the page's live stream ("live", "reconnecting", "closed"). */
export function onLiveState(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function announce(state) {
  for (const fn of listeners) fn(state);
}

/** Subscribe to short notices about the live stream (shown to the person for a while). */
export function onLiveNotice(fn) {
  noticeListeners.add(fn);
  return () => noticeListeners.delete(fn);
}

function notify(text) {
  for (const fn of noticeListeners) fn(text);
}

/** Subscribe to the live stream's pauses: ``fn(until)`` with the time (ms since the
 * epoch) it is opened again, or null once it is live again or closed. */
export function onLivePause(fn) {
  pauseListeners.add(fn);
  return () => pauseListeners.delete(fn);
}

function paused(until) {
  for (const fn of pauseListeners) fn(until);
}

/**
 * A page's ``onReset`` that reads the read model's position, then loads the page with
 * ``load``, and answers that position: events after it are replayed, none is missed.
 */
export function reloaded(load) {
  return async () => {
    const position = await get("/events/position");
    await load();
    return position.sequence;
  };
}

export const RESET_NOTICE = "The event stream was reset: this page was loaded again and follows it from now on.";

export class LiveStream {
  /**
   * @param {string} path  an event-stream route, e.g. /missions/<id>/events
   * @param {object} opts  onEvent(event), telemetry (bool), after (resume point),
   *   onReset() (the stream no longer has the resume point: load the page's state again
   *   from the REST API; may answer the read model's position to follow from)
   */
  constructor(path, { onEvent, onTelemetry = null, telemetry = false, after = 0, onReset = null }) {
    this.path = path;
    this.onEvent = onEvent;
    this.onReset = onReset;
    this.resetting = false;
    this.onTelemetry = onTelemetry;
    this.telemetry = telemetry;
    this.lastId = after;
    this.carried = [];
    this.closed = false;
    this.controller = null;
    this.retry = FIRST_BACKOFF_MS;
    this.connections = 0;
    this.openedAt = null; // when the current connection was answered (performance.now())
    this.delivered = false; // whether it has delivered an event
    this.wake = null; // ends the wait before the next connection (on stop)
  }

  start() {
    if (current && current !== this) current.stop();
    current = this;
    this.loop();
    return this;
  }

  stop() {
    this.closed = true;
    if (this.controller) this.controller.abort();
    if (this.wake) this.wake();
    if (current === this) {
      current = null;
      paused(null);
      announce("closed");
    }
  }

  async loop() {
    while (!this.closed) {
      let retryAfter = null;
      this.openedAt = null;
      this.delivered = false;
      try {
        await this.connect();
      } catch (error) {
        if (this.closed) return;
        if (error && error.retryAfter !== undefined) retryAfter = error.retryAfter;
        if (error && error.status === 401) {
          signedOut(error.message);
          return;
        }
        if (error && error.status === 400 && Number.isInteger(error.newest)) {
          // The stream was reset (a new store): the resume point is past its newest
          // event and asking again with it is refused for ever. Start over from the
          // current point, once at once; a reset that repeats waits its backoff.
          const again = this.resetting;
          this.resetting = true;
          await this.reset(error.newest);
          if (this.closed) return;
          if (!again) continue;
        }
      }
      if (this.closed) return;
      if (this.openedAt !== null && (this.delivered || performance.now() - this.openedAt >= STABLE_MS)) {
        this.retry = FIRST_BACKOFF_MS;
      }
      announce("reconnecting");
      await this.pause(reconnectDelay(retryAfter, this.retry));
      this.retry = Math.min(this.retry * 2, LONGEST_BACKOFF_MS);
    }
  }

  /** Wait ``ms`` before the next connection (less if the stream is stopped meanwhile),
   * saying so when it is long enough to notice. */
  async pause(ms) {
    const told = ms >= PAUSE_NOTICE_MS && current === this;
    if (told) paused(Date.now() + ms);
    try {
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, ms);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    } finally {
      this.wake = null;
      if (told && current === this) paused(null);
    }
  }

  async connect() {
    if (!token()) {
      this.stop();
      return;
    }
    this.controller = new AbortController();
    const headers = { Accept: "text/event-stream", Authorization: "Bearer " + token() };
    if (this.lastId) headers["Last-Event-ID"] = String(this.lastId);
    const url = this.path + (this.telemetry ? (this.path.includes("?") ? "&" : "?") + "telemetry=true" : "");
    const response = await fetch(url, { headers, signal: this.controller.signal, cache: "no-store" });
    if (!response.ok || !response.body) {
      let message = `the event stream answered ${response.status}`;
      let detail = null;
      try {
        const body = await response.json();
        message = body.error || message;
        detail = body.detail;
      } catch {
        /* not JSON: keep the status */
      }
      const error = new Error(message);
      error.status = response.status;
      error.retryAfter = retryAfterSeconds(response.headers.get("Retry-After"));
      // A resume point past the stream's newest event: the answer names the newest.
      if (detail && detail.key === "Last-Event-ID") error.newest = detail.newest;
      throw error;
    }
    this.connections += 1;
    this.openedAt = performance.now();
    this.resetting = false;
    this.carried = []; // a message cut by the drop comes again whole
    announce("live");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        this.dispatch(block);
      }
    }
  }

  /**
   * Drop the resume point the stream refused, have the page load its state again from
   * the REST API, and follow from the current point: the page's new snapshot position
   * when the stream has it (events after it are replayed), else the stream's newest.
   */
  async reset(newest) {
    this.lastId = 0;
    this.carried = [];
    notify(RESET_NOTICE);
    let from = null;
    if (this.onReset) {
      try {
        from = await this.onReset();
      } catch {
        from = null; // the page stays as drawn; the next events redraw it
      }
    }
    this.lastId = Number.isInteger(from) && from >= 0 && from <= newest ? from : Math.max(0, newest);
  }

  dispatch(block) {
    let id = null;
    let type = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "id") id = value;
      else if (field === "event") type = value;
      else if (field === "data") data.push(value);
    }
    if (!data.length) return;
    let payload;
    try {
      payload = JSON.parse(data.join("\n"));
    } catch {
      return;
    }
    if (id === null && CARRIED.has(type)) {
      this.carried.push([type, payload]);
      return;
    }
    // The gateway's word that it ends the stream is not an event delivered.
    if (type !== "stream_ended") this.delivered = true;
    if (id === null) {
      // Telemetry: no id, not replayed, never moves the resume point.
      if (this.onTelemetry) this.onTelemetry(type, payload);
      return;
    }
    const seq = Number(id);
    const carried = this.carried;
    this.carried = [];
    if (!(seq > this.lastId)) return; // seen already
    this.lastId = seq;
    for (const [carriedType, carriedPayload] of carried) this.apply(carriedType, carriedPayload, seq);
    this.apply(type, payload, seq);
  }

  apply(type, payload, seq) {
    const started = performance.now();
    this.onEvent(type, payload, seq);
    record("apply", performance.now() - started);
  }
}
