// Live execution output as a terminal-like log that follows its tail.

import { h, setText } from "./dom.js";
import { shortId, timeOfDay } from "./format.js";

/** Lines kept on screen per view; older ones are removed from the top. */
export const MAX_VISIBLE_LINES = 1000;
/** Characters of one line drawn; the rest is cut (the task's result keeps the full output). */
const MAX_LINE_CHARS = 4000;
// Short names for the execution event types, so the text column lines up.
const KIND_LABELS = {
  stdout: "out", stderr: "err", status: "status", error: "error", token: "tokens", tool_call: "tool",
};
// Colour and cursor escapes that shell output often carries; they mean nothing here.
const ANSI_ESCAPE = /\u001b\[[0-9;?]*[A-Za-z]/g;

function lineText(line) {
  let text = line.text.replace(ANSI_ESCAPE, "").replace(/\n$/, "");
  if (text.length > MAX_LINE_CHARS) text = `${text.slice(0, MAX_LINE_CHARS)} …`;
  return text;
}

/**
 * One view of the execution log: every task, or a single one.
 *
 * It draws only what is new since its last draw (lines past its last sequence number),
 * and redraws from scratch when its filter changes or the state replaced lines.
 */
export class LogView {
  /**
   * @param {import("./state.js").DashboardState} state
   * @param {HTMLElement} container the scrolling log element
   * @param {HTMLButtonElement} jumpButton shown while the reader has scrolled away from the tail
   */
  constructor(state, container, jumpButton) {
    this.state = state;
    this.container = container;
    this.jumpButton = jumpButton;
    this.taskId = "";
    this.generation = -1;
    this.lastSeq = 0;
    this.lastLine = null;
    this.following = true;
    container.addEventListener("scroll", () => {
      const atTail = container.scrollTop + container.clientHeight >= container.scrollHeight - 8;
      if (atTail !== this.following) {
        this.following = atTail;
        jumpButton.hidden = atTail;
      }
    });
    jumpButton.addEventListener("click", () => {
      this.following = true;
      jumpButton.hidden = true;
      container.scrollTop = container.scrollHeight;
    });
  }

  /** Show only one task's lines ("" for all); redraws on the next draw. */
  showTask(taskId) {
    this.taskId = taskId || "";
    this.generation = -1;
  }

  matches(line) {
    return !this.taskId || line.task_id === this.taskId;
  }

  node(line) {
    return h(
      "div",
      { class: `line kind-${line.kind}` },
      h("span", { class: "ts", text: timeOfDay(line.timestamp) }),
      this.taskId ? null : h("span", { class: "task", text: shortId(line.task_id) }),
      h("span", { class: "kind", text: KIND_LABELS[line.kind] || line.kind.slice(0, 6) }),
      h("span", { class: "text", text: lineText(line) }),
    );
  }

  draw() {
    const { log } = this.state;
    let fresh;
    if (this.generation !== this.state.logGeneration) {
      this.generation = this.state.logGeneration;
      this.container.replaceChildren();
      this.lastLine = null;
      fresh = log.filter((line) => this.matches(line)).slice(-MAX_VISIBLE_LINES);
    } else {
      if (this.lastLine && this.container.lastChild) {
        setText(this.container.lastChild.lastChild, lineText(this.lastLine));
      }
      fresh = [];
      for (let index = log.length - 1; index >= 0 && log[index].seq > this.lastSeq; index -= 1) {
        if (this.matches(log[index])) fresh.push(log[index]);
      }
      fresh.reverse();
    }
    if (log.length) this.lastSeq = log[log.length - 1].seq;
    if (fresh.length) {
      const fragment = document.createDocumentFragment();
      for (const line of fresh.slice(-MAX_VISIBLE_LINES)) fragment.append(this.node(line));
      this.container.append(fragment);
      this.lastLine = fresh[fresh.length - 1];
      let excess = this.container.childElementCount - MAX_VISIBLE_LINES;
      while (excess-- > 0) this.container.firstChild.remove();
    }
    if (!this.container.childElementCount) {
      this.container.append(h("div", { class: "line empty", text: "Waiting for execution output…" }));
    } else if (fresh.length && this.container.firstChild.classList.contains("empty")) {
      this.container.firstChild.remove();
    }
    if (this.following) this.container.scrollTop = this.container.scrollHeight;
  }
}
