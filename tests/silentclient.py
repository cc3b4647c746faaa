"""Clients that ask and never read: raw TCP sockets with a tiny receive buffer.

Not a test module; test modules import it. A :class:`SilentClient` speaks just enough
HTTP and WebSocket to send requests and frames, reads only what a test asks it to (the
first bytes of a reply, to know the hub wrote it), and otherwise leaves everything the
hub sends unread, so that it piles up on the hub's side of the connection.
"""

from __future__ import annotations

import base64
import os
import socket
from collections.abc import Sequence

from websockets.frames import Frame, Opcode

__all__ = ["SilentClient", "frame_header"]

READ_TIMEOUT_S = 30.0
# Small enough that the kernel holds little on the client's side: what the client does
# not read stays in the hub.
RECEIVE_BUFFER_BYTES = 4096


def frame_header(length: int) -> bytes:
    """The masked header of a text frame announcing ``length`` payload bytes."""
    return bytes([0x81, 0x80 | 127]) + length.to_bytes(8, "big") + os.urandom(4)


class SilentClient:
    """One TCP connection to the hub from ``source`` (a loopback address).

    Args:
        port: the hub's port.
        source: the local address to connect from (127.0.0.2 ... are loopback too).
    """

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        self.sock.settimeout(READ_TIMEOUT_S)
        self.sock.bind((source, 0))
        self.sock.connect(("127.0.0.1", port))

    def request(self, path: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        """Send an HTTP GET for ``path``."""
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}"]
        lines += [f"{name}: {value}" for name, value in headers]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def upgrade(self, path: str) -> None:
        """Open a WebSocket on ``path``; raises ConnectionError unless the hub says 101."""
        key = base64.b64encode(os.urandom(16)).decode()
        headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                   ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")]  # fmt: skip
        self.request(path, headers)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)  # byte by byte: nothing after the head is read
            if not chunk:
                raise ConnectionError(f"closed during the handshake: {head!r}")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"handshake refused: {head!r}")

    def send_text(self, text: str) -> None:
        """Send one text message."""
        self.sock.sendall(Frame(Opcode.TEXT, text.encode()).serialize(mask=True))

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are."""
        self.sock.sendall(data)

    def read_frame(self) -> tuple[int, bytes]:
        """The next whole frame the hub sent: its opcode and payload."""
        first, second = self.read_exactly(2)
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(self.read_exactly(2), "big")
        elif length == 127:
            length = int.from_bytes(self.read_exactly(8), "big")
        return first & 0x0F, self.read_exactly(length)

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes the hub sent (b"" once it closed); raises TimeoutError."""
        return self.sock.recv(size)

    def read_exactly(self, size: int) -> bytes:
        """Exactly ``size`` bytes; raises ConnectionError if the hub closes first."""
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError(f"closed after {len(data)} bytes")
            data += chunk
        return data

    def close(self) -> None:
        """Close the connection (whatever the hub still had to send is discarded)."""
        self.sock.close()
