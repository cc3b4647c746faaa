"""Operator actions on tasks: submit, cancel, requeue and retry, one task or many,
and the resolving of abbreviated task ids they accept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from agentcom.errors import HubError
from agentcom.hub.queue import TASK_ID_LENGTH, TaskQueue
from agentcom.hub.scheduler import Scheduler
from agentcom.hub.views import HubViews
from agentcom.protocol.common import ACTIVE, Outbound, TaskStatus
from agentcom.protocol.operator import bulk_change, refused_change
from agentcom.protocol.outbound import TaskCancelled
from agentcom.protocol.task import Task, TaskSubmission, dumped_task
from agentcom.store.base import Store

__all__ = ["TASK_ID_PREFIX_MIN", "TaskOperations", "TaskOpsHub"]

TASK_ID_PREFIX_MIN = 6  # the shortest abbreviation of a task id that is looked up
_CANDIDATES_SHOWN = 10


class TaskOpsHub(Protocol):
    """What operator actions on tasks use of the hub's facade (``Hub`` is the one
    implementation): its parts and two commands."""

    queue: TaskQueue
    store: Store
    scheduler: Scheduler
    views: HubViews

    def push(self, agent_id: str, frame: Outbound) -> None:
        """Send a frame to an agent once the change is committed."""

    def release_agent(self, agent_id: str, schedule: bool = True) -> None:
        """The agent holds no task any more; then, unless told not to, schedule."""


class TaskOperations:
    """What operators do to tasks; each refusal is a ``HubError``.

    Args:
        hub: the domain the actions change (its queue, scheduler and outbox).
    """

    def __init__(self, hub: TaskOpsHub) -> None:
        self.hub = hub
        self.queue = hub.queue
        self.store = hub.store
        self.scheduler = hub.scheduler

    def submit(self, submission: TaskSubmission) -> Task:
        """Queue a new task and try to place it. Its prerequisites may be named by
        abbreviated ids (:meth:`resolve_task_id`); the queue names every unknown one."""
        if submission.depends_on:
            resolved = [self._prerequisite_id(task_id) for task_id in submission.depends_on]
            submission = submission.model_copy(update={"depends_on": resolved})
        task = self.queue.submit(submission)
        self.scheduler.schedule()
        return task

    def _prerequisite_id(self, task_id: str) -> str:
        """The full id of an abbreviated prerequisite; one that matches no task is left as
        given, for the queue to refuse with the other unknown ones."""
        try:
            return self.resolve_task_id(task_id)
        except HubError as error:
            if error.code == "not_found":
                return task_id
            raise

    def resolve_task_id(self, task_id: str) -> str:
        """The full id of the one task whose id starts with ``task_id`` (as git abbreviates).

        A full-length id is returned as it is. Raises ``invalid_task_id`` for a prefix
        shorter than :data:`TASK_ID_PREFIX_MIN`, ``not_found`` when no task matches and
        ``ambiguous_task_id``, naming the candidates, when several do.
        """
        if len(task_id) >= TASK_ID_LENGTH or task_id in self.queue.tasks:
            return task_id
        if len(task_id) < TASK_ID_PREFIX_MIN:
            raise HubError(
                "invalid_task_id",
                f"{task_id!r} is too short: give at least {TASK_ID_PREFIX_MIN} characters "
                "of a task id",
                task_id,
            )
        prefix = task_id.lower()  # ids are lower-case hex
        matches = self.store.task_ids_starting_with(prefix, _CANDIDATES_SHOWN + 1)
        if not matches:
            raise HubError("not_found", f"no task {task_id}", task_id)
        if len(matches) > 1:
            named = ", ".join(matches[:_CANDIDATES_SHOWN])
            more = " and more" if len(matches) > _CANDIDATES_SHOWN else ""
            raise HubError(
                "ambiguous_task_id", f"{task_id} matches several tasks: {named}{more}", task_id
            )
        return matches[0]

    def cancel(self, task_id: str) -> Task:
        """Cancel an unfinished task; its agent is freed."""
        task = self.queue.get(task_id)
        if task is None:
            self.hub.views.task(task_id)
            raise HubError("invalid_state", "task is already finished", task_id)
        holder = task.assigned_to if task.status in ACTIVE else None
        self.queue.cancel(task)
        if holder is not None:
            self.hub.push(holder, TaskCancelled(task_id=task_id))
            self.hub.release_agent(holder)
        return task

    def for_each_task(self, change: Callable[[str], Task], task_ids: list[str]) -> dict[str, Any]:
        """Apply ``change`` (``cancel``, ``retry``...) to each task on its own: one refusal
        does not stop the others. Returns ``changed`` (the tasks) and ``refused`` (the
        ``task_id``, ``error`` and ``message`` of each refusal)."""
        changed: list[dict[str, Any]] = []
        refused: list[dict[str, Any]] = []
        for task_id in dict.fromkeys(task_ids):
            try:
                changed.append(dumped_task(change(self.resolve_task_id(task_id))))
            except HubError as error:
                refused.append(refused_change(task_id, error.code, error.message))
        return bulk_change(changed, refused)

    def requeue(self, task_id: str) -> Task:
        """Take an assigned or working task from its agent and queue it again at once.

        The holder is told (``task_cancelled``) and is not offered the task again in the
        same scheduling round; the next assignment has a new generation, so a late report
        from the holder is refused.
        """
        task = self.queue.get(task_id)
        if task is None or task.status not in ACTIVE:
            status = (task or self.hub.views.find_task(task_id)).status.value
            raise HubError("invalid_state", f"task is {status}, not assigned or working", task_id)
        holder = task.assigned_to
        self.queue.requeue(task, f"requeued by an operator from {holder}")
        if holder is None:
            self.scheduler.schedule()
            return task
        self.hub.push(holder, TaskCancelled(task_id=task_id))
        self.hub.release_agent(holder, schedule=False)
        self.scheduler.schedule_excluding(holder)
        return task

    def retry_many(self, task_ids: list[str]) -> dict[str, Any]:
        """:meth:`retry` each task, prerequisites before their dependants among them, so a
        failed chain comes back whole in one request."""
        tasks: dict[str, Task] = {}
        unresolved: list[str] = []  # refused, and reported, by for_each_task
        for task_id in task_ids:
            try:
                task = self.hub.views.task(self.resolve_task_id(task_id))
            except HubError:
                unresolved.append(task_id)
                continue
            tasks[task.task_id] = task
        ordered: list[str] = []
        placed: set[str] = set()
        for first in tasks:
            stack = [(first, False)]  # (task id, its prerequisites are placed)
            while stack:
                task_id, ready = stack.pop()
                if task_id in placed:
                    continue
                if ready:
                    placed.add(task_id)
                    ordered.append(task_id)
                    continue
                stack.append((task_id, True))
                stack.extend((prerequisite, False) for prerequisite in
                             tasks[task_id].depends_on if prerequisite in tasks)  # fmt: skip
        return self.for_each_task(self.retry, ordered + unresolved)

    def retry(self, task_id: str) -> Task:
        """Move a dead-letter task back to the queue."""
        task = self.hub.views.task(task_id)
        if task.status is not TaskStatus.dead_letter:
            raise HubError(
                "invalid_state", f"task is {task.status.value}, not dead_letter", task_id
            )
        self.queue.retry_dead_letter(task)
        self.scheduler.schedule()
        return task
