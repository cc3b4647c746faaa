"""The SQLite store: WAL, group commit, restart, typed execution metadata, tokens.

Everything runs on real database files in tmp_path, read back through separate
sqlite3 connections where the point is what another reader of the file sees.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import TokenMaker

from agentcom.client import AgentClient, OperatorClient
from agentcom.config import Settings
from agentcom.hub.auth import Authenticator, Role, hash_token, new_token
from agentcom.hub.clock import ManualClock
from agentcom.hub.hub import Hub
from agentcom.protocol import agent as frames
from agentcom.protocol.common import Priority, TaskStatus, Tier
from agentcom.protocol.task import Task, TaskSubmission
from agentcom.server.app import HubServer
from agentcom.store.sqlite import SqliteStore
from agentcom.store.tokens import delete_token, list_tokens, save_token

GRACE_MS = 60_000


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A database file that does not exist yet."""
    return tmp_path / "store.db"


@pytest.fixture
def store(db: Path) -> Iterator[SqliteStore]:
    """A store on ``db``, closed at the end."""
    opened = SqliteStore(db)
    yield opened
    opened.close()


def make_task(n: int, status: TaskStatus = TaskStatus.queued) -> Task:
    """A task with a recognisable id."""
    return Task(task_id=f"{n:032x}", status=status, priority=Priority.normal,
                description=f"task {n}", created_at=n, updated_at=n)  # fmt: skip


def read_rows(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows as a second, independent connection sees them."""
    connection = sqlite3.connect(db)
    try:
        return connection.execute(sql, params).fetchall()
    finally:
        connection.close()


def stored_ids(db: Path) -> set[str]:
    """Task ids visible to another connection."""
    return {task_id for (task_id,) in read_rows(db, "SELECT task_id FROM tasks")}


# --- durability and group commit --------------------------------------------------


async def test_database_file_is_in_wal_mode(db: Path, store: SqliteStore) -> None:
    # given a store that wrote something
    store.stage_task(make_task(1))
    await store.commit()

    # then another connection finds the file in WAL mode
    assert read_rows(db, "PRAGMA journal_mode") == [("wal",)]
    assert db.with_name(db.name + "-wal").exists()


async def test_commit_makes_staged_changes_visible_to_another_connection(
    db: Path, store: SqliteStore
) -> None:
    # given a staged change
    store.stage_task(make_task(1))

    # then another connection does not see it before the commit
    assert stored_ids(db) == set()

    # when it is committed, then it does
    await store.commit()
    assert stored_ids(db) == {make_task(1).task_id}


async def test_changes_staged_before_one_commit_are_written_in_one_transaction(
    db: Path, store: SqliteStore
) -> None:
    # given many changes staged, including several states of one task
    for n in range(500):
        store.stage_task(make_task(n))
    store.stage_task(make_task(7, TaskStatus.cancelled))
    before = store.commits

    # when one commit runs
    await store.commit()

    # then one transaction wrote them all, the latest state of each task winning
    assert store.commits == before + 1
    assert len(stored_ids(db)) == 500
    assert read_rows(db, "SELECT status FROM tasks WHERE task_id = ?", f"{7:032x}") == [
        ("cancelled",)]  # fmt: skip


async def test_concurrent_committers_share_transactions(db: Path, store: SqliteStore) -> None:
    # given 200 coroutines that each stage a change and wait for it to be durable,
    # arriving over several turns of the event loop while writes are in flight
    before = store.commits
    missing: list[str] = []

    async def stage_and_commit(n: int) -> None:
        for _ in range(n % 7):
            await asyncio.sleep(0)
        task = make_task(n)
        store.stage_task(task)
        await store.commit()
        if task.task_id not in stored_ids(db):
            missing.append(task.task_id)

    # when they all run
    await asyncio.wait_for(asyncio.gather(*(stage_and_commit(n) for n in range(200))), 30)

    # then each returned only once its own change was durable
    assert missing == []
    assert len(stored_ids(db)) == 200
    # and they shared a handful of transactions
    assert 1 <= store.commits - before <= 20


async def test_change_staged_while_a_commit_is_writing_is_not_lost(
    db: Path, store: SqliteStore
) -> None:
    # given a commit whose write is held up by another writer's lock
    first, other = make_task(1), make_task(2)
    store.stage_task(first)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    writing = asyncio.create_task(store.commit())
    for _ in range(5):
        await asyncio.sleep(0)  # the writer takes what is staged and waits for the lock
    before = store.commits

    # when a newer state of that task and another task are staged meanwhile
    first.status = TaskStatus.working
    store.stage_task(first)
    store.stage_task(other)
    later = asyncio.create_task(store.commit())
    blocker.execute("ROLLBACK")
    blocker.close()

    # then the first commit completes, and the later one writes what came after it
    await asyncio.wait_for(writing, 10)
    await asyncio.wait_for(later, 10)
    assert store.commits == before + 2  # the later changes really missed the first write
    rows = dict(read_rows(db, "SELECT task_id, status FROM tasks"))
    assert rows == {first.task_id: "working", other.task_id: "queued"}
    stored = store.get_task(first.task_id)
    assert stored is not None and stored.status is TaskStatus.working


async def test_staged_change_without_a_new_commit_call_is_written_by_the_next_commit(
    db: Path, store: SqliteStore
) -> None:
    # given a commit in flight and a change staged behind it by nobody who waits
    store.stage_task(make_task(1))
    writing = asyncio.create_task(store.commit())
    for _ in range(5):
        await asyncio.sleep(0)
    store.stage_task(make_task(2))
    await asyncio.wait_for(writing, 10)

    # when someone else commits later
    store.stage_task(make_task(3))
    await store.commit()

    # then nothing staged was lost
    assert stored_ids(db) == {make_task(n).task_id for n in (1, 2, 3)}


# --- restart -----------------------------------------------------------------------


@asynccontextmanager
async def running_hub(settings: Settings, clock: ManualClock) -> AsyncIterator[HubServer]:
    """A hub on ``settings.db`` that is stopped on exit."""
    server = HubServer(settings, clock=clock, run_sweeps=False)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


PRESENT = frozenset({"waiting_reason", "held_for", "last_progress_at"})
"""Task keys about the present, not stored: why it waits, whom it is held for, and the
no-progress clock (which starts again when a hub restarts)."""


def stored_state(task: dict[str, Any]) -> dict[str, Any]:
    """A task object without the keys of :data:`PRESENT`."""
    return {key: value for key, value in task.items() if key not in PRESENT}


def agent_client(server: HubServer, agent_id: str, token: str) -> AgentClient:
    """An agent client for ``server`` (not connected yet)."""
    return AgentClient(f"ws://127.0.0.1:{server.port}/ws", agent_id, token, heartbeat_s=None)


def operator_client(server: HubServer, token: str) -> OperatorClient:
    """An operator client for ``server`` (not connected yet)."""
    return OperatorClient(f"http://127.0.0.1:{server.port}", token)


async def test_restart_restores_queued_assigned_and_completed_tasks_exactly(
    settings: Settings, clock: ManualClock, make_token: TokenMaker
) -> None:
    agent_token, admin_token = make_token("worker"), make_token("ops", "admin")

    # given a hub with one completed task, one the agent is working on, and one queued
    async with running_hub(settings, clock) as server:
        agent = agent_client(server, "worker", agent_token)
        await agent.connect()
        async with operator_client(server, admin_token) as operator:
            done = await operator.submit("done", complexity_tier="complex")
            assign = await agent.receive_type("task_assign")
            await agent.send({"type": "task_complete", "task_id": done["task_id"],
                              "generation": assign["generation"],
                              "result": {"status": "success", "model_used": "m",
                                         "tokens_in": 5}})  # fmt: skip
            assert (await agent.receive_type("task_ack"))["status"] == "complete"
            held = await operator.submit("held", complexity_tier="complex", priority="high")
            held_assign = await agent.receive_type("task_assign")
            await agent.send({"type": "task_accepted", "task_id": held["task_id"]})
            assert (await agent.receive_type("task_ack"))["status"] == "accepted"
            queued = await operator.submit("queued", complexity_tier="complex")
            ids = [done["task_id"], held["task_id"], queued["task_id"]]
            before = [await operator.get_task(task_id) for task_id in ids]
        clock.advance(1_000)
    # (the hub stopped while the agent was still connected)

    # when a new hub starts on the same file
    async with (
        running_hub(settings, clock) as server,
        operator_client(server, admin_token) as operator,
    ):
        after = [await operator.get_task(task_id) for task_id in ids]
        # then every task is back exactly as it was
        assert [stored_state(task) for task in after] == [stored_state(task) for task in before]
        assert [task["status"] for task in after] == ["completed", "working", "queued"]
        # and the working one is held for its agent, its no-progress clock restarted
        assert after[1]["last_progress_at"] == clock.now_ms()
        assert after[1]["held_for"]["since"] == clock.now_ms()

        # when the agent reconnects within its grace period
        clock.advance(GRACE_MS // 2)
        again = agent_client(server, "worker", agent_token)
        await again.connect()
        try:
            await server.sweep()
            # then it still holds its task, so it is not offered the queued one
            agents = await operator.request("agents_list")
            assert [(a["agent_id"], a["state"], a["current_task"]) for a in agents] == [
                    ("worker", "working", held["task_id"])]  # fmt: skip
            # and it can complete that task with its generation
            await again.send({"type": "task_complete", "task_id": held["task_id"],
                                  "generation": held_assign["generation"]})  # fmt: skip
            assert (await again.receive_type("task_ack"))["status"] == "complete"
            next_assign = await again.receive_type("task_assign")
            assert next_assign["task_id"] == queued["task_id"]
        finally:
            await again.close()


async def test_restored_task_is_requeued_when_its_agent_does_not_come_back(
    settings: Settings, clock: ManualClock, make_token: TokenMaker
) -> None:
    agent_token, admin_token = make_token("worker"), make_token("ops", "admin")

    # given a hub stopped while an agent held a task
    async with running_hub(settings, clock) as server:
        agent = agent_client(server, "worker", agent_token)
        await agent.connect()
        async with operator_client(server, admin_token) as operator:
            held = await operator.submit("held", complexity_tier="complex")
        first = await agent.receive_type("task_assign")
        await agent.send({"type": "task_accepted", "task_id": held["task_id"]})
        await agent.receive_type("task_ack")

    # when a new hub starts and the agent stays away past its grace period
    async with (
        running_hub(settings, clock) as server,
        operator_client(server, admin_token) as operator,
    ):
        clock.advance(GRACE_MS - 1)
        await server.sweep()
        assert (await operator.get_task(held["task_id"]))["assigned_to"] == "worker"
        clock.advance(1)
        await server.sweep()

        # then the task is queued again, and the next agent gets a new generation
        requeued = await operator.get_task(held["task_id"])
        assert (requeued["status"], requeued["assigned_to"]) == ("queued", None)
        other = agent_client(server, "other", make_token("other"))
        await other.connect()
        try:
            assign = await other.receive_type("task_assign")
            assert assign["generation"] == first["generation"] + 1
        finally:
            await other.close()


async def test_restart_keeps_first_in_first_out_order_within_a_priority(
    settings: Settings, clock: ManualClock, make_token: TokenMaker
) -> None:
    admin_token = make_token("ops", "admin")

    # given many queued tasks of one priority, submitted within the same millisecond
    async with (
        running_hub(settings, clock) as server,
        operator_client(server, admin_token) as operator,
    ):
        submitted = [
                (await operator.submit(f"task {n}", complexity_tier="complex",
                                       needed_capabilities=["gpu"]))["task_id"]
                for n in range(12)
            ]  # fmt: skip

    # when the hub restarts and a capable agent works through the queue
    async with running_hub(settings, clock) as server:
        worker = agent_client(server, "worker", make_token("worker"))
        worker.capabilities = ["gpu"]
        await worker.connect()
        served = []
        try:
            for _ in submitted:
                assign = await worker.receive_type("task_assign")
                served.append(assign["task_id"])
                await worker.send({"type": "task_complete", "task_id": assign["task_id"],
                                   "generation": assign["generation"]})  # fmt: skip
        finally:
            await worker.close()

    # then they are served in the order they were submitted
    assert served == submitted


# --- execution metadata ------------------------------------------------------------


def identify(hub: Hub, agent_id: str, capabilities: list[str]) -> None:
    """An agent identifies."""
    hub.identify(frames.Identify.model_validate(
        {"type": "identify", "agent_id": agent_id, "token": "checked-by-the-edge",
         "capabilities": capabilities}))  # fmt: skip


def run_task(hub: Hub, agent_id: str, result: dict[str, Any] | None) -> str:
    """Submit a task only ``agent_id`` can run, and complete it with ``result``."""
    submission = TaskSubmission(description=f"for {agent_id}", complexity_tier=Tier.complex,
                                needed_capabilities=[agent_id])  # fmt: skip
    task = hub.task_ops.submit(submission)
    assert task.assigned_to == agent_id
    frame = {"type": "task_complete", "task_id": task.task_id, "generation": task.generation}
    if result is not None:
        frame["result"] = result
    hub.task_frames.task_complete(agent_id, frames.TaskComplete.model_validate(frame))
    return task.task_id


@pytest.fixture
def domain(db: Path, store: SqliteStore, clock: ManualClock) -> Hub:
    """A hub over ``store`` with two agents, each the only one able to run its own tasks."""
    hub = Hub(store, clock, Settings(db=db))
    identify(hub, "alpha", ["alpha"])
    identify(hub, "beta", ["beta"])
    return hub


async def test_execution_metadata_is_stored_in_typed_columns(db: Path, domain: Hub) -> None:
    # given tasks completed with full, partial and no execution metadata
    full = run_task(domain, "alpha", {
        "status": "success", "output": "ok", "model_used": "qwen2.5-coder:7b", "tokens_in": 120,
        "tokens_out": 48, "estimated_cost_usd": 0, "equivalent_claude_cost_usd": 0.00108,
        "execution_ms": 1534})  # fmt: skip
    partial = run_task(domain, "alpha", {"status": "success", "model_used": "m", "tokens_in": None})
    bare = run_task(domain, "beta", None)

    # when the changes are committed
    await domain.store.commit()

    # then another reader finds each figure in its own typed column
    columns = ("model_used", "tokens_in", "tokens_out", "estimated_cost_usd",
               "equivalent_claude_cost_usd", "execution_ms")  # fmt: skip
    select = ", ".join(f"{column}, typeof({column})" for column in columns)
    rows = {task_id: row for task_id, *row in read_rows(db, f"SELECT task_id, {select} FROM tasks")}
    assert rows[full] == ["qwen2.5-coder:7b", "text", 120, "integer", 48, "integer",
                          0.0, "real", 0.00108, "real", 1534.0, "real"]  # fmt: skip
    assert rows[partial] == ["m", "text"] + [None, "null"] * 5
    assert rows[bare] == [None, "null"] * 6


async def test_task_stats_aggregate_per_model_and_per_agent(db: Path, domain: Hub) -> None:
    # given completions on two agents with two models, and a failed attempt (to be retried)
    def result(model: str, tokens_in: int, cost: float, ms: int) -> dict[str, Any]:
        return {"status": "success", "model_used": model, "tokens_in": tokens_in,
                "tokens_out": tokens_in // 2, "estimated_cost_usd": cost,
                "equivalent_claude_cost_usd": cost * 10, "execution_ms": ms}  # fmt: skip

    run_task(domain, "alpha", result("qwen", 100, 0.0, 1000))
    run_task(domain, "alpha", result("claude-sonnet-4.5", 40, 0.25, 3000))
    run_task(domain, "beta", result("qwen", 10, 0.0, 500))
    run_task(domain, "beta", {"status": "failed", "model_used": "qwen", "tokens_in": 999})
    await domain.store.commit()

    # when the store aggregates
    stats = await domain.store.read_task_stats(0)

    # then totals are per model and per agent, over completed tasks only
    assert stats["by_status"] == {"completed": 3, "assigned": 1}
    qwen = stats["by_model"]["qwen"]
    assert (qwen["tasks"], qwen["tokens_in"], qwen["tokens_out"], qwen["execution_ms"]) == (
        2, 110, 55, 1500)  # fmt: skip
    claude = stats["by_model"]["claude-sonnet-4.5"]
    assert claude["tasks"] == 1
    assert claude["estimated_cost_usd"] == pytest.approx(0.25)
    assert claude["equivalent_claude_cost_usd"] == pytest.approx(2.5)
    alpha, beta = stats["by_agent"]["alpha"], stats["by_agent"]["beta"]
    assert (alpha["tasks"], alpha["tokens_in"], alpha["execution_ms"]) == (2, 140, 4000)
    assert (beta["tasks"], beta["tokens_in"], beta["execution_ms"]) == (1, 10, 500)
    assert stats["totals"]["tasks"] == 3
    assert stats["totals"]["tokens_in"] == 150
    assert stats["totals"]["estimated_cost_usd"] == pytest.approx(0.25)


# --- tokens ------------------------------------------------------------------------


def test_tokens_are_saved_listed_replaced_and_deleted(db: Path, store: SqliteStore) -> None:
    # given tokens for an agent and an operator
    worker, ops = new_token(), new_token()
    save_token(db, "worker", hash_token(worker), "agent")
    save_token(db, "ops", hash_token(ops), "admin")
    auth = Authenticator(store)

    # then both are listed by agent id, with their roles and hashes, and are accepted
    assert [(r.agent_id, r.role, r.token_hash) for r in list_tokens(db)] == [
        ("ops", "admin", hash_token(ops)), ("worker", "agent", hash_token(worker))]  # fmt: skip
    assert auth.role_of(worker) == ("worker", Role.agent)
    assert auth.role_of(ops) == ("ops", Role.admin)
    assert auth.role_of(worker + "x") is None

    # when the worker gets a new token, then the old one stops working
    replacement = new_token()
    save_token(db, "worker", hash_token(replacement), "agent")
    assert auth.role_of(worker) is None
    assert auth.role_of(replacement) == ("worker", Role.agent)

    # when it is deleted, then it is gone and a second delete says so
    assert delete_token(db, "worker") is True
    assert delete_token(db, "worker") is False
    assert [record.agent_id for record in list_tokens(db)] == ["ops"]
    assert auth.role_of(replacement) is None


def test_raw_tokens_never_reach_the_database_file(db: Path, store: SqliteStore) -> None:
    # given tokens saved the way the CLI saves them
    raw = [new_token() for _ in range(3)]
    for n, token in enumerate(raw):
        save_token(db, f"agent-{n}", hash_token(token), "agent")

    # then no file of the database holds a raw token, while the hashes are there
    files = b"".join(path.read_bytes() for path in db.parent.glob(db.name + "*"))
    assert all(hash_token(token).encode() in files for token in raw)
    assert not any(token.encode() in files for token in raw)
    assert {record.token_hash for record in list_tokens(db)}.isdisjoint(raw)


async def test_task_ids_are_found_by_prefix_with_an_index_range_not_a_scan(
    store: SqliteStore,
) -> None:
    # given a thousand stored tasks and one staged but not written yet
    for n in range(1000):
        store.stage_task(make_task(n * 7919, TaskStatus.completed))
    await store.commit()
    store.stage_task(make_task(0xABC0001))
    statements: list[str] = []
    store._reader.set_trace_callback(statements.append)

    # when ids are looked up by prefix
    unwritten = store.task_ids_starting_with(f"{0xABC0001:032x}"[:28], 5)
    several = store.task_ids_starting_with("0" * 28, 5)

    # then the matches come back in order, including the unwritten task
    assert unwritten == [f"{0xABC0001:032x}"]
    assert several == [f"{n * 7919:032x}" for n in range(5)]  # the first five of nine
    # and each lookup reads a range of the primary key
    store._reader.set_trace_callback(None)
    lookups = [sql for sql in statements if "task_id >=" in sql]
    assert len(lookups) == 2
    for sql in lookups:
        plan = " ".join(row[3] for row in store._reader.execute(f"EXPLAIN QUERY PLAN {sql}"))
        assert "SEARCH tasks USING" in plan and "INDEX" in plan, plan
        assert "SCAN" not in plan, plan
