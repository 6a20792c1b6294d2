// The gateway's REST API, with the token from the browser session.

const KEY = "aether.token";
const KIND = "aether.signin";
const EXPIRES = "aether.expires";
const RENEW = "aether.renew";
let signedOutHandler = () => {};
const retryListeners = new Set();

// A read answered "try again shortly" (429: a rate limit; 503: the identity provider, the
// database or the bus away for now) is asked again once its Retry-After has passed, when
// that is at most RETRY_SECONDS away, in READ_TRIES tries at most; a write never is.
const READ_TRIES = 4;
const RETRY_SECONDS = 10;
const TRY_AGAIN = new Set([429, 503]);

/** The seconds a Retry-After header says to wait (a number or an HTTP date), or null. */
export function retryAfterSeconds(header, now = Date.now()) {
  if (header === null || header === undefined || String(header).trim() === "") return null;
  const text = String(header).trim();
  if (/^\d+(\.\d+)?$/.test(text)) return Number(text);
  const at = Date.parse(text);
  return Number.isNaN(at) ? null : Math.max(0, (at - now) / 1000);
}

/** When to try again, said for a person: in a few seconds, or at a time of day. */
function whenAgain(seconds) {
  if (seconds < 90) return `try again in ${Math.max(1, Math.ceil(seconds))} s`;
  const at = new Date(Date.now() + seconds * 1000);
  const clock = at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return at.toDateString() === new Date().toDateString() ? `try again at ${clock}` : `try again on ${at.toLocaleString()}`;
}

export class ApiError extends Error {
  constructor(status, body, retryAfter = null) {
    const said = (body && body.error) || `HTTP ${status}`;
    // "Try again shortly" answers say when: the gateway's own words give seconds (or
    // none), which read badly for an hour away.
    super(TRY_AGAIN.has(status) && retryAfter !== null ? `${said.replace(/;?\s*try again( in \d+ s)?$/, "")}; ${whenAgain(retryAfter)}` : said);
    this.status = status;
    this.body = body || {};
    this.retryAfter = retryAfter;
  }

  /** The message with the reason the gateway gave beside it (a 404's "why"), if any. */
  explained() {
    const detail = this.body.detail;
    const reason = detail && typeof detail === "object" && typeof detail.reason === "string" ? detail.reason : "";
    return reason && !this.message.includes(reason) ? `${this.message}: ${reason}` : this.message;
  }

  /** The field an error names, if any (a 400 from the gateway's validation). */
  fields() {
    const detail = this.body.detail;
    const out = {};
    const items = Array.isArray(detail) ? detail : detail && Array.isArray(detail.extra) ? detail.extra : [];
    for (const item of items) {
      if (item && item.key) out[item.key.replace(/^body\./, "")] = item.message || this.message;
    }
    if (detail && typeof detail === "object" && !Array.isArray(detail) && detail.key) {
      out[detail.key] = this.message;
    }
    return out;
  }
}

export function token() {
  return sessionStorage.getItem(KEY);
}

/** Keep the token; an OIDC session also keeps when it ends (seconds since the epoch) and
 * what renews it (the provider's refresh token, if it gave one). */
export function setToken(value, { kind = "token", expiresAt = null, renew = null } = {}) {
  sessionStorage.setItem(KEY, value);
  sessionStorage.setItem(KIND, kind);
  if (expiresAt) sessionStorage.setItem(EXPIRES, String(expiresAt));
  else sessionStorage.removeItem(EXPIRES);
  if (renew) sessionStorage.setItem(RENEW, renew);
  else sessionStorage.removeItem(RENEW);
}

/** How the tab signed in ("token" or "oidc"), when that ends (null: not known) and what
 * renews it (null: nothing; the session ends with its token). */
export function session() {
  const expires = Number(sessionStorage.getItem(EXPIRES));
  return {
    kind: sessionStorage.getItem(KIND) || "token",
    expiresAt: expires > 0 ? expires : null,
    renew: sessionStorage.getItem(RENEW),
  };
}

export function forgetToken() {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(KIND);
  sessionStorage.removeItem(EXPIRES);
  sessionStorage.removeItem(RENEW);
  sessionStorage.removeItem("aether.me");
}

export function onSignedOut(handler) {
  signedOutHandler = handler;
}

/** A revoked or unknown token: back to sign-in. */
export function signedOut(reason) {
  // Several requests in flight may each be refused: the first says why.
  if (!token()) return;
  forgetToken();
  signedOutHandler(reason);
}

/** Subscribe to reads waiting to be asked again: ``fn(until)`` with the time (ms since the
 * epoch) the last of them is asked again, or null once none waits. */
export function onRetrying(fn) {
  retryListeners.add(fn);
  return () => retryListeners.delete(fn);
}

const waiting = new Map(); // a read waiting -> when it is asked again
let waitingId = 0;

function announceRetrying() {
  const until = waiting.size ? Math.max(...waiting.values()) : null;
  for (const fn of retryListeners) fn(until);
}

async function waitToRetry(seconds) {
  const id = ++waitingId;
  waiting.set(id, Date.now() + seconds * 1000);
  announceRetrying();
  try {
    await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  } finally {
    waiting.delete(id);
    announceRetrying();
  }
}

export async function call(method, path, body, options = {}) {
  const read = method === "GET" || method === "HEAD";
  for (let tries = 1; ; tries++) {
    try {
      return await callOnce(method, path, body, options);
    } catch (error) {
      const again = read && error instanceof ApiError && TRY_AGAIN.has(error.status) && error.retryAfter !== null && error.retryAfter <= RETRY_SECONDS && tries < READ_TRIES;
      if (!again) throw error;
      await waitToRetry(Math.max(error.retryAfter, 0.25));
    }
  }
}

/** No answer from the gateway (the connection refused or cut): a write sent so may or
 * may not have reached it. */
export class NetworkError extends Error {
  constructor(cause, write = false) {
    super(write ? "no answer from the gateway: the request may or may not have reached it" : "no answer from the gateway");
    this.status = 0;
    this.cause = cause;
  }
}

async function callOnce(method, path, body, { auth = token(), quiet401 = false, key = null, text: sent = undefined } = {}) {
  const headers = { Accept: "application/json" };
  if (auth) headers.Authorization = "Bearer " + auth;
  const payload = sent !== undefined ? sent : body === undefined ? undefined : JSON.stringify(body);
  if (payload !== undefined) headers["Content-Type"] = "application/json";
  if (key) headers["Idempotency-Key"] = key;
  let response;
  let text;
  try {
    response = await fetch(path, { method, headers, body: payload });
    text = await response.text();
  } catch (error) {
    throw new NetworkError(error, method !== "GET" && method !== "HEAD");
  }
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { error: text.slice(0, 500) };
    }
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data, retryAfterSeconds(response.headers.get("Retry-After")));
    if (response.status === 401 && !quiet401) signedOut(error.message);
    throw error;
  }
  return data;
}

export const get = (path) => call("GET", path);

/** A fresh Idempotency-Key: 128 random bits (``crypto.getRandomValues``, which a page
 * served over plain HTTP has too, unlike ``crypto.randomUUID``). */
export function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return "board-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * A write the board sends (a command's POST), with an Idempotency-Key of its own. Sent
 * again, it is the same request: the same path, the same bytes and the same key, so the
 * gateway answers a copy of one that did reach it with that one's answer and does not
 * act twice. Never sent again by itself: only when the person asks (``mayResend``).
 */
export class Write {
  constructor(path, body = {}) {
    this.path = path;
    this.text = JSON.stringify(body);
    this.key = newKey();
    this.sends = 0;
  }

  send() {
    this.sends += 1;
    return callOnce("POST", this.path, undefined, { text: this.text, key: this.key });
  }

  /** Whether sending it again may go otherwise than ``error``: no answer at all (it may
   * not have arrived), a timeout (408), "try again shortly" (429, 503, a 409 with
   * Retry-After: the first copy under its key still running) or another 5xx. Any other
   * 4xx would be refused the same way again. */
  static mayResend(error) {
    if (error instanceof NetworkError) return true;
    if (!(error instanceof ApiError)) return false;
    const status = error.status;
    return status === 408 || status === 429 || status >= 500 || (status === 409 && error.retryAfter !== null);
  }
}

/** Send a write once (a fresh Idempotency-Key each call; keep a ``Write`` to send the
 * same one again). */
export const post = (path, body = {}) => new Write(path, body).send();

/** Who holds the token, and whether they may command (``write``) or only look. */
export async function whoami(auth = token()) {
  return withRights(await call("GET", "/auth/whoami", undefined, { auth, quiet401: true }));
}

/** ``me`` with ``canWrite``: whether its scopes allow commands. */
export function withRights(me) {
  me.canWrite = me.scopes.includes("write") || me.scopes.includes("admin");
  return me;
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === null || value === undefined || value === "") continue;
    q.append(key, String(value));
  }
  const text = q.toString();
  return text ? "?" + text : "";
}
