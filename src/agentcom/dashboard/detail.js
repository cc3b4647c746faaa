// One task in full: description, history, routing decision, execution figures, result and
// its live output. Kept current while open by re-reading the task when events touch it.

import { byId, h } from "./dom.js";
import { clockTime, count, duration, holdText, label, usd } from "./format.js";
import { LogView } from "./output.js";
import { isUnfinished } from "./state.js";
import { actionButton, confirmingButton } from "./tasks.js";

/** Re-reads of the open task are at least this far apart, however busy it is. */
const REFRESH_INTERVAL_MS = 500;

function facts(pairs) {
  return h("dl", { class: "facts" }, ...pairs.flatMap(([name, value]) => [
    h("dt", { text: name }),
    h("dd", { text: value === null || value === undefined || value === "" ? "–" : value }),
  ]));
}

function section(title, ...content) {
  return h("section", { class: "detail-section" }, h("h3", { text: title }), ...content);
}

function routing(task) {
  const decision = task.routing_decision;
  if (!decision) return h("p", { class: "empty", text: "Not routed yet (the task has not been assigned)." });
  const complexity = task.complexity || {};
  const inferred = complexity.inferred || {};
  return facts([
    ["Tier", label(decision.effective_tier)],
    ["Target", decision.target_type],
    ["Endpoint", decision.selected_endpoint],
    ["Model", decision.selected_model],
    ["Fallback", decision.fallback_used ? `yes: ${decision.fallback_reason || "no reason given"}` : "no"],
    ["Cost tier", decision.estimated_cost_tier],
    ["Classification", decision.classification_reason],
    ["Complexity source", complexity.source
      ? `${complexity.source}${typeof inferred.confidence === "number" ? ` (inferred ${inferred.tier}, confidence ${inferred.confidence.toFixed(2)})` : ""}`
      : null],
  ]);
}

function execution(task) {
  const figures = task.execution;
  if (!figures) return h("p", { class: "empty", text: "No execution reported yet." });
  const saved = typeof figures.equivalent_claude_cost_usd === "number"
    ? figures.equivalent_claude_cost_usd - (figures.estimated_cost_usd || 0) : null;
  return facts([
    ["Model", figures.model_used],
    ["Tokens in", count(figures.tokens_in)],
    ["Tokens out", count(figures.tokens_out)],
    ["Estimated cost", usd(figures.estimated_cost_usd)],
    ["Claude equivalent", usd(figures.equivalent_claude_cost_usd)],
    ["Saved", usd(saved)],
    ["Execution time", duration(figures.execution_ms)],
    ["Tokens used", count(task.tokens_used)],
  ]);
}

function result(task) {
  const parts = [];
  if (task.last_error) parts.push(h("p", { class: "error-text", text: `Last error: ${task.last_error}` }));
  const output = task.result ? task.result.output : null;
  if (typeof output === "string" && output) {
    parts.push(h("pre", { class: "output", tabindex: "0", "aria-label": "Result output", text: output }));
  } else if (task.result) {
    parts.push(h("pre", { class: "output", tabindex: "0", "aria-label": "Result",
      text: JSON.stringify(task.result, null, 2) }));
  }
  if (!parts.length) parts.push(h("p", { class: "empty", text: "No result yet." }));
  return parts;
}

/** Prerequisites and dependants, each a link that opens that task here. */
function dependencies(task, openTask) {
  const link = (taskId) => h("button", { class: "link task-link", type: "button", text: taskId,
    onclick: () => openTask(taskId) });
  const waiting = new Set(task.waiting_for || []);
  const rows = [];
  if ((task.depends_on || []).length) {
    rows.push(h("dt", { text: "Prerequisites" }), h("dd", {}, ...task.depends_on.flatMap((taskId, n) => [
      n ? ", " : null, link(taskId), waiting.has(taskId) ? " (waiting)" : null])));
  }
  if ((task.dependants || []).length) {
    const more = (task.dependants_total || 0) - task.dependants.length;
    rows.push(h("dt", { text: "Dependants" }), h("dd", {}, ...task.dependants.flatMap((taskId, n) => [
      n ? ", " : null, link(taskId)]), more > 0 ? ` and ${more} more` : null));
  }
  return rows.length ? h("dl", { class: "facts" }, ...rows) : null;
}

/** An agentic run: why it stopped, and its tool calls with their results. */
function agentic(run) {
  const stopped = run.termination_reason || run.iterations_used
    ? `stopped: ${run.termination_reason || "–"} after ${run.iterations_used ?? "–"} iterations · ` : "";
  return [
    h("p", { class: "detail-meta", text: `${stopped}${run.tool_calls_total} tool calls` }),
    h("ol", { class: "tool-calls" }, ...(run.tool_calls || []).map((call) => h("li", {},
      h("time", { text: clockTime(call.at) }),
      h("span", { class: "tool-name", text: ` #${call.iteration ?? "–"} ${call.tool_name || "–"} ` }),
      h("span", { class: "detail-text", text: call.args_summary || "" }),
      call.result_summary ? h("span", { class: "detail-text", text: ` → ${call.result_summary}` }) : null,
    ))),
  ];
}

function history(task) {
  const entries = task.history || [];
  if (!entries.length) return h("p", { class: "empty", text: "No history recorded." });
  return h("ol", { class: "timeline" }, ...entries.map((entry) => h(
    "li", { class: `status-${entry.status}` },
    h("time", { text: clockTime(entry.at) }),
    h("span", { class: `badge status-${entry.status}`, text: label(entry.status) }),
    entry.detail ? h("span", { class: "detail-text", text: entry.detail }) : null,
  )));
}

/** The task dialog. */
export class TaskDetail {
  /**
   * @param {import("./state.js").DashboardState} state
   * @param {{request, retry, cancel, isAdmin}} actions the operator channel and actions
   */
  constructor(state, actions) {
    this.state = state;
    this.actions = actions;
    this.dialog = byId("task-detail");
    this.title = byId("detail-title");
    this.body = byId("detail-body");
    this.log = new LogView(state, byId("detail-log"), byId("detail-jump"));
    this.taskId = null;
    this.seenRevision = null; // the task's event revision when it was last read
    this.lastFetch = 0;
    this.fetching = false;
    this.retryTimer = null;
    byId("detail-close").addEventListener("click", () => this.dialog.close());
    this.dialog.addEventListener("close", () => {
      this.taskId = null;
    });
  }

  get isOpen() {
    return this.taskId !== null;
  }

  open(taskId) {
    this.taskId = taskId;
    this.title.textContent = `Task ${taskId}`;
    this.log.showTask(taskId);
    const known = this.state.tasks.get(taskId);
    if (known && known.complete) this.render(known);
    else this.body.replaceChildren(h("p", { class: "empty", text: "Loading…" }));
    if (!this.dialog.open) this.dialog.showModal();
    this.log.draw();
    this.fetch();
  }

  /** Draw new output; re-read the task if events changed it since it was last read. */
  draw() {
    if (!this.isOpen) return;
    this.log.draw();
    const task = this.state.tasks.get(this.taskId);
    if (!task || (task.revision || 0) === this.seenRevision) return;
    const wait = this.lastFetch + REFRESH_INTERVAL_MS - performance.now();
    if (wait <= 0) this.fetch();
    else if (this.retryTimer === null) {
      this.retryTimer = setTimeout(() => {
        this.retryTimer = null;
        this.actions.redraw("detail");
      }, wait);
    }
  }

  fetch() {
    if (this.fetching || !this.isOpen) return;
    const taskId = this.taskId;
    this.fetching = true;
    this.lastFetch = performance.now();
    const known = this.state.tasks.get(taskId);
    this.seenRevision = known ? known.revision || 0 : 0;
    this.actions.request("task_get", { task_id: taskId })
      .then((task) => {
        this.state.mergeTask(task);
        if (this.taskId === taskId) this.render(task);
      })
      .catch((error) => {
        if (this.taskId === taskId && !this.body.querySelector(".facts")) {
          this.body.replaceChildren(h("p", { class: "error-text", text: `Could not load the task: ${error.message}` }));
        }
      })
      .finally(() => {
        this.fetching = false;
        this.actions.redraw("tasks");
      });
  }

  render(task) {
    const admin = this.actions.isAdmin();
    const buttons = [];
    if (admin && task.status === "dead_letter") {
      buttons.push(actionButton("Retry", `Retry task ${task.task_id}`, () => this.actions.retry(task.task_id)));
    }
    if (admin && isUnfinished(task)) {
      buttons.push(confirmingButton("Cancel task", "Confirm cancel", `Cancel task ${task.task_id}`,
        () => this.actions.cancel(task.task_id)));
    }
    const summary = h("p", { class: "detail-meta" },
      h("span", { class: `badge status-${task.status}`, text: label(task.status) }),
      h("span", { class: `badge priority-${task.priority}`, text: task.priority }),
      ` agent ${task.assigned_to || "–"} · generation ${task.generation} · retries ${task.retry_count}/${task.max_retries}`,
      ` · created ${clockTime(task.created_at)} · updated ${clockTime(task.updated_at)}`);
    const links = dependencies(task, (taskId) => this.open(taskId));
    const parts = [
      summary,
      task.waiting_reason ? h("p", { class: "waiting", text: `Waiting: ${task.waiting_reason}` }) : null,
      task.held_for ? h("p", { class: "waiting held", text: `Held: ${holdText(task.held_for)}` }) : null,
      buttons.length ? h("div", { class: "detail-actions" }, ...buttons) : null,
      section("Description", h("pre", { class: "description-text", text: task.description || "" })),
      links ? section("Dependencies", links) : null,
      section("Routing decision", routing(task)),
      section("Execution", execution(task)),
      task.agentic ? section("Agentic run", ...agentic(task.agentic)) : null,
      section("Result", ...result(task)),
      section("History", history(task)),
    ];
    this.body.replaceChildren(...parts.filter(Boolean));
  }
}
