"""Admission control at the handshake: connections per address, browser origins, and
slowing down addresses that keep presenting bad tokens."""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict, deque
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from agentcom.hub.clock import Clock
from agentcom.server.inbound import peer_host

__all__ = ["Guard"]

_BROWSER_PATHS = frozenset({"/ws/dashboard", "/ws/operator"})
_FAILURE_WINDOW_MS = 60_000
# A connection accepted beyond its address's limit gets this long to send its request
# (and be told 429); one still silent then is dropped, so it cannot hold a socket open
# for the whole handshake timeout.
_OVER_LIMIT_GRACE_S = 1.0


def _refusal(status: int, reason: str, message: str) -> Response:
    body = json.dumps({"error": message}).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                       ("Connection", "close")])  # fmt: skip
    return Response(status, reason, headers, body)


def _single_header(headers: Headers, name: str) -> str | None:
    """The value of a header sent once; None when it is absent or repeated."""
    values = headers.get_all(name)
    return values[0] if len(values) == 1 else None


def _address(connection: ServerConnection) -> str:
    return peer_host(connection) or "unknown"


def _drop_if_silent(connection: ServerConnection) -> None:
    if connection.request is None:
        connection.transport.abort()


class Guard:
    """Per-address limits and origin checks.

    Args:
        clock: time source for the failure window.
        max_connections_per_address: connections one address may hold, counted from the
            moment the TCP connection is accepted (handshakes in progress included) until
            it closes; one accepted beyond it is answered 429 as soon as its request
            arrives, and dropped if that request is not there within a second.
        allowed_origins: browser origins (``scheme://host[:port]``) allowed on the operator
            and dashboard sockets besides the hub's own; a handshake from any other origin
            is refused with 403. Non-browser clients send no Origin and are not affected.
        tls: whether the hub serves https: its own origin is then ``https://`` + the Host
            header, otherwise ``http://`` + the Host header (the scheme counts: a page
            served in clear on the same host and port is another origin).
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
        auth_failures_before_delay: int = 5,
        max_auth_delay_s: float = 5.0,
        max_tracked_addresses: int = 10_000,
        tls: bool = False,
    ) -> None:
        self._clock = clock
        self._own_scheme = "https" if tls else "http"
        self._max_connections = max_connections_per_address
        self._allowed_origins = {origin.rstrip("/").lower() for origin in allowed_origins}
        self._failures_before_delay = auth_failures_before_delay
        self._max_auth_delay_s = max_auth_delay_s
        self._max_tracked_addresses = max_tracked_addresses
        self._open: dict[str, int] = {}
        self._over_limit: set[ServerConnection] = set()
        self._auth_failures: OrderedDict[str, deque[int]] = OrderedDict()

    def admit(self, connection: ServerConnection, request: Request) -> Response | None:
        """None to let the handshake go on, or the refusal to send."""
        if connection in self._over_limit:
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
        host = _single_header(headers, "Host")
        origin = urlsplit(normalized)
        return (
            host is not None and origin.scheme == self._own_scheme and origin.netloc == host.lower()
        )

    def connection_class(self) -> type[ServerConnection]:
        """The connection type to give ``serve()``: it reports every TCP connection's
        acceptance and loss here, so the limit also counts unfinished handshakes."""
        guard = self

        class GuardedConnection(ServerConnection):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                guard._accepted(self)

            def connection_lost(self, exc: Exception | None) -> None:
                super().connection_lost(exc)
                guard._lost(self)

        return GuardedConnection

    def _accepted(self, connection: ServerConnection) -> None:
        address = _address(connection)
        held = self._open.get(address, 0)
        self._open[address] = held + 1
        if held >= self._max_connections:
            self._over_limit.add(connection)
            connection.loop.call_later(_OVER_LIMIT_GRACE_S, _drop_if_silent, connection)

    def _lost(self, connection: ServerConnection) -> None:
        self._over_limit.discard(connection)
        address = _address(connection)
        remaining = self._open.get(address, 0) - 1
        if remaining > 0:
            self._open[address] = remaining
        else:
            self._open.pop(address, None)

    def open_connections(self, address: str) -> int:
        """TCP connections from ``address`` the hub holds now, handshakes included."""
        return self._open.get(address, 0)

    async def slow_down_after_failure(self, connection: ServerConnection) -> None:
        """Record a bad token from this address; delay when it keeps happening."""
        address = _address(connection)
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
