"""Shared pieces of the wire contract: base model, string limits and enums."""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

__all__ = [
    "ACTIVE",
    "PRIORITY_RANK",
    "TERMINAL",
    "AgentId",
    "ChannelName",
    "CostTier",
    "Inbound",
    "JsonObject",
    "LongText",
    "Outbound",
    "Priority",
    "RequestedTier",
    "ShortText",
    "TargetType",
    "TaskId",
    "TaskStatus",
    "Tier",
    "dumped_or_none",
    "not_blank",
    "only_finite_numbers",
]

AgentId = Annotated[str, Field(min_length=1, max_length=128)]
TaskId = Annotated[str, Field(min_length=1, max_length=128)]
ShortText = Annotated[str, Field(max_length=256)]
LongText = Annotated[str, Field(max_length=2_000)]
ChannelName = Annotated[str, Field(min_length=1, max_length=64)]
Url = Annotated[str, Field(min_length=1, max_length=512)]


_MIN_INTEGER = -(2**63)
_MAX_INTEGER = 2**64 - 1


def only_finite_numbers(value: Any) -> Any:
    """Refuse NaN, infinities and integers beyond 64 bits anywhere inside a free-form value.

    JSON has no NaN or infinity, yet the parser reads ``NaN``, ``Infinity`` and ``1e400``;
    kept, they would be re-published to subscribers as text that is not JSON (or quietly
    turned into ``null``). An integer of hundreds of digits is valid JSON, but most
    readers cannot hold it (a JavaScript sidecar or dashboard reads ``Infinity``).
    """
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise PydanticCustomError("finite_number", "Input should be a finite number")
        if isinstance(item, int) and not _MIN_INTEGER <= item <= _MAX_INTEGER:
            raise PydanticCustomError(
                "finite_number", "Input should be an integer that fits in 64 bits"
            )
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(only_finite_numbers)]
"""A free-form JSON object whose numbers are all finite."""


def not_blank(value: str) -> str:
    """Refuse a string of whitespace only, where text is required (an empty one is refused
    by its ``min_length``)."""
    if value.isspace():
        raise PydanticCustomError("string_blank", "String should contain more than whitespace")
    return value


def dumped_or_none(model: BaseModel | None) -> dict[str, Any] | None:
    """A model nested in a published dict: its JSON object, or None for none."""
    return model.model_dump(mode="json") if model is not None else None


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


TERMINAL = frozenset({TaskStatus.completed, TaskStatus.dead_letter, TaskStatus.cancelled})
"""The statuses of a finished task (one an operator retries leaves ``dead_letter``)."""

ACTIVE = frozenset({TaskStatus.assigned, TaskStatus.working})
"""The statuses of a task an agent holds."""


class Tier(StrEnum):
    """Complexity tier of a task."""

    trivial = "trivial"
    standard = "standard"
    complex = "complex"


RequestedTier = Tier | Literal["unknown"]
"""A tier as submitted: ``unknown`` says the submitter cannot tell; it runs as standard."""


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
