// The queue panel: counts by status and by priority, and the last hour as a chart.

import { drawQueueChart } from "./chart.js";
import { byId, h, setAttr, setText } from "./dom.js";
import { count, label } from "./format.js";
import { HISTORY_MINUTES, PRIORITIES, TASK_STATUSES } from "./state.js";

/** A row of labelled numbers whose values are updated in place. */
function tiles(container, names, prefix) {
  const values = new Map();
  container.replaceChildren(
    ...names.map((name) => {
      const value = h("span", { class: "tile-value", text: "0", id: `${prefix}-${name}` });
      values.set(name, value);
      return h("div", { class: `tile ${prefix}-${name}` }, value, h("span", { class: "tile-label", text: label(name) }));
    }),
  );
  return values;
}

/** Draws the queue counts and the chart. */
export class QueuePanel {
  constructor(state) {
    this.state = state;
    this.depth = byId("queue-depth");
    this.byStatus = tiles(byId("status-counts"), TASK_STATUSES, "status");
    this.byPriority = tiles(byId("priority-counts"), PRIORITIES, "priority");
    this.chart = byId("queue-chart");
    this.span = byId("chart-span");
  }

  drawCounts() {
    const { queue } = this.state;
    setText(this.depth, count(queue.depth));
    for (const [name, element] of this.byStatus) {
      const value = queue.by_status[name] || 0;
      setText(element, count(value));
      // Only a count that says something is wrong may be red: zero dead letters is good news.
      setAttr(element.parentElement, "data-nonzero", value > 0);
    }
    for (const [name, element] of this.byPriority) {
      setText(element, count(queue.queued_by_priority[name] || 0));
    }
  }

  drawChart() {
    const points = this.state.history.chartWindow(this.state.now());
    drawQueueChart(this.chart, points);
    const span = points.length >= HISTORY_MINUTES ? "last hour" : `last ${points.length} min`;
    setText(this.span, span);
    const completions = points.reduce((sum, point) => sum + point.completions, 0);
    setAttr(
      this.chart,
      "aria-label",
      `${span[0].toUpperCase()}${span.slice(1)}: ${completions} tasks completed; `
        + `queue depth now ${this.state.queue.depth}.`,
    );
  }
}
