"""Periodic health checks of Ollama endpoints over HTTP (``GET /api/tags`` and ``/api/ps``)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import httpx

from agentcom.hub.hub import Effects

if TYPE_CHECKING:
    from agentcom.server.host import SessionHost

__all__ = ["EndpointProber", "parse_model_names"]

logger = logging.getLogger(__name__)


def parse_model_names(payload: Any) -> list[str]:
    """Model names from an Ollama ``/api/tags`` or ``/api/ps`` body; raises ValueError."""
    if not isinstance(payload, dict) or not isinstance(payload.get("models"), list):
        raise ValueError("no 'models' list in the reply")
    names = []
    for model in payload["models"]:
        if isinstance(model, dict) and isinstance(model.get("name"), str) and model["name"]:
            names.append(model["name"][:256])
    return names[:500]


class EndpointProber:
    """Checks every registered endpoint every ``interval_s``, and a new one at once.

    Args:
        server: the hub whose registry is checked and updated.
        interval_s: time between rounds of checks.
        timeout_s: a check slower than this counts as a failure.
    """

    def __init__(self, server: SessionHost, interval_s: float, timeout_s: float) -> None:
        self._server = server
        self._interval_s = interval_s
        self._client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)
        self._loop_task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Start the periodic rounds."""
        self._loop_task = asyncio.create_task(self._check_forever())

    async def stop(self) -> None:
        """Stop checking and release the HTTP client."""
        tasks = [t for t in (self._loop_task, *self._pending) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()

    def check_soon(self, endpoint_id: str) -> None:
        """Check one endpoint now, in the background (after it was registered)."""
        task = asyncio.create_task(self._check_and_apply([endpoint_id]))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def check_all(self) -> None:
        """One round: check every endpoint concurrently and apply the results."""
        await self._check_and_apply(list(self._server.hub.endpoints.endpoints))

    async def _check_forever(self) -> None:
        while True:
            try:
                await self.check_all()
            except Exception:  # a round must never end the checks
                logger.exception("endpoint health round failed")
            await asyncio.sleep(self._interval_s)

    async def _check_and_apply(self, endpoint_ids: list[str]) -> None:
        registry = self._server.hub.endpoints
        targets = [(e, registry.endpoints[e].url) for e in endpoint_ids if e in registry.endpoints]
        results = await asyncio.gather(*(self._probe(url) for _, url in targets))
        hub = self._server.hub
        effects = Effects()
        for (endpoint_id, _), (models, loaded, error) in zip(targets, results, strict=True):
            checked = hub.run(
                hub.endpoint_ops.apply_endpoint_check, endpoint_id, models, loaded, error
            )
            effects.extend(checked[1])
        await self._server.settle(effects=effects)

    async def _probe(self, url: str) -> tuple[list[str] | None, list[str], str | None]:
        try:
            tags = await self._client.get(f"{url}/api/tags")
            tags.raise_for_status()
            models = parse_model_names(tags.json())
        except (httpx.HTTPError, ValueError) as exc:
            return None, [], f"{type(exc).__name__}: {exc}"[:500]
        loaded: list[str] = []
        try:
            running = await self._client.get(f"{url}/api/ps")
            if running.status_code == 200:
                loaded = parse_model_names(running.json())
        except (httpx.HTTPError, ValueError):
            pass  # /api/ps is optional: without it no model counts as warm
        return models, loaded, None
