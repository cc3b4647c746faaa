"""Frames a test collects in the background, and a wait for the one it expects."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

Frame = dict[str, Any]


class Recorded:
    """Frames recorded as they come (:meth:`add`), and waited for (:meth:`wait_for`)."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self._changed = asyncio.Condition()

    async def add(self, frame: Frame) -> None:
        """Record a frame and wake those waiting for one."""
        async with self._changed:
            self.frames.append(frame)
            self._changed.notify_all()

    async def wait_for(self, match: Callable[[Frame], bool], timeout: float = 20.0) -> Frame:
        """The first frame (recorded already or to come) that ``match`` accepts."""
        async with asyncio.timeout(timeout), self._changed:
            while True:
                found = next((frame for frame in self.frames if match(frame)), None)
                if found is not None:
                    return found
                await self._changed.wait()
