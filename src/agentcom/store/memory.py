"""An in-memory store with the semantics of :class:`agentcom.store.sqlite.SqliteStore`.

Nothing survives the process: this store is for running the domain without a database
(its unit tests run in milliseconds). It answers as the SQLite store does, and
``tests/test_store_contract.py`` runs the same tests against both so they cannot drift:

- a staged task is seen at once by :meth:`MemoryStore.get_task` and the prefix lookup;
  every other read sees only what was committed;
- a commit applies the staged changes together, grouped by kind in the order each kind
  was first staged, as the SQLite writer groups them by statement;
- task lists are ordered by ``(updated_at, position)``, newest first, where the position
  is given when a task is first written and kept after, like a SQLite rowid;
- tokens written with :meth:`MemoryStore.save_token` and removed with
  :meth:`MemoryStore.delete_token` record revocations as the database's triggers do.

:meth:`MemoryStore.refuse_next_commit` makes the next commit fail as a refused SQLite
transaction fails, so the domain's recovery can be exercised too.
"""

from __future__ import annotations

import bisect
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

from agentcom.errors import StoreError
from agentcom.protocol.task import ResultSummary, Task, listed_task, task_cursor, task_from_body
from agentcom.store.base import ChangeKey, EndpointRow, TaskFilter, TaskPage, TokenRecord
from agentcom.store.columns import (
    STAT_FIELDS,
    TERMINAL_VALUES,
    TaskColumns,
    stats_report,
    task_columns,
)

__all__ = ["MemoryStore"]

# A staged change: what applies it and its arguments, keyed so the latest state wins.
_Change = tuple[Callable[..., None], tuple[Any, ...]]

# Columns of TaskColumns that SQLite stores as REAL (an integer sum comes back as a float).
_REAL_COLUMNS = frozenset({8, 9, 10})


class _StoredTask:
    """A committed task: its columns (with its body as JSON), its position, and the body
    read back, for filters and lists (never handed out: reads return a fresh copy)."""

    __slots__ = ("columns", "position", "task")

    def __init__(self, columns: TaskColumns, position: int, task: Task) -> None:
        self.columns = columns
        self.position = position
        self.task = task


class MemoryStore:
    """The :class:`agentcom.store.base.Store` protocol, held in dicts."""

    def __init__(self) -> None:
        self._staged: dict[ChangeKey, _Change] = {}
        self._unwritten: dict[str, Task] = {}
        self._refusal: str | None = None
        self._positions = itertools.count(1)
        self._tasks: dict[str, _StoredTask] = {}
        self._task_ids: list[str] = []  # sorted, for prefix lookups
        self._dependencies: dict[str, dict[str, None]] = {}  # prerequisite -> dependants
        self._endpoints: dict[str, tuple[EndpointRow, int]] = {}
        self._channels: dict[str, tuple[str, str | None, int, int]] = {}
        self._subscriptions: dict[tuple[str, str], None] = {}
        self._messages: dict[str, dict[int, str]] = {}  # channel -> seq -> JSON body
        self._tails: dict[str, tuple[int, str]] = {}
        self._minutes: dict[int, tuple[int, int, int]] = {}
        self._tokens: dict[str, TokenRecord] = {}
        self._revocations: list[tuple[int, str, str]] = []
        self.commits = 0  # commits that applied changes, as SqliteStore counts transactions
        self.on_refused: Callable[[list[ChangeKey]], None] | None = None
        self.on_written: Callable[[float, int], None] | None = None
        self.on_conflict: Callable[[list[str]], None] | None = None  # never shared

    # --- writes -----------------------------------------------------------------------

    def stage_task(self, task: Task) -> None:
        """Queue ``task``'s current state for the next commit (last state wins)."""
        self._staged["task", task.task_id] = (self._write_task, (task_columns(task),))
        self._unwritten[task.task_id] = task

    def has_unwritten(self, task_id: str) -> bool:
        """Whether a change of ``task_id`` is staged or being written."""
        return task_id in self._unwritten

    def stage_dependencies(self, task_id: str, prerequisites: list[str]) -> None:
        """Queue the links from ``task_id`` to the tasks it depends on for the next commit."""
        for prerequisite in prerequisites:
            key = ("dependency", f"{prerequisite}\0{task_id}")
            self._staged[key] = (self._write_dependency, (prerequisite, task_id))

    def stage_endpoint(
        self,
        endpoint_id: str,
        url: str,
        source: str,
        agent_id: str | None,
        approved: bool = False,
    ) -> None:
        """Queue a registered (or approved) endpoint for the next commit."""
        row: EndpointRow = (endpoint_id, url, source, agent_id, approved)
        self._staged["endpoint", endpoint_id] = (self._write_endpoint, (row,))

    def stage_endpoint_removal(self, endpoint_id: str) -> None:
        """Queue the removal of an endpoint for the next commit."""
        self._staged["endpoint", endpoint_id] = (self._delete_endpoint, (endpoint_id,))

    def stage_channel(self, name: str, description: str | None, created_at: int, seq: int) -> None:
        """Queue a channel's definition and sequence number for the next commit."""
        self._staged["channel", name] = (self._write_channel, (name, description, created_at, seq))

    def stage_subscription(self, channel: str, agent_id: str, subscribed: bool) -> None:
        """Queue a subscription change for the next commit."""
        apply = self._subscribe if subscribed else self._unsubscribe
        self._staged["subscription", f"{channel}\0{agent_id}"] = (apply, (channel, agent_id))

    def stage_channel_message(self, body: dict[str, Any], history_cap: int) -> None:
        """Queue a channel message, and the trimming of history beyond ``history_cap``."""
        channel, seq = body["channel"], body["seq"]
        self._staged["message", f"{channel}\0{seq}"] = (
            self._write_message,
            (channel, seq, json.dumps(body)),
        )
        self._staged["trim", channel] = (self._trim_messages, (channel, seq - history_cap))

    def stage_execution_tail(self, task_id: str, events: list[dict[str, Any]] | None) -> None:
        """Queue a task's kept execution events (None: forget them) for the next commit."""
        if events is None:
            self._staged["tail", task_id] = (self._delete_tail, (task_id,))
            return
        last_at = events[-1].get("timestamp", 0) if events else 0
        self._staged["tail", task_id] = (self._write_tail, (task_id, last_at, json.dumps(events)))

    def stage_queue_minutes(self, minutes: list[tuple[int, int, int]], oldest: int) -> None:
        """Queue ``(minute, depth, completions)`` rows, and the removal of minutes before
        ``oldest``, for the next commit."""
        for row in minutes:
            self._staged["minute", str(row[0])] = (self._write_minute, (row,))
        self._staged["minute_trim", ""] = (self._trim_minutes, (oldest,))

    def save_token(self, agent_id: str, token_hash: str, role: str) -> None:
        """Store a token for ``agent_id``, replacing (and so revoking) any earlier one."""
        earlier = self._tokens.get(agent_id)
        if earlier is not None and (earlier.token_hash, earlier.role) != (token_hash, role):
            self._revoke(earlier)
        created_at = time.time_ns() // 1_000_000
        self._tokens[agent_id] = TokenRecord(agent_id, role, token_hash, created_at)

    def delete_token(self, agent_id: str) -> bool:
        """Revoke ``agent_id``'s token; False when it had none."""
        record = self._tokens.pop(agent_id, None)
        if record is not None:
            self._revoke(record)
        return record is not None

    def refuse_next_commit(self, reason: str = "refused on purpose") -> None:
        """Make the next commit that has changes to write fail with StoreError(``reason``)."""
        self._refusal = reason

    async def commit(self) -> None:
        """Apply everything staged, or refuse it all (see :meth:`refuse_next_commit`)."""
        if not self._staged:
            return
        changes = list(self._staged.items())
        self._staged.clear()
        self._unwritten.clear()
        if self._refusal is not None:
            reason, self._refusal = self._refusal, None
            if self.on_refused is not None:
                self.on_refused([key for key, _ in changes])
            raise StoreError(f"database write failed: {reason}")
        started = time.perf_counter()
        by_kind: dict[Callable[..., None], list[tuple[Any, ...]]] = {}
        for _, (apply, args) in changes:
            by_kind.setdefault(apply, []).append(args)
        for apply, calls in by_kind.items():
            for args in calls:
                apply(*args)
        self.commits += 1
        if self.on_written is not None:
            self.on_written(time.perf_counter() - started, len(changes))

    async def check_writable(self) -> None:
        """Memory is always writable."""

    def _write_task(self, columns: TaskColumns) -> None:
        task = task_from_body(columns[13])  # as a database would give it back
        stored = self._tasks.get(task.task_id)
        if stored is None:
            self._tasks[task.task_id] = _StoredTask(columns, next(self._positions), task)
            bisect.insort(self._task_ids, task.task_id)
        else:
            stored.columns, stored.task = columns, task

    def _write_dependency(self, prerequisite: str, task_id: str) -> None:
        self._dependencies.setdefault(prerequisite, {})[task_id] = None

    def _write_endpoint(self, row: EndpointRow) -> None:
        kept = self._endpoints.get(row[0])
        created = kept[1] if kept is not None else next(self._positions)
        self._endpoints[row[0]] = (row, created)

    def _delete_endpoint(self, endpoint_id: str) -> None:
        self._endpoints.pop(endpoint_id, None)

    def _write_channel(self, name: str, description: str | None, created_at: int, seq: int) -> None:
        kept = self._channels.get(name)
        created = kept[2] if kept is not None else created_at
        self._channels[name] = (name, description, created, seq)

    def _subscribe(self, channel: str, agent_id: str) -> None:
        self._subscriptions[channel, agent_id] = None

    def _unsubscribe(self, channel: str, agent_id: str) -> None:
        self._subscriptions.pop((channel, agent_id), None)

    def _write_message(self, channel: str, seq: int, body: str) -> None:
        self._messages.setdefault(channel, {})[seq] = body

    def _trim_messages(self, channel: str, up_to: int) -> None:
        messages = self._messages.get(channel, {})
        for seq in [seq for seq in messages if seq <= up_to]:
            del messages[seq]

    def _write_tail(self, task_id: str, last_at: int, events: str) -> None:
        self._tails.pop(task_id, None)  # a replaced row goes to the end, as in SQLite
        self._tails[task_id] = (last_at, events)

    def _delete_tail(self, task_id: str) -> None:
        self._tails.pop(task_id, None)

    def _write_minute(self, row: tuple[int, int, int]) -> None:
        self._minutes[row[0]] = row

    def _trim_minutes(self, oldest: int) -> None:
        for minute in [minute for minute in self._minutes if minute < oldest]:
            del self._minutes[minute]

    def _revoke(self, record: TokenRecord) -> None:
        seq = self._revocations[-1][0] + 1 if self._revocations else 1
        self._revocations.append((seq, record.agent_id, record.token_hash))

    # --- reads ------------------------------------------------------------------------

    def load_unfinished_tasks(self) -> list[Task]:
        """Every committed task not in a terminal state, oldest first."""
        unfinished = [s for s in self._tasks.values() if s.columns[1] not in TERMINAL_VALUES]
        unfinished.sort(key=lambda stored: stored.columns[11])
        return [task_from_body(stored.columns[13]) for stored in unfinished]

    def get_task(self, task_id: str) -> Task | None:
        """One task, or None (including changes not committed yet)."""
        unwritten = self._unwritten.get(task_id)
        if unwritten is not None:
            return unwritten
        stored = self._tasks.get(task_id)
        return task_from_body(stored.columns[13]) if stored is not None else None

    def task_ids_starting_with(self, prefix: str, limit: int) -> list[str]:
        """Up to ``limit`` task ids that start with ``prefix``, in order, including tasks
        not committed yet."""
        if not prefix:
            raise ValueError("an empty prefix matches every task")
        found: set[str] = set()
        start = bisect.bisect_left(self._task_ids, prefix)
        for task_id in itertools.islice(self._task_ids, start, start + limit):
            if not task_id.startswith(prefix):
                break
            found.add(task_id)
        found.update(task_id for task_id in self._unwritten if task_id.startswith(prefix))
        return sorted(found)[:limit]

    def load_dependants(self, task_id: str, limit: int) -> tuple[list[str], int]:
        """Up to ``limit`` ids of the committed tasks that depend on ``task_id``, oldest
        first, and how many links there are in all."""
        links = self._dependencies.get(task_id, {})
        stored = [self._tasks[dependant] for dependant in links if dependant in self._tasks]
        stored.sort(key=lambda dependant: (dependant.columns[11], dependant.position))
        return [dependant.columns[0] for dependant in stored[:limit]], len(links)

    def list_task_page(self, task_filter: TaskFilter) -> TaskPage:
        """A page of the committed tasks matching the filter, most recently updated first."""
        matching = [stored for stored in self._tasks.values() if _matches(stored, task_filter)]
        matching.sort(key=lambda stored: (stored.columns[12], stored.position), reverse=True)
        page = matching[: task_filter.limit]
        tasks = [listed_task(stored.task, ResultSummary.of(stored.task.result)) for stored in page]
        last = page[-1] if len(matching) > task_filter.limit else None
        cursor = task_cursor(last.columns[12], last.position) if last is not None else None
        return TaskPage(tasks, cursor)

    async def read_task_stats(self, finished_since_ms: int) -> dict[str, Any]:
        """Counts by status and priority, execution totals per model and per agent, and
        the tasks that reached each terminal status at or after ``finished_since_ms``, as
        committed."""
        by_status: dict[str, int] = {}
        by_priority: dict[str, int] = {}
        finished: dict[str, int] = {}
        completed: list[TaskColumns] = []
        for stored in self._tasks.values():
            columns = stored.columns
            status = columns[1]
            by_status[status] = by_status.get(status, 0) + 1
            if status == "queued":
                by_priority[columns[2]] = by_priority.get(columns[2], 0) + 1
            if status in TERMINAL_VALUES and columns[12] >= finished_since_ms:
                finished[status] = finished.get(status, 0) + 1
            if status == "completed":
                completed.append(columns)
        return stats_report(
            by_status,
            by_priority,
            _totals(completed),
            _grouped_totals(completed, 5),
            _grouped_totals(completed, 3),
            finished.items(),
        )

    def load_endpoints(self) -> list[EndpointRow]:
        """Registered endpoints as ``(endpoint_id, url, source, agent_id, approved)``,
        first registered first."""
        return [row for row, _ in sorted(self._endpoints.values(), key=lambda kept: kept[1])]

    def load_channels(
        self, history_bytes: int | None = None
    ) -> tuple[list[tuple[str, str | None, int, int]], list[tuple[str, str]], list[dict[str, Any]]]:
        """Channels, subscriptions and stored history, oldest message first (with
        ``history_bytes``, only each channel's newest messages up to that many characters
        of stored body, and at least the newest one)."""
        messages: list[dict[str, Any]] = []
        for channel in sorted(self._messages):
            kept: list[str] = []
            left = history_bytes
            for seq in sorted(self._messages[channel], reverse=True):
                body = self._messages[channel][seq]
                if left is not None and kept and left < len(body):
                    break
                kept.append(body)
                if left is not None:
                    left -= len(body)
            messages.extend(json.loads(body) for body in reversed(kept))
        channels = [self._channels[name] for name in sorted(self._channels)]
        return channels, list(self._subscriptions), messages

    def load_execution_tails(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """Saved execution tails, least recently active first."""
        tails = sorted(self._tails.items(), key=lambda item: item[1][0])
        return [(task_id, json.loads(events)) for task_id, (_, events) in tails]

    def load_queue_history(self) -> list[tuple[int, int, int]]:
        """Saved queue minutes as ``(minute, depth, completions)``, oldest first."""
        return [self._minutes[minute] for minute in sorted(self._minutes)]

    def has_token(self, agent_id: str, role: str | None = None) -> bool:
        """Whether ``agent_id`` holds a token (of ``role``, when given)."""
        record = self._tokens.get(agent_id)
        return record is not None and (role is None or record.role == role)

    def find_token(self, token_hash: str) -> TokenRecord | None:
        """The token with this hash, or None."""
        return next((r for r in self._tokens.values() if r.token_hash == token_hash), None)

    def last_revocation(self) -> int:
        """The sequence number of the latest token revocation (0: none yet)."""
        return self._revocations[-1][0] if self._revocations else 0

    def revocations_since(self, seq: int) -> list[tuple[int, str, str]]:
        """Token revocations after ``seq``, oldest first, as ``(seq, agent_id, token_hash)``."""
        return [revocation for revocation in self._revocations if revocation[0] > seq]

    def close(self) -> None:
        """Nothing to release."""


def _matches(stored: _StoredTask, task_filter: TaskFilter) -> bool:
    """Whether a committed task passes every filter that is set."""
    columns = stored.columns
    statuses = task_filter.status
    if isinstance(statuses, tuple):
        if columns[1] not in statuses:
            return False
    elif statuses is not None and columns[1] != statuses:
        return False
    if task_filter.priority is not None and columns[2] != task_filter.priority:
        return False
    if task_filter.agent is not None and columns[3] != task_filter.agent:
        return False
    if task_filter.updated_since is not None and columns[12] < task_filter.updated_since:
        return False
    capability = task_filter.capability
    if capability is not None and capability not in stored.task.needed_capabilities:
        return False
    return task_filter.after is None or (columns[12], stored.position) < task_filter.after


def _totals(rows: list[TaskColumns]) -> tuple[Any, ...]:
    """``STAT_FIELDS`` over ``rows``, summed as SQL's ``COALESCE(SUM(column), 0)``."""
    sums: list[Any] = [len(rows)]
    for column in range(6, 6 + len(STAT_FIELDS) - 1):
        values: list[Any] = [row[column] for row in rows if row[column] is not None]
        if not values:
            sums.append(0)
        elif column in _REAL_COLUMNS:
            sums.append(sum(float(value) for value in values))
        else:
            sums.append(sum(values))
    return tuple(sums)


def _grouped_totals(rows: list[TaskColumns], column: int) -> list[tuple[Any, ...]]:
    """One row per value of ``column``: the value, then :func:`_totals` of its rows."""
    groups: dict[Any, list[TaskColumns]] = {}
    for row in rows:
        groups.setdefault(row[column], []).append(row)
    return [(key, *_totals(group)) for key, group in groups.items()]
