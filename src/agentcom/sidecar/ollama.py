"""The ``ollama`` executor: Ollama's streaming chat API on the routing decision's endpoint.

``POST /api/chat`` with the task's description as the user message and ``stream: true``;
Ollama answers one JSON object per line, each with a piece of the answer
(``message.content``), the last with ``done: true`` and its token counts
(``prompt_eval_count``, ``eval_count``). The pieces are streamed as ``token`` events
(coalesced); the result reports the model, Ollama's own counts, cost 0 and what the same
tokens would cost on Claude (see :mod:`~agentcom.sidecar.prices`). An endpoint that cannot
be reached, answers an error, or ends its stream before ``done`` fails the run with the
reason.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from agentcom.sidecar.job import ExecutorFailed, Job, Outcome
from agentcom.sidecar.prices import EQUIVALENT_CLAUDE_MODEL, claude_cost_usd
from agentcom.sidecar.streaming import Answer, streamed_lines

__all__ = ["endpoint_url", "run_ollama"]


def endpoint_url(endpoint: str) -> str:
    """``host:port`` (as the hub names an endpoint) or a URL → the base URL."""
    endpoint = endpoint.rstrip("/")
    return endpoint if "://" in endpoint else f"http://{endpoint}"


def _chunk(line: str, what: str) -> dict[str, Any]:
    try:
        chunk = json.loads(line)
    except ValueError:
        raise ExecutorFailed(f"{what} sent a line that is not JSON: {line[:200]}") from None
    if not isinstance(chunk, dict):
        raise ExecutorFailed(f"{what} sent {line[:200]}")
    if "error" in chunk:
        raise ExecutorFailed(f"{what} failed: {chunk['error']}")
    return chunk


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None


async def run_ollama(job: Job) -> Outcome:
    """Run the job on Ollama (see the module docstring)."""
    assignment = job.assignment
    endpoint = assignment.endpoint or job.config.ollama_url
    if not endpoint:
        raise ExecutorFailed("no Ollama endpoint: the routing decision names none")
    if not assignment.model:
        raise ExecutorFailed("no model: the routing decision names none")
    base = endpoint_url(endpoint)
    what = f"ollama at {base}"
    body = {
        "model": assignment.model,
        "messages": [{"role": "user", "content": assignment.description}],
        "stream": True,
    }
    answer = Answer(job, job.config.max_answer_chars)
    final: dict[str, Any] | None = None
    try:
        async with (
            asyncio.timeout(job.timeout_s),
            streamed_lines(job, what, f"{base}/api/chat", body, {}) as lines,
        ):
            async for line in lines:
                if not line.strip():
                    continue
                chunk = _chunk(line, what)
                message = chunk.get("message") or {}
                answer.add(str(message.get("content") or ""))
                if chunk.get("done"):
                    final = chunk
                    break
    except TimeoutError:
        raise ExecutorFailed(f"timed out after {job.timeout_s:g} s ({what})") from None
    if final is None:
        raise ExecutorFailed(f"{what} ended its stream before it was done")
    tokens_in, tokens_out = _count(final.get("prompt_eval_count")), _count(final.get("eval_count"))
    equivalent = None
    if tokens_in is not None and tokens_out is not None:
        equivalent = claude_cost_usd(EQUIVALENT_CLAUDE_MODEL, tokens_in, tokens_out)
    return Outcome(
        "success",
        answer.text(),
        model_used=str(final.get("model") or assignment.model),
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        estimated_cost_usd=0.0,
        equivalent_claude_cost_usd=equivalent,
        extra={"output_cut": True} if answer.cut else {},
    )
