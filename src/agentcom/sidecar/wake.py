"""The ``wake`` executor: run the configured wake command, report it with ``wake_result``.

A wake task is meant for an agent process outside the sidecar (an editor session, a
long-lived assistant): the sidecar only wakes it. The configured ``wake_command`` runs
like a shell task (work directory, own process group, streamed output, tier timeout),
with the task in its environment: ``AGENTCOM_TASK_ID``, ``AGENTCOM_TASK_GENERATION`` and
``AGENTCOM_TASK_DESCRIPTION``. Its outcome is sent as ``wake_result`` and is the task's
outcome. No wake command configured fails the task at once.
"""

from __future__ import annotations

import contextlib

from websockets.exceptions import ConnectionClosed

from agentcom.sidecar.job import ExecutorFailed, Job, Outcome
from agentcom.sidecar.shell import run_command

__all__ = ["NO_WAKE_COMMAND", "run_wake"]

NO_WAKE_COMMAND = "no wake command: start the sidecar with --wake-command to run wake tasks"


async def run_wake(job: Job) -> Outcome:
    """Run the wake command for the job (see the module docstring)."""
    command = job.config.wake_command
    if not command:
        raise ExecutorFailed(NO_WAKE_COMMAND)
    assignment = job.assignment
    env = {
        "AGENTCOM_TASK_ID": assignment.task_id,
        "AGENTCOM_TASK_GENERATION": str(assignment.generation),
        "AGENTCOM_TASK_DESCRIPTION": assignment.description,
    }
    outcome = await run_command(job, command, env)
    report = {"type": "wake_result", "task_id": assignment.task_id, "status": outcome.status,
              "attempt": 1}  # fmt: skip
    if outcome.error:
        report["error"] = outcome.error[:2000]
    if job.send is not None:
        with contextlib.suppress(ConnectionClosed, RuntimeError, OSError):
            await job.send(report)
    return outcome
