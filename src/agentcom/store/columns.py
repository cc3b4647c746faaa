"""What every store derives from a task the same way: its typed columns and its stats.

A store keeps a task whole and, beside it, the few fields that lists and aggregates
read (:func:`task_columns`). :func:`stats_report` shapes the figures a store aggregated
into the answer of :meth:`agentcom.store.base.Store.read_task_stats`, so every store
answers in the same shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from agentcom.protocol.common import TERMINAL, TaskStatus
from agentcom.protocol.task import Task, task_body

__all__ = [
    "STAT_FIELDS",
    "TERMINAL_VALUES",
    "TaskColumns",
    "TaskFields",
    "stats_report",
    "task_columns",
    "task_fields",
]

TERMINAL_VALUES = tuple(status.value for status in TaskStatus if status in TERMINAL)
"""The terminal statuses as a store keeps them, in the order of :class:`TaskStatus`."""

STAT_FIELDS = ("tasks", "tokens_in", "tokens_out", "estimated_cost_usd",
               "equivalent_claude_cost_usd", "execution_ms")  # fmt: skip
"""The execution totals of a group of completed tasks, in the order of each totals row."""

TaskFields = tuple[
    str, str, str, str | None, int, str | None, int | None, int | None,
    float | None, float | None, float | None, int, int,
]  # fmt: skip
"""``(task_id, status, priority, assigned_to, generation, model_used, tokens_in,
tokens_out, estimated_cost_usd, equivalent_claude_cost_usd, execution_ms, created_at,
updated_at)``: what lists filter on and statistics add up."""

TaskColumns = tuple[
    str, str, str, str | None, int, str | None, int | None, int | None,
    float | None, float | None, float | None, int, int, str,
]  # fmt: skip
""":data:`TaskFields` followed by the body, the task as JSON."""


def task_columns(task: Task) -> TaskColumns:
    """``task``'s typed columns and its body (see :data:`TaskColumns`)."""
    return (*task_fields(task), task_body(task))


def task_fields(task: Task) -> TaskFields:
    """``task``'s typed columns (see :data:`TaskFields`)."""
    execution = task.execution
    return (
        task.task_id,
        task.status._value_,  # the plain str (`.value` is a slow descriptor)
        task.priority._value_,
        task.assigned_to,
        task.generation,
        execution.model_used if execution else None,
        execution.tokens_in if execution else None,
        execution.tokens_out if execution else None,
        execution.estimated_cost_usd if execution else None,
        execution.equivalent_claude_cost_usd if execution else None,
        execution.execution_ms if execution else None,
        task.created_at,
        task.updated_at,
    )


def stats_report(
    by_status: Mapping[str, int],
    queued_by_priority: Mapping[str, int],
    totals: tuple[Any, ...],
    by_model: Iterable[tuple[Any, ...]],
    by_agent: Iterable[tuple[Any, ...]],
    finished: Iterable[tuple[str, int]],
) -> dict[str, Any]:
    """The answer of ``read_task_stats``.

    ``totals`` is one row of :data:`STAT_FIELDS` over every completed task; each row of
    ``by_model`` and ``by_agent`` is the model (or agent, None for none) followed by the
    same fields over its completed tasks; ``finished`` counts tasks per terminal status.
    """
    counted = dict.fromkeys(TERMINAL_VALUES, 0)
    counted.update(finished)
    return {
        "by_status": dict(by_status),
        "queued_by_priority": dict(queued_by_priority),
        "totals": dict(zip(STAT_FIELDS, totals, strict=True)),
        "by_model": {
            row[0] or "unknown": dict(zip(STAT_FIELDS, row[1:], strict=True)) for row in by_model
        },
        "by_agent": {
            row[0] or "unknown": dict(zip(STAT_FIELDS, row[1:], strict=True)) for row in by_agent
        },
        "finished": counted,
    }
