// The task table with its filters, the dead-letter list, and the submit form.

import { byId, h, reconcileChildren, setAttr, setText } from "./dom.js";
import { ago, clockTime, label, shortId } from "./format.js";
import { PRIORITIES, TASK_STATUSES } from "./state.js";

/** Rows drawn at most; the rest are counted ("showing N of M"). */
export const MAX_TABLE_ROWS = 200;
/** Dead-letter tasks listed at most. */
export const MAX_DEAD_LETTERS = 100;
/** How long a Cancel button waits for its confirming second click. */
const CONFIRM_MS = 4000;

function fillSelect(select, allLabel, values) {
  select.replaceChildren(
    h("option", { value: "", text: allLabel }),
    ...values.map((value) => h("option", { value, text: label(value) })),
  );
}

/**
 * A button that acts on a second click within a few seconds, so a stray click on a page
 * left open all day cannot cancel work.
 */
export function confirmingButton(text, confirmText, accessibleName, action) {
  const button = h("button", { type: "button", class: "danger", "aria-label": accessibleName, text });
  let timer = null;
  button.addEventListener("click", (event) => {
    event.stopPropagation();
    if (timer === null) {
      button.textContent = confirmText;
      button.setAttribute("aria-label", `${confirmText}: ${accessibleName}`);
      timer = setTimeout(() => {
        timer = null;
        button.textContent = text;
        button.setAttribute("aria-label", accessibleName);
      }, CONFIRM_MS);
      return;
    }
    clearTimeout(timer);
    timer = null;
    button.disabled = true;
    action().finally(() => {
      button.disabled = false;
      button.textContent = text;
      button.setAttribute("aria-label", accessibleName);
    });
  });
  return button;
}

/** A button that runs `action` (a promise) and stays disabled until it settles. */
export function actionButton(text, accessibleName, action, cls = "") {
  const button = h("button", { type: "button", class: cls, "aria-label": accessibleName, text });
  button.addEventListener("click", (event) => {
    event.stopPropagation();
    button.disabled = true;
    action().finally(() => {
      button.disabled = false;
    });
  });
  return button;
}

/** Draws the task table and the dead-letter list; wires the filters and the submit form. */
export class TaskPanels {
  /**
   * @param {import("./state.js").DashboardState} state
   * @param {{openTask, retry, cancel, submit, isAdmin}} actions what the buttons do
   */
  constructor(state, actions) {
    this.state = state;
    this.actions = actions;
    this.body = byId("task-rows");
    this.summary = byId("tasks-summary");
    this.deadList = byId("dead-letters");
    this.deadSummary = byId("dead-summary");
    this.rows = new Map();
    this.filters = { status: "", priority: "", agent: "", text: "" };
    this.agentOptions = "";
    this.filterStatus = byId("filter-status");
    this.filterPriority = byId("filter-priority");
    this.filterAgent = byId("filter-agent");
    this.filterText = byId("filter-text");
    fillSelect(this.filterStatus, "All statuses", TASK_STATUSES);
    fillSelect(this.filterPriority, "All priorities", PRIORITIES);
    fillSelect(this.filterAgent, "All agents", []);
    for (const [name, element] of [["status", this.filterStatus], ["priority", this.filterPriority],
      ["agent", this.filterAgent], ["text", this.filterText]]) {
      element.addEventListener("input", () => {
        this.filters[name] = element.value;
        this.state.mark("tasks");
        this.actions.redraw();
      });
    }
    this.wireSubmitForm();
  }

  drawTable() {
    this.refreshAgentFilter();
    const { total, shown } = this.state.filteredTasks(this.filters, MAX_TABLE_ROWS);
    const now = this.state.now();
    const admin = this.actions.isAdmin();
    const wanted = shown.map((task) => this.row(task, now, admin));
    for (const id of [...this.rows.keys()]) {
      if (!this.state.tasks.has(id)) this.rows.delete(id);
    }
    if (!wanted.length) {
      wanted.push(h("tr", {}, h("td", { colspan: 8, class: "empty", text: "No matching tasks." })));
    }
    reconcileChildren(this.body, wanted);
    const of = Math.max(total, this.hubCount() ?? 0);
    setText(this.summary, of > shown.length ? `showing ${shown.length} of ${of}` : `${total} shown`);
  }

  /** The hub's count of the tasks the filters select, when the counters know it (a status
   * filter alone): the page may hold fewer than the hub has. */
  hubCount() {
    const { status, priority, agent, text } = this.filters;
    if (!status || priority || agent || text.trim()) return null;
    return this.state.queue.by_status[status] ?? 0;
  }

  refreshAgentFilter() {
    const names = new Set(this.state.agents.keys());
    for (const task of this.state.tasks.values()) if (task.assigned_to) names.add(task.assigned_to);
    const sorted = [...names].sort();
    const key = sorted.join("\n");
    if (key === this.agentOptions) return;
    this.agentOptions = key;
    const selected = this.filterAgent.value;
    this.filterAgent.replaceChildren(
      h("option", { value: "", text: "All agents" }),
      ...sorted.map((name) => h("option", { value: name, text: name })),
    );
    this.filterAgent.value = names.has(selected) ? selected : "";
  }

  row(task, now, admin) {
    let row = this.rows.get(task.task_id);
    if (!row) {
      row = this.createRow(task.task_id);
      this.rows.set(task.task_id, row);
    }
    const { cells } = row;
    setText(cells.status, label(task.status));
    cells.status.className = `badge status-${task.status}`;
    setText(cells.priority, task.priority);
    cells.priority.className = `badge priority-${task.priority}`;
    setText(cells.description, task.description);
    setAttr(cells.description, "title", task.description || null);
    setText(cells.agent, task.assigned_to || "–");
    setText(cells.retries, `${task.retry_count ?? 0}/${task.max_retries ?? "?"}`);
    setText(cells.updated, ago(task.updated_at, now));
    setAttr(cells.updated, "title", clockTime(task.updated_at));
    const canCancel = admin && task.status === "queued";
    if (canCancel !== row.cancelShown) {
      row.cancelShown = canCancel;
      cells.actions.replaceChildren(canCancel ? confirmingButton(
        "Cancel", "Confirm", `Cancel task ${task.task_id}`, () => this.actions.cancel(task.task_id),
      ) : "");
    }
    return row.element;
  }

  createRow(taskId) {
    const cells = {
      status: h("span"),
      priority: h("span"),
      description: h("td", { class: "description" }),
      agent: h("td", { class: "mono" }),
      retries: h("td", { class: "numeric" }),
      updated: h("td"),
      actions: h("td", { class: "actions" }),
    };
    const open = h("button", {
      type: "button", class: "link mono", text: shortId(taskId), "aria-label": `Open task ${taskId}`,
      onclick: () => this.actions.openTask(taskId),
    });
    const element = h("tr", { dataset: { taskId } },
      h("td", {}, cells.status), h("td", {}, cells.priority), h("td", {}, open),
      cells.description, cells.agent, cells.retries, cells.updated, cells.actions);
    element.addEventListener("click", (event) => {
      if (!event.target.closest("button")) this.actions.openTask(taskId);
    });
    return { element, cells, cancelShown: null };
  }

  drawDeadLetters() {
    const dead = this.state.deadLetters();
    setText(this.deadSummary, String(dead.length));
    setAttr(this.deadSummary, "data-nonzero", dead.length > 0);
    const admin = this.actions.isAdmin();
    // Rebuilt only when what it shows changed, so focus on a Retry button survives events.
    const fingerprint = JSON.stringify([admin, dead.slice(0, MAX_DEAD_LETTERS)
      .map((task) => [task.task_id, task.last_error])]);
    if (fingerprint === this.deadFingerprint) return;
    this.deadFingerprint = fingerprint;
    const items = dead.slice(0, MAX_DEAD_LETTERS).map((task) => h(
      "li", { class: "dead-letter", dataset: { taskId: task.task_id } },
      h("div", { class: "dead-head" },
        h("button", {
          type: "button", class: "link mono", text: shortId(task.task_id),
          "aria-label": `Open task ${task.task_id}`, onclick: () => this.actions.openTask(task.task_id),
        }),
        h("span", { class: "description", text: task.description }),
        admin ? actionButton("Retry", `Retry task ${task.task_id}`, () => this.actions.retry(task.task_id)) : null),
      h("p", { class: "error-text", text: task.last_error || "no error recorded" }),
    ));
    if (!items.length) items.push(h("li", { class: "empty", text: "Nothing in the dead letter." }));
    this.deadList.replaceChildren(...items);
  }

  wireSubmitForm() {
    const form = byId("submit-form");
    const result = byId("submit-result");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const data = new FormData(form);
      const task = {
        description: String(data.get("description") || "").trim(),
        priority: String(data.get("priority") || "normal"),
      };
      if (!task.description) return;
      const tier = String(data.get("complexity_tier") || "");
      if (tier) task.complexity_tier = tier;
      const capabilities = String(data.get("needed_capabilities") || "")
        .split(",").map((name) => name.trim()).filter(Boolean);
      if (capabilities.length) task.needed_capabilities = capabilities;
      const command = String(data.get("shell_command") || "").trim();
      if (command) task.metadata = { shell_command: command };
      const prerequisites = String(data.get("depends_on") || "")
        .split(",").map((taskId) => taskId.trim()).filter(Boolean);
      if (prerequisites.length) task.depends_on = prerequisites;
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      setText(result, "Submitting…");
      this.actions.submit(task)
        .then((created) => {
          setText(result, `Queued task ${shortId(created.task_id)}.`);
          form.reset();
        })
        .catch((error) => setText(result, `Not submitted: ${error.message}`))
        .finally(() => {
          button.disabled = false;
        });
    });
  }
}
