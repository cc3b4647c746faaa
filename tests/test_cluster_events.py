"""Two real hub processes sharing events through the real Redis on 127.0.0.1:6379.

Each hub has its own SQLite file (nodes sharing one database do not exist yet), and both
run with ``--pubsub redis://127.0.0.1:6379/0 --cluster <this test's own>``. A Redis that
does not answer fails these tests; it never skips them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hubprocess import CliProcess, HubProcess
from recorded import Recorded
from redis.asyncio import Redis
from redisnodes import REDIS_PORT, REDIS_URL, new_cluster, require_redis
from tcpproxy import BlackHoleProxy

from agentcom.client import AgentClient, OperatorClient

Frame = dict[str, Any]
FAST_LINK = {
    "AGENTCOM_PUBSUB_PING_INTERVAL_S": "0.2",
    "AGENTCOM_PUBSUB_TIMEOUT_S": "0.5",
    "AGENTCOM_PUBSUB_RECONNECT_MAX_S": "0.2",
}


class Cluster:
    """Hub processes of one cluster, each on its own database in its own directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.name = new_cluster()
        self.hubs: list[HubProcess] = []

    async def start(
        self, node_id: str, redis_url: str = REDIS_URL, reachable: bool = True
    ) -> HubProcess:
        """A hub node, returned once its link to Redis is up (when ``reachable``)."""
        directory = self.directory / node_id
        directory.mkdir()
        flags = ["--pubsub", redis_url, "--cluster", self.name, "--node-id", node_id]
        hub = HubProcess(directory, env=FAST_LINK, serve_args=flags, log_pipe=True)
        self.hubs.append(hub)
        hub.start()
        if reachable:
            await hub.await_log("connected to Redis")
        return hub

    def stop(self) -> None:
        for hub in self.hubs:
            hub.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Any:
    require_redis()
    hubs = Cluster(tmp_path)
    try:
        yield hubs
    finally:
        hubs.stop()


@pytest.fixture
async def proxies() -> AsyncIterator[list[BlackHoleProxy]]:
    started: list[BlackHoleProxy] = []
    yield started
    for proxy in started:
        await proxy.close()


class Dashboard(Recorded):
    """A ``/ws/dashboard`` connection: every frame it got, the first snapshot aside."""

    def __init__(self, hub: HubProcess, token: str) -> None:
        super().__init__()
        self.operator = OperatorClient(hub.http_url, token)
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> Dashboard:
        stream = self.operator.watch()
        first = await anext(stream)
        assert first["type"] == "snapshot"
        self._reader = asyncio.create_task(self._read(stream))
        return self

    async def _read(self, stream: AsyncIterator[Frame]) -> None:
        async for frame in stream:
            await self.add(frame)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self.operator.close()


@pytest.fixture
async def dashboards() -> AsyncIterator[list[Dashboard]]:
    opened: list[Dashboard] = []
    yield opened
    for dashboard in opened:
        await dashboard.close()


async def open_dashboard(hub: HubProcess, opened: list[Dashboard]) -> Dashboard:
    dashboard = Dashboard(hub, hub.make_token("viewer", "viewer"))
    opened.append(dashboard)
    return await dashboard.open()


async def get_json(hub: HubProcess, path: str) -> Any:
    async with httpx.AsyncClient(timeout=10) as client:
        return (await client.get(f"{hub.http_url}{path}")).json()


async def metric(hub: HubProcess, name: str) -> float:
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"{hub.http_url}/metrics")).text
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


async def task_events_on(dashboard: Dashboard, task_id: str, last: str) -> list[str]:
    """The task events of ``task_id`` the dashboard got, up to the one named ``last``."""
    await dashboard.wait_for(
        lambda frame: (frame.get("task_id"), frame.get("event")) == (task_id, last)
    )
    return [
        frame["event"]
        for frame in dashboard.frames
        if frame.get("type") == "task_event" and frame.get("task_id") == task_id
    ]


async def run_one_task(hub: HubProcess, closing: list[Any]) -> str:
    """Submit a task on ``hub`` and have an agent connected to it run it; its id."""
    operator = OperatorClient(hub.http_url, hub.make_token("ops", "admin"))
    closing.append(operator)
    await operator.connect()
    agent = AgentClient(hub.ws_url, "worker", hub.make_token("worker"), heartbeat_s=None)
    closing.append(agent)
    await agent.connect()
    task_id: str = (await operator.submit("say hello"))["task_id"]
    assign = await agent.receive_type("task_assign")
    await agent.send({"type": "task_accepted", "task_id": task_id})
    await agent.receive_type("task_ack")
    await agent.send(
        {"type": "task_progress", "task_id": task_id,
         "execution_event": {"event_type": "stdout", "text": "hello"}}
    )  # fmt: skip
    complete = {"type": "task_complete", "task_id": task_id, "generation": assign["generation"]}
    await agent.send({**complete, "result": {"status": "success", "output": "hello"}})
    assert (await agent.receive_type("task_ack"))["status"] == "complete"
    return task_id


async def test_a_dashboard_on_one_hub_sees_the_task_events_of_another(
    cluster: Cluster, dashboards: list[Dashboard], closing: list[Any]
) -> None:
    # given two hub nodes of one cluster, and a dashboard on node B
    a, b = await cluster.start("node-a"), await cluster.start("node-b")
    on_b = await open_dashboard(b, dashboards)
    assert (await get_json(b, "/health"))["pubsub"]["state"] == "connected"

    # when a task is submitted on node A and run by an agent connected to A
    task_id = await run_one_task(a, closing)

    # then B's dashboard sees every event of it, in order
    events = await task_events_on(on_b, task_id, "task_completed")
    assert events == [
        "task_submitted", "task_assigned", "task_accepted", "task_progress",
        "execution_progress", "task_completed",
    ]  # fmt: skip
    # and A's agent joining was seen on B as well
    await on_b.wait_for(lambda frame: frame.get("agent_id") == "worker")
    assert await metric(a, "agentcom_cluster_events_sent_total") >= len(events)
    assert await metric(b, "agentcom_cluster_events_received_total") >= len(events)
    assert await metric(b, "agentcom_cluster_link_up") == 1


async def test_a_redis_outage_is_reported_and_dashboards_resync_when_it_ends(
    cluster: Cluster,
    dashboards: list[Dashboard],
    closing: list[Any],
    proxies: list[BlackHoleProxy],
) -> None:
    # given node B reaching Redis through a proxy, node A directly, a dashboard on B
    proxy = await BlackHoleProxy(REDIS_PORT).start()
    proxies.append(proxy)
    a = await cluster.start("node-a")
    b = await cluster.start("node-b", f"redis://127.0.0.1:{proxy.port}/0")
    on_b = await open_dashboard(b, dashboards)

    # when B's path to Redis goes dark
    proxy.go_dark()

    # then B's dashboard is told that events of other nodes may be missing
    await on_b.wait_for(lambda frame: frame.get("reason") == "cluster_link_down")
    # and B says so in /health and /metrics, while staying healthy: tasks keep flowing
    health = await get_json(b, "/health")
    assert health["status"] == "ok"
    assert health["pubsub"]["kind"] == "redis" and health["pubsub"]["node_id"] == "node-b"
    assert health["pubsub"]["state"] == "disconnected"
    assert await metric(b, "agentcom_cluster_link_up") == 0
    # and a task run on A meanwhile does not reach B
    missed = await run_one_task(a, closing)

    # when the path comes back
    proxy.go_light()

    # then B's dashboard gets a fresh snapshot (the page re-syncs from it), and B is back
    snapshot = await on_b.wait_for(lambda frame: frame.get("type") == "snapshot")
    assert snapshot["queue"] is not None
    assert (await get_json(b, "/health"))["pubsub"]["state"] == "connected"
    assert await metric(b, "agentcom_cluster_link_losses_total") == 1
    assert not [frame for frame in on_b.frames if frame.get("task_id") == missed]


async def test_dashboards_learn_of_a_killed_listener_and_the_hub_reconnects(
    cluster: Cluster, dashboards: list[Dashboard], closing: list[Any]
) -> None:
    # given two nodes, a dashboard and `agentcom watch` on B
    a, b = await cluster.start("node-a"), await cluster.start("node-b")
    on_b = await open_dashboard(b, dashboards)
    with CliProcess("watch", *b.operator_args(b.make_token("watcher", "viewer"))) as watch:
        assert (await watch.next_line()).startswith("connected: ")

        # when Redis kills B's listening connection
        name = f"agentcom:{cluster.name}:node-b:listen"
        async with Redis.from_url(REDIS_URL) as admin:
            clients = await admin.client_list(_type="pubsub")
            killed = next(client["id"] for client in clients if client["name"] == name)
            await admin.client_kill_filter(_id=killed)

        # then B's dashboard hears of the gap, then re-syncs from a snapshot
        await on_b.wait_for(lambda frame: frame.get("reason") == "cluster_link_down")
        await on_b.wait_for(lambda frame: frame.get("type") == "snapshot")
        # and so does `agentcom watch`, in words
        assert (await watch.next_line()).endswith(
            " events from other hub nodes may be missing (their link is down)"
        )
        assert (await watch.next_line()).startswith("re-synced: ")
    # and the events of a task run on A reach it again
    task_id = await run_one_task(a, closing)
    assert (await task_events_on(on_b, task_id, "task_completed"))[-1] == "task_completed"


async def test_a_hub_whose_redis_is_unreachable_serves_and_says_so(
    cluster: Cluster, dashboards: list[Dashboard], closing: list[Any], tmp_path: Path
) -> None:
    from hubprocess import closed_port

    # given a hub whose Redis is a port nobody listens on
    hub = await cluster.start("lonely", f"redis://127.0.0.1:{closed_port()}/0", reachable=False)
    await hub.await_log(r"cannot reach Redis at redis://127\.0\.0\.1:\d+/0")

    # then a dashboard is told that other nodes' events may be missing
    dashboard = await open_dashboard(hub, dashboards)
    await dashboard.wait_for(lambda frame: frame.get("reason") == "cluster_link_down")
    # and the hub still runs tasks, its own dashboard sees them, and /health is ok
    task_id = await run_one_task(hub, closing)
    assert (await task_events_on(dashboard, task_id, "task_completed"))[0] == "task_submitted"
    health = await get_json(hub, "/health")
    assert (health["status"], health["pubsub"]["state"]) == ("ok", "disconnected")
    assert await metric(hub, "agentcom_cluster_events_dropped_total") > 0
    # and it stops cleanly
    assert hub.stop() == 0
    assert hub.stderr is not None
    assert not [line for line in hub.stderr.rest() if "Traceback" in line or "pending" in line]


def test_config_show_stars_the_password_of_the_redis_url(tmp_path: Path) -> None:
    from hubprocess import run_cli

    result = run_cli("config", "show", "--json", "--pubsub", "redis://:s3cret@cache:6379/0")
    assert result.returncode == 0, result
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["pubsub"]["value"] == "redis://:****@cache:6379/0"
    assert "s3cret" not in result.stdout


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--pubsub", "http://cache:6379", "must be memory or a redis:// or rediss:// URL"),
        ("--pubsub", "redis://cache:port/0", "the port of the Redis URL must be a number"),
        ("--cluster", "prod cluster", "must be 1 to 48 characters among"),
        ("--cluster", "x" * 49, "must be 1 to 48 characters among"),
        ("--node-id", "web:1", "must be 1 to 128 characters among"),
    ],
)
def test_a_bad_pubsub_setting_is_refused_with_one_line(flag: str, value: str, message: str) -> None:
    from hubprocess import run_cli

    result = run_cli("serve", "--port", "0", flag, value)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.splitlines()) == 1
