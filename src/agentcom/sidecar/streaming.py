"""What the Ollama and Claude executors share: one streaming POST, its failures as reasons.

Every way a model endpoint can fail (refused connection, an HTTP error status, silence
past the read timeout, a stream cut short) becomes an
:class:`~agentcom.sidecar.job.ExecutorFailed` whose message says what happened, so the hub
records the reason and can retry elsewhere. Cancelling the executor closes the request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx

from agentcom.sidecar.job import ExecutorFailed, Job

__all__ = ["Answer", "streamed_lines"]

_CONNECT_TIMEOUT_S = 10.0
_ERROR_BODY_CHARS = 500


class Answer:
    """A model's answer as it streams: kept up to ``limit`` characters, and streamed."""

    def __init__(self, job: Job, limit: int) -> None:
        self.job = job
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0
        self.cut = False

    def add(self, text: str) -> None:
        """Stream ``text`` as a ``token`` event and keep it (up to the limit)."""
        if not text:
            return
        self.job.progress.emit("token", text)
        room = self.limit - self.size
        if len(text) > room:
            self.cut = True
            text = text[: max(room, 0)]
        self.parts.append(text)
        self.size += len(text)

    def text(self) -> str:
        """The answer (cut at the limit)."""
        return "".join(self.parts)


@asynccontextmanager
async def streamed_lines(
    job: Job, what: str, url: str, body: Mapping[str, Any], headers: Mapping[str, str]
) -> AsyncIterator[AsyncIterator[str]]:
    """POST ``body`` as JSON to ``url`` and yield the response's lines as they arrive.

    ``what`` names the endpoint in failure reasons (``ollama at http://...``).

    Raises:
        ExecutorFailed: the request failed, or answered with an error status.
    """
    timeout = httpx.Timeout(job.config.request_timeout_s, connect=_CONNECT_TIMEOUT_S)
    try:
        async with (
            httpx.AsyncClient(timeout=timeout) as client,
            client.stream("POST", url, json=dict(body), headers=dict(headers)) as response,
        ):
            if response.status_code != 200:
                detail = (await response.aread()).decode(errors="replace")[:_ERROR_BODY_CHARS]
                raise ExecutorFailed(f"{what} answered HTTP {response.status_code}: {detail}")
            yield response.aiter_lines()
    except httpx.TimeoutException:
        raise ExecutorFailed(f"{what} was silent for {job.config.request_timeout_s:g} s") from None
    except httpx.TransportError as exc:
        raise ExecutorFailed(f"{what} failed: {type(exc).__name__}: {exc}") from None
