// The board's shell: sign-in, navigation, and which page shows for which path.

import { forgetToken, onRetrying, onSignedOut, session, setToken, signedOut, token, whoami, withRights } from "./api.js";
import { clear, h, put } from "./dom.js";
import { onLiveNotice, onLivePause, onLiveState } from "./live.js";
import { finishSignIn, oidcConfig, renewSession, signOutUrl } from "./oidc.js";
import { agentsPage } from "./pages/agents.js";
import { missionPage } from "./pages/mission.js";
import { missionsPage } from "./pages/missions.js";
import { signInPage } from "./pages/signin.js";
import { taskPage } from "./pages/task.js";
import { usagePage } from "./pages/usage.js";

const main = document.getElementById("main");
let me = null;
let leave = null; // the current page's clean-up
let expiry = null; // the timer that ends an OIDC session when its token does
let renewing = false; // a renewal in flight: its refresh token is not sent twice

const ROUTES = [
  [/^\/board\/?$/, "missions", () => missionsPage],
  [/^\/board\/agents\/?$/, "agents", () => agentsPage],
  [/^\/board\/usage\/?$/, "usage", () => usagePage],
  [/^\/board\/missions\/([^/]+)\/?$/, "missions", () => missionPage],
  [/^\/board\/missions\/([^/]+)\/tasks\/([^/]+)\/?$/, "missions", () => taskPage],
];

export function navigate(path, { replace = false } = {}) {
  if (replace) history.replaceState(null, "", path);
  else history.pushState(null, "", path);
  render();
}

function showChrome(signedIn) {
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("signout").hidden = !signedIn;
  const who = document.getElementById("who");
  who.hidden = !signedIn;
  document.getElementById("live").hidden = !signedIn;
  if (signedIn && me) {
    put(who, me.name, " ", h("span", { class: "scope" }, me.canWrite ? "can command" : "read-only"));
  }
  document.body.classList.toggle("read-only", Boolean(me && !me.canWrite));
}

async function render(message) {
  if (leave) {
    leave();
    leave = null;
  }
  clear(main);
  if (location.pathname === "/board/oidc/callback") return oidcCallback();
  if (!token()) {
    me = null;
    showChrome(false);
    document.title = "Sign in · Aether";
    signInPage(main, { message, onSignedIn: signedIn });
    return;
  }
  if (!me) {
    try {
      me = await whoami();
    } catch (error) {
      // Only the gateway's "no" ends the sign-in: a gateway, database or identity provider
      // away for now (503, 429, no answer) says nothing of the token, which is kept.
      if (error.status === 401 || error.status === 403) {
        forgetToken();
        return render(error.status === 401 ? "That token is no longer valid: sign in again." : error.message);
      }
      showChrome(false);
      document.getElementById("signout").hidden = false;
      const again = h("button", { type: "button", class: "primary", id: "try-again", onclick: () => render() }, "Try again");
      main.append(h("section", { class: "center", id: "unavailable" }, h("h1", {}, "The board cannot be shown now"), h("p", { class: "notice", role: "alert" }, error.message), again));
      return;
    }
  }
  armExpiry();
  showChrome(true);
  const path = location.pathname;
  for (const [pattern, section, page] of ROUTES) {
    const match = path.match(pattern);
    if (!match) continue;
    for (const link of document.querySelectorAll("#nav a")) {
      link.classList.toggle("active", link.dataset.page === section);
    }
    // Each tab and history entry says which page it is; a mission's or a task's page
    // names its subject once it has loaded.
    document.title = `${section[0].toUpperCase()}${section.slice(1)} · Aether`;
    const params = match.slice(1).map(decodeURIComponent);
    leave = (await page()(main, { me, params, navigate })) || null;
    return;
  }
  main.append(h("section", { class: "empty" }, h("h1", {}, "Nothing here"), h("a", { href: "/board/", "data-nav": true }, "Back to the missions")));
}

function signedIn(who) {
  me = who;
  navigate(location.pathname.startsWith("/board") ? location.pathname : "/board/", { replace: true });
}

// The identity provider sent the browser back with a code (or an error).
async function oidcCallback() {
  me = null;
  showChrome(false);
  main.append(h("section", { class: "center" }, h("p", { class: "muted", id: "oidc-progress" }, "Signing in…")));
  try {
    const { session: done, returnTo } = await finishSignIn(location.search);
    setToken(done.token, { kind: "oidc", expiresAt: done.expires_at, renew: done.refresh_token || null });
    me = withRights({ id: done.id, name: done.name, kind: done.kind, scopes: done.scopes });
    navigate(returnTo, { replace: true });
  } catch (error) {
    forgetToken();
    history.replaceState(null, "", "/board/");
    render(error.status === 403 ? `Not signed in: ${error.message}.` : `Not signed in: ${error.message}`);
  }
}

// An OIDC session ends when its token does: back to sign-in, saying so. One the provider
// gave a refresh token is renewed first, a minute before its end (half-way for a shorter
// token), and goes on with the new token; one that cannot be renewed ends with its token.
function armExpiry() {
  if (renewing) return; // the renewal arms the next timer once it is done
  clearTimeout(expiry);
  const { expiresAt, renew } = session();
  if (!expiresAt) return;
  const left = expiresAt * 1000 - Date.now();
  const end = () => signedOut("your session expired");
  if (left <= 0) return end();
  if (!renew) {
    expiry = setTimeout(end, Math.min(left, 2 ** 31 - 1));
    return;
  }
  const at = Math.max(left - 60_000, left / 2);
  expiry = setTimeout(() => renewNow(renew, expiresAt), Math.min(at, 2 ** 31 - 1));
}

async function renewNow(renew, expiresAt) {
  if (renewing) return;
  renewing = true;
  try {
    const done = await renewSession(renew);
    if (!token()) return; // signed out meanwhile
    setToken(done.token, { kind: "oidc", expiresAt: done.expires_at, renew: done.refresh_token || renew });
    me = withRights({ id: done.id, name: done.name, kind: done.kind, scopes: done.scopes });
  } catch (error) {
    if (error.status === 401 || error.status === 403 || error.status === 404) {
      return signedOut("your session expired");
    }
    // The provider or the gateway unreachable for now: asked again until the token ends.
    const left = expiresAt * 1000 - Date.now();
    if (left <= 0) return signedOut("your session expired");
    expiry = setTimeout(() => renewNow(renew, expiresAt), Math.min(5_000, left));
    return;
  } finally {
    renewing = false;
  }
  armExpiry();
}

onSignedOut((reason) => {
  me = null;
  render(reason ? `Signed out: ${reason}.` : undefined);
});

onLiveState((state) => {
  const live = document.getElementById("live");
  live.dataset.state = state;
  live.querySelector("span").textContent = state;
});

// A short notice about the live stream (it was reset under the page), shown a while.
let noticeTimer = null;
onLiveNotice((text) => {
  const notice = document.getElementById("live-notice");
  notice.textContent = text;
  notice.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => {
    notice.hidden = true;
  }, 15000);
});

/** Show ``say(seconds left)`` in the notice ``id`` until ``until`` (null: hide it),
 * counting down; answers the timer to clear. */
function countdown(id, until, timer, say) {
  const notice = document.getElementById(id);
  clearInterval(timer);
  if (until === null) {
    notice.hidden = true;
    return null;
  }
  const show = () => {
    notice.textContent = say(Math.max(1, Math.ceil((until - Date.now()) / 1000)));
  };
  show();
  notice.hidden = false;
  return setInterval(show, 500);
}

// Reads waiting to be asked again (the gateway said "try again shortly"): a small
// countdown until the last of them is.
let retryTimer = null;
onRetrying((until) => {
  retryTimer = countdown("retry-notice", until, retryTimer, (s) => `Retrying in ${s} s…`);
});

// The live stream waiting to be opened again (refused, with the gateway saying when, or
// dropped): nothing is lost meanwhile, it resumes after the last event shown.
let pauseTimer = null;
onLivePause((until) => {
  pauseTimer = countdown("stream-notice", until, pauseTimer, (s) => `Live updates paused; reconnecting in ${s} s`);
});

document.getElementById("signout").addEventListener("click", async () => {
  const { kind } = session();
  const idToken = token();
  forgetToken();
  clearTimeout(expiry);
  me = null;
  // Signed in with OIDC: end the provider's session too, where it offers a way.
  const away = kind === "oidc" ? signOutUrl(await oidcConfig(), idToken) : null;
  if (away) location.assign(away);
  else render("Signed out.");
});

// Links marked data-nav move within the board without reloading it.
document.addEventListener("click", (event) => {
  const link = event.target.closest && event.target.closest("a[data-nav]");
  if (!link || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
  event.preventDefault();
  navigate(link.getAttribute("href"));
});

window.addEventListener("popstate", () => render());
render();
