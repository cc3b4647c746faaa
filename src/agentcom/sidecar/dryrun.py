"""``--dry-run``: accept every task and complete it without running anything.

For trying a hub, a routing setup or a dashboard without executing work: the task's
output says what would have run (the shell command, or the target and model), one
``dry_run`` event is streamed, and no cost is reported.
"""

from __future__ import annotations

from agentcom.sidecar.job import Job, Outcome

__all__ = ["run_dry"]


async def run_dry(job: Job) -> Outcome:
    """What the job would run, as its output; nothing is run."""
    assignment = job.assignment
    target = assignment.target.value if assignment.target else "no routing decision"
    if assignment.shell_command is not None:
        would = f"shell command {assignment.shell_command!r}"
    elif assignment.model:
        would = f"{target} with model {assignment.model}"
    else:
        would = target
    output = f"dry run: would have run {would}; nothing was run\n"
    job.progress.emit("dry_run", output)
    return Outcome("success", output, model_used="dry-run")
