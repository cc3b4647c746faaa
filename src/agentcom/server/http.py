"""Read-only HTTP routes, answered from the websockets handshake hook ``process_request``."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from agentcom import __version__
from agentcom.errors import DatabaseInUse, HubError, StoreError
from agentcom.hub.auth import Role
from agentcom.protocol.common import Priority, TaskStatus
from agentcom.protocol.schemas import all_schemas
from agentcom.protocol.task import TASK_CURSOR_PATTERN, dumped_task
from agentcom.server.guard import single_header
from agentcom.server.inbound import peer
from agentcom.server.metrics import CONTENT_TYPE
from agentcom.server.nodeagents import listed_agents
from agentcom.store.base import TaskFilter, task_filter

if TYPE_CHECKING:
    from agentcom.server.host import SessionHost

__all__ = ["DASHBOARD_FILES", "WEBSOCKET_PATHS", "HttpRoutes", "dashboard_file"]

WEBSOCKET_PATHS = frozenset({"/ws", "/ws/dashboard", "/ws/operator"})

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 503: "Service Unavailable"}  # fmt: skip


def _response(status: int, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
        ]
    )
    return Response(status, _REASONS.get(status, "Error"), headers, body)


def _json(status: int, data: Any) -> Response:
    return _response(status, json.dumps(data).encode(), "application/json")


# The only files served under /dashboard/, with their types: nothing else in the package is.
DASHBOARD_FILES = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
    **{
        f"{module}.js": "text/javascript; charset=utf-8"
        for module in ("app", "connection", "state", "scheduler", "agents", "queue", "costs",
                       "output", "tasks", "detail", "chart", "alerts", "dom", "format",
                       "endpoints")
    },
}  # fmt: skip
_HSTS = "max-age=31536000"
_CURSOR = re.compile(TASK_CURSOR_PATTERN)
_NOT_PRINTABLE = re.compile(r"[^\x20-\x7e]")
_HOST = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")


def dashboard_file(name: str, host: str | None, tls: bool = False) -> Response:
    """One file of the dashboard page (404 unless allow-listed), with a strict CSP.

    The policy allows scripts, styles and images from the hub only, and WebSocket
    connections only back to the host the page was loaded from (over TLS, only ``wss:``).
    """
    content_type = DASHBOARD_FILES.get(name)
    if content_type is None:
        return _json(404, {"error": "not_found"})
    body = resources.files("agentcom.dashboard").joinpath(name).read_bytes()
    schemes = ("wss",) if tls else ("ws", "wss")
    sockets = (
        "".join(f" {scheme}://{host}" for scheme in schemes) if host and _HOST.match(host) else ""
    )
    policy = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        f"connect-src 'self'{sockets}; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    response = _response(200, body, content_type)
    response.headers["Content-Security-Policy"] = policy
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


class HttpRoutes:
    """``/health``, ``/metrics``, ``/dashboard`` and ``/api/*`` (bearer token)."""

    def __init__(self, server: SessionHost) -> None:
        self.server = server

    async def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """Let WebSocket upgrades through; answer every other request here.

        Over TLS every answer carries HSTS, so a browser never falls back to clear text.
        """
        response = await self._answer(connection, request)
        if response is not None and self.server.tls:
            response.headers["Strict-Transport-Security"] = _HSTS
        return response

    async def _answer(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        path = parts.path.rstrip("/") or "/"
        upgrade = any("upgrade" in value.lower() for value in request.headers.get_all("Connection"))
        if path in WEBSOCKET_PATHS and upgrade:
            return None
        if path in WEBSOCKET_PATHS:
            return _json(400, {"error": "websocket_required"})
        page = _PAGES.get(path)
        if page is not None:
            return page(self, request)
        if path.startswith("/dashboard/"):
            name = path.removeprefix("/dashboard/")
            return dashboard_file(name, single_header(request.headers, "Host"), self.server.tls)
        if path.startswith("/api/"):
            try:
                if not self._authorized(request):
                    await self.server.guard.slow_down_after_failure(connection)
                    return _json(401, {"error": "unauthorized"})
                response = await self.api(path, parse_qs(parts.query))
            except StoreError as exc:  # the database cannot be read now (PostgreSQL down)
                response = _json(503, {"error": "store_unavailable", "message": str(exc)})
            self.server.replies.admit(
                connection.transport, len(response.body), f"HTTP client {peer(connection)}"
            )  # when it cuts the client off, the response goes nowhere
            return response
        return _json(404, {"error": "not_found"})

    def standby_answer(self, request: Request, serving: DatabaseInUse) -> Response:
        """What a standby answers to every request, WebSocket upgrades included: 503, so
        that a load balancer sends it nothing; on ``/health``, who serves the database."""
        path = urlsplit(request.path).path.rstrip("/") or "/"
        if path != "/health":
            response = _response(503, b"hub on standby\n", "text/plain; charset=utf-8")
        else:
            response = _json(
                503,
                {
                    "status": "standby",
                    "version": __version__,
                    "database": serving.database,
                    "serving_hub": {
                        "pid": serving.pid, "host": serving.host, "address": serving.address,
                    },
                },
            )  # fmt: skip
        if self.server.tls:
            response.headers["Strict-Transport-Security"] = _HSTS
        return response

    def _health_page(self, request: Request) -> Response:
        return _json(200, self.health())

    def _metrics_page(self, request: Request) -> Response:
        return _response(200, self.server.metrics.render(), CONTENT_TYPE)

    def _dashboard_page(self, request: Request) -> Response:
        return dashboard_file("index.html", single_header(request.headers, "Host"), self.server.tls)

    def _authorized(self, request: Request) -> bool:
        header = single_header(request.headers, "Authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        identity = self.server.auth.role_of(token.strip())
        return identity is not None and identity[1] in (Role.admin, Role.viewer)

    def health(self) -> dict[str, Any]:
        """Liveness and headline figures (no authentication).

        ``status`` is ``degraded`` while the database cannot be written (``store`` says
        ``failing``, ``store_error`` what the database last said, e.g. that it is
        unreachable): the hub answers, but refuses new work. ``pubsub`` says where events
        fan out and, with Redis, whether the link to the other nodes is up and since when;
        a Redis outage leaves ``status`` alone (tasks keep flowing).
        """
        hub = self.server.hub
        now = self.server.clock.now_ms()
        failing = self.server.store_failing
        return {
            "status": "degraded" if failing else "ok",
            "store": "failing" if failing else "ok",
            "store_error": self.server.store_error,
            "version": __version__,
            # Listening beyond loopback without TLS (--insecure): tokens travel in clear.
            "insecure": self.server.insecure,
            "uptime_s": round((now - hub.started_at) / 1000, 3),
            "agents_connected": len(hub.presence.connected()),
            "queue_depth": hub.queue.queued_count(),
            "pubsub": self._pubsub_health(),
            **self._node_health(),
        }

    def _node_health(self) -> dict[str, Any]:
        """Nodes sharing a database: this node's part (absent for a lone hub)."""
        shared = self.server.shared
        if shared is None:
            return {}
        return {
            "node": {
                "node_id": self.server.settings.node_id,
                "leader": shared.leading,
                "heartbeat": "failing" if shared.heartbeat_error else "ok",
                "heartbeat_error": shared.heartbeat_error,
            }
        }

    def _pubsub_health(self) -> dict[str, Any]:
        link = self.server.pubsub.cluster_link
        if link is None:
            return {"kind": "memory"}
        return {
            "kind": link.kind,
            "cluster": link.cluster,
            "node_id": link.node_id,
            "state": "connected" if link.connected else "disconnected",
            "since": link.since_ms,
        }

    async def api(self, path: str, query: dict[str, list[str]]) -> Response:
        """The ``/api/*`` routes, after a commit so that they read what was announced."""
        await self.server.commit()
        route = _API.get(path)
        if route is not None:
            return await route(self, query)
        if path.startswith(_TASK_PREFIX):
            return self._task(path.removeprefix(_TASK_PREFIX))
        return _json(404, {"error": "not_found"})

    async def _tasks(self, query: dict[str, list[str]], status: str | None = None) -> Response:
        try:
            task_filter = _task_filter(query, self.server.clock.now_ms())
        except ValueError as exc:
            return _json(400, {"error": "bad_request", "message": str(exc)})
        if status is not None:
            task_filter = replace(task_filter, status=status)
        page = self.server.hub.views.list_tasks(task_filter)
        response = _json(200, page.tasks)
        if page.next_cursor is not None:
            response.headers["X-Next-Cursor"] = page.next_cursor
        return response

    async def _dead_letter(self, query: dict[str, list[str]]) -> Response:
        return await self._tasks(query, TaskStatus.dead_letter.value)

    async def _stats(self, query: dict[str, list[str]]) -> Response:
        agents = await listed_agents(self.server)  # a partial list is logged
        return _json(200, await self.server.hub.views.stats(agents.agents))

    async def _agents(self, query: dict[str, list[str]]) -> Response:
        agents = await listed_agents(self.server)
        response = _json(200, agents.agents)
        if agents.warning is not None:  # a header's value is printable ASCII
            response.headers["X-Warning"] = _NOT_PRINTABLE.sub("?", agents.warning)
        return response

    async def _endpoints(self, query: dict[str, list[str]]) -> Response:
        return _json(200, self.server.hub.views.endpoints_snapshot())

    async def _schemas(self, query: dict[str, list[str]]) -> Response:
        return _json(200, all_schemas())

    def _task(self, task_id: str) -> Response:
        hub = self.server.hub
        try:  # an abbreviated id is resolved, as on /ws/operator
            task = hub.find_task(hub.task_ops.resolve_task_id(task_id))
        except HubError as error:
            if error.code != "not_found":
                return _json(400, {"error": error.code, "message": error.message})
            return _json(404, {"error": "not_found"})
        return _json(200, dumped_task(task))


PageRoute = Callable[[HttpRoutes, Request], Response]
"""A route answered without authentication."""

ApiRoute = Callable[[HttpRoutes, dict[str, list[str]]], Awaitable[Response]]
"""An ``/api/*`` route (bearer token), given the query string's values."""

_PAGES: dict[str, PageRoute] = {
    "/health": HttpRoutes._health_page,
    "/metrics": HttpRoutes._metrics_page,
    "/": HttpRoutes._dashboard_page,
    "/dashboard": HttpRoutes._dashboard_page,
}
_API: dict[str, ApiRoute] = {
    "/api/tasks": HttpRoutes._tasks,
    "/api/tasks/dead-letter": HttpRoutes._dead_letter,
    "/api/tasks/stats": HttpRoutes._stats,
    "/api/agents": HttpRoutes._agents,
    "/api/endpoints": HttpRoutes._endpoints,
    "/api/schemas": HttpRoutes._schemas,
}
_TASK_PREFIX = "/api/tasks/"  # then a task id, which may be abbreviated


def _task_filter(query: dict[str, list[str]], now_ms: int) -> TaskFilter:
    """The store's filter for the query string of ``/api/tasks``; a bad value raises
    ``ValueError``, whose message the 400 reply carries."""

    def one(name: str) -> str | None:
        values = query.get(name)
        return values[-1] if values else None

    status, priority_name = one("status"), one("priority")
    limit, cursor = one("limit"), one("cursor")
    statuses = None
    if status is not None:  # one status or several, comma-separated
        statuses = [TaskStatus(name) for name in status.split(",")]
    priority = Priority(priority_name) if priority_name is not None else None
    count = int(limit) if limit is not None else 100
    if not 1 <= count <= 1000:
        raise ValueError("limit must be between 1 and 1000")
    since_s = one("since_s")
    seconds = None
    if since_s is not None:
        seconds = float(since_s)
        if not 0 < seconds < math.inf:
            raise ValueError("since_s must be a positive number of seconds")
    if cursor is not None and not _CURSOR.fullmatch(cursor):
        raise ValueError("cursor must be a next_cursor the hub gave")
    return task_filter(now_ms, status=statuses, priority=priority, agent=one("agent"),
                       capability=one("capability"), since_s=seconds, limit=count,
                       cursor=cursor)  # fmt: skip
