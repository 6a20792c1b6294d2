// The plan as a graph: tasks as nodes, layered left to right by dependency depth,
// edges from each dependency to its dependents, coloured by the task's state.

import { s } from "./dom.js";
import { layers } from "./fold.js";

const W = 190;
const H = 54;
const GAP_X = 70;
const GAP_Y = 14;
const PAD = 16;

function clip(text, max) {
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
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
    role: "img",
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
    const cost = costOf(id) || estimated;
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
      { class: `node s-${status}`, transform: `translate(${pos.x},${pos.y})`, tabindex: 0, "data-task": id, "data-status": status, ...(estimate == null ? {} : { "data-estimate": estimate.toFixed(2) }) },
      s("title", {}, tip),
      s("rect", { width: W, height: H, rx: 8 }),
      s("rect", { class: "stripe", width: 5, height: H, rx: 2 }),
      s("text", { x: 14, y: 21, class: "node-title" }, clip(task.title, 24)),
      s("text", { x: 14, y: 40, class: "node-meta" }, clip(`${id} · ${task.tier}${task.files && task.files.length ? " · " + task.files.length + " file" + (task.files.length > 1 ? "s" : "") : ""}`, 30)),
      s("text", { x: W - 10, y: 40, class: "node-cost", "text-anchor": "end" }, cost),
    );
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
}
