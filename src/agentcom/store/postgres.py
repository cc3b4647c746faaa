"""PostgreSQL store: the SQLite store's semantics on a PostgreSQL database.

Everything but the database is the SQLite store's (:mod:`agentcom.store.sqlwrites`,
:mod:`agentcom.store.sqlbase`): changes staged in memory, one writer thread writing each
group commit as one transaction (durable at its COMMIT), reads of a few rows on the event
loop's thread, statistics on a thread of their own. One hub at a time serves a
database (:mod:`agentcom.store.pglock`).

What is PostgreSQL's own: a task row keeps apart what task lists leave out (the result,
the verification report, the agentic run: ``rest``) and what they say of the result
(``result_summary``, made when the task is staged), so a list never reads a result; the
whole task is the two JSON objects spliced. A connection the server ended (a restart, an
administrator) is replaced by a new one at its next use.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from agentcom.errors import StoreError
from agentcom.protocol.task import LISTED_WITHOUT, ResultSummary, Task
from agentcom.store.columns import task_fields
from agentcom.store.pgconnection import PgConnection, connect, native, scrubbed
from agentcom.store.pgschema import ensure_schema
from agentcom.store.sqlbase import SqlStore
from agentcom.store.sqlwrites import ConnectionThread

__all__ = ["PostgresStore"]

_UPSERT_TASK = """
INSERT INTO tasks (task_id, status, priority, assigned_to, generation, model_used, tokens_in,
    tokens_out, estimated_cost_usd, equivalent_claude_cost_usd, execution_ms, created_at,
    updated_at, needed_capabilities, body, rest, result_summary)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, CAST(? AS text[]), ?, ?, ?)
ON CONFLICT (task_id) DO UPDATE SET
    status = excluded.status, priority = excluded.priority, assigned_to = excluded.assigned_to,
    generation = excluded.generation, model_used = excluded.model_used,
    tokens_in = excluded.tokens_in, tokens_out = excluded.tokens_out,
    estimated_cost_usd = excluded.estimated_cost_usd,
    equivalent_claude_cost_usd = excluded.equivalent_claude_cost_usd,
    execution_ms = excluded.execution_ms, updated_at = excluded.updated_at,
    needed_capabilities = excluded.needed_capabilities, body = excluded.body,
    rest = excluded.rest, result_summary = excluded.result_summary
"""

_LISTED_WITHOUT = set(LISTED_WITHOUT)

_OWNER_FOR_SHARE = "SELECT pid, host, since FROM hub_owner WHERE id = 1 FOR SHARE"


def _open(connection: PgConnection) -> bool:
    return not connection.closed


class PostgresStore(SqlStore[PgConnection]):
    """The store of a PostgreSQL database, with the semantics of the SQLite store.

    Args:
        url: the database (``postgresql://user@host:port/name``); its schema is created
            or migrated when needed (:func:`agentcom.store.pgschema.ensure_schema`).
        batch_max: most staged changes handed to the driver in one ``executemany``.
        busy_timeout_s: how long a statement waits for a lock held by another session
            before it fails (a write is then refused), as SQLite's busy timeout.

    Raises:
        StoreError: the server cannot be reached, or the schema cannot be made.
    """

    _UPSERT_TASK = _UPSERT_TASK
    # A replaced tail takes a new position: it counts as the most recently written.
    _UPSERT_TAIL = (
        "INSERT INTO execution_tails (task_id, last_at, events) VALUES (?, ?, ?) "
        "ON CONFLICT (task_id) DO UPDATE SET last_at = excluded.last_at, "
        "events = excluded.events, position = DEFAULT"
    )
    _POSITION = "position"
    _BODY = "left(body, -1) || ',' || substr(rest, 2)"
    _CAPABILITY = "? = ANY(needed_capabilities)"
    _LIST_QUERY = (
        "SELECT body, result_summary, updated_at, position FROM tasks {where} "
        "ORDER BY updated_at DESC, position DESC LIMIT ?"
    )
    # StoreError: a connection that had to be opened again could not be.
    _REFUSALS = (psycopg.Error, OSError, StoreError)

    def __init__(
        self,
        url: str,
        batch_max: int = 2000,
        busy_timeout_s: float = 10.0,
        fence: tuple[Any, ...] | None = None,
    ) -> None:
        self.url = url
        self._fence = fence
        self._busy_timeout_s = busy_timeout_s
        reader = self._connect()
        try:
            ensure_schema(reader)
        except BaseException:
            reader.close()
            raise
        super().__init__(
            reader,
            ConnectionThread(self._connect, "pg-writer", alive=_open),
            ConnectionThread(self._connect, "pg-stats", alive=_open),
            batch_max,
        )

    def _connect(self) -> PgConnection:
        return connect(self.url, lock_timeout_s=self._busy_timeout_s)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self._reader.closed:  # the server ended the session: the next read reconnects
            self._reader = self._connect()
        return self._fetch(self._reader, sql, params)

    def _fetch(
        self, connection: PgConnection, sql: str, params: Sequence[Any] = ()
    ) -> list[tuple[Any, ...]]:
        return connection.execute(native(sql), scrubbed(params)).fetchall()

    def _execute_many(
        self, connection: PgConnection, sql: str, rows: list[tuple[Any, ...]]
    ) -> None:
        with connection.cursor() as cursor:
            cursor.executemany(native(sql), [scrubbed(row) for row in rows])

    @contextmanager
    def _transaction(self, connection: PgConnection) -> Iterator[None]:
        with connection.transaction():
            if self._fence is not None:
                # The hub_owner row, locked until this transaction ends, must still be the
                # one this hub wrote: a hub taking over rewrites it, and waits for this
                # lock to do so. So no write of this hub lands after another hub started
                # serving (and read the state it restores), whatever became of the
                # session holding the advisory lock.
                owner = connection.execute(_OWNER_FOR_SHARE).fetchone()
                if owner is None or tuple(owner) != self._fence:
                    raise StoreError("another hub serves this database now")
            yield

    def _task_row(self, task: Task) -> tuple[Any, ...]:
        summary = ResultSummary.of(task.result)
        return (
            *task_fields(task),
            task.needed_capabilities,
            task.model_dump_json(exclude=_LISTED_WITHOUT),
            task.model_dump_json(include=_LISTED_WITHOUT),
            summary.model_dump_json() if summary is not None else None,
        )

    def _summary(self, row: tuple[Any, ...]) -> ResultSummary | None:
        summary: str | None = row[1]
        return ResultSummary.model_validate_json(summary) if summary is not None else None
