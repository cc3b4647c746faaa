"""Messages between hub nodes sharing one PostgreSQL database: direct messages waiting
in ``agent_inbox``, and channel messages numbered by the database.

**Direct messages.** A message for an agent not connected to the node it was sent on is
written to ``agent_inbox`` with that node's group commit (:data:`INSERT_INBOX`, before
``message_sent``); the node its recipient is connected to, now or when it next connects,
takes it with :meth:`MessageTables.take_inboxes`: one ``DELETE ... RETURNING``, so of two
nodes taking the same rows, one gets them and the other nothing, and a message is
delivered once. While its recipient is connected to no live node, an inbox is bounded
as a lone hub bounds it in memory (:data:`TRIM_INBOX`: count, bytes, age); while it is
connected, what waits is taken within a Redis hop and is not cut.

**Channel messages.** :meth:`MessageTables.number_channel_messages` takes the channel's
next ``seq`` (``UPDATE channels SET seq = seq + 1 ... RETURNING seq``), inserts the
message and trims the history, in one transaction: the row lock orders the transactions
of one channel, so numbers never collide, never leave a hole, and once a message is
visible every lower-numbered one of its channel is too (a node that hears of message N
and has not seen N-1 reads it from the table). Several publishes waiting at once share
one transaction.

The statements with ``?`` placeholders run through the store
(:class:`agentcom.store.postgres.PostgresStore`); the others on a connection of
:class:`MessageTables`' own, on a thread of its own, so the event loop never waits for
them. The schema must exist (:func:`agentcom.store.pgschema.ensure_schema`).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from agentcom.errors import StoreError
from agentcom.store.pgconnection import scrubbed
from agentcom.store.pgworker import PgWorker

__all__ = [
    "CHANNEL_HISTORY",
    "CHANNEL_MESSAGES_BETWEEN",
    "CHANNEL_SUMMARIES",
    "FORGET_INBOX",
    "INSERT_CHANNEL",
    "INSERT_INBOX",
    "SUBSCRIBED_CHANNELS",
    "TRIM_INBOX",
    "ChannelDraft",
    "MessageTables",
]


_NOW = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"

# --- through the store (``?`` placeholders), staged or read on the event loop's thread ---

INSERT_INBOX = "INSERT INTO agent_inbox (recipient, sent_at, size, body) VALUES (?, ?, ?, ?)"
"""Keeps ``(recipient, sent_at, size, body)``."""

TRIM_INBOX = f"""
DELETE FROM agent_inbox WHERE position IN (
    SELECT position FROM (
        SELECT position, sent_at,
               ROW_NUMBER() OVER newest AS newer_or_same,
               SUM(size) OVER newest AS size_up_to_here
        FROM agent_inbox WHERE recipient = ?
        WINDOW newest AS (ORDER BY position DESC)
    ) AS kept
    WHERE sent_at < ? OR newer_or_same > ? OR (size_up_to_here > ? AND newer_or_same > 1)
) AND NOT EXISTS (
    SELECT 1 FROM agent_sessions session JOIN hub_nodes node USING (node_id)
    WHERE session.agent_id = ? AND session.ended_at IS NULL
      AND node.heartbeat_at >= {_NOW} - ?
)
"""
"""Drops what a lone hub's inbox would not keep of ``recipient``'s: messages sent before
a time (ms), beyond a count, beyond a size (the newest always stays); unless the
recipient is connected to a live node (one whose heartbeat is younger than the given
ms), which takes them. Parameters: recipient, oldest, count, size, recipient, node
timeout."""

FORGET_INBOX = "DELETE FROM agent_inbox WHERE recipient = ?"
"""Drops every message kept for one agent (its token was revoked)."""

INSERT_CHANNEL = (
    "INSERT INTO channels (name, description, created_at, seq) VALUES (?, ?, ?, 0) "
    "ON CONFLICT (name) DO NOTHING"
)
"""A new channel; one another node made at the same moment is left as it is."""

CHANNEL_SUMMARIES = """
SELECT channel.name, channel.description, channel.created_at, channel.seq,
       (SELECT COUNT(*) FROM channel_subscriptions subscription
        WHERE subscription.channel = channel.name)
FROM channels channel {where} ORDER BY channel.name
"""
"""Channels (``{where}``: all, or a condition on ``channel``) with their subscribers'
count."""

SUBSCRIBED_CHANNELS = """
SELECT channel.name, channel.description, channel.created_at, channel.seq
FROM channel_subscriptions subscription JOIN channels channel
    ON channel.name = subscription.channel
WHERE subscription.agent_id = ? ORDER BY channel.name
"""
"""The channels one agent is subscribed to."""

CHANNEL_MESSAGES_BETWEEN = (
    "SELECT body FROM channel_messages WHERE channel = ? AND seq > ? AND seq < ? ORDER BY seq"
)
"""A channel's messages numbered strictly between two numbers, in order."""

CHANNEL_HISTORY = """
SELECT body FROM (
    SELECT seq, body,
           ROW_NUMBER() OVER newest AS newer_or_same,
           SUM(LENGTH(body)) OVER newest AS chars_up_to_here
    FROM channel_messages WHERE channel = ? AND seq > ?
    WINDOW newest AS (ORDER BY seq DESC)
) AS history
WHERE newer_or_same <= ? AND (newer_or_same = 1 OR chars_up_to_here <= ?)
ORDER BY seq
"""
"""A channel's newest messages after a number: at most a count, and only as many of the
newest as fit a size (at least one), oldest first."""

# --- on the connection of MessageTables (psycopg's placeholders) -------------------------

# One statement: the channel's next number, the message stored with it (its body is the
# JSON object given without "seq", which goes first), the history trimmed.
_NUMBER_MESSAGE = """
WITH numbered AS (
    UPDATE channels SET seq = seq + 1 WHERE name = %(channel)s RETURNING seq
), stored AS (
    INSERT INTO channel_messages (channel, seq, body)
    SELECT %(channel)s, seq, '{"seq":' || seq || ',' || substr(%(body)s, 2) FROM numbered
), trimmed AS (
    DELETE FROM channel_messages
    WHERE channel = %(channel)s AND seq <= (SELECT seq FROM numbered) - %(cap)s
)
SELECT seq FROM numbered
"""

_TAKE_INBOXES = """
WITH taken AS (
    DELETE FROM agent_inbox WHERE recipient = ANY(%s)
    RETURNING position, recipient, sent_at, body
)
SELECT recipient, body FROM taken WHERE sent_at >= %s ORDER BY position
"""


@dataclass(frozen=True, slots=True)
class ChannelDraft:
    """A channel message waiting for its number: its stored form (whose ``seq`` is
    replaced by the number), and how many messages its channel keeps."""

    channel: str
    body: dict[str, Any]
    history_cap: int


def _number_params(draft: ChannelDraft) -> dict[str, Any]:
    body = json.dumps({key: value for key, value in draft.body.items() if key != "seq"})
    channel = draft.channel.replace("\x00", "\ufffd")
    return {"channel": channel, "body": body, "cap": draft.history_cap}


@dataclass(slots=True)
class _Waiting:
    draft: ChannelDraft
    numbered: asyncio.Future[int | None]


class MessageTables(PgWorker):
    """Numbers channel messages and takes waiting direct messages, on a connection and
    a thread of its own; see the module docstring.

    Nothing is opened until the first call.

    Args:
        url: the database (``postgresql://user@host:port/name``).
        timeout_s: how long a call may take (opening a connection included) before it
            fails with :class:`StoreError`; a call that gave up may still take effect.
    """

    def __init__(self, url: str, timeout_s: float) -> None:
        super().__init__(url, timeout_s, "pg-messages")
        self._waiting: list[_Waiting] = []
        self._numbering = False

    async def number_channel_message(self, draft: ChannelDraft) -> int | None:
        """Store ``draft`` as its channel's next message and trim the channel's history;
        returns the message's ``seq``, or None when the channel does not exist.

        Publishes that wait meanwhile share the next transaction (one commit for all).

        Raises:
            StoreError: the database could not be written (nothing was, unless the
                call gave up waiting).
        """
        waiting = _Waiting(draft, asyncio.get_running_loop().create_future())
        self._waiting.append(waiting)
        if not self._numbering:
            self._numbering = True
            asyncio.get_running_loop().create_task(self._number_waiting())
        return await waiting.numbered

    async def _number_waiting(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                drafts = [waiting.draft for waiting in batch]
                try:
                    numbers = await self._call("number_channel_messages", self._number, drafts)
                except StoreError as exc:
                    for waiting in batch:
                        if not waiting.numbered.done():
                            waiting.numbered.set_exception(exc)
                    continue
                for waiting, seq in zip(batch, numbers, strict=True):
                    if not waiting.numbered.done():
                        waiting.numbered.set_result(seq)
        finally:
            self._numbering = False

    def _number(self, drafts: list[ChannelDraft]) -> list[int | None]:
        connection = self._thread.connection()
        with self._deadlines.bound(connection, self._timeout_s), connection.transaction():
            with connection.pipeline():  # every statement sent before the first answer
                cursors = [
                    connection.execute(_NUMBER_MESSAGE, _number_params(draft)) for draft in drafts
                ]
            rows = [cursor.fetchone() for cursor in cursors]
        return [None if row is None else int(row[0]) for row in rows]

    async def take_inboxes(self, agent_ids: list[str], oldest_ms: int) -> list[tuple[str, str]]:
        """Remove every message waiting for ``agent_ids`` and return those sent at or
        after ``oldest_ms``, as ``(recipient, body)``, oldest first.

        Raises:
            StoreError: the database could not be reached (nothing was taken, unless the
                call gave up waiting).
        """
        return await self._call("take_inboxes", self._take, agent_ids, oldest_ms)

    def _take(self, agent_ids: list[str], oldest_ms: int) -> list[tuple[str, str]]:
        connection = self._thread.connection()
        with self._deadlines.bound(connection, self._timeout_s):
            rows = connection.execute(_TAKE_INBOXES, scrubbed((agent_ids, oldest_ms)))
            return [(str(recipient), str(body)) for recipient, body in rows.fetchall()]

    async def close(self) -> None:
        """Close the connection and stop the thread; later calls fail, a second close
        does nothing."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._shut_down)

    # --- on the thread ----------------------------------------------------------------
