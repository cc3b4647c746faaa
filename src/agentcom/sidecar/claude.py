"""The ``claude`` executor: the Claude Messages API, streamed (server-sent events).

``POST $ANTHROPIC_BASE_URL/v1/messages`` (default ``https://api.anthropic.com``) with the
key from ``ANTHROPIC_API_KEY``, as Anthropic's own SDK reads them, the routing decision's
model (``claude-sonnet-4.5`` is sent as the API's alias ``claude-sonnet-4-5``), the task's
description as the user message and ``stream: true``. Text deltas are streamed as
``token`` events (coalesced); ``message_start`` and ``message_delta`` carry the real
token counts, priced from :mod:`~agentcom.sidecar.prices`. No key is a failure at once,
never a hang; an ``error`` event, an HTTP error or a stream that ends before
``message_stop`` fails the run with the reason.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from typing import Any

from agentcom.sidecar.job import ExecutorFailed, Job, Outcome
from agentcom.sidecar.prices import claude_cost_usd, normalise
from agentcom.sidecar.streaming import Answer, streamed_lines

__all__ = ["API_VERSION", "DEFAULT_BASE_URL", "NO_KEY", "run_claude"]

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
NO_KEY = "no Claude API key: set ANTHROPIC_API_KEY in the sidecar's environment"


class _Usage:
    """Token counts and the served model, updated from the stream's events."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.tokens_in: int | None = None
        self.tokens_out: int | None = None
        self.stopped = False

    def update(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        if isinstance(usage.get("input_tokens"), int):
            self.tokens_in = usage["input_tokens"]
        if isinstance(usage.get("output_tokens"), int):
            self.tokens_out = usage["output_tokens"]  # cumulative in message_delta


def _handle(event: dict[str, Any], usage: _Usage, answer: Answer, what: str) -> None:
    kind = event.get("type")
    if kind == "message_start":
        message = event.get("message") or {}
        usage.model = str(message.get("model") or usage.model)
        usage.update(message.get("usage"))
    elif kind == "content_block_delta":
        delta = event.get("delta") or {}
        if delta.get("type") == "text_delta":
            answer.add(str(delta.get("text") or ""))
    elif kind == "message_delta":
        usage.update(event.get("usage"))
    elif kind == "message_stop":
        usage.stopped = True
    elif kind == "error":
        error = event.get("error") or {}
        raise ExecutorFailed(f"{what} failed: {error.get('type')}: {error.get('message')}")


async def run_claude(job: Job, environ: Mapping[str, str] | None = None) -> Outcome:
    """Run the job on Claude (see the module docstring)."""
    environ = os.environ if environ is None else environ
    key = environ.get("ANTHROPIC_API_KEY")
    if not key:
        raise ExecutorFailed(NO_KEY)
    base = (environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    model = normalise(job.assignment.model or job.config.claude_model)
    what = f"the Claude API at {base}"
    body = {
        "model": model,
        "max_tokens": job.config.claude_max_tokens,
        "messages": [{"role": "user", "content": job.assignment.description}],
        "stream": True,
    }
    headers = {"x-api-key": key, "anthropic-version": API_VERSION}
    usage, answer = _Usage(model), Answer(job, job.config.max_answer_chars)
    try:
        async with (
            asyncio.timeout(job.timeout_s),
            streamed_lines(job, what, f"{base}/v1/messages", body, headers) as lines,
        ):
            async for line in lines:
                if not line.startswith("data:"):
                    continue  # "event:" names repeat the data's type; blank lines end events
                try:
                    event = json.loads(line[5:])
                except ValueError:
                    raise ExecutorFailed(f"{what} sent data that is not JSON") from None
                if isinstance(event, dict):
                    _handle(event, usage, answer, what)
                if usage.stopped:
                    break
    except TimeoutError:
        raise ExecutorFailed(f"timed out after {job.timeout_s:g} s ({what})") from None
    if not usage.stopped:
        raise ExecutorFailed(f"{what} ended its stream before message_stop")
    cost = None
    if usage.tokens_in is not None and usage.tokens_out is not None:
        cost = claude_cost_usd(usage.model, usage.tokens_in, usage.tokens_out)
    return Outcome(
        "success",
        answer.text(),
        model_used=usage.model,
        tokens_in=usage.tokens_in,
        tokens_out=usage.tokens_out,
        estimated_cost_usd=cost,
        equivalent_claude_cost_usd=cost,
        extra={"output_cut": True} if answer.cut else {},
    )
