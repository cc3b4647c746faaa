"""Streamed output, coalesced: at most one ``task_progress`` per interval and event type.

A command that prints a million lines, or a model that emits a token at a time, must not
become a million frames. Executors :meth:`~ProgressStream.emit` text as it comes; a
background task sends what accumulated at most once per ``interval_s``, one
``task_progress`` per event type (``stdout``, ``stderr``, ``token`` ...), each carrying
at most ``max_chars`` characters. What does not fit in one interval is left out of the
stream, and the event says how many characters were (``dropped_chars``); the executors
keep the output's tail for the result themselves.

A run that prints nothing for ``keepalive_s`` still sends a bare ``task_progress`` (no
event) at that interval: the hub reclaims a task that shows no progress for a while
(5 minutes by default), and a silent command must not look like a dead one.

Progress is fire and forget: a frame that cannot be sent (the connection is down) is
lost, which only thins the live view.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.exceptions import ConnectionClosed

__all__ = ["ProgressStream", "Sender"]

Sender = Callable[[dict[str, Any]], Awaitable[None]]


class _Pending:
    __slots__ = ("dropped", "parts", "size")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.dropped = 0


class ProgressStream:
    """Coalesces one task's output into rate-limited ``task_progress`` frames.

    Args:
        send: sends one frame (may raise when disconnected: the frame is then dropped).
        task_id: the task the frames are about.
        interval_s: the least time between two sends.
        max_chars: text per execution event; the rest of an interval's text is dropped.
        keepalive_s: the longest time without a frame while the run is silent (None: no
            keepalive).
    """

    def __init__(
        self,
        send: Sender,
        task_id: str,
        interval_s: float,
        max_chars: int,
        keepalive_s: float | None = None,
    ) -> None:
        self._send = send
        self.task_id = task_id
        self.interval_s = interval_s
        self.max_chars = max_chars
        self.keepalive_s = keepalive_s
        self._pending: dict[str, _Pending] = {}
        self._ready = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self.frames_sent = 0

    def start(self) -> None:
        """Start sending (call from the event loop)."""
        self._flusher = asyncio.create_task(self._flush_periodically())

    def emit(self, event_type: str, text: str) -> None:
        """Queue ``text`` as output of ``event_type``; never blocks."""
        pending = self._pending.setdefault(event_type, _Pending())
        room = self.max_chars - pending.size
        if room > 0:
            pending.parts.append(text[:room])
            pending.size += min(len(text), room)
        pending.dropped += max(0, len(text) - max(room, 0))
        self._ready.set()

    async def _flush_periodically(self) -> None:
        while True:
            try:
                # Not wait_for: on Python 3.11 it can swallow the cancel close() sends.
                async with asyncio.timeout(self.keepalive_s):
                    await self._ready.wait()
            except TimeoutError:
                await self._send_quietly({"type": "task_progress", "task_id": self.task_id})
                continue
            await self._flush()
            await asyncio.sleep(self.interval_s)

    async def _send_quietly(self, frame: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed, RuntimeError, OSError):
            await self._send(frame)
            self.frames_sent += 1

    async def _flush(self) -> None:
        self._ready.clear()
        pending, self._pending = self._pending, {}
        for event_type, part in pending.items():
            event: dict[str, Any] = {
                "event_type": event_type,
                "text": "".join(part.parts),
                "timestamp": int(time.time() * 1000),
            }
            if part.dropped:
                event["dropped_chars"] = part.dropped
            frame = {"type": "task_progress", "task_id": self.task_id, "execution_event": event}
            await self._send_quietly(frame)

    async def close(self) -> None:
        """Stop the periodic sends and send what is left."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._pending:
            await self._flush()
