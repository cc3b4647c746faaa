"""Frames onto a connection: encoded once, several frames to one socket write.

A frame sent with ``connection.send()`` is one write, one system call and one pass
through websockets' send path, and the hub often has several frames for one connection
at once (an agent's acknowledgement and its next ``task_assign``; a dashboard's batch of
events). Here they are framed by the connection's sans-I/O protocol together and
written with one ``transport.write``.

:func:`write_frames` never waits (the caller bounds what a connection may leave unread);
:func:`send_frames` waits while the peer's socket is full, like ``connection.send()``.
"""

from __future__ import annotations

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


def write_frames(connection: ServerConnection, frames: Sequence[bytes]) -> bool:
    """Write ``frames`` (encoded JSON, in order) as text frames in one socket write,
    without waiting. False when the connection is no longer open (nothing written)."""
    protocol = connection.protocol
    if protocol.state is not State.OPEN:
        return False
    for data in frames:
        protocol.send_text(data)
    _flush(connection)
    return True


async def send_frames(connection: ServerConnection, frames: Sequence[bytes]) -> None:
    """Write ``frames`` like :func:`write_frames`, then wait while the peer's socket is
    full; raises ``ConnectionClosed`` when the connection is closed or closing."""
    async with connection.send_context():
        for data in frames:
            connection.protocol.send_text(data)
        _flush(connection)


def _flush(connection: ServerConnection) -> None:
    # Only text frames were queued on an open connection: no end of stream is among the
    # chunks (websockets queues one only while closing), so they are bytes to write.
    chunks = connection.protocol.data_to_send()
    if chunks:
        connection.transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
