"""The events the hub publishes to subscribers (``/ws/dashboard``, ``agentcom watch``).

The hub builds events as plain dicts on its hot path (one per transition, fanned out to
every subscriber) and does not validate them as it sends them; these models are their
contract: ``/api/schemas`` is generated from them and the tests check every event a live
hub publishes against them, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from agentcom.protocol.common import Priority, TaskStatus
from agentcom.protocol.task import ExecutionMetadata, TaskHold

__all__ = [
    "EVENT",
    "AgentEvent",
    "AgentView",
    "EndpointEvent",
    "EndpointView",
    "Event",
    "TaskEvent",
    "ValidationEvent",
]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskEvent(_Event):
    """A task's transition, progress or streamed execution output (topic ``tasks``)."""

    type: Literal["task_event"]
    event: Literal[
        "task_submitted", "task_assigned", "task_accepted", "task_progress",
        "execution_progress", "task_completed", "task_failed", "task_retried",
        "task_dead_letter", "task_requeued", "task_reclaimed", "task_cancelled",
        "task_state_reported",
    ]  # fmt: skip
    task_id: str
    agent_id: str | None  # the agent concerned: holder, reporter, or the one that lost it
    timestamp: int
    status: TaskStatus | None = None  # transitions: the status it moved to
    priority: Priority | None = None  # transitions
    generation: int | None = None  # transitions
    progress: int | None = None  # task_progress, as the sidecar sent it
    execution_event: dict[str, Any] | None = None  # execution_progress, as sent
    execution: ExecutionMetadata | None = None  # task_completed
    error: str | None = None  # task_failed, task_dead_letter
    retry_count: int | None = None  # task_retried
    reason: str | None = None  # task_requeued, task_reclaimed
    action: Literal["continue", "abort"] | None = None  # task_state_reported: the answer
    reported_status: str | None = None  # task_state_reported: as the sidecar sent them
    reported_generation: int | None = None


class AgentView(_Event):
    """An agent as dashboards see it (also in the snapshot and ``agents_list``)."""

    agent_id: str
    name: str | None
    status: str | None
    state: Literal["idle", "assigned", "working", "offline"]
    capabilities: list[str]
    connected_at: int
    last_seen: int
    current_task: str | None
    draining: bool  # finishes its current task, is offered no new one
    ollama_url: str | None
    resources: dict[str, Any]
    pm2_info: dict[str, Any] | None  # its process, as pm2 reported it at identify
    restarting: dict[str, Any] | None  # {reason, since} from agent_restarting until it is back
    held_task: TaskHold | None  # its task, kept for it since its connection ended


class AgentEvent(_Event):
    """An agent's presence changed, or it reported something (topic ``agents``)."""

    type: Literal["agent_event"]
    event: Literal[
        "agent_connected", "agent_disconnected", "agent_status", "agent_resources",
        "agent_endpoint", "agent_seen", "agent_drain", "agent_restarting",
        "agent_restart_requested",
    ]  # fmt: skip
    agent_id: str
    timestamp: int
    agent: AgentView


class EndpointView(_Event):
    """An Ollama endpoint as the registry holds it (also ``/api/endpoints``)."""

    endpoint_id: str
    url: str
    host_port: str
    source: str
    agent_id: str | None
    approved: bool  # an agent's endpoint an admin lets serve every agent
    healthy: bool | None
    models: list[str]
    loaded: list[str]
    failures: int
    last_checked: int | None
    last_error: str | None
    load: dict[str, Any] | None  # the host's latest resource report, as routing uses it


class EndpointEvent(_Event):
    """An endpoint was added or removed, or a health check changed it (topic ``agents``)."""

    type: Literal["endpoint_event"]
    event: Literal[
        "endpoint_added", "endpoint_removed", "endpoint_approved", "endpoint_healthy",
        "endpoint_unhealthy", "endpoint_updated",
    ]  # fmt: skip
    endpoint_id: str
    timestamp: int
    endpoint: EndpointView


class ValidationEvent(_Event):
    """A frame was refused, or a bad token presented (topic ``validation``)."""

    type: Literal["validation_event"]
    agent_id: str | None  # None before the connection identified
    remote: str  # host:port of the peer
    timestamp: int
    reply: dict[str, Any]  # the error reply the peer got
    closed: bool  # this violation closed the connection (1008)


Event = Annotated[
    TaskEvent | AgentEvent | EndpointEvent | ValidationEvent, Field(discriminator="type")
]
EVENT: TypeAdapter[Event] = TypeAdapter(Event)
