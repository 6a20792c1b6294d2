// Server-Sent Events over fetch (so the token travels in a header, not in the URL),
// resuming after a drop with Last-Event-ID: the gateway replays what was missed, and
// anything at or below the last id seen is dropped, so nothing is missed or doubled.

import { token, signedOut } from "./api.js";

const listeners = new Set();

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

export class LiveStream {
  /**
   * @param {string} path  an event-stream route, e.g. /missions/<id>/events
   * @param {object} opts  onEvent(event), telemetry (bool), after (resume point)
   */
  constructor(path, { onEvent, onTelemetry = null, telemetry = false, after = 0 }) {
    this.path = path;
    this.onEvent = onEvent;
    this.onTelemetry = onTelemetry;
    this.telemetry = telemetry;
    this.lastId = after;
    this.carried = [];
    this.closed = false;
    this.controller = null;
    this.retry = 500;
    this.connections = 0;
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
    if (current === this) {
      current = null;
      announce("closed");
    }
  }

  async loop() {
    while (!this.closed) {
      try {
        await this.connect();
      } catch (error) {
        if (this.closed) return;
        if (error && error.status === 401) {
          signedOut(error.message);
          return;
        }
      }
      if (this.closed) return;
      announce("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, this.retry));
      this.retry = Math.min(this.retry * 2, 5000);
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
      try {
        message = (await response.json()).error || message;
      } catch {
        /* not JSON: keep the status */
      }
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    this.connections += 1;
    this.retry = 500;
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
