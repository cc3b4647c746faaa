"""Read models: what operators, dashboards and the HTTP routes see of the hub's state.

Tasks as described at this moment (why one waits, for whom one is held), agents and
endpoints with their loads, the route a task would take, the statistics and the
snapshot a dashboard starts from. Nothing here changes the domain's state, except the
latest load report per host, which only these views and routing read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol

from agentcom import __version__
from agentcom.config import Settings
from agentcom.errors import HubError
from agentcom.hub.agents import AgentRecord, AgentState, Presence
from agentcom.hub.clock import Clock
from agentcom.hub.endpoints import Endpoint, EndpointRegistry
from agentcom.hub.history import QueueHistory
from agentcom.hub.queue import TaskQueue
from agentcom.hub.routing import NoViableTarget, Router
from agentcom.hub.tails import ExecutionTails
from agentcom.protocol.common import ACTIVE, TaskStatus
from agentcom.protocol.operator import route_preview, stats_reply
from agentcom.protocol.task import (
    ReclaimReason,
    ResultSummary,
    Task,
    TaskHold,
    TaskSubmission,
    listed_task,
    task_from_submission,
)
from agentcom.store.base import Store, TaskFilter, TaskPage

__all__ = ["DEPENDANTS_SHOWN", "THROUGHPUT_WINDOW_S", "HubViews", "ViewsHub"]

#: Most dependants a task lists when read (``dependants_total`` counts them all).
DEPENDANTS_SHOWN = 100
THROUGHPUT_WINDOW_S = 3600  # stats count the tasks finished in the last hour
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _host_key(host: str) -> str:
    """One name per host for matching endpoints to agents: loopback names are one host."""
    host = host.lower()
    return "loopback" if host in _LOOPBACK_NAMES else host


class ViewsHub(Protocol):
    """What the views read of the hub's facade (``Hub`` is the one implementation): its
    parts, when it started and how many progress frames it dropped."""

    queue: TaskQueue
    presence: Presence
    endpoints: EndpointRegistry
    router: Router
    store: Store
    clock: Clock
    settings: Settings
    execution_tails: ExecutionTails
    queue_history: QueueHistory
    started_at: int
    progress_dropped: int


class HubViews:
    """The hub's state as it is read: built on demand, never stored.

    Args:
        hub: the domain whose state is shown.
    """

    def __init__(self, hub: ViewsHub) -> None:
        self.hub = hub
        self.queue = hub.queue
        self.presence = hub.presence
        self.endpoints = hub.endpoints
        self.store = hub.store
        self.clock = hub.clock
        self.settings = hub.settings
        self.shared = hub.settings.shares_database  # other nodes serve the database too
        self.execution_tails = hub.execution_tails
        self.queue_history = hub.queue_history
        # Latest resource report per host (see _host_key), for endpoints no agent reported.
        self._host_resources: dict[str, dict[str, Any]] = {}

    def note_host_resources(self, host: str, resources: dict[str, Any]) -> None:
        """An agent connected from ``host`` reported its load: endpoints on that host
        that no agent reported use it."""
        self._host_resources[_host_key(host)] = resources

    def find_task(self, task_id: str) -> Task:
        """A task in any state; raises ``not_found``. A queued task says why it waits, a
        task held for its agent says so (``held_for``), and every task lists the tasks
        that depend on it (``dependants``)."""
        task = self.described(self.task(task_id))
        dependants, total = self.store.load_dependants(task_id, DEPENDANTS_SHOWN)
        if not total:
            return task
        return task.model_copy(update={"dependants": dependants, "dependants_total": total})

    def task(self, task_id: str) -> Task:
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
        task = task_from_submission(
            submission, "preview", now, depends_on=list(submission.depends_on)
        )
        try:
            complexity, decision, _ = self.hub.router.decide(task, None, allow_fallback=False)
            waits = None
        except NoViableTarget as no_target:
            complexity, decision, _ = self.hub.router.decide(task, None, allow_fallback=True)
            waits = (
                None
                if self.settings.fallback_wait_s == 0
                else (
                    f"{no_target.reason}: would wait {self.settings.fallback_wait_s:g} s for a "
                    f"{no_target.tier.value} target, then fall back"
                )
            )
        return route_preview(complexity, decision, len(self.endpoints.viable()), waits)

    def list_tasks(self, task_filter: TaskFilter) -> TaskPage:
        """A page of tasks by filter, from the store (the caller commits first); the
        limit is cut to ``list_limit_max``."""
        if task_filter.limit > self.settings.list_limit_max:
            task_filter = replace(task_filter, limit=self.settings.list_limit_max)
        return self.store.list_task_page(task_filter)

    def agents_snapshot(self, elsewhere: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
        """Every known agent with its state.

        Nodes sharing a database: with ``elsewhere``, the views of the agents whose
        session is on another node (``server/nodeagents.py``), each of which takes the
        place of this node's record of the agent unless the agent is connected here; the
        list is in the order of agent ids, the same on every node.
        """
        if not self.shared:
            return [self.agent_view(agent) for agent in self.presence.agents.values()]
        agents = self.presence.agents
        listed = {agent_id: self.agent_view(agent) for agent_id, agent in agents.items()}
        for view in elsewhere:
            here = self.presence.get(view["agent_id"])
            if here is None or not here.connected:
                listed[view["agent_id"]] = view
        return [listed[agent_id] for agent_id in sorted(listed)]

    def agent_view(self, agent: AgentRecord) -> dict[str, Any]:
        """One agent as dashboards and operators see it, with its task's hold (and, nodes
        sharing a database, this node's id: it is, or was last, connected here)."""
        return agent.snapshot(self.held_task(agent), self.settings.node_id if self.shared else None)

    async def stats(self, agents: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Queue counts and execution totals (the caller commits first). The store's part
        is read off the event loop: it counts every task ever run. The agents are counted
        by state from ``agents`` (views, as :meth:`agents_snapshot` lists them) when given,
        else from this node's."""
        stored = await self.store.read_task_stats(self.clock.now_ms() - THROUGHPUT_WINDOW_S * 1000)
        by_state = dict.fromkeys((state.value for state in AgentState), 0)
        if agents is None:
            for agent in self.presence.agents.values():
                by_state[agent.state.value] += 1
        else:
            for view in agents:
                by_state[view["state"]] += 1
        connected = sum(count for state, count in by_state.items() if state != AgentState.offline)
        # The read may be shared with other callers: the reply is a new dict.
        return stats_reply(
            stored,
            queue_depth=self.queue.queued_count(),
            agents_connected=connected,
            progress_dropped=self.hub.progress_dropped,
            window_s=THROUGHPUT_WINDOW_S,
            agents_by_state=by_state,
        )

    async def snapshot(
        self, recent: int = 50, agents: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """What a dashboard starts from (the caller commits first); ``agents`` as
        :meth:`agents_snapshot` lists them (default: this node's)."""
        if agents is None:
            agents = self.agents_snapshot()
        stats = await self.stats(agents)
        return {
            "timestamp": self.clock.now_ms(),
            "version": __version__,
            "started_at": self.hub.started_at,
            "agents": agents,
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

    def endpoint_view(self, endpoint: Endpoint) -> dict[str, Any]:
        """An endpoint as operators see it: the registry's view and the load of its host
        (the latest resource report routing uses, or None)."""
        return endpoint.view(self.resources_of(endpoint))

    def endpoints_snapshot(self) -> list[dict[str, Any]]:
        """Every known endpoint, as :meth:`endpoint_view` shows it."""
        return [self.endpoint_view(endpoint) for endpoint in self.endpoints.endpoints.values()]

    def resources_of(self, endpoint: Endpoint) -> dict[str, Any] | None:
        """The latest load report for an endpoint's host: from the agent that reported the
        endpoint, else from any agent that connected from the endpoint's host."""
        agent = self.presence.get(endpoint.agent_id) if endpoint.agent_id else None
        if agent is not None and agent.resources:
            return agent.resources
        return self._host_resources.get(_host_key(endpoint.host))
