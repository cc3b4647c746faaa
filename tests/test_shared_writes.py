"""Conditional task writes of PostgreSQL stores shared by several hub nodes: a task is
written only where its row is still in the state the writing node read or last wrote,
and the node hears which of its writes lost (the rest of the transaction commits)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from agentcom.protocol.common import Priority, TaskStatus
from agentcom.protocol.task import Task
from agentcom.store.postgres import PostgresStore


def _task(task_id: str) -> Task:
    return Task(task_id=task_id, status=TaskStatus.queued, priority=Priority.normal,
                description="d", created_at=1, updated_at=1)  # fmt: skip


@pytest.fixture
def nodes(pg_url: str) -> Iterator[tuple[PostgresStore, PostgresStore, list[list[str]]]]:
    first, second = PostgresStore(pg_url, shared=True), PostgresStore(pg_url, shared=True)
    lost: list[list[str]] = [[], []]
    first.on_conflict = lost[0].extend
    second.on_conflict = lost[1].extend
    try:
        yield first, second, lost
    finally:
        first.close()
        second.close()


def _assign(task: Task, agent_id: str) -> None:
    task.status = TaskStatus.assigned
    task.generation += 1
    task.assigned_to = agent_id


async def test_of_two_nodes_assigning_one_task_only_the_first_write_lands(
    nodes: tuple[PostgresStore, PostgresStore, list[list[str]]],
) -> None:
    first, second, lost = nodes
    first.stage_task(_task("t1"))
    await first.commit()
    mine, theirs = first.get_task("t1"), second.get_task("t1")
    assert mine is not None and theirs is not None
    _assign(theirs, "agent-b")
    second.stage_task(theirs)
    await second.commit()
    _assign(mine, "agent-a")
    first.stage_task(mine)
    first.stage_task(_task("t2"))  # the rest of the same transaction commits
    await first.commit()
    assert lost == [["t1"], []]
    stored = first.get_task("t1")
    assert stored is not None and stored.assigned_to == "agent-b" and stored.generation == 1
    assert first.get_task("t2") is not None


async def test_a_node_writes_again_from_the_state_it_last_wrote(
    nodes: tuple[PostgresStore, PostgresStore, list[list[str]]],
) -> None:
    first, second, lost = nodes
    task = _task("t1")
    first.stage_task(task)
    await first.commit()
    for agent_id in ("a", "b", "c"):  # each write fences on the one before it
        _assign(task, agent_id)
        first.stage_task(task)
        await first.commit()
    task.status = TaskStatus.completed
    first.stage_task(task)
    await first.commit()
    assert lost == [[], []]
    stored = second.get_task("t1")
    assert stored is not None and stored.status is TaskStatus.completed
    assert stored.generation == 3


async def test_a_task_id_already_stored_is_not_inserted_over(
    nodes: tuple[PostgresStore, PostgresStore, list[list[str]]],
) -> None:
    first, second, lost = nodes
    first.stage_task(_task("t1"))
    await first.commit()
    copy = _task("t1")
    copy.description = "another"
    second.stage_task(copy)
    await second.commit()
    assert lost == [[], ["t1"]]
    stored = first.get_task("t1")
    assert stored is not None and stored.description == "d"


async def test_concurrent_claims_of_many_tasks_each_land_once(
    nodes: tuple[PostgresStore, PostgresStore, list[list[str]]],
) -> None:
    first, second, lost = nodes
    for index in range(200):
        first.stage_task(_task(f"t{index:03}"))
    await first.commit()
    mine = first.load_unfinished_tasks()
    theirs = second.load_unfinished_tasks()
    for task in mine:
        _assign(task, "a")
        first.stage_task(task)
    for task in theirs:
        _assign(task, "b")
        second.stage_task(task)
    await asyncio.gather(first.commit(), second.commit())
    won_by_first = {task.task_id for task in mine} - set(lost[0])
    won_by_second = {task.task_id for task in theirs} - set(lost[1])
    assert won_by_first.isdisjoint(won_by_second)
    assert len(won_by_first | won_by_second) == 200
    holders = {task.task_id: task.assigned_to for task in first.load_unfinished_tasks()}
    assert {task_id for task_id, holder in holders.items() if holder == "a"} == won_by_first


async def test_nodes_writing_the_same_tasks_in_opposite_orders_never_refuse_a_commit(
    nodes: tuple[PostgresStore, PostgresStore, list[list[str]]],
) -> None:
    first, second, lost = nodes
    for index in range(100):
        first.stage_task(_task(f"t{index:03}"))
    await first.commit()
    for _ in range(5):
        mine, theirs = first.load_unfinished_tasks(), second.load_unfinished_tasks()
        for task in mine:
            task.priority = Priority.high
            first.stage_task(task)
        for task in reversed(theirs):
            task.priority = Priority.low
            second.stage_task(task)
        # neither commit raises: rows are locked in one order, and a transaction the
        # database aborts to break a deadlock is written again
        await asyncio.gather(first.commit(), second.commit())
    assert lost == [[], []]  # same status, generation and owner: no write lost
