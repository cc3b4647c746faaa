"""Operators waiting for tasks to finish (``task_wait``).

A wait is a connection matter, not a domain one: the domain reports the tasks that
finished with each settled change (``Effects.finished``), and the server wakes the
operators waiting for them once the change is committed.
"""

from __future__ import annotations

import asyncio

from agentcom.hub.hub import Hub
from agentcom.protocol.task import Task

__all__ = ["TaskWaiters"]


class TaskWaiters:
    """The futures of operators waiting for tasks to finish, by task id.

    Args:
        hub: the domain, asked whether a task is still unfinished.
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._waiters: dict[str, list[asyncio.Future[Task]]] = {}

    def wait_until_finished(self, task_id: str) -> asyncio.Future[Task]:
        """A future resolved with the task once it is completed, dead letter or cancelled.

        Raises:
            HubError: ``not_found`` when no task has this id.
        """
        waiter: asyncio.Future[Task] = asyncio.get_running_loop().create_future()
        if self.hub.queue.get(task_id) is None:  # finished, or raises not_found
            waiter.set_result(self.hub.views.task(task_id))
            return waiter
        self._waiters.setdefault(task_id, []).append(waiter)
        return waiter

    def forget(self, task_id: str, waiter: asyncio.Future[Task]) -> None:
        """Drop a waiter that is done or gave up (its request timed out, or its connection
        went); one already resolved is gone already."""
        waiters = self._waiters.get(task_id)
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._waiters[task_id]

    def resolve(self, finished: list[Task]) -> None:
        """Wake operators waiting for these tasks to finish (call after commit)."""
        for task in finished:
            for waiter in self._waiters.pop(task.task_id, ()):
                if not waiter.done():
                    waiter.set_result(task)

    def count(self) -> int:
        """Operators' ``task_wait`` requests waiting now."""
        return sum(len(waiters) for waiters in self._waiters.values())
