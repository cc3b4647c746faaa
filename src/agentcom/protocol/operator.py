"""The operator protocol on ``/ws/operator`` and the dashboard protocol on ``/ws/dashboard``.

Operator connections start with ``auth``; every later frame is a request carrying a
``request_id`` that its single reply (``result`` or ``error``) repeats.

Longer than most modules, on purpose: it is one protocol in one place, a short model for
each request and reply and for the data of the results that are not a task or a view.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter

from agentcom.protocol.common import AgentId, Inbound, Outbound, Priority, TaskId, TaskStatus
from agentcom.protocol.outbound import Complexity, RoutingDecision
from agentcom.protocol.task import TASK_CURSOR_PATTERN, Task, TaskSubmission

__all__ = [
    "DASHBOARD_FRAME",
    "DASHBOARD_FRAME_TYPES",
    "OPERATOR_FRAME",
    "OPERATOR_FRAME_TYPES",
    "AgentDrain",
    "AgentRestart",
    "AgentUndrain",
    "AgentsList",
    "Auth",
    "AuthOk",
    "BulkChange",
    "ChannelCreate",
    "ChannelsList",
    "DashboardFrame",
    "EndpointAdd",
    "EndpointRemove",
    "EndpointsList",
    "EventsDropped",
    "ExecutionTotals",
    "OperatorError",
    "OperatorFrame",
    "OperatorResult",
    "RefusedChange",
    "RoutePreview",
    "Snapshot",
    "Stats",
    "StatsReply",
    "Subscribe",
    "TaskCancel",
    "TaskCancelMany",
    "TaskGet",
    "TaskList",
    "TaskRequeue",
    "TaskRetry",
    "TaskRetryMany",
    "TaskRoute",
    "TaskSubmit",
    "TaskWait",
    "Throughput",
    "TopicName",
    "bulk_change",
    "refused_change",
    "route_preview",
    "stats_reply",
]

RequestId = Annotated[str, Field(min_length=1, max_length=64)]
TopicName = Literal["tasks", "agents", "validation"]


class Auth(Inbound):
    """First frame of an operator connection."""

    type: Literal["auth"]
    token: Annotated[str, Field(max_length=256)]


class _Request(Inbound):
    request_id: RequestId


class TaskSubmit(_Request):
    """Queue a task (admin)."""

    type: Literal["task_submit"]
    task: TaskSubmission


class TaskGet(_Request):
    """One task with history, routing decision and execution metadata."""

    type: Literal["task_get"]
    task_id: TaskId


class TaskList(_Request):
    """A page of tasks, most recently updated first, without their results: in any of
    ``status`` (one or a list), of ``priority``, held by ``agent``, needing
    ``capability``, updated in the last ``since_s`` seconds. The reply's ``next_cursor``,
    sent back as ``cursor``, asks for the next page."""

    type: Literal["task_list"]
    status: TaskStatus | Annotated[list[TaskStatus], Field(min_length=1, max_length=6)] | None = (
        None
    )
    priority: Priority | None = None
    agent: Annotated[str, Field(max_length=128)] | None = None
    capability: Annotated[str, Field(max_length=256)] | None = None
    since_s: Annotated[float, Field(gt=0, le=10 * 365 * 86_400)] | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 100
    cursor: Annotated[str, Field(pattern=TASK_CURSOR_PATTERN)] | None = None


class TaskCancel(_Request):
    """Cancel an unfinished task (admin)."""

    type: Literal["task_cancel"]
    task_id: TaskId


class TaskRetry(_Request):
    """Move a dead-letter task back to the queue (admin)."""

    type: Literal["task_retry"]
    task_id: TaskId


class TaskCancelMany(_Request):
    """Cancel several tasks in one request (admin); each is cancelled or refused alone."""

    type: Literal["task_cancel_many"]
    task_ids: Annotated[list[TaskId], Field(min_length=1, max_length=1000)]


class TaskRetryMany(_Request):
    """Move several dead-letter tasks back to the queue (admin); each is done or refused
    alone."""

    type: Literal["task_retry_many"]
    task_ids: Annotated[list[TaskId], Field(min_length=1, max_length=1000)]


class TaskRequeue(_Request):
    """Take an assigned or working task from its agent and queue it again (admin)."""

    type: Literal["task_requeue"]
    task_id: TaskId


class AgentDrain(_Request):
    """Let an agent finish its current task and offer it no new one (admin)."""

    type: Literal["agent_drain"]
    agent_id: AgentId


class AgentUndrain(_Request):
    """End an agent's drain: it is offered work again (admin)."""

    type: Literal["agent_undrain"]
    agent_id: AgentId


class TaskWait(_Request):
    """Reply once the task is completed, dead letter or cancelled (or after ``timeout_s``;
    0 answers at once: the task when it is finished, else ``timeout``)."""

    type: Literal["task_wait"]
    task_id: TaskId
    timeout_s: Annotated[float, Field(ge=0, le=86_400)] | None = None


class AgentsList(_Request):
    """Known agents with state and current task."""

    type: Literal["agents_list"]


class AgentRestart(_Request):
    """Ask a connected sidecar to restart (admin): it is pushed ``restart_sidecar``."""

    type: Literal["agent_restart"]
    agent_id: AgentId
    reason: Annotated[str, Field(max_length=2_000)] | None = None


class Stats(_Request):
    """Queue counts and execution totals."""

    type: Literal["stats"]


class TaskRoute(_Request):
    """The routing decision the hub would make for a task now (nothing is queued)."""

    type: Literal["task_route"]
    task: TaskSubmission


class EndpointsList(_Request):
    """Registered Ollama endpoints with health and models."""

    type: Literal["endpoints_list"]


class EndpointAdd(_Request):
    """Register an Ollama endpoint (admin)."""

    type: Literal["endpoint_add"]
    url: Annotated[str, Field(min_length=1, max_length=512)]
    name: (
        Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")] | None
    ) = None


class EndpointRemove(_Request):
    """Forget an Ollama endpoint (admin)."""

    type: Literal["endpoint_remove"]
    endpoint_id: Annotated[str, Field(min_length=1, max_length=200)]


class EndpointApprove(_Request):
    """Let an agent's endpoint serve every agent (admin); ``endpoint`` is its id or URL."""

    type: Literal["endpoint_approve"]
    endpoint: Annotated[str, Field(min_length=1, max_length=512)]


class ChannelCreate(_Request):
    """Create a channel (admin)."""

    type: Literal["channel_create"]
    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: Annotated[str, Field(max_length=2_000)] | None = None


class ChannelsList(_Request):
    """Every channel."""

    type: Literal["channels_list"]


OperatorFrame = Annotated[
    Auth
    | TaskSubmit
    | TaskGet
    | TaskList
    | TaskCancel
    | TaskRetry
    | TaskRequeue
    | TaskCancelMany
    | TaskRetryMany
    | AgentDrain
    | AgentUndrain
    | TaskWait
    | TaskRoute
    | AgentsList
    | AgentRestart
    | Stats
    | EndpointsList
    | EndpointAdd
    | EndpointRemove
    | EndpointApprove
    | ChannelCreate
    | ChannelsList,
    Field(discriminator="type"),
]
OPERATOR_FRAME: TypeAdapter[OperatorFrame] = TypeAdapter(OperatorFrame)
OPERATOR_FRAME_TYPES = ("auth", "task_submit", "task_get", "task_list", "task_cancel",
                        "task_retry", "task_wait", "task_route", "agents_list", "stats",
                        "endpoints_list", "endpoint_add", "endpoint_remove", "endpoint_approve",
                        "channel_create", "channels_list", "task_requeue", "agent_drain",
                        "agent_undrain", "task_cancel_many", "task_retry_many",
                       "agent_restart")  # fmt: skip


class AuthOk(Outbound):
    """Reply to a valid ``auth``."""

    type: Literal["auth_ok"] = "auth_ok"
    agent_id: str
    role: str


class OperatorResult(Outbound):
    """Successful reply to a request."""

    type: Literal["result"] = "result"
    request_id: str
    data: Any
    next_cursor: str | None = Field(default=None, exclude_if=lambda cursor: cursor is None)
    """For a page of a list: the ``cursor`` of the next page (absent on the last)."""
    warning: str | None = Field(default=None, exclude_if=lambda warning: warning is None)
    """Why ``data`` may be incomplete (absent when it is not): ``agents_list`` on a node
    that could not read the other nodes' agents."""


class OperatorError(Outbound):
    """Failed reply to a request."""

    type: Literal["error"] = "error"
    request_id: str | None
    error: str
    message: str | None = None


class Subscribe(Inbound):
    """First frame of a dashboard connection."""

    type: Literal["subscribe"]
    token: Annotated[str, Field(max_length=256)]
    topics: Annotated[list[TopicName], Field(max_length=3)] | None = None
    batch: bool = False
    """Receive events in ``events`` frames, several at a time, instead of one frame
    each (fewer, larger frames: what a busy hub can keep up with)."""


DashboardFrame = Annotated[Subscribe, Field(discriminator="type")]
DASHBOARD_FRAME: TypeAdapter[DashboardFrame] = TypeAdapter(DashboardFrame)
DASHBOARD_FRAME_TYPES = ("subscribe",)


class QueueMinute(Outbound):
    """One minute of the queue's last hour: its depth at the last change, and completions."""

    minute: int  # Unix time in whole minutes
    depth: int
    completions: int


class Snapshot(Outbound):
    """The state a dashboard starts from."""

    type: Literal["snapshot"] = "snapshot"
    timestamp: int
    version: str | None = None  # the hub's version
    started_at: int | None = None  # when the hub process started: its uptime
    agents: list[dict[str, Any]]
    endpoints: list[dict[str, Any]] = Field(default_factory=list)  # as endpoints_list
    queue: dict[str, Any]
    recent_tasks: list[dict[str, Any]]
    costs: dict[str, Any]
    active_tasks: list[dict[str, Any]] = Field(default_factory=list)  # assigned or working
    # Task id to its last execution events, so output shows before the next one arrives.
    execution_tails: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)
    timeouts: dict[str, int] = Field(default_factory=dict)  # accept_timeout_ms, reclaim_after_ms
    queue_history: list[QueueMinute] = Field(default_factory=list)  # minutes with changes


class EventsDropped(Outbound):
    """Events the subscriber will not get: ``count`` lost (it fell behind, or another hub
    node could not send them), or, with ``reason`` ``cluster_link_down``, an unknown number
    from other hub nodes from now on, until a new ``snapshot`` re-syncs it."""

    type: Literal["events_dropped"] = "events_dropped"
    count: int
    reason: Literal["cluster_link_down"] | None = None


# --- the data of some results -------------------------------------------------------------
# Each reply below has a model, which states its shape (the tests check the hub's replies
# against it), and a constructor, which the hub calls: it returns the plain dict, as the
# constructors of events.py do, so a reply pays for no validation.


class ExecutionTotals(Outbound):
    """Execution figures summed over a group of completed tasks."""

    tasks: int
    tokens_in: int
    tokens_out: int
    estimated_cost_usd: float
    equivalent_claude_cost_usd: float
    execution_ms: float


class Throughput(Outbound):
    """The tasks that reached each terminal status in the last ``window_s`` seconds."""

    completed: int
    dead_letter: int
    cancelled: int
    window_s: int


class StatsReply(Outbound):
    """The data of a ``stats`` result (and of ``/api/tasks/stats``)."""

    by_status: dict[str, int]
    queued_by_priority: dict[str, int]
    totals: ExecutionTotals
    by_model: dict[str, ExecutionTotals]  # "unknown": completed without a model
    by_agent: dict[str, ExecutionTotals]
    queue_depth: int
    agents_connected: int
    progress_dropped: int  # task_progress frames coalesced under rate limiting
    throughput: Throughput
    agents_by_state: dict[str, int]


def stats_reply(
    stored: Mapping[str, Any],
    *,
    queue_depth: int,
    agents_connected: int,
    progress_dropped: int,
    window_s: int,
    agents_by_state: dict[str, int],
) -> dict[str, Any]:
    """A :class:`StatsReply`: what the store counted (``read_task_stats``, whose
    ``finished`` becomes ``throughput``) and what the hub holds in memory."""
    return {
        "by_status": stored["by_status"],
        "queued_by_priority": stored["queued_by_priority"],
        "totals": stored["totals"],
        "by_model": stored["by_model"],
        "by_agent": stored["by_agent"],
        "queue_depth": queue_depth,
        "agents_connected": agents_connected,
        "progress_dropped": progress_dropped,
        "throughput": {**stored["finished"], "window_s": window_s},
        "agents_by_state": agents_by_state,
    }


class RoutePreview(Outbound):
    """The data of a ``task_route`` result: what the hub would decide for the task now."""

    complexity: Complexity
    routing_decision: RoutingDecision
    viable_endpoints: int
    would_wait: str | None  # why and how long it would wait for its tier's target


def route_preview(
    complexity: Complexity, decision: RoutingDecision, viable_endpoints: int, would_wait: str | None
) -> dict[str, Any]:
    """A :class:`RoutePreview`."""
    return {
        "complexity": complexity.model_dump(mode="json"),
        "routing_decision": decision.model_dump(mode="json"),
        "viable_endpoints": viable_endpoints,
        "would_wait": would_wait,
    }


class RefusedChange(Outbound):
    """A task a bulk change left as it was, and why."""

    task_id: str  # as the request named it
    error: str
    message: str | None


class BulkChange(Outbound):
    """The data of a ``task_cancel_many`` or ``task_retry_many`` result."""

    changed: list[Task]
    refused: list[RefusedChange]


def refused_change(task_id: str, error: str, message: str | None) -> dict[str, Any]:
    """A :class:`RefusedChange`."""
    return {"task_id": task_id, "error": error, "message": message}


def bulk_change(changed: list[dict[str, Any]], refused: list[dict[str, Any]]) -> dict[str, Any]:
    """A :class:`BulkChange` of tasks as ``task_get`` returns them and of refusals."""
    return {"changed": changed, "refused": refused}
