"""Admission control from TCP accept on: connections per address and in all, connections
not yet authenticated, browser origins, and slowing down addresses that keep presenting
bad tokens."""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict, deque
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from agentcom.hub.clock import Clock
from agentcom.server.sockets import Peer, peer_of

__all__ = ["Guard", "single_header"]

_BROWSER_PATHS = frozenset({"/ws/dashboard", "/ws/operator"})
_FAILURE_WINDOW_MS = 60_000
# A connection accepted beyond its address's limit gets this long to send its request
# (and be told 429); one still silent then is dropped, so it cannot hold a socket open
# for the whole handshake timeout. At most this many wait so per address; more are
# closed at accept.
_OVER_LIMIT_GRACE_S = 1.0
_OVER_LIMIT_WAITING = 8
_HEADERS_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
)
_REQUEST_LINE_TOO_LONG = (
    b"HTTP/1.1 414 URI Too Long\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
)


def _refusal(status: int, reason: str, message: str) -> Response:
    body = json.dumps({"error": message}).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                       ("Connection", "close")])  # fmt: skip
    return Response(status, reason, headers, body)


def single_header(headers: Headers, name: str) -> str | None:
    """The value of a header sent once; None when it is absent or repeated."""
    values = headers.get_all(name)
    return values[0] if len(values) == 1 else None


def _peer_of(connection: ServerConnection) -> Peer:
    return peer_of(connection.remote_address)


def _drop_if_silent(connection: ServerConnection) -> None:
    if connection.request is None:
        connection.transport.abort()


def _use_frame_limit(connection: ServerConnection, limit: int) -> None:
    """Set the largest frame ``connection`` may receive from its next frame on.

    websockets reads the limit as each frame starts, so frames that arrived together
    with the one that authenticated are still held to the old limit.
    """
    protocol: Any = connection.protocol
    if hasattr(protocol, "max_message_size"):  # separate message and fragment limits
        protocol.max_message_size = limit
    else:
        protocol.max_size = limit


class Guard:
    """Connection limits and origin checks.

    Every limit counts TCP connections from the moment they are accepted (TLS and
    WebSocket handshakes in progress included) until they close; the listening socket
    (``server/sockets.py``) reports both moments.

    Args:
        clock: time source for the failure window.
        max_connections_per_address: connections one address may hold; one accepted
            beyond it is answered 429 as soon as its request arrives, and dropped if that
            request is not there within a second (at most eight wait so per address: more
            are closed at accept).
        allowed_origins: browser origins (``scheme://host[:port]``) allowed on the operator
            and dashboard sockets besides the hub's own; a handshake from any other origin
            is refused with 403. Non-browser clients send no Origin and are not affected.
        tls: whether the hub serves https: its own origin is then ``https://`` + the Host
            header, otherwise ``http://`` + the Host header (the scheme counts: a page
            served in clear on the same host and port is another origin).
        max_connections: connections the hub holds at once; more are closed at accept.
        max_unauthenticated_connections: connections that have not yet authenticated
            (:meth:`authenticated`), HTTP requests included; more are closed at accept.
        max_frame_bytes: the frame limit a connection gets once it has authenticated
            (until then it has the smaller one given to ``serve()``).
        max_handshake_bytes: what a connection may send before its request is whole
            (request line and headers); past it the hub answers 431 (414 while still in the
            request line) and closes.
        auth_failures_before_delay: bad tokens from one address within a minute before its
            replies are delayed.
        max_auth_delay_s: the longest such delay.
        max_tracked_addresses: addresses whose recent bad tokens are remembered; beyond it
            the one that failed least recently is forgotten, so a peer rotating addresses
            cannot grow the table without end. An address is also forgotten once its last
            failure is a minute old.
    """

    def __init__(
        self,
        clock: Clock,
        max_connections_per_address: int,
        allowed_origins: list[str],
        max_connections: int = 4096,
        max_unauthenticated_connections: int = 512,
        max_frame_bytes: int = 1_048_576,
        max_handshake_bytes: int = 32_768,
        auth_failures_before_delay: int = 5,
        max_auth_delay_s: float = 5.0,
        max_tracked_addresses: int = 10_000,
        tls: bool = False,
    ) -> None:
        self._clock = clock
        self._own_scheme = "https" if tls else "http"
        self._max_per_address = max_connections_per_address
        self.max_connections = max_connections
        self._max_unauthenticated = max_unauthenticated_connections
        self._max_frame_bytes = max_frame_bytes
        self.max_handshake_bytes = max_handshake_bytes
        self._allowed_origins = {origin.rstrip("/").lower() for origin in allowed_origins}
        self._failures_before_delay = auth_failures_before_delay
        self._max_auth_delay_s = max_auth_delay_s
        self._max_tracked_addresses = max_tracked_addresses
        self._open: dict[str, int] = {}
        self._over_limit: dict[str, set[Peer]] = {}
        self._unauthenticated: set[Peer] = set()
        self._total = 0
        self.refused_at_accept = 0
        self._auth_failures: OrderedDict[str, deque[int]] = OrderedDict()

    # --- counting, from TCP accept to close ----------------------------------------

    def accept(self, peer: Peer) -> bool:
        """Count a new TCP connection; False when it must be closed at once."""
        address = peer[0]
        held = self._open.get(address, 0)
        over = held >= self._max_per_address
        if (
            self._total >= self.max_connections
            or len(self._unauthenticated) >= self._max_unauthenticated
            or (over and len(self._over_limit.get(address, ())) >= _OVER_LIMIT_WAITING)
        ):
            self.refused_at_accept += 1
            return False
        self._total += 1
        self._open[address] = held + 1
        self._unauthenticated.add(peer)
        if over:
            self._over_limit.setdefault(address, set()).add(peer)
        return True

    def release(self, peer: Peer) -> None:
        """Forget a TCP connection that was closed."""
        address = peer[0]
        self._total -= 1
        self._unauthenticated.discard(peer)
        waiting = self._over_limit.get(address)
        if waiting is not None:
            waiting.discard(peer)
            if not waiting:
                del self._over_limit[address]
        remaining = self._open.get(address, 0) - 1
        if remaining > 0:
            self._open[address] = remaining
        else:
            self._open.pop(address, None)

    def authenticated(self, connection: ServerConnection) -> None:
        """The connection identified, subscribed or authenticated: it no longer counts as
        unauthenticated, and it may now send frames up to the normal limit."""
        self._unauthenticated.discard(_peer_of(connection))
        _use_frame_limit(connection, self._max_frame_bytes)

    def open_connections(self, address: str | None = None) -> int:
        """TCP connections from ``address`` (None: from anywhere) the hub holds now,
        handshakes included."""
        return self._total if address is None else self._open.get(address, 0)

    def unauthenticated_connections(self) -> int:
        """TCP connections the hub holds that have not authenticated (yet)."""
        return len(self._unauthenticated)

    def admit(self, connection: ServerConnection, request: Request) -> Response | None:
        """None to let the handshake go on, or the refusal to send."""
        # The request is whole: stop counting what the connection sends. An instance
        # attribute, so that every later chunk goes straight to websockets.
        connection.data_received = super(type(connection), connection).data_received  # type: ignore[method-assign]
        if self._is_over_limit(connection):
            return _refusal(429, "Too Many Requests", "too_many_connections")
        path = urlsplit(request.path).path.rstrip("/")
        if path in _BROWSER_PATHS and not self._origin_allowed(request.headers):
            return _refusal(403, "Forbidden", "origin_not_allowed")
        return None

    def _origin_allowed(self, headers: Headers) -> bool:
        origins = headers.get_all("Origin")
        if not origins:
            return True  # not a browser
        if len(origins) > 1:
            return False  # no browser sends two: nothing to trust
        normalized = origins[0].rstrip("/").lower()
        if normalized in self._allowed_origins or "*" in self._allowed_origins:
            return True
        host = single_header(headers, "Host")
        origin = urlsplit(normalized)
        return (
            host is not None and origin.scheme == self._own_scheme and origin.netloc == host.lower()
        )

    def _is_over_limit(self, connection: ServerConnection) -> bool:
        peer = _peer_of(connection)
        return peer in self._over_limit.get(peer[0], ())

    def connection_class(self) -> type[ServerConnection]:
        """The connection type to give ``serve()``: one accepted beyond its address's
        limit is dropped if its request is not there within a second, and one whose
        request grows past ``max_handshake_bytes`` is answered 431 and closed."""
        guard = self

        class GuardedConnection(ServerConnection):
            handshake_bytes = 0
            request_line_bytes: int | None = None  # where the first line ended, once seen

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                if guard._is_over_limit(self):
                    self.loop.call_later(_OVER_LIMIT_GRACE_S, _drop_if_silent, self)

            def data_received(self, data: bytes) -> None:
                # Until the request is whole (admit() then removes this override).
                if self.request_line_bytes is None and b"\n" in data:
                    self.request_line_bytes = self.handshake_bytes + data.index(b"\n")
                self.handshake_bytes += len(data)
                if self.handshake_bytes <= guard.max_handshake_bytes:
                    super().data_received(data)
                elif not self.transport.is_closing():
                    line = self.request_line_bytes
                    long_line = line is None or line > guard.max_handshake_bytes
                    self.transport.write(
                        _REQUEST_LINE_TOO_LONG if long_line else _HEADERS_TOO_LARGE
                    )
                    self.transport.close()

        return GuardedConnection

    async def slow_down_after_failure(self, connection: ServerConnection) -> None:
        """Record a bad token from this address; delay when it keeps happening."""
        address = _peer_of(connection)[0]
        now = self._clock.now_ms()
        failures = self._auth_failures.pop(address, None) or deque(maxlen=64)
        failures.append(now)
        while failures and now - failures[0] > _FAILURE_WINDOW_MS:
            failures.popleft()
        self._auth_failures[address] = failures  # now the most recently failing address
        self._forget_old_failures(now)
        excess = len(failures) - self._failures_before_delay
        if excess > 0:
            await asyncio.sleep(min(self._max_auth_delay_s, 0.1 * 2 ** min(excess, 10)))

    def _forget_old_failures(self, now: int) -> None:
        """Drop addresses with no failure in the window, and the oldest beyond the cap."""
        while self._auth_failures:
            address, failures = next(iter(self._auth_failures.items()))
            expired = now - failures[-1] > _FAILURE_WINDOW_MS
            if not expired and len(self._auth_failures) <= self._max_tracked_addresses:
                return
            del self._auth_failures[address]

    def tracked_addresses(self) -> int:
        """How many addresses have bad tokens on record (bounded)."""
        return len(self._auth_failures)
