// The cost panel: what execution cost, and what the same work would have cost on Claude.

import { byId, h, setText } from "./dom.js";
import { count, duration, usd } from "./format.js";

const COLUMNS = ["Tasks", "Tokens in", "Tokens out", "Estimated cost", "Claude equivalent", "Saved", "Avg time"];

function savings(figures) {
  return (figures.equivalent_claude_cost_usd || 0) - (figures.estimated_cost_usd || 0);
}

function row(name, figures) {
  const tasks = figures.tasks || 0;
  return h(
    "tr", {},
    h("th", { scope: "row", class: "mono", text: name }),
    h("td", { text: count(tasks) }),
    h("td", { text: count(figures.tokens_in) }),
    h("td", { text: count(figures.tokens_out) }),
    h("td", { text: usd(figures.estimated_cost_usd) }),
    h("td", { text: usd(figures.equivalent_claude_cost_usd) }),
    h("td", { text: usd(savings(figures)) }),
    h("td", { text: tasks ? duration((figures.execution_ms || 0) / tasks) : "–" }),
  );
}

function breakdown(container, caption, keyLabel, groups) {
  const names = Object.keys(groups || {}).sort();
  const body = names.length
    ? names.map((name) => row(name, groups[name]))
    : [h("tr", {}, h("td", { colspan: COLUMNS.length + 1, class: "empty", text: "No completed tasks yet." }))];
  container.replaceChildren(
    h("table", { class: "data" },
      h("caption", { text: caption }),
      h("thead", {}, h("tr", {}, h("th", { scope: "col", text: keyLabel }),
        ...COLUMNS.map((column) => h("th", { scope: "col", text: column })))),
      h("tbody", {}, ...body)),
  );
}

/** Draws totals and the per-model and per-agent tables. */
export class CostPanel {
  constructor(state) {
    this.state = state;
    this.totals = {
      tasks: byId("cost-tasks"),
      tokens: byId("cost-tokens"),
      estimated: byId("cost-estimated"),
      claude: byId("cost-claude"),
      saved: byId("cost-saved"),
    };
    this.byModel = byId("cost-by-model");
    this.byAgent = byId("cost-by-agent");
    this.lastDrawn = null;
  }

  draw() {
    const { costs } = this.state;
    const fingerprint = JSON.stringify(costs);
    if (fingerprint === this.lastDrawn) return;
    this.lastDrawn = fingerprint;
    const totals = costs.totals || {};
    setText(this.totals.tasks, count(totals.tasks || 0));
    setText(this.totals.tokens, `${count(totals.tokens_in || 0)} in / ${count(totals.tokens_out || 0)} out`);
    setText(this.totals.estimated, usd(totals.estimated_cost_usd || 0));
    setText(this.totals.claude, usd(totals.equivalent_claude_cost_usd || 0));
    setText(this.totals.saved, usd(savings(totals)));
    breakdown(this.byModel, "Per model", "Model", costs.by_model);
    breakdown(this.byAgent, "Per agent", "Agent", costs.by_agent);
  }
}
