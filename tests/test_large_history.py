"""A long history stays off the event loop: counting every task ever run must not stall
the connections the hub serves meanwhile."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

from conftest import TokenMaker, hub_with
from websockets.asyncio.client import connect

from agentcom.client import AgentClient
from agentcom.config import Settings
from agentcom.protocol.common import Priority, TaskStatus
from agentcom.protocol.task import Task
from agentcom.store.sqlite import open_database

FINISHED_TASKS = 500_000
DASHBOARDS = 5
EVENT_TIMEOUT_S = 30.0


def _fill_with_finished_tasks(db: Path, count: int) -> None:
    """``count`` completed tasks, written straight into a new database in one statement."""
    body = Task(
        task_id="0" * 32,
        status=TaskStatus.completed,
        priority=Priority.normal,
        description="an old task",
        created_at=1,
        updated_at=1,
    )
    connection = open_database(db)
    with connection:
        connection.execute(
            """
            WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ? - 1)
            INSERT INTO tasks SELECT printf('%032x', i), 'completed', 'normal',
                'agent-' || (i % 50), 1, 'model-' || (i % 5), 10, 5, 0.0, 0.01, 100.0,
                1000 + i, 1000 + i, json_set(?, '$.task_id', printf('%032x', i))
            FROM n
            """,
            (count, body.model_dump_json()),
        )
    connection.close()


def _time_stats_query(db: Path) -> float:
    """Seconds one of the aggregate queries behind stats takes here, on its own (the best
    of three, so that one slow run does not set the bar)."""
    connection = sqlite3.connect(db)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        connection.execute(
            "SELECT model_used, COUNT(*), SUM(tokens_in) FROM tasks "
            "WHERE status = 'completed' GROUP BY model_used"
        ).fetchall()
        times.append(time.perf_counter() - started)
    connection.close()
    return min(times)


async def test_a_ping_is_answered_while_dashboards_count_a_long_history(
    settings: Settings, make_token: TokenMaker
) -> None:
    # given a database holding half a million finished tasks, and how long one of the
    # queries that count them takes on this machine
    _fill_with_finished_tasks(settings.db, FINISHED_TASKS)
    query_s = _time_stats_query(settings.db)
    viewer = make_token("watcher", "viewer")

    # (pings go back to back here, so the agent's request budget is raised out of the way)
    async with hub_with(settings, request_rate=1e6, request_burst=1_000_000) as hub:
        agent = AgentClient(
            f"ws://127.0.0.1:{hub.port}/ws", "agent-1", make_token("agent-1"), heartbeat_s=None
        )
        await agent.connect()
        try:
            # when several dashboards connect at once (each snapshot counts the history)
            async def open_dashboard() -> dict[str, object]:
                async with connect(f"ws://127.0.0.1:{hub.port}/ws/dashboard") as dashboard:
                    await dashboard.send(json.dumps({"type": "subscribe", "token": viewer}))
                    snapshot: dict[str, object] = json.loads(await dashboard.recv())
                    return snapshot

            loading = asyncio.gather(*(open_dashboard() for _ in range(DASHBOARDS)))

            # and the agent pings, one ping after another, until every snapshot is in
            slowest_s = 0.0
            pongs = 0
            while not loading.done():
                sent = time.perf_counter()
                await agent.send({"type": "ping"})
                await agent.receive_type("pong", timeout=EVENT_TIMEOUT_S)
                slowest_s = max(slowest_s, time.perf_counter() - sent)
                pongs += 1
            snapshots = await asyncio.wait_for(loading, EVENT_TIMEOUT_S)
        finally:
            await agent.close()

    # then every dashboard got the whole count
    for snapshot in snapshots:
        assert snapshot["type"] == "snapshot"
        queue = snapshot["queue"]
        assert isinstance(queue, dict)
        assert queue["by_status"] == {"completed": FINISHED_TASKS}
    # and the pings were answered all along, faster than one counting query takes (a count
    # run on the event loop holds a pong back for the whole snapshot: several such queries)
    assert pongs >= 1
    assert slowest_s < query_s, (slowest_s, query_s)
