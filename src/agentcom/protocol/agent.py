"""Frames an agent (sidecar) sends on ``/ws``: one model per ``type``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, model_validator

from agentcom.protocol.common import (
    AgentId,
    ChannelName,
    Inbound,
    JsonObject,
    LongText,
    ShortText,
    TaskId,
    Url,
    only_finite_numbers,
)

__all__ = [
    "AGENT_FRAME",
    "AGENT_FRAME_TYPES",
    "AgentFrame",
    "AgentRestarting",
    "ChannelHistory",
    "ChannelPublish",
    "ChannelSubscribe",
    "ChannelUnsubscribe",
    "ExecutionEvent",
    "ExecutionResult",
    "Identify",
    "ListAgents",
    "ListChannels",
    "Message",
    "OllamaReport",
    "Ping",
    "Pm2Info",
    "ResourceReport",
    "StateReport",
    "StatusUpdate",
    "TaskAccepted",
    "TaskComplete",
    "TaskFailed",
    "TaskProgress",
    "TaskRecovering",
    "TaskRejected",
    "WakeResult",
]

Count = Annotated[int, Field(ge=0, le=2**53)]
Money = Annotated[float, Field(ge=0, le=1e9)]
Number = Annotated[float, Field(ge=0, le=2**63)]


class Pm2Info(Inbound):
    """``identify.pm2_info``: the sidecar's process as the pm2 process manager sees it."""

    name: ShortText | None = None
    status: ShortText | None = None
    uptime_ms: Number | None = None
    restart_count: Count | None = None
    memory_bytes: Number | None = None


class Identify(Inbound):
    """First frame of every agent connection."""

    type: Literal["identify"]
    agent_id: AgentId
    token: Annotated[str, Field(max_length=256)]
    name: ShortText | None = None
    status: ShortText | None = None
    capabilities: Annotated[list[ShortText], Field(max_length=64)] | None = None
    ollama_url: Url | None = None
    pm2_info: Pm2Info | None = None


class Ping(Inbound):
    """Liveness probe; answered with ``pong``."""

    type: Literal["ping"]


class StatusUpdate(Inbound):
    """Free-text status of the agent, shown to others."""

    type: Literal["status"]
    status: ShortText


class ListAgents(Inbound):
    """Ask for the connected agents."""

    type: Literal["list_agents"]


class Message(Inbound):
    """A direct (``to``) or broadcast message to other agents."""

    type: Literal["message"]
    payload: JsonObject
    to: AgentId | None = None
    message_type: ShortText | None = None
    reply_to: ShortText | None = None


class ChannelSubscribe(Inbound):
    """Subscribe to a channel."""

    type: Literal["channel_subscribe"]
    channel: ChannelName


class ChannelUnsubscribe(Inbound):
    """Unsubscribe from a channel."""

    type: Literal["channel_unsubscribe"]
    channel: ChannelName


class ChannelPublish(Inbound):
    """Publish to a channel's subscribers."""

    type: Literal["channel_publish"]
    channel: ChannelName
    payload: JsonObject
    message_type: ShortText | None = None
    reply_to: ShortText | None = None


class ChannelHistory(Inbound):
    """Read a channel's recent messages."""

    type: Literal["channel_history"]
    channel: ChannelName
    limit: Annotated[int, Field(ge=1, le=1000)] | None = None
    since: Count | None = None


class ListChannels(Inbound):
    """Ask for the channels."""

    type: Literal["list_channels"]


class TaskAccepted(Inbound):
    """The agent starts working on an assigned task."""

    type: Literal["task_accepted"]
    task_id: TaskId


class ExecutionEvent(Inbound):
    """``task_progress.execution_event``: the agentic tool-call fields typed (and bounded),
    every other key kept as sent."""

    model_config = Inbound.model_config | {"extra": "allow"}

    event_type: ShortText | None = None
    tool_name: ShortText | None = None
    args_summary: LongText | None = None
    result_summary: LongText | None = None
    iteration: Count | None = None

    @model_validator(mode="after")
    def _free_form_numbers_are_finite(self) -> ExecutionEvent:
        only_finite_numbers(self.model_extra)
        return self


class TaskProgress(Inbound):
    """Progress of a running task, optionally with one streamed execution event."""

    type: Literal["task_progress"]
    task_id: TaskId
    progress: Annotated[int, Field(ge=0, le=100_000)] | None = None
    execution_event: ExecutionEvent | None = None


class ExecutionResult(Inbound):
    """``task_complete.result``: typed execution metadata, other keys kept as sent."""

    model_config = Inbound.model_config | {"extra": "allow"}

    status: ShortText | None = None
    output: Any = None
    error: Annotated[str, Field(max_length=10_000)] | None = None
    termination_reason: ShortText | None = None  # why an agentic run stopped
    iterations_used: Count | None = None  # and after how many model turns
    model_used: ShortText | None = None
    tokens_in: Count | None = None
    tokens_out: Count | None = None
    tokens_used: Count | None = None
    estimated_cost_usd: Money | None = None
    equivalent_claude_cost_usd: Money | None = None
    execution_ms: Number | None = None
    verification_status: ShortText | None = None
    verification_attempts: Count | None = None

    @model_validator(mode="after")
    def _free_form_numbers_are_finite(self) -> ExecutionResult:
        only_finite_numbers([self.output, self.model_extra])
        return self


class TaskComplete(Inbound):
    """The agent finished a task (``result.status == "failed"`` means it failed)."""

    type: Literal["task_complete"]
    task_id: TaskId
    generation: Annotated[int, Field(ge=0, le=2**53)]
    result: ExecutionResult | None = None
    tokens_used: Count | None = None
    verification_report: JsonObject | None = None
    verification_history: Annotated[list[JsonObject], Field(max_length=100)] | None = None


class TaskFailed(Inbound):
    """The agent could not finish a task."""

    type: Literal["task_failed"]
    task_id: TaskId
    generation: Annotated[int, Field(ge=0, le=2**53)]
    error: LongText | None = None
    reason: LongText | None = None


class TaskRejected(Inbound):
    """The agent declines an assigned task (for example because it is busy)."""

    type: Literal["task_rejected"]
    task_id: TaskId
    reason: LongText | None = None


class TaskRecovering(Inbound):
    """After a restart the agent asks what to do with a task it held."""

    type: Literal["task_recovering"]
    task_id: TaskId
    last_status: ShortText | None = None
    description: Annotated[str, Field(max_length=10_000)] | None = None
    metadata: JsonObject | None = None


class StateReport(Inbound):
    """After a reconnect, an agent still running a task says which attempt it runs."""

    type: Literal["state_report"]
    task_id: TaskId
    generation: Annotated[int, Field(ge=0, le=2**53)]
    status: ShortText | None = None
    assigned_at: Count | Number | None = None  #: an integer (milliseconds) stays one


class ResourceReport(Inbound):
    """Host load figures, used for routing."""

    type: Literal["resource_report"]
    cpu_percent: Annotated[float, Field(ge=0, le=100_000)] | None = None
    ram_used_bytes: Number | None = None
    ram_total_bytes: Number | None = None
    vram_used_bytes: Number | None = None
    vram_total_bytes: Number | None = None
    timestamp: Number | None = None


class OllamaReport(Inbound):
    """The agent's local Ollama endpoint."""

    type: Literal["ollama_report"]
    ollama_url: Url


class AgentRestarting(Inbound):
    """The sidecar is about to exit so that its process manager restarts it."""

    type: Literal["agent_restarting"]
    reason: LongText | None = None


class WakeResult(Inbound):
    """Outcome of waking an external agent process (informational)."""

    type: Literal["wake_result"]
    task_id: TaskId
    status: ShortText
    attempt: Count | None = None
    error: LongText | None = None
    reason: LongText | None = None


AgentFrame = Annotated[
    Identify
    | Ping
    | StatusUpdate
    | ListAgents
    | Message
    | ChannelSubscribe
    | ChannelUnsubscribe
    | ChannelPublish
    | ChannelHistory
    | ListChannels
    | TaskAccepted
    | TaskProgress
    | TaskComplete
    | TaskFailed
    | TaskRejected
    | TaskRecovering
    | StateReport
    | ResourceReport
    | OllamaReport
    | WakeResult
    | AgentRestarting,
    Field(discriminator="type"),
]

AGENT_FRAME: TypeAdapter[AgentFrame] = TypeAdapter(AgentFrame)
AGENT_FRAME_TYPES: tuple[str, ...] = (
    "identify", "ping", "status", "list_agents", "message", "channel_subscribe",
    "channel_unsubscribe", "channel_publish", "channel_history", "list_channels",
    "task_accepted", "task_progress", "task_complete", "task_failed", "task_rejected",
    "task_recovering", "state_report", "resource_report", "ollama_report", "wake_result",
    "agent_restarting",
)  # fmt: skip
