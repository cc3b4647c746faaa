"""Durability: acknowledged state survives ``kill -9`` of the hub process.

A hub subprocess is driven into every task state (queued, assigned, working,
completed), killed with SIGKILL, and a new hub process is started on the same
database file. What was acknowledged before the kill must be there after it.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import METADATA
from hubprocess import HubProcess, run_cli_async, start_hub

from agentcom.client import AgentClient, OperatorClient

EXECUTION = {
    "model_used": "qwen2.5-coder:7b", "tokens_in": 120, "tokens_out": 48,
    "estimated_cost_usd": 0.0, "equivalent_claude_cost_usd": 0.00108, "execution_ms": 1534.0,
}  # fmt: skip

# Short enough that a test can wait for the requeue; the sweep runs often enough to see it.
FAST_REQUEUE = {"AGENTCOM_DISCONNECT_GRACE_S": "0.2", "AGENTCOM_SWEEP_INTERVAL_S": "0.1"}


@dataclass
class Crashed:
    """Tasks left in each state by a hub that was then killed with SIGKILL."""

    db: Path
    tokens: dict[str, str]
    queued: str
    assigned: str
    working: str
    completed: str


async def connect_agent(
    hub: HubProcess, agent_id: str, token: str, closing: list[Any], capability: str
) -> AgentClient:
    agent = AgentClient(hub.ws_url, agent_id, token, capabilities=[capability], heartbeat_s=None)
    closing.append(agent)
    await agent.connect()
    return agent


async def connect_operator(hub: HubProcess, token: str, closing: list[Any]) -> OperatorClient:
    operator = OperatorClient(hub.http_url, token)
    closing.append(operator)
    await operator.connect()
    return operator


async def task_show(hub: HubProcess, token: str, task_id: str) -> dict[str, Any]:
    """The task as ``agentcom task show --json`` prints it."""
    result = await run_cli_async("task", "show", task_id, "--json", *hub.operator_args(token))
    assert result.returncode == 0, result
    task: dict[str, Any] = json.loads(result.stdout)
    return task


@pytest.fixture
async def crashed(tmp_path: Path, hubs: list[HubProcess], closing: list[Any]) -> Crashed:
    """Drive a hub into every task state, then SIGKILL it.

    Each task needs a capability only one agent has, so placement is deterministic;
    nobody has the queued task's capability.
    """
    hub = start_hub(hubs, tmp_path)
    tokens = {name: hub.make_token(name) for name in ("holder", "worker", "finisher")}
    tokens["ops"] = hub.make_token("ops", "admin")
    operator = await connect_operator(hub, tokens["ops"], closing)
    holder = await connect_agent(hub, "holder", tokens["holder"], closing, "holds")
    worker = await connect_agent(hub, "worker", tokens["worker"], closing, "works")
    finisher = await connect_agent(hub, "finisher", tokens["finisher"], closing, "finishes")

    queued = await operator.submit("waits for a gpu", needed_capabilities=["gpu"])

    assigned = await operator.submit("assigned only", needed_capabilities=["holds"])
    assert (await holder.receive_type("task_assign"))["task_id"] == assigned["task_id"]

    working = await operator.submit("accepted and running", needed_capabilities=["works"])
    assert (await worker.receive_type("task_assign"))["task_id"] == working["task_id"]
    await worker.send({"type": "task_accepted", "task_id": working["task_id"]})
    assert (await worker.receive_type("task_ack"))["status"] == "accepted"

    completed = await operator.submit("done before the crash", needed_capabilities=["finishes"])
    assign = await finisher.receive_type("task_assign")
    await finisher.send(
        {
            "type": "task_complete",
            "task_id": completed["task_id"],
            "generation": assign["generation"],
            "result": METADATA,
        }
    )
    assert (await finisher.receive_type("task_ack"))["status"] == "complete"

    assert hub.kill() == -9
    return Crashed(
        db=hub.db,
        tokens=tokens,
        queued=queued["task_id"],
        assigned=assigned["task_id"],
        working=working["task_id"],
        completed=completed["task_id"],
    )


async def test_every_acknowledged_state_survives_sigkill(
    crashed: Crashed, hubs: list[HubProcess], tmp_path: Path
) -> None:
    # given a hub killed with tasks in every state, when a new hub starts on its database
    hub = start_hub(hubs, tmp_path)
    admin = crashed.tokens["ops"]

    # then every acknowledged state is there
    queued, completed, assigned, working = await asyncio.gather(
        *(
            task_show(hub, admin, task_id)
            for task_id in (crashed.queued, crashed.completed, crashed.assigned, crashed.working)
        )
    )
    assert queued["status"] == "queued"
    assert queued["assigned_to"] is None

    assert completed["status"] == "completed"
    assert completed["assigned_to"] == "finisher"
    assert completed["execution"] == EXECUTION
    assert [entry["status"] for entry in completed["history"]] == [
        "queued", "assigned", "completed",
    ]  # fmt: skip

    assert (assigned["status"], assigned["assigned_to"], assigned["generation"]) == (
        "assigned", "holder", 1,
    )  # fmt: skip
    assert (working["status"], working["assigned_to"], working["generation"]) == (
        "working", "worker", 1,
    )  # fmt: skip


async def test_agents_that_come_back_keep_their_tasks_and_complete_them(
    crashed: Crashed, hubs: list[HubProcess], tmp_path: Path, closing: list[Any]
) -> None:
    # given a restarted hub (default 60 s grace), when the agents reconnect
    hub = start_hub(hubs, tmp_path)
    operator = await connect_operator(hub, crashed.tokens["ops"], closing)
    holder = await connect_agent(hub, "holder", crashed.tokens["holder"], closing, "holds")
    worker = await connect_agent(hub, "worker", crashed.tokens["worker"], closing, "works")

    # then they are still busy with their tasks
    states = {
        a["agent_id"]: (a["state"], a["current_task"])
        for a in await operator.request("agents_list")
    }
    assert states["holder"] == ("assigned", crashed.assigned)
    assert states["worker"] == ("working", crashed.working)

    # and may complete them with the generation they were given before the crash
    for agent, task_id in ((worker, crashed.working), (holder, crashed.assigned)):
        await agent.send(
            {"type": "task_complete", "task_id": task_id, "generation": 1, "result": METADATA}
        )
        ack = await agent.receive_type("task_ack")
        assert (ack["status"], ack["task_id"]) == ("complete", task_id)
        stored = await operator.get_task(task_id)
        assert stored["status"] == "completed"
        assert stored["execution"] == EXECUTION


async def test_tasks_of_agents_that_do_not_come_back_are_requeued_after_grace(
    crashed: Crashed, hubs: list[HubProcess], tmp_path: Path, closing: list[Any]
) -> None:
    # given a restarted hub with a short disconnect grace, and agents that never return
    hub = start_hub(hubs, tmp_path, **FAST_REQUEUE)
    operator = await connect_operator(hub, crashed.tokens["ops"], closing)

    # then their tasks go back to the queue (polled: the hub runs on a real clock)
    requeued = await poll_until_queued(operator, [crashed.assigned, crashed.working], timeout=10)

    for task in requeued:
        assert task["assigned_to"] is None
        assert task["history"][-1]["status"] == "queued"
    assert (await operator.get_task(crashed.completed))["status"] == "completed"
    assert (await operator.get_task(crashed.queued))["status"] == "queued"


async def test_a_submit_acknowledged_just_before_sigkill_survives(
    hubs: list[HubProcess], tmp_path: Path, closing: list[Any]
) -> None:
    hub = start_hub(hubs, tmp_path)
    admin = hub.make_token("ops", "admin")
    operator = await connect_operator(hub, admin, closing)
    # a burst shares commits; each one was acknowledged by its reply
    burst = await asyncio.gather(*(operator.submit(f"burst {n}") for n in range(20)))
    result = await run_cli_async("task", "submit", "the last words", *hub.operator_args(admin))
    assert result.returncode == 0, result
    last = result.stdout.strip()
    hub.kill()  # right after the acknowledgement: no graceful flush

    restarted = start_hub(hubs, tmp_path)
    assert (await task_show(restarted, admin, last))["description"] == "the last words"
    operator = await connect_operator(restarted, admin, closing)
    stored = await operator.request("task_list", status="queued", limit=1000)
    assert {task["task_id"] for task in stored} == {task["task_id"] for task in burst} | {last}


async def poll_until_queued(
    operator: OperatorClient, task_ids: list[str], timeout: float
) -> list[dict[str, Any]]:
    """The tasks once all of them are queued; fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        tasks = [await operator.get_task(task_id) for task_id in task_ids]
        if all(task["status"] == "queued" for task in tasks):
            return tasks
        assert time.monotonic() < deadline, [(t["task_id"], t["status"]) for t in tasks]
        await asyncio.sleep(0.05)
