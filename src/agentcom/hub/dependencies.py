"""Which queued tasks wait for which unfinished prerequisites.

Indexed both ways, so a prerequisite that finishes touches only its own dependants:
completing a task costs O(its dependants), whatever else waits in the queue.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["DependencyIndex"]


class DependencyIndex:
    """Blocked tasks and the unfinished prerequisites each one still waits for."""

    def __init__(self) -> None:
        # Blocked task id -> ids of its prerequisites that are not finished yet.
        self._waiting_for: dict[str, set[str]] = {}
        # Prerequisite id -> ids of the blocked tasks waiting for it.
        self._dependants: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._waiting_for)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._waiting_for

    def block(self, task_id: str, prerequisites: Iterable[str]) -> None:
        """Keep ``task_id`` out of scheduling until every one of ``prerequisites`` completes."""
        waiting = set(prerequisites)
        if not waiting:
            return
        self._waiting_for[task_id] = waiting
        for prerequisite in waiting:
            self._dependants.setdefault(prerequisite, set()).add(task_id)

    def waiting_for(self, task_id: str) -> set[str]:
        """The unfinished prerequisites ``task_id`` waits for (empty when not blocked)."""
        return self._waiting_for.get(task_id, set())

    def waiting_on(self, prerequisite: str) -> set[str]:
        """The blocked tasks that wait for ``prerequisite``."""
        return self._dependants.get(prerequisite, set())

    def completed(self, prerequisite: str) -> list[str]:
        """``prerequisite`` completed: the dependants it was the last one blocking."""
        ready = []
        for task_id in self._dependants.pop(prerequisite, ()):
            waiting = self._waiting_for[task_id]
            waiting.discard(prerequisite)
            if not waiting:
                del self._waiting_for[task_id]
                ready.append(task_id)
        return ready

    def forget(self, task_id: str) -> None:
        """``task_id`` no longer waits (it failed, was cancelled or reloaded)."""
        for prerequisite in self._waiting_for.pop(task_id, ()):
            dependants = self._dependants.get(prerequisite)
            if dependants is not None:
                dependants.discard(task_id)
                if not dependants:
                    del self._dependants[prerequisite]
