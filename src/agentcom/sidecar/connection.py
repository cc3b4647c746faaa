"""The sidecar's connection: an :class:`AgentClient` built from its settings.

:class:`~agentcom.client.AgentClient` keeps the connection (reconnect with backoff,
heartbeat, task frames delivered across reconnects); the sidecar adds one hook, called
after every identify, where it tells the hub what it must hear at once (a task to
recover, its Ollama endpoint, its load).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from ssl import SSLContext
from typing import Any

from agentcom.client import AgentClient
from agentcom.sidecar.config import SidecarConfig

__all__ = ["SidecarClient"]


class SidecarClient(AgentClient):
    """An :class:`AgentClient` that tells the runner each time it has identified.

    Args:
        config: the sidecar's settings.
        on_identified: awaited after every successful identify, before frames are read.
        tls: the TLS context for a ``wss://`` hub (None: the system's certificates).
    """

    def __init__(
        self,
        config: SidecarConfig,
        on_identified: Callable[[], Awaitable[None]],
        tls: SSLContext | None = None,
    ) -> None:
        super().__init__(
            config.hub_url,
            config.agent_id,
            config.token,
            capabilities=list(config.capabilities),
            name=config.name,
            ollama_url=config.ollama_url,
            heartbeat_s=config.heartbeat_s,
            backoff_initial_s=config.backoff_initial_s,
            backoff_max_s=config.backoff_max_s,
            ssl=tls,
        )
        self._on_identified = on_identified

    async def connect(self, timeout: float = 10.0) -> dict[str, Any]:
        """Connect and identify, then let the runner resend what the hub must hear."""
        reply = await super().connect(timeout)
        await self._on_identified()
        return reply
