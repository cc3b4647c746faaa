"""Frames onto a connection: encoded once, and one socket write per connection per turn
of the event loop.

A frame sent with ``connection.send()`` is one write, one system call and one pass
through websockets' send path, and the hub often has several frames for one connection
in one turn of the loop (an agent's acknowledgement and its next ``task_assign``; the
``agent_joined`` of every agent that identified in that turn; a dashboard's batch of
events). :func:`write_frames` frames them at once with the connection's sans-I/O
protocol, which keeps the bytes in order with everything else sent on the connection
(websockets writes what the protocol holds before a close frame or a pong), and writes
what each connection has to its socket once, at the end of the turn.

:func:`write_frames` never waits (the caller bounds what a connection may leave unread);
:func:`send_frames` waits while the peer's socket is full, like ``connection.send()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from agentcom.protocol.common import Outbound

__all__ = ["encode", "events_frame", "send_frames", "write_frames"]

_EVENTS_OPEN = b'{"type":"events","events":['


def encode(frame: Outbound) -> bytes:
    """A frame as the UTF-8 JSON the hub sends (serialized once, no ``str`` between)."""
    return frame.__pydantic_serializer__.to_json(frame, by_alias=True)


def events_frame(events: Sequence[bytes]) -> bytes:
    """An ``events`` frame carrying already-encoded events, each exactly as it would be
    sent alone (joined, not decoded and encoded again)."""
    return b"".join((_EVENTS_OPEN, b",".join(events), b"]}"))


def write_frames(connection: ServerConnection, frames: Sequence[bytes], now: bool = False) -> bool:
    """Queue ``frames`` (encoded JSON, in order) as text frames on ``connection``, written
    to its socket at the end of this turn of the loop (``now``: at once), without
    waiting. False when the connection is no longer open (nothing written)."""
    protocol = connection.protocol
    if protocol.state is not State.OPEN:
        return False
    for data in frames:
        protocol.send_text(data)
    if now:
        _WRITES.forget(connection)
        _flush(connection)
    else:
        _WRITES.later(connection)
    return True


async def send_frames(connection: ServerConnection, frames: Sequence[bytes]) -> None:
    """Write ``frames`` at once (after what waits for the end of the turn), then wait while
    the peer's socket is full; raises ``ConnectionClosed`` when the connection is closed
    or closing."""
    async with connection.send_context():
        for data in frames:
            connection.protocol.send_text(data)
        _WRITES.forget(connection)
        _flush(connection)


class _TurnWrites:
    """The connections with frames framed but not yet written, flushed together at the end
    of the turn of the loop in which the first of them was queued."""

    def __init__(self) -> None:
        self._due: dict[ServerConnection, None] = {}  # an ordered set
        self._loop: asyncio.AbstractEventLoop | None = None

    def later(self, connection: ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests run several): start afresh
            self._due, self._loop = {}, loop
        if not self._due:
            loop.call_soon(self.flush)
        self._due[connection] = None

    def forget(self, connection: ServerConnection) -> None:
        self._due.pop(connection, None)

    def flush(self) -> None:
        due, self._due = self._due, {}
        for connection in due:
            _flush(connection)


_WRITES = _TurnWrites()


def _flush(connection: ServerConnection) -> None:
    if connection.transport.is_closing():
        return  # lost with the connection, as written bytes would be
    if connection.protocol.state is not State.OPEN:
        connection.send_data()  # closing: websockets writes its end of stream after them
        return
    # Only text frames were queued on an open connection: no end of stream is among the
    # chunks (websockets queues one only while closing), so they are bytes to write.
    chunks = connection.protocol.data_to_send()
    if chunks:
        connection.transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
