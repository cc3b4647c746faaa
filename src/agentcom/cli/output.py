"""Human output: the one table printer, the one date format, money, and a task as
``task show`` prints it. Data for machines goes to stdout as JSON instead; lines for the
person running a command go to stderr through :func:`say`."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

from agentcom.protocol.task import ReclaimReason

__all__ = ["cell", "count_line", "describe_hold", "print_task", "say", "table", "usd", "utc_time"]


def utc_time(ms: Any) -> str:
    """The one date format of human output: UTC, to the second."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def usd(amount: Any) -> str:
    """Money as money: ``$0.0012``."""
    return "-" if amount is None else f"${amount:.4f}"


def cell(value: Any) -> str:
    """A value as a table cell or a field: never a Python repr (``None``, ``['gpu']``)."""
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(cell(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return " ".join(str(value).split())  # one line


def table(
    headers: list[str],
    rows: list[list[Any]],
    *,
    empty: str,
    notes: list[str | None] | None = None,
) -> None:
    """Print rows under a header, columns aligned (the last one unpadded); ``empty``
    (e.g. "no tasks") when there is no row. A row's note, if any, is an indented line
    under it."""
    if not rows:
        print(empty)
        return
    cells = [headers, *([cell(value) for value in row] for row in rows)]
    widths = [max(len(line[column]) for line in cells) for column in range(len(headers) - 1)]
    for number, line in enumerate(cells):
        padded = [text.ljust(width) for text, width in zip(line, widths, strict=False)]
        print("  ".join([*padded, line[-1]]).rstrip())
        note = notes[number - 1] if notes and number else None
        if note:
            print(f"  {note}")


def print_task(task: dict[str, Any]) -> None:
    """A task as ``task show`` prints it: status, routing, execution, output, history."""
    decision = task.get("routing_decision") or {}
    execution = task.get("execution") or {}
    print(f"task {task['task_id']}  {task['status']}  priority {task['priority']}")
    print(f"  description: {cell(task['description'])}")
    print(f"  assigned to: {cell(task.get('assigned_to'))} (generation {task['generation']})")
    if task.get("waiting_reason"):
        print(f"  waiting: {task['waiting_reason']}")
    if task.get("depends_on"):
        print(f"  prerequisites: {', '.join(task['depends_on'])}")
    if task.get("dependants"):
        more = task["dependants_total"] - len(task["dependants"])
        print(f"  dependants: {', '.join(task['dependants'])}{f' and {more} more' if more else ''}")
    if task.get("held_for"):
        print(f"  held: {describe_hold(task['held_for'])}")
    print(
        f"  retries: {task['retry_count']}/{task['max_retries']}"
        f"  last error: {cell(task.get('last_error'))}"
    )
    if decision:
        print(
            f"  routing: tier {cell(decision.get('effective_tier'))}"
            f" -> {cell(decision.get('target_type'))}"
            f"  endpoint {cell(decision.get('selected_endpoint'))}"
            f"  model {cell(decision.get('selected_model'))}"
            f"  cost tier {cell(decision.get('estimated_cost_tier'))}"
        )
        if decision.get("fallback_used"):
            print(f"  fallback: {cell(decision.get('fallback_reason'))}")
        print(f"  reason: {cell(decision.get('classification_reason'))}")
    if execution:
        print(f"  execution: {_execution(execution)}")
    if task.get("agentic"):
        _print_agentic(task["agentic"])
    output = (task.get("result") or {}).get("output")
    if output is not None:
        print("  output:")
        text = output if isinstance(output, str) else json.dumps(output, indent=2)
        for line in text.splitlines() or [""]:
            print(f"    {line}")
    print("  history:")
    for entry in task.get("history", []):
        line = f"    {utc_time(entry['at'])}  {entry['status']:<12} {entry.get('detail') or ''}"
        print(line.rstrip())


def _print_agentic(run: dict[str, Any]) -> None:
    """An agentic run's outcome and the tool calls the hub kept, oldest first."""
    stopped = run.get("termination_reason")
    iterations = run.get("iterations_used")
    summary = f"{run['tool_calls_total']} tool calls"
    if stopped is not None or iterations is not None:
        summary += f"; stopped: {cell(stopped)} after {cell(iterations)} iterations"
    print(f"  agentic: {summary}")
    for call in run.get("tool_calls", []):
        result = call.get("result_summary")
        tool = f"#{cell(call.get('iteration'))} {cell(call.get('tool_name'))}"
        print(
            f"    {utc_time(call['at'])}  {tool} {cell(call.get('args_summary'))}"
            f"{f' -> {cell(result)}' if result else ''}"
        )


_RECLAIMED_BY: dict[ReclaimReason, str] = {
    "disconnect_grace": "requeued at {at} (grace period) unless the agent comes back",
    "acceptance_timeout": "requeued at {at} (not accepted in time) unless the agent accepts it",
    "no_progress": "reclaimed at {at} (no progress) unless the agent reports on it",
}


def describe_hold(hold: dict[str, Any]) -> str:
    """What the hub does with a task held for its agent (``held_task``, ``held_for``)."""
    where = "back, but silent on the task" if hold["agent_connected"] else "disconnected"
    until = _RECLAIMED_BY[hold["reclaim_reason"]].format(at=utc_time(hold["reclaim_at"]))
    return (
        f"task {hold['task_id']} kept for {hold['agent_id']} ({where}) since "
        f"{utc_time(hold['since'])}; {until}"
    )


def _execution(execution: dict[str, Any]) -> str:
    """The execution figures the sidecar reported, leaving out those it did not."""
    parts = []
    if execution.get("model_used") is not None:
        parts.append(f"model {execution['model_used']}")
    tokens_in, tokens_out = execution.get("tokens_in"), execution.get("tokens_out")
    if tokens_in is not None or tokens_out is not None:
        parts.append(f"tokens in {cell(tokens_in)} out {cell(tokens_out)}")
    if execution.get("estimated_cost_usd") is not None:
        parts.append(f"cost {usd(execution['estimated_cost_usd'])}")
    if execution.get("equivalent_claude_cost_usd") is not None:
        parts.append(f"claude-equivalent {usd(execution['equivalent_claude_cost_usd'])}")
    if execution.get("execution_ms") is not None:
        parts.append(f"{execution['execution_ms']:.0f} ms")
    return "  ".join(parts) or "-"


def say(line: str) -> None:
    """A line for the person running a long command, on stderr (stdout carries data)."""
    print(f"agentcom: {line}", file=sys.stderr, flush=True)


def count_line(counts: dict[str, int]) -> str:
    """``queued 2  working 1``: names and counts on one line."""
    return "  ".join(f"{name} {count}" for name, count in counts.items())
