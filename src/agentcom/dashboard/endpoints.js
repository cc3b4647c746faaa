// The Ollama endpoints panel: one card per endpoint (health, models, load, last error), the
// actions an admin has on each, and the form that adds one.

import { byId, h, reconcileChildren, setAttr, setText } from "./dom.js";
import { ago, clockTime, percent, usage } from "./format.js";
import { actionButton, confirmingButton } from "./tasks.js";

/**
 * What an admin can do to one endpoint, in button order. Each entry is one request on
 * /ws/operator naming the endpoint; a new action is one more entry.
 *
 * - `label`: the button's text; `request`: the operator request type;
 * - `fields(endpointId)`: the request's fields;
 * - `confirm`: the text of a confirming second click (omitted: acts on the first click);
 * - `offered(endpoint)`: whether the action applies to this endpoint;
 * - `removes`: the endpoint is gone afterwards (otherwise the hub's reply is the endpoint
 *   as it is now, and the card shows it);
 * - `done(endpointId)`: what the page says once the hub has done it.
 */
export const ENDPOINT_ACTIONS = [
  {
    label: "Approve",
    request: "endpoint_approve",
    fields: (endpointId) => ({ endpoint: endpointId }),
    confirm: "Confirm",
    offered: (endpoint) => endpoint.source === "agent" && !endpoint.approved,
    removes: false,
    done: (endpointId) => `Endpoint ${endpointId} approved: it serves every agent.`,
  },
  {
    label: "Remove",
    request: "endpoint_remove",
    fields: (endpointId) => ({ endpoint_id: endpointId }),
    confirm: "Confirm",
    offered: () => true,
    removes: true,
    done: (endpointId) => `Endpoint ${endpointId} removed.`,
  },
];

const HEALTH_ORDER = { unhealthy: 0, failing: 1, unchecked: 2, healthy: 3 };

/**
 * The endpoint's state, as `agentcom endpoints` names it: "unchecked" (not checked yet),
 * "healthy", "failing" (its latest checks failed, not yet enough to mark it unhealthy) or
 * "unhealthy".
 */
export function health(endpoint) {
  if (endpoint.healthy === false) return "unhealthy";
  if (endpoint.failures) return "failing";
  return endpoint.healthy ? "healthy" : "unchecked";
}

/** Draws the endpoints panel and wires its add form. */
export class EndpointCards {
  /**
   * @param {import("./state.js").DashboardState} state
   * @param {{endpointAction, addEndpoint, isAdmin}} actions what the controls do
   */
  constructor(state, actions) {
    this.state = state;
    this.actions = actions;
    this.container = byId("endpoint-cards");
    this.summary = byId("endpoints-summary");
    this.cards = new Map();
    this.wireAddForm();
  }

  draw() {
    const endpoints = [...this.state.endpoints.values()].sort(
      (a, b) => HEALTH_ORDER[health(a)] - HEALTH_ORDER[health(b)]
        || a.endpoint_id.localeCompare(b.endpoint_id),
    );
    const healthy = endpoints.filter((endpoint) => health(endpoint) === "healthy").length;
    setText(this.summary, `${healthy} healthy, ${endpoints.length} known`);
    const now = this.state.now();
    const admin = this.actions.isAdmin();
    const wanted = endpoints.map((endpoint) => this.card(endpoint, now, admin));
    if (!endpoints.length) {
      wanted.push(this.empty || (this.empty = h("p", {
        class: "empty", text: "No Ollama endpoint: sidecars report theirs, or an admin adds one.",
      })));
    }
    for (const id of [...this.cards.keys()]) {
      if (!this.state.endpoints.has(id)) this.cards.delete(id);
    }
    reconcileChildren(this.container, wanted);
  }

  card(endpoint, now, admin) {
    let card = this.cards.get(endpoint.endpoint_id);
    if (!card) {
      card = this.createCard(endpoint.endpoint_id);
      this.cards.set(endpoint.endpoint_id, card);
    }
    const { fields } = card;
    const state = health(endpoint);
    card.element.className = `card endpoint-card health-${state}`;
    setText(fields.health, state);
    setText(fields.url, endpoint.url);
    setText(fields.source, endpoint.source === "agent" && endpoint.agent_id
      ? `sidecar ${endpoint.agent_id} (${endpoint.approved ? "approved for every agent" : "its own tasks only"})`
      : "added by an operator");
    this.drawModels(fields.models, endpoint);
    setText(fields.load, this.load(endpoint));
    setText(fields.checked, endpoint.last_checked ? ago(endpoint.last_checked, now) : "never");
    setAttr(fields.checked, "title", endpoint.last_checked ? clockTime(endpoint.last_checked) : null);
    const failures = endpoint.failures ? ` (${endpoint.failures} failed checks in a row)` : "";
    const error = endpoint.last_error ? `${endpoint.last_error}${failures}` : "none";
    setText(fields.error, error);
    setAttr(fields.error, "title", endpoint.last_error ? error : null); // the card shows 3 lines
    fields.error.classList.toggle("error-text", Boolean(endpoint.last_error));
    const key = admin ? JSON.stringify(ENDPOINT_ACTIONS.map((action) => action.offered(endpoint))) : "";
    if (key !== card.actionsKey) {
      card.actionsKey = key;
      fields.actions.replaceChildren(...(admin ? this.buttons(endpoint) : []));
    }
    return card.element;
  }

  drawModels(element, endpoint) {
    const loaded = new Set(endpoint.loaded || []);
    const key = JSON.stringify([endpoint.models, endpoint.loaded]);
    if (element.dataset.key === key) return;
    element.dataset.key = key;
    const models = endpoint.models || [];
    element.replaceChildren(...models.map((name) => h("span", {
      class: loaded.has(name) ? "chip loaded" : "chip",
      text: loaded.has(name) ? `${name} (loaded)` : name,
    })));
    if (!models.length) element.textContent = "none";
  }

  /** The host's load: from its sidecar's latest report, else the hub's view of the host. */
  load(endpoint) {
    const agent = endpoint.agent_id ? this.state.agents.get(endpoint.agent_id) : null;
    const resources = agent && agent.resources && Object.keys(agent.resources).length
      ? agent.resources : endpoint.load;
    if (!resources) return "no report";
    return [
      `CPU ${percent(resources.cpu_percent)}`,
      `RAM ${usage(resources.ram_used_bytes, resources.ram_total_bytes)}`,
      `VRAM ${usage(resources.vram_used_bytes, resources.vram_total_bytes)}`,
    ].join(" · ");
  }

  buttons(endpoint) {
    const id = endpoint.endpoint_id;
    return ENDPOINT_ACTIONS.filter((action) => action.offered(endpoint)).map((action) => {
      const name = `${action.label} endpoint ${id}`;
      const run = () => this.actions.endpointAction(action, id);
      return action.confirm
        ? confirmingButton(action.label, action.confirm, name, run)
        : actionButton(action.label, name, run, "quiet");
    });
  }

  createCard(endpointId) {
    const fields = {
      health: h("span", { class: "badge" }),
      url: h("dd", { class: "mono" }),
      source: h("dd"),
      models: h("dd", { class: "chips" }),
      load: h("dd"),
      checked: h("dd"),
      error: h("dd"),
      actions: h("div", { class: "card-actions" }),
    };
    const element = h(
      "article",
      { class: "card endpoint-card", "aria-label": `Endpoint ${endpointId}`, dataset: { endpointId } },
      h("header", { class: "card-head" }, h("h3", { class: "mono", text: endpointId }), fields.health),
      h("dl", { class: "facts" },
        h("dt", { text: "URL" }), fields.url,
        h("dt", { text: "From" }), fields.source,
        h("dt", { text: "Models" }), fields.models,
        h("dt", { text: "Host load" }), fields.load,
        h("dt", { text: "Last check" }), fields.checked,
        h("dt", { text: "Last error" }), fields.error),
      fields.actions,
    );
    return { element, fields, actionsKey: null };
  }

  wireAddForm() {
    const form = byId("endpoint-form");
    const result = byId("endpoint-result");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const data = new FormData(form);
      const url = String(data.get("url") || "").trim();
      const name = String(data.get("name") || "").trim();
      if (!url) return;
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      setText(result, "Adding…");
      this.actions.addEndpoint(name ? { url, name } : { url })
        .then((endpoint) => {
          setText(result, `Added endpoint ${endpoint.endpoint_id}; the hub checks it now.`);
          form.reset();
        })
        .catch((error) => setText(result, `Not added: ${error.message}`))
        .finally(() => {
          button.disabled = false;
        });
    });
  }
}
