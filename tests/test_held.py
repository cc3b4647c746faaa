"""A task held for an agent whose connection ended: what the hub tells operators about it.

When an agent's connection ends while it holds a task, the hub keeps the task for it
(PROTOCOL.md section 2) until the agent reports on it or a timeout takes it back. The
agent's view (``agents_list``, ``/api/agents``, dashboard events) and the task object
(``task_get``, ``/api/tasks/{id}``) say that the task is held, since when, and when and by
which timeout it will be reclaimed. The hub runs in this process on a manual clock.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

from conftest import AgentMaker, TokenMaker

from agentcom.client import AgentClient, OperatorClient
from agentcom.config import Settings
from agentcom.hub.clock import ManualClock
from agentcom.protocol.events import EVENT, AgentView
from agentcom.protocol.task import Task
from agentcom.server.app import HubServer

Frame = dict[str, Any]
GRACE_MS = 60_000  # disconnect_grace_s
ACCEPT_MS = 60_000  # accept_timeout_s
RECLAIM_MS = 300_000  # reclaim_after_s


async def agent_view(operator: OperatorClient, agent_id: str) -> Frame:
    """The agent as ``agents_list`` returns it, checked against its documented model."""
    agents = await operator.request("agents_list")
    found: Frame = next(agent for agent in agents if agent["agent_id"] == agent_id)
    AgentView.model_validate(found)
    return found


async def gone(operator: OperatorClient, agent: AgentClient) -> Frame:
    """Close ``agent``; its ``agent_disconnected`` event, checked against its model."""
    presence = operator.watch(["agents"])
    await anext(presence)  # the snapshot: the disconnect is published after it
    await agent.close()
    async with asyncio.timeout(5):
        async for event in presence:
            if event["event"] == "agent_disconnected" and event["agent_id"] == agent.agent_id:
                break
    await presence.aclose()
    EVENT.validate_python(event)
    return event


async def running(agent: AgentClient, operator: OperatorClient, description: str) -> Frame:
    """Submit a task, have ``agent`` accept it; returns the ``task_assign``."""
    task = await operator.submit(description, complexity_tier="complex")
    assign = await agent.receive_type("task_assign")
    assert assign["task_id"] == task["task_id"]
    await agent.send({"type": "task_accepted", "task_id": task["task_id"]})
    await agent.receive_type("task_ack")
    return assign


async def test_a_task_whose_agent_left_is_shown_held_until_the_grace_deadline(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient, clock: ManualClock
) -> None:
    # given an agent running a task
    agent = await make_agent("worker-1")
    assign = await running(agent, operator, "long job")
    assert (await agent_view(operator, "worker-1"))["held_task"] is None

    # when its connection ends
    clock.advance(5_000)
    left_at = clock.now_ms()
    event = await gone(operator, agent)

    # then the agent and the task say the task is held for it until the grace runs out
    expected = {
        "task_id": assign["task_id"],
        "agent_id": "worker-1",
        "since": left_at,
        "agent_connected": False,
        "reclaim_at": left_at + GRACE_MS,
        "reclaim_reason": "disconnect_grace",
    }
    assert event["agent"]["held_task"] == expected  # dashboards hear of it at once
    view = await agent_view(operator, "worker-1")
    assert view["state"] == "offline"
    assert view["held_task"] == expected
    task = await operator.get_task(assign["task_id"])
    assert task["held_for"] == expected
    Task.model_validate(task)


async def test_a_reconnected_agent_holds_its_task_until_no_progress_then_reports_on_it(
    hub: HubServer,
    make_agent: AgentMaker,
    operator: OperatorClient,
    clock: ManualClock,
) -> None:
    # given an agent whose connection ended while it ran a task
    agent = await make_agent("worker-1")
    assign = await running(agent, operator, "long job")
    accepted_at = clock.now_ms()
    clock.advance(5_000)
    left_at = clock.now_ms()
    await gone(operator, agent)

    # when it identifies again (as idle, like real sidecars) without a word on the task
    clock.advance(2_000)
    again = await make_agent("worker-1")

    # then it is busy with the held task, which the no-progress reclaim will take back
    view = await agent_view(operator, "worker-1")
    assert view["state"] == "working"
    assert view["held_task"] == {
        "task_id": assign["task_id"],
        "agent_id": "worker-1",
        "since": left_at,
        "agent_connected": True,
        "reclaim_at": accepted_at + RECLAIM_MS,
        "reclaim_reason": "no_progress",
    }
    # and a task submitted meanwhile says why it waits, naming the agent
    waiting = await operator.submit("next job", complexity_tier="complex")
    reason = (await operator.get_task(waiting["task_id"]))["waiting_reason"]
    assert reason.startswith("all 1 capable agents are busy; worker-1 holds a task kept")

    # when the agent reports progress on the task on its new connection
    await again.send({"type": "task_progress", "task_id": assign["task_id"], "progress": 60})
    await again.send({"type": "ping"})
    await again.receive_type("pong")  # frames are handled in order: the progress is in

    # then the task runs as usual again: nothing is held
    assert (await agent_view(operator, "worker-1"))["held_task"] is None
    assert (await operator.get_task(assign["task_id"]))["held_for"] is None


async def test_an_unaccepted_task_of_a_reconnected_agent_is_held_until_the_acceptance_timeout(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient, clock: ManualClock
) -> None:
    # given an agent that left between the assignment and its acceptance
    agent = await make_agent("worker-1")
    task = await operator.submit("job", complexity_tier="complex")
    assign = await agent.receive_type("task_assign")
    assigned_at = clock.now_ms()
    clock.advance(1_000)
    await gone(operator, agent)

    # when it comes back
    await make_agent("worker-1")

    # then the acceptance timeout, not the grace, is what takes the task back
    hold = (await operator.get_task(task["task_id"]))["held_for"]
    assert hold["reclaim_at"] == assigned_at + ACCEPT_MS
    assert hold["reclaim_reason"] == "acceptance_timeout"
    assert assign["generation"] == 1


async def test_the_hold_ends_when_the_grace_runs_out_and_the_task_is_requeued(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient, clock: ManualClock
) -> None:
    # given a task held for an agent that left
    agent = await make_agent("worker-1")
    assign = await running(agent, operator, "job")
    await gone(operator, agent)

    # when the grace runs out
    clock.advance(GRACE_MS)
    await hub.sweep()

    # then the task is back in the queue and neither it nor the agent speaks of a hold
    task = await operator.get_task(assign["task_id"])
    assert task["status"] == "queued"
    assert task["held_for"] is None
    assert (await agent_view(operator, "worker-1"))["held_task"] is None


async def test_after_a_restart_the_hub_holds_restored_tasks_from_the_restart_on(
    settings: Settings,
    clock: ManualClock,
    make_token: TokenMaker,
) -> None:
    # given a hub stopped while an agent ran a task, its last progress long ago
    first = HubServer(settings, clock=clock, run_sweeps=False)
    await first.start()
    admin = make_token("ops", "admin")
    agent = AgentClient(
        f"ws://127.0.0.1:{first.port}/ws", "worker-1", make_token("worker-1"), heartbeat_s=None
    )
    try:
        await agent.connect()
        async with OperatorClient(f"http://127.0.0.1:{first.port}", admin) as operator:
            assign = await running(agent, operator, "long job")
    finally:
        await first.stop()
        await agent.close()

    # when the hub starts again on the same database, ten minutes later
    clock.advance(600_000)
    restarted_at = clock.now_ms()
    second = HubServer(settings, clock=clock, run_sweeps=False)
    await second.start()
    try:
        # then the task is held for its agent from the restart on, for the grace period
        async with OperatorClient(f"http://127.0.0.1:{second.port}", admin) as operator:
            view = await agent_view(operator, "worker-1")
        assert view["held_task"]["since"] == restarted_at
        assert view["held_task"]["reclaim_at"] == restarted_at + GRACE_MS
        assert view["held_task"]["reclaim_reason"] == "disconnect_grace"
        # and a sweep now does not reclaim it for "no progress" during the outage
        await second.sweep()
        task = await asyncio.to_thread(
            http_json, f"http://127.0.0.1:{second.port}/api/tasks/{assign['task_id']}", admin
        )
        assert task["status"] == "working"
        assert task["held_for"]["agent_id"] == "worker-1"
        agents = await asyncio.to_thread(
            http_json, f"http://127.0.0.1:{second.port}/api/agents", admin
        )
        assert agents[0]["held_task"]["task_id"] == assign["task_id"]
    finally:
        await second.stop()


def http_json(url: str, token: str) -> Any:
    """GET ``url`` with a bearer token; the decoded JSON body."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())
