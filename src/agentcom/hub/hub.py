"""The hub's domain: agents, tasks, scheduling and routing, with no sockets and no SQL.

Every public method changes state synchronously, stages durable changes in the store
and queues what must be sent (pushes to agents, events for subscribers) in the
outbox. The caller takes the outbox, commits the store, and only then sends: so
nothing is announced before it is durable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from agentcom import __version__
from agentcom.config import Settings
from agentcom.errors import HubError
from agentcom.hub.agentic import record_termination, record_tool_call
from agentcom.hub.agents import AgentRecord, AgentState, Presence
from agentcom.hub.clock import Clock
from agentcom.hub.endpoints import Endpoint, EndpointRegistry
from agentcom.hub.history import MINUTE_MS, QueueHistory
from agentcom.hub.messaging import Messaging
from agentcom.hub.queue import ACTIVE, TASK_ID_LENGTH, TERMINAL, EventSink, TaskQueue
from agentcom.hub.routing import NoViableTarget, Router
from agentcom.hub.scheduler import Scheduler
from agentcom.hub.tails import ExecutionTails
from agentcom.protocol import agent as frames
from agentcom.protocol.common import Outbound, TargetType, TaskStatus
from agentcom.protocol.outbound import (
    AgentJoined,
    AgentLeft,
    RestartSidecar,
    StateReportAck,
    StatusChanged,
    TaskAck,
    TaskCancelled,
    TaskContinue,
    TaskReassign,
)
from agentcom.protocol.task import (
    ExecutionMetadata,
    ReclaimReason,
    ResultSummary,
    Task,
    TaskHold,
    TaskSubmission,
    listed_task,
)
from agentcom.store.base import ChangeKey, Store, TaskFilter, TaskPage

__all__ = ["DEPENDANTS_SHOWN", "TASK_ID_PREFIX_MIN", "THROUGHPUT_WINDOW_S", "Hub", "Outbox"]

#: Most dependants a task lists when read (``dependants_total`` counts them all).
DEPENDANTS_SHOWN = 100

logger = logging.getLogger(__name__)

_EXECUTION_FIELDS = tuple(ExecutionMetadata.model_fields)
TASK_ID_PREFIX_MIN = 6  # the shortest abbreviation of a task id that is looked up
_CANDIDATES_SHOWN = 10
THROUGHPUT_WINDOW_S = 3600  # stats count the tasks finished in the last hour
SEEN_EVENT_INTERVAL_MS = 10_000
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _host_key(host: str) -> str:
    """One name per host for matching endpoints to agents: loopback names are one host."""
    host = host.lower()
    return "loopback" if host in _LOOPBACK_NAMES else host


def _checked_view(endpoint: Endpoint) -> tuple[Any, ...]:
    """What a health check may change that is worth an event: not the time of the check,
    nor the count of failures of an endpoint that keeps failing the same way."""
    return endpoint.healthy, endpoint.models, endpoint.loaded, endpoint.last_error


@dataclass(slots=True)
class Outbox:
    """What to send once the staged changes are committed."""

    pushes: list[tuple[str, Outbound]] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    finished: list[Task] = field(default_factory=list)
    check_endpoints: list[str] = field(default_factory=list)
    wake_at_ms: int | None = None

    def __bool__(self) -> bool:
        return bool(
            self.pushes or self.events or self.finished or self.check_endpoints or self.wake_at_ms
        )


class Hub:
    """Agents, tasks, scheduling and routing.

    Args:
        store: durable state.
        clock: time source for every timestamp and timeout.
        settings: timeouts, caps and routing defaults.
    """

    def __init__(self, store: Store, clock: Clock, settings: Settings) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings
        self.presence = Presence()
        self.endpoints = EndpointRegistry(
            settings.endpoint_unhealthy_after, settings.agent_endpoint_hosts
        )
        self.router = Router(self.endpoints, self._resources_of, settings.claude_model)
        self.queue = TaskQueue(
            store,
            clock,
            self._task_event,
            history_cap=settings.history_cap,
            default_max_retries=settings.default_max_retries,
        )
        self._outbox = Outbox()
        # Told of every task event (metrics); the hub works the same without it.
        self.task_observer: EventSink | None = None
        self.messaging = Messaging(self.presence, store, clock, settings, self._push)
        self._attempt_errors: dict[str, str] = {}  # task id -> error event of the running attempt
        self.scheduler = Scheduler(
            self.queue, self.presence, self.router, clock, settings,
            self._push, self._wake_at, self._attempt_errors,
        )  # fmt: skip
        self.started_at = clock.now_ms()
        self.progress_dropped = 0
        self.execution_tails = ExecutionTails(
            settings.execution_tail_tasks,
            settings.execution_tail_events,
            max_text=settings.execution_event_max_text,
            max_keys=settings.execution_event_max_keys,
            max_key_chars=settings.execution_event_max_key_chars,
            max_task_bytes=settings.execution_tail_bytes,
        )
        self.queue_history = QueueHistory()
        # Latest resource report per host (see _host_key), for endpoints no agent reported.
        self._host_resources: dict[str, dict[str, Any]] = {}

    # --- plumbing -------------------------------------------------------------------

    def has_outbox(self) -> bool:
        """Whether anything waits to be sent or published."""
        return bool(self._outbox)

    def take_outbox(self) -> Outbox:
        """Everything queued for sending since the last call."""
        outbox, self._outbox = self._outbox, Outbox()
        return outbox

    def _push(self, agent_id: str, frame: Outbound) -> None:
        self._outbox.pushes.append((agent_id, frame))

    def _wake_at(self, at_ms: int) -> None:
        wake = self._outbox.wake_at_ms
        self._outbox.wake_at_ms = at_ms if wake is None else min(wake, at_ms)

    def _publish(self, topic: str, event: dict[str, Any]) -> None:
        self._outbox.events.append((topic, event))

    def _task_event(self, name: str, task: Task, extra: dict[str, Any]) -> None:
        now = self.clock.now_ms()
        self.queue_history.observe(now, self.queue.queued_count(), name == "task_completed")
        event = {
            "type": "task_event",
            "event": name,
            "task_id": task.task_id,
            "agent_id": task.assigned_to,
            "timestamp": now,
            "status": task.status.value,
            "priority": task.priority.value,
            "generation": task.generation,
        }
        event.update(extra)
        self._publish("tasks", event)
        if task.status in TERMINAL:
            self._outbox.finished.append(task)
        if self.task_observer is not None:
            self.task_observer(name, task, extra)
        agent_id = extra.get("agent_id", task.assigned_to)
        logger.info(
            "task %s %s (agent %s)", task.task_id, name, agent_id,
            extra={"task_id": task.task_id, "agent_id": agent_id,
                   "generation": task.generation, "event": name},
        )  # fmt: skip

    def _agent_event(self, name: str, agent: AgentRecord) -> None:
        self._publish(
            "agents",
            {
                "type": "agent_event",
                "event": name,
                "agent_id": agent.agent_id,
                "timestamp": self.clock.now_ms(),
                "agent": self.agent_view(agent),
            },
        )

    # --- startup --------------------------------------------------------------------

    def restore(self) -> int:
        """Reload unfinished tasks; assigned ones wait for their agent's grace period.

        The recent activity dashboards start from (execution tails, the queue's last hour)
        is reloaded too, and the queue depth at restart recorded.
        """
        self.endpoints.restore(self.store.load_endpoints())
        self.messaging.restore()
        tasks = self.store.load_unfinished_tasks()
        self.queue.restore(tasks)
        now = self.clock.now_ms()
        self.execution_tails.restore(self.store.load_execution_tails())
        self.queue_history.restore(self.store.load_queue_history(), now)
        self.queue_history.observe(now, self.queue.queued_count())
        for task in tasks:
            if task.status in ACTIVE and task.assigned_to is not None:
                agent = self.presence.record(task.assigned_to)
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
        for task_id in dict.fromkeys(name for kind, name in refused if kind == "task"):
            self._reload_task(task_id)
        if "endpoint" in kinds:
            self.endpoints.reload(self.store.load_endpoints())
        # Recent activity is saved again at the next sweep.
        self.execution_tails.mark_changed([name for kind, name in refused if kind == "tail"])
        self.queue_history.mark_changed([int(name) for kind, name in refused if kind == "minute"])
        if kinds & {"channel", "subscription", "message", "trim"}:
            self.messaging.reload()

    def stage_recent_activity(self) -> None:
        """Stage what changed in the execution tails and the queue's last hour since the
        last call, so a restarted hub shows dashboards the same picture.

        Called at every sweep and when the hub stops, not per event: output streams at
        hundreds of events a second and need not cost a write each.
        """
        for task_id, events in self.execution_tails.take_changes().items():
            self.store.stage_execution_tail(task_id, events)
        minutes = self.queue_history.take_changes()
        if minutes:
            oldest = self.clock.now_ms() // MINUTE_MS - self.queue_history.minutes + 1
            self.store.stage_queue_minutes(minutes, oldest)

    def _reload_task(self, task_id: str) -> None:
        current = self.queue.get(task_id)
        if current is not None and current.assigned_to is not None:
            holder = self.presence.get(current.assigned_to)
            if holder is not None and holder.current_task == task_id:
                holder.current_task = None
                holder.task_accepted = False
                holder.held_since = None
                self.presence.refresh(holder)
        stored = self.queue.reload(task_id, self.store.get_task(task_id))
        if stored is not None and stored.status in ACTIVE and stored.assigned_to is not None:
            agent = self.presence.record(stored.assigned_to)
            agent.current_task = task_id
            agent.task_accepted = stored.status is TaskStatus.working
            self.presence.refresh(agent)

    # --- agent presence -------------------------------------------------------------

    def identify(self, frame: frames.Identify, remote_host: str | None = None) -> AgentRecord:
        """An agent identified (its token already checked) from ``remote_host``."""
        now = self.clock.now_ms()
        agent = self.presence.record(frame.agent_id)
        agent.name = frame.name
        agent.status = frame.status
        agent.capabilities = frozenset(frame.capabilities or ())
        agent.connected = True
        agent.connected_at = now
        agent.last_seen = agent.seen_published_at = now  # agent_connected says it
        agent.host = remote_host
        agent.disconnected_at = None
        agent.restarting = None
        agent.pm2_info = (
            frame.pm2_info.model_dump(mode="json") if frame.pm2_info is not None else None
        )
        if frame.ollama_url:
            try:
                self.report_ollama(agent.agent_id, frame.ollama_url, remote_host)
            except HubError:
                logger.warning("agent %s reported an invalid ollama_url", agent.agent_id)
        self.presence.refresh(agent)
        self._broadcast(agent.agent_id, AgentJoined(agent=agent.info()))
        self._agent_event("agent_connected", agent)
        self.messaging.deliver_inbox(agent.agent_id)
        self.scheduler.schedule()
        return agent

    def disconnect(self, agent_id: str) -> None:
        """An agent's connection ended; its task is held for the grace period."""
        agent = self.presence.get(agent_id)
        if agent is None or not agent.connected:
            return
        agent.connected = False
        agent.disconnected_at = self.clock.now_ms()
        if agent.current_task is not None and agent.held_since is None:
            agent.held_since = agent.disconnected_at  # its task is now held for it
        self.presence.refresh(agent)
        self._broadcast(agent_id, AgentLeft(agent_id=agent_id))
        self._agent_event("agent_disconnected", agent)

    def seen(self, agent_id: str) -> None:
        """Any frame from the agent: it is alive. Dashboards hear of it (``agent_seen``)
        at most every ``SEEN_EVENT_INTERVAL_MS``, so a card's last heartbeat stays current
        without an event per frame."""
        agent = self.presence.agents[agent_id]
        now = agent.last_seen = self.clock.now_ms()
        if now - agent.seen_published_at >= SEEN_EVENT_INTERVAL_MS:
            agent.seen_published_at = now
            self._agent_event("agent_seen", agent)

    def token_revoked(self, agent_id: str) -> None:
        """A token of ``agent_id`` stopped being valid: once the id holds no agent token,
        the messages kept for it go (only real agents have an inbox)."""
        if not self.store.has_token(agent_id, role="agent"):
            self.messaging.forget_inbox(agent_id)

    def _broadcast(self, sender: str, frame: Outbound) -> None:
        for agent in self.presence.connected():
            if agent.agent_id != sender:
                self._push(agent.agent_id, frame)

    def agent_restarting(self, agent_id: str, reason: str | None) -> None:
        """The sidecar says it exits to be restarted: shown until it identifies again.

        Its task, if any, stays assigned and follows the usual reconnect grace.
        """
        agent = self.presence.agents[agent_id]
        agent.restarting = {"reason": reason, "since": self.clock.now_ms()}
        logger.info("agent %s is restarting: %s", agent_id, reason)
        self._agent_event("agent_restarting", agent)

    def restart_agent(self, agent_id: str, reason: str | None) -> dict[str, Any]:
        """Ask a connected agent's sidecar to restart (``restart_sidecar``); the sidecar
        finishes its running task first. Raises ``not_found`` or ``not_connected``."""
        agent = self.presence.get(agent_id)
        if agent is None:
            raise HubError("not_found", f"no agent {agent_id}")
        if not agent.connected:
            raise HubError("not_connected", f"agent {agent_id} is not connected")
        self._push(agent_id, RestartSidecar(reason=reason))
        logger.info("agent %s asked to restart: %s", agent_id, reason)
        self._agent_event("agent_restart_requested", agent)
        return self.agent_view(agent)

    def set_status(self, agent_id: str, status: str) -> None:
        """The agent's free-text status."""
        agent = self.presence.agents[agent_id]
        agent.status = status
        self._broadcast(agent_id, StatusChanged(agent=agent.info()))
        self._agent_event("agent_status", agent)

    def report_resources(self, agent_id: str, frame: frames.ResourceReport) -> None:
        """Store the host's load for routing."""
        agent = self.presence.agents[agent_id]
        agent.resources = frame.model_dump(exclude={"type"})
        agent.resources["received_at"] = self.clock.now_ms()
        if agent.host is not None:
            self._host_resources[_host_key(agent.host)] = agent.resources
        self._agent_event("agent_resources", agent)

    def report_ollama(self, agent_id: str, url: str, remote_host: str | None = None) -> None:
        """Register the agent's local Ollama endpoint as ``<agent_id>-local``."""
        try:
            endpoint, changed = self.endpoints.register_for_agent(agent_id, url, remote_host)
        except ValueError as exc:
            raise HubError("invalid_url", str(exc)) from None
        agent = self.presence.agents[agent_id]
        agent.ollama_url = endpoint.url
        if changed:
            self.store.stage_endpoint(endpoint.endpoint_id, endpoint.url, "agent", agent_id)
            self._agent_event("agent_endpoint", agent)
            self._endpoint_event("endpoint_added", endpoint)
        if changed or endpoint.healthy is None:
            self._outbox.check_endpoints.append(endpoint.endpoint_id)

    def _resources_of(self, endpoint: Endpoint) -> dict[str, Any] | None:
        """The latest load report for an endpoint's host: from the agent that reported the
        endpoint, else from any agent that connected from the endpoint's host."""
        agent = self.presence.get(endpoint.agent_id) if endpoint.agent_id else None
        if agent is not None and agent.resources:
            return agent.resources
        return self._host_resources.get(_host_key(endpoint.host))

    # --- endpoints ------------------------------------------------------------------

    def add_endpoint(self, url: str, name: str | None) -> dict[str, Any]:
        """An operator registers an Ollama endpoint."""
        try:
            endpoint, created = self.endpoints.add(url, name)
        except ValueError as exc:
            raise HubError("invalid_url", str(exc)) from None
        if created:
            self.store.stage_endpoint(endpoint.endpoint_id, endpoint.url, "operator", None)
            self._outbox.check_endpoints.append(endpoint.endpoint_id)
            self._endpoint_event("endpoint_added", endpoint)
        return self.endpoint_view(endpoint)

    def approve_endpoint(self, reference: str) -> dict[str, Any]:
        """An admin lets an agent's endpoint (by id or URL) serve every agent; tasks held
        for want of an endpoint may then use it."""
        endpoint = self.endpoints.approve(reference)
        self.store.stage_endpoint(
            endpoint.endpoint_id, endpoint.url, endpoint.source, endpoint.agent_id,
            endpoint.approved,
        )  # fmt: skip
        self._endpoint_event("endpoint_approved", endpoint)
        if endpoint.viable:
            self.scheduler.release_all_holds()
        return self.endpoint_view(endpoint)

    def remove_endpoint(self, endpoint_id: str) -> dict[str, Any]:
        """Forget an endpoint."""
        endpoint = self.endpoints.remove(endpoint_id)
        self.store.stage_endpoint_removal(endpoint_id)
        self._endpoint_event("endpoint_removed", endpoint)
        return self.endpoint_view(endpoint)

    def endpoint_view(self, endpoint: Endpoint) -> dict[str, Any]:
        """An endpoint as operators see it: the registry's view and the load of its host
        (the latest resource report routing uses, or None)."""
        view = endpoint.snapshot()
        view["load"] = self._resources_of(endpoint)
        return view

    def endpoints_snapshot(self) -> list[dict[str, Any]]:
        """Every known endpoint, as :meth:`endpoint_view` shows it."""
        return [self.endpoint_view(endpoint) for endpoint in self.endpoints.endpoints.values()]

    def _endpoint_event(self, name: str, endpoint: Endpoint) -> None:
        self._publish(
            "agents",
            {
                "type": "endpoint_event",
                "event": name,
                "endpoint_id": endpoint.endpoint_id,
                "timestamp": self.clock.now_ms(),
                "endpoint": self.endpoint_view(endpoint),
            },
        )

    def apply_endpoint_check(
        self, endpoint_id: str, models: list[str] | None, loaded: list[str], error: str | None
    ) -> None:
        """Record one health check; a change is published, and a newly healthy endpoint
        releases tasks that were waiting for one."""
        endpoint = self.endpoints.get(endpoint_id)
        if endpoint is None:
            return
        was_viable = endpoint.viable
        before = _checked_view(endpoint)  # record_check replaces the lists, never mutates
        changed = self.endpoints.record_check(
            endpoint_id, self.clock.now_ms(), models, loaded, error
        )
        if changed:
            state = "endpoint_healthy" if endpoint.healthy else "endpoint_unhealthy"
            logger.info("endpoint %s is now %s", endpoint_id, state.removeprefix("endpoint_"))
            self._endpoint_event(state, endpoint)
        elif _checked_view(endpoint) != before:  # models, loaded ones or the error
            self._endpoint_event("endpoint_updated", endpoint)
        # Viable again (healthy, or a model appeared on a healthy endpoint): release waiters.
        if endpoint.viable and not was_viable:
            self.scheduler.release_all_holds()

    # --- task frames from agents ----------------------------------------------------

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
        self.queue.accept(task)
        agent = self.presence.agents[agent_id]
        agent.task_accepted = True
        agent.held_since = None  # it reported on the task: no longer held without news
        return TaskAck(task_id=task_id, status="accepted", generation=task.generation)

    def task_progress(self, agent_id: str, frame: frames.TaskProgress) -> None:
        """Progress: delays reclaim and is published, never persisted."""
        task = self._owned_task(agent_id, frame.task_id)
        self.queue.touch(task, frame.progress)
        self.presence.agents[agent_id].held_since = None  # still running it: not held
        now = self.clock.now_ms()
        base = {"type": "task_event", "task_id": task.task_id, "agent_id": agent_id,
                "timestamp": now}  # fmt: skip
        self._publish("tasks", {**base, "event": "task_progress", "progress": frame.progress})
        if frame.execution_event is not None:
            event = frame.execution_event.model_dump(mode="json", exclude_unset=True)
            progress_event = {**base, "event": "execution_progress", "execution_event": event}
            # Viewers get what the tail keeps: names, counts and texts bounded.
            self._publish("tasks", self.execution_tails.add(task.task_id, progress_event))
            if frame.execution_event.event_type == "tool_call":
                record_tool_call(task, frame.execution_event, now, self.settings.tool_calls_kept)
            elif event.get("event_type") == "error" or event.get("type") == "error":
                # Real sidecars carry a failed execution's reason only here.
                detail = event.get("text") or event.get("error") or event.get("message")
                if isinstance(detail, str) and detail:
                    # Real sidecars put a failed execution's reason only here; it belongs
                    # to this attempt alone.
                    self._attempt_errors[task.task_id] = detail[:2000]

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
            error = result.error or self._attempt_errors.get(task.task_id) or "execution failed"
            outcome = self._fail(task, error)
            return TaskAck(task_id=task.task_id, status=outcome, generation=generation)
        self.queue.complete(task)
        self._attempt_errors.pop(task.task_id, None)
        self._release(agent_id)
        return TaskAck(task_id=task.task_id, status="complete", generation=generation)

    def task_failed(self, agent_id: str, frame: frames.TaskFailed) -> TaskAck:
        """An explicit failure: retry or dead letter."""
        task = self._settling_task(agent_id, frame.task_id, frame.generation, "task_fail_failed")
        generation = task.generation
        outcome = self._fail(task, frame.error or frame.reason or "failed")
        return TaskAck(task_id=task.task_id, status=outcome, generation=generation)

    def _fail(self, task: Task, error: str) -> Any:
        self._attempt_errors.pop(task.task_id, None)
        agent_id = task.assigned_to
        outcome = self.queue.fail(task, error)
        if agent_id is not None:
            self._release(agent_id)
        else:
            self.scheduler.schedule()
        return outcome

    def task_rejected(self, agent_id: str, frame: frames.TaskRejected) -> TaskAck:
        """The agent declined: the task goes back to the queue at once."""
        task = self._owned_task(agent_id, frame.task_id)
        generation = task.generation
        self.queue.requeue(task, f"rejected by {agent_id}: {frame.reason or 'no reason'}")
        self._release(agent_id, schedule=False)
        self.scheduler.schedule_excluding(agent_id)
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
        self._release(agent_id)
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
            self.queue.accept(task)
            agent = self.presence.agents[agent_id]
            agent.task_accepted = True
            agent.held_since = None
            self.presence.refresh(agent)
        action: Literal["continue", "abort"] = "continue" if held else "abort"
        logger.info(
            "agent %s reports task %s (generation %d, %s): %s",
            agent_id, frame.task_id, frame.generation, frame.status, action,
        )  # fmt: skip
        self._publish(
            "tasks",
            {
                "type": "task_event",
                "event": "task_state_reported",
                "task_id": frame.task_id,
                "agent_id": agent_id,
                "timestamp": self.clock.now_ms(),
                "action": action,
                "reported_status": frame.status,
                "reported_generation": frame.generation,
                "generation": task.generation if task is not None else None,
            },
        )
        return StateReportAck(task_id=frame.task_id, action=action)

    def _release(self, agent_id: str, schedule: bool = True) -> None:
        agent = self.presence.get(agent_id)
        if agent is None:
            return
        agent.current_task = None
        agent.task_accepted = False
        agent.held_since = None
        self.presence.refresh(agent)
        if schedule:
            self.scheduler.schedule()

    # --- operator actions -----------------------------------------------------------

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

    def find_task(self, task_id: str) -> Task:
        """A task in any state; raises ``not_found``. A queued task says why it waits, a
        task held for its agent says so (``held_for``), and every task lists the tasks
        that depend on it (``dependants``)."""
        task = self.described(self._task(task_id))
        dependants, total = self.store.load_dependants(task_id, DEPENDANTS_SHOWN)
        if not total:
            return task
        return task.model_copy(update={"dependants": dependants, "dependants_total": total})

    def _task(self, task_id: str) -> Task:
        """A task in any state, as the hub holds it; raises ``not_found``."""
        task = self.queue.get(task_id) or self.store.get_task(task_id)
        if task is None:
            raise HubError("not_found", f"no task {task_id}", task_id)
        return task

    def described(self, task: Task) -> Task:
        """``task``, or a copy that says what the hub does with it at this moment: why a
        queued task waits, for whom and until when an assigned one is held. Neither is
        part of the stored task."""
        waiting_for = self.queue.dependencies.waiting_for(task.task_id)
        if waiting_for:
            pending = [prerequisite for prerequisite in task.depends_on
                       if prerequisite in waiting_for]  # fmt: skip
            reason = (
                f"waiting for {len(pending)} of {len(task.depends_on)} prerequisites: "
                f"{', '.join(pending)}"
            )
            return task.model_copy(update={"waiting_reason": reason, "waiting_for": pending})
        if task.status is TaskStatus.queued and task.task_id not in self.queue.held:
            return task.model_copy(update={"waiting_reason": self._why_waiting(task)})
        holder = self.presence.get(task.assigned_to) if task.assigned_to is not None else None
        if holder is not None and holder.current_task == task.task_id:
            hold = self.held_task(holder)
            if hold is not None:
                return task.model_copy(update={"held_for": hold})
        return task

    def _why_waiting(self, task: Task) -> str:
        connected = self.presence.connected()
        if not connected:
            return "no agent is connected"
        needed = frozenset(task.needed_capabilities)
        capable = [agent for agent in connected if needed <= agent.capabilities]
        if not capable:
            return f"no connected agent has the capabilities {', '.join(sorted(needed))}"
        reason = f"all {len(capable)} capable agents are busy"
        holding = [agent.agent_id for agent in capable if agent.held_since is not None]
        if holding:
            verb = "holds" if len(holding) == 1 else "hold"
            reason += (
                f"; {', '.join(holding)} {verb} a task kept across a reconnect until it"
                " reports on it or the task is reclaimed (see agentcom agents)"
            )
        return reason

    def held_task(self, agent: AgentRecord) -> TaskHold | None:
        """The hold on ``agent``'s task, if the hub keeps it for the agent without news."""
        if agent.held_since is None or agent.current_task is None:
            return None
        task = self.queue.get(agent.current_task)
        if task is None:
            return None
        reclaim_at, reason = self._reclaim_deadline(task, agent)
        return TaskHold(
            task_id=task.task_id,
            agent_id=agent.agent_id,
            since=agent.held_since,
            agent_connected=agent.connected,
            reclaim_at=reclaim_at,
            reclaim_reason=reason,
        )

    def _reclaim_deadline(self, task: Task, agent: AgentRecord) -> tuple[int, ReclaimReason]:
        """When, and by which timeout, :meth:`sweep` takes ``task`` back from ``agent``
        (the rules of :meth:`TaskQueue.overdue` and of the disconnect grace)."""
        settings = self.settings
        deadline: tuple[int, ReclaimReason]
        if task.status is TaskStatus.assigned and task.assigned_at is not None:
            accept_ms = int(settings.accept_timeout_s * 1000)
            deadline = (task.assigned_at + accept_ms, "acceptance_timeout")
        else:
            progressed_at = task.last_progress_at or task.updated_at
            deadline = (progressed_at + int(settings.reclaim_after_s * 1000), "no_progress")
        if not agent.connected and agent.disconnected_at is not None:
            grace_ms = int(settings.disconnect_grace_s * 1000)
            deadline = min(deadline, (agent.disconnected_at + grace_ms, "disconnect_grace"))
        return deadline

    def route_preview(self, submission: TaskSubmission) -> dict[str, Any]:
        """The decision the hub would make for this task now, without queueing it."""
        now = self.clock.now_ms()
        task = Task(task_id="preview", status=TaskStatus.queued, priority=submission.priority,
                    created_at=now, updated_at=now,
                    **submission.model_dump(exclude={"priority", "max_retries"}))  # fmt: skip
        try:
            complexity, decision, _ = self.router.decide(task, None, allow_fallback=False)
            waits = None
        except NoViableTarget as no_target:
            complexity, decision, _ = self.router.decide(task, None, allow_fallback=True)
            waits = (
                None
                if self.settings.fallback_wait_s == 0
                else (
                    f"{no_target.reason}: would wait {self.settings.fallback_wait_s:g} s for a "
                    f"{no_target.tier.value} target, then fall back"
                )
            )
        return {
            "complexity": complexity.model_dump(mode="json"),
            "routing_decision": decision.model_dump(mode="json"),
            "viable_endpoints": len(self.endpoints.viable()),
            "would_wait": waits,
        }

    def cancel(self, task_id: str) -> Task:
        """Cancel an unfinished task; its agent is freed."""
        task = self.queue.get(task_id)
        if task is None:
            self._task(task_id)
            raise HubError("invalid_state", "task is already finished", task_id)
        holder = task.assigned_to if task.status in ACTIVE else None
        self.queue.cancel(task)
        if holder is not None:
            self._push(holder, TaskCancelled(task_id=task_id))
            self._release(holder)
        return task

    def for_each_task(self, change: Callable[[str], Task], task_ids: list[str]) -> dict[str, Any]:
        """Apply ``change`` (``cancel``, ``retry``...) to each task on its own: one refusal
        does not stop the others. Returns ``changed`` (the tasks) and ``refused`` (the
        ``task_id``, ``error`` and ``message`` of each refusal)."""
        changed: list[dict[str, Any]] = []
        refused: list[dict[str, Any]] = []
        for task_id in dict.fromkeys(task_ids):
            try:
                changed.append(change(self.resolve_task_id(task_id)).model_dump(mode="json"))
            except HubError as error:
                refused.append({"task_id": task_id, "error": error.code, "message": error.message})
        return {"changed": changed, "refused": refused}

    def requeue(self, task_id: str) -> Task:
        """Take an assigned or working task from its agent and queue it again at once.

        The holder is told (``task_cancelled``) and is not offered the task again in the
        same scheduling round; the next assignment has a new generation, so a late report
        from the holder is refused.
        """
        task = self.queue.get(task_id)
        if task is None or task.status not in ACTIVE:
            status = (task or self.find_task(task_id)).status.value
            raise HubError("invalid_state", f"task is {status}, not assigned or working", task_id)
        holder = task.assigned_to
        self.queue.requeue(task, f"requeued by an operator from {holder}")
        if holder is None:
            self.scheduler.schedule()
            return task
        self._push(holder, TaskCancelled(task_id=task_id))
        self._release(holder, schedule=False)
        self.scheduler.schedule_excluding(holder)
        return task

    def set_draining(self, agent_id: str, draining: bool) -> dict[str, Any]:
        """Drain an agent (it finishes its current task and is offered no new one), or
        end its drain; returns the agent. A drain lasts until undone or the hub restarts."""
        agent = self.presence.get(agent_id)
        if agent is None:
            raise HubError("not_found", f"no agent {agent_id} has connected since the hub started")
        if agent.draining != draining:
            agent.draining = draining
            self.presence.refresh(agent)
            self._agent_event("agent_drain", agent)
            if not draining:
                self.scheduler.schedule()
        return self.agent_view(agent)

    def retry_many(self, task_ids: list[str]) -> dict[str, Any]:
        """:meth:`retry` each task, prerequisites before their dependants among them, so a
        failed chain comes back whole in one request."""
        tasks: dict[str, Task] = {}
        unresolved: list[str] = []  # refused, and reported, by for_each_task
        for task_id in task_ids:
            try:
                task = self._task(self.resolve_task_id(task_id))
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
        task = self._task(task_id)
        if task.status is not TaskStatus.dead_letter:
            raise HubError(
                "invalid_state", f"task is {task.status.value}, not dead_letter", task_id
            )
        self.queue.retry_dead_letter(task)
        self.scheduler.schedule()
        return task

    def list_tasks(self, task_filter: TaskFilter) -> TaskPage:
        """A page of tasks by filter, from the store (the caller commits first); the
        limit is cut to ``list_limit_max``."""
        if task_filter.limit > self.settings.list_limit_max:
            task_filter = replace(task_filter, limit=self.settings.list_limit_max)
        return self.store.list_task_page(task_filter)

    def agents_snapshot(self) -> list[dict[str, Any]]:
        """Every known agent with its state."""
        return [self.agent_view(agent) for agent in self.presence.agents.values()]

    def agent_view(self, agent: AgentRecord) -> dict[str, Any]:
        """One agent as dashboards and operators see it, with its task's hold."""
        return agent.snapshot(self.held_task(agent))

    async def stats(self) -> dict[str, Any]:
        """Queue counts and execution totals (the caller commits first). The store's part
        is read off the event loop: it counts every task ever run."""
        stored = await self.store.read_task_stats(self.clock.now_ms() - THROUGHPUT_WINDOW_S * 1000)
        stats = dict(stored)  # the read may be shared with other callers: add to a copy
        stats["queue_depth"] = self.queue.queued_count()
        stats["agents_connected"] = len(self.presence.connected())
        stats["progress_dropped"] = self.progress_dropped
        stats["throughput"] = {**stats.pop("finished"), "window_s": THROUGHPUT_WINDOW_S}
        by_state = dict.fromkeys((state.value for state in AgentState), 0)
        for agent in self.presence.agents.values():
            by_state[agent.state.value] += 1
        stats["agents_by_state"] = by_state
        return stats

    async def snapshot(self, recent: int = 50) -> dict[str, Any]:
        """What a dashboard starts from (the caller commits first)."""
        stats = await self.stats()
        return {
            "timestamp": self.clock.now_ms(),
            "version": __version__,
            "started_at": self.started_at,
            "agents": self.agents_snapshot(),
            "endpoints": self.endpoints_snapshot(),
            "queue": {
                "depth": stats["queue_depth"],
                "by_status": stats["by_status"],
                "queued_by_priority": stats["queued_by_priority"],
            },
            "recent_tasks": self.store.list_task_page(TaskFilter(limit=recent)).tasks,
            "costs": {
                "totals": stats["totals"],
                "by_model": stats["by_model"],
                "by_agent": stats["by_agent"],
            },
            # Held tasks may be older than every recent one; their progress lives in memory.
            "active_tasks": [
                listed_task(self.described(task), ResultSummary.of(task.result))
                for task in self.queue.tasks.values()
                if task.status in ACTIVE
            ],
            "execution_tails": self.execution_tails.snapshot(),
            "queue_history": self.queue_history.snapshot(self.clock.now_ms()),
            "timeouts": {
                "accept_timeout_ms": int(self.settings.accept_timeout_s * 1000),
                "reclaim_after_ms": int(self.settings.reclaim_after_s * 1000),
            },
        }

    # --- periodic sweep -------------------------------------------------------------

    def sweep(self) -> list[str]:
        """Apply every timeout and save recent activity; returns the agents whose
        connections must be closed."""
        settings = self.settings
        now = self.clock.now_ms()
        self.stage_recent_activity()
        self.queue.release_held(now)
        overdue = self.queue.overdue(
            int(settings.accept_timeout_s * 1000), int(settings.reclaim_after_s * 1000)
        )
        for task, reason in overdue:
            holder = task.assigned_to
            self.queue.requeue(task, reason, event="task_reclaimed")
            if holder is not None:
                self._release(holder, schedule=False)
        grace_ms = int(settings.disconnect_grace_s * 1000)
        for agent in list(self.presence.agents.values()):
            if agent.connected or agent.current_task is None or agent.disconnected_at is None:
                continue
            if now - agent.disconnected_at >= grace_ms:
                held = self.queue.get(agent.current_task)
                if held is not None and held.assigned_to == agent.agent_id:
                    self.queue.requeue(held, f"{agent.agent_id} did not come back in time")
                self._release(agent.agent_id, schedule=False)
        idle_ms = int(settings.idle_timeout_s * 1000)
        silent = [
            agent.agent_id
            for agent in self.presence.connected()
            if now - agent.last_seen >= idle_ms
        ]
        self.scheduler.schedule()
        return silent
