"""Staged writes and group commit, as both SQL stores do them.

Changes are staged in memory, keyed by what they change (the latest state of each task
wins), and written by a single writer thread; every waiter of :meth:`SqlWrites.commit`
that arrives while a transaction is being written shares the next transaction, so a
burst of changes costs one durable commit.

A transaction that fails (the database is locked past the busy timeout, the disk is
full, the server is gone ...) is refused, not postponed: its changes and every change
staged after them are discarded, every waiter gets :class:`StoreError`, and
:attr:`SqlWrites.on_refused` learns what was discarded so the hub can reload it as
stored.

The statements here are the SQL both SQLite and PostgreSQL speak, with ``?``
placeholders; a database's store brings the two that differ (``_UPSERT_TASK``,
``_UPSERT_TAIL``) and runs statements through its driver (:meth:`SqlWrites._execute_many`
inside :meth:`SqlWrites._transaction`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from agentcom.errors import StoreError
from agentcom.protocol.task import StoredState, Task
from agentcom.store.base import ChangeKey

__all__ = ["Change", "Connection", "ConnectionThread", "SqlWrites"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class Connection(Protocol):
    """What the shared code needs of a driver's connection."""

    def close(self) -> None:
        """Release the connection."""


C = TypeVar("C", bound=Connection)

Change = tuple[str, tuple[Any, ...]]
"""A staged change: the statement and its parameters."""

_ATTEMPTS = 3
"""Tries of a transaction the database aborted to break a deadlock."""

_NEVER_STORED = (None, None, None)
"""The expected state of a task never stored: no row may match it, so it is inserted."""

_INSERT_DEPENDENCY = (
    "INSERT INTO task_dependencies (prerequisite_id, task_id) VALUES (?, ?) ON CONFLICT DO NOTHING"
)
_UPSERT_ENDPOINT = """
INSERT INTO endpoints (endpoint_id, url, source, agent_id, created_at, approved)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (endpoint_id) DO UPDATE SET
    url = excluded.url, source = excluded.source, agent_id = excluded.agent_id,
    approved = excluded.approved
"""
_DELETE_ENDPOINT = "DELETE FROM endpoints WHERE endpoint_id = ?"
_UPSERT_CHANNEL = """
INSERT INTO channels (name, description, created_at, seq) VALUES (?, ?, ?, ?)
ON CONFLICT (name) DO UPDATE SET description = excluded.description, seq = excluded.seq
"""
_SUBSCRIBE = (
    "INSERT INTO channel_subscriptions (channel, agent_id) VALUES (?, ?) ON CONFLICT DO NOTHING"
)
_UNSUBSCRIBE = "DELETE FROM channel_subscriptions WHERE channel = ? AND agent_id = ?"
_INSERT_MESSAGE = (
    "INSERT INTO channel_messages (channel, seq, body) VALUES (?, ?, ?) "
    "ON CONFLICT (channel, seq) DO UPDATE SET body = excluded.body"
)
_TRIM_MESSAGES = "DELETE FROM channel_messages WHERE channel = ? AND seq <= ?"
_DELETE_TAIL = "DELETE FROM execution_tails WHERE task_id = ?"
_UPSERT_MINUTE = (
    "INSERT INTO queue_history (minute, depth, completions) VALUES (?, ?, ?) "
    "ON CONFLICT (minute) DO UPDATE SET depth = excluded.depth, completions = excluded.completions"
)
_TRIM_HISTORY = "DELETE FROM queue_history WHERE minute < ?"
_WRITE_PROBE = (
    "INSERT INTO write_probe (id, written_at) VALUES (1, ?) "
    "ON CONFLICT (id) DO UPDATE SET written_at = excluded.written_at"
)


class ConnectionThread(Generic[C]):
    """One thread with a connection of its own (opened there on first use): what runs on
    it never holds the event loop, and the connection is only ever used by that thread.

    Args:
        connect: opens a connection (called on the thread).
        name: the thread's name prefix.
        alive: whether a connection opened earlier can still be used; one that cannot
            (a server that ended the session) is replaced by a new one at the next use.
    """

    def __init__(
        self, connect: Callable[[], C], name: str, alive: Callable[[C], bool] | None = None
    ) -> None:
        self._connect = connect
        self._alive = alive
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._local = threading.local()

    def connection(self) -> C:
        """The thread's connection; call on that thread only (from what :meth:`run` runs)."""
        connection: C | None = getattr(self._local, "connection", None)
        if connection is not None and self._alive is not None and not self._alive(connection):
            connection.close()
            connection = None
        if connection is None:
            connection = self._connect()
            self._local.connection = connection
        return connection

    async def run(self, function: Callable[..., _T], *args: Any) -> _T:
        """``function(*args)`` on the thread, awaited without blocking the loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def close(self) -> None:
        """Wait for what runs on the thread, then close its connection and stop it."""

        def close_connection() -> None:
            connection = getattr(self._local, "connection", None)
            if connection is not None:
                connection.close()

        self._executor.submit(close_connection).result()
        self._executor.shutdown(wait=True)


class SqlWrites(Generic[C]):
    """Staging and group commit of a SQL store (see the module docstring).

    Args:
        writer: the thread that writes every transaction.
        batch_max: most rows handed to the driver in one ``executemany``.
    """

    _UPSERT_TASK: ClassVar[str]
    """Writes the row :meth:`_task_row` makes."""
    _UPSERT_TAIL: ClassVar[str]
    """Writes ``(task_id, last_at, events)``; a replaced tail counts as the newest written."""
    _REFUSALS: ClassVar[tuple[type[Exception], ...]]
    """The exceptions by which the database refuses a transaction."""
    _RETRYABLE: ClassVar[tuple[type[Exception], ...]] = ()
    """Failures after which the same transaction is written again at once (a deadlock
    the database broke by aborting this side): nothing of it was written."""
    _WRITE_TASK_IF: ClassVar[str | None] = None
    """Writes the row :meth:`_task_row` makes followed by the ``(status, generation,
    assigned_to)`` the stored row must still have (all None: the row must not exist),
    returning a row when it wrote; None where the database is never shared."""

    def __init__(self, writer: ConnectionThread[C], batch_max: int) -> None:
        self._writer = writer
        self._batch_max = batch_max
        self._staged: dict[ChangeKey, Change] = {}
        # Tasks staged or being written: reads must see them before the database does.
        self._unwritten: dict[str, Task] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._writing = False
        self._writer_task: asyncio.Task[None] | None = None
        # Hub nodes share the database: a task is written only where its row is still
        # in the state this node read or last wrote (see _conditional_rows).
        self.shared = False
        # Told the ids of tasks whose write found their row changed by another node: the
        # write (and what was staged on that task object since) is discarded, the rest
        # of the transaction committed.
        self.on_conflict: Callable[[list[str]], None] | None = None
        self.commits = 0  # transactions written, for metrics
        # Told the keys of the changes a failed transaction discarded, before any waiter
        # hears of the failure.
        self.on_refused: Callable[[list[ChangeKey]], None] | None = None
        # Told the duration (seconds) and the number of changes of each written transaction.
        self.on_written: Callable[[float, int], None] | None = None

    # --- what a database brings -------------------------------------------------------

    def _execute_many(self, connection: C, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Run ``sql`` once per row of parameters, inside the current transaction."""
        raise NotImplementedError

    def _transaction(self, connection: C) -> AbstractContextManager[None]:
        """A write transaction on ``connection``: committed at the end of the block (one
        durable write), rolled back when the block raises."""
        raise NotImplementedError

    def _task_row(self, task: Task) -> tuple[Any, ...]:
        """The parameters of :attr:`_UPSERT_TASK` for ``task``."""
        raise NotImplementedError

    def _execute_checked(self, connection: C, sql: str, rows: list[tuple[Any, ...]]) -> list[int]:
        """Run ``sql`` once per row, inside the current transaction; returns the indexes
        of the rows for which it returned nothing (their condition did not hold)."""
        raise NotImplementedError

    def stage_task(self, task: Task) -> None:
        """Queue ``task`` for the next commit: the state it has when that commit starts is
        written (so a task changed several times before a commit is encoded once)."""
        self._staged["task", task.task_id] = (self._UPSERT_TASK, (task,))
        self._unwritten[task.task_id] = task

    def has_unwritten(self, task_id: str) -> bool:
        """Whether a change of ``task_id`` is staged or being written."""
        return task_id in self._unwritten

    def stage_dependencies(self, task_id: str, prerequisites: list[str]) -> None:
        """Queue the links from ``task_id`` to the tasks it depends on for the next commit."""
        for prerequisite in prerequisites:
            self._staged["dependency", f"{prerequisite}\0{task_id}"] = (
                _INSERT_DEPENDENCY,
                (prerequisite, task_id),
            )

    def stage_endpoint(
        self,
        endpoint_id: str,
        url: str,
        source: str,
        agent_id: str | None,
        approved: bool = False,
    ) -> None:
        """Queue a registered (or approved) endpoint for the next commit."""
        row = (endpoint_id, url, source, agent_id, time.time_ns() // 1_000_000, approved)
        self._staged["endpoint", endpoint_id] = (_UPSERT_ENDPOINT, row)

    def stage_endpoint_removal(self, endpoint_id: str) -> None:
        """Queue the removal of an endpoint for the next commit."""
        self._staged["endpoint", endpoint_id] = (_DELETE_ENDPOINT, (endpoint_id,))

    def stage_channel(self, name: str, description: str | None, created_at: int, seq: int) -> None:
        """Queue a channel's definition and sequence number for the next commit."""
        self._staged["channel", name] = (_UPSERT_CHANNEL, (name, description, created_at, seq))

    def stage_subscription(self, channel: str, agent_id: str, subscribed: bool) -> None:
        """Queue a subscription change for the next commit."""
        statement = _SUBSCRIBE if subscribed else _UNSUBSCRIBE
        self._staged["subscription", f"{channel}\0{agent_id}"] = (statement, (channel, agent_id))

    def stage_channel_message(self, body: dict[str, Any], history_cap: int) -> None:
        """Queue a channel message, and the trimming of history beyond ``history_cap``."""
        channel, seq = body["channel"], body["seq"]
        self._staged["message", f"{channel}\0{seq}"] = (
            _INSERT_MESSAGE,
            (channel, seq, json.dumps(body)),
        )
        self._staged["trim", channel] = (_TRIM_MESSAGES, (channel, seq - history_cap))

    def stage_execution_tail(self, task_id: str, events: list[dict[str, Any]] | None) -> None:
        """Queue a task's kept execution events (None: forget them) for the next commit."""
        if events is None:
            self._staged["tail", task_id] = (_DELETE_TAIL, (task_id,))
            return
        last_at = events[-1].get("timestamp", 0) if events else 0
        self._staged["tail", task_id] = (self._UPSERT_TAIL, (task_id, last_at, json.dumps(events)))

    def stage_queue_minutes(self, minutes: list[tuple[int, int, int]], oldest: int) -> None:
        """Queue ``(minute, depth, completions)`` rows, and the removal of minutes before
        ``oldest``, for the next commit."""
        for row in minutes:
            self._staged["minute", str(row[0])] = (_UPSERT_MINUTE, row)
        self._staged["minute_trim", ""] = (_TRIM_HISTORY, (oldest,))

    async def commit(self) -> None:
        """Return once everything staged before the call is durable; raises StoreError."""
        if not self._staged and not self._writing:
            return  # nothing staged and nothing in flight: already durable
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        if not self._writing:
            self._writing = True
            self._writer_task = loop.create_task(self._write_pending())
        await waiter

    async def _write_pending(self) -> None:
        try:
            while self._waiters:
                if self.shared:
                    rows, written = self._conditional_rows()
                else:
                    rows, written = (
                        [
                            (key, (statement, self._task_row(params[0])))
                            if statement is self._UPSERT_TASK
                            else (key, (statement, params))
                            for key, (statement, params) in self._staged.items()
                        ],
                        [],
                    )
                self._staged.clear()
                waiters, self._waiters = self._waiters, []
                try:
                    conflicts: set[str] = set()
                    if rows:
                        started = time.perf_counter()
                        conflicts = await self._writer.run(self._write_retrying, rows)
                        self.commits += 1
                        if self.on_written is not None:
                            self.on_written(time.perf_counter() - started, len(rows))
                except self._REFUSALS as exc:
                    self._refuse([key for key, _ in rows], waiters, exc)
                    continue
                for (kind, name), _ in rows:
                    if kind == "task" and ("task", name) not in self._staged:
                        self._unwritten.pop(name, None)
                for task, state in written:
                    if task.task_id not in conflicts:
                        task._stored_as = state
                if conflicts:
                    self._conflicted(conflicts, written)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
        finally:
            self._writing = False

    def _conditional_rows(
        self,
    ) -> tuple[list[tuple[ChangeKey, Change]], list[tuple[Task, StoredState]]]:
        """The staged changes as rows, each task's written only where its row is still in
        the state its object was read or last written in (a task never stored: only
        where no row exists). Returns the rows and each written task with the state its
        row will have."""
        statement_if = self._WRITE_TASK_IF
        assert statement_if is not None
        tasks: list[tuple[ChangeKey, Change]] = []
        others: list[tuple[ChangeKey, Change]] = []
        written: list[tuple[Task, StoredState]] = []
        for key, (statement, params) in self._staged.items():
            if statement is self._UPSERT_TASK:
                task: Task = params[0]
                expected = task._stored_as or _NEVER_STORED
                tasks.append((key, (statement_if, (*self._task_row(task), *expected))))
                written.append((task, task.stored_state()))
            else:
                others.append((key, (statement, params)))
        # Every node locks task rows first and in the order of their ids: two nodes'
        # transactions over the same tasks then wait for each other, never deadlock.
        tasks.sort(key=lambda row: row[0][1])
        return tasks + others, written

    def _conflicted(self, task_ids: set[str], written: list[tuple[Task, StoredState]]) -> None:
        """Tasks whose write lost to another node's: what was staged on the same objects
        since is dropped too (it was made from the state that lost), then the hub hears."""
        for task, _ in written:
            if task.task_id not in task_ids:
                continue
            staged = self._staged.get(("task", task.task_id))
            if staged is not None and staged[1][0] is task:
                del self._staged["task", task.task_id]
            if self._unwritten.get(task.task_id) is task:
                del self._unwritten[task.task_id]
        logger.info("%d task writes lost to another node: %s", len(task_ids),
                    ", ".join(sorted(task_ids)[:5]))  # fmt: skip
        if self.on_conflict is not None:
            self.on_conflict(sorted(task_ids))

    def _refuse(
        self, keys: list[ChangeKey], waiters: list[asyncio.Future[None]], exc: Exception
    ) -> None:
        """Discard a failed transaction and everything staged since; fail all waiters.

        Changes staged while the failed transaction was being written may depend on it,
        so they go too: afterwards the store holds nothing that was not written.
        """
        logger.error("database write failed: %s", exc)
        keys = keys + list(self._staged)
        waiters = waiters + self._waiters
        self._staged.clear()
        self._unwritten.clear()
        self._waiters = []
        error = StoreError(f"database write failed: {exc}")
        try:
            if self.on_refused is not None:
                self.on_refused(keys)
        finally:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(error)

    async def check_writable(self) -> None:
        """Write and commit a one-row probe; raises StoreError when the database refuses it.

        The probe takes the writer's turn like any transaction, so it waits for a write in
        progress and for the busy timeout.
        """
        try:
            await self._writer.run(self._write_probe)
        except self._REFUSALS as exc:
            raise StoreError(f"database write failed: {exc}") from None

    def _write_probe(self) -> None:
        connection = self._writer.connection()
        with self._transaction(connection):
            self._execute_many(connection, _WRITE_PROBE, [(time.time_ns() // 1_000_000,)])

    def _write_retrying(self, changes: list[tuple[ChangeKey, Change]]) -> set[str]:
        """:meth:`_write_rows`, written again (up to twice more) after a failure the
        database asks to retry."""
        attempt = 1
        while True:
            try:
                return self._write_rows(changes)
            except self._RETRYABLE as exc:
                if attempt == _ATTEMPTS:
                    raise
                attempt += 1
                logger.info("transaction aborted by the database (%s); writing it again",
                            str(exc).splitlines()[0])  # fmt: skip

    def _write_rows(self, changes: list[tuple[ChangeKey, Change]]) -> set[str]:
        """Write every change in one transaction (one durable commit), grouped by
        statement in the order each statement was first staged. Returns the ids of the
        tasks whose conditional write found their row changed (nothing written for them)."""
        by_statement: dict[str, list[tuple[Any, ...]]] = {}
        for _, (statement, params) in changes:
            by_statement.setdefault(statement, []).append(params)
        conflicts: set[str] = set()
        connection = self._writer.connection()
        with self._transaction(connection):
            for statement, rows in by_statement.items():
                for start in range(0, len(rows), self._batch_max):
                    batch = rows[start : start + self._batch_max]
                    if statement is self._WRITE_TASK_IF:
                        missed = self._execute_checked(connection, statement, batch)
                        conflicts.update(batch[index][0] for index in missed)
                    else:
                        self._execute_many(connection, statement, batch)
        return conflicts
