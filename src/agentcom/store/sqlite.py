"""SQLite store: WAL mode, one writer thread, group commit.

Changes are staged in memory (the latest state of each task wins) and written by a
single writer thread; every waiter of :meth:`SqliteStore.commit` that arrives while a
transaction is being written shares the next transaction, so a burst of changes costs
one fsync.

A transaction that fails (the database is locked past the busy timeout, the disk is
full ...) is refused, not postponed: its changes and every change staged after them are
discarded, every waiter gets :class:`StoreError`, and :attr:`SqliteStore.on_refused`
learns what was discarded so the hub can reload it as stored.

This module is longer than the others on purpose: it is the one place that writes SQL
for the hub, and the schema, its migrations, the writer thread and the readers share
their connections and locks; split, each part would reach into the others' internals.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from agentcom.errors import StoreError
from agentcom.protocol.task import (
    RESULT_PREVIEW_CHARS,
    ResultSummary,
    Task,
    listed_task,
    task_cursor,
    task_from_body,
)
from agentcom.store.base import ChangeKey, EndpointRow, TaskFilter, TaskPage, TokenRecord
from agentcom.store.columns import TERMINAL_VALUES, stats_report, task_columns

__all__ = ["SqliteStore", "open_database"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# A page of tasks: each body without its result and verification report, and what a
# list says of the result instead (protocol.task.ResultSummary), then the page position.
_LIST_QUERY = f"""
SELECT json_remove(body, '$.result', '$.verification_report'),
       json_type(body, '$.result') = 'object',
       CASE json_type(body, '$.result.status') WHEN 'text'
            THEN json_extract(body, '$.result.status') END,
       CASE json_type(body, '$.result.output') WHEN 'text'
            THEN substr(json_extract(body, '$.result.output'), 1, {RESULT_PREVIEW_CHARS}) END,
       CASE json_type(body, '$.result.output') WHEN 'text'
            THEN length(json_extract(body, '$.result.output')) END,
       updated_at, rowid
FROM tasks {{where}} ORDER BY updated_at DESC, rowid DESC LIMIT ?
"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    priority TEXT NOT NULL,
    assigned_to TEXT,
    generation INTEGER NOT NULL,
    model_used TEXT,
    tokens_in INTEGER,
    tokens_out INTEGER,
    estimated_cost_usd REAL,
    equivalent_claude_cost_usd REAL,
    execution_ms REAL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status, created_at);
CREATE INDEX IF NOT EXISTS tasks_by_update ON tasks (updated_at);
CREATE TABLE IF NOT EXISTS task_dependencies (
    prerequisite_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    PRIMARY KEY (prerequisite_id, task_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS endpoints (
    endpoint_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    source TEXT NOT NULL,
    agent_id TEXT,
    created_at INTEGER NOT NULL,
    approved INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS channels (
    name TEXT PRIMARY KEY,
    description TEXT,
    created_at INTEGER NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS channel_subscriptions (
    channel TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    PRIMARY KEY (channel, agent_id)
);
CREATE TABLE IF NOT EXISTS channel_messages (
    channel TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (channel, seq)
);
CREATE TABLE IF NOT EXISTS tokens (
    agent_id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
-- Every token that stops being valid (revoked, replaced, or its role changed), written
-- by triggers so that any writer (the CLI while hubs run, another node) is noticed: each
-- hub polls this table for rows past the last it saw and closes those tokens' sessions.
CREATE TABLE IF NOT EXISTS token_revocations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    revoked_at INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS token_deleted AFTER DELETE ON tokens BEGIN
    INSERT INTO token_revocations (agent_id, token_hash, revoked_at)
    VALUES (old.agent_id, old.token_hash, CAST(strftime('%s', 'now') AS INTEGER) * 1000);
END;
CREATE TRIGGER IF NOT EXISTS token_replaced AFTER UPDATE ON tokens
WHEN old.token_hash != new.token_hash OR old.role != new.role BEGIN
    INSERT INTO token_revocations (agent_id, token_hash, revoked_at)
    VALUES (old.agent_id, old.token_hash, CAST(strftime('%s', 'now') AS INTEGER) * 1000);
END;
CREATE TABLE IF NOT EXISTS execution_tails (
    task_id TEXT PRIMARY KEY,
    last_at INTEGER NOT NULL,
    events TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS queue_history (
    minute INTEGER PRIMARY KEY,
    depth INTEGER NOT NULL,
    completions INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS write_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    written_at INTEGER NOT NULL
);
"""

_UPSERT_TASK = """
INSERT INTO tasks (task_id, status, priority, assigned_to, generation, model_used, tokens_in,
    tokens_out, estimated_cost_usd, equivalent_claude_cost_usd, execution_ms, created_at,
    updated_at, body)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (task_id) DO UPDATE SET
    status = excluded.status, priority = excluded.priority, assigned_to = excluded.assigned_to,
    generation = excluded.generation, model_used = excluded.model_used,
    tokens_in = excluded.tokens_in, tokens_out = excluded.tokens_out,
    estimated_cost_usd = excluded.estimated_cost_usd,
    equivalent_claude_cost_usd = excluded.equivalent_claude_cost_usd,
    execution_ms = excluded.execution_ms, updated_at = excluded.updated_at, body = excluded.body
"""


_INSERT_DEPENDENCY = (
    "INSERT OR IGNORE INTO task_dependencies (prerequisite_id, task_id) VALUES (?, ?)"
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
_SUBSCRIBE = "INSERT OR IGNORE INTO channel_subscriptions (channel, agent_id) VALUES (?, ?)"
_UNSUBSCRIBE = "DELETE FROM channel_subscriptions WHERE channel = ? AND agent_id = ?"
_INSERT_MESSAGE = "INSERT OR REPLACE INTO channel_messages (channel, seq, body) VALUES (?, ?, ?)"
_TRIM_MESSAGES = "DELETE FROM channel_messages WHERE channel = ? AND seq <= ?"

_UPSERT_TAIL = "INSERT OR REPLACE INTO execution_tails (task_id, last_at, events) VALUES (?,?,?)"
_DELETE_TAIL = "DELETE FROM execution_tails WHERE task_id = ?"
_UPSERT_MINUTE = "INSERT OR REPLACE INTO queue_history (minute, depth, completions) VALUES (?,?,?)"
_TRIM_HISTORY = "DELETE FROM queue_history WHERE minute < ?"

_WRITE_PROBE = "INSERT OR REPLACE INTO write_probe (id, written_at) VALUES (1, ?)"

# A staged change: the statement and its parameters, keyed so the latest state wins.
Change = tuple[str, tuple[Any, ...]]


def open_database(
    path: Path | str,
    *,
    check_same_thread: bool = True,
    busy_timeout_s: float = 10.0,
    existing: bool = False,
) -> sqlite3.Connection:
    """Open (creating if needed) the database in WAL mode with the schema in place.

    With ``existing``, only a database that exists is opened, as it is: a missing file
    raises ``sqlite3.OperationalError`` rather than being created, and neither the schema
    nor the journal mode is touched (an agentcom database already has both).

    A new database file is created readable and writable by its owner only (0600): it
    holds every task's description and result. SQLite gives its ``-wal`` and ``-shm``
    files the same permissions. An existing file keeps the permissions it has.

    A statement that finds the database locked by another connection retries for
    ``busy_timeout_s``, then fails with ``sqlite3.OperationalError``.
    """
    if not existing:
        _create_private(Path(path))
    target = f"{Path(path).absolute().as_uri()}?mode=rw" if existing else str(path)
    connection = sqlite3.connect(
        target,
        timeout=busy_timeout_s,
        isolation_level=None,
        check_same_thread=check_same_thread,
        uri=existing,
    )
    connection.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
    if not existing:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.executescript(_SCHEMA)
        _add_missing_columns(connection)
    connection.execute("PRAGMA synchronous=FULL")
    return connection


def _create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (any umask notwithstanding)."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError:
        return  # sqlite3.connect reports what is wrong with the path, as it always did
    os.close(descriptor)


def _add_missing_columns(connection: sqlite3.Connection) -> None:
    """Bring a database made by an earlier version up to the schema above."""
    columns = {row[1] for row in connection.execute("PRAGMA table_info(endpoints)")}
    if "approved" not in columns:
        connection.execute("ALTER TABLE endpoints ADD COLUMN approved INTEGER NOT NULL DEFAULT 0")


class SqliteStore:
    """The embedded default store.

    Args:
        path: database file; created with its schema when missing.
        batch_max: most staged changes written in one transaction.
        busy_timeout_s: how long a write waits for a lock held by another process before
            it fails (and is refused).
    """

    def __init__(
        self, path: Path | str, batch_max: int = 2000, busy_timeout_s: float = 10.0
    ) -> None:
        self.path = Path(path)
        self._batch_max = batch_max
        self._busy_timeout_s = busy_timeout_s
        self._reader = open_database(self.path, busy_timeout_s=busy_timeout_s)
        self._writer = _ConnectionThread(self.path, busy_timeout_s, "sqlite-writer")
        # Aggregate reads (stats over every task ever run) take a thread of their own, so
        # that a large history never holds the event loop; concurrent callers share one.
        self._aggregator = _ConnectionThread(self.path, busy_timeout_s, "sqlite-stats")
        self._stats_read: asyncio.Future[dict[str, Any]] | None = None
        self._staged: dict[tuple[str, str], Change] = {}
        # Tasks staged or being written: reads must see them before the database does.
        self._unwritten: dict[str, Task] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._writing = False
        self._writer_task: asyncio.Task[None] | None = None
        self.commits = 0  # transactions written, for metrics
        # Told the keys of the changes a failed transaction discarded, before any waiter
        # hears of the failure.
        self.on_refused: Callable[[list[ChangeKey]], None] | None = None
        # Told the duration (seconds) and the number of changes of each written transaction.
        self.on_written: Callable[[float, int], None] | None = None

    # --- writes -----------------------------------------------------------------------

    def stage_task(self, task: Task) -> None:
        """Queue ``task`` for the next commit: the state it has when that commit starts is
        written (so a task changed several times before a commit is encoded once)."""
        self._staged["task", task.task_id] = (_UPSERT_TASK, (task,))
        self._unwritten[task.task_id] = task

    def stage_dependencies(self, task_id: str, prerequisites: list[str]) -> None:
        """Queue the links from ``task_id`` to the tasks it depends on for the next commit."""
        for prerequisite in prerequisites:
            self._staged["dependency", f"{prerequisite}\0{task_id}"] = (
                _INSERT_DEPENDENCY,
                (prerequisite, task_id),
            )

    def load_dependants(self, task_id: str, limit: int) -> tuple[list[str], int]:
        """Up to ``limit`` ids of the tasks that depend on ``task_id``, oldest first, and
        how many there are in all."""
        rows = self._reader.execute(
            "SELECT d.task_id FROM task_dependencies d JOIN tasks t USING (task_id)"
            " WHERE d.prerequisite_id = ? ORDER BY t.created_at, t.rowid LIMIT ?",
            (task_id, limit),
        ).fetchall()
        (total,) = self._reader.execute(
            "SELECT count(*) FROM task_dependencies WHERE prerequisite_id = ?", (task_id,)
        ).fetchone()
        return [dependant for (dependant,) in rows], int(total)

    def stage_endpoint(
        self,
        endpoint_id: str,
        url: str,
        source: str,
        agent_id: str | None,
        approved: bool = False,
    ) -> None:
        """Queue a registered (or approved) endpoint for the next commit."""
        row = (endpoint_id, url, source, agent_id, time.time_ns() // 1_000_000, int(approved))
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
        self._staged["tail", task_id] = (_UPSERT_TAIL, (task_id, last_at, json.dumps(events)))

    def stage_queue_minutes(self, minutes: list[tuple[int, int, int]], oldest: int) -> None:
        """Queue ``(minute, depth, completions)`` rows, and the removal of minutes before
        ``oldest``, for the next commit."""
        for row in minutes:
            self._staged["minute", str(row[0])] = (_UPSERT_MINUTE, row)
        self._staged["minute_trim", ""] = (_TRIM_HISTORY, (oldest,))

    def load_execution_tails(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """Saved execution tails, least recently active first."""
        rows = self._reader.execute(
            "SELECT task_id, events FROM execution_tails ORDER BY last_at, rowid"
        ).fetchall()
        return [(task_id, json.loads(events)) for task_id, events in rows]

    def load_queue_history(self) -> list[tuple[int, int, int]]:
        """Saved queue minutes as ``(minute, depth, completions)``, oldest first."""
        rows = self._reader.execute(
            "SELECT minute, depth, completions FROM queue_history ORDER BY minute"
        ).fetchall()
        return [tuple(row) for row in rows]

    def load_channels(
        self, history_bytes: int | None = None
    ) -> tuple[list[tuple[str, str | None, int, int]], list[tuple[str, str]], list[dict[str, Any]]]:
        """Channels, subscriptions and stored history, oldest message first.

        With ``history_bytes``, only each channel's newest messages whose stored bodies
        add up to at most that many characters are read (at least the newest one), so a
        start never holds more history than the hub will keep.
        """
        channels = self._reader.execute(
            "SELECT name, description, created_at, seq FROM channels ORDER BY name"
        ).fetchall()
        subscriptions = self._reader.execute(
            "SELECT channel, agent_id FROM channel_subscriptions"
        ).fetchall()
        kept: dict[str, list[str]] = {}
        budget: dict[str, int] = {}
        cursor = self._reader.execute(
            "SELECT channel, body FROM channel_messages ORDER BY channel, seq DESC"
        )
        for channel, body in cursor:  # newest first, one row at a time
            left = budget.get(channel, history_bytes if history_bytes is not None else -1)
            bodies = kept.setdefault(channel, [])
            if history_bytes is not None and bodies and left < len(body):
                budget[channel] = 0
                continue
            bodies.append(body)
            budget[channel] = left - len(body)
        messages = [json.loads(body) for bodies in kept.values() for body in reversed(bodies)]
        return (
            [tuple(row) for row in channels],
            [tuple(row) for row in subscriptions],
            messages,
        )

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
                rows = [
                    (key, (_UPSERT_TASK, task_columns(params[0])))
                    if statement is _UPSERT_TASK
                    else (key, (statement, params))
                    for key, (statement, params) in self._staged.items()
                ]
                self._staged.clear()
                waiters, self._waiters = self._waiters, []
                try:
                    if rows:
                        started = time.perf_counter()
                        await self._writer.run(self._write_rows, rows)
                        self.commits += 1
                        if self.on_written is not None:
                            self.on_written(time.perf_counter() - started, len(rows))
                except (sqlite3.Error, OSError) as exc:
                    self._refuse([key for key, _ in rows], waiters, exc)
                    continue
                for (kind, name), _ in rows:
                    if kind == "task" and ("task", name) not in self._staged:
                        self._unwritten.pop(name, None)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
        finally:
            self._writing = False

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
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"database write failed: {exc}") from None

    def _write_probe(self) -> None:
        connection = self._writer.connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.execute(_WRITE_PROBE, (time.time_ns() // 1_000_000,))
            connection.execute("COMMIT")
        except BaseException:
            _rollback(connection)
            raise

    def _write_rows(self, changes: list[tuple[tuple[str, str], Change]]) -> None:
        """Write every change in one transaction (one fsync), grouped by statement."""
        by_statement: dict[str, list[tuple[Any, ...]]] = {}
        for _, (statement, params) in changes:
            by_statement.setdefault(statement, []).append(params)
        connection = self._writer.connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            for statement, rows in by_statement.items():
                for start in range(0, len(rows), self._batch_max):
                    connection.executemany(statement, rows[start : start + self._batch_max])
            connection.execute("COMMIT")
        except BaseException:
            _rollback(connection)
            raise

    # --- reads ------------------------------------------------------------------------

    def load_unfinished_tasks(self) -> list[Task]:
        """Every task not in a terminal state, oldest first."""
        rows = self._reader.execute(
            "SELECT body FROM tasks WHERE status NOT IN (?, ?, ?) ORDER BY created_at",
            TERMINAL_VALUES,
        ).fetchall()
        return [task_from_body(body) for (body,) in rows]

    def get_task(self, task_id: str) -> Task | None:
        """One task, or None (including changes not written yet)."""
        unwritten = self._unwritten.get(task_id)
        if unwritten is not None:
            return unwritten
        row = self._reader.execute(
            "SELECT body FROM tasks WHERE task_id = ?", (task_id,)
        ).fetchone()
        return task_from_body(row[0]) if row else None

    def task_ids_starting_with(self, prefix: str, limit: int) -> list[str]:
        """Up to ``limit`` task ids that start with ``prefix``, in order, including tasks
        not written yet.

        A range on the primary key (``prefix <= task_id < the next prefix``), so the cost
        is the matches read, whatever the number of tasks.
        """
        if not prefix:
            raise ValueError("an empty prefix matches every task")
        following = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        rows = self._reader.execute(
            "SELECT task_id FROM tasks WHERE task_id >= ? AND task_id < ? ORDER BY task_id LIMIT ?",
            (prefix, following, limit),
        ).fetchall()
        found = {task_id for (task_id,) in rows}
        # Staged or in-flight tasks: a handful at most, the last commit's worth.
        found.update(task_id for task_id in self._unwritten if task_id.startswith(prefix))
        return sorted(found)[:limit]

    def list_task_page(self, task_filter: TaskFilter) -> TaskPage:
        """A page of the tasks matching the filter, most recently updated first.

        SQLite drops the result and verification report from each body and extracts the
        result's summary, so a page of tasks with large results costs the hub no more
        memory than a page of small ones.
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
            clauses.append(
                "EXISTS (SELECT 1 FROM json_each(body, '$.needed_capabilities') WHERE value = ?)"
            )
            params.append(task_filter.capability)
        if task_filter.after is not None:
            updated_at, position = task_filter.after
            clauses.append("(updated_at < ? OR (updated_at = ? AND rowid < ?))")
            params += [updated_at, updated_at, position]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._reader.execute(
            _LIST_QUERY.format(where=where), (*params, task_filter.limit + 1)
        ).fetchall()
        tasks = []
        for body, has_result, status, preview, chars, _, _ in rows[: task_filter.limit]:
            summary = None
            if has_result:
                summary = ResultSummary(status=status, output_preview=preview, output_chars=chars)
            tasks.append(listed_task(task_from_body(body), summary))
        more = len(rows) > task_filter.limit
        last = rows[task_filter.limit - 1] if more else None
        return TaskPage(tasks, task_cursor(last[5], last[6]) if last is not None else None)

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
        by_status = dict(
            connection.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status").fetchall()
        )
        by_priority = dict(
            connection.execute(
                "SELECT priority, COUNT(*) FROM tasks WHERE status = 'queued' GROUP BY priority"
            ).fetchall()
        )
        totals_sql = """
            SELECT {key}, COUNT(*), COALESCE(SUM(tokens_in), 0), COALESCE(SUM(tokens_out), 0),
                   COALESCE(SUM(estimated_cost_usd), 0),
                   COALESCE(SUM(equivalent_claude_cost_usd), 0),
                   COALESCE(SUM(execution_ms), 0)
            FROM tasks WHERE status = 'completed' {group}
        """

        def rows(key: str, group: str) -> list[tuple[Any, ...]]:
            return connection.execute(totals_sql.format(key=key, group=group)).fetchall()

        # A finished task is not updated again, so its updated_at is when it finished.
        finished = connection.execute(
            "SELECT status, COUNT(*) FROM tasks WHERE updated_at >= ? "
            "AND status IN (?, ?, ?) GROUP BY status",
            (finished_since_ms, *TERMINAL_VALUES),
        ).fetchall()
        return stats_report(
            by_status,
            by_priority,
            rows("'all'", "")[0][1:],
            rows("model_used", "GROUP BY model_used"),
            rows("assigned_to", "GROUP BY assigned_to"),
            finished,
        )

    def load_endpoints(self) -> list[EndpointRow]:
        """Registered endpoints as ``(endpoint_id, url, source, agent_id, approved)``."""
        rows = self._reader.execute(
            "SELECT endpoint_id, url, source, agent_id, approved FROM endpoints ORDER BY created_at"
        ).fetchall()
        return [(row[0], row[1], row[2], row[3], bool(row[4])) for row in rows]

    def has_token(self, agent_id: str, role: str | None = None) -> bool:
        """Whether ``agent_id`` holds a token (of ``role``, when given)."""
        row = self._reader.execute(
            "SELECT 1 FROM tokens WHERE agent_id = ? AND (? IS NULL OR role = ?)",
            (agent_id, role, role),
        ).fetchone()
        return row is not None

    def find_token(self, token_hash: str) -> TokenRecord | None:
        """The token with this hash, or None."""
        row = self._reader.execute(
            "SELECT agent_id, role, token_hash, created_at FROM tokens WHERE token_hash = ?",
            (token_hash,),
        ).fetchone()
        return TokenRecord(*row) if row else None

    def last_revocation(self) -> int:
        """The sequence number of the latest token revocation (0: none yet)."""
        row = self._reader.execute("SELECT MAX(seq) FROM token_revocations").fetchone()
        return int(row[0] or 0)

    def revocations_since(self, seq: int) -> list[tuple[int, str, str]]:
        """Token revocations after ``seq``, oldest first, as ``(seq, agent_id, token_hash)``."""
        rows = self._reader.execute(
            "SELECT seq, agent_id, token_hash FROM token_revocations WHERE seq > ? ORDER BY seq",
            (seq,),
        ).fetchall()
        return [(int(row[0]), str(row[1]), str(row[2])) for row in rows]

    def close(self) -> None:
        """Wait for the writer and any aggregate read, then release every connection."""
        self._writer.close()
        self._aggregator.close()
        self._reader.close()


class _ConnectionThread:
    """One thread with a connection of its own (opened there on first use): what runs on
    it never holds the event loop, and the connection is only ever used by that thread."""

    def __init__(self, path: Path, busy_timeout_s: float, name: str) -> None:
        self._path = path
        self._busy_timeout_s = busy_timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._local = threading.local()

    def connection(self) -> sqlite3.Connection:
        """The thread's connection; call on that thread only (from what :meth:`run` runs)."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = open_database(self._path, busy_timeout_s=self._busy_timeout_s)
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


def _rollback(connection: sqlite3.Connection) -> None:
    """Roll back after a failed statement (SQLite may already have rolled back itself)."""
    if connection.in_transaction:
        connection.execute("ROLLBACK")
