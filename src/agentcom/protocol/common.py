"""Shared pieces of the wire contract: base model, string limits and enums."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AgentId",
    "ChannelName",
    "CostTier",
    "Inbound",
    "LongText",
    "Outbound",
    "Priority",
    "ShortText",
    "TaskId",
    "TargetType",
    "TaskStatus",
    "Tier",
    "PRIORITY_RANK",
]

AgentId = Annotated[str, Field(min_length=1, max_length=128)]
TaskId = Annotated[str, Field(min_length=1, max_length=128)]
ShortText = Annotated[str, Field(max_length=256)]
LongText = Annotated[str, Field(max_length=2_000)]
ChannelName = Annotated[str, Field(min_length=1, max_length=64)]
Url = Annotated[str, Field(min_length=1, max_length=512)]


class Inbound(BaseModel):
    """Base of every frame a peer sends: strict types, unknown fields ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False, frozen=True)


class Outbound(BaseModel):
    """Base of every frame the hub sends."""

    model_config = ConfigDict(extra="forbid")


class Priority(StrEnum):
    """Task priority, served highest first."""

    urgent = "urgent"  # ahead of everything
    high = "high"
    normal = "normal"  # the default
    low = "low"  # only when nothing else waits


PRIORITY_RANK: dict[Priority, int] = {
    Priority.urgent: 0,
    Priority.high: 1,
    Priority.normal: 2,
    Priority.low: 3,
}


class TaskStatus(StrEnum):
    """Where a task is in its lifecycle (PROTOCOL.md section 2)."""

    queued = "queued"  # waiting for an idle agent
    assigned = "assigned"  # pushed to an agent, not yet accepted
    working = "working"  # accepted by the agent
    completed = "completed"  # finished successfully (terminal)
    dead_letter = "dead_letter"  # failed more than max_retries times; an operator may retry
    cancelled = "cancelled"  # cancelled by an operator (terminal)


class Tier(StrEnum):
    """Complexity tier of a task."""

    trivial = "trivial"
    standard = "standard"
    complex = "complex"


class TargetType(StrEnum):
    """Which executor runs a task."""

    sidecar = "sidecar"  # a shell command on the agent's host
    ollama = "ollama"  # a local Ollama endpoint
    claude = "claude"  # the Claude API
    wake = "wake"  # an external agent process woken by the sidecar


class CostTier(StrEnum):
    """Rough price class of a routing target."""

    free = "free"
    local = "local"
    api = "api"
