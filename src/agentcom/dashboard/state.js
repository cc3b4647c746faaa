// What the page knows, built from the snapshot and kept current by events. Applying a frame
// only changes plain data and names the parts of the page that must be redrawn; drawing
// happens at most once per animation frame (render.js).

/** Tasks kept in memory; beyond it the oldest finished ones are forgotten. */
export const MAX_TASKS = 1000;
/** Lines of execution output kept (all tasks together); older lines are dropped. */
export const MAX_LOG_LINES = 2000;
/** Finished tasks (completed or dead-lettered) remembered for the failure-rate alert. */
export const OUTCOME_WINDOW = 10;
/** Minutes of queue history drawn by the chart. */
export const HISTORY_MINUTES = 60;
/** The chart spans at least this many minutes, however recent its first data. */
export const MIN_CHART_MINUTES = 5;
/** Validation drops remembered for the alert banner. */
export const MAX_VALIDATION_DROPS = 20;

export const TASK_STATUSES = ["queued", "assigned", "working", "completed", "dead_letter", "cancelled"];
export const PRIORITIES = ["urgent", "high", "normal", "low"];
const ACTIVE = new Set(["assigned", "working"]);
const UNFINISHED = new Set(["queued", "assigned", "working"]);
// Events that change a task's status (progress events do not).
const TRANSITIONS = new Set([
  "task_submitted", "task_assigned", "task_accepted", "task_completed", "task_failed",
  "task_retried", "task_dead_letter", "task_requeued", "task_reclaimed", "task_cancelled",
]);
// Events caused by a frame of the agent they name: proof that it is alive. (Requeue, reclaim,
// retry and dead-letter events name the agent that lost the task, which may be long gone.)
const AGENT_FRAMES = new Set([
  "task_accepted", "task_progress", "execution_progress", "task_completed", "task_failed",
]);
// Fields of a task that never change after submission: safe to take from any copy.
const STATIC_FIELDS = [
  "description", "metadata", "needed_capabilities", "created_at", "max_retries",
  "complexity_tier", "repo", "branch",
];

/** Is a task in a state where it still holds (or waits for) an agent? */
export function isUnfinished(task) {
  return UNFINISHED.has(task.status);
}

/** Queue depth and completions per minute, for the chart and the "queue growing" alert. */
export class MinuteSeries {
  constructor() {
    this.minutes = new Map(); // minute number -> {depth, completions}
  }

  bucket(timestamp) {
    const minute = Math.floor(timestamp / 60_000);
    let bucket = this.minutes.get(minute);
    if (!bucket) {
      bucket = { depth: null, completions: 0 };
      this.minutes.set(minute, bucket);
      const oldest = minute - HISTORY_MINUTES * 2;
      for (const key of this.minutes.keys()) if (key < oldest) this.minutes.delete(key);
    }
    return bucket;
  }

  recordDepth(timestamp, depth) {
    this.bucket(timestamp).depth = depth;
  }

  recordCompletion(timestamp) {
    this.bucket(timestamp).completions += 1;
  }

  /** Take the hub's record of past minutes (the snapshot's `queue_history`) as it is. */
  replace(points) {
    for (const point of points) {
      const bucket = this.bucket(point.minute * 60_000);
      bucket.depth = point.depth;
      bucket.completions = point.completions;
    }
  }

  /**
   * How many whole minutes in a row, up to the last one that has ended, the queue ended
   * deeper than it began, and the depth at the start of that run; the minute in progress
   * does not count yet. `{minutes: 0}` when the last whole minute did not grow.
   */
  growth(now) {
    const points = this.window(now);
    points.pop(); // the minute in progress
    let minutes = 0;
    for (let index = points.length - 1; index > 0; index -= 1) {
      const { depth } = points[index];
      const before = points[index - 1].depth;
      if (depth === null || before === null || depth <= before) break;
      minutes += 1;
    }
    const start = points[points.length - 1 - minutes];
    return { minutes, fromDepth: start ? start.depth : null };
  }

  /**
   * The minutes of the window from the first one with data (a known depth or a completion),
   * at least `MIN_CHART_MINUTES`: what the chart spreads over its width.
   */
  chartWindow(now) {
    const points = this.window(now);
    const first = points.findIndex((point) => point.depth !== null || point.completions > 0);
    const start = first < 0 ? points.length : first;
    return points.slice(Math.min(start, points.length - MIN_CHART_MINUTES));
  }

  /** The last `HISTORY_MINUTES` minutes up to `now`, depth carried forward where unsampled. */
  window(now) {
    const last = Math.floor(now / 60_000);
    const first = last - HISTORY_MINUTES + 1;
    let depth = null;
    for (const [minute, bucket] of this.minutes) {
      if (minute < first && bucket.depth !== null) depth = bucket.depth;
    }
    const points = [];
    for (let minute = first; minute <= last; minute += 1) {
      const bucket = this.minutes.get(minute);
      if (bucket && bucket.depth !== null) depth = bucket.depth;
      points.push({ minute, depth, completions: bucket ? bucket.completions : 0 });
    }
    return points;
  }
}

/** Everything the page shows, and which parts changed since the last drawing. */
export class DashboardState {
  constructor() {
    this.agents = new Map();
    this.endpoints = new Map();
    this.hub = { version: null, started_at: null };
    this.tasks = new Map();
    this.queue = { depth: 0, by_status: {}, queued_by_priority: {} };
    this.costs = { totals: {}, by_model: {}, by_agent: {} };
    this.timeouts = { accept_timeout_ms: 60_000, reclaim_after_ms: 300_000 };
    this.log = [];
    this.logSeq = 0; // every line gets the next number; views draw lines past their last
    this.logGeneration = 0; // bumped when lines are replaced, not appended: views redraw
    this.outcomes = []; // true = completed, false = failed, oldest first
    this.validationDrops = [];
    this.history = new MinuteSeries();
    this.dropped = 0;
    this.clusterGap = false; // the hub lost its link to the other hub nodes: until the next snapshot
    this.snapshots = 0;
    this.clockOffset = 0; // hub time minus browser time
    this.dirty = new Set();
    this.wantStats = false; // counts or costs changed: ask the hub for fresh figures
    this.wantList = false; // events were lost: re-read the latest tasks
    this.unknownTasks = new Set(); // tasks seen in events whose details we lack
  }

  /** The hub's current time, estimated from the snapshot and events. */
  now() {
    return Date.now() + this.clockOffset;
  }

  observeTime(timestamp) {
    if (typeof timestamp === "number" && timestamp > this.now()) {
      this.clockOffset = timestamp - Date.now();
    }
  }

  mark(...parts) {
    for (const part of parts) this.dirty.add(part);
  }

  /** Apply one frame from /ws/dashboard. */
  apply(frame) {
    switch (frame.type) {
      case "snapshot":
        this.applySnapshot(frame);
        break;
      case "task_event":
        this.applyTaskEvent(frame);
        break;
      case "agent_event":
        this.applyAgentEvent(frame);
        break;
      case "validation_event":
        this.applyValidationEvent(frame);
        break;
      case "endpoint_event":
        this.applyEndpointEvent(frame);
        break;
      case "events_dropped":
        this.dropped += frame.count;
        if (frame.reason === "cluster_link_down") this.clusterGap = true;
        this.wantStats = true;
        this.wantList = true;
        this.mark("status");
        break;
      default:
        break; // newer hubs may send more; ignoring them keeps the page working
    }
  }

  applySnapshot(snapshot) {
    this.clockOffset = snapshot.timestamp - Date.now();
    this.snapshots += 1;
    this.clusterGap = false; // a snapshot re-syncs what the link's outage may have hidden
    this.agents = new Map(snapshot.agents.map((agent) => [agent.agent_id, { ...agent }]));
    this.endpoints = new Map((snapshot.endpoints || []).map((endpoint) => [endpoint.endpoint_id, endpoint]));
    this.hub = { version: snapshot.version || null, started_at: snapshot.started_at || null };
    if (snapshot.timeouts && Object.keys(snapshot.timeouts).length) {
      this.timeouts = { ...this.timeouts, ...snapshot.timeouts };
    }
    this.applyCounts(snapshot.queue.depth, snapshot.queue.by_status, snapshot.queue.queued_by_priority);
    this.costs = snapshot.costs;
    const firstSnapshot = this.snapshots === 1;
    for (const task of snapshot.recent_tasks) this.mergeTask(task, true);
    for (const task of snapshot.active_tasks || []) this.mergeTask(task, true);
    if (firstSnapshot) this.seedOutcomes(snapshot.recent_tasks);
    this.history.replace(snapshot.queue_history || []);
    this.applyTails(snapshot.execution_tails || {});
    // Tasks held as unfinished that the snapshot does not mention may have moved on while
    // the page was away: look them up again.
    const mentioned = new Set(snapshot.recent_tasks.concat(snapshot.active_tasks || [])
      .map((task) => task.task_id));
    for (const task of this.tasks.values()) {
      if (isUnfinished(task) && !mentioned.has(task.task_id)) this.unknownTasks.add(task.task_id);
    }
    this.mark("agents", "endpoints", "queue", "costs", "tasks", "alerts", "status", "chart");
  }

  seedOutcomes(tasks) {
    const finished = tasks
      .filter((task) => task.status === "completed" || task.status === "dead_letter")
      .sort((a, b) => a.updated_at - b.updated_at);
    for (const task of finished) this.recordOutcome(task.status === "completed");
  }

  applyTails(tails) {
    const replaced = new Set(Object.keys(tails));
    if (!replaced.size) return;
    const kept = this.log.filter((line) => !replaced.has(line.task_id));
    const fresh = [];
    for (const events of Object.values(tails)) {
      for (const event of events) fresh.push(this.logLine(event));
    }
    this.log = kept.concat(fresh).sort((a, b) => a.timestamp - b.timestamp || a.seq - b.seq);
    if (this.log.length > MAX_LOG_LINES) this.log.splice(0, this.log.length - MAX_LOG_LINES);
    // Sorting broke the order of sequence numbers: renumber so later lines stay "after".
    for (const line of this.log) line.seq = ++this.logSeq;
    this.logGeneration += 1;
    this.mark("log");
  }

  /** Fresh queue counts (from the snapshot or a `stats` reply). */
  applyCounts(depth, byStatus, byPriority) {
    this.queue = { depth, by_status: byStatus || {}, queued_by_priority: byPriority || {} };
    this.history.recordDepth(this.now(), depth);
    this.mark("queue", "chart", "alerts");
  }

  /** A `stats` reply from the operator channel. */
  applyStats(stats) {
    this.applyCounts(stats.queue_depth, stats.by_status, stats.queued_by_priority);
    this.costs = { totals: stats.totals, by_model: stats.by_model, by_agent: stats.by_agent };
    this.mark("costs");
  }

  /** Merge a full task object (snapshot, task_get, task_list, an action's reply). */
  mergeTask(incoming, fromSnapshot = false) {
    const known = this.tasks.get(incoming.task_id);
    if (!known) {
      this.tasks.set(incoming.task_id, { ...incoming, complete: true });
    } else if (incoming.updated_at >= (known.updated_at || 0) || fromSnapshot) {
      Object.assign(known, incoming, { complete: true });
    } else {
      for (const field of STATIC_FIELDS) known[field] = incoming[field];
      known.complete = true;
    }
    this.unknownTasks.delete(incoming.task_id);
    this.trimTasks();
    this.mark("tasks");
  }

  trimTasks() {
    if (this.tasks.size <= MAX_TASKS + MAX_TASKS / 10) return;
    const finished = [...this.tasks.values()]
      .filter((task) => !isUnfinished(task))
      .sort((a, b) => (a.status === "dead_letter") - (b.status === "dead_letter")
        || a.updated_at - b.updated_at);
    for (const task of finished.slice(0, this.tasks.size - MAX_TASKS)) {
      this.tasks.delete(task.task_id);
    }
  }

  /**
   * The task an event names. A task first seen in an event is a stand-in, not drawn in the
   * table (which would show a row without its description, and, for a progress event that
   * carries no status, with a guessed one) until its details are fetched.
   */
  taskFor(event) {
    let task = this.tasks.get(event.task_id);
    if (!task) {
      const transition = TRANSITIONS.has(event.event);
      task = {
        task_id: event.task_id, status: event.status || (transition ? "queued" : "working"),
        priority: event.priority || "normal", description: "", assigned_to: null,
        generation: event.generation || 0, retry_count: 0, created_at: event.timestamp,
        // A progress event says nothing of the last transition: any fetched copy is newer.
        updated_at: transition ? event.timestamp : 0, complete: false,
      };
      this.tasks.set(event.task_id, task);
      this.unknownTasks.add(event.task_id);
      if (this.unknownTasks.size > MAX_TASKS) {
        // Too many to look up one by one: re-read the latest tasks instead.
        this.unknownTasks.clear();
        this.wantList = true;
      }
      this.trimTasks();
    }
    return task;
  }

  applyTaskEvent(event) {
    this.observeTime(event.timestamp);
    const task = this.taskFor(event);
    const name = event.event;
    if (AGENT_FRAMES.has(name)) {
      this.touchAgent(event.agent_id, event.timestamp);
      this.endHold(event.agent_id, event.task_id); // it reported on the task: not held now
    }
    if (name === "execution_progress") {
      task.last_progress_at = event.timestamp;
      this.appendLog(event);
      this.mark("alerts");
      return;
    }
    if (name === "task_progress") {
      task.last_progress_at = event.timestamp;
      if (typeof event.progress === "number") task.progress = event.progress;
      this.mark("tasks", "alerts");
      return;
    }
    if (!TRANSITIONS.has(name)) return;
    this.applyTransition(task, event);
    task.revision = (task.revision || 0) + 1; // an open detail view re-reads the task
    this.wantStats = true;
    this.mark("tasks", "agents", "alerts");
  }

  applyTransition(task, event) {
    const name = event.event;
    if (event.status) task.status = event.status;
    if (event.priority) task.priority = event.priority;
    if (typeof event.generation === "number") task.generation = event.generation;
    task.updated_at = Math.max(task.updated_at || 0, event.timestamp);
    if (name === "task_assigned" || name === "task_accepted") {
      task.assigned_to = event.agent_id;
      task.last_progress_at = event.timestamp;
      if (name === "task_assigned") task.assigned_at = event.timestamp;
      this.holdTask(event.agent_id, task.task_id, name === "task_accepted");
    } else if (name === "task_completed") {
      if (event.execution) task.execution = event.execution;
      this.recordOutcome(true);
      this.history.recordCompletion(event.timestamp);
      this.releaseTask(task.task_id);
      this.mark("chart");
    } else if (name === "task_failed") {
      // Only the task's end counts as an outcome: this attempt may yet be retried.
      if (event.error) task.last_error = event.error;
      this.releaseTask(task.task_id);
    } else if (name === "task_dead_letter") {
      this.recordOutcome(false);
    } else if (name === "task_retried") {
      if (typeof event.retry_count === "number") task.retry_count = event.retry_count;
    } else if (name === "task_requeued" && event.reason === "operator_retry") {
      task.retry_count = 0;
      task.last_error = null;
    }
    if (!ACTIVE.has(task.status)) {
      if (task.status !== "completed") task.assigned_to = null; // as the hub records it
      this.releaseTask(task.task_id);
    }
  }

  holdTask(agentId, taskId, accepted) {
    const agent = agentId ? this.agents.get(agentId) : null;
    if (!agent) return;
    agent.current_task = taskId;
    if (agent.state !== "offline") agent.state = accepted ? "working" : "assigned";
  }

  releaseTask(taskId) {
    for (const agent of this.agents.values()) {
      if (agent.current_task !== taskId) continue;
      agent.current_task = null;
      agent.held_task = null;
      if (agent.state !== "offline") agent.state = "idle";
      this.mark("agents");
    }
  }

  /** The hub stops holding a task for its agent once the agent reports on it. */
  endHold(agentId, taskId) {
    const agent = agentId ? this.agents.get(agentId) : null;
    if (agent && agent.held_task && agent.held_task.task_id === taskId) {
      agent.held_task = null;
      this.mark("agents");
    }
  }

  touchAgent(agentId, timestamp) {
    const agent = agentId ? this.agents.get(agentId) : null;
    if (agent && typeof timestamp === "number" && timestamp > (agent.last_seen || 0)) {
      agent.last_seen = timestamp;
      this.mark("agents");
    }
  }

  recordOutcome(succeeded) {
    this.outcomes.push(succeeded);
    if (this.outcomes.length > OUTCOME_WINDOW) this.outcomes.shift();
  }

  applyAgentEvent(event) {
    this.observeTime(event.timestamp);
    const previous = this.agents.get(event.agent_id);
    const agent = { ...event.agent };
    if (previous && (previous.last_seen || 0) > (agent.last_seen || 0)) {
      agent.last_seen = previous.last_seen;
    }
    if (event.event !== "agent_disconnected") agent.last_seen = Math.max(agent.last_seen || 0, event.timestamp);
    this.agents.set(event.agent_id, agent);
    this.mark("agents", "alerts", "tasks", "endpoints");
  }

  applyEndpointEvent(event) {
    this.observeTime(event.timestamp);
    if (event.event === "endpoint_removed") this.endpoints.delete(event.endpoint_id);
    else this.endpoints.set(event.endpoint_id, event.endpoint);
    this.mark("endpoints");
  }

  /**
   * An endpoint as an action's reply shows it (`null`: it is gone). The reply and the
   * events travel on different sockets: a copy from a later health check is kept.
   */
  mergeEndpoint(endpointId, endpoint) {
    const known = this.endpoints.get(endpointId);
    if (!endpoint) this.endpoints.delete(endpointId);
    else if (!known || (known.last_checked || 0) <= (endpoint.last_checked || 0)) {
      this.endpoints.set(endpointId, endpoint);
    }
    this.mark("endpoints");
  }

  applyValidationEvent(event) {
    this.observeTime(event.timestamp);
    if (!event.closed) return;
    this.validationDrops.push({
      key: `${event.timestamp}:${event.agent_id || event.remote}`,
      agent_id: event.agent_id,
      remote: event.remote,
      timestamp: event.timestamp,
      error: event.reply ? event.reply.error : null,
    });
    if (this.validationDrops.length > MAX_VALIDATION_DROPS) this.validationDrops.shift();
    this.mark("alerts");
  }

  /** One log line from an `execution_progress` event. */
  logLine(event) {
    const execution = event.execution_event || {};
    const kind = String(execution.event_type || execution.type || "status");
    let text;
    if (kind === "token") {
      const tokens = execution.tokens_so_far ?? execution.tokens ?? "?";
      text = `${tokens} so far${execution.model ? ` · ${execution.model}` : ""}`;
    } else if (kind === "tool_call") {
      // An agentic run sends each call (args_summary), then its result (result_summary).
      const tool = execution.tool_name ?? execution.tool ?? execution.name ?? "";
      const step = execution.iteration != null ? `#${execution.iteration} ` : "";
      if (execution.result_summary) text = `${step}${tool} → ${execution.result_summary}`;
      else if (execution.args_summary) text = `${step}${tool} ${execution.args_summary}`;
      else text = String(execution.text || `${step}${tool}`);
    } else {
      text = String(execution.text ?? execution.message ?? execution.error ?? "");
    }
    this.logSeq += 1;
    return {
      seq: this.logSeq, task_id: event.task_id, agent_id: event.agent_id,
      timestamp: event.timestamp, kind, text,
    };
  }

  appendLog(event) {
    const line = this.logLine(event);
    const last = this.log.length ? this.log[this.log.length - 1] : null;
    if (line.kind === "token" && last && last.kind === "token" && last.task_id === line.task_id) {
      // A token count supersedes the previous one: one line per run of counts, updated in
      // place (views refresh their last line on every draw).
      last.text = line.text;
      last.timestamp = line.timestamp;
    } else {
      this.log.push(line);
      if (this.log.length > MAX_LOG_LINES) this.log.splice(0, this.log.length - MAX_LOG_LINES);
    }
    this.mark("log");
  }

  /** Tasks matching the table's filters, most recently updated first; stand-ins for tasks
   * whose details are still being fetched are left out. */
  filteredTasks(filters, limit) {
    const text = filters.text.trim().toLowerCase();
    const matching = [];
    for (const task of this.tasks.values()) {
      if (!task.complete) continue;
      if (filters.status && task.status !== filters.status) continue;
      if (filters.priority && task.priority !== filters.priority) continue;
      if (filters.agent && task.assigned_to !== filters.agent) continue;
      if (text && !`${task.task_id} ${task.description || ""} ${task.last_error || ""}`
        .toLowerCase().includes(text)) continue;
      matching.push(task);
    }
    matching.sort((a, b) => (b.updated_at || 0) - (a.updated_at || 0));
    return { total: matching.length, shown: matching.slice(0, limit) };
  }

  deadLetters() {
    return [...this.tasks.values()]
      .filter((task) => task.status === "dead_letter" && task.complete)
      .sort((a, b) => b.updated_at - a.updated_at);
  }
}
