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

An unreachable server never holds the hub: every use of a connection is bounded
(:class:`agentcom.store.pgconnection.Deadlines`): a read on the event loop's thread by
``timeout_s``, a write transaction or a statistics read by the lock wait plus
``timeout_s``. A read whose connection is lost fails with :class:`StoreError`; the next
one opens a new connection on a thread of its own and waits for it ``timeout_s`` at
most, and the reads after it fail at once while that attempt is still under way: while
the server cannot be reached, reads cost the event loop almost nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as Pending
from contextlib import contextmanager
from typing import Any

import psycopg

from agentcom.errors import StoreError
from agentcom.protocol.task import LISTED_WITHOUT, ResultSummary, Task
from agentcom.store.base import ChannelRow
from agentcom.store.columns import task_fields
from agentcom.store.pgconnection import (
    Deadlines,
    PgConnection,
    connect,
    native,
    one_line,
    scrubbed,
)
from agentcom.store.pgmessages import (
    CHANNEL_HISTORY,
    CHANNEL_MESSAGES_BETWEEN,
    CHANNEL_SUMMARIES,
    FORGET_INBOX,
    INSERT_CHANNEL,
    INSERT_INBOX,
    SUBSCRIBED_CHANNELS,
    TRIM_INBOX,
)
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

# The same write where the stored row still has the status, generation and owner this
# node read or last wrote (nodes sharing the database); a task never stored (all three
# NULL) is only inserted. RETURNING tells which rows were written.
_WRITE_TASK_IF = (
    _UPSERT_TASK
    + """WHERE tasks.status = CAST(? AS text) AND tasks.generation = CAST(? AS bigint)
    AND tasks.assigned_to IS NOT DISTINCT FROM CAST(? AS text)
RETURNING 1
"""
)

_LISTED_WITHOUT = set(LISTED_WITHOUT)

_OWNER_FOR_SHARE = "SELECT pid, host, since FROM hub_owner WHERE id = 1 FOR SHARE"


def _open(connection: PgConnection) -> bool:
    return not connection.closed


def _close_opened(attempt: Future[PgConnection]) -> None:
    if not attempt.cancelled() and attempt.exception() is None:
        attempt.result().close()


class PostgresStore(SqlStore[PgConnection]):
    """The store of a PostgreSQL database, with the semantics of the SQLite store.

    Args:
        url: the database (``postgresql://user@host:port/name``); its schema is created
            or migrated when needed (:func:`agentcom.store.pgschema.ensure_schema`).
        batch_max: most staged changes handed to the driver in one ``executemany``.
        busy_timeout_s: how long a statement waits for a lock held by another session
            before it fails (a write is then refused), as SQLite's busy timeout.
        timeout_s: how long a read may wait for the server (a write: on top of
            ``busy_timeout_s``) before its connection is dropped and it fails.

    Raises:
        StoreError: the server cannot be reached, or the schema cannot be made.
    """

    _UPSERT_TASK = _UPSERT_TASK
    _WRITE_TASK_IF = _WRITE_TASK_IF
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
    _RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)

    def __init__(
        self,
        url: str,
        batch_max: int = 2000,
        busy_timeout_s: float = 10.0,
        fence: tuple[Any, ...] | None = None,
        timeout_s: float = 2.0,
        shared: bool = False,
    ) -> None:
        self.url = url
        self._fence = fence
        self._busy_timeout_s = busy_timeout_s
        self._timeout_s = timeout_s
        self._deadlines = Deadlines(tick_s=min(timeout_s / 4, 0.5))
        self._reconnector = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-reconnect")
        self._reconnecting: Future[PgConnection] | None = None
        reader = self._connect()
        try:
            ensure_schema(reader)
        except BaseException:
            reader.close()
            self._deadlines.stop()
            self._reconnector.shutdown()
            raise
        super().__init__(
            reader,
            ConnectionThread(self._reconnect, "pg-writer", alive=_open),
            ConnectionThread(self._reconnect, "pg-stats", alive=_open),
            batch_max,
        )
        self.shared = shared

    def _connect(self) -> PgConnection:
        return connect(self.url, lock_timeout_s=self._busy_timeout_s)

    def _reconnect(self) -> PgConnection:
        try:
            return self._connect()
        except StoreError as exc:
            raise StoreError(f"the database is unreachable: {exc}") from None

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._fetch(self._live_reader(), sql, params)

    def _live_reader(self) -> PgConnection:
        """The reader, or a new one when the server ended its session (see the module
        docstring); raises StoreError when there is none to be had now."""
        if not self._reader.closed:
            return self._reader
        attempt, wait_s = self._reconnecting, 0.0
        if attempt is None:
            attempt = self._reconnecting = self._reconnector.submit(self._reconnect)
            wait_s = self._timeout_s
        try:
            fresh = attempt.result(timeout=wait_s)
        except Pending:
            raise StoreError("the database is unreachable: no connection yet") from None
        except StoreError:
            self._reconnecting = None
            raise
        self._reconnecting = None
        self._reader.close()
        self._reader = fresh
        return fresh

    def _fetch(
        self, connection: PgConnection, sql: str, params: Sequence[Any] = ()
    ) -> list[tuple[Any, ...]]:
        bound = self._timeout_s
        if connection is not self._reader:  # statistics, on their thread: maybe long
            bound += self._busy_timeout_s
        try:
            with self._deadlines.bound(connection, bound):
                return connection.execute(native(sql), scrubbed(params)).fetchall()
        except psycopg.Error as exc:
            if connection.closed:
                raise StoreError(f"the database is unreachable: {one_line(exc)}") from None
            raise StoreError(f"the database read failed: {one_line(exc)}") from None

    def _execute_many(
        self, connection: PgConnection, sql: str, rows: list[tuple[Any, ...]]
    ) -> None:
        with connection.cursor() as cursor:
            cursor.executemany(native(sql), [scrubbed(row) for row in rows])

    def _execute_checked(
        self, connection: PgConnection, sql: str, rows: list[tuple[Any, ...]]
    ) -> list[int]:
        missed = []
        with connection.cursor() as cursor:
            cursor.executemany(native(sql), [scrubbed(row) for row in rows], returning=True)
            index = 0
            while True:
                if cursor.fetchone() is None:
                    missed.append(index)
                index += 1
                if not cursor.nextset():
                    break
        return missed

    @contextmanager
    def _transaction(self, connection: PgConnection) -> Iterator[None]:
        try:
            with (
                self._deadlines.bound(connection, self._busy_timeout_s + self._timeout_s),
                connection.transaction(),
            ):
                if self._fence is not None:
                    # The hub_owner row, locked until this transaction ends, must still be
                    # the one this hub wrote: a hub taking over rewrites it, and waits for
                    # this lock to do so. So no write of this hub lands after another hub
                    # started serving (and read the state it restores), whatever became of
                    # the session holding the advisory lock.
                    owner = connection.execute(_OWNER_FOR_SHARE).fetchone()
                    if owner is None or tuple(owner) != self._fence:
                        raise StoreError("another hub serves this database now")
                yield
        except psycopg.Error as exc:
            if connection.closed:
                raise StoreError(f"the database is unreachable: {one_line(exc)}") from None
            raise

    async def check_writable(self) -> None:
        """The probe write; once it succeeds, a reader lost meanwhile is replaced at once
        (on the writer's thread), so reads work again with writes, not at a later try."""
        await super().check_writable()
        if self._reader.closed:
            fresh = await self._writer.run(self._reconnect)
            attempt, self._reconnecting = self._reconnecting, None
            if attempt is not None:  # an older attempt, maybe stuck on the dead path
                attempt.add_done_callback(_close_opened)
            self._reader.close()
            self._reader = fresh

    def close(self) -> None:
        super().close()
        self._deadlines.stop()
        self._reconnector.shutdown(wait=False, cancel_futures=True)
        attempt = self._reconnecting
        if attempt is not None:  # a connection that came too late: nobody will use it
            attempt.add_done_callback(_close_opened)

    # --- nodes sharing the database: messages (store/pgmessages.py) ---------------------

    def stage_inbox_message(
        self, message_id: str, recipient: str, sent_at: int, size: int, body: str
    ) -> None:
        """Queue a direct message kept for ``recipient`` (``body``: as pushed, JSON;
        ``size``: as counted against the inbox's bytes) for the next commit."""
        self._staged["inbox", message_id] = (INSERT_INBOX, (recipient, sent_at, size, body))

    def stage_inbox_trim(
        self, recipient: str, oldest_ms: int, max_messages: int, max_bytes: int,
        node_timeout_ms: int,
    ) -> None:  # fmt: skip
        """Queue the trimming of ``recipient``'s inbox to what a lone hub keeps (sent at
        or after ``oldest_ms``, the newest ``max_messages`` within ``max_bytes``), unless
        it is connected to a node whose heartbeat is younger than ``node_timeout_ms``."""
        self._staged["inbox_trim", recipient] = (
            TRIM_INBOX,
            (recipient, oldest_ms, max_messages, max_bytes, recipient, node_timeout_ms),
        )

    def stage_inbox_removal(self, recipient: str) -> None:
        """Queue the removal of every message kept for ``recipient``."""
        self._staged["inbox_forget", recipient] = (FORGET_INBOX, (recipient,))

    def stage_new_channel(self, name: str, description: str | None, created_at: int) -> None:
        """Queue a new channel (numbered from 0; left alone if another node made it)."""
        self._staged["channel", name] = (INSERT_CHANNEL, (name, description, created_at))

    def channel_summary(self, name: str) -> tuple[ChannelRow, int] | None:
        """A channel as stored and its subscribers' count, or None."""
        rows = self._read(CHANNEL_SUMMARIES.format(where="WHERE channel.name = ?"), (name,))
        return ((rows[0][0], rows[0][1], rows[0][2], rows[0][3]), rows[0][4]) if rows else None

    def channel_summaries(self) -> list[tuple[ChannelRow, int]]:
        """Every channel as stored with its subscribers' count, by name."""
        rows = self._read(CHANNEL_SUMMARIES.format(where=""))
        return [((row[0], row[1], row[2], row[3]), row[4]) for row in rows]

    def channel_seqs(self) -> dict[str, int]:
        """The number of the last message of every channel, by name."""
        return {name: int(seq) for name, seq in self._read("SELECT name, seq FROM channels")}

    def subscribed_channels(self, agent_id: str) -> list[ChannelRow]:
        """The channels ``agent_id`` is subscribed to, as stored, by name."""
        rows = self._read(SUBSCRIBED_CHANNELS, (agent_id,))
        return [(row[0], row[1], row[2], row[3]) for row in rows]

    def channel_messages_between(
        self, channel: str, after: int, before: int
    ) -> list[dict[str, Any]]:
        """The stored messages of ``channel`` numbered after ``after`` and before
        ``before``, in order (those trimmed from the history are missing)."""
        rows = self._read(CHANNEL_MESSAGES_BETWEEN, (channel, after, before))
        return [json.loads(body) for (body,) in rows]

    def channel_history(
        self, channel: str, since: int, limit: int, max_chars: int
    ) -> list[dict[str, Any]]:
        """The newest stored messages of ``channel`` numbered after ``since``: at most
        ``limit``, and only as many of the newest as add up to ``max_chars`` of stored
        body (at least one), oldest first."""
        rows = self._read(CHANNEL_HISTORY, (channel, since, limit, max_chars))
        return [json.loads(body) for (body,) in rows]

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
