"""The listening socket, seen from TCP accept: file descriptors are counted before any
TLS or WebSocket handshake, and accept failures are logged once per interval.

asyncio accepts by calling the listening socket's ``accept()``; the socket made here
asks an admission callback about each new TCP connection right there, closes the ones it
refuses before asyncio ever sees them, and hands out sockets that report their own
closing. Counting at this level is the only place a TLS connection is visible before its
TLS handshake ends.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import resource
import socket
from collections.abc import Callable
from typing import Any

from agentcom.hub.clock import Clock

__all__ = [
    "AcceptFailureLog",
    "Peer",
    "listening_socket",
    "peer_of",
    "raise_open_file_limit",
]

logger = logging.getLogger(__name__)

Peer = tuple[str, int]
"""A TCP connection's remote address and port: its key from accept to close."""

# How asyncio reports a failed accept (the start of its message: it has varied).
_ACCEPT_FAILURE = "socket.accept() out of system resource"


def peer_of(address: Any) -> Peer:
    """The :data:`Peer` of a socket address (``("unknown", 0)`` when it has none)."""
    return (str(address[0]), int(address[1])) if isinstance(address, tuple) else ("unknown", 0)


class _AcceptedSocket(socket.socket):
    """A connection's socket that reports, once, when it is closed (or collected)."""

    _on_close: Callable[[], None] | None = None

    def close(self) -> None:
        on_close, self._on_close = self._on_close, None
        try:
            super().close()
        finally:
            if on_close is not None:
                on_close()

    def __del__(self) -> None:
        # A socket dropped without close() (a failure while asyncio set up its transport)
        # must not hold its place in the counts for ever; the socket's own finalizer
        # then closes its descriptor.
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()
        super().__del__()  # type: ignore[misc]  # _socket.socket has one; typeshed omits it


class _ListeningSocket(socket.socket):
    """A listening socket whose ``accept()`` admits or refuses each connection at once."""

    admit: Callable[[Peer], bool]
    release: Callable[[Peer], None]

    def accept(self) -> tuple[socket.socket, Any]:
        """The next admitted connection; refused ones are closed without a reply.

        Raises BlockingIOError when none is waiting, OSError when accept itself fails.
        """
        while True:
            descriptor, address = self._accept()  # type: ignore[attr-defined]
            connection = _AcceptedSocket(self.family, self.type, self.proto, fileno=descriptor)
            peer = peer_of(address)
            if not self.admit(peer):
                connection.close()
                continue
            connection._on_close = functools.partial(self.release, peer)
            return connection, address


def listening_socket(
    host: str, port: int, admit: Callable[[Peer], bool], release: Callable[[Peer], None]
) -> socket.socket:
    """A socket bound to the address ``host`` resolves to (the first IPv4 one when it has
    several: ``localhost`` listens on 127.0.0.1), ready for ``serve(sock=)``.

    Args:
        host: name or address to listen on.
        port: TCP port; 0 picks a free one.
        admit: called with each new TCP connection's peer; False closes it at once.
        release: called with the peer of every admitted connection once it is closed.
    """
    resolved = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    resolved.sort(key=lambda info: info[0] != socket.AF_INET)  # stable: IPv4 first
    family, kind, proto, _, address = resolved[0]
    listener = _ListeningSocket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        listener.bind(address)
        listener.setblocking(False)
    except OSError:
        listener.close()
        raise
    listener.admit = admit
    listener.release = release
    return listener


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard one where allowed; the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return soft


class AcceptFailureLog:
    """An event-loop exception handler that logs failed accepts once per interval.

    asyncio reports every failed accept (out of file descriptors, mostly) with a
    traceback and retries a second later; under a flood that is a flood of log lines.
    Here the first failure of an interval is logged with its error, and the next line
    says how many followed. Everything else goes to the handler that was there before.

    Args:
        clock: time source.
        interval_s: at most one line per this many seconds.
    """

    def __init__(self, clock: Clock, interval_s: float) -> None:
        self._clock = clock
        self._interval_ms = int(interval_s * 1000)
        self._logged_at: int | None = None
        self._unlogged = 0
        self.failures = 0
        self._previous: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Become ``loop``'s exception handler (until :meth:`uninstall`)."""
        self._loop = loop
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self._handle)

    def uninstall(self) -> None:
        """Give the loop back its previous handler."""
        if self._loop is not None:
            self._loop.set_exception_handler(self._previous)
            self._loop = None

    def _handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not str(context.get("message")).startswith(_ACCEPT_FAILURE):
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self.failures += 1
        now = self._clock.now_ms()
        if self._logged_at is not None and now - self._logged_at < self._interval_ms:
            self._unlogged += 1
            return
        error = context.get("exception")
        reason = errno.errorcode.get(getattr(error, "errno", None) or 0, "error")
        logger.error(
            "cannot accept connections (%s: %s); %d more failed since the last report, "
            "retrying every second",
            reason, error, self._unlogged,
        )  # fmt: skip
        self._logged_at = now
        self._unlogged = 0
