"""The task object of PROTOCOL.md section 2, and what an operator submits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr

from agentcom.protocol.common import (
    JsonObject,
    Priority,
    RequestedTier,
    TaskId,
    TaskStatus,
    dumped_or_none,
    not_blank,
)
from agentcom.protocol.outbound import Complexity, RoutingDecision

__all__ = [
    "LISTED_WITHOUT",
    "MAX_PREREQUISITES",
    "RESULT_PREVIEW_CHARS",
    "TASK_CURSOR_PATTERN",
    "AgenticRun",
    "ExecutionMetadata",
    "HistoryEntry",
    "ReclaimReason",
    "ResultSummary",
    "StoredState",
    "Task",
    "TaskHold",
    "TaskSubmission",
    "ToolCall",
    "dumped_task",
    "listed_task",
    "parse_task_cursor",
    "task_body",
    "task_cursor",
    "task_from_body",
    "task_from_submission",
]


class ExecutionMetadata(BaseModel):
    """Typed execution figures reported by ``task_complete``."""

    model_used: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    estimated_cost_usd: float | None = None
    equivalent_claude_cost_usd: float | None = None
    execution_ms: float | None = None


class ToolCall(BaseModel):
    """One tool call of an agentic run: the call and, once reported, its result."""

    tool_name: str | None = None
    args_summary: str | None = None
    result_summary: str | None = None
    iteration: int | None = None
    at: int


class AgenticRun(BaseModel):
    """What an agentic run (a model calling tools in a loop) reported for the current
    attempt: its latest tool calls, and why and after how many iterations it stopped."""

    termination_reason: str | None = None
    iterations_used: int | None = None
    tool_calls_total: int = 0
    tool_calls: list[ToolCall] = Field(
        default_factory=list
    )  # the latest ``tool_calls_kept``, oldest first


class HistoryEntry(BaseModel):
    """One transition of a task."""

    status: str
    at: int
    detail: str | None = None


#: What takes a held task back: the disconnect grace (the agent stays away), or, for an
#: agent that came back, the acceptance timeout or the no-progress reclaim.
ReclaimReason = Literal["disconnect_grace", "acceptance_timeout", "no_progress"]


class TaskHold(BaseModel):
    """A task the hub keeps for an agent whose connection ended while it held the task.

    The hold starts when that connection ends (or when the hub restarts with the task
    assigned) and lasts until the agent reports on the task (accepts it, reports progress,
    completes, fails, rejects or recovers it) or the hub takes it back at ``reclaim_at``.
    """

    task_id: str
    agent_id: str
    since: int  # when the connection that held the task ended, or the hub restarted
    agent_connected: bool  # the agent identified again and is busy with this task
    reclaim_at: int  # when a sweep requeues the task if nothing settles it first
    reclaim_reason: ReclaimReason  # the timeout that requeues it then


Line = Annotated[str, Field(max_length=2_000)]

#: Most prerequisites one task may name in ``depends_on``.
MAX_PREREQUISITES = 100


class TaskSubmission(BaseModel):
    """What an operator submits; everything but the description has a default."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    description: Annotated[str, Field(min_length=1, max_length=10_000), AfterValidator(not_blank)]
    priority: Priority = Priority.normal
    complexity_tier: RequestedTier | None = None
    needed_capabilities: Annotated[
        list[Annotated[str, Field(max_length=256)]], Field(max_length=64)
    ] = Field(default_factory=list)
    metadata: JsonObject = Field(default_factory=dict)
    max_retries: Annotated[int, Field(ge=0, le=100)] | None = None
    repo: Annotated[str, Field(max_length=512)] | None = None
    branch: Annotated[str, Field(max_length=256)] | None = None
    file_hints: Annotated[list[Line], Field(max_length=200)] = Field(default_factory=list)
    success_criteria: Annotated[list[Line], Field(max_length=100)] = Field(default_factory=list)
    verification_steps: Annotated[list[Line], Field(max_length=100)] = Field(default_factory=list)
    skip_verification: bool = False
    # At most 2^53: sidecars read it as a JavaScript number.
    verification_timeout_ms: Annotated[int, Field(ge=0, le=2**53)] | None = None
    # Tasks that must complete first; each must exist when this one is submitted.
    depends_on: Annotated[list[TaskId], Field(max_length=MAX_PREREQUISITES)] = Field(
        default_factory=list
    )


StoredState = tuple[str, int, str | None]
"""A task row's ``(status, generation, assigned_to)``: what a shared queue fences on."""


class Task(BaseModel):
    """A task as stored, returned by the API and carried in events."""

    model_config = ConfigDict(validate_assignment=False)

    task_id: str
    status: TaskStatus
    priority: Priority
    description: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    needed_capabilities: list[str] = Field(default_factory=list)
    complexity: Complexity | None = None
    complexity_tier: RequestedTier | None = None
    routing_decision: RoutingDecision | None = None
    assigned_to: str | None = None
    assigned_at: int | None = None
    generation: int = 0
    retry_count: int = 0
    max_retries: int = 3
    last_error: str | None = None
    result: dict[str, Any] | None = None
    execution: ExecutionMetadata | None = None
    tokens_used: int | None = None
    verification_report: dict[str, Any] | None = None
    agentic: AgenticRun | None = None
    repo: str | None = None
    branch: str | None = None
    file_hints: list[str] = Field(default_factory=list)
    success_criteria: list[str] = Field(default_factory=list)
    verification_steps: list[str] = Field(default_factory=list)
    skip_verification: bool = False
    verification_timeout_ms: int | None = None
    progress: int | None = None
    depends_on: list[str] = Field(default_factory=list)  # prerequisites, as submitted
    # Computed when read, never stored: prerequisites not completed yet (queued tasks),
    # and the tasks that name this one in their depends_on (oldest first, capped).
    waiting_for: list[str] | None = None
    dependants: list[str] | None = None
    dependants_total: int | None = None
    waiting_reason: str | None = None
    held_for: TaskHold | None = None  # computed when read, never stored
    last_progress_at: int | None = None
    history: list[HistoryEntry] = Field(default_factory=list)
    created_at: int
    updated_at: int
    # The (status, generation, assigned_to) of the stored row this object was read from
    # or last written as; None for a task never stored. Hub nodes sharing a database write
    # a task only where its row still is in that state (store/sqlwrites.py).
    _stored_as: StoredState | None = PrivateAttr(default=None)

    def stored_state(self) -> StoredState:
        """What a conditional write checks of a row: status, generation and owner."""
        return (self.status._value_, self.generation, self.assigned_to)


def dumped_task(task: Task) -> dict[str, Any]:
    """A task's wire shape: the JSON object operators and the HTTP API get of a task."""
    return task.model_dump(mode="json")


#: A task as JSON text, the object of :func:`dumped_task`, as a store keeps it. Bound
#: straight to pydantic's encoder: every change of a task writes one.
task_body: Callable[[Task], str] = Task.model_dump_json

#: The task a store kept as :func:`task_body`.
task_from_body: Callable[[str], Task] = Task.model_validate_json


_SUBMITTED_AS_IS = tuple(
    name for name in TaskSubmission.model_fields if name not in ("max_retries", "depends_on")
)
"""The submission's fields a new task takes unchanged."""


def task_from_submission(
    submission: TaskSubmission,
    task_id: str,
    now: int,
    *,
    depends_on: list[str],
    max_retries: int | None = None,
) -> Task:
    """A queued task made of a submission, created at ``now``; ``max_retries`` None keeps
    the model's default."""
    fields: dict[str, Any] = {name: getattr(submission, name) for name in _SUBMITTED_AS_IS}
    if max_retries is not None:
        fields["max_retries"] = max_retries
    return Task(task_id=task_id, status=TaskStatus.queued, depends_on=depends_on,
                created_at=now, updated_at=now, **fields)  # fmt: skip


LISTED_WITHOUT = frozenset({"result", "verification_report", "agentic"})
"""Fields a task list leaves out: a sidecar may make each as large as a frame (``agentic``
as large as ``tool_calls_kept`` calls)."""

RESULT_PREVIEW_CHARS = 200
"""Characters of a result's ``output`` a task list repeats."""

TASK_CURSOR_PATTERN = r"^[0-9]{1,16}\.[0-9]{1,19}$"
"""A page cursor: where the previous page of a task list ended."""


class ResultSummary(BaseModel):
    """What a task list says of a result: ``task_get`` returns it whole."""

    status: str | None = None
    output_preview: str | None = None
    output_chars: int | None = None

    @classmethod
    def of(cls, result: dict[str, Any] | None) -> ResultSummary | None:
        """The summary of a result held in memory (None for none)."""
        if result is None:
            return None
        status, output = result.get("status"), result.get("output")
        if not isinstance(output, str):
            return cls(status=status if isinstance(status, str) else None)
        return cls(
            status=status if isinstance(status, str) else None,
            output_preview=output[:RESULT_PREVIEW_CHARS],
            output_chars=len(output),
        )


def listed_task(task: Task, summary: ResultSummary | None) -> dict[str, Any]:
    """A task as lists carry it: without :data:`LISTED_WITHOUT`, with ``result_summary``."""
    listed = task.model_dump(mode="json", exclude=set(LISTED_WITHOUT))
    listed["result_summary"] = dumped_or_none(summary)
    return listed


def task_cursor(updated_at: int, position: int) -> str:
    """The cursor of the page that follows a task updated at ``updated_at``."""
    return f"{updated_at}.{position}"


def parse_task_cursor(cursor: str) -> tuple[int, int]:
    """``(updated_at, position)`` of a cursor matching :data:`TASK_CURSOR_PATTERN`."""
    updated_at, _, position = cursor.partition(".")
    return int(updated_at), int(position)
