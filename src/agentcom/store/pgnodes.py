"""The hub nodes sharing one PostgreSQL database: which are alive, which agent is
connected to which, and which one leads.

Each node keeps a row in ``hub_nodes`` fresh (:meth:`NodeRegistry.heartbeat`) and
records the agents connected to it in ``agent_sessions``, one row per agent: the newest
connection wins, and the end of an older one (on this node or another) leaves it alone.
A session's row carries the agent as its node lists it (its view, refreshed at its
agent events), and stays, marked ended, when the connection ends: every node lists the
agents of the others (:meth:`NodeRegistry.agents_elsewhere`), offline ones included,
until their node leaves or is forgotten.
The leader, the one node that runs the sweeps and reclaims, is whichever holds the
session-level advisory lock :data:`agentcom.store.pgschema.LEADER_LOCK` on a connection
kept for it alone: PostgreSQL drops the lock when that session ends, however the node
ends, so leadership passes to the next node that tries.

An agent that holds a task (assigned or working) but has no live session (no row, one
ended, or one on a node whose heartbeat is stale) is an orphan: :meth:`NodeRegistry.orphaned_agents`
finds them, and says when it looked, so the leader can tell how long each has been one
and reclaim its tasks after a grace, whatever the tasks' age.

Every time is the database's clock in milliseconds (``clock_timestamp()``), never a
node's: the clocks of the nodes' machines may disagree, and it does not matter.

Every call runs on one thread of the registry's own, so the event loop is never held,
and gives up after ``timeout_s``; a call that gave up may still take effect. A
connection the server ended is replaced at the next call. The schema must exist
(:func:`agentcom.store.pgschema.ensure_schema`, which opening a store runs).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, NamedTuple

import psycopg

from agentcom.errors import StoreError
from agentcom.protocol.common import ACTIVE
from agentcom.store.pgconnection import PgConnection
from agentcom.store.pgschema import LEADER_LOCK
from agentcom.store.pgworker import PgWorker

__all__ = ["AgentElsewhere", "NodeRegistry", "Orphans"]


_NOW = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"

_REFRESH_NODE = f"UPDATE hub_nodes SET address = %s, heartbeat_at = {_NOW} WHERE node_id = %s"
_INSERT_NODE = f"""
INSERT INTO hub_nodes (node_id, address, started_at, heartbeat_at)
VALUES (%s, %s, {_NOW}, {_NOW})
ON CONFLICT (node_id) DO UPDATE SET address = excluded.address,
    heartbeat_at = excluded.heartbeat_at
"""

# Strictly later than the session it replaces, even within one millisecond: the end of
# that older connection never matches the newer one.
_CONNECT_AGENT = f"""
INSERT INTO agent_sessions (agent_id, node_id, connected_at, info) VALUES (%s, %s, {_NOW}, %s)
ON CONFLICT (agent_id) DO UPDATE SET node_id = excluded.node_id,
    connected_at = greatest(excluded.connected_at, agent_sessions.connected_at + 1),
    ended_at = NULL, info = excluded.info
RETURNING connected_at
"""
_THIS_SESSION = "WHERE agent_id = %s AND node_id = %s AND connected_at = %s"
_DISCONNECT_AGENT = f"""
UPDATE agent_sessions SET ended_at = coalesce(ended_at, {_NOW}), info = coalesce(%s, info)
{_THIS_SESSION}
"""
_UPDATE_AGENT = f"UPDATE agent_sessions SET info = %s {_THIS_SESSION}"

# The literal statuses of the partial index tasks_active_by_agent, so that it serves.
_ACTIVE_LIST = ", ".join(f"'{status.value}'" for status in sorted(ACTIVE))
_AGENTS_ELSEWHERE = f"""
SELECT session.node_id, session.ended_at IS NULL, session.info, task.task_id, task.status
FROM agent_sessions session
JOIN hub_nodes node ON node.node_id = session.node_id
LEFT JOIN LATERAL (
    SELECT task_id, status FROM tasks
    WHERE assigned_to = session.agent_id AND status IN ({_ACTIVE_LIST})
    ORDER BY updated_at DESC LIMIT 1
) task ON true
WHERE session.node_id <> %s AND session.info IS NOT NULL
  AND node.heartbeat_at >= {_NOW} - %s
ORDER BY session.agent_id
"""

_ORPHANS = f"""
WITH clock AS (SELECT {_NOW} AS now_ms)
SELECT clock.now_ms, ARRAY(
    SELECT DISTINCT task.assigned_to FROM tasks task
    LEFT JOIN agent_sessions session
           ON session.agent_id = task.assigned_to AND session.ended_at IS NULL
    LEFT JOIN hub_nodes node ON node.node_id = session.node_id
    WHERE task.status = ANY(%s) AND task.assigned_to IS NOT NULL
      AND (node.node_id IS NULL OR node.heartbeat_at < clock.now_ms - %s)
) FROM clock
"""

# One statement, so a node whose heartbeat lands meanwhile is kept with its sessions.
# Sessions of a node that has no row are dropped too once as old: a node writes its row
# before its agents connect.
_FORGET_DEAD_NODES = f"""
WITH dead AS (
    DELETE FROM hub_nodes WHERE heartbeat_at < {_NOW} - %s RETURNING node_id
), sessions AS (
    DELETE FROM agent_sessions session
    WHERE session.node_id IN (SELECT node_id FROM dead)
       OR (session.connected_at < {_NOW} - %s
           AND NOT EXISTS (SELECT 1 FROM hub_nodes node WHERE node.node_id = session.node_id))
)
SELECT node_id FROM dead ORDER BY node_id
"""

# Whether this session holds the leader's lock.
_LEADING = """
SELECT count(*) FROM pg_locks
WHERE pid = pg_backend_pid() AND locktype = 'advisory' AND granted AND objsubid = 2
  AND classid::bigint = %s AND objid::bigint = %s
"""

_ACTIVE_STATUSES = sorted(status.value for status in ACTIVE)


class Orphans(NamedTuple):
    """What :meth:`NodeRegistry.orphaned_agents` found."""

    now_ms: int
    """The database's clock when it looked (ms)."""
    agent_ids: frozenset[str]
    """The agents holding a task with no live session then."""


class AgentElsewhere(NamedTuple):
    """An agent whose session is on another live node
    (:meth:`NodeRegistry.agents_elsewhere`)."""

    node_id: str
    """The node its session is on."""
    connected: bool
    """Whether that session goes on (else it ended: the agent is offline)."""
    info: str
    """The agent as its node lists it (``AgentView`` as JSON), as of its last event."""
    task_id: str | None
    """The task it holds as stored now (assigned or working), if any."""
    task_status: str | None
    """That task's status."""


class NodeRegistry(PgWorker):
    """This node's presence, its agents' sessions and its bid for leadership, in the
    database shared by the hub nodes; see the module docstring.

    Nothing is opened until the first call.

    Args:
        url: the database (``postgresql://user@host:port/name``).
        node_id: this node's name, unique among the nodes sharing the database.
        address: where this node serves agents (``ws://HOST:PORT/ws``), for operators.
        timeout_s: how long a call may take (opening a connection included) before it
            fails with :class:`StoreError`.
    """

    def __init__(self, url: str, node_id: str, address: str | None, timeout_s: float) -> None:
        super().__init__(url, timeout_s, "pg-nodes", "node registry ")
        self.node_id = node_id
        self.address = address
        self._leader: PgConnection | None = None  # kept for the lock alone; used on the thread
        self._leading = False

    async def heartbeat(self) -> bool:
        """Mark this node alive now.

        Returns:
            Whether its row had to be written anew: the first heartbeat, or one after
            :meth:`forget_dead_nodes` dropped the node (its agents' sessions with it:
            record them again with :meth:`agent_connected`).
        """
        return await self._call("heartbeat", self._heartbeat)

    def _heartbeat(self) -> bool:
        connection = self._thread.connection()
        with self._deadlines.bound(connection, self._timeout_s):
            if connection.execute(_REFRESH_NODE, (self.address, self.node_id)).rowcount:
                return False
            connection.execute(_INSERT_NODE, (self.node_id, self.address))
        return True

    async def agent_connected(self, agent_id: str, info: str | None = None) -> int:
        """Record that ``agent_id`` is connected to this node, replacing its session on
        any node, with ``info`` (its view as JSON, listed by the other nodes); returns the
        session's ``connected_at`` (the database's ms, later than that of the session
        replaced), which the other session calls take."""
        row = await self._call(
            "agent_connected", self._fetch_one, _CONNECT_AGENT, (agent_id, self.node_id, info)
        )
        return int(row[0])

    async def agent_updated(self, agent_id: str, connected_at: int, info: str) -> None:
        """The view of ``agent_id`` whose session began at ``connected_at`` on this node
        is now ``info``; a newer session of the agent, here or elsewhere, is kept."""
        await self._call(
            "agent_updated", self._execute, _UPDATE_AGENT,
            (info, agent_id, self.node_id, connected_at),
        )  # fmt: skip

    async def agent_disconnected(
        self, agent_id: str, connected_at: int, info: str | None = None
    ) -> None:
        """The session of ``agent_id`` that began at ``connected_at`` on this node ended,
        the agent now as ``info`` (None: as last recorded). Its row stays, marked ended
        (no longer a live session), until this node leaves; a newer session of the
        agent, here or on another node, is kept."""
        await self._call(
            "agent_disconnected", self._execute, _DISCONNECT_AGENT,
            (info, agent_id, self.node_id, connected_at),
        )  # fmt: skip

    async def agents_elsewhere(self, node_timeout_ms: int) -> list[AgentElsewhere]:
        """The agents whose session, going on or ended, is on another node alive within
        ``node_timeout_ms``, by agent id, each with the task it holds as stored now."""
        rows = await self._call(
            "agents_elsewhere", self._fetch_all, _AGENTS_ELSEWHERE, (self.node_id, node_timeout_ms)
        )
        return [AgentElsewhere(*row) for row in rows]

    async def orphaned_agents(self, node_timeout_ms: int) -> Orphans:
        """The agents holding an assigned or working task with no live session: none
        recorded, or one on a node missing or whose heartbeat is older than
        ``node_timeout_ms``; with the database's clock when this was looked up."""
        row = await self._call(
            "orphaned_agents", self._fetch_one, _ORPHANS, (_ACTIVE_STATUSES, node_timeout_ms)
        )
        return Orphans(int(row[0]), frozenset(row[1]))

    async def forget_dead_nodes(self, older_than_ms: int) -> list[str]:
        """Drop the nodes whose heartbeat is older than ``older_than_ms``, with their
        agents' sessions (and sessions that old of nodes with no row); returns the
        nodes dropped, by id."""
        return await self._call("forget_dead_nodes", self._forget_dead_nodes, older_than_ms)

    def _forget_dead_nodes(self, older_than_ms: int) -> list[str]:
        connection = self._thread.connection()
        with self._deadlines.bound(connection, self._timeout_s):
            rows = connection.execute(_FORGET_DEAD_NODES, (older_than_ms, older_than_ms))
            return [row[0] for row in rows.fetchall()]

    async def try_lead(self) -> bool:
        """Whether this node leads: it holds the leader's lock, or has just taken it.

        Cheap enough to call every second: one statement on the connection kept for the
        lock. When that connection was lost, so was the lock (another node may hold it
        now): False, and the next call tries again on a new connection.

        Raises:
            StoreError: the database cannot be reached (this node does not lead).
        """
        return await self._call("try_lead", self._try_lead)

    def _try_lead(self) -> bool:
        if self._leader is None:
            self._leader = self._connect()
        connection, leading = self._leader, self._leading
        try:
            with self._deadlines.bound(connection, self._timeout_s):
                if leading:
                    row = connection.execute(_LEADING, LEADER_LOCK).fetchone()
                else:
                    row = connection.execute(
                        "SELECT pg_try_advisory_lock(%s, %s)", LEADER_LOCK
                    ).fetchone()
        except psycopg.Error:  # a closed connection raises too
            self._drop_leader()
            if leading:
                return False  # the session, and the lock with it, are gone
            raise
        self._leading = bool(row and row[0])
        return self._leading

    async def leave(self) -> None:
        """Drop this node's row and its agents' sessions, and give up leadership: a clean
        stop. The registry stays usable."""
        await self._call("leave", self._leave)

    def _leave(self) -> None:
        self._drop_leader()
        connection = self._thread.connection()
        with self._deadlines.bound(connection, self._timeout_s), connection.transaction():
            connection.execute("DELETE FROM agent_sessions WHERE node_id = %s", (self.node_id,))
            connection.execute("DELETE FROM hub_nodes WHERE node_id = %s", (self.node_id,))

    async def close(self) -> None:
        """Close every connection (giving up leadership) and stop the thread; later calls
        fail, a second close does nothing. This node's rows stay (see :meth:`leave`)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._thread.run(self._drop_leader), self._timeout_s)
        await asyncio.to_thread(self._shut_down)

    def _shut_down(self) -> None:
        super()._shut_down()
        self._drop_leader()  # in case the thread never got to it

    # --- on the thread ----------------------------------------------------------------

    def _drop_leader(self) -> None:
        """Close the leader's connection, which frees the lock if it held it."""
        connection, self._leader, self._leading = self._leader, None, False
        if connection is not None:
            connection.close()

    def _execute(self, sql: str, params: tuple[Any, ...]) -> None:
        connection = self._thread.connection()
        with self._deadlines.bound(connection, self._timeout_s):
            connection.execute(sql, params)

    def _fetch_all(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        connection = self._thread.connection()
        with self._deadlines.bound(connection, self._timeout_s):
            return connection.execute(sql, params).fetchall()

    def _fetch_one(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...]:
        connection = self._thread.connection()
        with self._deadlines.bound(connection, self._timeout_s):
            row = connection.execute(sql, params).fetchone()
        if row is None:  # every statement given returns a row
            raise StoreError("the database returned no row")
        return row
