"""Hub nodes sharing one PostgreSQL database list the agents of every node: the operator
request ``agents_list`` (``agentcom agents``), ``GET /api/agents``, the dashboard
snapshot and stats give the same agents on every node, each with its ``node``.

Real hub processes on the test's own database and cluster (``nodes``, from
``test_shared_nodes``). A node records its agents' sessions in the database as its own
loop gets to it: the lists are asked again until they say what is expected, within a
bounded time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from hubprocess import HubProcess, run_cli_async
from redisnodes import REDIS_URL
from sharednodes import NODE_ENV, Nodes
from tcpproxy import BlackHoleProxy

from agentcom.client import AgentClient, OperatorClient

Listing = dict[str, tuple[str | None, str, str | None]]
"""Agent id -> (node, state, current task), as a list shows them."""

LIST_TIMEOUT_S = 10.0


def _listing(agents: list[dict[str, Any]]) -> Listing:
    return {
        agent["agent_id"]: (agent.get("node"), agent["state"], agent["current_task"])
        for agent in agents
    }


class Node:
    """A node and an operator connected to it, asking it for its lists."""

    def __init__(self, hub: HubProcess, token: str) -> None:
        self.hub = hub
        self.token = token
        self.operator = OperatorClient(hub.http_url, token)

    async def operator_list(self) -> Listing:
        agents, warning = await self.operator.list_agents()
        assert warning is None
        return _listing(agents)

    async def http_list(self) -> Listing:
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.get(
                f"{self.hub.http_url}/api/agents", headers={"Authorization": f"Bearer {self.token}"}
            )
        assert response.status_code == 200 and "X-Warning" not in response.headers
        return _listing(response.json())

    async def snapshot(self) -> dict[str, Any]:
        async with contextlib.aclosing(self.operator.watch(["agents"])) as frames:
            async for frame in frames:
                assert frame["type"] == "snapshot"
                return frame
        raise AssertionError("no snapshot")

    async def stats(self) -> dict[str, Any]:
        return dict(await self.operator.request("stats"))

    async def until_listed(self, expected: Listing) -> None:
        """Ask this node until the operator request and the HTTP API both list
        ``expected``; fails with what they last listed after ``LIST_TIMEOUT_S``."""
        listed: tuple[Listing, Listing] = ({}, {})
        try:
            async with asyncio.timeout(LIST_TIMEOUT_S):
                while listed != (expected, expected):
                    listed = (await self.operator_list(), await self.http_list())
        except TimeoutError:
            raise AssertionError(f"{self.hub.http_url} lists {listed}, not {expected}") from None


async def _agent(cluster: Nodes, hub: HubProcess, agent_id: str) -> AgentClient:
    agent = AgentClient(hub.ws_url, agent_id, await cluster.token(agent_id),
                        capabilities=[agent_id], heartbeat_s=None)  # fmt: skip
    await agent.connect()
    return agent


async def test_every_node_lists_the_agents_of_every_node_with_their_node(
    nodes: Nodes,
    closing: list[Any],
) -> None:
    # given two nodes, an agent connected to each
    first = await nodes.start("n1")
    second = await nodes.start("n2")
    viewer = await nodes.token("ops", "viewer")
    a0 = await _agent(nodes, first, "a0")
    closing.append(a0)
    b0 = await _agent(nodes, second, "b0")
    closing.append(b0)
    on_nodes = [Node(first, viewer), Node(second, viewer)]
    for node in on_nodes:
        closing.append(node.operator)
        await node.operator.connect()

    # then the operator request and the HTTP API of either node list both, with their node
    both: Listing = {"a0": ("n1", "idle", None), "b0": ("n2", "idle", None)}
    for node in on_nodes:
        await node.until_listed(both)
        # and so do the dashboard snapshot and stats
        snapshot = await node.snapshot()
        assert _listing(snapshot["agents"]) == both
        stats = await node.stats()
        assert (stats["agents_connected"], stats["agents_by_state"]["idle"]) == (2, 2)
    # and `agentcom agents`, whose table names the node of each
    for hub in (first, second):
        listed = await run_cli_async("agents", *hub.operator_args(viewer))
        assert listed.returncode == 0, listed
        lines = listed.stdout.splitlines()
        assert lines[0].split()[:3] == ["AGENT", "NODE", "STATE"]
        assert [line.split()[:3] for line in lines[1:]] == [
            ["a0", "n1", "idle"], ["b0", "n2", "idle"]]  # fmt: skip
        as_json = await run_cli_async("agents", "--json", *hub.operator_args(viewer))
        assert _listing(json.loads(as_json.stdout)) == both

    # when the agent of the second node disconnects
    await b0.close()

    # then both nodes list it offline, on the second node, and count one agent connected
    one_left: Listing = {"a0": ("n1", "idle", None), "b0": ("n2", "offline", None)}
    for node in on_nodes:
        await node.until_listed(one_left)
        assert _listing((await node.snapshot())["agents"]) == one_left
        assert (await node.stats())["agents_connected"] == 1


async def test_the_task_of_an_agent_of_another_node_is_listed_as_stored(
    nodes: Nodes,
    closing: list[Any],
) -> None:
    # given two nodes, an agent on the second, and an operator of the first
    first = await nodes.start("n1")
    second = await nodes.start("n2")
    ops = await nodes.token("ops", "admin")
    b0 = await _agent(nodes, second, "b0")
    closing.append(b0)
    node = Node(first, ops)
    closing.append(node.operator)
    await node.operator.connect()
    await node.until_listed({"b0": ("n2", "idle", None)})

    # when a task submitted on the first node is assigned to it, then accepted
    task = await node.operator.submit("for b0", needed_capabilities=["b0"])
    await b0.receive_type("task_assign")

    # then the first node lists it assigned that task, then working on it
    await node.until_listed({"b0": ("n2", "assigned", task["task_id"])})
    await b0.send({"type": "task_accepted", "task_id": task["task_id"]})
    await node.until_listed({"b0": ("n2", "working", task["task_id"])})


async def test_a_node_that_cannot_read_the_database_lists_its_own_agents_and_says_so(
    nodes: Nodes,
    closing: list[Any],
) -> None:
    # given two nodes, the second reaching the database through a proxy, an agent on each
    first = await nodes.start("n1")
    proxy = await BlackHoleProxy(urlsplit(nodes.url).port or 5432).start()
    closing.append(proxy)
    parts = urlsplit(nodes.url)
    proxied = urlunsplit(parts._replace(netloc=f"postgres@127.0.0.1:{proxy.port}"))
    flags = ["--pubsub", REDIS_URL, "--cluster", nodes.cluster, "--node-id", "n2"]
    env = {**NODE_ENV, "AGENTCOM_DB_TIMEOUT_S": "0.5"}
    second = HubProcess(nodes.directory, db=proxied, env=env, serve_args=flags, log_pipe=True)
    nodes.hubs.append(second)
    await asyncio.to_thread(second.start)  # the proxy relays on this loop meanwhile
    await second.await_log("connected to Redis")
    ops = await nodes.token("ops", "admin")
    for hub, agent_id in ((first, "a0"), (second, "b0")):
        closing.append(await _agent(nodes, hub, agent_id))
    node = Node(second, ops)
    closing.append(node.operator)
    await node.operator.connect()
    both: Listing = {"a0": ("n1", "idle", None), "b0": ("n2", "idle", None)}
    await node.until_listed(both)

    # when its path to the database goes dark
    proxy.go_dark()

    # then it answers within its database timeout with its own agent, saying why
    started = time.monotonic()
    agents, warning = await node.operator.list_agents()
    assert time.monotonic() - started < 5
    assert _listing(agents) == {"b0": ("n2", "idle", None)}
    assert warning is not None and warning.startswith("only this node's agents")
    await second.await_log("listing this node's agents only")

    # and once the path is back, it lists both again
    proxy.restore()
    listed: Listing = {}
    async with asyncio.timeout(LIST_TIMEOUT_S):
        while listed != both:
            agents, warning = await node.operator.list_agents()
            listed = _listing(agents) if warning is None else {}
