"""The store interface the hub is written against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from agentcom.protocol.task import Task

__all__ = ["Store", "TaskFilter", "TokenRecord"]


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A token as stored: only its hash is kept."""

    agent_id: str
    role: str
    token_hash: str
    created_at: int


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """Filters for listing tasks; ``None`` means any."""

    status: str | None = None
    priority: str | None = None
    agent: str | None = None
    limit: int = 100


class Store(Protocol):
    """Durable state. Writes are staged, then made durable together by :meth:`commit`."""

    def stage_task(self, task: Task) -> None:
        """Queue ``task``'s current state for the next commit."""

    async def commit(self) -> None:
        """Return once everything staged before the call is durable; raises StoreError."""

    def load_unfinished_tasks(self) -> list[Task]:
        """Every task not in a terminal state, oldest first."""

    def get_task(self, task_id: str) -> Task | None:
        """One task, or None."""

    def list_tasks(self, task_filter: TaskFilter) -> list[Task]:
        """Tasks matching the filter, newest first."""

    def task_stats(self) -> dict[str, Any]:
        """Counts by status and priority, and execution totals per model and agent."""

    def find_token(self, token_hash: str) -> TokenRecord | None:
        """The token with this hash, or None."""

    def close(self) -> None:
        """Flush and release the database."""
