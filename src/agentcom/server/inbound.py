"""What every entrance accepts before decoding: text messages only.

The protocol's frames are UTF-8 JSON in WebSocket text messages. ``websockets`` already
closes a text message that is not valid UTF-8 (1007) or larger than ``max_frame_bytes``
(1009); a binary message is refused here, with the close code WebSocket defines for data
of a type the endpoint does not accept.
"""

from __future__ import annotations

from collections import deque

from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode, Frame

__all__ = ["message_waiting", "peer", "peer_host", "received_frames", "text_of"]


async def text_of(connection: ServerConnection, message: str | bytes) -> str | None:
    """The text of a message; None for a binary one, after closing ``connection`` with 1003
    (the caller stops reading)."""
    if isinstance(message, str):
        return message
    await connection.close(CloseCode.UNSUPPORTED_DATA, "binary messages are not accepted")
    return None


def peer(connection: ServerConnection) -> str:
    """The remote ``host:port`` of a connection, for logs and events."""
    address = connection.remote_address
    return f"{address[0]}:{address[1]}" if address else "unknown"


def peer_host(connection: ServerConnection) -> str | None:
    """The remote host (address) of a connection, None when it is not known."""
    address = connection.remote_address
    return str(address[0]) if address else None


def received_frames(connection: ServerConnection) -> deque[Frame] | None:
    """The frames received on ``connection`` and not read yet, oldest first: websockets'
    receive buffer (``recv_messages``, the asyncio implementation's frame queue, which
    keeps the same deque for the connection's life). None where it is not available: the
    caller then answers each frame on its own, which only costs batching."""
    frames = getattr(getattr(connection, "recv_messages", None), "frames", None)
    queue = getattr(frames, "queue", None)
    return queue if isinstance(queue, deque) else None


def message_waiting(received: deque[Frame] | None) -> bool:
    """Whether a whole message waits in ``received`` (:func:`received_frames`)."""
    return bool(received) and received[0].fin  # type: ignore[index]
