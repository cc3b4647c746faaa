"""Several real hub processes serving one PostgreSQL database together, with Redis
between them (``--db postgresql://... --pubsub redis://... --cluster C``).

Each test has a database of its own (``pg_url``) and a cluster name of its own; a
PostgreSQL or Redis that does not answer fails these tests, never skips them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from conftest import METADATA
from gated import GatedSidecar
from haproxy import HaProxy
from hubprocess import HubProcess, closed_port, run_cli_async
from redisnodes import REDIS_URL
from sharednodes import NODE_ENV, Nodes
from tcpproxy import BlackHoleProxy

from agentcom.client import AgentClient, OperatorClient, RequestFailed

Frame = dict[str, Any]


class Completions:
    """Task ids whose completion agents had acknowledged, awaited until a count is reached."""

    def __init__(self) -> None:
        self.task_ids: list[str] = []
        self._changed = asyncio.Event()

    def add(self, task_id: str) -> None:
        self.task_ids.append(task_id)
        self._changed.set()

    async def reach(self, count: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while len(self.task_ids) < count:
                self._changed.clear()
                await self._changed.wait()


class Worker:
    """An agent that accepts and completes every task it is given, recording each
    ``task_assign`` it received."""

    def __init__(self, client: AgentClient, completed: Completions) -> None:
        self.client = client
        self.completed = completed
        self.assigned: list[Frame] = []
        self.acks: list[Frame] = []
        self._loop: asyncio.Task[None] | None = None

    async def start(self) -> Worker:
        await self.client.connect()
        self._loop = asyncio.create_task(self._work())
        return self

    async def _work(self) -> None:
        while True:
            frame = await self.client.receive()
            if frame["type"] == "task_assign":
                self.assigned.append(frame)
                task_id, generation = frame["task_id"], frame["generation"]
                await self.client.send({"type": "task_accepted", "task_id": task_id})
                await self.client.send({"type": "task_complete", "task_id": task_id,
                                        "generation": generation, "result": METADATA})  # fmt: skip
            elif frame["type"] in ("task_ack", "error"):
                self.acks.append(frame)
                if frame.get("status") == "complete":
                    self.completed.add(frame["task_id"])

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loop
        await self.client.close()


async def _workers(
    hub: HubProcess, nodes: Nodes, names: list[str], completed: Completions | None = None
) -> list[Worker]:
    workers = []
    for name in names:
        client = AgentClient(hub.ws_url, name, await nodes.token(name), heartbeat_s=None)
        workers.append(await Worker(client, completed or Completions()).start())
    return workers


@pytest.mark.parametrize("count", [2, 3])
async def test_a_burst_submitted_on_every_node_runs_each_task_once_on_agents_of_all(
    nodes: Nodes, count: int
) -> None:
    # given two (three) nodes on one database, four (three) agents on each
    hubs = [await nodes.start(f"n{number}") for number in range(count)]
    ops = await nodes.token("ops", "admin")
    completed = Completions()
    workers: list[Worker] = []
    for number, hub in enumerate(hubs):
        names = [f"{'abc'[number]}{i}" for i in range(12 // count)]
        workers += await _workers(hub, nodes, names, completed)
    operators = [OperatorClient(hub.http_url, ops) for hub in hubs]
    try:
        for operator in operators:
            await operator.connect()

        # when 200 tasks are submitted on the nodes in turn, 20 at a time
        submitted = []
        for start in range(0, 200, 20):
            submitted += await asyncio.gather(
                *(operators[i % count].submit(f"task {i}") for i in range(start, start + 20))
            )
        task_ids = {task["task_id"] for task in submitted}
        await completed.reach(200, timeout=60)
        finished = [await operators[0].get_task(task_id) for task_id in sorted(task_ids)]
    finally:
        for operator in operators:
            await operator.close()
        for worker in workers:
            await worker.close()

    # then each task was assigned once, to one agent, and completed by it
    assignments = [(frame["task_id"], frame["generation"]) for w in workers for frame in w.assigned]
    assert sorted(assignments) == sorted((task_id, 1) for task_id in task_ids)
    assert {task["status"] for task in finished} == {"completed"}
    by_agent = {frame["task_id"]: w.client.agent_id for w in workers for frame in w.assigned}
    assert {task["task_id"]: task["assigned_to"] for task in finished} == by_agent
    # ... agents of every node ran some, and no agent was refused an acknowledged frame
    assert {agent[0] for agent in by_agent.values()} == set("abc"[:count])
    assert [ack for w in workers for ack in w.acks if ack["type"] == "error"] == []
    assert sorted(completed.task_ids) == sorted(task_ids)


async def test_a_task_submitted_on_one_node_wakes_an_idle_agent_of_another(
    nodes: Nodes,
) -> None:
    # given two nodes that poll the queue only every minute, and an agent on the second
    first = await nodes.start("n1", AGENTCOM_QUEUE_POLL_S="60")
    second = await nodes.start("n2", AGENTCOM_QUEUE_POLL_S="60")
    ops = await nodes.token("ops", "admin")
    [worker] = await _workers(second, nodes, ["b0"])
    try:
        async with OperatorClient(first.http_url, ops) as operator:
            # when tasks are submitted on the first node
            for _ in range(5):
                started = time.perf_counter()
                task = await operator.submit("wake up")
                done = await operator.wait_task(task["task_id"], timeout_s=10)

                # then the agent of the second node runs each, long before a poll
                assert (done["status"], done["assigned_to"]) == ("completed", "b0")
                assert time.perf_counter() - started < 30
    finally:
        await worker.close()


async def _holder(hubs: list[HubProcess], agent_id: str) -> HubProcess:
    """The node whose log says ``agent_id`` identified there first."""
    waits = {
        asyncio.ensure_future(hub.await_log(f"agent {agent_id} identified")): hub for hub in hubs
    }
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for waiting in pending:
        waiting.cancel()
    return waits[done.pop()]


async def test_behind_haproxy_a_killed_nodes_agent_finishes_its_task_through_another_node(
    nodes: Nodes, tmp_path: Path, closing: list[Any]
) -> None:
    # given two nodes behind HAProxy and an agent connected through it, running a task
    first = await nodes.start("n1")
    second = await nodes.start("n2")
    ops = await nodes.token("ops", "admin")
    assert first.port is not None and second.port is not None
    with HaProxy(tmp_path, [first.port, second.port]) as proxy:
        agent = GatedSidecar(proxy.ws_url, "worker", await nodes.token("worker"),
                             backoff_initial_s=0.05, backoff_max_s=0.2)  # fmt: skip
        closing.append(agent)
        holder = await _holder([first, second], "worker")
        survivor = second if holder is first else first
        operator = OperatorClient(survivor.http_url, ops)
        closing.append(operator)
        await operator.connect()
        submitted = await operator.submit("survive the node", complexity_tier="complex")
        assign = await agent.next_assign()

        # when the node the agent is connected to is killed outright
        killed_at = time.monotonic()
        holder.kill()

        # then the agent reconnects through HAProxy to the other node, and its completion
        # is accepted there: the task completed once, by it, with its metadata
        agent.finish(assign["task_id"])
        answer = await agent.answer(assign["task_id"], assign["generation"])
        completed_after = time.monotonic() - killed_at
        if answer.get("status") != "complete":
            survivor.stop()
            assert survivor.stderr is not None
            raise AssertionError("\n".join([str(answer), *survivor.stderr.rest()]))
        print(f"\nnode killed behind HAProxy: its agent's task completed through the other "
              f"node {completed_after:.3f} s after SIGKILL")  # fmt: skip
        task = await operator.get_task(submitted["task_id"])
        assert (task["status"], task["assigned_to"], task["generation"]) == (
            "completed", "worker", 1)  # fmt: skip
        assert [entry["status"] for entry in task["history"]].count("completed") == 1
        assert task["execution"]["tokens_out"] == METADATA["tokens_out"]
        # and new work runs
        await operator.submit("after the node died", complexity_tier="complex")
        again = await agent.next_assign()
        agent.finish(again["task_id"])
        assert (await agent.answer(again["task_id"], again["generation"]))["status"] == "complete"


async def test_the_task_of_an_agent_that_does_not_come_back_goes_to_another_after_the_grace(
    nodes: Nodes, closing: list[Any]
) -> None:
    # given an agent of the first node running a task
    first = await nodes.start("n1", AGENTCOM_DISCONNECT_GRACE_S="1")
    second = await nodes.start("n2", AGENTCOM_DISCONNECT_GRACE_S="1")
    ops = await nodes.token("ops", "admin")
    lost = AgentClient(first.ws_url, "lost", await nodes.token("lost"),
                       capabilities=["gpu"], heartbeat_s=None)  # fmt: skip
    closing.append(lost)
    await lost.connect()
    operator = OperatorClient(second.http_url, ops)
    closing.append(operator)
    await operator.connect()
    submitted = await operator.submit("long job", needed_capabilities=["gpu"])
    assign = await lost.receive_type("task_assign")
    await lost.send({"type": "task_accepted", "task_id": assign["task_id"]})
    assert (await lost.receive_type("task_ack"))["status"] == "accepted"

    # when that node is killed and the agent never comes back
    killed_at = time.monotonic()
    first.kill()
    rescuer = Worker(
        AgentClient(
            second.ws_url,
            "rescuer",
            await nodes.token("rescuer"),
            capabilities=["gpu"],
            heartbeat_s=None,
        ),
        Completions(),
    )
    await rescuer.start()
    closing.append(rescuer)

    # then the surviving node gives the task to another agent once the grace has passed
    done = await operator.wait_task(submitted["task_id"], timeout_s=20)
    after = time.monotonic() - killed_at
    print(f"\nnode killed, its agent gone: the task ran elsewhere {after:.2f} s after SIGKILL "
          "(node timeout 1 s, grace 1 s, heartbeats every 0.2 s)")  # fmt: skip
    assert (done["status"], done["assigned_to"], done["generation"]) == ("completed", "rescuer", 2)
    details = [entry.get("detail") or "" for entry in done["history"]]
    assert any("lost did not come back in time" in detail for detail in details)


async def _health(hub: HubProcess) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(f"{hub.http_url}/health")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def test_one_node_leads_and_another_takes_over_when_it_stops(nodes: Nodes) -> None:
    # given two nodes, the first of which leads
    first = await nodes.start("n1")
    await first.await_log("this node leads")
    second = await nodes.start("n2")

    # then /health and /metrics say so on each
    assert (await _health(first))["node"] == {
        "node_id": "n1", "leader": True, "heartbeat": "ok", "heartbeat_error": None}  # fmt: skip
    assert (await _health(second))["node"]["leader"] is False
    async with httpx.AsyncClient(timeout=5) as http:
        metrics = (await http.get(f"{second.http_url}/metrics")).text
    assert "agentcom_node_leader 0.0" in metrics
    assert "agentcom_task_write_conflicts_total 0.0" in metrics

    # when the leader stops, the other node leads
    first.stop()
    await second.await_log("this node leads")
    assert (await _health(second))["node"]["leader"] is True


async def test_with_redis_unreachable_tasks_still_reach_other_nodes_by_the_poll(
    nodes: Nodes,
) -> None:
    # given two nodes whose Redis does not answer, polling the queue every 200 ms
    unreachable = f"redis://127.0.0.1:{closed_port()}/0"
    fast_poll = {"AGENTCOM_QUEUE_POLL_S": "0.2"}
    first = await nodes.start("n1", redis_url=unreachable, **fast_poll)
    second = await nodes.start("n2", redis_url=unreachable, **fast_poll)
    ops = await nodes.token("ops", "admin")
    [worker] = await _workers(second, nodes, ["b0"])
    try:
        async with OperatorClient(first.http_url, ops) as operator:
            # when a task is submitted on the first node
            task = await operator.submit("no redis")

            # then the agent of the second node runs it, and the first sees it done
            done = await operator.wait_task(task["task_id"], timeout_s=20)
        assert (done["status"], done["assigned_to"]) == ("completed", "b0")
        assert (await _health(first))["pubsub"]["state"] == "disconnected"
    finally:
        await worker.close()


async def test_a_task_cancelled_on_one_node_stops_its_agent_on_another(
    nodes: Nodes, closing: list[Any]
) -> None:
    # given an agent of the second node running a task
    first = await nodes.start("n1")
    second = await nodes.start("n2")
    ops = await nodes.token("ops", "admin")
    agent = AgentClient(second.ws_url, "b0", await nodes.token("b0"), heartbeat_s=None)
    closing.append(agent)
    await agent.connect()
    operator = OperatorClient(first.http_url, ops)
    closing.append(operator)
    await operator.connect()
    submitted = await operator.submit("cancel me")
    assign = await agent.receive_type("task_assign")
    await agent.send({"type": "task_accepted", "task_id": assign["task_id"]})
    assert (await agent.receive_type("task_ack"))["status"] == "accepted"

    # when an operator of the first node cancels it
    await operator.request("task_cancel", task_id=submitted["task_id"])

    # then the agent is told to stop, and its late completion is refused
    cancelled = await agent.receive_type("task_cancelled")
    assert cancelled["task_id"] == submitted["task_id"]
    await agent.send({"type": "task_complete", "task_id": assign["task_id"],
                      "generation": assign["generation"], "result": METADATA})  # fmt: skip
    refusal = await agent.receive_type("error")
    assert refusal["error"] == "task_complete_failed: invalid_state"
    task = await operator.get_task(submitted["task_id"])
    assert task["status"] == "cancelled"


async def test_a_lone_hub_and_nodes_sharing_the_database_never_serve_it_at_once(
    nodes: Nodes,
) -> None:
    # given a node sharing the database
    await nodes.start("n1")

    # then a hub that would serve it alone refuses to start (exit 5)
    alone = await run_cli_async("serve", "--host", "127.0.0.1", "--port", "0", "--db", nodes.url)
    assert alone.returncode == 5, alone
    assert "already served by another hub" in alone.stderr

    # and once the nodes are gone, a lone hub serves, and a node is refused in turn
    nodes.stop()
    (nodes.directory / "lone").mkdir()
    lone = HubProcess(nodes.directory / "lone", db=nodes.url)
    nodes.hubs.append(lone)
    lone.start()
    flags = ["--pubsub", REDIS_URL, "--cluster", nodes.cluster, "--node-id", "n2"]
    refused = await run_cli_async(
        "serve", "--host", "127.0.0.1", "--port", "0", "--db", nodes.url, *flags
    )
    assert refused.returncode == 5, refused


async def test_a_node_that_loses_the_database_refuses_work_and_recovers_by_itself(
    nodes: Nodes, closing: list[Any]
) -> None:
    # given two nodes, the second reaching the database through a proxy, and an agent
    # on the first
    first = await nodes.start("n1")
    proxy = await BlackHoleProxy(urlsplit(nodes.url).port or 5432).start()
    closing.append(proxy)
    proxied = urlunsplit(urlsplit(nodes.url)._replace(netloc=f"postgres@127.0.0.1:{proxy.port}"))
    flags = ["--pubsub", REDIS_URL, "--cluster", nodes.cluster, "--node-id", "n2"]
    env = {**NODE_ENV, "AGENTCOM_DB_TIMEOUT_S": "0.5", "AGENTCOM_STORE_RETRY_INTERVAL_S": "0.1"}
    (nodes.directory / "n2").mkdir()
    second = HubProcess(nodes.directory / "n2", db=proxied, env=env, serve_args=flags,
                        log_pipe=True)  # fmt: skip
    nodes.hubs.append(second)
    await asyncio.to_thread(second.start)  # the proxy relays on this loop meanwhile
    await second.await_log("connected to Redis")
    ops = await nodes.token("ops", "admin")
    [worker] = await _workers(first, nodes, ["a0"])
    closing.append(worker)
    operator = OperatorClient(second.http_url, ops)
    closing.append(operator)
    await operator.connect()

    # when the second node's path to the database is cut
    proxy.cut()

    # then it refuses new work, says so on /health, and the first node works on
    with pytest.raises(RequestFailed) as refused:
        await operator.submit("not now")
    assert refused.value.code == "store_unavailable"
    assert (await _health(second))["status"] == "degraded"
    async with OperatorClient(first.http_url, ops) as other:
        task = await other.submit("meanwhile")
        assert (await other.wait_task(task["task_id"], timeout_s=20))["status"] == "completed"

    # and once the path is back, it recovers by itself: its tasks run on the first's agent
    proxy.restore()
    await second.await_log("store recovered", timeout=20)
    assert (await _health(second))["status"] == "ok"
    task = await operator.submit("after the outage")
    done = await operator.wait_task(task["task_id"], timeout_s=20)
    assert (done["status"], done["assigned_to"]) == ("completed", "a0")
