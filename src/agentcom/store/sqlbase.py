"""The reads both SQL stores make alike, on top of their staged writes
(:mod:`agentcom.store.sqlwrites`).

The SQL here is the subset SQLite and PostgreSQL both speak, with ``?`` placeholders. A
database's store (:class:`agentcom.store.sqlite.SqliteStore`,
:class:`agentcom.store.postgres.PostgresStore`) brings its connections and schema, the
few fragments that differ (``_POSITION``, ``_BODY``, ``_CAPABILITY``, ``_LIST_QUERY``)
and runs SQL through its driver (:meth:`SqlStore._fetch`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any, ClassVar

from agentcom.protocol.common import ACTIVE
from agentcom.protocol.task import (
    ResultSummary,
    StoredState,
    Task,
    listed_task,
    task_cursor,
    task_from_body,
)
from agentcom.store.base import EndpointRow, TaskFilter, TaskPage, TokenRecord
from agentcom.store.columns import TERMINAL_VALUES, stats_report
from agentcom.store.sqlwrites import C, ConnectionThread, SqlWrites

__all__ = ["SqlStore"]

# Each channel's messages, newest first, with the characters of stored body up to each.
_CHANNEL_HISTORY = """
SELECT body FROM (
    SELECT channel, seq, body,
           ROW_NUMBER() OVER newest AS newer_or_same,
           SUM(LENGTH(body)) OVER newest AS chars_up_to_here
    FROM channel_messages
    WINDOW newest AS (PARTITION BY channel ORDER BY seq DESC)
) AS history {where} ORDER BY channel, seq
"""

# Execution totals of completed tasks; integer sums are cast so that both databases
# return integers (PostgreSQL's SUM of a bigint is a numeric).
_TOTALS = """
SELECT {key}, COUNT(*), CAST(COALESCE(SUM(tokens_in), 0) AS BIGINT),
       CAST(COALESCE(SUM(tokens_out), 0) AS BIGINT), COALESCE(SUM(estimated_cost_usd), 0),
       COALESCE(SUM(equivalent_claude_cost_usd), 0), COALESCE(SUM(execution_ms), 0)
FROM tasks WHERE status = 'completed' {group}
"""


class SqlStore(SqlWrites[C]):
    """A SQL store: the writes of :class:`SqlWrites` and the reads every SQL database
    answers alike; a subclass fills in its database's part.

    Args:
        reader: the connection reads use, on the event loop's thread (each read touches a
            bounded number of rows).
        writer: the thread that writes every transaction.
        aggregator: the thread the statistics are read on.
        batch_max: most rows handed to the driver in one ``executemany``.
    """

    _POSITION: ClassVar[str]
    """The column giving each row's order of first insertion (ties of time are broken by it)."""
    _BODY: ClassVar[str]
    """The expression of a task's whole JSON body."""
    _CAPABILITY: ClassVar[str]
    """The condition that a task needs the capability given as its one parameter."""
    _LIST_QUERY: ClassVar[str]
    """A page of tasks: rows whose first column is the body without the fields lists leave
    out and whose last two are ``updated_at`` and the position (see :meth:`_summary`);
    ``{where}`` is replaced by the filter, the one parameter after it is the limit."""

    def __init__(
        self,
        reader: C,
        writer: ConnectionThread[C],
        aggregator: ConnectionThread[C],
        batch_max: int,
    ) -> None:
        super().__init__(writer, batch_max)
        self._reader = reader
        # Aggregate reads (stats over every task ever run) take a thread of their own, so
        # that a large history never holds the event loop; concurrent callers share one.
        self._aggregator = aggregator
        self._stats_read: asyncio.Future[dict[str, Any]] | None = None

    def _fetch(self, connection: C, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Every row ``sql`` (``?`` placeholders) returns on ``connection``."""
        raise NotImplementedError

    def _summary(self, row: tuple[Any, ...]) -> ResultSummary | None:
        """The result summary of one row of :attr:`_LIST_QUERY`."""
        raise NotImplementedError

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Every row ``sql`` returns, read on the event loop's thread."""
        return self._fetch(self._reader, sql, params)

    def load_unfinished_tasks(self) -> list[Task]:
        """Every task not in a terminal state, oldest first."""
        rows = self._read(
            f"SELECT {self._BODY} FROM tasks WHERE status NOT IN (?, ?, ?) "
            f"ORDER BY created_at, {self._POSITION}",
            TERMINAL_VALUES,
        )
        tasks = [task_from_body(body) for (body,) in rows]
        if self.shared:
            for task in tasks:
                task._stored_as = task.stored_state()
        return tasks

    def get_task(self, task_id: str) -> Task | None:
        """One task, or None (including changes not written yet)."""
        unwritten = self._unwritten.get(task_id)
        if unwritten is not None:
            return unwritten
        rows = self._read(f"SELECT {self._BODY} FROM tasks WHERE task_id = ?", (task_id,))
        if not rows:
            return None
        task = task_from_body(rows[0][0])
        if self.shared:  # its row is in the state the object has
            task._stored_as = task.stored_state()
        return task

    def get_tasks(self, task_ids: Sequence[str]) -> dict[str, Task]:
        """The stored state of each of ``task_ids`` that exists (nodes sharing the database:
        what another node changed), read at once."""
        found: dict[str, Task] = {}
        for start in range(0, len(task_ids), 500):
            chunk = task_ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            rows = self._read(f"SELECT {self._BODY} FROM tasks WHERE task_id IN ({marks})", chunk)
            for (body,) in rows:
                task = task_from_body(body)
                task._stored_as = task.stored_state()
                found[task.task_id] = task
        return found

    def active_task_ids_of(self, agent_id: str) -> list[str]:
        """The tasks assigned to ``agent_id`` that it has not finished, as stored."""
        rows = self._read(
            "SELECT task_id FROM tasks WHERE assigned_to = ? AND status IN (?, ?)",
            (agent_id, *(status.value for status in ACTIVE)),
        )
        return [task_id for (task_id,) in rows]

    def unfinished_states(self) -> dict[str, StoredState]:
        """``(status, generation, assigned_to)`` of every unfinished task, by id: what a
        node sharing the database compares its memory with."""
        rows = self._read(
            "SELECT task_id, status, generation, assigned_to FROM tasks "
            "WHERE status NOT IN (?, ?, ?)",
            TERMINAL_VALUES,
        )
        return {
            task_id: (status, generation, holder) for task_id, status, generation, holder in rows
        }

    def states_updated_since(self, since_ms: int) -> dict[str, StoredState]:
        """The same for every task, finished ones included, updated at or after
        ``since_ms`` (an index range read)."""
        rows = self._read(
            "SELECT task_id, status, generation, assigned_to FROM tasks WHERE updated_at >= ?",
            (since_ms,),
        )
        return {
            task_id: (status, generation, holder) for task_id, status, generation, holder in rows
        }

    def task_ids_starting_with(self, prefix: str, limit: int) -> list[str]:
        """Up to ``limit`` task ids that start with ``prefix``, in order, including tasks
        not written yet.

        A range on the primary key (``prefix <= task_id < the next prefix``), so the cost
        is the matches read, whatever the number of tasks.
        """
        if not prefix:
            raise ValueError("an empty prefix matches every task")
        following = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        rows = self._read(
            "SELECT task_id FROM tasks WHERE task_id >= ? AND task_id < ? ORDER BY task_id LIMIT ?",
            (prefix, following, limit),
        )
        found = {task_id for (task_id,) in rows}
        # Staged or in-flight tasks: a handful at most, the last commit's worth.
        found.update(task_id for task_id in self._unwritten if task_id.startswith(prefix))
        return sorted(found)[:limit]

    def load_dependants(self, task_id: str, limit: int) -> tuple[list[str], int]:
        """Up to ``limit`` ids of the tasks that depend on ``task_id``, oldest first, and
        how many there are in all."""
        rows = self._read(
            "SELECT d.task_id FROM task_dependencies d JOIN tasks t USING (task_id)"
            f" WHERE d.prerequisite_id = ? ORDER BY t.created_at, t.{self._POSITION} LIMIT ?",
            (task_id, limit),
        )
        ((total,),) = self._read(
            "SELECT COUNT(*) FROM task_dependencies WHERE prerequisite_id = ?", (task_id,)
        )
        return [dependant for (dependant,) in rows], int(total)

    def list_task_page(self, task_filter: TaskFilter) -> TaskPage:
        """A page of the tasks matching the filter, most recently updated first.

        The database leaves the result and verification report out of each body and
        gives the result's summary instead, so a page of tasks with large results costs
        the hub no more memory than a page of small ones.
        """
        clauses: list[str] = []
        params: list[Any] = []
        statuses = task_filter.status
        if isinstance(statuses, tuple):
            clauses.append(f"status IN ({', '.join('?' * len(statuses))})")
            params.extend(statuses)
        elif statuses is not None:
            clauses.append("status = ?")
            params.append(statuses)
        for column, value in (
            ("priority", task_filter.priority),
            ("assigned_to", task_filter.agent),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if task_filter.updated_since is not None:
            clauses.append("updated_at >= ?")
            params.append(task_filter.updated_since)
        if task_filter.capability is not None:
            clauses.append(self._CAPABILITY)
            params.append(task_filter.capability)
        if task_filter.after is not None:
            updated_at, position = task_filter.after
            clauses.append(f"(updated_at < ? OR (updated_at = ? AND {self._POSITION} < ?))")
            params += [updated_at, updated_at, position]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._read(self._LIST_QUERY.format(where=where), (*params, task_filter.limit + 1))
        tasks = [
            listed_task(task_from_body(row[0]), self._summary(row))
            for row in rows[: task_filter.limit]
        ]
        more = len(rows) > task_filter.limit
        last = rows[task_filter.limit - 1] if more else None
        return TaskPage(tasks, task_cursor(last[-2], last[-1]) if last is not None else None)

    async def read_task_stats(self, finished_since_ms: int) -> dict[str, Any]:
        """Counts by status and priority, execution totals per model and per agent, and
        the tasks that reached each terminal status at or after ``finished_since_ms``
        (``finished``), as committed.

        Read on a thread of its own: over a long history this takes a while, and the event
        loop goes on meanwhile. A call made while a read is under way shares its answer.
        """
        if self._stats_read is None:
            self._stats_read = asyncio.ensure_future(
                self._aggregator.run(self._read_task_stats, finished_since_ms)
            )
            self._stats_read.add_done_callback(self._forget_stats_read)
        return await asyncio.shield(self._stats_read)

    def _forget_stats_read(self, _: asyncio.Future[dict[str, Any]]) -> None:
        self._stats_read = None

    def _read_task_stats(self, finished_since_ms: int) -> dict[str, Any]:
        connection = self._aggregator.connection()

        def rows(sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
            return self._fetch(connection, sql, params)

        def totals(key: str, group: str) -> list[tuple[Any, ...]]:
            return rows(_TOTALS.format(key=key, group=group))

        by_status = rows("SELECT status, COUNT(*) FROM tasks GROUP BY status")
        by_priority = rows(
            "SELECT priority, COUNT(*) FROM tasks WHERE status = 'queued' GROUP BY priority"
        )
        # A finished task is not updated again, so its updated_at is when it finished.
        finished = rows(
            "SELECT status, COUNT(*) FROM tasks WHERE updated_at >= ? "
            "AND status IN (?, ?, ?) GROUP BY status",
            (finished_since_ms, *TERMINAL_VALUES),
        )
        return stats_report(
            dict(by_status),
            dict(by_priority),
            totals("'all'", "")[0][1:],
            totals("model_used", "GROUP BY model_used"),
            totals("assigned_to", "GROUP BY assigned_to"),
            finished,
        )

    def load_endpoints(self) -> list[EndpointRow]:
        """Registered endpoints as ``(endpoint_id, url, source, agent_id, approved)``,
        first registered first."""
        rows = self._read(
            "SELECT endpoint_id, url, source, agent_id, approved FROM endpoints"
            f" ORDER BY created_at, {self._POSITION}"
        )
        return [(row[0], row[1], row[2], row[3], bool(row[4])) for row in rows]

    def load_channels(
        self, history_bytes: int | None = None
    ) -> tuple[list[tuple[str, str | None, int, int]], list[tuple[str, str]], list[dict[str, Any]]]:
        """Channels, subscriptions and stored history, oldest message first.

        With ``history_bytes``, only each channel's newest messages whose stored bodies
        add up to at most that many characters are read (at least the newest one), so a
        start never holds more history than the hub will keep.
        """
        channels = self._read(
            "SELECT name, description, created_at, seq FROM channels ORDER BY name"
        )
        subscriptions = self._read("SELECT channel, agent_id FROM channel_subscriptions")
        if history_bytes is None:
            bodies = self._read(_CHANNEL_HISTORY.format(where=""))
        else:
            bodies = self._read(
                _CHANNEL_HISTORY.format(where="WHERE newer_or_same = 1 OR chars_up_to_here <= ?"),
                (history_bytes,),
            )
        return (
            [(row[0], row[1], row[2], row[3]) for row in channels],
            [(row[0], row[1]) for row in subscriptions],
            [json.loads(body) for (body,) in bodies],
        )

    def load_execution_tails(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """Saved execution tails, least recently active first."""
        rows = self._read(
            f"SELECT task_id, events FROM execution_tails ORDER BY last_at, {self._POSITION}"
        )
        return [(task_id, json.loads(events)) for task_id, events in rows]

    def load_queue_history(self) -> list[tuple[int, int, int]]:
        """Saved queue minutes as ``(minute, depth, completions)``, oldest first."""
        rows = self._read("SELECT minute, depth, completions FROM queue_history ORDER BY minute")
        return [(row[0], row[1], row[2]) for row in rows]

    def has_token(self, agent_id: str, role: str | None = None) -> bool:
        """Whether ``agent_id`` holds a token (of ``role``, when given)."""
        if role is None:
            return bool(self._read("SELECT 1 FROM tokens WHERE agent_id = ?", (agent_id,)))
        return bool(
            self._read("SELECT 1 FROM tokens WHERE agent_id = ? AND role = ?", (agent_id, role))
        )

    def find_token(self, token_hash: str) -> TokenRecord | None:
        """The token with this hash, or None."""
        rows = self._read(
            "SELECT agent_id, role, token_hash, created_at FROM tokens WHERE token_hash = ?",
            (token_hash,),
        )
        return TokenRecord(*rows[0]) if rows else None

    def last_revocation(self) -> int:
        """The sequence number of the latest token revocation (0: none yet)."""
        ((seq,),) = self._read("SELECT MAX(seq) FROM token_revocations")
        return int(seq or 0)

    def revocations_since(self, seq: int) -> list[tuple[int, str, str]]:
        """Token revocations after ``seq``, oldest first, as ``(seq, agent_id, token_hash)``."""
        rows = self._read(
            "SELECT seq, agent_id, token_hash FROM token_revocations WHERE seq > ? ORDER BY seq",
            (seq,),
        )
        return [(int(row[0]), str(row[1]), str(row[2])) for row in rows]

    def close(self) -> None:
        """Wait for the writer and any aggregate read, then release every connection."""
        self._writer.close()
        self._aggregator.close()
        self._reader.close()
