"""Task frames from agents: acceptance, progress, completion, failure, rejection and
the reports of a restarted or reconnected sidecar.

Each is fenced (the task must be this agent's, and a settling frame must name the
running attempt) before it changes the task; a refusal is a ``HubError``.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Protocol

from agentcom.config import Settings
from agentcom.errors import HubError
from agentcom.hub.agentic import record_termination, record_tool_call
from agentcom.hub.agents import Presence
from agentcom.hub.clock import Clock
from agentcom.hub.queue import TaskQueue
from agentcom.hub.scheduler import Scheduler
from agentcom.hub.tails import ExecutionTails
from agentcom.protocol import agent as frames
from agentcom.protocol.common import ACTIVE, TargetType
from agentcom.protocol.events import execution_progress_event, task_event, task_progress_event
from agentcom.protocol.outbound import StateReportAck, TaskAck, TaskContinue, TaskReassign
from agentcom.protocol.task import ExecutionMetadata, Task
from agentcom.store.base import Store

__all__ = ["FramesHub", "TaskFrames"]

logger = logging.getLogger(__name__)

_EXECUTION_FIELDS = tuple(ExecutionMetadata.model_fields)


class FramesHub(Protocol):
    """What task frames use of the hub's facade (``Hub`` is the one implementation):
    its parts, the error each running attempt reported, and two commands."""

    queue: TaskQueue
    presence: Presence
    store: Store
    clock: Clock
    settings: Settings
    execution_tails: ExecutionTails
    scheduler: Scheduler
    attempt_errors: dict[str, str]

    def publish(self, topic: str, event: dict[str, Any]) -> None:
        """Publish an event once the change is committed."""

    def release_agent(self, agent_id: str, schedule: bool = True) -> None:
        """The agent holds no task any more; then, unless told not to, schedule."""


class TaskFrames:
    """What the hub does with each task frame an agent sends.

    Args:
        hub: the domain the frames change (its queue, agents and outbox).
    """

    def __init__(self, hub: FramesHub) -> None:
        self.hub = hub
        self.queue = hub.queue
        self.presence = hub.presence
        self.store = hub.store
        self.clock = hub.clock
        self.settings = hub.settings
        self.execution_tails = hub.execution_tails
        self.scheduler = hub.scheduler

    def _owned_task(self, agent_id: str, task_id: str) -> Task:
        task = self.queue.get(task_id)
        if task is None or task.assigned_to != agent_id or task.status not in ACTIVE:
            raise HubError("not_assigned", f"task {task_id} is not assigned to you", task_id)
        return task

    def _settling_task(self, agent_id: str, task_id: str, generation: int, prefix: str) -> Task:
        """The task a completion or failure names, fenced by owner, generation and state."""
        task = self.queue.get(task_id) or self.store.get_task(task_id)
        if task is None:
            raise HubError(f"{prefix}: not_found", f"no task {task_id}", task_id)
        if task.generation != generation:  # fencing first: a late frame of an old attempt
            raise HubError(f"{prefix}: stale_generation", None, task_id)
        if task.assigned_to != agent_id:
            raise HubError("not_assigned", f"task {task_id} is not assigned to you", task_id)
        if task.status not in ACTIVE:
            raise HubError(f"{prefix}: invalid_state", f"task is {task.status.value}", task_id)
        return task

    def task_accepted(self, agent_id: str, task_id: str) -> TaskAck:
        """The agent started an assigned task."""
        task = self._owned_task(agent_id, task_id)
        self._running(agent_id, task)
        return TaskAck(task_id=task_id, status="accepted", generation=task.generation)

    def _running(self, agent_id: str, task: Task) -> None:
        """The agent says it runs ``task``: working, accepted, no longer held without news."""
        self.queue.accept(task)
        agent = self.presence.agents[agent_id]
        agent.task_accepted = True
        agent.held_since = None

    def task_progress(self, agent_id: str, frame: frames.TaskProgress) -> None:
        """Progress: delays reclaim and is published, never persisted."""
        task = self._owned_task(agent_id, frame.task_id)
        self.queue.touch(task, frame.progress)
        self.presence.agents[agent_id].held_since = None  # still running it: not held
        now = self.clock.now_ms()
        self.hub.publish("tasks", task_progress_event(task.task_id, agent_id, now, frame.progress))
        if frame.execution_event is not None:
            event = frame.execution_event.model_dump(mode="json", exclude_unset=True)
            progress_event = execution_progress_event(task.task_id, agent_id, now, event)
            # Viewers get what the tail keeps: names, counts and texts bounded.
            self.hub.publish("tasks", self.execution_tails.add(task.task_id, progress_event))
            if frame.execution_event.event_type == "tool_call":
                record_tool_call(task, frame.execution_event, now, self.settings.tool_calls_kept)
            elif event.get("event_type") == "error" or event.get("type") == "error":
                # Real sidecars carry a failed execution's reason only here.
                detail = event.get("text") or event.get("error") or event.get("message")
                if isinstance(detail, str) and detail:
                    # Real sidecars put a failed execution's reason only here; it belongs
                    # to this attempt alone.
                    self.hub.attempt_errors[task.task_id] = detail[:2000]

    def task_complete(self, agent_id: str, frame: frames.TaskComplete) -> TaskAck:
        """A completion, or a failure reported as ``result.status == "failed"``."""
        task = self._settling_task(
            agent_id, frame.task_id, frame.generation, "task_complete_failed"
        )
        generation = task.generation  # the ack names this attempt even if the task moves on
        result = frame.result
        if result is not None:
            record_termination(task, result)
            task.result = result.model_dump(mode="json", exclude_unset=True)
            execution = {name: getattr(result, name) for name in _EXECUTION_FIELDS}
            task.execution = ExecutionMetadata(**execution)
        task.tokens_used = (
            frame.tokens_used
            if frame.tokens_used is not None
            else (result.tokens_used if result is not None else None)
        )
        task.verification_report = frame.verification_report
        if result is not None and result.status == "failed":
            error = result.error or self.hub.attempt_errors.get(task.task_id) or "execution failed"
            outcome = self._fail(task, error)
            return TaskAck(task_id=task.task_id, status=outcome, generation=generation)
        self.queue.complete(task)
        self.hub.attempt_errors.pop(task.task_id, None)
        self.hub.release_agent(agent_id)
        return TaskAck(task_id=task.task_id, status="complete", generation=generation)

    def task_failed(self, agent_id: str, frame: frames.TaskFailed) -> TaskAck:
        """An explicit failure: retry or dead letter."""
        task = self._settling_task(agent_id, frame.task_id, frame.generation, "task_fail_failed")
        generation = task.generation
        outcome = self._fail(task, frame.error or frame.reason or "failed")
        return TaskAck(task_id=task.task_id, status=outcome, generation=generation)

    def _fail(self, task: Task, error: str) -> Any:
        self.hub.attempt_errors.pop(task.task_id, None)
        agent_id = task.assigned_to
        outcome = self.queue.fail(task, error)
        if agent_id is not None:
            self.hub.release_agent(agent_id)
        else:
            self.scheduler.schedule()
        return outcome

    def task_rejected(self, agent_id: str, frame: frames.TaskRejected) -> TaskAck:
        """The agent declined: the task goes back to the queue at once, and the agent is
        offered nothing until it sends another frame."""
        task = self._owned_task(agent_id, frame.task_id)
        generation = task.generation
        self.queue.requeue(task, f"rejected by {agent_id}: {frame.reason or 'no reason'}")
        agent = self.presence.agents[agent_id]
        agent.declined = True  # offered nothing until its next frame (Hub.seen)
        self.hub.release_agent(agent_id, schedule=False)
        self.scheduler.schedule()
        return TaskAck(task_id=task.task_id, status="requeued", generation=generation)

    def task_recovering(self, agent_id: str, task_id: str) -> TaskContinue | TaskReassign:
        """After a sidecar restart: continue a task whose execution may live on, else reassign."""
        task = self.queue.get(task_id)
        if task is None or task.assigned_to != agent_id or task.status not in ACTIVE:
            return TaskReassign(task_id=task_id)
        decision = task.routing_decision
        if decision is not None and decision.target_type is TargetType.wake:
            self.presence.agents[agent_id].held_since = None  # it reported on the task
            return TaskContinue(task_id=task_id, generation=task.generation)
        self.queue.requeue(task, f"{agent_id} restarted while running it")
        self.hub.release_agent(agent_id)
        return TaskReassign(task_id=task_id)

    def state_report(self, agent_id: str, frame: frames.StateReport) -> StateReportAck:
        """After a reconnect: ``continue`` when this agent holds this attempt, else ``abort``.

        Fenced like a completion (owner, generation, unfinished). A ``continue`` ends the
        hold, and a task still ``assigned`` becomes ``working``: the agent runs it, so the
        acceptance timeout must not hand it to another agent. An ``abort`` changes nothing.
        """
        task = self.queue.get(frame.task_id)
        held = (
            task is not None
            and task.assigned_to == agent_id
            and task.status in ACTIVE
            and task.generation == frame.generation
        )
        if task is not None and held:
            self._running(agent_id, task)
            self.presence.refresh(self.presence.agents[agent_id])
        action: Literal["continue", "abort"] = "continue" if held else "abort"
        logger.info(
            "agent %s reports task %s (generation %d, %s): %s",
            agent_id, frame.task_id, frame.generation, frame.status, action,
        )  # fmt: skip
        self.hub.publish(
            "tasks",
            task_event(
                "task_state_reported",
                frame.task_id,
                agent_id,
                self.clock.now_ms(),
                action=action,
                reported_status=frame.status,
                reported_generation=frame.generation,
                generation=task.generation if task is not None else None,
            ),
        )
        return StateReportAck(task_id=frame.task_id, action=action)
