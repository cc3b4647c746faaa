// The conditions an operator should not miss, computed from the page's state.

import { shortId, timeOfDay } from "./format.js";

// Whole minutes only: an alert's text then changes rarely, so assistive technology that
// reads alerts out is not interrupted every second.
function minutes(ms) {
  return `${Math.floor(ms / 60_000)} min`;
}

/** Whole minutes in a row the queue must have grown (each ending deeper than it began). */
export const QUEUE_GROWTH_MINUTES = 5;
/** Finished tasks needed before a failure rate is worth flagging. */
export const MIN_OUTCOMES = 4;
/** Validation drops are shown for this long (or until dismissed). */
export const VALIDATION_DROP_MS = 30 * 60_000;

/**
 * Alerts in display order, each `{key, level: "danger"|"warning", text, dismissible}`.
 * @param {import("./state.js").DashboardState} state
 * @param {Set<string>} dismissed keys the operator closed
 */
export function currentAlerts(state, dismissed) {
  if (!state.snapshots) return [];
  const now = state.now();
  const alerts = [];
  const online = [...state.agents.values()].filter((agent) => agent.state !== "offline");
  if (!online.length) {
    alerts.push({
      key: "no-agents", level: "danger",
      text: "No agents online: queued tasks will wait until a sidecar connects.",
    });
  }

  const growth = state.history.growth(now);
  if (growth.minutes >= QUEUE_GROWTH_MINUTES) {
    alerts.push({
      key: "queue-growing", level: "warning",
      text: `Queue growing for ${growth.minutes} min: ${growth.fromDepth} → ${state.queue.depth} waiting.`,
    });
  }

  const stuckAfter = state.timeouts.reclaim_after_ms / 2;
  for (const task of state.tasks.values()) {
    if (task.status !== "assigned" && task.status !== "working") continue;
    const since = task.last_progress_at || task.assigned_at || task.updated_at;
    if (typeof since === "number" && now - since >= stuckAfter) {
      alerts.push({
        key: `stuck-${task.task_id}`, level: "warning", taskId: task.task_id,
        text: `Task ${shortId(task.task_id)} on ${task.assigned_to || "?"} stuck: no progress for ${minutes(now - since)}.`,
      });
    }
  }

  const failures = state.outcomes.filter((succeeded) => !succeeded).length;
  if (state.outcomes.length >= MIN_OUTCOMES && failures * 2 > state.outcomes.length) {
    alerts.push({
      key: "failure-rate", level: "danger",
      text: `${failures} of the last ${state.outcomes.length} tasks failed.`,
    });
  }

  for (const drop of state.validationDrops) {
    if (dismissed.has(drop.key) || now - drop.timestamp > VALIDATION_DROP_MS) continue;
    const who = drop.agent_id ? `Sidecar ${drop.agent_id}` : `A connection from ${drop.remote}`;
    alerts.push({
      key: drop.key, level: "danger", dismissible: true,
      text: `${who} was disconnected at ${timeOfDay(drop.timestamp)} for repeated protocol violations${drop.error ? ` (last: ${drop.error})` : ""}.`,
    });
  }
  return alerts;
}
