"""Frames the hub sends to agents, and the error shapes shared by every connection."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from agentcom.protocol.common import CostTier, Outbound, TargetType, Tier

__all__ = [
    "AgentInfo",
    "Complexity",
    "ErrorReply",
    "FieldError",
    "InferredComplexity",
    "RoutingDecision",
    "TaskAssign",
    "ValidationFailed",
    "channel_entry",
    "channel_message",
]


class FieldError(Outbound):
    """One problem with one field of a rejected frame."""

    field: str
    error: Literal["required", "wrong_type", "too_long", "unknown_message_type", "out_of_range"]
    detail: str
    value: Any = None
    known_types: list[str] | None = None

    @model_serializer(mode="wrap")
    def _omit_empty(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for optional in ("value", "known_types"):
            if data.get(optional) is None:
                data.pop(optional, None)
        return data


class ValidationFailed(Outbound):
    """Reply to a frame that is JSON but does not match its model."""

    type: Literal["error"] = "error"
    error: Literal["validation_failed"] = "validation_failed"
    message_type: str | None
    errors: list[FieldError]


class ErrorReply(Outbound):
    """Any other error reply (``invalid_json``, ``not_identified``, ``not_assigned`` ...)."""

    type: Literal["error"] = "error"
    error: str
    task_id: str | None = None
    message: str | None = None


class InferredComplexity(Outbound):
    """What the classifier concluded from the task's text."""

    tier: Tier
    confidence: float


class Complexity(Outbound):
    """How a task's tier was decided."""

    effective_tier: Tier
    source: Literal["explicit", "inferred", "default"]
    explicit_tier: Tier | None = None
    inferred: InferredComplexity | None = None
    signals: list[str] = Field(default_factory=list)


class RoutingDecision(Outbound):
    """Which executor runs a task and why; every value a string or null (but fallback_used)."""

    effective_tier: Tier
    target_type: TargetType
    selected_endpoint: str | None = None
    selected_model: str | None = None
    fallback_used: bool = False
    fallback_reason: str | None = None
    classification_reason: str | None = None
    estimated_cost_tier: CostTier | None = None


class TaskAssign(Outbound):
    """Push of a task to an agent; every key is always present."""

    type: Literal["task_assign"] = "task_assign"
    task_id: str
    description: str
    metadata: dict[str, Any]
    generation: int
    assigned_at: int
    repo: str | None
    branch: str | None
    file_hints: list[str]
    success_criteria: list[str]
    verification_steps: list[str]
    complexity: Complexity | None
    routing_decision: RoutingDecision | None
    skip_verification: bool
    verification_timeout_ms: int | None
    max_verification_retries: int


class AgentInfo(Outbound):
    """An agent as listed by ``list_agents``."""

    agent_id: str
    name: str | None
    status: str | None
    capabilities: list[str]
    connected_at: int


class Identified(Outbound):
    """Reply to a successful ``identify``."""

    type: Literal["identified"] = "identified"
    agent_id: str


class Pong(Outbound):
    """Reply to ``ping``."""

    type: Literal["pong"] = "pong"
    timestamp: int


class StatusUpdated(Outbound):
    """Reply to ``status``."""

    type: Literal["status_updated"] = "status_updated"


class AgentList(Outbound):
    """Reply to ``list_agents``."""

    type: Literal["agents"] = "agents"
    agents: list[AgentInfo]


class ChannelList(Outbound):
    """Reply to ``list_channels``."""

    type: Literal["channels"] = "channels"
    channels: list[dict[str, Any]]


class MessageSent(Outbound):
    """Reply to ``message``."""

    type: Literal["message_sent"] = "message_sent"
    id: str


class MessagePush(Outbound):
    """A message delivered to an agent."""

    # The alias also applies to validation, so that /api/schemas documents "from" as sent.
    model_config = Outbound.model_config | {"populate_by_name": True}

    type: Literal["message"] = "message"
    id: str
    # "from" is a Python keyword, hence the alias.
    sender: str = Field(validation_alias="from", serialization_alias="from")
    to: str | None
    payload: dict[str, Any]
    message_type: str | None
    reply_to: str | None
    timestamp: int


class TaskAck(Outbound):
    """Acknowledges a task frame once its effect is durable."""

    type: Literal["task_ack"] = "task_ack"
    task_id: str
    status: Literal["accepted", "complete", "retried", "dead_letter", "requeued"]
    generation: int | None = None


class TaskCancelled(Outbound):
    """Push: an operator cancelled the agent's task."""

    type: Literal["task_cancelled"] = "task_cancelled"
    task_id: str


class TaskContinue(Outbound):
    """Answer to ``task_recovering``: keep running the task."""

    type: Literal["task_continue"] = "task_continue"
    task_id: str
    generation: int


class TaskReassign(Outbound):
    """Answer to ``task_recovering``: drop the task, the hub gives it to someone."""

    type: Literal["task_reassign"] = "task_reassign"
    task_id: str


class StateReportAck(Outbound):
    """Answer to ``state_report``: keep running the task, or drop it."""

    type: Literal["state_report_ack"] = "state_report_ack"
    task_id: str
    action: Literal["continue", "abort"]


class RestartSidecar(Outbound):
    """Push: an operator asks the sidecar to restart (after its running task, if any)."""

    type: Literal["restart_sidecar"] = "restart_sidecar"
    reason: str | None


class OllamaReportAck(Outbound):
    """Reply to ``ollama_report``."""

    type: Literal["ollama_report_ack"] = "ollama_report_ack"
    status: Literal["registered"] = "registered"


class AgentJoined(Outbound):
    """Presence push: another agent identified."""

    type: Literal["agent_joined"] = "agent_joined"
    agent: AgentInfo


class AgentLeft(Outbound):
    """Presence push: another agent disconnected."""

    type: Literal["agent_left"] = "agent_left"
    agent_id: str


class StatusChanged(Outbound):
    """Presence push: another agent changed its status."""

    type: Literal["status_changed"] = "status_changed"
    agent: AgentInfo


class RateLimitWarning(Outbound):
    """A rate-limit bucket is at least 80% used."""

    type: Literal["rate_limit_warning"] = "rate_limit_warning"
    tier: str
    remaining: int
    capacity: int


class RateLimited(Outbound):
    """A frame was not handled because its bucket is empty."""

    type: Literal["rate_limited"] = "rate_limited"
    tier: str
    retry_after_ms: int


class ChannelSubscribed(Outbound):
    """Reply to ``channel_subscribe``."""

    type: Literal["channel_subscribed"] = "channel_subscribed"
    channel: str


class ChannelUnsubscribed(Outbound):
    """Reply to ``channel_unsubscribe``."""

    type: Literal["channel_unsubscribed"] = "channel_unsubscribed"
    channel: str


class ChannelPublished(Outbound):
    """Reply to ``channel_publish``: the message's sequence number and id."""

    type: Literal["channel_published"] = "channel_published"
    channel: str
    seq: int
    id: str


class ChannelMessagePush(Outbound):
    """A channel message delivered to a subscriber."""

    model_config = Outbound.model_config | {"populate_by_name": True}

    type: Literal["channel_message"] = "channel_message"
    channel: str
    seq: int
    id: str
    sender: str = Field(validation_alias="from", serialization_alias="from")
    payload: dict[str, Any]
    message_type: str | None
    reply_to: str | None
    timestamp: int


class ChannelHistoryReply(Outbound):
    """Reply to ``channel_history``, oldest message first."""

    type: Literal["channel_history"] = "channel_history"
    channel: str
    messages: list[dict[str, Any]]


class ChannelAgentJoined(Outbound):
    """Push to a channel's subscribers: another agent subscribed."""

    type: Literal["channel_agent_joined"] = "channel_agent_joined"
    channel: str
    agent_id: str


def channel_message(
    *,
    channel: str,
    seq: int,
    id: str,
    sender: str,
    payload: dict[str, Any],
    message_type: str | None,
    reply_to: str | None,
    timestamp: int,
) -> dict[str, Any]:
    """A channel message as ``channel_history`` returns it and the store keeps it."""
    return {
        "channel": channel,
        "seq": seq,
        "id": id,
        "from": sender,
        "payload": payload,
        "message_type": message_type,
        "reply_to": reply_to,
        "timestamp": timestamp,
    }


def channel_entry(
    *, name: str, description: str | None, created_at: int, subscribers: int, last_seq: int
) -> dict[str, Any]:
    """A channel as ``list_channels`` and ``channel_create`` return it."""
    return {
        "name": name,
        "description": description,
        "created_at": created_at,
        "subscribers": subscribers,
        "last_seq": last_seq,
    }
