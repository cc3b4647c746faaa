"""What an executor is given (a :class:`Job`) and what it returns (an :class:`Outcome`).

An assignment is read leniently from the ``task_assign`` frame: a hub that speaks an
older or newer dialect of the protocol may leave keys out or add some, and the sidecar
needs only a few of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from agentcom.protocol.common import TargetType, Tier
from agentcom.sidecar.config import SidecarConfig
from agentcom.sidecar.progress import ProgressStream, Sender

__all__ = ["Assignment", "Executor", "ExecutorFailed", "Job", "Outcome"]


def _target(value: Any) -> TargetType | None:
    return TargetType(value) if isinstance(value, str) and value in TargetType.__members__ else None


def _tier(value: Any) -> Tier | None:
    return Tier(value) if isinstance(value, str) and value in Tier.__members__ else None


@dataclass(frozen=True, slots=True)
class Assignment:
    """The parts of a ``task_assign`` the executors use."""

    task_id: str
    generation: int
    description: str
    metadata: dict[str, Any]
    target: TargetType | None  #: the routing decision's target_type (None: no decision)
    tier: Tier | None  #: the effective tier (None: unknown, run as standard)
    endpoint: str | None  #: selected_endpoint (an Ollama host:port)
    model: str | None  #: selected_model

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> Assignment:
        """Read a ``task_assign`` frame (raises KeyError/TypeError when task_id or
        generation is missing)."""
        decision = frame.get("routing_decision") or {}
        complexity = frame.get("complexity") or {}
        metadata = frame.get("metadata")
        return cls(
            task_id=str(frame["task_id"]),
            generation=int(frame["generation"]),
            description=str(frame.get("description") or ""),
            metadata=metadata if isinstance(metadata, dict) else {},
            target=_target(decision.get("target_type")),
            tier=_tier(decision.get("effective_tier") or complexity.get("effective_tier")),
            endpoint=decision.get("selected_endpoint"),
            model=decision.get("selected_model"),
        )

    @property
    def shell_command(self) -> str | None:
        """``metadata.shell_command`` when it is a non-blank string."""
        command = self.metadata.get("shell_command")
        return command if isinstance(command, str) and command.strip() else None


@dataclass(slots=True)
class Outcome:
    """How a run ended; the runner turns it into ``task_complete``."""

    status: Literal["success", "failed"]
    output: str = ""
    error: str | None = None
    model_used: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    estimated_cost_usd: float | None = None
    equivalent_claude_cost_usd: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  #: more result keys (exit_code ...)

    def result(self, execution_ms: int) -> dict[str, Any]:
        """``task_complete.result``: the figures known, the others left out."""
        result: dict[str, Any] = {"status": self.status, "output": self.output}
        figures = {
            "error": self.error,
            "model_used": self.model_used,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "estimated_cost_usd": self.estimated_cost_usd,
            "equivalent_claude_cost_usd": self.equivalent_claude_cost_usd,
        }
        result.update({key: value for key, value in figures.items() if value is not None})
        result.update(self.extra)
        result["execution_ms"] = execution_ms
        return result


class ExecutorFailed(Exception):
    """An executor could not run the task; the message is the reason the hub records."""


@dataclass(slots=True)
class Job:
    """One run of one task.

    Args:
        assignment: the task.
        config: the sidecar's settings.
        progress: where output is streamed.
        record_process: called with the process group of a command as soon as it starts,
            so that a restart after a crash can kill it.
        send: sends one frame to the hub (raises when disconnected).
    """

    assignment: Assignment
    config: SidecarConfig
    progress: ProgressStream
    record_process: Callable[[int], None] = lambda group: None
    send: Sender | None = None

    @property
    def timeout_s(self) -> float:
        """The run time allowed to this task (by its tier)."""
        return self.config.timeout_for(self.assignment.tier)


Executor = Callable[[Job], Awaitable[Outcome]]
"""Runs a job to its outcome; raises :class:`ExecutorFailed` with the reason it could not.
Cancelling it stops the work at once (process group killed, HTTP request aborted)."""
