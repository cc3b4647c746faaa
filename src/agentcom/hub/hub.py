"""The hub's domain facade: agents, tasks, scheduling and routing, with no sockets and
no SQL.

The ``Hub`` builds the domain's parts on one store, clock and settings and keeps what
concerns an agent's presence and the periodic sweep; the rest lives with its job:
task frames from agents (``task_frames``), operator actions on tasks (``task_ops``) and
endpoints (``endpoint_ops``), scheduling (``scheduler``), read models (``views``) and
recovery (``recovery``). Every command changes state synchronously, stages durable
changes in the store and collects what must be sent (pushes to agents, events for
subscribers) in an :class:`Effects`, which :meth:`Hub.run` returns with the command's
result. The caller commits the store and only then sends: so nothing is announced
before it is durable.

It runs past 450 lines because presence (identify, disconnect, liveness, the sweep) is
the facade's own job and reads every part; a node sharing its database adds only the
binding of an arriving agent's task and the reclaim the leader asks for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar, cast

from agentcom.config import Settings
from agentcom.errors import HubError
from agentcom.hub.agents import AgentRecord, Presence
from agentcom.hub.clock import Clock
from agentcom.hub.conflicts import ConflictLog
from agentcom.hub.endpoint_ops import EndpointOperations
from agentcom.hub.endpoints import EndpointRegistry
from agentcom.hub.history import QueueHistory
from agentcom.hub.messaging import Messaging
from agentcom.hub.queue import EventSink, TaskQueue
from agentcom.hub.recovery import Recovery
from agentcom.hub.routing import Router
from agentcom.hub.scheduler import Scheduler
from agentcom.hub.sharedmessaging import SharedMessageStore, SharedMessaging
from agentcom.hub.tails import ExecutionTails
from agentcom.hub.task_frames import TaskFrames
from agentcom.hub.task_ops import TASK_ID_PREFIX_MIN, TaskOperations
from agentcom.hub.views import HubViews
from agentcom.protocol import agent as frames
from agentcom.protocol.common import ACTIVE, TERMINAL, Outbound, TaskStatus, dumped_or_none
from agentcom.protocol.events import agent_event, task_transition_event
from agentcom.protocol.outbound import (
    AgentJoined,
    AgentLeft,
    RestartSidecar,
    StatusChanged,
)
from agentcom.protocol.task import (
    Task,
)
from agentcom.store.base import Store

__all__ = ["TASK_ID_PREFIX_MIN", "Effects", "Hub"]

logger = logging.getLogger(__name__)

SEEN_EVENT_INTERVAL_MS = 10_000

_P = ParamSpec("_P")
_T = TypeVar("_T")


@dataclass(slots=True)
class Effects:
    """What a command caused, to be sent once the staged changes are committed: pushes
    to agents, events for subscribers, the tasks it finished (their waiting operators
    are woken), endpoints to check, and the earliest time the hub must wake up."""

    pushes: list[tuple[str, Outbound]] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    finished: list[Task] = field(default_factory=list)
    check_endpoints: list[str] = field(default_factory=list)
    wake_at_ms: int | None = None
    # Nodes sharing a database: the conflict log's position when these effects began
    # (a task whose write lost after it was changed from a state that did not hold), and
    # the tasks they touched whose writes lost, once settled.
    mark: int = 0
    lost: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(
            self.pushes or self.events or self.finished or self.check_endpoints or self.wake_at_ms
        )

    def drop_lost(self, lost: set[str]) -> None:
        """Remove what concerns tasks in ``lost`` (their writes lost to another node's:
        what was decided from their old state must not be sent), and record in
        :attr:`lost` those these effects touched."""
        touched = {event.get("task_id") for _, event in self.events}
        touched.update(getattr(frame, "task_id", None) for _, frame in self.pushes)
        self.lost = frozenset(lost.intersection(touched))
        if not self.lost:
            return
        self.pushes = [(a, f) for a, f in self.pushes if getattr(f, "task_id", None) not in lost]
        self.events = [(t, e) for t, e in self.events if e.get("task_id") not in lost]
        self.finished = [task for task in self.finished if task.task_id not in lost]

    def extend(self, later: Effects) -> None:
        """Add what ``later`` caused after these effects, in its order."""
        self.pushes += later.pushes
        self.events += later.events
        self.finished += later.finished
        self.check_endpoints += later.check_endpoints
        if later.wake_at_ms is not None:
            wake = self.wake_at_ms
            self.wake_at_ms = later.wake_at_ms if wake is None else min(wake, later.wake_at_ms)


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
        # Other nodes serve the same database: they change tasks too (see ConflictLog,
        # Recovery.refresh, and the sweep).
        self.shared = settings.shares_database
        self.conflicts = ConflictLog()
        self.presence = Presence()
        self.endpoints = EndpointRegistry(
            settings.endpoint_unhealthy_after, settings.agent_endpoint_hosts
        )
        self.queue = TaskQueue(
            store,
            clock,
            self._task_event,
            history_cap=settings.history_cap,
            default_max_retries=settings.default_max_retries,
        )
        self._outbox = Effects()
        # Told of every task event (metrics); the hub works the same without it.
        self.task_observer: EventSink | None = None
        # Told of every agent event, by name, with the agent's view (agent_connected and
        # agent_disconnected among them): nodes sharing a database record where each
        # agent is, and how it is listed (server/cluster.py).
        self.presence_observer: Callable[[str, dict[str, Any]], None] | None = None
        self.messaging: Messaging
        if self.shared:  # the agents of every node are reached (hub/sharedmessaging.py)
            shared_store = cast(SharedMessageStore, store)
            self.messaging = SharedMessaging(
                self.presence, shared_store, clock, settings, self.push, self.publish
            )
        else:
            self.messaging = Messaging(self.presence, store, clock, settings, self.push)
        self.attempt_errors: dict[str, str] = {}  # task id -> error event of the running attempt
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
        self.views = HubViews(self)
        self.recovery = Recovery(self)
        self.router = Router(self.endpoints, self.views.resources_of, settings.claude_model)
        self.scheduler = Scheduler(
            self.queue, self.presence, self.router, clock, settings,
            self.push, self._wake_at, self.attempt_errors,
        )  # fmt: skip
        self.task_frames = TaskFrames(self)
        self.task_ops = TaskOperations(self)
        self.endpoint_ops = EndpointOperations(self)

    # --- plumbing -------------------------------------------------------------------

    def has_outbox(self) -> bool:
        """Whether anything waits to be sent or published."""
        return bool(self._outbox)

    def take_outbox(self) -> Effects:
        """Everything the hub's own work (liveness, sweeps, timers) queued for sending
        since the last call."""
        outbox, self._outbox = self._outbox, Effects(mark=self.conflicts.seq)
        return outbox

    def run(
        self, command: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> tuple[_T, Effects]:
        """Run one command and return its result with what it caused, apart from the
        hub's outbox: a command that raises leaves nothing behind, and what others
        queued is untouched."""
        outer, self._outbox = self._outbox, Effects(mark=self.conflicts.seq)
        try:
            return command(*args, **kwargs), self._outbox
        finally:
            self._outbox = outer

    def push(self, agent_id: str, frame: Outbound) -> None:
        self._outbox.pushes.append((agent_id, frame))

    def writes_lost(self, task_ids: list[str]) -> None:
        """Nodes sharing a database: these tasks' writes lost to another node's. Recorded
        (effects made before now drop what concerns them when settled), and what the
        outbox holds about them goes now: everything added to it later is decided anew."""
        self.conflicts.record(task_ids)
        self._outbox.drop_lost(set(task_ids))
        self._outbox.mark = self.conflicts.seq

    def _wake_at(self, at_ms: int) -> None:
        wake = self._outbox.wake_at_ms
        self._outbox.wake_at_ms = at_ms if wake is None else min(wake, at_ms)

    def check_endpoint_soon(self, endpoint_id: str) -> None:
        """Ask for a health check of an endpoint once the change is committed."""
        self._outbox.check_endpoints.append(endpoint_id)

    def publish(self, topic: str, event: dict[str, Any]) -> None:
        self._outbox.events.append((topic, event))

    def _task_event(self, name: str, task: Task, extra: dict[str, Any]) -> None:
        now = self.clock.now_ms()
        self.queue_history.observe(now, self.queue.queued_count(), name == "task_completed")
        event = task_transition_event(name, task, now, extra)
        self.publish("tasks", event)
        if task.status in TERMINAL:
            self._outbox.finished.append(task)
            # However it ended (cancelled, reclaimed into dead letter...), no attempt runs on.
            self.attempt_errors.pop(task.task_id, None)
        if self.task_observer is not None:
            self.task_observer(name, task, extra)
        agent_id = extra.get("agent_id", task.assigned_to)
        logger.info(
            "task %s %s (agent %s)", task.task_id, name, agent_id,
            extra={"task_id": task.task_id, "agent_id": agent_id,
                   "generation": task.generation, "event": name},
        )  # fmt: skip

    def _agent_event(self, name: str, agent: AgentRecord) -> None:
        view = self.views.agent_view(agent)
        self.publish("agents", agent_event(name, agent.agent_id, self.clock.now_ms(), view))
        if self.presence_observer is not None:
            self.presence_observer(name, view)

    # --- agent presence -------------------------------------------------------------

    def identify(
        self, frame: frames.Identify, remote_host: str | None = None, held: Sequence[str] = ()
    ) -> AgentRecord:
        """An agent identified (its token already checked) from ``remote_host``; ``held``:
        nodes sharing a database, the tasks the database says it holds."""
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
        agent.declined = False
        agent.pm2_info = dumped_or_none(frame.pm2_info)
        if frame.ollama_url:
            try:
                self.report_ollama(agent.agent_id, frame.ollama_url, remote_host)
            except HubError:
                logger.warning("agent %s reported an invalid ollama_url", agent.agent_id)
        if self.shared and agent.current_task is None:
            self._bind_held_task(agent, held)
        self.presence.refresh(agent)
        self._broadcast(agent.agent_id, AgentJoined(agent=agent.info()))
        self._agent_event("agent_connected", agent)
        self.messaging.agent_arrived(agent.agent_id)
        self.scheduler.schedule()
        return agent

    def _bind_held_task(self, agent: AgentRecord, held: Sequence[str]) -> None:
        """An agent arriving at this node may hold a task it ran through another node."""
        for task_id in held:
            task = self.queue.get(task_id)
            if task is not None and task.assigned_to == agent.agent_id and task.status in ACTIVE:
                agent.current_task = task.task_id
                agent.task_accepted = task.status is TaskStatus.working
                return

    def reclaim_orphaned(self, agent_ids: set[str]) -> int:
        """Nodes sharing a database: these agents hold tasks but have been connected to no
        live node for the reconnect grace; their tasks go back to the queue. Returns how
        many."""
        reclaimed = 0
        for task in list(self.queue.tasks.values()):
            holder = task.assigned_to
            if holder in agent_ids and task.status in ACTIVE:
                self.queue.requeue(task, f"{holder} did not come back in time")
                reclaimed += 1
                if holder is not None:
                    self.release_agent(holder, schedule=False)
        self.scheduler.schedule()
        return reclaimed

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
        if agent.declined:  # it declined a task before this frame: work may come again
            agent.declined = False
            self.presence.refresh(agent)
            self.scheduler.schedule()
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
                self.push(agent.agent_id, frame)

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
        self.push(agent_id, RestartSidecar(reason=reason))
        logger.info("agent %s asked to restart: %s", agent_id, reason)
        self._agent_event("agent_restart_requested", agent)
        return self.views.agent_view(agent)

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
            self.views.note_host_resources(agent.host, agent.resources)
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
            self.endpoint_ops.endpoint_event("endpoint_added", endpoint)
        if changed or endpoint.healthy is None:
            self.check_endpoint_soon(endpoint.endpoint_id)

    def release_agent(self, agent_id: str, schedule: bool = True) -> None:
        """The agent holds no task any more; then, unless told not to, schedule."""
        agent = self.presence.get(agent_id)
        if agent is None:
            return
        agent.current_task = None
        agent.task_accepted = False
        agent.held_since = None
        self.presence.refresh(agent)
        if schedule:
            self.scheduler.schedule()

    # --- operator actions on agents ---------------------------------------------------

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
        return self.views.agent_view(agent)

    def find_task(self, task_id: str) -> Task:
        """A task in any state, described as :meth:`HubViews.find_task` does; raises
        ``not_found``."""
        return self.views.find_task(task_id)

    # --- periodic sweep -------------------------------------------------------------

    def _holds(self, task: Task) -> bool:
        """Whether ``task`` is held by an agent of this node."""
        holder = self.presence.get(task.assigned_to) if task.assigned_to is not None else None
        return holder is not None and holder.current_task == task.task_id

    def sweep(self) -> list[str]:
        """Apply every timeout and save recent activity; returns the agents whose
        connections must be closed."""
        settings = self.settings
        now = self.clock.now_ms()
        self.recovery.stage_recent_activity()
        self.queue.release_held(now)
        overdue = self.queue.overdue(
            int(settings.accept_timeout_s * 1000), int(settings.reclaim_after_s * 1000)
        )
        if self.shared:  # another node's agent reports its progress to that node only
            overdue = [(task, reason) for task, reason in overdue if self._holds(task)]
        for task, reason in overdue:
            holder = task.assigned_to
            self.queue.requeue(task, reason, event="task_reclaimed")
            if holder is not None:
                self.release_agent(holder, schedule=False)
        grace_ms = int(settings.disconnect_grace_s * 1000)
        for agent in list(self.presence.agents.values()):
            if agent.connected or agent.current_task is None or agent.disconnected_at is None:
                continue
            if now - agent.disconnected_at >= grace_ms:
                held = self.queue.get(agent.current_task)
                # Shared: it may have come back through another node; the leader decides
                # from the database (reclaim_orphaned).
                if held is not None and held.assigned_to == agent.agent_id and not self.shared:
                    self.queue.requeue(held, f"{agent.agent_id} did not come back in time")
                self.release_agent(agent.agent_id, schedule=False)
        idle_ms = int(settings.idle_timeout_s * 1000)
        silent = [
            agent.agent_id
            for agent in self.presence.connected()
            if now - agent.last_seen >= idle_ms
        ]
        self.scheduler.schedule()
        return silent
