"""From an assignment to its ``task_complete`` frame: choose the executor, run it, time it.

The routing decision's ``target_type`` names the executor (:data:`EXECUTORS`); a task
without a decision runs its shell command if it has one. Whatever goes wrong becomes a
failed outcome whose error says what: the hub records it and decides on a retry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from agentcom.protocol.common import TargetType
from agentcom.sidecar.claude import run_claude
from agentcom.sidecar.dryrun import run_dry
from agentcom.sidecar.job import Assignment, Executor, ExecutorFailed, Job, Outcome
from agentcom.sidecar.ollama import run_ollama
from agentcom.sidecar.shell import NO_COMMAND, run_shell
from agentcom.sidecar.wake import run_wake

__all__ = ["EXECUTORS", "choose_executor", "completion_frame", "execute"]

logger = logging.getLogger(__name__)

EXECUTORS: dict[TargetType, Executor] = {
    TargetType.sidecar: run_shell,
    TargetType.ollama: run_ollama,
    TargetType.claude: run_claude,
    TargetType.wake: run_wake,
}
"""The executor of each routing target."""

MAX_ERROR_CHARS = 2000
"""An outcome's error is cut to this (the hub keeps 2,000 characters of a reason)."""


def choose_executor(
    assignment: Assignment, executors: Mapping[TargetType, Executor], dry_run: bool
) -> Executor:
    """The executor for ``assignment``; raises :class:`ExecutorFailed` when none fits."""
    if dry_run:
        return run_dry
    if assignment.target is None:
        if assignment.shell_command is None:
            raise ExecutorFailed(f"no routing decision, and {NO_COMMAND}")
        return run_shell
    executor = executors.get(assignment.target)
    if executor is None:
        raise ExecutorFailed(f"this sidecar cannot run {assignment.target.value} tasks")
    return executor


async def execute(job: Job, executors: Mapping[TargetType, Executor]) -> tuple[Outcome, int]:
    """Run ``job`` with its executor, streaming its progress; the outcome and its run time
    in milliseconds. Cancelling stops the executor (and the progress stream)."""
    started = time.monotonic()
    job.progress.start()
    try:
        executor = choose_executor(job.assignment, executors, job.config.dry_run)
        outcome = await executor(job)
    except ExecutorFailed as exc:
        outcome = Outcome("failed", error=str(exc))
    except Exception as exc:
        logger.exception("task %s: the executor crashed", job.assignment.task_id)
        outcome = Outcome("failed", error=f"executor error: {exc!r}")
    finally:
        await job.progress.close()
    if outcome.error is not None:
        outcome.error = outcome.error[:MAX_ERROR_CHARS]
    return outcome, round((time.monotonic() - started) * 1000)


def completion_frame(assignment: Assignment, outcome: Outcome, execution_ms: int) -> dict[str, Any]:
    """The ``task_complete`` reporting ``outcome`` (``result.status`` says if it failed)."""
    completion: dict[str, Any] = {
        "type": "task_complete",
        "task_id": assignment.task_id,
        "generation": assignment.generation,
        "result": outcome.result(execution_ms),
    }
    if outcome.tokens_in is not None or outcome.tokens_out is not None:
        completion["tokens_used"] = (outcome.tokens_in or 0) + (outcome.tokens_out or 0)
    return completion
