// One card per agent: state, current task, capabilities, heartbeat, host load, Ollama.

import { byId, h, reconcileChildren, setAttr, setText } from "./dom.js";
import { ago, clockTime, holdText, percent, shortId, usage } from "./format.js";
import { confirmingButton } from "./tasks.js";

const STATE_ORDER = { working: 0, assigned: 1, idle: 2, offline: 3 };

/** The sidecar's process as pm2 reported it when it identified. */
function pm2Text(info) {
  const parts = [`pm2 ${info.name || "–"} ${info.status || "–"}`];
  if (typeof info.restart_count === "number") parts.push(`${info.restart_count} restarts`);
  if (typeof info.memory_bytes === "number") parts.push(`${Math.round(info.memory_bytes / 2 ** 20)} MiB`);
  return parts.join(", ");
}

/** Draws the agents panel, reusing each agent's card between frames. */
export class AgentCards {
  /**
   * @param {import("./state.js").DashboardState} state
   * @param {(taskId: string) => void} openTask opens a task's detail
   * @param {{restartAgent, isAdmin}} actions asks a sidecar to restart; whether the token may
   */
  constructor(state, openTask, actions) {
    this.state = state;
    this.openTask = openTask;
    this.actions = actions;
    this.container = byId("agent-cards");
    this.summary = byId("agents-summary");
    this.cards = new Map();
  }

  draw() {
    const agents = [...this.state.agents.values()].sort(
      (a, b) => (STATE_ORDER[a.state] ?? 4) - (STATE_ORDER[b.state] ?? 4)
        || a.agent_id.localeCompare(b.agent_id),
    );
    const online = agents.filter((agent) => agent.state !== "offline").length;
    setText(this.summary, `${online} online, ${agents.length} known`);
    const now = this.state.now();
    const wanted = agents.map((agent) => this.card(agent, now));
    if (!agents.length) {
      wanted.push(this.empty || (this.empty = h("p", { class: "empty", text: "No agent has connected yet." })));
    }
    for (const id of [...this.cards.keys()]) {
      if (!this.state.agents.has(id)) this.cards.delete(id);
    }
    reconcileChildren(this.container, wanted);
  }

  card(agent, now) {
    let card = this.cards.get(agent.agent_id);
    if (!card) {
      card = this.createCard(agent.agent_id);
      this.cards.set(agent.agent_id, card);
    }
    const { fields } = card;
    card.element.className = `card agent-card state-${agent.state}`;
    setText(fields.name, agent.name && agent.name !== agent.agent_id
      ? `${agent.name} (${agent.agent_id})` : agent.agent_id);
    setText(fields.state, agent.state);
    // Sidecars say "idle" when they connect, even mid-task: only other words tell something.
    const reported = agent.status && agent.status !== "idle" && agent.status !== agent.state;
    setText(fields.status, reported ? `reports: ${agent.status}` : "");
    // A task kept for the agent since its connection ended: say until when, and why.
    setText(fields.held, agent.held_task ? holdText(agent.held_task) : "");
    const restarting = agent.restarting;
    setText(fields.restarting, restarting
      ? `Restarting since ${clockTime(restarting.since)}: ${restarting.reason || "no reason given"}` : "");
    setText(fields.pm2, agent.pm2_info ? pm2Text(agent.pm2_info) : "");
    // Only an admin may ask, and only a connected sidecar can hear it.
    fields.restart.hidden = !(this.actions.isAdmin() && agent.state !== "offline");
    setText(fields.task, agent.current_task ? shortId(agent.current_task) : "none");
    setAttr(fields.task, "disabled", !agent.current_task);
    setAttr(fields.task, "aria-label", agent.current_task
      ? `Open task ${agent.current_task} held by ${agent.agent_id}` : "No current task");
    fields.task.dataset.taskId = agent.current_task || "";
    const capabilities = (agent.capabilities || []).join(" ");
    if (fields.capabilities.dataset.value !== capabilities) {
      fields.capabilities.dataset.value = capabilities;
      fields.capabilities.replaceChildren(
        ...(agent.capabilities || []).map((name) => h("span", { class: "chip", text: name })),
      );
      if (!capabilities) fields.capabilities.textContent = "none";
    }
    setText(fields.heartbeat, ago(agent.last_seen, now));
    setAttr(fields.heartbeat, "title", clockTime(agent.last_seen));
    const resources = agent.resources || {};
    setText(fields.cpu, percent(resources.cpu_percent));
    setText(fields.ram, usage(resources.ram_used_bytes, resources.ram_total_bytes));
    setText(fields.vram, usage(resources.vram_used_bytes, resources.vram_total_bytes));
    setText(fields.ollama, agent.ollama_url || "none");
    return card.element;
  }

  createCard(agentId) {
    const field = (tag = "dd", props = {}) => h(tag, props);
    const fields = {
      name: h("h3"),
      state: h("span", { class: "badge" }),
      status: h("p", { class: "agent-status" }),
      held: h("p", { class: "agent-held" }),
      task: h("button", { type: "button", class: "link" }),
      capabilities: h("dd", { class: "chips" }),
      heartbeat: field(),
      cpu: field(),
      ram: field(),
      vram: field(),
      ollama: field("dd", { class: "mono" }),
      restarting: h("p", { class: "agent-restarting" }),
      pm2: h("p", { class: "agent-pm2" }),
      restart: confirmingButton("Restart", "Confirm restart", `Restart agent ${agentId}`,
        () => this.actions.restartAgent(agentId)),
    };
    fields.task.addEventListener("click", () => {
      if (fields.task.dataset.taskId) this.openTask(fields.task.dataset.taskId);
    });
    const element = h(
      "article",
      { class: "card agent-card", "aria-label": `Agent ${agentId}`, dataset: { agentId } },
      h("header", { class: "card-head" }, fields.name, fields.state),
      fields.status,
      fields.held,
      fields.restarting,
      fields.pm2,
      h("dl", { class: "facts" },
        h("dt", { text: "Current task" }), h("dd", {}, fields.task),
        h("dt", { text: "Capabilities" }), fields.capabilities,
        h("dt", { text: "Last heartbeat" }), fields.heartbeat,
        h("dt", { text: "CPU" }), fields.cpu,
        h("dt", { text: "RAM" }), fields.ram,
        h("dt", { text: "VRAM" }), fields.vram,
        h("dt", { text: "Ollama" }), fields.ollama),
      h("div", { class: "detail-actions" }, fields.restart),
    );
    return { element, fields };
  }
}
