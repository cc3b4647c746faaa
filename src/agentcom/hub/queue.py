"""The task state machine and the queue order (PROTOCOL.md section 2).

Unfinished tasks live in memory; every change is staged to the store at once and
made durable by the caller's next commit. Finished tasks are dropped from memory.
"""

from __future__ import annotations

import itertools
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from agentcom.errors import HubError
from agentcom.hub.clock import Clock
from agentcom.hub.dependencies import DependencyIndex
from agentcom.protocol.common import (
    ACTIVE,
    PRIORITY_RANK,
    TERMINAL,
    Priority,
    TaskStatus,
    dumped_or_none,
)
from agentcom.protocol.outbound import Complexity, RoutingDecision
from agentcom.protocol.task import HistoryEntry, Task, TaskSubmission, task_from_submission
from agentcom.store.base import Store

__all__ = ["TASK_ID_LENGTH", "EventSink", "TaskQueue", "new_task_id"]

# (event name, task, extra fields) -> None
EventSink = Callable[[str, Task, dict[str, Any]], None]


TASK_ID_LENGTH = 32  # characters of a task id: 128 random bits in hex


class _Entropy:
    """Random bytes from the operating system, read a page at a time: one system call
    per 256 task ids instead of one each."""

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def take(self, size: int) -> bytes:
        if self._at + size > len(self._pool):
            self._pool, self._at = os.urandom(4096), 0
        self._at += size
        return self._pool[self._at - size : self._at]


_entropy = _Entropy()


def new_task_id() -> str:
    """A random, unguessable task id (128 bits, lower-case hex)."""
    return _entropy.take(TASK_ID_LENGTH // 2).hex()


class TaskQueue:
    """Owns unfinished tasks, their order and every transition.

    Args:
        store: where each change is staged.
        clock: time source for timestamps.
        emit: receives one event per transition (name, task, extra fields).
        history_cap: transitions kept per task; older ones are dropped.
        default_max_retries: used when a submission names none.
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        emit: EventSink,
        history_cap: int = 50,
        default_max_retries: int = 3,
    ) -> None:
        self._store = store
        self._clock = clock
        self._emit = emit
        self._history_cap = history_cap
        self._default_max_retries = default_max_retries
        self.tasks: dict[str, Task] = {}
        # Queued task ids by priority, then by needed capabilities, in arrival order, so
        # finding work for an agent costs one look per capability group, not per task.
        self._queued: dict[Priority, dict[frozenset[str], OrderedDict[str, int]]] = {
            priority: {} for priority in PRIORITY_RANK
        }
        self._queued_total = 0  # ids in the groups above, kept as they change
        self._arrival = itertools.count()
        # Tasks waiting for a routing target: task id -> (until_ms, arrival number).
        self.held: dict[str, tuple[int, int]] = {}
        # Tasks whose wait ran out: the router may now fall back to another tier.
        self.may_fall_back: set[str] = set()
        # Queued tasks kept out of scheduling until their prerequisites complete.
        self.dependencies = DependencyIndex()

    # --- loading and lookup ----------------------------------------------------------

    def restore(self, tasks: list[Task]) -> None:
        """Load unfinished tasks read from the store after a restart.

        A queued task waits again for its prerequisites that are unfinished; one whose
        prerequisite ended in dead letter or was cancelled (the crash came between the
        two) goes to dead letter now.
        """
        for task in tasks:
            self.tasks[task.task_id] = task
        finished: dict[str, Task | None] = {}  # looked up once per prerequisite
        for task in tasks:
            if task.status is not TaskStatus.queued or task.task_id not in self.tasks:
                continue
            failed = None
            for prerequisite in task.depends_on:
                if prerequisite not in self.tasks:
                    if prerequisite not in finished:
                        finished[prerequisite] = self._store.get_task(prerequisite)
                    if _failed(finished[prerequisite]):
                        failed = prerequisite
            if failed is not None:
                self._dependency_failed(task, failed)
                self._fail_dependants(task.task_id)
            else:
                self._place(task)

    def reload(self, task_id: str, stored: Task | None, refused: bool = True) -> Task | None:
        """Replace a task's state in memory by ``stored``, its state in the database.

        For a change the store refused (``refused``), or one another node made: a task
        that was never stored is forgotten, and a stored one is back where it was (queued
        tasks join the end of their group).
        Returns the task now in memory, or None when it is unknown or finished.
        """
        current = self.tasks.pop(task_id, None)
        if current is not None:
            self._dequeue(current)
        if stored is not None and stored.status is TaskStatus.completed:
            # Completed elsewhere (another node sharing the database): who it was the
            # last to block joins the queue here too.
            for task_id_ready in self.dependencies.completed(task_id):
                self._enqueue(self.tasks[task_id_ready])
        if stored is None or stored.status in TERMINAL:
            return None
        self.tasks[task_id] = stored
        if stored.status is TaskStatus.queued:
            self._place(stored)
        if current is None and refused:  # its completion was refused: who it had
            self._block_again(task_id)  # released waits again
        return stored

    def _block_again(self, prerequisite: str) -> None:
        """Queued tasks that depend on ``prerequisite`` wait for it again. A scan of the
        unfinished tasks, only ever run after the store refused a change."""
        for task in list(self.tasks.values()):
            if (
                task.status is TaskStatus.queued
                and prerequisite in task.depends_on
                and task.task_id not in self.dependencies
            ):
                self._dequeue(task)
                self._place(task)

    def get(self, task_id: str) -> Task | None:
        """An unfinished task, or None."""
        return self.tasks.get(task_id)

    def queued_count(self) -> int:
        """Queued tasks: waiting for an agent, held until a routing target appears, or
        waiting for prerequisites."""
        return self._queued_total + len(self.held) + len(self.dependencies)

    def queued_by_capability(self) -> dict[str, int]:
        """Queued tasks (held ones included) needing each capability; ``""`` counts the
        tasks that need none. A task needing two capabilities counts under both."""
        counts: dict[str, int] = {}
        for groups in self._queued.values():
            for needed, group in groups.items():
                for capability in needed or ("",):
                    counts[capability] = counts.get(capability, 0) + len(group)
        for task_id in self.held:
            for capability in self.tasks[task_id].needed_capabilities or ("",):
                counts[capability] = counts.get(capability, 0) + 1
        return counts

    def oldest_queued_since(self) -> int | None:
        """When the longest-waiting queued task entered the queue (its last transition).

        Looks at the head of each group and at the held tasks, not at every task.
        """
        heads = [
            self.tasks[next(iter(group))]
            for groups in self._queued.values()
            for group in groups.values()
            if group
        ]
        heads.extend(self.tasks[task_id] for task_id in self.held)
        return min((task.updated_at for task in heads), default=None)

    def has_assignable(self) -> bool:
        """Whether any queued task may be given to an agent now (tasks held for a routing
        target or waiting for prerequisites may not)."""
        return self._queued_total > 0

    def next_for(self, capabilities: frozenset[str]) -> Task | None:
        """The highest-priority, oldest queued task an agent with ``capabilities`` can run."""
        for groups in self._queued.values():
            best: tuple[int, str] | None = None
            for needed, group in groups.items():
                if group and needed <= capabilities:
                    task_id, arrival = next(iter(group.items()))
                    if best is None or arrival < best[0]:
                        best = (arrival, task_id)
            if best is not None:
                return self.tasks[best[1]]
        return None

    # --- transitions -----------------------------------------------------------------

    def _record(self, task: Task, status: TaskStatus, detail: str | None) -> None:
        now = self._clock.now_ms()
        task.status = status
        task.updated_at = now
        task.history.append(HistoryEntry(status=status._value_, at=now, detail=detail))
        if len(task.history) > self._history_cap:
            del task.history[: len(task.history) - self._history_cap]
        self._store.stage_task(task)
        if status in TERMINAL:
            self.tasks.pop(task.task_id, None)

    def _enqueue(self, task: Task, arrival: int | None = None) -> None:
        needed = frozenset(task.needed_capabilities)
        group = self._queued[task.priority].setdefault(needed, OrderedDict())
        if task.task_id not in group:
            self._queued_total += 1
        # A released task keeps its arrival number (which orders it against other groups)
        # but joins the end of its group: reordering the group would cost O(n) per task.
        group[task.task_id] = next(self._arrival) if arrival is None else arrival

    def _place(self, task: Task) -> None:
        """Queue a task, or keep it waiting for its prerequisites that are in memory
        (unfinished)."""
        waiting = [prerequisite for prerequisite in task.depends_on if prerequisite in self.tasks]
        if waiting:
            self.dependencies.block(task.task_id, waiting)
        else:
            self._enqueue(task)

    def _dequeue(self, task: Task) -> int | None:
        self.dependencies.forget(task.task_id)
        self.held.pop(task.task_id, None)
        self.may_fall_back.discard(task.task_id)
        group = self._queued[task.priority].get(frozenset(task.needed_capabilities))
        arrival = group.pop(task.task_id, None) if group is not None else None
        if arrival is not None:
            self._queued_total -= 1
        return arrival

    def hold(self, task: Task, until_ms: int, reason: str) -> None:
        """Keep a queued task out of scheduling until ``until_ms`` (no target for it yet)."""
        arrival = self._dequeue(task)
        self.held[task.task_id] = (until_ms, next(self._arrival) if arrival is None else arrival)
        task.waiting_reason = reason

    def release_held(self, now_ms: int | None) -> list[Task]:
        """Put held tasks back in the queue: those due at ``now_ms``, or all when None.

        A task released because its wait ran out may fall back to another tier.
        """
        released = []
        for task_id, (until_ms, arrival) in sorted(self.held.items(), key=lambda i: i[1][1]):
            if now_ms is not None and until_ms > now_ms:
                continue
            del self.held[task_id]
            task = self.tasks[task_id]
            if now_ms is not None:
                self.may_fall_back.add(task_id)
            task.waiting_reason = None
            self._enqueue(task, arrival)
            released.append(task)
        return released

    def next_hold_deadline(self) -> int | None:
        """When the earliest held task is due, if any is held."""
        return min((until for until, _ in self.held.values()), default=None)

    def check_prerequisites(self, task_ids: list[str]) -> None:
        """Refuse prerequisites that do not exist (``unknown_prerequisites``) or that ended
        in dead letter or were cancelled (``prerequisite_failed``), naming them."""
        stored = {task_id: self.tasks.get(task_id) or self._store.get_task(task_id)
                  for task_id in task_ids}  # fmt: skip
        unknown = [task_id for task_id, task in stored.items() if task is None]
        if unknown:
            raise HubError("unknown_prerequisites", f"no such tasks: {', '.join(unknown)}")
        failed = [f"{task_id} ({task.status.value})" for task_id, task in stored.items()
                  if _failed(task) and task is not None]  # fmt: skip
        if failed:
            raise HubError(
                "prerequisite_failed",
                f"prerequisites that will not complete (retry them first): {', '.join(failed)}",
            )

    def submit(self, submission: TaskSubmission) -> Task:
        """Create a queued task; it waits for its unfinished prerequisites (checked first)."""
        depends_on = list(dict.fromkeys(submission.depends_on))
        self.check_prerequisites(depends_on)
        now = self._clock.now_ms()
        max_retries = submission.max_retries
        task = task_from_submission(
            submission,
            new_task_id(),
            now,
            depends_on=depends_on,
            max_retries=self._default_max_retries if max_retries is None else max_retries,
        )
        self._record(task, TaskStatus.queued, "submitted")
        if depends_on:
            self._store.stage_dependencies(task.task_id, depends_on)
        self._place(task)
        self.tasks[task.task_id] = task
        self._emit("task_submitted", task, {})
        return task

    def assign(
        self,
        task: Task,
        agent_id: str,
        complexity: Complexity,
        decision: RoutingDecision,
    ) -> None:
        """Give a queued task to an agent with a new generation."""
        self._dequeue(task)
        task.waiting_reason = None
        task.generation += 1
        task.assigned_to = agent_id
        task.assigned_at = self._clock.now_ms()
        task.last_progress_at = task.assigned_at
        task.progress = None
        task.agentic = None  # what an agentic run reports belongs to its attempt
        task.complexity = complexity
        task.routing_decision = decision
        self._record(task, TaskStatus.assigned, f"to {agent_id} (generation {task.generation})")
        self._emit("task_assigned", task, {"generation": task.generation})

    def accept(self, task: Task) -> None:
        """The agent started the task."""
        if task.status is not TaskStatus.assigned:
            if task.status is TaskStatus.working:
                return  # a repeated accept changes nothing
            raise HubError("invalid_state", f"task is {task.status.value}", task.task_id)
        task.last_progress_at = self._clock.now_ms()
        self._record(task, TaskStatus.working, None)
        self._emit("task_accepted", task, {})

    def touch(self, task: Task, progress: int | None) -> None:
        """Note progress (not a transition, not persisted: it only delays reclaim)."""
        task.last_progress_at = self._clock.now_ms()
        if progress is not None:
            task.progress = progress

    def complete(self, task: Task) -> None:
        """The task finished; the caller has set result and execution metadata.

        The dependants it was the last to block join the queue (the caller schedules).
        """
        self._record(task, TaskStatus.completed, None)
        self._emit("task_completed", task, {"execution": dumped_or_none(task.execution)})
        for task_id in self.dependencies.completed(task.task_id):
            self._enqueue(self.tasks[task_id])

    def fail(self, task: Task, error: str | None) -> str:
        """The attempt failed: retry (``"retried"``) or dead letter (``"dead_letter"``)."""
        task.last_error = error
        holder = task.assigned_to  # events name the agent that lost the task
        self._emit("task_failed", task, {"error": error})
        if task.retry_count < task.max_retries:
            task.retry_count += 1
            self._back_to_queue(task, f"retry {task.retry_count}/{task.max_retries}: {error}")
            self._emit("task_retried", task, {"retry_count": task.retry_count, "agent_id": holder})
            return "retried"
        task.assigned_to = None
        self._record(task, TaskStatus.dead_letter, error)
        self._emit("task_dead_letter", task, {"error": error, "agent_id": holder})
        self._fail_dependants(task.task_id)
        return "dead_letter"

    def _dependency_failed(self, task: Task, prerequisite: str) -> None:
        """A queued task goes to dead letter because ``prerequisite`` will not complete."""
        self.dependencies.forget(task.task_id)
        error = f"dependency_failed: {prerequisite}"
        task.last_error = error
        self._record(task, TaskStatus.dead_letter, error)
        self._emit("task_dead_letter", task, {"error": error, "agent_id": None})

    def _fail_dependants(self, task_id: str) -> None:
        """Every task waiting for ``task_id``, and theirs in turn, goes to dead letter."""
        failed = [task_id]
        while failed:
            prerequisite = failed.pop()
            for dependant in sorted(self.dependencies.waiting_on(prerequisite)):
                self._dependency_failed(self.tasks[dependant], prerequisite)
                failed.append(dependant)

    def requeue(self, task: Task, reason: str, event: str = "task_requeued") -> None:
        """Put an assigned or working task back in the queue without counting a retry."""
        holder = task.assigned_to
        self._back_to_queue(task, reason)
        self._emit(event, task, {"reason": reason, "agent_id": holder})

    def _back_to_queue(self, task: Task, detail: str) -> None:
        task.assigned_to = None
        task.assigned_at = None
        task.progress = None
        self._record(task, TaskStatus.queued, detail)
        self._enqueue(task)

    def cancel(self, task: Task) -> None:
        """Cancel a queued, assigned or working task; its dependants go to dead letter."""
        self._dequeue(task)
        self._record(task, TaskStatus.cancelled, "cancelled by an operator")
        self._emit("task_cancelled", task, {})
        self._fail_dependants(task.task_id)

    def retry_dead_letter(self, task: Task) -> None:
        """Move a dead-letter task back to the queue with its retry count reset; it waits
        again for its unfinished prerequisites (refused while one of them has failed)."""
        self.check_prerequisites(task.depends_on)
        task.retry_count = 0
        task.last_error = None
        self._record(task, TaskStatus.queued, "retried by an operator")
        self._place(task)
        self.tasks[task.task_id] = task
        self._emit("task_requeued", task, {"reason": "operator_retry"})

    # --- timeouts --------------------------------------------------------------------

    def overdue(self, accept_timeout_ms: int, reclaim_after_ms: int) -> list[tuple[Task, str]]:
        """Assigned tasks not accepted in time, and tasks with no progress for too long."""
        now = self._clock.now_ms()
        found = []
        for task in self.tasks.values():
            assigned_at, progressed_at = task.assigned_at, task.last_progress_at
            if (
                task.status is TaskStatus.assigned
                and assigned_at is not None
                and (now - assigned_at >= accept_timeout_ms)
            ):
                found.append((task, "acceptance_timeout"))
            elif (
                task.status in ACTIVE
                and progressed_at is not None
                and (now - progressed_at >= reclaim_after_ms)
            ):
                found.append((task, "no_progress"))
        return found


def _failed(task: Task | None) -> bool:
    """Whether a prerequisite will not complete unless an operator retries it."""
    return task is not None and task.status in (TaskStatus.dead_letter, TaskStatus.cancelled)
