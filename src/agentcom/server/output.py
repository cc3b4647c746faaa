"""Bytes of replies written but not yet read, per client and across the hub.

A reply to an operator request, a dashboard snapshot or an HTTP response is written to
the socket before the hub knows whether the client reads it; what the client does not
read stays in the connection's write buffer, in the hub's memory. websockets' own write
limit only makes the next ``send()`` wait, which bounds nothing when many requests are
answered concurrently or many clients stall at once. :class:`ReplyBudget` is asked
before each such reply is written: a client already holding more than its share unread
is cut off, and when the whole hub holds more than its share, the clients holding the
most are cut off until it fits.

Agent pushes have their own limit (``max_push_buffer_bytes``), checked in the settle
path; nothing here runs for an agent's frames.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from websockets.asyncio.server import ServerConnection

from agentcom.protocol.common import Outbound
from agentcom.server.writes import encode, write_frames

__all__ = ["ReplyBudget", "ReplyQueue"]

logger = logging.getLogger(__name__)


class ReplyBudget:
    """Cuts off clients that do not read their replies.

    Args:
        per_client_bytes: unread bytes one connection may hold before its next reply;
            past it the connection is aborted instead of written to.
        total_bytes: unread reply bytes across the hub, counting the reply about to be
            written; past it the connections holding the most are aborted (the one
            asking included, when it holds the most).
    """

    def __init__(self, per_client_bytes: int, total_bytes: int) -> None:
        self.per_client_bytes = per_client_bytes
        self.total_bytes = total_bytes
        self._backlogged: set[asyncio.WriteTransport] = set()
        self.cut_off = 0

    def admit(self, transport: asyncio.WriteTransport, size: int, who: str) -> bool:
        """Whether a reply of ``size`` bytes may be written to ``transport`` now.

        False when the connection is closing or was just cut off (the reply is dropped).
        A reply larger than the whole budget still goes to a client when nobody else
        holds anything unread.
        """
        if transport.is_closing():
            return False
        unsent = transport.get_write_buffer_size()
        if unsent > self.per_client_bytes:
            self._cut_off(transport, unsent, who)
            return False
        self._backlogged.add(transport)
        excess = self.in_flight() + size - self.total_bytes
        while excess > 0 and self._backlogged:
            largest = max(self._backlogged, key=lambda each: each.get_write_buffer_size())
            held = largest.get_write_buffer_size()
            self._cut_off(largest, held, "the client with the most unread replies")
            excess -= held
            if largest is transport:
                return False
        return True

    def in_flight(self) -> int:
        """Bytes of replies written and not yet read, across the hub (clients that have
        read everything are forgotten here)."""
        total = 0
        for transport in list(self._backlogged):
            unsent = 0 if transport.is_closing() else transport.get_write_buffer_size()
            if unsent:
                total += unsent
            else:
                self._backlogged.discard(transport)
        return total

    def _cut_off(self, transport: asyncio.WriteTransport, unsent: int, who: str) -> None:
        logger.warning(
            "%s is not reading (%d bytes of replies unread); cutting it off", who, unsent
        )
        self._backlogged.discard(transport)
        self.cut_off += 1
        transport.abort()


class ReplyQueue:
    """The replies to one client's requests, admitted by the budget as each is made and
    written together at the end of the event loop's turn: the answers to many requests
    that one group commit made durable share one socket write.

    Once ``batch_bytes`` wait, they are written at once, so that large replies are never
    held here and the budget sees each in the write buffer before admitting the next.

    Args:
        connection: the client.
        budget: the hub's reply budget.
        who: names the client in the log when it is cut off.
        on_sent: told the type of each reply admitted (for metrics).
    """

    def __init__(
        self,
        connection: ServerConnection,
        budget: ReplyBudget,
        who: str,
        on_sent: Callable[[type[Outbound]], None],
        batch_bytes: int = 64 * 1024,
    ) -> None:
        self._connection = connection
        self._budget = budget
        self.who = who
        self._on_sent = on_sent
        self._batch_bytes = batch_bytes
        self._batch: list[bytes] = []
        self._batched = 0

    def add(self, frame: Outbound) -> None:
        """Queue a reply (dropped, and the client cut off, when over budget)."""
        data = encode(frame)
        if self._batch and self._batched + len(data) > self._batch_bytes:
            self.flush()
        if not self._budget.admit(self._connection.transport, self._batched + len(data), self.who):
            return
        if not self._batch:
            asyncio.get_running_loop().call_soon(self.flush)
        self._batch.append(data)
        self._batched += len(data)
        self._on_sent(type(frame))
        if self._batched >= self._batch_bytes:
            self.flush()

    def flush(self) -> None:
        """Write what waits, in one write."""
        if self._batch:
            batch, self._batch, self._batched = self._batch, [], 0
            write_frames(self._connection, batch, now=True)
