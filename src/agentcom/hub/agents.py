"""Agent presence and per-agent state."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agentcom.protocol.events import agent_view
from agentcom.protocol.outbound import AgentInfo
from agentcom.protocol.task import TaskHold

__all__ = ["AgentRecord", "AgentState", "Presence"]


class AgentState(StrEnum):
    """What an agent is doing, as the scheduler sees it."""

    idle = "idle"  # connected, holds no task: may be offered work
    assigned = "assigned"  # holds a task it has not accepted yet
    working = "working"  # holds a task it accepted
    offline = "offline"  # not connected (may still hold a task during its grace period)


@dataclass(slots=True)
class AgentRecord:
    """Everything the hub knows about one agent."""

    agent_id: str
    name: str | None = None
    status: str | None = None
    capabilities: frozenset[str] = frozenset()
    connected: bool = False
    connected_at: int = 0
    last_seen: int = 0
    seen_published_at: int = 0  # when an agent_seen event last went to dashboards
    disconnected_at: int | None = None
    current_task: str | None = None
    task_accepted: bool = False
    # Since when the hub keeps current_task for it without news: set when the connection
    # holding the task ends (or the hub restarts), cleared once it reports on the task.
    held_since: int | None = None
    draining: bool = False  # an operator asked: finish the current task, take no new one
    # It declined the task it was given (task_rejected): it is offered nothing until its
    # next frame, so a sidecar that is stopping, or busy, is not handed work back at once.
    declined: bool = False
    ollama_url: str | None = None
    host: str | None = None  # the address it connected from
    resources: dict[str, Any] = field(default_factory=dict)
    pm2_info: dict[str, Any] | None = None  # its process as pm2 reported it at identify
    # Set by agent_restarting ({reason, since}), cleared when it identifies again.
    restarting: dict[str, Any] | None = None

    @property
    def state(self) -> AgentState:
        """Derived from connection and current task."""
        if not self.connected:
            return AgentState.offline
        if self.current_task is None:
            return AgentState.idle
        return AgentState.working if self.task_accepted else AgentState.assigned

    def info(self) -> AgentInfo:
        """The ``list_agents`` entry."""
        return AgentInfo(
            agent_id=self.agent_id,
            name=self.name,
            status=self.status,
            capabilities=sorted(self.capabilities),
            connected_at=self.connected_at,
        )

    def snapshot(
        self, held_task: TaskHold | None = None, node: str | None = None
    ) -> dict[str, Any]:
        """The dashboard and operator view; ``held_task`` is its task's hold, if any, and
        ``node`` the hub node it is on (nodes sharing a database only)."""
        return agent_view(
            agent_id=self.agent_id,
            name=self.name,
            status=self.status,
            state=self.state.value,
            capabilities=sorted(self.capabilities),
            connected_at=self.connected_at,
            last_seen=self.last_seen,
            current_task=self.current_task,
            draining=self.draining,
            ollama_url=self.ollama_url,
            resources=self.resources,
            pm2_info=self.pm2_info,
            restarting=self.restarting,
            held_task=held_task,
            node=node,
        )


class Presence:
    """Known agents and the idle ones, longest idle first."""

    def __init__(self) -> None:
        self.agents: dict[str, AgentRecord] = {}
        self._idle: dict[str, None] = {}

    def get(self, agent_id: str) -> AgentRecord | None:
        """A known agent, or None."""
        return self.agents.get(agent_id)

    def record(self, agent_id: str) -> AgentRecord:
        """The agent's record, created on first sight."""
        agent = self.agents.get(agent_id)
        if agent is None:
            agent = self.agents[agent_id] = AgentRecord(agent_id=agent_id)
        return agent

    def refresh(self, agent: AgentRecord) -> None:
        """Re-file the agent in the idle set after its state changed (a draining agent, or
        one that just declined a task, is not offered work)."""
        if agent.state is AgentState.idle and not agent.draining and not agent.declined:
            self._idle.setdefault(agent.agent_id, None)
        else:
            self._idle.pop(agent.agent_id, None)

    def idle_agents(self) -> list[AgentRecord]:
        """Idle agents that may be offered work, longest idle first."""
        return [self.agents[agent_id] for agent_id in self._idle]

    def connected(self) -> list[AgentRecord]:
        """Agents with a live connection."""
        return [agent for agent in self.agents.values() if agent.connected]
