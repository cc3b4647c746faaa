"""The agents operators and dashboards are shown: ``agents_list``, ``/api/agents``, the
dashboard snapshot and the agent counts of stats.

A lone hub shows the agents it knows. A node among several sharing a database
(``server/cluster.py``) knows its own agents in memory and shows, besides, those whose
session is on another live node, read from the database where each node records its
agents' views (``store/pgnodes.py``). Such a view is as of the agent's last agent event
on its node; its ``state`` and ``current_task`` are those of the task it holds as stored
now, so they are as current as the database. Each view names its ``node``. When the
database cannot be read, a node shows its own agents and says why the list is partial.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, NamedTuple

from agentcom.errors import StoreError
from agentcom.hub.agents import AgentState

if TYPE_CHECKING:
    from agentcom.server.host import SessionHost
    from agentcom.store.pgnodes import AgentElsewhere

__all__ = ["AgentList", "listed_agents", "view_elsewhere"]

logger = logging.getLogger(__name__)


class AgentList(NamedTuple):
    """The agents to show, and why the list is partial, if it is."""

    agents: list[dict[str, Any]]
    """Their views (``protocol.events.AgentView``)."""
    warning: str | None = None
    """Set when the other nodes' agents could not be read: only this node's are listed."""


async def listed_agents(server: SessionHost) -> AgentList:
    """Every agent known to this node, and, nodes sharing a database, those of the other
    live nodes (in the order of agent ids). Waits at most ``db_timeout_s`` for the
    database, and lists this node's agents alone, with a warning, when it does not
    answer."""
    views = server.hub.views
    shared = server.shared
    if shared is None:
        return AgentList(views.agents_snapshot())
    try:
        elsewhere = await shared.agents_elsewhere()
    except StoreError as exc:
        logger.warning("listing this node's agents only: %s", exc)
        return AgentList(
            views.agents_snapshot(),
            f"only this node's agents: those of the other nodes could not be read ({exc})",
        )
    return AgentList(views.agents_snapshot([view_elsewhere(agent) for agent in elsewhere]))


def view_elsewhere(agent: AgentElsewhere) -> dict[str, Any]:
    """The view of an agent whose session is on another node: as that node recorded it,
    with its node, and its state and task (and a hold on another task dropped) as the
    database holds them now."""
    view: dict[str, Any] = json.loads(agent.info)
    if not agent.connected:
        state = AgentState.offline
    elif agent.task_status is None:
        state = AgentState.idle
    else:
        state = AgentState(agent.task_status)  # assigned or working: as the agent's state
    view.update(state=state.value, current_task=agent.task_id, node=agent.node_id)
    hold = view.get("held_task")
    if hold is not None and hold.get("task_id") != agent.task_id:
        view["held_task"] = None
    return view
