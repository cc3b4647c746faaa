// A small SVG chart of the queue's recent minutes (up to an hour, from the first with data):
// completions per minute as bars, queue depth as a line.
// Hand-written because two series on one time axis need no library.

import { h } from "./dom.js";

const WIDTH = 600;
const HEIGHT = 170;
const PAD = { left: 34, right: 34, top: 12, bottom: 22 };

/** A "nice" axis maximum at or above `value` (1, 2, 5 times a power of ten). */
function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

/**
 * Redraw the chart inside `svg`.
 * @param {SVGSVGElement} svg the target (its viewBox is set here)
 * @param {{depth: number|null, completions: number}[]} points one per minute, oldest first,
 *   spread over the whole width
 */
export function drawQueueChart(svg, points) {
  svg.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
  const plotWidth = WIDTH - PAD.left - PAD.right;
  const plotHeight = HEIGHT - PAD.top - PAD.bottom;
  const maxDepth = niceMax(Math.max(0, ...points.map((p) => p.depth ?? 0)));
  const maxDone = niceMax(Math.max(0, ...points.map((p) => p.completions)));
  const slot = plotWidth / Math.max(points.length, 1);
  const bottom = PAD.top + plotHeight;

  const grid = [0, 0.5, 1].map((fraction) => {
    const y = bottom - fraction * plotHeight;
    return h("svg:line", { class: "grid", x1: PAD.left, x2: WIDTH - PAD.right, y1: y, y2: y });
  });
  const bars = points.map((point, index) => {
    const height = (point.completions / maxDone) * plotHeight;
    return h("svg:rect", {
      class: "bar",
      x: (PAD.left + index * slot + slot * 0.15).toFixed(1),
      y: (bottom - height).toFixed(1),
      width: (slot * 0.7).toFixed(1),
      height: height.toFixed(1),
    });
  });
  let path = "";
  let latest = null;
  points.forEach((point, index) => {
    if (point.depth === null) return;
    const x = (PAD.left + (index + 0.5) * slot).toFixed(1);
    const y = (bottom - (point.depth / maxDepth) * plotHeight).toFixed(1);
    path += `${path ? "L" : "M"}${x},${y}`;
    latest = { x, y };
  });
  const axisText = (x, y, text, anchor, cls) =>
    h("svg:text", { x, y, "text-anchor": anchor, class: `axis ${cls || ""}`, text });

  const children = [
    ...grid,
    ...bars,
    path ? h("svg:path", { class: "depth-line", d: path }) : null,
    latest ? h("svg:circle", { class: "depth-now", cx: latest.x, cy: latest.y, r: 3 }) : null,
    axisText(PAD.left - 4, PAD.top + 8, maxDepth, "end", "depth-axis"),
    axisText(PAD.left - 4, bottom, 0, "end", "depth-axis"),
    axisText(WIDTH - PAD.right + 4, PAD.top + 8, maxDone, "start", "done-axis"),
    axisText(WIDTH - PAD.right + 4, bottom, 0, "start", "done-axis"),
    axisText(PAD.left, HEIGHT - 4, `-${points.length} min`, "start"),
    axisText(PAD.left + plotWidth / 2, HEIGHT - 4, `-${Math.round(points.length / 2)} min`, "middle"),
    axisText(WIDTH - PAD.right, HEIGHT - 4, "now", "end"),
  ];
  svg.replaceChildren(...children.filter(Boolean));
}
