"""Scheduling: matching queued tasks to idle agents, holding a task that has no usable
target yet, and letting it fall back once its wait ends.

The scheduler changes the queue and the agents' records and reports what it caused
through two callbacks of the hub (a push to an agent, the time the hub must wake up
at); it sends nothing itself.
"""

from __future__ import annotations

from collections.abc import Callable

from agentcom.config import Settings
from agentcom.hub.agents import AgentRecord, Presence
from agentcom.hub.clock import Clock
from agentcom.hub.queue import TaskQueue
from agentcom.hub.routing import NoViableTarget, Router
from agentcom.protocol.common import Outbound
from agentcom.protocol.outbound import TaskAssign
from agentcom.protocol.task import Task

__all__ = ["Scheduler", "assignment_frame"]


def assignment_frame(task: Task) -> TaskAssign:
    """The ``task_assign`` push for a task's current assignment."""
    return TaskAssign(
        task_id=task.task_id,
        description=task.description,
        metadata=task.metadata,
        generation=task.generation,
        assigned_at=task.assigned_at or task.updated_at,
        repo=task.repo,
        branch=task.branch,
        file_hints=task.file_hints,
        success_criteria=task.success_criteria,
        verification_steps=task.verification_steps,
        complexity=task.complexity,
        routing_decision=task.routing_decision,
        skip_verification=task.skip_verification,
        verification_timeout_ms=task.verification_timeout_ms,
        max_verification_retries=0,
    )


class Scheduler:
    """Gives queued tasks to idle agents, longest idle first.

    Args:
        queue: the task queue (its order decides which task an agent gets).
        presence: the agents (its idle order decides which agent is offered work).
        router: picks each task's target, or says none is usable yet.
        clock: time source for the end of a hold.
        settings: ``fallback_wait_s``, how long a task waits for its tier's target.
        push: queues a frame for an agent (the ``task_assign``).
        wake_at: asks to be woken at a time (the end of a hold).
        attempt_errors: the error reported by each task's running attempt; a new
            assignment starts a new attempt, so its entry goes.
    """

    def __init__(
        self,
        queue: TaskQueue,
        presence: Presence,
        router: Router,
        clock: Clock,
        settings: Settings,
        push: Callable[[str, Outbound], None],
        wake_at: Callable[[int], None],
        attempt_errors: dict[str, str],
    ) -> None:
        self.queue = queue
        self.presence = presence
        self.router = router
        self.clock = clock
        self.settings = settings
        self._push = push
        self._wake_at = wake_at
        self._attempt_errors = attempt_errors

    def schedule(self) -> int:
        """Give queued tasks to idle agents; returns how many were assigned."""
        assigned = 0
        if not self.queue.has_assignable():
            return 0
        for agent in self.presence.idle_agents():
            while (task := self.queue.next_for(agent.capabilities)) is not None:
                if self._assign(task, agent):
                    assigned += 1
                    break
            if not self.queue.has_assignable():
                break
        return assigned

    def schedule_excluding(self, agent_id: str) -> None:
        """Schedule while keeping one agent (which just declined work) out of it."""
        agent = self.presence.agents.get(agent_id)
        if agent is None or not agent.connected:
            self.schedule()
            return
        agent.connected = False
        self.presence.refresh(agent)
        try:
            self.schedule()
        finally:
            agent.connected = True
            self.presence.refresh(agent)

    def release_due_holds(self) -> None:
        """Tasks whose wait for a target ran out go back to the queue, free to fall back."""
        if self.queue.release_held(self.clock.now_ms()):
            self.schedule()

    def release_all_holds(self) -> None:
        """A target became usable: every held task goes back to the queue at once."""
        if self.queue.release_held(None):
            self.schedule()

    def _assign(self, task: Task, agent: AgentRecord) -> bool:
        """Route and assign; False when the task must wait for a target (it is held)."""
        allow_fallback = (
            task.task_id in self.queue.may_fall_back or self.settings.fallback_wait_s == 0
        )
        try:
            complexity, decision, choice = self.router.decide(task, agent, allow_fallback)
        except NoViableTarget as no_target:
            until = self.clock.now_ms() + int(self.settings.fallback_wait_s * 1000)
            reason = (
                f"{no_target.reason}: waiting for a {no_target.tier.value} target, "
                "then falling back"
            )
            self.queue.hold(task, until, reason)
            self._wake_at(until)
            return False
        if choice is not None and task.repo:
            choice.endpoint.recent_repos.append(task.repo)
        self._attempt_errors.pop(task.task_id, None)
        self.queue.assign(task, agent.agent_id, complexity, decision)
        agent.current_task = task.task_id
        agent.task_accepted = False
        self.presence.refresh(agent)
        self._push(agent.agent_id, assignment_frame(task))
        return True
