// Building DOM nodes without HTML strings: every piece of data goes in as text, so
// nothing a model wrote (a task title, a tool result) can become markup.

const SVG_NS = "http://www.w3.org/2000/svg";

function fill(el, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "style" && typeof value === "object") {
      // Property by property: the page's CSP allows no inline style attribute.
      for (const [name, v] of Object.entries(value)) el.style.setProperty(name, v);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (key === "value" && "value" in el) {
      el.value = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** An HTML element: h("div", {class: "x"}, "text", h("b", {}, "bold")). */
export function h(tag, attrs, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

/** An SVG element, the same way. */
export function s(tag, attrs, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** Replace ``el``'s children (null and false children are left out). */
export function put(el, ...children) {
  clear(el);
  return fill(el, {}, children);
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function money(value, digits = 2) {
  if (value === null || value === undefined) return "—";
  if (value > 0 && value < 0.01) return "<$0.01";
  return "$" + Number(value).toFixed(digits);
}

export function tokens(n) {
  if (!n) return "0";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (n >= 1e3) return (n / 1e3).toFixed(1) + "k";
  return String(n);
}

export function age(iso, now = Date.now()) {
  if (!iso) return "—";
  const seconds = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (seconds < 60) return seconds + "s";
  if (seconds < 3600) return Math.floor(seconds / 60) + "m";
  if (seconds < 86400) return Math.floor(seconds / 3600) + "h";
  return Math.floor(seconds / 86400) + "d";
}

export function time(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

export function short(sha) {
  return sha ? sha.slice(0, 10) : "—";
}

export function pill(status) {
  return h("span", { class: "pill s-" + status, "data-status": status }, status.replace("_", " "));
}

export function firstLine(text, max = 90) {
  // A requirement written as a list reads better without its bullet.
  const line = (text || "").split("\n")[0].trim().replace(/^([-*•]|#+)\s+/, "");
  return line.length > max ? line.slice(0, max - 1) + "…" : line;
}

/** Calls ``fn`` once things have been quiet for ``ms`` (and at most every ``ms`` * 4). */
export function debounce(fn, ms) {
  let timer = null;
  let first = 0;
  return (...args) => {
    const now = performance.now();
    if (timer === null) first = now;
    clearTimeout(timer);
    const wait = now - first > ms * 4 ? 0 : ms;
    timer = setTimeout(() => {
      timer = null;
      fn(...args);
    }, wait);
  };
}
