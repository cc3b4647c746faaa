"""Hub nodes sharing one PostgreSQL database: their registry (``store/pgnodes.py``).

Several registries, one per node id, on one real database: one leads at a time and
another takes over when it goes; agent sessions move between nodes, and end leaving the
agent's last view for the other nodes to list; agents holding tasks with no live session
are found, staleness judged by the database's clock (moved back in SQL, never waited
for).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from hubprocess import closed_port
from tcpproxy import BlackHoleProxy

from agentcom.errors import StoreError
from agentcom.store.pgconnection import connect
from agentcom.store.pgnodes import AgentElsewhere, NodeRegistry, Orphans
from agentcom.store.pgschema import LEADER_LOCK, MIGRATIONS, ensure_schema

TIMEOUT_S = 5.0
NODE_TIMEOUT_MS = 30_000

Registries = Callable[..., NodeRegistry]

# The session holding the leader's lock in the current database.
_LEADER_SESSION = """
SELECT pid FROM pg_locks
WHERE locktype = 'advisory' AND granted AND objsubid = 2
  AND classid::bigint = %s AND objid::bigint = %s
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""

_NOW = "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint"


@pytest.fixture
def schema_url(pg_url: str) -> str:
    """The test's database with agentcom's schema made."""
    connection = connect(pg_url)
    try:
        ensure_schema(connection)
    finally:
        connection.close()
    return pg_url


@pytest.fixture
def admin(schema_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A connection of the test's own to the database, to look and to meddle."""
    with psycopg.connect(schema_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
async def registries(schema_url: str) -> AsyncIterator[Registries]:
    """Make a node's registry on the test's database (``make(node_id, url=..., ...)``);
    every one is closed at the end."""
    made: list[NodeRegistry] = []

    def make(node_id: str, url: str = schema_url, timeout_s: float = TIMEOUT_S) -> NodeRegistry:
        registry = NodeRegistry(url, node_id, f"ws://{node_id}.internal:4001/ws", timeout_s)
        made.append(registry)
        return registry

    yield make
    for registry in made:
        await registry.close()


def hold_task(admin: psycopg.Connection[tuple[object, ...]], agent_id: str | None,
              status: str) -> None:  # fmt: skip
    """A task row in ``status`` assigned to ``agent_id``, as a store would write it."""
    admin.execute(
        "INSERT INTO tasks (task_id, status, priority, assigned_to, generation, created_at,"
        " updated_at, needed_capabilities, body, rest)"
        " VALUES (md5(random()::text), %s, 'normal', %s, 1, 0, 0, '{}', '{}', '{}')",
        (status, agent_id),
    )


def age_heartbeat(admin: psycopg.Connection[tuple[object, ...]], node_id: str, ms: int) -> None:
    """Move a node's last heartbeat ``ms`` into the past."""
    admin.execute(
        "UPDATE hub_nodes SET heartbeat_at = heartbeat_at - %s WHERE node_id = %s", (ms, node_id)
    )


def db_now(admin: psycopg.Connection[tuple[object, ...]]) -> int:
    row = admin.execute(_NOW).fetchone()
    assert row is not None
    return int(row[0])  # type: ignore[call-overload]


def sessions(admin: psycopg.Connection[tuple[object, ...]]) -> list[tuple[object, ...]]:
    return admin.execute(
        "SELECT agent_id, node_id, connected_at FROM agent_sessions ORDER BY agent_id"
    ).fetchall()


def session_state(
    admin: psycopg.Connection[tuple[object, ...]], agent_id: str
) -> tuple[object, ...]:
    """Whether the agent's session row is marked ended, and the view it holds."""
    row = admin.execute(
        "SELECT ended_at IS NOT NULL, info FROM agent_sessions WHERE agent_id = %s", (agent_id,)
    ).fetchone()
    assert row is not None
    return row


def test_a_version_1_schema_migrates_to_version_2_keeping_its_rows(pg_url: str) -> None:
    # given a database as the first released schema made it, with a task in it
    with psycopg.connect(pg_url, autocommit=True) as old:
        with old.transaction():
            old.execute(MIGRATIONS[0])
            old.execute("CREATE TABLE schema_version (version integer)")
            old.execute("INSERT INTO schema_version (version) VALUES (1)")
        hold_task(old, "worker", "working")

    # when this agentcom opens it
    connection = connect(pg_url)
    try:
        ensure_schema(connection)
        version = connection.execute("SELECT version FROM schema_version").fetchall()
        tables = connection.execute(
            "SELECT to_regclass('hub_nodes') IS NOT NULL, to_regclass('agent_sessions') IS NOT NULL"
        ).fetchone()
        tasks = connection.execute("SELECT assigned_to FROM tasks").fetchall()
    finally:
        connection.close()

    # then it is at version 2, the node tables made, the task kept
    assert len(MIGRATIONS) == 2
    assert version == [(2,)]
    assert tables == (True, True)
    assert tasks == [("worker",)]


async def test_one_node_leads_at_a_time(registries: Registries) -> None:
    first, second = registries("node-a"), registries("node-b")

    assert await first.try_lead()
    for _ in range(3):  # asked every second, by both
        assert not await second.try_lead()
        assert await first.try_lead()


async def test_when_the_leader_closes_the_next_node_to_try_leads(registries: Registries) -> None:
    first, second = registries("node-a"), registries("node-b")
    assert await first.try_lead()
    assert not await second.try_lead()

    await first.close()
    await first.close()  # a second close does nothing

    assert await second.try_lead()
    with pytest.raises(StoreError, match="closed"):
        await first.try_lead()


async def test_a_node_that_leaves_gives_up_leadership_and_its_rows(
    registries: Registries, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    first, second = registries("node-a"), registries("node-b")
    await first.heartbeat()
    await second.heartbeat()
    await first.agent_connected("worker-1")
    await second.agent_connected("worker-2")
    assert await first.try_lead()

    await first.leave()

    assert await second.try_lead()
    assert not await first.try_lead()  # still usable, but no longer first
    assert admin.execute("SELECT node_id FROM hub_nodes").fetchall() == [("node-b",)]
    assert [row[:2] for row in sessions(admin)] == [("worker-2", "node-b")]


async def test_a_leader_whose_session_ended_loses_leadership_and_another_node_takes_it(
    registries: Registries, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    first, second = registries("node-a"), registries("node-b")
    assert await first.try_lead()
    assert not await second.try_lead()

    # when the server ends the leader's session (a restart, an administrator, a timeout)
    holder = admin.execute(_LEADER_SESSION, LEADER_LOCK).fetchone()
    assert holder is not None
    admin.execute("SELECT pg_terminate_backend(%s)", holder)

    # then the leader learns at its next try that it no longer leads, the other node
    # takes over at its next, and the first tries again on a new session as a follower
    assert not await first.try_lead()
    assert await second.try_lead()
    assert not await first.try_lead()
    await second.close()
    assert await first.try_lead()


async def test_a_heartbeat_writes_the_database_clock_and_says_when_the_row_is_new(
    registries: Registries, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    node = registries("node-a")
    before = db_now(admin)

    assert await node.heartbeat()  # the node's row is new
    first = admin.execute("SELECT started_at, heartbeat_at FROM hub_nodes").fetchone()
    age_heartbeat(admin, "node-a", 1000)
    assert not await node.heartbeat()  # the row was there: refreshed
    row = admin.execute("SELECT node_id, address, started_at, heartbeat_at FROM hub_nodes")
    node_id, address, started_at, heartbeat_at = row.fetchone()  # type: ignore[misc]
    after = db_now(admin)

    assert (node_id, address) == ("node-a", "ws://node-a.internal:4001/ws")
    assert first is not None and started_at == first[0]  # kept from the first heartbeat
    assert before <= started_at <= heartbeat_at <= after  # type: ignore[operator]


async def test_an_agent_session_moves_to_its_newest_node_and_a_stale_disconnect_keeps_it(
    registries: Registries, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    first, second = registries("node-a"), registries("node-b")
    connected_first = await first.agent_connected("worker")

    # when the agent connects to the other node before its first connection ended
    connected_second = await second.agent_connected("worker")
    await first.agent_disconnected("worker", connected_first)

    # then its session is the newest connection's, untouched by the end of the older one
    assert connected_second > connected_first
    assert sessions(admin) == [("worker", "node-b", connected_second)]

    assert session_state(admin, "worker") == (False, None)

    # and the end of the newest connection ends it, its row kept for the other nodes
    await second.agent_disconnected("worker", connected_second)
    assert sessions(admin) == [("worker", "node-b", connected_second)]
    assert session_state(admin, "worker")[0]


async def test_a_reconnection_in_the_same_millisecond_is_still_a_newer_session(
    registries: Registries, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    node = registries("node-a")
    older = await node.agent_connected("worker")
    newer = await node.agent_connected("worker")

    await node.agent_disconnected("worker", older)

    assert newer > older
    assert sessions(admin) == [("worker", "node-a", newer)]


async def test_agents_holding_tasks_without_a_live_session_are_orphans(
    registries: Registries, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    # given a live node, a node whose heartbeat is stale and a node that never beat
    live, stale, silent = registries("node-a"), registries("node-b"), registries("node-c")
    await live.heartbeat()
    await stale.heartbeat()
    await live.agent_connected("on-live-node")
    await stale.agent_connected("on-stale-node")
    await silent.agent_connected("on-unknown-node")
    age_heartbeat(admin, "node-b", NODE_TIMEOUT_MS + 1)
    # and tasks held by agents on each, by an agent with no session, and tasks that are
    # not held (queued, finished)
    hold_task(admin, "on-live-node", "working")
    hold_task(admin, "on-stale-node", "assigned")
    hold_task(admin, "on-stale-node", "working")
    hold_task(admin, "on-unknown-node", "working")
    hold_task(admin, "no-session", "assigned")
    hold_task(admin, None, "queued")
    hold_task(admin, "finished", "completed")
    hold_task(admin, "gave-up", "dead_letter")
    before = db_now(admin)

    orphans = await live.orphaned_agents(NODE_TIMEOUT_MS)

    assert orphans.agent_ids == {"on-stale-node", "on-unknown-node", "no-session"}
    assert before <= orphans.now_ms <= db_now(admin)


async def test_a_node_is_stale_only_past_the_timeout_given(
    registries: Registries, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    node = registries("node-a")
    await node.heartbeat()
    await node.agent_connected("worker")
    hold_task(admin, "worker", "working")
    age_heartbeat(admin, "node-a", 10_000)

    assert (await node.orphaned_agents(60_000)).agent_ids == frozenset()
    assert (await node.orphaned_agents(5_000)).agent_ids == {"worker"}

    # and a heartbeat makes it live again
    await node.heartbeat()
    assert (await node.orphaned_agents(5_000)).agent_ids == frozenset()


async def test_with_no_task_held_there_is_no_orphan_and_the_clock_is_still_told(
    registries: Registries, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    before = db_now(admin)

    orphans = await registries("node-a").orphaned_agents(NODE_TIMEOUT_MS)

    assert isinstance(orphans, Orphans)
    assert orphans.agent_ids == frozenset()
    assert before <= orphans.now_ms <= db_now(admin)


async def test_dead_nodes_are_forgotten_with_their_sessions_and_one_that_returns_is_told(
    registries: Registries, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    live, dead, silent = registries("node-a"), registries("node-b"), registries("node-c")
    await live.heartbeat()
    await dead.heartbeat()
    await live.agent_connected("on-live-node")
    await dead.agent_connected("on-dead-node")
    await silent.agent_connected("on-unknown-node")
    age_heartbeat(admin, "node-b", NODE_TIMEOUT_MS + 1)
    admin.execute(
        "UPDATE agent_sessions SET connected_at = connected_at - %s WHERE node_id = 'node-c'",
        (NODE_TIMEOUT_MS + 1,),
    )

    assert await live.forget_dead_nodes(NODE_TIMEOUT_MS) == ["node-b"]

    assert admin.execute("SELECT node_id FROM hub_nodes").fetchall() == [("node-a",)]
    assert [row[:2] for row in sessions(admin)] == [("on-live-node", "node-a")]
    # the forgotten node, back, learns its row was gone (its agents must be recorded again)
    assert await dead.heartbeat()
    assert await live.forget_dead_nodes(NODE_TIMEOUT_MS) == []


async def test_a_connection_the_server_ended_is_replaced_at_the_next_call(
    registries: Registries, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    node = registries("node-a")
    await node.heartbeat()

    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )

    with pytest.raises(StoreError) as failed:
        await node.heartbeat()
    assert "\n" not in str(failed.value) and str(failed.value).startswith("node registry heartbeat")
    assert not await node.heartbeat()


async def test_an_unreachable_server_fails_each_call_with_one_line(
    registries: Registries,
) -> None:
    node = registries("node-a", url=f"postgresql://postgres@127.0.0.1:{closed_port()}/none")

    for call in (node.heartbeat(), node.try_lead(), node.agent_connected("worker"),
                 node.orphaned_agents(NODE_TIMEOUT_MS)):  # fmt: skip
        with pytest.raises(StoreError) as failed:
            await call
        assert "\n" not in str(failed.value)


async def test_a_silent_network_path_fails_a_call_within_the_timeout_and_it_recovers(
    registries: Registries, schema_url: str
) -> None:
    proxy = await BlackHoleProxy(urlsplit(schema_url).port or 5432).start()
    try:
        parts = urlsplit(schema_url)
        through = urlunsplit(parts._replace(netloc=f"postgres@127.0.0.1:{proxy.port}"))
        node = registries("node-a", url=through, timeout_s=1.0)
        await node.heartbeat()

        # when the path to the server goes silent (no FIN, no RST)
        proxy.go_dark()
        started = time.monotonic()
        with pytest.raises(StoreError, match="no answer"):
            await node.heartbeat()
        assert time.monotonic() - started < 2.0

        # then, the path back, the next call works on a new connection
        proxy.restore()
        assert not await node.heartbeat()
    finally:
        await proxy.close()


async def test_an_ended_session_keeps_the_agents_last_view_and_leaves_it_an_orphan(
    registries: Registries, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    # given an agent connected to a live node, holding a task, its view refreshed
    node = registries("node-a")
    await node.heartbeat()
    began = await node.agent_connected("worker", '{"state":"idle"}')
    hold_task(admin, "worker", "working")
    await node.agent_updated("worker", began, '{"state":"working"}')
    assert session_state(admin, "worker") == (False, '{"state":"working"}')
    assert (await node.orphaned_agents(NODE_TIMEOUT_MS)).agent_ids == frozenset()

    # when its connection ends
    await node.agent_disconnected("worker", began, '{"state":"offline"}')

    # then its row says so with its last view, and it is an orphan
    assert session_state(admin, "worker") == (True, '{"state":"offline"}')
    assert (await node.orphaned_agents(NODE_TIMEOUT_MS)).agent_ids == {"worker"}
    # a view changed since is still recorded, the session still ended
    await node.agent_updated("worker", began, '{"state":"offline","draining":true}')
    assert session_state(admin, "worker") == (True, '{"state":"offline","draining":true}')

    # and when it connects again, its session goes on with the new view
    again = await node.agent_connected("worker", '{"state":"idle"}')
    assert again > began
    assert session_state(admin, "worker") == (False, '{"state":"idle"}')
    assert (await node.orphaned_agents(NODE_TIMEOUT_MS)).agent_ids == frozenset()


async def test_the_view_of_an_older_session_changes_nothing(
    registries: Registries, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    first, second = registries("node-a"), registries("node-b")
    older = await first.agent_connected("worker", '{"on":"a"}')
    await second.agent_connected("worker", '{"on":"b"}')

    await first.agent_updated("worker", older, '{"on":"a, later"}')
    await first.agent_disconnected("worker", older, '{"on":"a, gone"}')

    assert session_state(admin, "worker") == (False, '{"on":"b"}')


async def test_the_agents_of_other_live_nodes_are_listed_with_their_tasks_as_stored(
    registries: Registries, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    # given this node, another live one and a stale one, each with agents
    here, live, stale = registries("node-a"), registries("node-b"), registries("node-c")
    for node in (here, live, stale):
        await node.heartbeat()
    await here.agent_connected("on-this-node", "{}")
    await live.agent_connected("idle", '{"agent_id":"idle"}')
    await live.agent_connected("working", '{"agent_id":"working"}')
    gone = await live.agent_connected("gone", '{"agent_id":"gone"}')
    await live.agent_disconnected("gone", gone)
    await live.agent_connected("no-view-yet")
    await stale.agent_connected("on-stale-node", "{}")
    age_heartbeat(admin, "node-c", NODE_TIMEOUT_MS + 1)
    # and tasks: one working, one finished
    hold_task(admin, "working", "working")
    hold_task(admin, "idle", "completed")
    [(task_id,)] = admin.execute("SELECT task_id FROM tasks WHERE status = 'working'").fetchall()

    listed = await here.agents_elsewhere(NODE_TIMEOUT_MS)

    # then only the other live node's agents with a view are listed, by id, offline ones too
    assert listed == [
        AgentElsewhere("node-b", False, '{"agent_id":"gone"}', None, None),
        AgentElsewhere("node-b", True, '{"agent_id":"idle"}', None, None),
        AgentElsewhere("node-b", True, '{"agent_id":"working"}', task_id, "working"),
    ]
    # and the other node lists this one's
    assert await live.agents_elsewhere(NODE_TIMEOUT_MS) == [
        AgentElsewhere("node-a", True, "{}", None, None)
    ]
