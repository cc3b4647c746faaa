"""Nodes sharing a database: the tasks whose writes lost to another node's."""

from __future__ import annotations

from collections import deque

__all__ = ["ConflictLog"]


class ConflictLog:
    """Tasks whose writes lost to another node's (nodes sharing a database), in order:
    what was decided from their earlier state, and not yet sent, must not be sent."""

    def __init__(self, keep: int = 10_000) -> None:
        self.seq = 0
        self._log: deque[tuple[int, str]] = deque(maxlen=keep)

    def record(self, task_ids: list[str]) -> None:
        """Writes of these tasks lost."""
        for task_id in task_ids:
            self.seq += 1
            self._log.append((self.seq, task_id))

    def since(self, mark: int) -> set[str]:
        """The tasks whose writes lost after ``mark`` (a past :attr:`seq`)."""
        found = set()
        for seq, task_id in reversed(self._log):
            if seq <= mark:
                break
            found.add(task_id)
        return found
