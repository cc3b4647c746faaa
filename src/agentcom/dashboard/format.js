// Turning the hub's numbers into short, readable text.

const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });

/** A count, with thousands separators; "–" when unknown. */
export function count(value) {
  return typeof value === "number" && Number.isFinite(value) ? integer.format(value) : "–";
}

/** US dollars with precision that suits small per-task costs. */
export function usd(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  const magnitude = Math.abs(value);
  const digits = magnitude === 0 ? 2 : magnitude < 0.01 ? 5 : magnitude < 1 ? 4 : 2;
  return `$${value.toFixed(digits)}`;
}

/** Bytes as KiB / MiB / GiB. */
export function bytes(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let amount = value;
  let unit = 0;
  while (amount >= 1024 && unit < units.length - 1) {
    amount /= 1024;
    unit += 1;
  }
  return `${amount.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

/** "used / total" bytes, or whichever is known. */
export function usage(used, total) {
  if (typeof used !== "number" && typeof total !== "number") return "–";
  if (typeof total !== "number") return bytes(used);
  if (typeof used !== "number") return `? / ${bytes(total)}`;
  const percent = total > 0 ? ` (${Math.round((used / total) * 100)}%)` : "";
  return `${bytes(used)} / ${bytes(total)}${percent}`;
}

/** A duration in milliseconds as "850 ms", "12.3 s", "4 min 05 s", "2 h 10 min". */
export function duration(ms) {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return "–";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const seconds = ms / 1000;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${String(Math.floor(seconds % 60)).padStart(2, "0")} s`;
  return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, "0")} min`;
}

/** How long ago `then` was, seen from `now` (both hub milliseconds), to a sensible unit. */
export function ago(then, now) {
  if (typeof then !== "number" || then <= 0) return "never";
  const seconds = Math.floor(Math.max(0, now - then) / 1000);
  if (seconds < 2) return "just now";
  if (seconds < 60) return `${seconds} s ago`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours} h ${minutes % 60} min ago`;
  return `${Math.floor(hours / 24)} days ago`;
}

const RECLAIMED_BY = {
  disconnect_grace: "requeued at {at} (grace period) unless the agent comes back",
  acceptance_timeout: "requeued at {at} (not accepted in time) unless the agent accepts it",
  no_progress: "reclaimed at {at} (no progress) unless the agent reports on it",
};

/**
 * What the hub does with a task it keeps for its agent (an agent's `held_task`, a task's
 * `held_for`): for whom, since when, and when which timeout takes it back.
 */
export function holdText(hold) {
  const where = hold.agent_connected ? "back, but silent on the task" : "disconnected";
  const until = (RECLAIMED_BY[hold.reclaim_reason] || "reclaimed at {at}")
    .replace("{at}", clockTime(hold.reclaim_at));
  return `Task ${hold.task_id} kept for ${hold.agent_id} (${where}) since ${clockTime(hold.since)}; ${until}`;
}

/**
 * A hub timestamp as date and time in the one format of agentcom's human output, the
 * command line's too: UTC to the second, "2026-11-25 10:42:13".
 */
export function clockTime(ms) {
  if (typeof ms !== "number" || ms <= 0) return "–";
  return new Date(ms).toISOString().slice(0, 19).replace("T", " ");
}

/** A hub timestamp as the time of day of {@link clockTime}: "10:42:13" (UTC). */
export function timeOfDay(ms) {
  if (typeof ms !== "number" || ms <= 0) return "–";
  return new Date(ms).toISOString().slice(11, 19);
}

/** The first characters of a task id: enough to tell tasks apart on screen. */
export function shortId(taskId) {
  return typeof taskId === "string" ? taskId.slice(0, 8) : "–";
}

/** A status or tier name for display ("dead_letter" -> "dead letter"). */
export function label(value) {
  return typeof value === "string" ? value.replaceAll("_", " ") : "–";
}

/** A percentage with no decimals. */
export function percent(value) {
  return typeof value === "number" && Number.isFinite(value) ? `${Math.round(value)}%` : "–";
}
