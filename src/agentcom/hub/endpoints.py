"""Registry of Ollama endpoints, reported by sidecars or added by operators.

Health is learned from periodic checks (see :mod:`agentcom.server.health`): an
endpoint becomes unhealthy after ``unhealthy_after`` consecutive failed checks and
healthy again on the first success. Only healthy endpoints with at least one model
are offered to the router.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from agentcom.errors import HubError

__all__ = ["Endpoint", "EndpointRegistry", "is_loopback", "normalize_url"]

_RECENT_REPOS = 20


def normalize_url(url: str) -> str:
    """``http://host:port`` for any of ``host``, ``host:port`` or a full URL; raises ValueError."""
    candidate = url.strip()
    parts = urlsplit(candidate if "//" in candidate else f"http://{candidate}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    if not all(ch.isalnum() or ch in "-._~%:" for ch in parts.hostname):
        raise ValueError(f"not a valid host name: {parts.hostname!r}")  # e.g. spaces
    port = parts.port  # raises ValueError for a bad port
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port or 11434}"


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (a name or an address) names this machine's loopback interface."""
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(slots=True)
class Endpoint:
    """One Ollama endpoint; ``healthy`` is None until it has been checked."""

    endpoint_id: str
    url: str
    source: str  # "agent" (reported by a sidecar) or "operator"
    agent_id: str | None = None
    healthy: bool | None = None
    models: list[str] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)
    failures: int = 0
    last_checked: int | None = None
    last_error: str | None = None
    recent_repos: deque[str] = field(default_factory=lambda: deque(maxlen=_RECENT_REPOS))

    @property
    def host(self) -> str:
        """The endpoint's host, lower case, as its URL names it."""
        return urlsplit(self.url).hostname or "localhost"

    @property
    def host_port(self) -> str:
        """``host:port`` as sidecars expect in ``selected_endpoint``."""
        parts = urlsplit(self.url)
        host = parts.hostname or "localhost"
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{parts.port or 11434}"

    @property
    def viable(self) -> bool:
        """Healthy and serving at least one model."""
        return self.healthy is True and bool(self.models)

    def snapshot(self) -> dict[str, Any]:
        """The API view."""
        return {
            "endpoint_id": self.endpoint_id,
            "url": self.url,
            "host_port": self.host_port,
            "source": self.source,
            "agent_id": self.agent_id,
            "healthy": self.healthy,
            "models": list(self.models),
            "loaded": list(self.loaded),
            "failures": self.failures,
            "last_checked": self.last_checked,
            "last_error": self.last_error,
        }


class EndpointRegistry:
    """Known endpoints by id.

    Args:
        unhealthy_after: consecutive failed checks that mark an endpoint unhealthy.
    """

    def __init__(self, unhealthy_after: int = 3) -> None:
        self.endpoints: dict[str, Endpoint] = {}
        self._unhealthy_after = unhealthy_after

    def get(self, endpoint_id: str) -> Endpoint | None:
        """One endpoint, or None."""
        return self.endpoints.get(endpoint_id)

    def register_for_agent(
        self, agent_id: str, url: str, agent_host: str | None = None
    ) -> tuple[Endpoint, bool]:
        """Register ``<agent_id>-local``; returns it and whether it is new or changed.

        A loopback URL reported by an agent on another host names that host, as seen from
        the hub (``agent_host``): the hub checks it, and other agents may be routed to it.
        A known URL keeps its health and model list (a sidecar re-identifying).
        """
        normalized = normalize_url(url)
        parts = urlsplit(normalized)
        if agent_host is not None and is_loopback(parts.hostname) and not is_loopback(agent_host):
            host = f"[{agent_host}]" if ":" in agent_host else agent_host
            normalized = f"{parts.scheme}://{host}:{parts.port}"
        endpoint_id = f"{agent_id}-local"
        known = self.endpoints.get(endpoint_id)
        if known is not None and known.url == normalized:
            return known, False
        endpoint = Endpoint(
            endpoint_id=endpoint_id, url=normalized, source="agent", agent_id=agent_id
        )
        self.endpoints[endpoint_id] = endpoint
        return endpoint, True

    def add(self, url: str, name: str | None = None) -> tuple[Endpoint, bool]:
        """An operator's endpoint; the same URL again returns the existing one."""
        normalized = normalize_url(url)
        for endpoint in self.endpoints.values():
            if endpoint.url == normalized and endpoint.source == "operator":
                return endpoint, False
        endpoint_id = name or "ep-" + hashlib.sha256(normalized.encode()).hexdigest()[:8]
        if endpoint_id.endswith("-local"):
            raise HubError("invalid_name", "names ending in -local are kept for agents' endpoints")
        if endpoint_id in self.endpoints:
            raise HubError("already_exists", f"an endpoint named {endpoint_id} exists")
        endpoint = Endpoint(endpoint_id=endpoint_id, url=normalized, source="operator")
        self.endpoints[endpoint_id] = endpoint
        return endpoint, True

    def remove(self, endpoint_id: str) -> Endpoint:
        """Forget an endpoint; raises ``not_found``."""
        endpoint = self.endpoints.pop(endpoint_id, None)
        if endpoint is None:
            raise HubError("not_found", f"no endpoint {endpoint_id}")
        return endpoint

    def restore(self, rows: list[tuple[str, str, str, str | None]]) -> None:
        """Load endpoints read from the store (health is learned again)."""
        for endpoint_id, url, source, agent_id in rows:
            self.endpoints[endpoint_id] = Endpoint(
                endpoint_id=endpoint_id, url=url, source=source, agent_id=agent_id
            )

    def reload(self, rows: list[tuple[str, str, str, str | None]]) -> None:
        """Match the registry to the stored endpoints, after the store refused a change.

        Endpoints stored as they are known keep their health; the others are forgotten,
        or added back with their health to be learned again.
        """
        stored = {row[0]: row for row in rows}
        for endpoint_id in [e for e in self.endpoints if e not in stored]:
            del self.endpoints[endpoint_id]
        for endpoint_id, url, source, agent_id in rows:
            known = self.endpoints.get(endpoint_id)
            as_stored = (url, source, agent_id)
            if known is None or (known.url, known.source, known.agent_id) != as_stored:
                self.endpoints[endpoint_id] = Endpoint(
                    endpoint_id=endpoint_id, url=url, source=source, agent_id=agent_id
                )

    def record_check(
        self,
        endpoint_id: str,
        now_ms: int,
        models: list[str] | None,
        loaded: list[str] | None = None,
        error: str | None = None,
    ) -> bool:
        """Apply one health check (``models`` None means it failed); True when health changed."""
        endpoint = self.endpoints.get(endpoint_id)
        if endpoint is None:
            return False
        before = endpoint.healthy
        endpoint.last_checked = now_ms
        if models is None:
            endpoint.failures += 1
            endpoint.last_error = error
            if endpoint.failures >= self._unhealthy_after:
                endpoint.healthy = False
        else:
            endpoint.failures = 0
            endpoint.last_error = None
            endpoint.healthy = True
            endpoint.models = models
            endpoint.loaded = loaded or []
        return endpoint.healthy != before

    def choose_for(self, agent: Any) -> Endpoint | None:
        """The endpoint for a ``standard`` task on ``agent``: its own first, else any usable."""
        usable = [e for e in self.endpoints.values() if e.healthy is not False]
        for endpoint in usable:
            if endpoint.agent_id == agent.agent_id:
                return endpoint
        return usable[0] if usable else None

    def viable(self) -> list[Endpoint]:
        """Endpoints the router may choose."""
        return [endpoint for endpoint in self.endpoints.values() if endpoint.viable]

    def snapshot(self) -> list[dict[str, Any]]:
        """Every endpoint, for the API."""
        return [endpoint.snapshot() for endpoint in self.endpoints.values()]
