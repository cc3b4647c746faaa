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
from agentcom.protocol.events import endpoint_view
from agentcom.store.base import EndpointRow

__all__ = ["Endpoint", "EndpointRegistry", "HostAllowList", "is_loopback", "normalize_url"]

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


class HostAllowList:
    """Hosts the hub may probe for an agent besides the agent's own address.

    Args:
        entries: host names (matched exactly, case-insensitively), IP addresses, and
            networks in CIDR notation (``10.0.0.0/8``); ``*`` allows any host.
    """

    def __init__(self, entries: list[str]) -> None:
        self.any = "*" in entries
        self._names: set[str] = set()
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            if entry == "*":
                continue
            try:
                self._networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                self._names.add(entry.lower())

    def permits(self, host: str, agent_host: str | None) -> bool:
        """Whether an endpoint on ``host`` may be probed for an agent connected from
        ``agent_host``: the agent's own address (loopback names count as one), or listed."""
        host = host.strip("[]").lower()
        if self.any or (agent_host is not None and _same_host(host, agent_host)):
            return True
        if host in self._names:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self._networks)


def _same_host(host: str, other: str) -> bool:
    other = other.strip("[]").lower()
    return host == other or (is_loopback(host) and is_loopback(other))


@dataclass(slots=True)
class Endpoint:
    """One Ollama endpoint; ``healthy`` is None until it has been checked."""

    endpoint_id: str
    url: str
    source: str  # "agent" (reported by a sidecar) or "operator"
    agent_id: str | None = None
    approved: bool = False  # an agent's endpoint an admin lets serve other agents
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
    def shared(self) -> bool:
        """Whether it may serve any agent: an operator's, or an agent's an admin approved.
        Otherwise only the agent that reported it."""
        return self.source == "operator" or self.approved

    @property
    def viable(self) -> bool:
        """Healthy and serving at least one model."""
        return self.healthy is True and bool(self.models)

    def view(self, load: dict[str, Any] | None) -> dict[str, Any]:
        """The API view, with ``load``: the latest resource report of its host."""
        return endpoint_view(
            endpoint_id=self.endpoint_id,
            url=self.url,
            host_port=self.host_port,
            source=self.source,
            agent_id=self.agent_id,
            approved=self.approved,
            healthy=self.healthy,
            models=list(self.models),
            loaded=list(self.loaded),
            failures=self.failures,
            last_checked=self.last_checked,
            last_error=self.last_error,
            load=load,
        )


class EndpointRegistry:
    """Known endpoints by id.

    Args:
        unhealthy_after: consecutive failed checks that mark an endpoint unhealthy.
        agent_hosts: where agents' endpoints may be (see :class:`HostAllowList`); None
            puts no limit (a registry used without connections).
    """

    def __init__(self, unhealthy_after: int = 3, agent_hosts: list[str] | None = None) -> None:
        self.endpoints: dict[str, Endpoint] = {}
        self._unhealthy_after = unhealthy_after
        self._agent_hosts = None if agent_hosts is None else HostAllowList(agent_hosts)

    def get(self, endpoint_id: str) -> Endpoint | None:
        """One endpoint, or None."""
        return self.endpoints.get(endpoint_id)

    def register_for_agent(
        self, agent_id: str, url: str, agent_host: str | None = None
    ) -> tuple[Endpoint, bool]:
        """Register ``<agent_id>-local``; returns it and whether it is new or changed.

        A loopback URL reported by an agent on another host names that host, as seen from
        the hub (``agent_host``): the hub checks it there. A URL on any other host than the
        agent's own is refused (ValueError) unless the allow-list permits it: the hub
        must not probe hosts of an agent's choosing. A known URL keeps its health and
        model list (a sidecar re-identifying); a changed one loses its approval.
        """
        normalized = normalize_url(url)
        parts = urlsplit(normalized)
        if agent_host is not None and is_loopback(parts.hostname) and not is_loopback(agent_host):
            host = f"[{agent_host}]" if ":" in agent_host else agent_host
            normalized = f"{parts.scheme}://{host}:{parts.port}"
        checked_host = urlsplit(normalized).hostname or ""
        if self._agent_hosts is not None and not self._agent_hosts.permits(
            checked_host, agent_host
        ):
            raise ValueError(
                f"host {checked_host} is neither the agent's own address nor allowed "
                "(agent_endpoint_hosts)"
            )
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

    def approve(self, reference: str) -> Endpoint:
        """Let an agent's endpoint serve every agent; ``reference`` is its id or URL.

        Raises ``not_found``.
        """
        endpoint = self.endpoints.get(reference)
        if endpoint is None:
            try:
                url = normalize_url(reference)
            except ValueError:
                url = None
            matches = [e for e in self.endpoints.values() if url is not None and e.url == url]
            endpoint = next((e for e in matches if e.source == "agent"), None) or next(
                iter(matches), None
            )
        if endpoint is None:
            raise HubError("not_found", f"no endpoint {reference}")
        endpoint.approved = endpoint.source == "agent"
        return endpoint

    def restore(self, rows: list[EndpointRow]) -> None:
        """Load endpoints read from the store (health is learned again)."""
        for endpoint_id, url, source, agent_id, approved in rows:
            self.endpoints[endpoint_id] = Endpoint(
                endpoint_id=endpoint_id, url=url, source=source, agent_id=agent_id,
                approved=approved,
            )  # fmt: skip

    def reload(self, rows: list[EndpointRow]) -> None:
        """Match the registry to the stored endpoints, after the store refused a change.

        Endpoints stored as they are known keep their health; the others are forgotten,
        or added back with their health to be learned again.
        """
        stored = {row[0]: row for row in rows}
        for endpoint_id in [e for e in self.endpoints if e not in stored]:
            del self.endpoints[endpoint_id]
        for endpoint_id, url, source, agent_id, approved in rows:
            known = self.endpoints.get(endpoint_id)
            as_stored = (url, source, agent_id)
            if known is None or (known.url, known.source, known.agent_id) != as_stored:
                self.endpoints[endpoint_id] = Endpoint(
                    endpoint_id=endpoint_id, url=url, source=source, agent_id=agent_id,
                    approved=approved,
                )  # fmt: skip
            else:
                known.approved = approved

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

    def viable(self) -> list[Endpoint]:
        """Endpoints the router may choose."""
        return [endpoint for endpoint in self.endpoints.values() if endpoint.viable]
