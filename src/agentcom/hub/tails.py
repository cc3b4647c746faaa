"""The last execution events of recent tasks, so a dashboard that connects (or reconnects)
mid-run can show what a task printed before it arrived.

Events are published as they come; the tails are kept in memory and saved with the rest of
the hub's recent activity at every sweep and when the hub stops (see
:meth:`agentcom.hub.recovery.Recovery.stage_recent_activity`), so a restarted hub still has them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from agentcom.hub.bounded import SizedQueue

__all__ = ["ExecutionTails"]


_EVENT_OVERHEAD = 128  # the task event around an execution event, roughly, in characters


def _size_of(execution_event: dict[str, Any]) -> int:
    """Roughly the characters one kept event holds, names and values counted."""
    size = _EVENT_OVERHEAD
    for key, value in execution_event.items():
        size += len(key) + (len(value) if isinstance(value, str) else 24)
    return size


class ExecutionTails:
    """Bounded recent ``execution_progress`` events per task.

    Args:
        max_tasks: tasks kept; adding an event for one more drops the task least recently
            active, with its events.
        max_events: events kept per task; older ones are dropped.
        max_text: string fields of a kept event are cut to this many characters, and
            fields that are not strings, numbers, booleans or null are left out, so one
            task's tail stays small whatever a sidecar sends.
        max_keys: fields kept per event (the first ones sent); the others are left out.
        max_key_chars: a field whose name is longer than this is left out.
        max_task_bytes: characters kept per task, names and values counted; beyond it the
            oldest events are dropped (the newest is always kept).
    """

    def __init__(
        self,
        max_tasks: int = 20,
        max_events: int = 200,
        max_text: int = 2_000,
        max_keys: int = 32,
        max_key_chars: int = 64,
        max_task_bytes: int = 256 * 1024,
    ) -> None:
        self._max_tasks = max_tasks
        self._max_events = max_events
        self._max_text = max_text
        self._max_keys = max_keys
        self._max_key_chars = max_key_chars
        self._max_task_bytes = max_task_bytes
        self._tails: OrderedDict[str, SizedQueue[dict[str, Any]]] = OrderedDict()
        self._changed: set[str] = set()  # tasks added to or dropped since take_changes()

    def add(self, task_id: str, event: dict[str, Any]) -> dict[str, Any]:
        """Keep a bounded copy of one ``execution_progress`` task event; returns that copy
        (what is published too, so viewers never get more than a tail keeps)."""
        kept = self._keep(self._tail_of(task_id), event)
        self._changed.add(task_id)
        return kept

    def _keep(self, tail: SizedQueue[dict[str, Any]], event: dict[str, Any]) -> dict[str, Any]:
        """Append a copy of ``event`` with its execution event bounded; returns the copy."""
        bounded = self._bounded(event.get("execution_event") or {})
        kept = {**event, "execution_event": bounded}
        tail.append(kept, _size_of(bounded))
        return kept

    def _tail_of(self, task_id: str) -> SizedQueue[dict[str, Any]]:
        """The task's tail, made the most recently active; a new one may push out the
        least recently active task."""
        tail = self._tails.get(task_id)
        if tail is None:
            tail = self._tails[task_id] = SizedQueue(self._max_events, self._max_task_bytes)
            while len(self._tails) > self._max_tasks:
                dropped, _ = self._tails.popitem(last=False)
                self._changed.add(dropped)
        else:
            self._tails.move_to_end(task_id)
        return tail

    def _bounded(self, execution_event: dict[str, Any]) -> dict[str, Any]:
        bounded: dict[str, Any] = {}
        for key, value in execution_event.items():
            if len(bounded) >= self._max_keys:
                break
            if len(key) > self._max_key_chars:
                continue
            if isinstance(value, str):
                bounded[key] = value[: self._max_text]
            elif value is None or isinstance(value, bool | int | float):
                bounded[key] = value
        return bounded

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Task id to its kept events, oldest first."""
        return {task_id: list(tail) for task_id, tail in self._tails.items()}

    def take_changes(self) -> dict[str, list[dict[str, Any]] | None]:
        """What changed since the last call: task id to its events now, or None for a task
        no longer kept."""
        changes = {task_id: self._events_of(task_id) for task_id in self._changed}
        self._changed.clear()
        return changes

    def _events_of(self, task_id: str) -> list[dict[str, Any]] | None:
        tail = self._tails.get(task_id)
        return None if tail is None else list(tail)

    def mark_changed(self, task_ids: list[str]) -> None:
        """Report these tasks again at the next :meth:`take_changes` (their save failed)."""
        self._changed.update(task_ids)

    def restore(self, tails: list[tuple[str, list[dict[str, Any]]]]) -> None:
        """Take saved tails back, least recently active first, bounded as new events are
        (saved under larger bounds, the excess is dropped, and reported as such by the
        next :meth:`take_changes`)."""
        for task_id, events in tails:
            tail = self._tail_of(task_id)
            for event in events:
                self._keep(tail, event)
            if len(tail) < len(events):
                self._changed.add(task_id)
