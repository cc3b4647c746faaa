"""The events the hub publishes to subscribers (``/ws/dashboard``, ``agentcom watch``).

The hub builds events as plain dicts on its hot path (one per transition, fanned out to
every subscriber) and does not validate them as it sends them; the constructor functions
at the end of this module are the only place that spells their keys. The models are their
contract: ``/api/schemas`` is generated from them and the tests check every event a live
hub publishes against them, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from agentcom.protocol.common import Priority, TaskStatus, dumped_or_none
from agentcom.protocol.task import ExecutionMetadata, Task, TaskHold

__all__ = [
    "EVENT",
    "AgentEvent",
    "AgentView",
    "EndpointEvent",
    "EndpointView",
    "Event",
    "TaskEvent",
    "ValidationEvent",
    "agent_event",
    "agent_view",
    "endpoint_event",
    "endpoint_view",
    "execution_progress_event",
    "task_event",
    "task_progress_event",
    "task_transition_event",
    "validation_event",
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
    # Nodes sharing a database: the node it is connected to, or was last (absent otherwise).
    node: str | None = None


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


# --- constructors: the hot path builds plain dicts, in the key order subscribers get ---


def task_event(
    event: str, task_id: str, agent_id: str | None, timestamp: int, **fields: Any
) -> dict[str, Any]:
    """A ``task_event`` named ``event``, with the optional ``fields`` of :class:`TaskEvent`."""
    return {
        "type": "task_event",
        "event": event,
        "task_id": task_id,
        "agent_id": agent_id,
        "timestamp": timestamp,
        **fields,
    }


def task_transition_event(
    event: str, task: Task, timestamp: int, extra: dict[str, Any]
) -> dict[str, Any]:
    """A task's transition: its holder, status, priority and generation, then ``extra``
    (which may name another ``agent_id``: the agent that lost the task)."""
    built = {  # spelled out rather than through task_event: one per transition
        "type": "task_event",
        "event": event,
        "task_id": task.task_id,
        "agent_id": task.assigned_to,
        "timestamp": timestamp,
        "status": task.status._value_,  # the plain str, without the slow `.value`
        "priority": task.priority._value_,
        "generation": task.generation,
    }
    built.update(extra)
    return built


def _progress_base(task_id: str, agent_id: str, timestamp: int) -> dict[str, Any]:
    return {"type": "task_event", "task_id": task_id, "agent_id": agent_id, "timestamp": timestamp}


def task_progress_event(
    task_id: str, agent_id: str, timestamp: int, progress: int | None
) -> dict[str, Any]:
    """A ``task_progress`` event: the progress as the sidecar sent it."""
    return {**_progress_base(task_id, agent_id, timestamp), "event": "task_progress",
            "progress": progress}  # fmt: skip


def execution_progress_event(
    task_id: str, agent_id: str, timestamp: int, execution_event: dict[str, Any]
) -> dict[str, Any]:
    """An ``execution_progress`` event carrying one streamed execution event."""
    return {**_progress_base(task_id, agent_id, timestamp), "event": "execution_progress",
            "execution_event": execution_event}  # fmt: skip


def agent_event(event: str, agent_id: str, timestamp: int, agent: dict[str, Any]) -> dict[str, Any]:
    """An ``agent_event`` named ``event`` with the agent's view (:class:`AgentView`)."""
    return {
        "type": "agent_event",
        "event": event,
        "agent_id": agent_id,
        "timestamp": timestamp,
        "agent": agent,
    }


def endpoint_event(
    event: str, endpoint_id: str, timestamp: int, endpoint: dict[str, Any]
) -> dict[str, Any]:
    """An ``endpoint_event`` named ``event`` with the endpoint's view (:class:`EndpointView`)."""
    return {
        "type": "endpoint_event",
        "event": event,
        "endpoint_id": endpoint_id,
        "timestamp": timestamp,
        "endpoint": endpoint,
    }


def validation_event(
    agent_id: str | None, remote: str, timestamp: int, reply: dict[str, Any], closed: bool
) -> dict[str, Any]:
    """A ``validation_event``: a refused frame (``reply`` as viewers may see it) and whether
    it closed the connection."""
    return {
        "type": "validation_event",
        "agent_id": agent_id,
        "remote": remote,
        "timestamp": timestamp,
        "reply": reply,
        "closed": closed,
    }


def agent_view(
    *,
    agent_id: str,
    name: str | None,
    status: str | None,
    state: str,
    capabilities: list[str],
    connected_at: int,
    last_seen: int,
    current_task: str | None,
    draining: bool,
    ollama_url: str | None,
    resources: dict[str, Any],
    pm2_info: dict[str, Any] | None,
    restarting: dict[str, Any] | None,
    held_task: TaskHold | None,
    node: str | None = None,
) -> dict[str, Any]:
    """An agent as dashboards and operators see it (:class:`AgentView`); ``node`` only
    when given."""
    view = {
        "agent_id": agent_id,
        "name": name,
        "status": status,
        "state": state,
        "capabilities": capabilities,
        "connected_at": connected_at,
        "last_seen": last_seen,
        "current_task": current_task,
        "draining": draining,
        "ollama_url": ollama_url,
        "resources": resources,
        "pm2_info": pm2_info,
        "restarting": restarting,
        "held_task": dumped_or_none(held_task),
    }
    if node is not None:
        view["node"] = node
    return view


def endpoint_view(
    *,
    endpoint_id: str,
    url: str,
    host_port: str,
    source: str,
    agent_id: str | None,
    approved: bool,
    healthy: bool | None,
    models: list[str],
    loaded: list[str],
    failures: int,
    last_checked: int | None,
    last_error: str | None,
    load: dict[str, Any] | None,
) -> dict[str, Any]:
    """An endpoint as operators see it (:class:`EndpointView`)."""
    return {
        "endpoint_id": endpoint_id,
        "url": url,
        "host_port": host_port,
        "source": source,
        "agent_id": agent_id,
        "approved": approved,
        "healthy": healthy,
        "models": models,
        "loaded": loaded,
        "failures": failures,
        "last_checked": last_checked,
        "last_error": last_error,
        "load": load,
    }
