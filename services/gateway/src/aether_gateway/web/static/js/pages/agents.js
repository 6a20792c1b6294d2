// Agent runners and what they hold, live.

import { get } from "../api.js";
import { age, clear, debounce, h, money, pill, tokens } from "../dom.js";
import { LiveStream, reloaded } from "../live.js";

export async function agentsPage(main) {
  const body = h("div", { class: "runners", id: "runners" });
  const error = h("p", { class: "field-error" });
  main.append(h("section", { class: "card" }, h("div", { class: "card-head" }, h("h1", {}, "Agents")), error, body));

  async function load() {
    try {
      const { agents } = await get("/agents");
      clear(body);
      if (!agents.length) body.append(h("p", { class: "muted" }, "No agent runner has reported yet."));
      for (const runner of agents) {
        body.append(
          h(
            "article",
            { class: "card runner", "data-runner": runner.runner_id },
            h("div", { class: "title-row" }, h("h3", { class: "mono" }, runner.runner_id), pill(runner.status)),
            h("p", { class: "muted small" }, `seen ${age(runner.last_seen_at)} ago · ${runner.sessions} sessions · ${runner.completed} completed · ${runner.failed} failed`),
            runner.running.length
              ? h(
                  "ul",
                  { class: "holding" },
                  runner.running.map((s) =>
                    h(
                      "li",
                      {},
                      h("a", { href: `/board/missions/${encodeURIComponent(s.mission_id)}/tasks/${encodeURIComponent(s.task_id)}`, "data-nav": true }, `${s.task_id} (attempt ${s.attempt})`),
                      h("span", { class: "muted small" }, ` · ${s.model || ""} · ${s.turns} turns · ${tokens(s.tokens_in)} in · ${money(s.cost_usd, 4)}`),
                      s.last_action ? h("div", { class: "activity" }, s.last_action) : null,
                    ),
                  ),
                )
              : h("p", { class: "muted" }, "Holding nothing."),
          ),
        );
      }
    } catch (failure) {
      error.textContent = failure.message;
    }
  }
  const position = await get("/events/position").catch(() => ({ sequence: 0 }));
  await load();
  const refresh = debounce(load, 500);
  const live = new LiveStream("/events/stream", { onEvent: refresh, onTelemetry: refresh, telemetry: true, after: position.sequence, onReset: reloaded(load) }).start();
  return () => live.stop();
}
