"""The frames of the latest AgentCom sidecar (phases 24-44), as its source sends them.

Each helper below builds a frame exactly as ``sidecar/index.js`` does (its ``send()``
adds ``protocol_version: 1`` to every frame), so these tests speak to the hub as that
sidecar does, over a real socket, with our own client.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from conftest import AgentMaker
from hubprocess import HubProcess, start_hub

from agentcom.client import AgentClient, OperatorClient

Frame = dict[str, Any]
EVENT_TIMEOUT_S = 10.0


def state_report(assign: Frame, status: str = "working") -> Frame:
    """``reportActiveState()``: sent after ``identified`` while a task is active."""
    return {
        "type": "state_report",
        "task_id": assign["task_id"],
        "status": status,
        "generation": assign["generation"],
        "assigned_at": assign["assigned_at"],
        "protocol_version": 1,
    }


def task_complete(assign: Frame, **result: Any) -> Frame:
    """``sendTaskComplete()`` after ``executeTask()``: verification moved to the top level."""
    return {
        "type": "task_complete",
        "task_id": assign["task_id"],
        "result": {
            "status": "success",
            "output": "done",
            "model_used": "qwen2.5-coder:7b",
            "tokens_in": 120,
            "tokens_out": 48,
            "estimated_cost_usd": 0,
            "equivalent_claude_cost_usd": 0.00108,
            "execution_ms": 1534,
            "verification_status": "skipped",
            "verification_attempts": 0,
            "termination_reason": None,
            "iterations_used": None,
            **result,
        },
        "generation": assign["generation"],
        "verification_report": None,
        "verification_history": None,
        "protocol_version": 1,
    }


async def next_event(events: Any, name: str) -> Frame:
    """The next published event called ``name``."""
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        while True:
            event: Frame = await anext(events)
            if event.get("event") == name:
                return event


async def test_state_report_of_the_running_attempt_is_answered_continue(
    make_agent: AgentMaker, operator: OperatorClient
) -> None:
    # given an agent running a task, whose connection drops and comes back
    agent = await make_agent("worker")
    task = await operator.submit("run it")
    assign = await agent.receive_type("task_assign")
    await agent.send({"type": "task_accepted", "task_id": task["task_id"]})
    await agent.receive_type("task_ack")
    events = operator.watch(["tasks"])
    assert (await anext(events))["type"] == "snapshot"
    await agent.close()
    back = await make_agent("worker")

    # when it reports the task it still runs
    await back.send(state_report(assign))

    # then the hub says continue, publishes the decision, and takes the completion once
    assert await back.receive_type("state_report_ack") == {
        "type": "state_report_ack", "task_id": task["task_id"], "action": "continue",
    }  # fmt: skip
    event = await next_event(events, "task_state_reported")
    assert (event["agent_id"], event["action"], event["reported_generation"]) == (
        "worker", "continue", assign["generation"],
    )  # fmt: skip
    await events.aclose()
    await back.send(task_complete(assign))
    assert (await back.receive_type("task_ack"))["status"] == "complete"
    await back.send(task_complete(assign))
    refused = await back.receive_type("error")
    assert refused["error"] == "task_complete_failed: invalid_state"
    assert [e["status"] for e in (await operator.get_task(task["task_id"]))["history"]] == [
        "queued", "assigned", "working", "completed",
    ]  # fmt: skip


async def test_state_report_of_a_task_not_yet_accepted_starts_it(
    make_agent: AgentMaker, operator: OperatorClient
) -> None:
    # given a task assigned to an agent whose task_accepted never reached the hub
    agent = await make_agent("worker")
    task = await operator.submit("run it")
    assign = await agent.receive_type("task_assign")

    # when the agent reports it (the sidecar saves it as accepted before saying so)
    await agent.send(state_report(assign, status="accepted"))

    # then it continues, and the task is working: no acceptance timeout can take it away
    assert (await agent.receive_type("state_report_ack"))["action"] == "continue"
    stored = await operator.get_task(task["task_id"])
    assert (stored["status"], stored["assigned_to"]) == ("working", "worker")


async def test_state_report_of_another_attempt_is_answered_abort_and_changes_nothing(
    make_agent: AgentMaker, operator: OperatorClient
) -> None:
    # given a task running on one agent
    owner = await make_agent("owner", capabilities=["a"])
    other = await make_agent("other", capabilities=["b"])
    task = await operator.submit("run it", needed_capabilities=["a"])
    assign = await owner.receive_type("task_assign")

    # when reports name an older generation, another agent's task, or an unknown task
    stale = {**assign, "generation": assign["generation"] - 1}
    unknown = {**assign, "task_id": "f" * 32}
    for agent, reported in ((owner, stale), (other, assign), (owner, unknown)):
        await agent.send(state_report(reported))

        # then each is told to abort
        ack = await agent.receive_type("state_report_ack")
        assert (ack["task_id"], ack["action"]) == (reported["task_id"], "abort")

    # and the task is as it was
    stored = await operator.get_task(task["task_id"])
    assert (stored["status"], stored["assigned_to"], stored["generation"]) == (
        "assigned", "owner", assign["generation"],
    )  # fmt: skip


async def test_a_task_running_across_a_sigkill_of_the_hub_completes_once(
    hubs: list[HubProcess], tmp_path: Path, closing: list[Any]
) -> None:
    # given an agent running a task on a hub that is then killed with SIGKILL
    hub = start_hub(hubs, tmp_path)
    admin, token = hub.make_token("ops", "admin"), hub.make_token("worker")
    operator = OperatorClient(hub.http_url, admin)
    closing.append(operator)
    await operator.connect()
    agent = AgentClient(hub.ws_url, "worker", token, heartbeat_s=None)
    closing.append(agent)
    await agent.connect()
    task = await operator.submit("long job")
    assign = await agent.receive_type("task_assign")
    await agent.send({"type": "task_accepted", "task_id": task["task_id"]})
    assert (await agent.receive_type("task_ack"))["status"] == "accepted"
    assert hub.kill() == -9

    # when a new hub starts on its database and the sidecar reconnects and reports
    restarted = start_hub(hubs, tmp_path)
    operator = OperatorClient(restarted.http_url, admin)
    closing.append(operator)
    await operator.connect()
    back = AgentClient(restarted.ws_url, "worker", token, heartbeat_s=None)
    closing.append(back)
    await back.connect()
    await back.send(state_report(assign))

    # then it continues (no validation_failed), and completes the task exactly once
    assert (await back.receive_type("state_report_ack"))["action"] == "continue"
    await back.send(task_complete(assign))
    assert (await back.receive_type("task_ack"))["status"] == "complete"
    await back.send(task_complete(assign))
    assert (await back.receive_type("error"))["error"] == "task_complete_failed: invalid_state"
    stored = await operator.get_task(task["task_id"])
    assert [entry["status"] for entry in stored["history"]] == [
        "queued", "assigned", "working", "completed",
    ]  # fmt: skip
    assert stored["generation"] == assign["generation"]
