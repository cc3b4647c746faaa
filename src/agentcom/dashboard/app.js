// The dashboard page: asks for a token, connects to the hub, and keeps every panel current.

import { AgentCards } from "./agents.js";
import { currentAlerts } from "./alerts.js";
import { DashboardFeed, OperatorChannel } from "./connection.js";
import { CostPanel } from "./costs.js";
import { TaskDetail } from "./detail.js";
import { byId, h, reconcileChildren, setAttr, setText } from "./dom.js";
import { EndpointCards } from "./endpoints.js";
import { clockTime, count, duration, shortId } from "./format.js";
import { LogView } from "./output.js";
import { QueuePanel } from "./queue.js";
import { FrameScheduler } from "./scheduler.js";
import { DashboardState } from "./state.js";
import { TaskPanels } from "./tasks.js";

/** sessionStorage key of the token: kept for this tab only, gone when it closes. */
const TOKEN_KEY = "agentcom.token";
/** `stats` requests are at least this far apart (counts and costs after events). */
const STATS_INTERVAL_MS = 1000;
/** Lookups of tasks first seen in events are at least this far apart. */
const LOOKUP_INTERVAL_MS = 500;
/** Below this many unknown tasks, each is fetched; above, the latest tasks are listed. */
const SINGLE_LOOKUPS = 10;
/** Tasks read by one `task_list` request when re-syncing. */
const LIST_LIMIT = 200;
/** Tasks offered in the live output's task filter. */
const LOG_FILTER_TASKS = 30;

const ERROR_MESSAGES = {
  forbidden: "This token is read-only: actions need an admin token.",
  invalid_state: "The task is no longer in a state that allows this.",
  not_found: "The hub does not know this task or endpoint.",
  disconnected: "Not connected to the hub; try again once it is back.",
};

/** The token passed as `#token=...`, removed from the address bar once read. */
function tokenFromFragment() {
  if (!location.hash) return null;
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  if (token !== null) history.replaceState(null, "", location.pathname);
  return token || null;
}

class Dashboard {
  constructor() {
    this.state = new DashboardState();
    this.feed = null;
    this.operator = null;
    this.role = null;
    this.dismissed = new Set();
    this.timers = { stats: null, lookup: null };
    this.lastStats = 0;
    this.lastLookup = 0;
    this.inFlight = { stats: false, lookup: false };
    this.feedStatus = "connecting";
    this.feedDelay = 0;
    this.operatorStatus = "connecting";

    const actions = {
      openTask: (taskId) => this.detail.open(taskId),
      retry: (taskId) => this.act("task_retry", { task_id: taskId }, `Task ${shortId(taskId)} is back in the queue.`),
      cancel: (taskId) => this.act("task_cancel", { task_id: taskId }, `Task ${shortId(taskId)} cancelled.`),
      submit: (task) => this.operator.request("task_submit", { task }).then((created) => {
        this.state.mergeTask(created);
        this.redraw("tasks");
        return created;
      }).catch((error) => {
        throw new Error(ERROR_MESSAGES[error.code] || error.message);
      }),
      endpointAction: (action, endpointId) => this.act(
        action.request, action.fields(endpointId), action.done(endpointId),
        (endpoint) => this.state.mergeEndpoint(endpointId, action.removes ? null : endpoint),
      ),
      addEndpoint: (fields) => this.operator.request("endpoint_add", fields).then((endpoint) => {
        this.state.mergeEndpoint(endpoint.endpoint_id, endpoint);
        this.redraw("endpoints");
        return endpoint;
      }).catch((error) => {
        throw new Error(ERROR_MESSAGES[error.code] || error.message);
      }),
      // The agent's card changes with the agent_restart_requested event that follows.
      restartAgent: (agentId) => this.act("agent_restart", { agent_id: agentId, reason: "asked from the dashboard" },
        `Agent ${agentId} asked to restart.`, () => {}),
      request: (type, fields) => this.operator.request(type, fields),
      isAdmin: () => this.role === "admin",
      redraw: (...parts) => this.redraw(...parts),
    };
    this.agents = new AgentCards(this.state, actions.openTask, actions);
    this.endpoints = new EndpointCards(this.state, actions);
    this.queue = new QueuePanel(this.state);
    this.costs = new CostPanel(this.state);
    this.taskPanels = new TaskPanels(this.state, actions);
    this.detail = new TaskDetail(this.state, actions);
    this.log = new LogView(this.state, byId("log"), byId("log-jump"));
    this.logFilter = byId("log-filter");
    this.logFilterKey = "";
    this.logFilter.addEventListener("input", () => {
      this.log.showTask(this.logFilter.value);
      this.redraw("log");
    });
    this.alertsBox = byId("alerts");
    this.alertElements = new Map();

    this.scheduler = new FrameScheduler({
      status: { draw: () => this.drawStatus() },
      agents: { draw: () => this.agents.draw(), minIntervalMs: 100 },
      endpoints: { draw: () => this.endpoints.draw(), minIntervalMs: 250 },
      queue: { draw: () => this.queue.drawCounts() },
      chart: { draw: () => this.queue.drawChart(), minIntervalMs: 1000 },
      costs: { draw: () => this.costs.draw() },
      tasks: {
        draw: () => {
          this.taskPanels.drawTable();
          this.taskPanels.drawDeadLetters();
          this.detail.draw();
        },
        minIntervalMs: 250,
      },
      detail: { draw: () => this.detail.draw() },
      alerts: { draw: () => this.drawAlerts(), minIntervalMs: 250 },
      // Last: following the tail measures the log, which forces a layout of the frame.
      log: {
        draw: () => {
          this.drawLogFilter();
          this.log.draw();
          this.detail.draw();
        },
      },
    }, this.state.dirty);

    // Relative times ("12 s ago") and time-based alerts move without any event.
    setInterval(() => this.redraw("agents", "alerts", "status"), 1000);
    setInterval(() => this.redraw("endpoints"), 5000);
    setInterval(() => this.redraw("tasks", "chart"), 5000);
  }

  /** Mark parts of the page dirty and ask for a frame to redraw them. */
  redraw(...parts) {
    this.state.mark(...parts);
    this.scheduler.request();
  }

  start(token) {
    this.stop();
    this.feed = new DashboardFeed(token, (frame) => this.receive(frame));
    this.operator = new OperatorChannel(token);
    this.feed.onStatus((status, detail) => {
      this.feedStatus = status;
      this.feedDelay = status === "waiting" ? detail : 0;
      if (status === "refused") this.refused(detail);
      this.redraw("status");
    });
    this.operator.onStatus((status, detail) => {
      this.operatorStatus = status;
      if (status !== "live") this.setRole(null);
      if (status === "refused") this.refused(detail);
      this.redraw("status");
    });
    this.operator.onReady((role) => {
      this.setRole(role);
      this.resync();
    });
    byId("token-gate").hidden = true;
    byId("board").hidden = false;
    byId("change-token").hidden = false;
    this.feed.start();
    this.operator.start();
  }

  stop() {
    if (this.feed) this.feed.stop();
    if (this.operator) this.operator.stop();
    this.feed = null;
    this.operator = null;
    this.setRole(null);
  }

  /** The hub refused the token; `reason` is what it said (for an agent's token, which
   * token would do), else null. */
  refused(reason) {
    this.stop();
    sessionStorage.removeItem(TOKEN_KEY);
    showTokenGate(reason
      ? `The hub refused this token: ${reason}.`
      : "The hub refused this token. Paste another one.");
  }

  setRole(role) {
    if (role === this.role) return;
    this.role = role;
    document.body.dataset.role = role || "";
    for (const element of document.querySelectorAll("[data-admin]")) element.hidden = role !== "admin";
    const badge = byId("role");
    badge.hidden = !role;
    badge.textContent = role === "viewer" ? "viewer (read only)" : role || "";
    this.redraw("tasks", "endpoints"); // their action buttons depend on the role
    if (this.detail.isOpen) this.detail.fetch();
  }

  /** One frame from /ws/dashboard. */
  receive(frame) {
    this.state.apply(frame);
    this.refresh();
    this.scheduler.request();
  }

  /** After (re)authentication: counts, the latest tasks and the dead letter, fresh. */
  resync() {
    this.state.wantStats = true;
    this.state.wantList = true;
    this.refresh();
    this.operator.request("task_list", { status: "dead_letter", limit: 100 })
      .then((tasks) => this.mergeTasks(tasks))
      .catch(() => {}); // the next resync tries again
  }

  mergeTasks(tasks) {
    for (const task of tasks) this.state.mergeTask(task);
    this.redraw("tasks", "agents");
  }

  /** Ask the hub for what events alone cannot tell, each kind at a bounded rate. */
  refresh() {
    if (!this.operator || !this.operator.ready) return;
    const now = performance.now();
    const { state } = this;
    if (state.wantStats && !this.inFlight.stats) {
      const wait = this.lastStats + STATS_INTERVAL_MS - now;
      if (wait <= 0) this.fetchStats();
      else this.later("stats", wait);
    }
    if ((state.wantList || state.unknownTasks.size) && !this.inFlight.lookup) {
      const wait = this.lastLookup + LOOKUP_INTERVAL_MS - now;
      if (wait <= 0) this.lookUpTasks();
      else this.later("lookup", wait);
    }
  }

  later(kind, wait) {
    if (this.timers[kind] !== null) return;
    this.timers[kind] = setTimeout(() => {
      this.timers[kind] = null;
      this.refresh();
    }, wait);
  }

  fetchStats() {
    this.state.wantStats = false;
    this.inFlight.stats = true;
    this.lastStats = performance.now();
    this.operator.request("stats")
      .then((stats) => {
        this.state.applyStats(stats);
        this.scheduler.request();
      })
      .catch(() => {
        this.state.wantStats = true;
      })
      .finally(() => {
        this.inFlight.stats = false;
        this.refresh();
      });
  }

  lookUpTasks() {
    const { state } = this;
    const ids = [...state.unknownTasks];
    const single = !state.wantList && ids.length <= SINGLE_LOOKUPS;
    state.wantList = false;
    state.unknownTasks.clear(); // tasks still unknown afterwards stay so until clicked
    this.inFlight.lookup = true;
    this.lastLookup = performance.now();
    const lookup = single
      ? Promise.allSettled(ids.map((taskId) => this.operator.request("task_get", { task_id: taskId })))
        .then((results) => results.filter((r) => r.status === "fulfilled").map((r) => r.value))
      : this.operator.request("task_list", { limit: LIST_LIMIT });
    lookup
      .then((tasks) => this.mergeTasks(tasks))
      .catch(() => {
        for (const taskId of ids) state.unknownTasks.add(taskId);
      })
      .finally(() => {
        this.inFlight.lookup = false;
        this.refresh();
      });
  }

  /**
   * Run an operator action; tell the operator how it went.
   * @param {(data: object) => void} [apply] takes the reply into the page's model (by
   *   default the reply is a task)
   */
  act(type, fields, success, apply = (task) => this.state.mergeTask(task)) {
    const status = byId("action-status");
    if (!this.operator) return Promise.resolve();
    return this.operator.request(type, fields)
      .then((data) => {
        apply(data);
        this.state.wantStats = true;
        this.refresh();
        this.redraw("tasks", "agents", "endpoints");
        status.dataset.kind = "ok";
        setText(status, success);
      })
      .catch((error) => {
        status.dataset.kind = "error";
        setText(status, ERROR_MESSAGES[error.code] || `Failed: ${error.message}`);
      });
  }

  drawStatus() {
    const element = byId("connection");
    let text;
    if (this.feedStatus === "live") {
      text = this.operatorStatus === "live" ? "Live" : "Live (actions reconnecting…)";
    } else if (this.feedStatus === "waiting") {
      text = `Hub unreachable: reconnecting in ${(this.feedDelay / 1000).toFixed(1)} s`;
    } else if (this.feedStatus === "refused") {
      text = "Token refused";
    } else {
      text = "Connecting…";
    }
    element.dataset.state = this.feedStatus;
    setText(element, text);
    const info = byId("hub-info");
    const { version, started_at: startedAt } = this.state.hub;
    info.hidden = !version || this.feedStatus !== "live"; // an uptime only while it is up
    if (!info.hidden) {
      const up = this.state.now() - startedAt;
      const uptime = startedAt ? ` · up ${up < 60_000 ? `${Math.floor(up / 1000)} s` : duration(up)}` : "";
      setText(info, `hub ${version}${uptime}`);
      setAttr(info, "title", startedAt ? `started ${clockTime(startedAt)}` : null);
    }
    const dropped = byId("dropped");
    const notes = [];
    if (this.state.dropped) notes.push(`${count(this.state.dropped)} events dropped`);
    if (this.state.clusterGap) notes.push("events from other hub nodes may be missing");
    dropped.hidden = notes.length === 0;
    setText(dropped, notes.join(" · "));
  }

  drawLogFilter() {
    const recent = [];
    const seen = new Set();
    for (let index = this.state.log.length - 1; index >= 0 && recent.length < LOG_FILTER_TASKS; index -= 1) {
      const taskId = this.state.log[index].task_id;
      if (!seen.has(taskId)) {
        seen.add(taskId);
        recent.push(taskId);
      }
    }
    const selected = this.logFilter.value;
    if (selected && !seen.has(selected)) recent.push(selected);
    const key = recent.join(",");
    if (key === this.logFilterKey) return;
    this.logFilterKey = key;
    this.logFilter.replaceChildren(
      h("option", { value: "", text: "All tasks" }),
      ...recent.map((taskId) => {
        const task = this.state.tasks.get(taskId);
        const description = task && task.description ? ` · ${task.description.slice(0, 40)}` : "";
        return h("option", { value: taskId, text: `${shortId(taskId)}${description}` });
      }),
    );
    this.logFilter.value = selected;
  }

  drawAlerts() {
    const alerts = currentAlerts(this.state, this.dismissed);
    const wanted = alerts.map((alert) => {
      let element = this.alertElements.get(alert.key);
      if (!element) {
        const text = h("span", { class: "alert-text" });
        element = h("div", { class: `alert ${alert.level}`, role: "alert" }, text);
        if (alert.taskId) {
          element.append(h("button", {
            type: "button", class: "quiet", text: "Open",
            "aria-label": `Open task ${alert.taskId}`, onclick: () => this.detail.open(alert.taskId),
          }));
        }
        if (alert.dismissible) {
          element.append(h("button", {
            type: "button", class: "quiet", text: "Dismiss", "aria-label": "Dismiss this alert",
            onclick: () => {
              this.dismissed.add(alert.key);
              this.redraw("alerts");
            },
          }));
        }
        this.alertElements.set(alert.key, element);
      }
      setText(element.firstChild, alert.text);
      return element;
    });
    const live = new Set(alerts.map((alert) => alert.key));
    for (const key of [...this.alertElements.keys()]) if (!live.has(key)) this.alertElements.delete(key);
    reconcileChildren(this.alertsBox, wanted);
  }
}

let dashboard = null;

function showTokenGate(message) {
  byId("board").hidden = true;
  byId("change-token").hidden = true;
  byId("token-gate").hidden = false;
  setText(byId("token-error"), message || "");
  const connection = byId("connection");
  connection.dataset.state = "idle";
  setText(connection, "Not connected");
  byId("token-input").focus();
}

function connect(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  dashboard = dashboard || new Dashboard();
  dashboard.start(token);
}

function main() {
  const fragmentToken = tokenFromFragment();
  if (fragmentToken) sessionStorage.setItem(TOKEN_KEY, fragmentToken);
  byId("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = byId("token-input");
    const token = input.value.trim();
    input.value = "";
    if (token) connect(token);
  });
  byId("change-token").addEventListener("click", () => {
    if (dashboard) dashboard.stop();
    sessionStorage.removeItem(TOKEN_KEY);
    showTokenGate();
  });
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) connect(token);
  else showTokenGate();
}

main();
