"""Admission control at the handshake: connections per address, browser origins, and
slowing down addresses that keep presenting bad tokens."""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from agentcom.hub.clock import Clock

__all__ = ["Guard"]

_BROWSER_PATHS = frozenset({"/ws/dashboard", "/ws/operator"})


def _refusal(status: int, reason: str, message: str) -> Response:
    body = ('{"error": "%s"}' % message).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                       ("Connection", "close")])  # fmt: skip
    return Response(status, reason, headers, body)


def _address(connection: ServerConnection) -> str:
    remote = connection.remote_address
    return str(remote[0]) if remote else "unknown"


class Guard:
    """Per-address limits and origin checks.

    Args:
        clock: time source for the failure window.
        max_connections_per_address: open connections one address may hold; beyond it the
            handshake is refused with 429.
        allowed_origins: browser origins (``scheme://host[:port]``) allowed on the operator
            and dashboard sockets besides the hub's own; a handshake from any other origin
            is refused with 403. Non-browser clients send no Origin and are not affected.
        auth_failures_before_delay: bad tokens from one address within a minute before its
            replies are delayed.
        max_auth_delay_s: the longest such delay.
    """

    def __init__(
        self,
        clock: Clock,
        max_connections_per_address: int,
        allowed_origins: list[str],
        auth_failures_before_delay: int = 5,
        max_auth_delay_s: float = 5.0,
    ) -> None:
        self._clock = clock
        self._max_connections = max_connections_per_address
        self._allowed_origins = {origin.rstrip("/").lower() for origin in allowed_origins}
        self._failures_before_delay = auth_failures_before_delay
        self._max_auth_delay_s = max_auth_delay_s
        self._open: dict[str, int] = defaultdict(int)
        self._auth_failures: dict[str, deque[int]] = {}

    def admit(self, connection: ServerConnection, request: Request) -> Response | None:
        """None to let the handshake go on, or the refusal to send."""
        address = _address(connection)
        if self._open[address] >= self._max_connections:
            return _refusal(429, "Too Many Requests", "too_many_connections")
        path = urlsplit(request.path).path.rstrip("/")
        origin = request.headers.get("Origin")
        if path in _BROWSER_PATHS and origin is not None and not self._origin_allowed(
            origin, request.headers.get("Host")
        ):
            return _refusal(403, "Forbidden", "origin_not_allowed")
        return None

    def _origin_allowed(self, origin: str, host: str | None) -> bool:
        normalized = origin.rstrip("/").lower()
        if normalized in self._allowed_origins or "*" in self._allowed_origins:
            return True
        origin_host = urlsplit(normalized).netloc
        return host is not None and origin_host == host.lower()

    def opened(self, connection: ServerConnection) -> None:
        """Count an accepted connection."""
        self._open[_address(connection)] += 1

    def closed(self, connection: ServerConnection) -> None:
        """Forget a finished connection."""
        address = _address(connection)
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]

    async def slow_down_after_failure(self, connection: ServerConnection) -> None:
        """Record a bad token from this address; delay when it keeps happening."""
        address = _address(connection)
        now = self._clock.now_ms()
        failures = self._auth_failures.setdefault(address, deque(maxlen=64))
        failures.append(now)
        while failures and now - failures[0] > 60_000:
            failures.popleft()
        excess = len(failures) - self._failures_before_delay
        if excess > 0:
            await asyncio.sleep(min(self._max_auth_delay_s, 0.1 * 2 ** min(excess, 10)))
