"""What an agentic run reports about itself, kept with its task.

A sidecar running a model that calls tools in a loop streams two ``tool_call``
execution events per call (the call with ``args_summary``, then its ``result_summary``)
and ends with ``termination_reason`` and ``iterations_used`` in its ``task_complete``
result. The hub pairs each call with its result, keeps the latest ones per task, and
saves them with the task's next transition (like progress, they cost no write each).
"""

from __future__ import annotations

from agentcom.protocol.agent import ExecutionEvent, ExecutionResult
from agentcom.protocol.task import AgenticRun, Task, ToolCall

__all__ = ["record_termination", "record_tool_call"]


def record_tool_call(task: Task, event: ExecutionEvent, now_ms: int, kept: int) -> None:
    """Note one ``tool_call`` event: a result completes the call it answers (same tool,
    same iteration, no result yet), anything else is a new call. Only the latest
    ``kept`` calls are kept; ``tool_calls_total`` counts them all."""
    run = task.agentic = task.agentic or AgenticRun()
    calls = run.tool_calls
    last = calls[-1] if calls else None
    if (
        event.result_summary is not None
        and event.args_summary is None
        and last is not None
        and last.result_summary is None
        and (last.tool_name, last.iteration) == (event.tool_name, event.iteration)
    ):
        last.result_summary = event.result_summary
        return
    run.tool_calls_total += 1
    if kept == 0:
        return
    calls.append(
        ToolCall(
            tool_name=event.tool_name,
            args_summary=event.args_summary,
            result_summary=event.result_summary,
            iteration=event.iteration,
            at=now_ms,
        )
    )
    if len(calls) > kept:
        del calls[: len(calls) - kept]


def record_termination(task: Task, result: ExecutionResult) -> None:
    """Keep why and after how many iterations an agentic run stopped, if it says."""
    if result.termination_reason is None and result.iterations_used is None:
        return
    run = task.agentic = task.agentic or AgenticRun()
    run.termination_reason = result.termination_reason
    run.iterations_used = result.iterations_used
