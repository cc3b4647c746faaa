"""Registry of Ollama endpoints, reported by sidecars or added by operators."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from agentcom.hub.agents import AgentRecord

__all__ = ["Endpoint", "EndpointRegistry"]


@dataclass(slots=True)
class Endpoint:
    """One Ollama endpoint; ``healthy`` is None until it has been checked."""

    endpoint_id: str
    url: str
    source: str  # "agent" or "operator"
    agent_id: str | None = None
    healthy: bool | None = None
    models: list[str] = field(default_factory=list)

    @property
    def host_port(self) -> str:
        """``host:port`` as sidecars expect in ``selected_endpoint`` (port 11434 by default)."""
        parts = urlsplit(self.url if "//" in self.url else f"http://{self.url}")
        host = parts.hostname or "localhost"
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{parts.port or 11434}"

    def snapshot(self) -> dict[str, object]:
        """The API view."""
        return {
            "endpoint_id": self.endpoint_id,
            "url": self.url,
            "source": self.source,
            "agent_id": self.agent_id,
            "healthy": self.healthy,
            "models": list(self.models),
        }


class EndpointRegistry:
    """Known endpoints by id."""

    def __init__(self) -> None:
        self.endpoints: dict[str, Endpoint] = {}

    def register_for_agent(self, agent_id: str, url: str) -> Endpoint:
        """Register (or keep) ``<agent_id>-local``; a known URL keeps its health and models."""
        endpoint_id = f"{agent_id}-local"
        known = self.endpoints.get(endpoint_id)
        if known is not None and known.url == url:
            return known
        endpoint = Endpoint(endpoint_id=endpoint_id, url=url, source="agent", agent_id=agent_id)
        self.endpoints[endpoint_id] = endpoint
        return endpoint

    def choose_for(self, agent: AgentRecord) -> Endpoint | None:
        """The endpoint for a ``standard`` task on ``agent``: its own first, else any usable."""
        usable = [e for e in self.endpoints.values() if e.healthy is not False]
        for endpoint in usable:
            if endpoint.agent_id == agent.agent_id:
                return endpoint
        return usable[0] if usable else None

    def snapshot(self) -> list[dict[str, object]]:
        """Every endpoint, for the API."""
        return [endpoint.snapshot() for endpoint in self.endpoints.values()]
