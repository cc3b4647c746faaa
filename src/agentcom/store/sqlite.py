"""SQLite store: WAL mode, one writer thread, group commit (:mod:`agentcom.store.sqlbase`).

What is SQLite's own lives here: the schema and its migrations, opening a database file
(private, WAL, ``synchronous=FULL``), ``BEGIN IMMEDIATE`` transactions, and the task
row, whose JSON body SQLite's JSON functions take apart for task lists.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agentcom.protocol.task import RESULT_PREVIEW_CHARS, ResultSummary, Task
from agentcom.store.columns import task_columns
from agentcom.store.sqlbase import SqlStore
from agentcom.store.sqlwrites import ConnectionThread

__all__ = ["SqliteStore", "open_database"]

# A page of tasks: each body without its result and verification report, and what a
# list says of the result instead (protocol.task.ResultSummary), then the page position.
_LIST_PAGE = f"""
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

_TASK_UPSERT = """
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


class SqliteStore(SqlStore[sqlite3.Connection]):
    """The embedded default store.

    Args:
        path: database file; created with its schema when missing.
        batch_max: most staged changes written in one ``executemany``.
        busy_timeout_s: how long a write waits for a lock held by another process before
            it fails (and is refused).
    """

    _UPSERT_TASK = _TASK_UPSERT
    # A replaced row gets a new rowid: it counts as the most recently written.
    _UPSERT_TAIL = (
        "INSERT OR REPLACE INTO execution_tails (task_id, last_at, events) VALUES (?, ?, ?)"
    )
    _POSITION = "rowid"
    _BODY = "body"
    _CAPABILITY = "EXISTS (SELECT 1 FROM json_each(body, '$.needed_capabilities') WHERE value = ?)"
    _LIST_QUERY = _LIST_PAGE
    _REFUSALS = (sqlite3.Error, OSError)

    def __init__(
        self, path: Path | str, batch_max: int = 2000, busy_timeout_s: float = 10.0
    ) -> None:
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        super().__init__(
            open_database(self.path, busy_timeout_s=busy_timeout_s),
            ConnectionThread(self._connect, "sqlite-writer"),
            ConnectionThread(self._connect, "sqlite-stats"),
            batch_max,
        )

    def _connect(self) -> sqlite3.Connection:
        return open_database(self.path, busy_timeout_s=self._busy_timeout_s)

    def _fetch(
        self, connection: sqlite3.Connection, sql: str, params: Sequence[Any] = ()
    ) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = connection.execute(sql, params).fetchall()
        return rows

    def _execute_many(
        self, connection: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]
    ) -> None:
        connection.executemany(sql, rows)

    @contextmanager
    def _transaction(self, connection: sqlite3.Connection) -> Iterator[None]:
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield
            connection.execute("COMMIT")
        except BaseException:
            _rollback(connection)
            raise

    def _task_row(self, task: Task) -> tuple[Any, ...]:
        return task_columns(task)

    def _summary(self, row: tuple[Any, ...]) -> ResultSummary | None:
        _, has_result, status, preview, chars, _, _ = row
        if not has_result:
            return None
        return ResultSummary(status=status, output_preview=preview, output_chars=chars)


def _rollback(connection: sqlite3.Connection) -> None:
    """Roll back after a failed statement (SQLite may already have rolled back itself)."""
    if connection.in_transaction:
        connection.execute("ROLLBACK")
