"""Sidecars built on our client keep their tasks across a dropped connection or a hub
restart, as real sidecars do, and give a task back explicitly when they stop.

Some tests run the hub in this process on a manual clock and cut the agent's path to it
with a relay the test opens and closes; the others restart a real ``agentcom serve``
process (SIGTERM, then a new process on the same database and port) under our client and
under ``examples/demo_sidecar.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import TokenMaker
from gated import Frame, GatedSidecar
from hubprocess import HubProcess, LineReader, clean_env
from tcpproxy import BlackHoleProxy

from agentcom.client import AgentClient, OperatorClient
from agentcom.hub.clock import ManualClock
from agentcom.server.app import HubServer

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo_sidecar.py"
FAST_SWEEP = {"AGENTCOM_SWEEP_INTERVAL_S": "0.1"}


@pytest.fixture
async def cleanup() -> AsyncIterator[list[Any]]:
    """Relays, sidecars and clients a test opens; closed at the end, newest first."""
    opened: list[Any] = []
    yield opened
    for thing in reversed(opened):
        with contextlib.suppress(Exception):
            await thing.close()


async def left(operator: OperatorClient, agent_id: str, act: Callable[[], Any]) -> None:
    """Do ``act`` and return once the hub has seen ``agent_id`` disconnect."""
    presence = operator.watch(["agents"])
    await anext(presence)
    act()
    async with asyncio.timeout(10):
        async for event in presence:
            if event["event"] == "agent_disconnected" and event["agent_id"] == agent_id:
                break
    await presence.aclose()


async def completions(operator: OperatorClient, task_id: str) -> list[Frame]:
    task = await operator.get_task(task_id)
    return [entry for entry in task["history"] if entry["status"] == "completed"]


# --- in process: the path to the hub is cut and mended ------------------------------------


async def test_a_task_keeps_running_across_a_reconnect_and_completes_on_the_new_connection(
    hub: HubServer, make_token: TokenMaker, operator: OperatorClient, cleanup: list[Any]
) -> None:
    # given an agent on our client running a task through a relay
    relay = await BlackHoleProxy(hub.port).start()
    cleanup.append(relay)
    agent = GatedSidecar(
        f"ws://127.0.0.1:{relay.port}/ws",
        "worker-1",
        make_token("worker-1"),
        backoff_initial_s=0.05,
    )
    cleanup.append(agent)
    task = await operator.submit("long job", complexity_tier="complex")
    assign = await agent.next_assign()

    # when its connection drops mid-task and the task finishes while it is away
    await left(operator, "worker-1", relay.cut)
    agent.finish(task["task_id"])
    relay.restore()

    # then the completion, with the generation it was assigned, goes out on the new
    # connection and is accepted
    answer = await agent.answer(task["task_id"], assign["generation"])
    assert answer == {"type": "task_ack", "task_id": task["task_id"], "status": "complete",
                      "generation": 1}  # fmt: skip
    assert len(await completions(operator, task["task_id"])) == 1
    # and the agent is free at once for the next task
    await operator.submit("next job", complexity_tier="complex")
    assert (await agent.next_assign())["description"] == "next job"


async def test_a_completion_delivered_after_the_grace_ran_out_is_refused_and_changes_nothing(
    hub: HubServer,
    make_token: TokenMaker,
    operator: OperatorClient,
    clock: ManualClock,
    cleanup: list[Any],
) -> None:
    # given an agent that lost its connection mid-task and stayed away past the grace,
    # and another agent that connected since
    relay = await BlackHoleProxy(hub.port).start()
    cleanup.append(relay)
    late = GatedSidecar(
        f"ws://127.0.0.1:{relay.port}/ws", "late", make_token("late"), backoff_initial_s=0.05
    )
    cleanup.append(late)
    task = await operator.submit("job", complexity_tier="complex")
    first = await late.next_assign()
    await left(operator, "late", relay.cut)
    clock.advance(60_000)
    direct = f"ws://127.0.0.1:{hub.port}/ws"
    other = GatedSidecar(direct, "other", make_token("other"), backoff_initial_s=0.05)
    cleanup.append(other)
    await hub.sweep()  # the grace ran out: requeued, and given to the other agent
    second = await other.next_assign()
    assert (second["task_id"], second["generation"]) == (task["task_id"], 2)

    # when the late agent finishes its attempt and comes back with the completion
    late.finish(task["task_id"])
    relay.restore()

    # then fencing refuses it cleanly: an error naming the task, nothing changed
    refused = await late.answer(task["task_id"], first["generation"])
    assert refused["type"] == "error"
    assert refused["error"] == "task_complete_failed: stale_generation"
    assert refused["task_id"] == task["task_id"]
    current = await operator.get_task(task["task_id"])
    assert (current["status"], current["assigned_to"], current["generation"]) == (
        "working", "other", 2,
    )  # fmt: skip
    # and the attempt that holds the task completes it, once
    other.finish(task["task_id"])
    assert (await other.answer(task["task_id"], 2))["status"] == "complete"
    assert len(await completions(operator, task["task_id"])) == 1


async def test_closing_the_client_ends_a_delivery_waiting_for_a_connection(
    hub: HubServer, make_token: TokenMaker, operator: OperatorClient, cleanup: list[Any]
) -> None:
    # given an agent whose completion waits for a connection that does not come back
    relay = await BlackHoleProxy(hub.port).start()
    cleanup.append(relay)
    agent = GatedSidecar(
        f"ws://127.0.0.1:{relay.port}/ws",
        "worker-1",
        make_token("worker-1"),
        backoff_initial_s=0.05,
    )
    cleanup.append(agent)
    task = await operator.submit("job", complexity_tier="complex")
    await agent.next_assign()
    await left(operator, "worker-1", relay.cut)
    delivery = asyncio.create_task(
        agent.client.deliver({"type": "task_complete", "task_id": task["task_id"],
                              "generation": 1})
    )  # fmt: skip

    # when the client is closed
    await agent.client.close()

    # then the delivery ends at once with ConnectionError instead of waiting for ever
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(delivery, 5)


async def test_concurrent_deliveries_about_one_task_each_get_their_own_answer(
    hub: HubServer, make_token: TokenMaker, operator: OperatorClient, cleanup: list[Any]
) -> None:
    # given an agent on run() that has been assigned a task
    assigned: asyncio.Queue[Frame] = asyncio.Queue()

    async def on_frame(client: AgentClient, frame: Frame) -> None:
        if frame["type"] == "task_assign":
            await assigned.put(frame)

    agent = AgentClient(f"ws://127.0.0.1:{hub.port}/ws", "worker-1", make_token("worker-1"))
    runner = asyncio.create_task(agent.run(on_frame))
    cleanup.append(agent)
    task = await operator.submit("job", complexity_tier="complex")
    assign = await asyncio.wait_for(assigned.get(), 10)

    # when it delivers the acceptance and the completion at the same time
    accepted, completed = await asyncio.wait_for(
        asyncio.gather(
            agent.deliver({"type": "task_accepted", "task_id": task["task_id"]}),
            agent.deliver({"type": "task_complete", "task_id": task["task_id"],
                           "generation": assign["generation"]}),
        ),
        10,
    )  # fmt: skip

    # then each call returns the acknowledgement of its own frame
    assert (accepted["status"], completed["status"]) == ("accepted", "complete")
    await agent.close()
    await asyncio.wait_for(runner, 10)


# --- a real hub process restarted under the sidecars -----------------------------------------


@pytest.fixture
async def hub_process(tmp_path: Path) -> AsyncIterator[list[HubProcess]]:
    """The hub processes of a test (a restart adds one); all stopped at the end."""
    started = [HubProcess(tmp_path, env=FAST_SWEEP).start()]
    yield started
    for process in started:
        process.stop()


STORM = 20  # agents that reconnect together when the hub comes back


async def test_a_hub_restart_under_running_tasks_completes_each_once_and_frees_the_agents(
    hub_process: list[HubProcess], cleanup: list[Any]
) -> None:
    # given many agents on our client, each running a task, on a hub process
    hub = hub_process[0]
    admin = hub.make_token("ops", "admin")
    agents = [
        GatedSidecar(hub.ws_url, f"worker-{n}", hub.make_token(f"worker-{n}"),
                     backoff_initial_s=0.05, backoff_max_s=0.5)
        for n in range(STORM)
    ]  # fmt: skip
    cleanup.extend(agents)
    operator = OperatorClient(hub.http_url, admin)
    cleanup.append(operator)
    await operator.connect()
    for n in range(STORM):
        await operator.submit(f"job {n}", complexity_tier="complex")
    assigns = await asyncio.gather(*(agent.next_assign() for agent in agents))

    # when the hub is stopped with SIGTERM and started again on the same database and
    # port, all agents reconnect at once, and their tasks finish
    await operator.close()
    hub_process.append(await asyncio.to_thread(_restart_sync, hub))
    for agent, assign in zip(agents, assigns, strict=True):
        agent.finish(assign["task_id"])

    # then each completion, delivered on the new connection, is accepted once
    answers = await asyncio.gather(
        *(
            agent.answer(a["task_id"], a["generation"], 60)
            for agent, a in zip(agents, assigns, strict=True)
        )
    )
    assert [answer["status"] for answer in answers] == ["complete"] * STORM
    operator = OperatorClient(hub_process[-1].http_url, admin)
    cleanup.append(operator)
    await operator.connect()
    for assign in assigns:
        task = await operator.get_task(assign["task_id"])
        assert (task["status"], task["generation"]) == ("completed", 1)
        assert [e["status"] for e in task["history"]].count("completed") == 1
    # and every agent is free for the next task at once (no five-minute reclaim)
    for n in range(STORM):
        await operator.submit(f"next {n}", complexity_tier="complex")
    nexts = await asyncio.gather(*(agent.next_assign() for agent in agents))
    assert sorted(frame["description"] for frame in nexts) == sorted(
        f"next {n}" for n in range(STORM)
    )


def _restart_sync(hub: HubProcess) -> HubProcess:
    """Stop ``hub`` with SIGTERM; a new hub process on its database and port."""
    assert hub.stop() == 0
    return HubProcess(hub.directory, db=hub.db, env=FAST_SWEEP, port=hub.port or 0).start()


class DemoProcess:
    """``examples/demo_sidecar.py`` in a subprocess, its log read line by line."""

    def __init__(self, hub: HubProcess, agent_id: str, token: str, step_delay_s: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(DEMO), "--hub", hub.ws_url, "--agent-id", agent_id,
             "--token", token, "--step-delay", str(step_delay_s)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, env=clean_env({"PYTHONPATH": os.pathsep.join(sys.path)}),
        )  # fmt: skip
        assert self.process.stderr is not None
        self.log = LineReader(self.process.stderr)

    async def await_line(self, pattern: str, timeout: float = 20.0) -> str:
        """The next log line matching ``pattern`` (TimeoutError, EOFError)."""
        async with asyncio.timeout(timeout):
            while True:
                line = await self.log.next_line_async(timeout)
                if re.search(pattern, line):
                    return line

    def interrupt(self) -> int:
        """SIGINT (Ctrl-C) and wait; returns the exit code."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(20)

    async def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.log.join()


async def test_the_readme_restart_leaves_the_demo_sidecar_free_and_its_task_completed_once(
    hub_process: list[HubProcess], cleanup: list[Any]
) -> None:
    # given the walkthrough: the demo sidecar runs a task submitted by an operator
    hub = hub_process[0]
    admin = hub.make_token("ops", "admin")
    demo = DemoProcess(hub, "worker-1", hub.make_token("worker-1"), step_delay_s=1.0)
    cleanup.append(demo)
    await demo.await_line(r"connected to ws://\S+ and identified as worker-1$")
    async with OperatorClient(hub.http_url, admin) as operator:
        task = await operator.submit("Summarise the release notes for 0.1.0")
    await demo.await_line(rf"task {task['task_id']} assigned \(generation 1")

    # when the hub is stopped (SIGTERM, as Ctrl-C) mid-task and started again
    hub_process.append(await asyncio.to_thread(_restart_sync, hub))
    await demo.await_line(r"connection to \S+ lost \(the hub is restarting\)")

    # then the sidecar identifies again and its completion reaches the restarted hub
    await demo.await_line(r"identified as worker-1$")
    await demo.await_line(rf"task {task['task_id']} complete$")
    restarted = hub_process[-1]
    async with OperatorClient(restarted.http_url, admin) as operator:
        done = await operator.get_task(task["task_id"])
        assert (done["status"], done["generation"]) == ("completed", 1)
        assert len(await completions(operator, task["task_id"])) == 1
        # and the next task runs at once on the same sidecar
        following = await operator.submit("Bump the version")
        finished = await asyncio.wait_for(operator.wait_task(following["task_id"]), 20)
        assert (finished["status"], finished["assigned_to"]) == ("completed", "worker-1")


async def test_the_demo_sidecar_stopped_mid_task_gives_the_task_back_at_once(
    hub_process: list[HubProcess], cleanup: list[Any]
) -> None:
    # given the demo sidecar running a long task
    hub = hub_process[0]
    admin = hub.make_token("ops", "admin")
    demo = DemoProcess(hub, "worker-1", hub.make_token("worker-1"), step_delay_s=60.0)
    cleanup.append(demo)
    await demo.await_line(r"identified as worker-1$")
    async with OperatorClient(hub.http_url, admin) as operator:
        task = await operator.submit("a long job")
        await demo.await_line(rf"task {task['task_id']} assigned")

        # when it is stopped with Ctrl-C
        code = await asyncio.to_thread(demo.interrupt)

        # then it gave the task back: queued again at once, no retry counted, no agent
        assert code == 0
        returned = await operator.get_task(task["task_id"])
    assert (returned["status"], returned["assigned_to"], returned["retry_count"]) == (
        "queued", None, 0,
    )  # fmt: skip
    assert returned["history"][-1]["detail"] == "rejected by worker-1: sidecar stopping"
    assert any("gave task" in line for line in demo.log.rest())


async def test_the_demo_sidecar_stopped_during_its_reconnect_backoff_exits_at_once(
    hub_process: list[HubProcess], cleanup: list[Any]
) -> None:
    # given the demo sidecar running a task when the hub went away
    hub = hub_process[0]
    demo = DemoProcess(hub, "worker-1", hub.make_token("worker-1"), step_delay_s=60.0)
    cleanup.append(demo)
    await demo.await_line(r"identified as worker-1$")
    async with OperatorClient(hub.http_url, hub.make_token("ops", "admin")) as operator:
        task = await operator.submit("a long job")
        await demo.await_line(rf"task {task['task_id']} assigned")
    assert await asyncio.to_thread(hub.stop) == 0
    await demo.await_line(r"lost \(the hub is restarting\); retrying")

    # when it is stopped with Ctrl-C while it waits to reconnect
    code = await asyncio.to_thread(demo.interrupt)

    # then it exits cleanly, saying the hub will requeue the task after its grace
    assert code == 0
    rest = demo.log.rest()
    assert any(
        f"stopping while disconnected: the hub requeues {task['task_id']}" in line for line in rest
    ), rest
    assert not any("Traceback" in line for line in rest)
