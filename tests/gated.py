"""An agent whose tasks finish when the test says so, on our client's reconnecting loop.

Not a test module; test modules import it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import METADATA

from agentcom.client import AgentClient

__all__ = ["Frame", "GatedSidecar"]

Frame = dict[str, Any]


class GatedSidecar:
    """An agent on :meth:`AgentClient.run` whose tasks finish only when the test says so.

    Each assigned task is accepted (:meth:`AgentClient.deliver`) and then offered to the
    test (:meth:`next_assign`); it waits for :meth:`finish`, then is completed with its
    assigned generation; the hub's answer to the completion is kept in :attr:`answers`.
    """

    def __init__(self, url: str, agent_id: str, token: str, **options: Any) -> None:
        self.client = AgentClient(url, agent_id, token, heartbeat_s=None, **options)
        self.assigned: asyncio.Queue[Frame] = asyncio.Queue()
        self.answers: dict[tuple[str, int], asyncio.Future[Frame]] = {}
        self._release: dict[str, asyncio.Event] = {}
        self._jobs: set[asyncio.Task[None]] = set()
        self.runner = asyncio.create_task(self.client.run(self.on_frame))

    async def on_frame(self, client: AgentClient, frame: Frame) -> None:
        if frame.get("type") == "task_assign":
            self.answers[frame["task_id"], frame["generation"]] = asyncio.Future()
            job = asyncio.create_task(self.run_task(frame))
            self._jobs.add(job)
            job.add_done_callback(self._jobs.discard)

    async def run_task(self, assign: Frame) -> None:
        task_id, generation = assign["task_id"], assign["generation"]
        release = self._release.setdefault(task_id, asyncio.Event())
        await self.client.deliver({"type": "task_accepted", "task_id": task_id})
        await self.assigned.put(assign)
        await release.wait()
        answer = await self.client.deliver(
            {"type": "task_complete", "task_id": task_id, "generation": generation,
             "result": METADATA}
        )  # fmt: skip
        self.answers[task_id, generation].set_result(answer)

    def finish(self, task_id: str) -> None:
        self._release.setdefault(task_id, asyncio.Event()).set()

    async def answer(self, task_id: str, generation: int, timeout: float = 20.0) -> Frame:
        """The hub's answer to the completion of that attempt."""
        return await asyncio.wait_for(asyncio.shield(self.answers[task_id, generation]), timeout)

    async def next_assign(self, timeout: float = 20.0) -> Frame:
        """The next ``task_assign``, once the hub has acknowledged its acceptance."""
        return await asyncio.wait_for(self.assigned.get(), timeout)

    async def close(self) -> None:
        await self.client.close()
        for job in [*self._jobs, self.runner]:
            job.cancel()
        await asyncio.gather(*self._jobs, self.runner, return_exceptions=True)
