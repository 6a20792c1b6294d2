import { setToken, whoami } from "../api.js";
import { h } from "../dom.js";
import { oidcConfig, startSignIn } from "../oidc.js";

export function signInPage(main, { message, onSignedIn }) {
  const input = h("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "off",
    placeholder: "aet_…",
    required: true,
  });
  const error = h("p", { class: "field-error", id: "token-error", role: "alert" });
  const button = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h(
    "form",
    { class: "card signin", id: "signin" },
    h("h1", {}, "Sign in to the mission board"),
    h(
      "p",
      { class: "muted" },
      "Paste an API token (",
      h("code", {}, "aether tokens create"),
      ") or the admin token ",
      h("code", {}, "aether up"),
      " printed. It stays in this browser tab's session only.",
    ),
    message ? h("p", { class: "notice" }, message) : null,
    h("label", { for: "token" }, "API token"),
    input,
    error,
    button,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    button.disabled = true;
    const value = input.value.trim();
    try {
      const me = await whoami(value);
      setToken(value);
      onSignedIn(me);
    } catch (failure) {
      error.textContent = failure.status === 401 ? "The gateway does not know this token (or it was revoked)." : failure.message;
    } finally {
      button.disabled = false;
    }
  });
  main.append(h("section", { class: "center" }, form));
  input.focus();
  offerOidc(form, message);
}

// Where the gateway has an identity provider, its button comes first.
async function offerOidc(form, message) {
  const cfg = await oidcConfig();
  if (!cfg.enabled || !form.isConnected) return;
  let host = cfg.issuer;
  try {
    host = new URL(cfg.issuer).host;
  } catch {
    // shown as configured
  }
  const button = h("button", { type: "button", class: "primary", id: "oidc-signin" }, "Sign in with ", host);
  button.addEventListener("click", async () => {
    button.disabled = true;
    await startSignIn(cfg, location.pathname);
  });
  const title = form.querySelector("h1");
  title.after(h("div", { class: "oidc" }, button, h("p", { class: "muted" }, "or paste an API token:")));
}
