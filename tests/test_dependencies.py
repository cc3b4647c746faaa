"""Task dependencies: ``task_submit.depends_on``.

A task waits, queued but not assignable, until every prerequisite completes; it becomes
assignable as the last one completes (no sweep: these hubs run none). A prerequisite
that ends in dead letter or is cancelled sends its dependants, transitively, to dead
letter. Most tests run the hub in this process; the last one kills a real hub process
with SIGKILL.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import METADATA, AgentMaker
from hubprocess import HubProcess, run_cli_async, start_hub

from agentcom.client import AgentClient, OperatorClient, RequestFailed
from agentcom.config import Settings

Frame = dict[str, Any]


async def complete(agent: AgentClient, assign: Frame) -> None:
    """Complete an assigned task and check the ack."""
    frame = {"type": "task_complete", "task_id": assign["task_id"],
             "generation": assign["generation"], "result": METADATA}  # fmt: skip
    await agent.send(frame)
    assert (await agent.receive_type("task_ack"))["status"] == "complete"


async def fail(agent: AgentClient, assign: Frame) -> str:
    """Fail an assigned task; returns the ack's status."""
    frame = {"type": "task_failed", "task_id": assign["task_id"],
             "generation": assign["generation"], "reason": "broken"}  # fmt: skip
    await agent.send(frame)
    status: str = (await agent.receive_type("task_ack"))["status"]
    return status


async def submit(operator: OperatorClient, name: str, *prerequisites: str, **fields: Any) -> str:
    task = await operator.submit(name, depends_on=list(prerequisites) or None, **fields)
    task_id: str = task["task_id"]
    return task_id


async def test_a_chain_of_three_runs_in_order(
    make_agent: AgentMaker, operator: OperatorClient
) -> None:
    # given an idle agent and a chain first <- second <- third
    agent = await make_agent("worker")
    first = await submit(operator, "first")
    assign = await agent.receive_type("task_assign")
    second = await submit(operator, "second", first)
    third = await submit(operator, "third", second[:8])  # abbreviated, as the CLI allows

    # then only the first runs; the others wait, queued, and say why
    assert assign["task_id"] == first
    waiting = await operator.get_task(second)
    assert waiting["status"] == "queued"
    assert waiting["waiting_reason"] == f"waiting for 1 of 1 prerequisites: {first}"
    assert waiting["waiting_for"] == [first] and waiting["depends_on"] == [first]
    assert (await operator.get_task(first))["dependants"] == [second]
    assert (await operator.get_task(third))["depends_on"] == [second]

    # when each completes, the next is assigned at once
    for expected in (second, third):
        await complete(agent, assign)
        assign = await agent.receive_type("task_assign")
        assert assign["task_id"] == expected
    await complete(agent, assign)
    assert (await operator.get_task(third))["status"] == "completed"


async def test_a_diamond_waits_for_both_branches(
    make_agent: AgentMaker, operator: OperatorClient
) -> None:
    # given two agents and a diamond: top <- left, right <- bottom
    agents = [await make_agent("left-worker"), await make_agent("right-worker")]
    top = await submit(operator, "top")
    left = await submit(operator, "left", top)
    right = await submit(operator, "right", top)
    bottom = await submit(operator, "bottom", left, right)
    holder = next(agent for agent in agents if agent.agent_id == "left-worker")
    assign = await holder.receive_type("task_assign")
    assert assign["task_id"] == top

    # when the top completes, both branches run
    await complete(holder, assign)
    branches = {agent.agent_id: await agent.receive_type("task_assign") for agent in agents}
    assert {a["task_id"] for a in branches.values()} == {left, right}
    reason = (await operator.get_task(bottom))["waiting_reason"]
    assert reason.startswith("waiting for 2 of 2 prerequisites: ")

    # then the bottom waits for the second branch too, and runs once both completed
    first_done, second_done = agents
    await complete(first_done, branches[first_done.agent_id])
    still = await operator.get_task(bottom)
    assert still["waiting_for"] == [branches[second_done.agent_id]["task_id"]]
    await complete(second_done, branches[second_done.agent_id])
    assign = await first_done.receive_type("task_assign")  # idle the longest
    assert assign["task_id"] == bottom


async def test_unknown_prerequisites_are_refused_by_name(operator: OperatorClient) -> None:
    known = await submit(operator, "known")
    with pytest.raises(RequestFailed) as refused:
        await submit(operator, "orphan", known, "missing-one", "missing-two")
    assert refused.value.code == "unknown_prerequisites"
    assert refused.value.message == "no such tasks: missing-one, missing-two"
    assert len(await operator.request("task_list", status="queued")) == 1


async def test_a_failed_prerequisite_sends_its_dependants_to_dead_letter_and_retry_works(
    make_agent: AgentMaker, operator: OperatorClient
) -> None:
    # given a chain root <- middle <- leaf, and a cancelled task's dependant
    agent = await make_agent("worker")
    root = await submit(operator, "root", max_retries=0)
    assign = await agent.receive_type("task_assign")
    middle = await submit(operator, "middle", root)
    leaf = await submit(operator, "leaf", middle)
    doomed = await submit(operator, "never runs", needed_capabilities=["gpu"])
    orphan = await submit(operator, "after the doomed one", doomed)

    # when the root ends in dead letter and the other prerequisite is cancelled
    assert await fail(agent, assign) == "dead_letter"
    await operator.request("task_cancel", task_id=doomed)

    # then every dependant, transitively, is in dead letter, naming its prerequisite
    for task_id, prerequisite in ((middle, root), (leaf, middle), (orphan, doomed)):
        task = await operator.get_task(task_id)
        assert task["status"] == "dead_letter"
        assert task["last_error"] == f"dependency_failed: {prerequisite}"

    # and a dependant cannot be retried before its prerequisite
    with pytest.raises(RequestFailed) as refused:
        await operator.request("task_retry", task_id=middle)
    assert refused.value.code == "prerequisite_failed"
    assert root in str(refused.value.message)

    # when the root, then its dependants are retried
    await operator.request("task_retry", task_id=root)
    assign = await agent.receive_type("task_assign")
    await operator.request("task_retry", task_id=middle)
    await operator.request("task_retry", task_id=leaf)

    # then they run in order again
    for expected in (middle, leaf):
        await complete(agent, assign)
        assign = await agent.receive_type("task_assign")
        assert assign["task_id"] == expected
    await complete(agent, assign)


async def test_dependencies_survive_sigkill_between_completion_and_assignment(
    hubs: list[HubProcess], tmp_path: Path, closing: list[Any]
) -> None:
    # given a prerequisite and a dependant submitted with the CLI, on a hub killed with
    # SIGKILL while the dependant waits
    hub = start_hub(hubs, tmp_path)
    admin = hub.make_token("ops", "admin")
    tokens = {name: hub.make_token(name) for name in ("builder", "tester")}
    first = await run_cli_async(
        "task", "submit", "build", "--capability", "build", *hub.operator_args(admin)
    )
    prerequisite = first.stdout.strip()
    second = await run_cli_async(
        "task", "submit", "test", "--capability", "test", "--depends-on", prerequisite,
        *hub.operator_args(admin),
    )  # fmt: skip
    assert second.returncode == 0, second
    dependant = second.stdout.strip()
    hub.kill()

    # when a new hub starts, the dependant still waits, and says so
    hub = start_hub(hubs, tmp_path)
    shown = await run_cli_async("task", "show", dependant, *hub.operator_args(admin))
    assert f"waiting: waiting for 1 of 1 prerequisites: {prerequisite}" in shown.stdout
    assert f"prerequisites: {prerequisite}" in shown.stdout
    shown = await run_cli_async("task", "show", prerequisite, *hub.operator_args(admin))
    assert f"dependants: {dependant}" in shown.stdout

    # when the prerequisite completes and the hub is killed before anyone can take the
    # dependant
    builder = AgentClient(hub.ws_url, "builder", tokens["builder"], capabilities=["build"],
                          heartbeat_s=None)  # fmt: skip
    closing.append(builder)
    await builder.connect()
    await complete(builder, await builder.receive_type("task_assign"))
    hub.kill()

    # then after the restart the dependant goes to the first agent that can run it
    hub = start_hub(hubs, tmp_path)
    tester = AgentClient(hub.ws_url, "tester", tokens["tester"], capabilities=["test"],
                         heartbeat_s=None)  # fmt: skip
    closing.append(tester)
    await tester.connect()
    assert (await tester.receive_type("task_assign"))["task_id"] == dependant


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A short busy timeout, so a locked database refuses a commit quickly."""
    return settings.model_copy(update={"db_busy_timeout_s": 0.2})


async def test_a_refused_completion_leaves_its_dependants_waiting(
    make_agent: AgentMaker, operator: OperatorClient, settings: Settings
) -> None:
    # given a prerequisite running, and a dependant no connected agent can run
    builder = await make_agent("builder", capabilities=["build"])
    prerequisite = await submit(operator, "build", needed_capabilities=["build"])
    assign = await builder.receive_type("task_assign")
    dependant = await submit(operator, "test", prerequisite, needed_capabilities=["test"])

    # when the database is locked by another process as the prerequisite completes
    lock = sqlite3.connect(settings.db, timeout=10, isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        frame = {"type": "task_complete", "task_id": prerequisite,
                 "generation": assign["generation"], "result": METADATA}  # fmt: skip
        await builder.send(frame)
        assert (await builder.receive_type("error"))["error"] == "store_unavailable"
    finally:
        lock.execute("ROLLBACK")
        lock.close()

    # then the dependant still waits for it, even for an agent that could run it
    tester = await make_agent("tester", capabilities=["test"])
    waiting = await operator.get_task(dependant)
    assert waiting["waiting_for"] == [prerequisite]
    assert (await operator.get_task(prerequisite))["status"] == "assigned"

    # and runs once the completion is stored
    await complete(builder, assign)
    assert (await tester.receive_type("task_assign"))["task_id"] == dependant


async def test_a_failed_chain_is_retried_whole_in_one_request(
    make_agent: AgentMaker, operator: OperatorClient
) -> None:
    # given a chain root <- middle <- leaf in dead letter because the root failed
    agent = await make_agent("worker")
    root = await submit(operator, "root", max_retries=0)
    assign = await agent.receive_type("task_assign")
    middle = await submit(operator, "middle", root)
    leaf = await submit(operator, "leaf", middle)
    assert await fail(agent, assign) == "dead_letter"

    # when all three are retried at once, dependants named first
    answer = await operator.request("task_retry_many", task_ids=[leaf, middle, root])

    # then each is back (prerequisites retried first), and they run in order
    assert answer["refused"] == []
    assert [task["task_id"] for task in answer["changed"]] == [root, middle, leaf]
    assign = await agent.receive_type("task_assign")
    for expected in (middle, leaf):
        await complete(agent, assign)
        assign = await agent.receive_type("task_assign")
        assert assign["task_id"] == expected
