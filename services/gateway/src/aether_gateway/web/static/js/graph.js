// The plan as a graph: tasks as nodes, layered left to right by dependency depth,
// edges from each dependency to its dependents, coloured by the task's state.

import { s } from "./dom.js";
import { layers } from "./fold.js";

const W = 220;
const H = 54;
const GAP_X = 70;
const GAP_Y = 14;
const PAD = 16;

// A node's text is cut to the width it has, measured in the font it is drawn in: a count
// of characters let a wide title run out of its box and the meta line run under the cost.
let ruler = null;

function fonts() {
  const root = getComputedStyle(document.documentElement);
  const body = getComputedStyle(document.body).fontFamily;
  return {
    title: `600 12.5px ${body}`,
    meta: `10.5px ${root.getPropertyValue("--mono").trim() || "monospace"}`,
    cost: `10.5px ${body}`,
  };
}

function width(text, font) {
  ruler = ruler || document.createElement("canvas").getContext("2d");
  ruler.font = font;
  return ruler.measureText(text).width;
}

/** ``text``, cut with an ellipsis to fit ``px`` pixels in ``font``. */
export function fit(text, px, font) {
  if (width(text, font) <= px) return text;
  let low = 0;
  let high = text.length;
  while (low < high) {
    const mid = Math.ceil((low + high) / 2);
    if (width(text.slice(0, mid) + "…", font) <= px) low = mid;
    else high = mid - 1;
  }
  return text.slice(0, low) + "…";
}

const TEXT_X = 14;
const RIGHT = 10;

/** Show ``cost`` (or, with none, the node's estimate) and fit the meta line beside it. */
export function setNodeCost(node, cost) {
  const shown = cost || node.dataset.estimated || "";
  const label = node.querySelector(".node-cost");
  const meta = node.querySelector(".node-meta");
  const font = fonts();
  const room = W - TEXT_X - RIGHT - (shown ? width(shown, font.cost) + 8 : 0);
  const text = fit(node.dataset.meta, room, font.meta);
  if (label.textContent !== shown) label.textContent = shown;
  if (meta.textContent !== text) meta.textContent = text;
}

/**
 * Draw ``plan``'s tasks. ``statusOf(id)`` gives a task's state (or null when the plan
 * is not the running one); ``costOf(id)`` its cost so far (text, or "" when none);
 * ``estimateOf(id)`` what it is expected to cost (a number of USD, or null);
 * ``onOpen(id)`` is called when a node is clicked.
 * Returns {svg, nodes: Map(id -> <g>)} so that live events can recolour one node.
 */
export function planGraph(plan, { statusOf, costOf, estimateOf = () => null, onOpen }) {
  const byId = new Map(plan.tasks.map((t) => [t.id, t]));
  const columns = layers(plan.tasks);
  const tallest = Math.max(1, ...columns.map((c) => c.length));
  const width = PAD * 2 + columns.length * W + Math.max(0, columns.length - 1) * GAP_X;
  const height = PAD * 2 + tallest * H + (tallest - 1) * GAP_Y;
  const at = new Map();
  columns.forEach((column, i) => {
    const offset = ((tallest - column.length) * (H + GAP_Y)) / 2;
    column.forEach((id, j) => at.set(id, { x: PAD + i * (W + GAP_X), y: PAD + offset + j * (H + GAP_Y) }));
  });
  const svg = s("svg", {
    class: "plan-graph",
    id: "plan-graph",
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    role: "group",
    "aria-label": `Plan version ${plan.version}: ${plan.tasks.length} tasks in ${columns.length} waves`,
  });
  svg.append(
    s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, s("path", { d: "M0 0 10 5 0 10z", class: "arrow" }))),
  );
  columns.forEach((column, i) => {
    svg.append(s("text", { x: PAD + i * (W + GAP_X) + W / 2, y: 11, class: "wave-label", "text-anchor": "middle" }, `wave ${i + 1}`));
  });
  const edges = s("g", { class: "edges" });
  for (const task of plan.tasks) {
    const to = at.get(task.id);
    for (const dep of task.depends_on || []) {
      const from = at.get(dep);
      if (!from) continue;
      const x1 = from.x + W;
      const y1 = from.y + H / 2;
      const x2 = to.x - 2;
      const y2 = to.y + H / 2;
      const mid = (x1 + x2) / 2;
      edges.append(s("path", { d: `M${x1} ${y1} C${mid} ${y1} ${mid} ${y2} ${x2} ${y2}`, "marker-end": "url(#arrow)", "data-edge": `${dep}->${task.id}` }));
    }
  }
  svg.append(edges);
  const nodes = new Map();
  for (const [id, pos] of at) {
    const task = byId.get(id);
    const status = statusOf(id) || "planned";
    const estimate = estimateOf(id);
    const estimated = estimate == null ? "" : `≈ $${estimate.toFixed(2)}`;
    // What it has cost so far once it ran, else what it is expected to cost.
    const cost = costOf(id);
    const meta = `${id} · ${task.tier}${task.files && task.files.length ? " · " + task.files.length + " file" + (task.files.length > 1 ? "s" : "") : ""}`;
    const tip = [
      `${task.title} (${id})`,
      `tier: ${task.tier}`,
      estimate == null ? null : `estimated cost: $${estimate.toFixed(2)}`,
      task.files && task.files.length ? `files: ${task.files.join(", ")}` : null,
      task.depends_on && task.depends_on.length ? `after: ${task.depends_on.join(", ")}` : null,
      ...(task.acceptance_criteria || []).map((c) => `✓ ${c}`),
    ].filter(Boolean).join("\n");
    const node = s(
      "g",
      {
        class: `node s-${status}`,
        transform: `translate(${pos.x},${pos.y})`,
        tabindex: 0,
        role: "link",
        "aria-label": `${task.title} (${id}), ${status}`,
        "data-task": id,
        "data-status": status,
        dataset: { meta, estimated },
        ...(estimate == null ? {} : { "data-estimate": estimate.toFixed(2) }),
      },
      s("title", {}, tip),
      s("rect", { width: W, height: H, rx: 8 }),
      s("rect", { class: "stripe", width: 5, height: H, rx: 2 }),
      s("text", { x: TEXT_X, y: 21, class: "node-title" }, fit(task.title, W - TEXT_X - RIGHT, fonts().title)),
      s("text", { x: TEXT_X, y: 40, class: "node-meta" }),
      s("text", { x: W - RIGHT, y: 40, class: "node-cost", "text-anchor": "end" }),
    );
    setNodeCost(node, cost);
    node.addEventListener("click", () => onOpen(id));
    node.addEventListener("keydown", (e) => e.key === "Enter" && onOpen(id));
    nodes.set(id, node);
  }
  svg.append(s("g", { class: "nodes" }, [...nodes.values()]));
  return { svg, nodes };
}

/** Recolour one node after a live event. */
export function setNodeStatus(node, status) {
  node.setAttribute("class", `node s-${status}`);
  node.dataset.status = status;
  const label = node.getAttribute("aria-label");
  node.setAttribute("aria-label", label.replace(/, [a-z_]+$/, `, ${status}`));
}
