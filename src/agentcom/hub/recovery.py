"""Recovery: the domain's state rebuilt from the database, at start and after the
store refused a write, and the recent activity saved so that a restart keeps it.
"""

from __future__ import annotations

from typing import Protocol

from agentcom.errors import StoreError
from agentcom.hub.agents import Presence
from agentcom.hub.clock import Clock
from agentcom.hub.endpoints import EndpointRegistry
from agentcom.hub.history import MINUTE_MS, QueueHistory
from agentcom.hub.messaging import Messaging
from agentcom.hub.queue import TaskQueue
from agentcom.hub.tails import ExecutionTails
from agentcom.protocol.common import ACTIVE, Outbound, TaskStatus
from agentcom.protocol.outbound import TaskCancelled
from agentcom.protocol.task import Task
from agentcom.store.base import ChangeKey, Store

__all__ = ["Recovery", "RecoveryHub"]


class _Unread:
    """No state given: read it from the database."""


_UNREAD = _Unread()


class RecoveryHub(Protocol):
    """What recovery uses of the hub's facade (``Hub`` is the one implementation): the
    parts whose state it reloads or saves."""

    store: Store
    clock: Clock
    shared: bool
    queue: TaskQueue
    presence: Presence
    endpoints: EndpointRegistry
    messaging: Messaging
    execution_tails: ExecutionTails
    queue_history: QueueHistory

    def push(self, agent_id: str, frame: Outbound) -> None:
        """Queue a frame for an agent, sent once the change is committed."""


class Recovery:
    """Brings memory back in line with the database.

    Args:
        hub: the domain whose state is restored.
    """

    def __init__(self, hub: RecoveryHub) -> None:
        self.hub = hub
        # Refused changes whose stored state could not be read (the database is
        # unreachable): reloaded by reload_pending before the store counts as working.
        self._pending: list[ChangeKey] = []

    def restore(self) -> int:
        """Reload unfinished tasks; assigned ones wait for their agent's grace period.

        The recent activity dashboards start from (execution tails, the queue's last hour)
        is reloaded too, and the queue depth at restart recorded.
        """
        self.hub.endpoints.restore(self.hub.store.load_endpoints())
        self.hub.messaging.restore()
        tasks = self.hub.store.load_unfinished_tasks()
        self.hub.queue.restore(tasks)
        now = self.hub.clock.now_ms()
        self.hub.execution_tails.restore(self.hub.store.load_execution_tails())
        self.hub.queue_history.restore(self.hub.store.load_queue_history(), now)
        self.hub.queue_history.observe(now, self.hub.queue.queued_count())
        if self.hub.shared:  # other nodes' agents hold them: bound when they identify here
            return len(tasks)
        for task in tasks:
            if task.status in ACTIVE and task.assigned_to is not None:
                agent = self.hub.presence.record(task.assigned_to)
                agent.current_task = task.task_id
                agent.task_accepted = task.status is TaskStatus.working
                agent.disconnected_at = agent.held_since = now
                # No agent could report progress while the hub was down: the no-progress
                # clock starts again now, or a long task would be reclaimed at once.
                task.last_progress_at = max(task.last_progress_at or 0, now)
        return len(tasks)

    def forget_refused(self, refused: list[ChangeKey]) -> None:
        """Undo changes the store refused: reload what they touched as it is stored.

        A refused task is back in its stored state (or gone, if it was never stored), and
        agents are bound to the tasks the database says they hold; endpoints and channels
        are reloaded when one of theirs was refused.
        """
        kinds = {kind for kind, _ in refused}
        task_ids = list(dict.fromkeys(name for kind, name in refused if kind == "task"))
        for index, task_id in enumerate(task_ids):
            try:
                self._reload_task(task_id)
            except StoreError:
                self._pend([("task", name) for name in task_ids[index:]], forget=True)
                break
        if "endpoint" in kinds:
            try:
                self.hub.endpoints.reload(self.hub.store.load_endpoints())
            except StoreError:
                self._pend([("endpoint", "")])
        # Recent activity is saved again at the next sweep.
        self.hub.execution_tails.mark_changed([name for kind, name in refused if kind == "tail"])
        self.hub.queue_history.mark_changed(
            [int(name) for kind, name in refused if kind == "minute"]
        )
        if kinds & {"channel", "subscription", "message", "trim"}:
            try:
                self.hub.messaging.reload()
            except StoreError:
                self._pend([("channel", "")])

    @property
    def pending(self) -> bool:
        """Whether refused changes wait to be reloaded (see :meth:`reload_pending`)."""
        return bool(self._pending)

    def reload_pending(self) -> None:
        """Reload what refused changes touched and could not be read back when they were
        refused. Raises StoreError while the database still cannot be read (what is left
        stays pending)."""
        pending, self._pending = self._pending, []
        self.forget_refused(pending)

    def _pend(self, keys: list[ChangeKey], forget: bool = False) -> None:
        """Keep ``keys`` for :meth:`reload_pending`; with ``forget``, their tasks leave
        memory meanwhile: their state in memory was never stored, and what is stored
        cannot be read now (a task's agent asking about it then reads the database)."""
        for key in keys:
            if key not in self._pending:
                self._pending.append(key)
            if forget:
                self.hub.queue.reload(key[1], None)

    def stage_recent_activity(self) -> None:
        """Stage what changed in the execution tails and the queue's last hour since the
        last call, so a restarted hub shows dashboards the same picture.

        Called at every sweep and when the hub stops, not per event: output streams at
        hundreds of events a second and need not cost a write each.
        """
        for task_id, events in self.hub.execution_tails.take_changes().items():
            self.hub.store.stage_execution_tail(task_id, events)
        minutes = self.hub.queue_history.take_changes()
        if minutes:
            oldest = self.hub.clock.now_ms() // MINUTE_MS - self.hub.queue_history.minutes + 1
            self.hub.store.stage_queue_minutes(minutes, oldest)

    def refresh(self, stored: dict[str, Task | None]) -> None:
        """Tasks another node changed, as read from the database just now: memory takes
        the stored state (where this node has no write of its own pending for the task:
        that write, fenced, decides). Agents here are bound to what the database says
        they hold."""
        for task_id, task in stored.items():
            if not self.hub.store.has_unwritten(task_id):
                self._reload_task(task_id, task, refused=False)

    def _reload_task(
        self, task_id: str, stored: Task | _Unread | None = _UNREAD, refused: bool = True
    ) -> None:
        current = self.hub.queue.get(task_id)
        holder = None
        if current is not None and current.assigned_to is not None:
            holder = self.hub.presence.get(current.assigned_to)
            if holder is not None and holder.current_task == task_id:
                holder.current_task = None
                holder.task_accepted = False
                holder.held_since = None
                self.hub.presence.refresh(holder)
            else:
                holder = None
        if isinstance(stored, _Unread):
            stored = self.hub.store.get_task(task_id)
        taken = holder is not None and current is not None and not _still_held(stored, current)
        if taken and not refused and holder is not None and holder.connected:
            # Another node took it from this node's agent (an operator cancelled or
            # requeued it there): the agent stops, as it would here.
            self.hub.push(holder.agent_id, TaskCancelled(task_id=task_id))
        stored = self.hub.queue.reload(task_id, stored, refused)
        if stored is not None and stored.status in ACTIVE and stored.assigned_to is not None:
            if self.hub.shared and self.hub.presence.get(stored.assigned_to) is None:
                return  # another node's agent
            agent = self.hub.presence.record(stored.assigned_to)
            agent.current_task = task_id
            agent.task_accepted = stored.status is TaskStatus.working
            self.hub.presence.refresh(agent)


def _still_held(stored: Task | None, current: Task) -> bool:
    """Whether the stored task is still the attempt ``current`` gave its holder."""
    return (
        stored is not None
        and stored.status in ACTIVE
        and stored.assigned_to == current.assigned_to
        and stored.generation == current.generation
    )
