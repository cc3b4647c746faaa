"""The store interface the hub is written against."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agentcom.protocol.common import Priority, TaskStatus
from agentcom.protocol.task import Task, parse_task_cursor

__all__ = [
    "ChangeKey",
    "ChannelRow",
    "EndpointRow",
    "ObservedStore",
    "Store",
    "TaskFilter",
    "TaskPage",
    "TokenRecord",
    "task_filter",
]

ChangeKey = tuple[str, str]
"""What a staged change is about: ``("task", task_id)``, ``("endpoint", endpoint_id)``,
``("channel", name)``, ``("subscription", ...)``, ``("message", ...)``, ``("trim", channel)``,
``("dependency", ...)``, ``("tail", task_id)``, ``("minute", str(minute))`` or
``("minute_trim", "")``; nodes sharing a database also stage ``("inbox", message_id)``,
``("inbox_trim", agent_id)`` and ``("inbox_forget", agent_id)``."""

ChannelRow = tuple[str, str | None, int, int]
"""A stored channel: ``(name, description, created_at, seq)``."""

EndpointRow = tuple[str, str, str, str | None, bool]
"""A stored endpoint: ``(endpoint_id, url, source, agent_id, approved)``."""


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A token as stored: only its hash is kept."""

    agent_id: str
    role: str
    token_hash: str
    created_at: int


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """Filters for listing tasks; ``None`` means any.

    ``status`` is one status or several (any of them); ``updated_since`` keeps tasks
    updated at or after that time (ms); ``capability`` keeps tasks that need it; ``after``
    continues a list after that ``(updated_at, position)`` (a parsed page cursor).
    """

    status: str | tuple[str, ...] | None = None
    priority: str | None = None
    agent: str | None = None
    limit: int = 100
    updated_since: int | None = None
    capability: str | None = None
    after: tuple[int, int] | None = None


def task_filter(
    now_ms: int,
    *,
    status: TaskStatus | Sequence[TaskStatus] | None = None,
    priority: Priority | None = None,
    agent: str | None = None,
    capability: str | None = None,
    since_s: float | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> TaskFilter:
    """The filter of a task list as operators and the HTTP API ask for it, their values
    already checked: ``status`` one or several (kept as one, or as a tuple), tasks updated
    in the last ``since_s`` seconds before ``now_ms``, ``cursor`` a ``next_cursor`` the
    hub gave."""
    statuses: str | tuple[str, ...] | None
    if isinstance(status, TaskStatus):
        statuses = status.value
    else:
        statuses = None if status is None else tuple(one.value for one in status)
    return TaskFilter(
        status=statuses,
        priority=priority.value if priority is not None else None,
        agent=agent,
        limit=limit,
        updated_since=None if since_s is None else now_ms - int(since_s * 1000),
        capability=capability,
        after=parse_task_cursor(cursor) if cursor is not None else None,
    )


@dataclass(frozen=True, slots=True)
class TaskPage:
    """One page of a task list."""

    tasks: list[dict[str, Any]]
    """Tasks as lists carry them (``protocol.task.listed_task``), most recently updated
    first."""
    next_cursor: str | None
    """Where the next page starts; None on the last page."""


class Store(Protocol):
    """Durable state. Writes are staged, then made durable together by :meth:`commit`.

    A commit that fails discards what it carried and everything staged since, and calls
    :attr:`on_refused` with their keys before raising: nothing refused is written later.
    """

    on_refused: Callable[[list[ChangeKey]], None] | None

    def stage_task(self, task: Task) -> None:
        """Queue ``task``'s current state for the next commit."""

    def has_unwritten(self, task_id: str) -> bool:
        """Whether a change of ``task_id`` is staged or being written."""

    def stage_dependencies(self, task_id: str, prerequisites: list[str]) -> None:
        """Queue the links from ``task_id`` to the tasks it depends on."""

    def load_dependants(self, task_id: str, limit: int) -> tuple[list[str], int]:
        """Up to ``limit`` tasks depending on ``task_id``, oldest first, and their count."""

    def stage_endpoint(
        self,
        endpoint_id: str,
        url: str,
        source: str,
        agent_id: str | None,
        approved: bool = False,
    ) -> None:
        """Queue a registered (or approved) endpoint for the next commit."""

    def stage_endpoint_removal(self, endpoint_id: str) -> None:
        """Queue the removal of an endpoint for the next commit."""

    def load_endpoints(self) -> list[EndpointRow]:
        """Registered endpoints as ``(endpoint_id, url, source, agent_id, approved)``."""

    def stage_channel(self, name: str, description: str | None, created_at: int, seq: int) -> None:
        """Queue a channel's definition and sequence number for the next commit."""

    def stage_subscription(self, channel: str, agent_id: str, subscribed: bool) -> None:
        """Queue a subscription change for the next commit."""

    def stage_channel_message(self, body: dict[str, Any], history_cap: int) -> None:
        """Queue a channel message, and the trimming of history beyond ``history_cap``."""

    def load_channels(
        self, history_bytes: int | None = None
    ) -> tuple[list[ChannelRow], list[tuple[str, str]], list[dict[str, Any]]]:
        """Channels, subscriptions and stored history, oldest message first (with
        ``history_bytes``, only each channel's newest messages up to that size)."""

    def stage_execution_tail(self, task_id: str, events: list[dict[str, Any]] | None) -> None:
        """Queue a task's kept execution events (None: forget them) for the next commit."""

    def stage_queue_minutes(self, minutes: list[tuple[int, int, int]], oldest: int) -> None:
        """Queue ``(minute, depth, completions)`` rows, and the removal of minutes before
        ``oldest``, for the next commit."""

    def load_execution_tails(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """Saved execution tails, least recently active first."""

    def load_queue_history(self) -> list[tuple[int, int, int]]:
        """Saved queue minutes as ``(minute, depth, completions)``, oldest first."""

    async def commit(self) -> None:
        """Return once everything staged before the call is durable; raises StoreError."""

    async def check_writable(self) -> None:
        """Write and commit a probe; raises StoreError when the database refuses it."""

    def load_unfinished_tasks(self) -> list[Task]:
        """Every task not in a terminal state, oldest first."""

    def get_task(self, task_id: str) -> Task | None:
        """One task, or None."""

    def task_ids_starting_with(self, prefix: str, limit: int) -> list[str]:
        """Up to ``limit`` task ids that start with ``prefix``, in order (an index range
        read, never a scan)."""

    def list_task_page(self, task_filter: TaskFilter) -> TaskPage:
        """A page of the tasks matching the filter, most recently updated first, without
        their results (a summary instead), read without loading any result whole."""

    async def read_task_stats(self, finished_since_ms: int) -> dict[str, Any]:
        """Counts by status and priority, execution totals per model and agent, and the
        tasks that reached each terminal status at or after ``finished_since_ms``
        (``finished``), as committed; read without holding the event loop."""

    def has_token(self, agent_id: str, role: str | None = None) -> bool:
        """Whether ``agent_id`` holds a token (of ``role``, when given)."""

    def find_token(self, token_hash: str) -> TokenRecord | None:
        """The token with this hash, or None."""

    def last_revocation(self) -> int:
        """The sequence number of the latest token revocation (0: none yet)."""

    def revocations_since(self, seq: int) -> list[tuple[int, str, str]]:
        """Token revocations after ``seq``, oldest first: ``(seq, agent_id, token_hash)``."""

    def close(self) -> None:
        """Flush and release the database."""


class ObservedStore(Store, Protocol):
    """A store a hub runs on: its transactions are counted and timed for the metrics."""

    commits: int
    """Transactions written so far (a commit with nothing staged writes none)."""

    on_written: Callable[[float, int], None] | None
    """Told the duration (seconds) and the number of changes of each written transaction."""

    on_conflict: Callable[[list[str]], None] | None
    """Told the ids of tasks whose conditional write lost to another node's (a database
    shared by several nodes; never called otherwise)."""
