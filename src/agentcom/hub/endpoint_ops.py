"""Operator actions on Ollama endpoints (add, approve, remove), the recording of
their health checks, and the events that announce each change.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from agentcom.errors import HubError
from agentcom.hub.clock import Clock
from agentcom.hub.endpoints import Endpoint, EndpointRegistry
from agentcom.hub.scheduler import Scheduler
from agentcom.hub.views import HubViews
from agentcom.protocol.events import endpoint_event
from agentcom.store.base import Store

__all__ = ["EndpointOperations", "EndpointOpsHub"]

logger = logging.getLogger(__name__)


def _checked_view(endpoint: Endpoint) -> tuple[Any, ...]:
    """What a health check may change that is worth an event: not the time of the check,
    nor the count of failures of an endpoint that keeps failing the same way."""
    return endpoint.healthy, endpoint.models, endpoint.loaded, endpoint.last_error


class EndpointOpsHub(Protocol):
    """What operator actions on endpoints use of the hub's facade (``Hub`` is the one
    implementation): its parts and two commands."""

    endpoints: EndpointRegistry
    store: Store
    clock: Clock
    scheduler: Scheduler
    views: HubViews

    def publish(self, topic: str, event: dict[str, Any]) -> None:
        """Publish an event once the change is committed."""

    def check_endpoint_soon(self, endpoint_id: str) -> None:
        """Ask for a health check of an endpoint once the change is committed."""


class EndpointOperations:
    """What operators and health checks do to the endpoint registry.

    Args:
        hub: the domain whose endpoints change (its registry, store and outbox).
    """

    def __init__(self, hub: EndpointOpsHub) -> None:
        self.hub = hub
        self.endpoints = hub.endpoints
        self.store = hub.store
        self.clock = hub.clock

    def add_endpoint(self, url: str, name: str | None) -> dict[str, Any]:
        """An operator registers an Ollama endpoint."""
        try:
            endpoint, created = self.endpoints.add(url, name)
        except ValueError as exc:
            raise HubError("invalid_url", str(exc)) from None
        if created:
            self.store.stage_endpoint(endpoint.endpoint_id, endpoint.url, "operator", None)
            self.hub.check_endpoint_soon(endpoint.endpoint_id)
            self.endpoint_event("endpoint_added", endpoint)
        return self.hub.views.endpoint_view(endpoint)

    def approve_endpoint(self, reference: str) -> dict[str, Any]:
        """An admin lets an agent's endpoint (by id or URL) serve every agent; tasks held
        for want of an endpoint may then use it."""
        endpoint = self.endpoints.approve(reference)
        self.store.stage_endpoint(
            endpoint.endpoint_id, endpoint.url, endpoint.source, endpoint.agent_id,
            endpoint.approved,
        )  # fmt: skip
        self.endpoint_event("endpoint_approved", endpoint)
        if endpoint.viable:
            self.hub.scheduler.release_all_holds()
        return self.hub.views.endpoint_view(endpoint)

    def remove_endpoint(self, endpoint_id: str) -> dict[str, Any]:
        """Forget an endpoint."""
        endpoint = self.endpoints.remove(endpoint_id)
        self.store.stage_endpoint_removal(endpoint_id)
        self.endpoint_event("endpoint_removed", endpoint)
        return self.hub.views.endpoint_view(endpoint)

    def endpoint_event(self, name: str, endpoint: Endpoint) -> None:
        """Publish an ``endpoint_event`` named ``name`` with the endpoint's view."""
        view = self.hub.views.endpoint_view(endpoint)
        self.hub.publish(
            "agents", endpoint_event(name, endpoint.endpoint_id, self.clock.now_ms(), view)
        )

    def apply_endpoint_check(
        self, endpoint_id: str, models: list[str] | None, loaded: list[str], error: str | None
    ) -> None:
        """Record one health check; a change is published, and a newly healthy endpoint
        releases tasks that were waiting for one."""
        endpoint = self.endpoints.get(endpoint_id)
        if endpoint is None:
            return
        was_viable = endpoint.viable
        before = _checked_view(endpoint)  # record_check replaces the lists, never mutates
        changed = self.endpoints.record_check(
            endpoint_id, self.clock.now_ms(), models, loaded, error
        )
        if changed:
            state = "endpoint_healthy" if endpoint.healthy else "endpoint_unhealthy"
            logger.info("endpoint %s is now %s", endpoint_id, state.removeprefix("endpoint_"))
            self.endpoint_event(state, endpoint)
        elif _checked_view(endpoint) != before:  # models, loaded ones or the error
            self.endpoint_event("endpoint_updated", endpoint)
        # Viable again (healthy, or a model appeared on a healthy endpoint): release waiters.
        if endpoint.viable and not was_viable:
            self.hub.scheduler.release_all_holds()
