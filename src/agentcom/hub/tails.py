"""The last execution events of recent tasks, so a dashboard that connects (or reconnects)
mid-run can show what a task printed before it arrived.

Kept in memory only: execution events are published, never persisted.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

__all__ = ["ExecutionTails"]


class ExecutionTails:
    """Bounded recent ``execution_progress`` events per task.

    Args:
        max_tasks: tasks kept; adding an event for one more drops the task least recently
            active, with its events.
        max_events: events kept per task; older ones are dropped.
        max_text: string fields of a kept event are cut to this many characters, and
            fields that are not strings, numbers, booleans or null are left out, so one
            task's tail stays small whatever a sidecar sends.
    """

    def __init__(self, max_tasks: int = 20, max_events: int = 200, max_text: int = 2_000) -> None:
        self._max_tasks = max_tasks
        self._max_events = max_events
        self._max_text = max_text
        self._tails: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()

    def add(self, task_id: str, event: dict[str, Any]) -> None:
        """Keep a bounded copy of one published ``execution_progress`` task event."""
        tail = self._tails.get(task_id)
        if tail is None:
            tail = self._tails[task_id] = deque(maxlen=self._max_events)
            while len(self._tails) > self._max_tasks:
                self._tails.popitem(last=False)
        else:
            self._tails.move_to_end(task_id)
        kept = dict(event)
        kept["execution_event"] = self._bounded(event.get("execution_event") or {})
        tail.append(kept)

    def _bounded(self, execution_event: dict[str, Any]) -> dict[str, Any]:
        bounded: dict[str, Any] = {}
        for key, value in execution_event.items():
            if isinstance(value, str):
                bounded[key] = value[: self._max_text]
            elif value is None or isinstance(value, bool | int | float):
                bounded[key] = value
        return bounded

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Task id to its kept events, oldest first."""
        return {task_id: list(tail) for task_id, tail in self._tails.items()}
