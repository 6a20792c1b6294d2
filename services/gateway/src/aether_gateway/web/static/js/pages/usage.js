// Spend per day, month, model and mission, as bar charts against the budgets.

import { get } from "../api.js";
import { clear, debounce, h, money, put, s, tokens } from "../dom.js";
import { LiveStream, reloaded } from "../live.js";

const GROUPS = [
  ["day", "Per day"],
  ["month", "Per month"],
  ["model", "Per model"],
  ["mission", "Per mission"],
];

function chart(report) {
  const rows = report.rows;
  const rowH = 26;
  const labelW = 190;
  const barW = 420;
  const height = rows.length * rowH + 8;
  const max = Math.max(0.000001, ...rows.map((r) => Math.max(r.cost_usd || 0, r.budget_usd || 0)));
  const svg = s("svg", { class: "usage-chart", width: labelW + barW + 150, height, viewBox: `0 0 ${labelW + barW + 150} ${height}`, role: "img", "aria-label": `Spend ${report.group_by}` });
  rows.forEach((r, i) => {
    const y = 4 + i * rowH;
    const spent = ((r.cost_usd || 0) / max) * barW;
    const over = r.budget_exceeded || (r.budget_usd && (r.cost_usd || 0) >= r.budget_usd);
    const warn = r.budget_usd && (r.cost_usd || 0) >= 0.8 * r.budget_usd;
    const label = String(r.key ?? "—");
    const text = s("text", { x: labelW - 8, y: y + 16, "text-anchor": "end", class: "label" }, label.length > 26 ? label.slice(0, 25) + "…" : label);
    // A mission's row opens its page.
    const linked = report.group_by === "mission" && r.key ? s("a", { href: `/board/missions/${encodeURIComponent(r.key)}`, "data-nav": true, "data-mission": r.key }, s("title", {}, `Open mission ${r.key}`), text) : text;
    svg.append(
      linked,
      s("rect", { x: labelW, y: y + 3, width: barW, height: rowH - 8, rx: 4, class: "track" }),
      s("rect", { x: labelW, y: y + 3, width: Math.max(1, spent), height: rowH - 8, rx: 4, class: over ? "spent over" : warn ? "spent warn" : "spent" }),
      r.budget_usd ? s("line", { x1: labelW + (r.budget_usd / max) * barW, x2: labelW + (r.budget_usd / max) * barW, y1: y, y2: y + rowH - 2, class: "budget" }, s("title", {}, `budget ${money(r.budget_usd)}`)) : null,
      s("text", { x: labelW + barW + 8, y: y + 16, class: "value" }, `${money(r.cost_usd, 4)}${r.budget_usd ? " / " + money(r.budget_usd) : ""}`),
    );
  });
  return svg;
}

export async function usagePage(main) {
  const sections = new Map();
  const grid = h("div", { class: "usage-grid" });
  const totals = h("p", { class: "totals", id: "usage-total" });
  main.append(h("section", { class: "card" }, h("div", { class: "card-head" }, h("h1", {}, "Usage")), totals), grid);
  for (const [key, label] of GROUPS) {
    const body = h("div", {});
    sections.set(key, body);
    grid.append(h("section", { class: "card", id: "usage-" + key }, h("h2", {}, label), body));
  }
  async function load() {
    for (const [key, body] of sections) {
      const report = await get(`/usage?group_by=${key}`);
      clear(body);
      if (!report.rows.length) body.append(h("p", { class: "muted" }, "No model calls recorded yet."));
      else body.append(chart(report));
      if (key === "day") {
        const t = report.total;
        put(totals, `${money(t.cost_usd, 4)} in ${t.calls} model calls · ${tokens(t.input_tokens)} tokens in, ${tokens(t.output_tokens)} out · prompt cache: ${tokens(t.cache_read_tokens)} read, ${tokens(t.cache_write_tokens)} written`);
        if (!t.cost_complete) totals.append(" · some calls had no known price");
      }
    }
  }
  const position = await get("/events/position").catch(() => ({ sequence: 0 }));
  await load();
  const refresh = debounce(load, 1000);
  const live = new LiveStream("/events/stream?type=usage_recorded", { onEvent: refresh, after: position.sequence, onReset: reloaded(load) }).start();
  return () => live.stop();
}
