// OIDC sign-in, the browser's half of the authorization-code flow with PKCE: the
// verifier, the state and the nonce are made here and kept in this tab's session; the
// gateway swaps the code (with the verifier) for an ID token it has checked.

import { call } from "./api.js";

const PENDING = "aether.oidc.pending";
let config = null;

/** The gateway's OIDC settings for the board ({enabled: false} when it has none). */
export async function oidcConfig() {
  if (config) return config;
  try {
    config = await call("GET", "/auth/oidc", undefined, { auth: null, quiet401: true });
  } catch (error) {
    return { enabled: false, error: error.message };
  }
  return config;
}

function base64url(bytes) {
  let text = "";
  for (const byte of bytes) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function randomText(size) {
  const bytes = new Uint8Array(size);
  crypto.getRandomValues(bytes);
  return base64url(bytes);
}

/** Only a page of the board may be returned to after signing in. */
function boardPath(path) {
  return typeof path === "string" && path.startsWith("/board") && !path.startsWith("/board/oidc/") ? path : "/board/";
}

/** Leave for the identity provider's sign-in page. */
export async function startSignIn(cfg, returnTo) {
  const verifier = randomText(32);
  const pending = { verifier, state: randomText(16), nonce: randomText(16), returnTo: boardPath(returnTo) };
  sessionStorage.setItem(PENDING, JSON.stringify(pending));
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  const url = new URL(cfg.authorization_endpoint);
  const params = {
    response_type: "code",
    client_id: cfg.client_id,
    redirect_uri: cfg.redirect_uri,
    scope: cfg.scopes.join(" "),
    state: pending.state,
    nonce: pending.nonce,
    code_challenge: base64url(new Uint8Array(digest)),
    code_challenge_method: "S256",
  };
  for (const [key, value] of Object.entries(params)) url.searchParams.set(key, value);
  location.assign(url.toString());
}

/** The provider sent the browser back: check the state, then let the gateway swap the
 * code. Returns {session, returnTo}; throws an Error saying what went wrong. */
export async function finishSignIn(search) {
  const params = new URLSearchParams(search);
  let pending = null;
  try {
    pending = JSON.parse(sessionStorage.getItem(PENDING) || "null");
  } catch {
    pending = null;
  }
  // One answer per request: a second visit of the same address finds nothing pending.
  sessionStorage.removeItem(PENDING);
  if (params.get("error")) {
    throw new Error(`the identity provider refused: ${params.get("error_description") || params.get("error")}`);
  }
  if (!pending || !params.get("state") || params.get("state") !== pending.state) {
    throw new Error("this sign-in answer is not one this tab asked for; sign in again");
  }
  const code = params.get("code");
  if (!code) throw new Error("the identity provider sent no code");
  const session = await call(
    "POST",
    "/auth/oidc/token",
    { code, code_verifier: pending.verifier, nonce: pending.nonce },
    { auth: null, quiet401: true },
  );
  return { session, returnTo: boardPath(pending.returnTo) };
}

/** Renew the session with the refresh token it holds: the gateway's new session, or an
 * ApiError (401: the provider renews it no more). */
export async function renewSession(refreshToken) {
  return call("POST", "/auth/oidc/refresh", { refresh_token: refreshToken }, { auth: null, quiet401: true });
}

/** Where to end the provider's session too (null: it names no end-session endpoint). */
export function signOutUrl(cfg, idToken) {
  if (!cfg || !cfg.enabled || !cfg.end_session_endpoint) return null;
  const url = new URL(cfg.end_session_endpoint);
  if (idToken) url.searchParams.set("id_token_hint", idToken);
  url.searchParams.set("client_id", cfg.client_id);
  url.searchParams.set("post_logout_redirect_uri", location.origin + "/board/");
  return url.toString();
}
