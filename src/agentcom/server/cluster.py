"""A node among several serving one PostgreSQL database (``Settings.shares_database``).

Every node keeps the unfinished tasks in memory, as a lone hub does, and schedules them
to its own agents; the database decides between nodes. Each task write is conditional
(its row must still be as this node read or last wrote it: ``store/sqlwrites.py``), so of
two nodes giving one task to their agents, one write lands and the other is reported
here: the loser reloads the task, sends nothing it had decided from the stale state
(:meth:`HubServer.settle_all` drops it) and schedules again.

Memory follows the other nodes' changes three ways:

- **wake-ups**: every task event another node publishes through Redis names a task;
  this node re-reads those tasks (a batch per loop turn, one query) and schedules. A
  task submitted on one node thus reaches an idle agent of another within a Redis hop
  and a read.
- **a slow poll** every ``queue_poll_s``: the unfinished tasks' states are compared with
  memory and those that differ are re-read: what a lost wake-up (Redis down) missed.
- **conflicts**: a write that lost re-reads its task at once.

Who is connected where lives in the database too (:class:`agentcom.store.pgnodes.NodeRegistry`):
each node records its heartbeat and its agents' sessions, each with the agent's view as
of its last agent event, which the other nodes list (``server/nodeagents.py``). One node
at a time leads (an advisory lock, taken over when its holder's session ends): it gives
back to the queue the tasks of agents connected to no live node for
``disconnect_grace_s``, whether their node died or they did. A node applies the
acceptance and no-progress timeouts only to its own agents' tasks: they report their
progress to it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from agentcom.errors import StoreError
from agentcom.hub.hub import Effects, Hub
from agentcom.protocol.common import TERMINAL
from agentcom.protocol.task import StoredState, Task

if TYPE_CHECKING:
    from agentcom.config import Settings
    from agentcom.hub.agents import AgentRecord
    from agentcom.store.pgnodes import AgentElsewhere, Orphans

__all__ = ["NodeDirectory", "SharedNode", "SharedStore", "every"]

logger = logging.getLogger(__name__)

# The start of a task event as encoded (protocol/events.py builds them in this order):
# transitions and state reports name their event before the task; progress does not,
# and changes nothing stored.
_TASK_CHANGE = re.compile(rb'\{"type":"task_event","event":"task_[a-z_]+","task_id":"([^"]+)"')

# The agent events that start and end a session here; every other one refreshes its view.
_CONNECTED = "agent_connected"
_DISCONNECTED = "agent_disconnected"
_REFRESHED = "refreshed"


_FULL_POLL_EVERY = 30
"""One poll in this many reads every unfinished task; the others, recent changes."""
_RECENT_POLL_MS = 60_000
"""How far back a poll of recent changes looks: well beyond the poll interval, so that
clocks of nodes that differ by less than this miss nothing."""
_TERMINAL_VALUES = frozenset(status.value for status in TERMINAL)
_REFRESH_WINDOW_S = 0.003
"""How long a wake-up waits for others to share its read: under load, fewer and larger
reads (measured: 2-node hub CPU per task 1.2-1.7 ms without, 1.0-1.2 ms with 5 ms);
at low load, this much more latency across nodes."""
_FORGET_AFTER = 10
"""The leader forgets nodes silent for this many node timeouts (their agents' tasks were
given back long before)."""


class SharedStore(Protocol):
    """The reads a shared node makes beyond the store interface (``store/sqlbase.py``)."""

    def get_tasks(self, task_ids: list[str]) -> dict[str, Task]:
        """The stored state of each task that exists."""

    def unfinished_states(self) -> dict[str, StoredState]:
        """``(status, generation, assigned_to)`` of every unfinished task."""

    def states_updated_since(self, since_ms: int) -> dict[str, StoredState]:
        """The same for every task updated at or after ``since_ms``."""

    def active_task_ids_of(self, agent_id: str) -> list[str]:
        """The tasks assigned to ``agent_id`` that it has not finished."""


class NodeDirectory(Protocol):
    """Nodes' heartbeats, agents' sessions and the leadership, in the database
    (:class:`agentcom.store.pgnodes.NodeRegistry`)."""

    async def heartbeat(self) -> bool:
        """This node is alive; True when its row was written anew (its sessions too must
        be recorded again)."""

    async def agent_connected(self, agent_id: str, info: str | None = None) -> int:
        """The agent's session is this node's now, the agent as ``info`` (its view as
        JSON); returns when it began."""

    async def agent_updated(self, agent_id: str, connected_at: int, info: str) -> None:
        """The agent, whose session began at ``connected_at`` here, is now as ``info``."""

    async def agent_disconnected(
        self, agent_id: str, connected_at: int, info: str | None = None
    ) -> None:
        """The agent's session that began at ``connected_at`` here ended; the agent is
        now as ``info``."""

    async def agents_elsewhere(self, node_timeout_ms: int) -> list[AgentElsewhere]:
        """The agents whose session, going on or ended, is on another live node."""

    async def try_lead(self) -> bool:
        """Whether this node leads (taking the leadership if it is free)."""

    async def orphaned_agents(self, node_timeout_ms: int) -> Orphans:
        """The database's time, and the agents holding tasks connected to no live node."""

    async def forget_dead_nodes(self, older_than_ms: int) -> list[str]:
        """Drop nodes silent for longer than that, with their sessions."""

    async def leave(self) -> None:
        """This node stops: its row and sessions go, and its leadership."""

    async def close(self) -> None:
        """Release every connection."""


class SharedHost(Protocol):
    """What the shared node uses of the server (``HubServer``)."""

    hub: Hub
    settings: Settings

    async def settle(self, *, effects: Effects) -> bool:
        """Commit, then send what ``effects`` hold."""


class SharedNode:
    """This node's part in sharing the database; see the module docstring.

    Args:
        host: the server whose domain and settle it uses.
        store: the shared store's reads.
        directory: heartbeats, sessions and leadership.
    """

    def __init__(self, host: SharedHost, store: SharedStore, directory: NodeDirectory) -> None:
        self.host = host
        self.store = store
        self.directory = directory
        self.leading = False
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._sessions: dict[str, int] = {}  # agent id -> when its last session here began
        # (agent id, _CONNECTED, _DISCONNECTED or _REFRESHED, its view as JSON or None)
        self._session_ops: asyncio.Queue[tuple[str, str, str | None]] = asyncio.Queue()
        self._unstored_views: dict[str, str] = {}  # agent id -> view a _REFRESHED will store
        self._resync_sessions = False
        self._orphaned_since: dict[str, int] = {}  # agent id -> database time first seen
        self._polls = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._settling: set[asyncio.Task[bool]] = set()
        # For /health and /metrics.
        self.refreshed = 0  # tasks re-read because another node changed them
        self.missed = 0  # of which the poll found (their wake-up was lost)
        self.reclaimed = 0  # tasks given back after their agent's grace, while leading
        self.heartbeat_error: str | None = None  # while heartbeats fail: why

    def start(self) -> None:
        """Start following other nodes, heartbeats and sessions."""
        self._tasks = [
            asyncio.create_task(self._refresh_forever(), name="shared refresh"),
            asyncio.create_task(
                every(self.host.settings.queue_poll_s, self.poll, "polling the queue"),
                name="shared poll",
            ),
            asyncio.create_task(self._beat_forever(), name="shared heartbeat"),
            asyncio.create_task(self._sessions_forever(), name="shared sessions"),
        ]

    async def stop(self) -> None:
        """Stop; this node's sessions and leadership leave the database."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._settling, return_exceptions=True)
        self._tasks = []
        try:
            await self.directory.leave()
        except StoreError as exc:
            logger.warning("could not remove this node from the database: %s", exc)
        with contextlib.suppress(StoreError):
            await self.directory.close()

    # --- following the other nodes ------------------------------------------------------

    def remote_event(self, topic: str, encoded: bytes) -> None:
        """Another node published an event: a task it changed is re-read here."""
        if topic != "tasks":
            return
        found = _TASK_CHANGE.match(encoded)
        if found is not None:
            self._dirty.add(found.group(1).decode("ascii", "replace"))
            self._wake.set()

    def conflicted(self, task_ids: list[str]) -> None:
        """Writes of these tasks lost to another node's: reload them and schedule again
        (the store calls this before the commit's waiters resume)."""
        hub = self.host.hub
        hub.writes_lost(task_ids)

        def reload() -> None:
            hub.recovery.forget_refused([("task", task_id) for task_id in task_ids])
            hub.scheduler.schedule()

        try:
            _, effects = hub.run(reload)
        except StoreError as exc:
            logger.warning("could not re-read %d tasks another node changed: %s",
                           len(task_ids), exc)  # fmt: skip
            self._dirty.update(task_ids)
            return
        if effects:
            self._settle_soon(effects)

    def _settle_soon(self, effects: Effects) -> None:
        task = asyncio.create_task(self.host.settle(effects=effects))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _refresh_forever(self) -> None:
        while True:
            await self._wake.wait()
            # Wake-ups of the next few milliseconds join the batch: one read for many.
            await asyncio.sleep(_REFRESH_WINDOW_S)
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            try:
                await self.refresh(sorted(dirty))
            except StoreError as exc:
                logger.warning("could not re-read tasks other nodes changed: %s", exc)
                self._dirty.update(dirty)  # the poll wakes this again
            except Exception:
                logger.exception("refreshing tasks other nodes changed failed")

    async def refresh(self, task_ids: list[str]) -> None:
        """Re-read ``task_ids`` and take their stored state, then schedule."""
        if not task_ids:
            return
        found = self.store.get_tasks(task_ids)
        self.refreshed += len(task_ids)
        stored: dict[str, Task | None] = {task_id: found.get(task_id) for task_id in task_ids}
        hub = self.host.hub

        def take() -> None:
            hub.recovery.refresh(stored)
            hub.scheduler.schedule()

        _, effects = hub.run(take)
        # Operators here waiting for a task another node finished are answered.
        effects.finished += [task for task in found.values() if task.status in TERMINAL]
        await self.host.settle(effects=effects)

    async def refresh_agent(self, agent_id: str) -> list[str]:
        """Before an agent identifies here: its tasks as stored now, whatever this node
        heard (the node it was connected to may have died before its events went out);
        returns their ids. Raises StoreError when the database cannot be read."""
        task_ids = self.store.active_task_ids_of(agent_id)
        await self.refresh(task_ids)
        return task_ids

    def poll(self) -> None:
        """Compare the tasks in the database with memory; re-read those that differ (a
        wake-up was lost). Most polls read only the tasks updated in the last minute
        (by any node's clock); every ``_FULL_POLL_EVERY``-th, every unfinished one."""
        tasks = self.host.hub.queue.tasks
        full = self._polls % _FULL_POLL_EVERY == 0
        self._polls += 1
        if full:
            stored = self.store.unfinished_states()
            differ = {task_id for task_id in tasks if task_id not in stored}
        else:
            since = self.host.hub.clock.now_ms() - _RECENT_POLL_MS
            stored = self.store.states_updated_since(since)
            differ = {
                task_id
                for task_id, (status, _, _) in stored.items()
                if status in _TERMINAL_VALUES and task_id in tasks
            }
        differ.update(
            task_id
            for task_id, state in stored.items()
            if state[0] not in _TERMINAL_VALUES
            and ((task := tasks.get(task_id)) is None or task.stored_state() != state)
        )
        has_unwritten = self.host.hub.store.has_unwritten
        differ = {task_id for task_id in differ if not has_unwritten(task_id)}
        if differ:
            logger.info("%d tasks changed by other nodes were missed; re-reading them",
                        len(differ))  # fmt: skip
            self.missed += len(differ)
            self._dirty.update(differ)
            self._wake.set()

    # --- sessions, heartbeats, leadership -----------------------------------------------

    def presence(self, event: str, view: dict[str, Any]) -> None:
        """An agent event here (``Hub.presence_observer``): the agent identified here (its
        session moves to this node), its connection here ended, or its view changed (what
        the other nodes list of it is refreshed: once for changes quicker than a write)."""
        agent_id = view["agent_id"]
        info = json.dumps(view, separators=(",", ":"))
        if event in (_CONNECTED, _DISCONNECTED):
            self._unstored_views.pop(agent_id, None)  # this change stores a newer view
            self._session_ops.put_nowait((agent_id, event, info))
            return
        if agent_id not in self._unstored_views:
            self._session_ops.put_nowait((agent_id, _REFRESHED, None))
        self._unstored_views[agent_id] = info

    def agent_connected(self, agent: AgentRecord) -> None:
        """Record again that an agent is connected here."""
        self.presence(_CONNECTED, self.host.hub.views.agent_view(agent))

    async def agents_elsewhere(self) -> list[AgentElsewhere]:
        """The agents whose session, going on or ended, is on another node alive within
        ``node_timeout_s``, as that node last recorded them. Raises StoreError when the
        database does not answer within ``db_timeout_s``."""
        return await self.directory.agents_elsewhere(int(self.host.settings.node_timeout_s * 1000))

    async def _sessions_forever(self) -> None:
        while True:
            agent_id, change, info = await self._session_ops.get()
            try:
                await self._record_session(agent_id, change, info)
            except StoreError as exc:
                logger.warning("could not record agent %s's session: %s", agent_id, exc)
                self._resync_sessions = True

    async def _record_session(self, agent_id: str, change: str, info: str | None) -> None:
        if change == _CONNECTED:
            self._sessions[agent_id] = await self.directory.agent_connected(agent_id, info)
            return
        began = self._sessions.get(agent_id)  # kept once ended: its row stays, offline
        if began is None:  # never recorded (the database failed): the next resync does
            return
        if change == _DISCONNECTED:
            await self.directory.agent_disconnected(agent_id, began, info)
            return
        info = self._unstored_views.pop(agent_id, None)
        if info is not None:
            await self.directory.agent_updated(agent_id, began, info)

    async def _beat_forever(self) -> None:
        settings = self.host.settings
        while True:
            try:
                await self.beat()
                self.heartbeat_error = None
            except StoreError as exc:
                if self.heartbeat_error is None:  # once per outage
                    logger.warning("heartbeat failed: %s", exc)
                self.heartbeat_error = str(exc)
                self._resync_sessions = True
            except Exception:
                logger.exception("heartbeat failed")
            await asyncio.sleep(settings.node_heartbeat_s)

    async def beat(self) -> None:
        """One heartbeat: record this node alive, and while leading, give back the tasks of
        agents no live node has had for the reconnect grace."""
        if await self.directory.heartbeat() or self._resync_sessions:
            self._resync_sessions = False
            for agent in self.host.hub.presence.connected():
                self.agent_connected(agent)
        try:
            leading = await self.directory.try_lead()
        except StoreError:
            leading = False
        if leading != self.leading:
            logger.info("this node %s the cluster's sweeps",
                        "leads" if leading else "no longer leads")  # fmt: skip
            self.leading = leading
            self._orphaned_since.clear()
        if leading:
            await self._reclaim_orphans()
            gone = await self.directory.forget_dead_nodes(_FORGET_AFTER * self._node_timeout_ms)
            if gone:
                logger.info("forgot nodes silent for long: %s", ", ".join(gone))

    @property
    def _node_timeout_ms(self) -> int:
        return int(self.host.settings.node_timeout_s * 1000)

    async def _reclaim_orphans(self) -> None:
        settings = self.host.settings
        now, orphans = await self.directory.orphaned_agents(self._node_timeout_ms)
        since = {agent_id: self._orphaned_since.get(agent_id, now) for agent_id in orphans}
        grace_ms = int(settings.disconnect_grace_s * 1000)
        due = {agent_id for agent_id, first in since.items() if now - first >= grace_ms}
        self._orphaned_since = {a: t for a, t in since.items() if a not in due}
        if due:
            logger.info(
                "agents connected to no live node for %.0f s: %s; their tasks go back to the "
                "queue", settings.disconnect_grace_s, ", ".join(sorted(due)),
            )  # fmt: skip
            hub = self.host.hub
            reclaimed, effects = hub.run(hub.reclaim_orphaned, due)
            self.reclaimed += reclaimed
            with contextlib.suppress(StoreError):
                await self.host.settle(effects=effects)


async def every(interval_s: float, step: Callable[[], None], what: str) -> None:
    """Run ``step`` every ``interval_s`` seconds until cancelled: a failure is logged
    (briefly when the database is away; the next round tries again) and ends nothing."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            step()
        except StoreError as exc:
            logger.warning("%s: %s", what, exc)
        except Exception:
            logger.exception("%s failed", what)
