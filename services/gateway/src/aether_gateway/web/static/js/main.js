// The board's shell: sign-in, navigation, and which page shows for which path.

import { forgetToken, onSignedOut, token, whoami } from "./api.js";
import { clear, h, put } from "./dom.js";
import { onLiveState } from "./live.js";
import { agentsPage } from "./pages/agents.js";
import { missionPage } from "./pages/mission.js";
import { missionsPage } from "./pages/missions.js";
import { signInPage } from "./pages/signin.js";
import { taskPage } from "./pages/task.js";
import { usagePage } from "./pages/usage.js";

const main = document.getElementById("main");
let me = null;
let leave = null; // the current page's clean-up

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
  if (!token()) {
    me = null;
    showChrome(false);
    signInPage(main, { message, onSignedIn: signedIn });
    return;
  }
  if (!me) {
    try {
      me = await whoami();
    } catch (error) {
      forgetToken();
      return render(error.status === 401 ? "That token is no longer valid: sign in again." : error.message);
    }
  }
  showChrome(true);
  const path = location.pathname;
  for (const [pattern, section, page] of ROUTES) {
    const match = path.match(pattern);
    if (!match) continue;
    for (const link of document.querySelectorAll("#nav a")) {
      link.classList.toggle("active", link.dataset.page === section);
    }
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

onSignedOut((reason) => {
  me = null;
  render(reason ? `Signed out: ${reason}.` : undefined);
});

onLiveState((state) => {
  const live = document.getElementById("live");
  live.dataset.state = state;
  live.querySelector("span").textContent = state;
});

document.getElementById("signout").addEventListener("click", () => {
  forgetToken();
  me = null;
  render("Signed out.");
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
