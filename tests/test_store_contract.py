"""The Store contract, run against SqliteStore (a real file in tmp_path), PostgresStore (a
database of its own on the real server) and MemoryStore.

Every test here runs once per store, so the in-memory store the domain's unit tests use
cannot drift from the stores the hub runs on, nor these from each other: what staged
changes are visible to,
commit, pages and cursors, filters, prefix lookups, stats, dependencies, endpoints,
channels, tails, queue minutes, tokens, revocations and refused commits.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agentcom.errors import StoreError
from agentcom.protocol.common import Priority, TaskStatus
from agentcom.protocol.task import ExecutionMetadata, Task, parse_task_cursor
from agentcom.store import tokens
from agentcom.store.base import ChangeKey, TaskFilter
from agentcom.store.memory import MemoryStore
from agentcom.store.postgres import PostgresStore
from agentcom.store.sqlite import SqliteStore

AnyStore = SqliteStore | PostgresStore | MemoryStore


@dataclass
class Backend:
    """A store under test and the ways to act on it from outside the Store protocol."""

    store: AnyStore
    db: Path | str | None

    def save_token(self, agent_id: str, token_hash: str, role: str) -> None:
        """Write a token as the CLI does (straight to the database, for SQLite and
        PostgreSQL)."""
        if self.db is not None:
            tokens.save_token(self.db, agent_id, token_hash, role)
        else:
            assert isinstance(self.store, MemoryStore)
            self.store.save_token(agent_id, token_hash, role)

    def delete_token(self, agent_id: str) -> bool:
        """Revoke a token as the CLI does."""
        if self.db is not None:
            return tokens.delete_token(self.db, agent_id)
        assert isinstance(self.store, MemoryStore)
        return self.store.delete_token(agent_id)

    def refusing(self) -> AbstractContextManager[None]:
        """While open, the next commit is refused: another connection holds the database
        (SQLite) or the tasks table (PostgreSQL) locked against writers past the store's
        busy timeout."""
        if isinstance(self.db, Path):
            return _locked(self.db)
        if isinstance(self.db, str):
            return _tasks_locked(self.db)
        return _refused(self.store)


@contextmanager
def _tasks_locked(url: str) -> Iterator[None]:
    # EXCLUSIVE: writers wait for it, readers do not (as SQLite's in WAL mode).
    with psycopg.connect(url, autocommit=True) as lock, lock.transaction():
        lock.execute("LOCK TABLE tasks IN EXCLUSIVE MODE")
        yield


@contextmanager
def _locked(db: Path) -> Iterator[None]:
    lock = sqlite3.connect(db, timeout=10, isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        yield
        lock.execute("ROLLBACK")
    finally:
        lock.close()


@contextmanager
def _refused(store: AnyStore) -> Iterator[None]:
    assert isinstance(store, MemoryStore)
    store.refuse_next_commit("locked")
    yield


@pytest.fixture(params=["sqlite", "postgres", "memory"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each store in turn, closed at the end."""
    if request.param == "sqlite":
        db = tmp_path / "contract.db"
        opened = Backend(SqliteStore(db, busy_timeout_s=0.05), db)
    elif request.param == "postgres":
        url: str = request.getfixturevalue("pg_url")
        opened = Backend(PostgresStore(url, busy_timeout_s=0.05), url)
    else:
        opened = Backend(MemoryStore(), None)
    yield opened
    opened.store.close()


def make_task(n: int, status: TaskStatus = TaskStatus.queued, **fields: Any) -> Task:
    """A task with a recognisable id, created and updated at ``n`` unless told."""
    fields.setdefault("created_at", n)
    fields.setdefault("updated_at", n)
    fields.setdefault("priority", Priority.normal)
    return Task(task_id=f"{n:032x}", status=status, description=f"task {n}", **fields)


def ids(tasks: list[dict[str, Any]]) -> list[int]:
    """The numbers of listed tasks."""
    return [int(task["task_id"], 16) for task in tasks]


# --- staging and commit -----------------------------------------------------------


async def test_a_staged_task_is_read_at_once_by_id_and_prefix_but_listed_once_committed(
    backend: Backend,
) -> None:
    store = backend.store
    # given a task staged, not committed
    task = make_task(0xABC1)
    store.stage_task(task)

    # then it is found by id and by prefix, but not listed, restored or counted
    assert store.get_task(task.task_id) == task
    assert store.task_ids_starting_with(task.task_id[:30], 10) == [task.task_id]
    assert store.list_task_page(TaskFilter()).tasks == []
    assert store.load_unfinished_tasks() == []
    assert (await store.read_task_stats(0))["by_status"] == {}

    # when it is committed, then every read sees it, in its last staged state
    task.status = TaskStatus.assigned
    store.stage_task(task)
    await store.commit()
    assert store.get_task(task.task_id) == task
    assert ids(store.list_task_page(TaskFilter()).tasks) == [0xABC1]
    assert store.load_unfinished_tasks() == [task]
    assert (await store.read_task_stats(0))["by_status"] == {"assigned": 1}


async def test_a_committed_task_is_kept_as_staged_not_as_later_changed(backend: Backend) -> None:
    # given a task committed, then changed in memory without staging
    task = make_task(1)
    backend.store.stage_task(task)
    await backend.store.commit()
    task.status = TaskStatus.working

    # then the store still holds the state that was staged
    stored = backend.store.get_task(task.task_id)
    assert stored is not None and stored.status is TaskStatus.queued
    assert backend.store.get_task("f" * 32) is None


async def test_unfinished_tasks_are_loaded_oldest_first(backend: Backend) -> None:
    # given tasks of every kind, staged out of order
    for n, status in [(3, TaskStatus.working), (1, TaskStatus.queued), (2, TaskStatus.completed),
                      (4, TaskStatus.cancelled), (0, TaskStatus.assigned)]:  # fmt: skip
        backend.store.stage_task(make_task(n, status))
    await backend.store.commit()

    # then the unfinished ones come back, oldest first
    assert [int(t.task_id, 16) for t in backend.store.load_unfinished_tasks()] == [0, 1, 3]


async def test_a_refused_commit_discards_everything_staged_and_says_what(
    backend: Backend,
) -> None:
    store = backend.store
    refused: list[list[ChangeKey]] = []
    store.on_refused = refused.append
    kept = make_task(1)
    store.stage_task(kept)
    await store.commit()

    # when a change to it and a new task are refused
    changed = make_task(1, TaskStatus.assigned, updated_at=5)
    store.stage_task(changed)
    store.stage_task(make_task(2))
    with backend.refusing(), pytest.raises(StoreError):
        await store.commit()

    # then the store is told which, and holds only what was committed before
    assert sorted(refused[0]) == [("task", f"{1:032x}"), ("task", f"{2:032x}")]
    assert store.get_task(kept.task_id) == kept
    assert store.get_task(f"{2:032x}") is None
    await store.commit()
    assert ids(store.list_task_page(TaskFilter()).tasks) == [1]


async def test_text_with_a_nul_character_is_stored_and_found(backend: Backend) -> None:
    store = backend.store
    # given a task whose description, capability, model name and output hold a NUL
    # (PostgreSQL refuses NUL in text: that must not refuse the commit); SQLite's JSON
    # functions end a text at a NUL, so lists and filters are not asked about it here
    execution = ExecutionMetadata(model_used="qwen\x00", tokens_in=1)
    task = make_task(1, TaskStatus.completed, needed_capabilities=["g\x00"],
                     execution=execution, result={"output": "x\x00y"})  # fmt: skip
    task.description = "a\x00b"
    store.stage_task(task)
    await store.commit()

    # then it comes back whole, listed and counted
    assert store.get_task(task.task_id) == task
    [listed] = store.list_task_page(TaskFilter()).tasks
    assert listed["description"] == "a\x00b"
    assert (await store.read_task_stats(0))["totals"]["tokens_in"] == 1


# --- lists, cursors, filters, prefixes ----------------------------------------------


async def test_pages_follow_each_other_by_cursor_most_recently_updated_first(
    backend: Backend,
) -> None:
    store = backend.store
    # given seven tasks, three of them updated at the same moment
    for n, updated_at in enumerate([10, 20, 30, 30, 30, 40, 50]):
        store.stage_task(make_task(n, updated_at=updated_at))
    await store.commit()

    # when they are read three at a time
    pages, after = [], None
    while True:
        page = store.list_task_page(TaskFilter(limit=3, after=after))
        pages.append(ids(page.tasks))
        if page.next_cursor is None:
            break
        after = parse_task_cursor(page.next_cursor)

    # then each comes once, newest first, ties in the order they were first written
    assert pages == [[6, 5, 4], [3, 2, 1], [0]]


async def test_a_task_rewritten_keeps_its_place_among_equal_update_times(
    backend: Backend,
) -> None:
    store = backend.store
    for n in range(3):
        store.stage_task(make_task(n, updated_at=7))
    await store.commit()

    # when the first one is written again, at the same update time
    store.stage_task(make_task(0, TaskStatus.assigned, updated_at=7))
    await store.commit()

    # then its position is the one it was given first
    assert ids(store.list_task_page(TaskFilter()).tasks) == [2, 1, 0]


async def test_lists_filter_by_status_priority_agent_time_and_capability(
    backend: Backend,
) -> None:
    store = backend.store
    store.stage_task(make_task(1, TaskStatus.queued, priority=Priority.high))
    store.stage_task(make_task(2, TaskStatus.working, assigned_to="a", needed_capabilities=["gpu"]))
    store.stage_task(make_task(3, TaskStatus.completed, assigned_to="b"))
    store.stage_task(make_task(4, TaskStatus.queued, needed_capabilities=["gpu", "rust"]))
    await store.commit()

    def listed(**filters: Any) -> list[int]:
        return ids(store.list_task_page(TaskFilter(**filters)).tasks)

    assert listed(status="queued") == [4, 1]
    assert listed(status=("working", "completed")) == [3, 2]
    assert listed(priority="high") == [1]
    assert listed(agent="a") == [2]
    assert listed(updated_since=3) == [4, 3]
    assert listed(capability="gpu") == [4, 2]
    assert listed(capability="rust", status="queued") == [4]
    assert listed(capability="cuda") == []


async def test_listed_tasks_carry_a_summary_of_their_result_not_the_result(
    backend: Backend,
) -> None:
    store = backend.store
    output = "x" * 500
    result = {"status": "success", "output": output}
    store.stage_task(
        make_task(1, TaskStatus.completed, result=result, verification_report={"passed": True})
    )
    store.stage_task(make_task(2, TaskStatus.completed, result={"status": 3}))
    store.stage_task(make_task(3))
    await store.commit()

    listed = {int(t["task_id"], 16): t for t in store.list_task_page(TaskFilter()).tasks}

    assert "result" not in listed[1] and "verification_report" not in listed[1]
    assert listed[1]["result_summary"] == {
        "status": "success", "output_preview": "x" * 200, "output_chars": 500}  # fmt: skip
    assert listed[2]["result_summary"] == {
        "status": None, "output_preview": None, "output_chars": None}  # fmt: skip
    assert listed[3]["result_summary"] is None


async def test_prefix_lookup_is_ordered_limited_and_refuses_an_empty_prefix(
    backend: Backend,
) -> None:
    store = backend.store
    for n in (0xAB01, 0xAB02, 0xAB03, 0xAC01):
        store.stage_task(make_task(n))
    await store.commit()
    store.stage_task(make_task(0xAB00))  # staged only

    common = f"{0xAB00:032x}"[:30]
    assert store.task_ids_starting_with(common, 10) == [f"{n:032x}" for n in range(0xAB00, 0xAB04)]
    assert store.task_ids_starting_with(common, 2) == [f"{0xAB00:032x}", f"{0xAB01:032x}"]
    assert store.task_ids_starting_with("f", 10) == []
    with pytest.raises(ValueError):
        store.task_ids_starting_with("", 10)


# --- stats and dependencies -------------------------------------------------------


async def test_stats_count_statuses_and_sum_completed_executions(backend: Backend) -> None:
    store = backend.store

    def ran(n: int, agent: str, model: str | None, tokens_in: int | None, cost: float) -> Task:
        execution = ExecutionMetadata(model_used=model, tokens_in=tokens_in, tokens_out=2,
                                      estimated_cost_usd=cost, execution_ms=100)  # fmt: skip
        return make_task(n, TaskStatus.completed, assigned_to=agent, execution=execution)

    for task in [ran(10, "a", "qwen", 10, 0.5), ran(11, "a", "claude", None, 1.0),
                 ran(12, "b", None, 5, 0.25), make_task(13, TaskStatus.dead_letter),
                 make_task(1, TaskStatus.queued, priority=Priority.high),
                 make_task(2, TaskStatus.queued), make_task(3, TaskStatus.working)]:  # fmt: skip
        store.stage_task(task)
    await store.commit()

    stats = await store.read_task_stats(finished_since_ms=11)

    assert stats["by_status"] == {"completed": 3, "dead_letter": 1, "queued": 2, "working": 1}
    assert stats["queued_by_priority"] == {"high": 1, "normal": 1}
    assert stats["totals"] == {
        "tasks": 3, "tokens_in": 15, "tokens_out": 6, "estimated_cost_usd": 1.75,
        "equivalent_claude_cost_usd": 0, "execution_ms": 300.0}  # fmt: skip
    assert stats["by_model"]["qwen"]["tokens_in"] == 10
    assert stats["by_model"]["claude"]["tokens_in"] == 0
    assert stats["by_model"]["unknown"]["estimated_cost_usd"] == 0.25
    assert {agent: row["tasks"] for agent, row in stats["by_agent"].items()} == {"a": 2, "b": 1}
    assert stats["finished"] == {"completed": 2, "dead_letter": 1, "cancelled": 0}


async def test_no_completed_task_gives_zero_totals(backend: Backend) -> None:
    stats = await backend.store.read_task_stats(0)
    assert stats["totals"] == dict.fromkeys(stats["totals"], 0)
    assert stats["by_model"] == {} and stats["by_agent"] == {}


async def test_dependants_are_listed_oldest_first_and_counted(backend: Backend) -> None:
    store = backend.store
    # given three dependants of one task, one of them not stored as a task
    for n in (30, 10, 20):
        store.stage_task(make_task(n))
    store.stage_dependencies(f"{30:032x}", [f"{1:032x}"])
    store.stage_dependencies(f"{10:032x}", [f"{1:032x}", f"{2:032x}"])
    store.stage_dependencies(f"{20:032x}", [f"{1:032x}"])
    store.stage_dependencies(f"{99:032x}", [f"{1:032x}"])
    assert store.load_dependants(f"{1:032x}", 10) == ([], 0)  # nothing before the commit
    await store.commit()
    store.stage_dependencies(f"{10:032x}", [f"{1:032x}"])  # the same link again
    await store.commit()

    assert store.load_dependants(f"{1:032x}", 2) == ([f"{10:032x}", f"{20:032x}"], 4)
    assert store.load_dependants(f"{2:032x}", 10) == ([f"{10:032x}"], 1)
    assert store.load_dependants(f"{3:032x}", 10) == ([], 0)


# --- endpoints, channels, tails, minutes ------------------------------------------


async def test_endpoints_are_upserted_removed_and_loaded_in_registration_order(
    backend: Backend,
) -> None:
    store = backend.store
    store.stage_endpoint("one", "http://one:11434", "agent", "worker")
    await store.commit()
    store.stage_endpoint("two", "http://two:11434", "operator", None)
    await store.commit()
    store.stage_endpoint("one", "http://one:11435", "operator", None, approved=True)
    store.stage_endpoint("three", "http://three:11434", "agent", "w")
    store.stage_endpoint_removal("three")
    await store.commit()

    assert store.load_endpoints() == [
        ("one", "http://one:11435", "operator", None, True),
        ("two", "http://two:11434", "operator", None, False),
    ]


async def test_channels_keep_their_creation_time_subscriptions_and_trimmed_history(
    backend: Backend,
) -> None:
    store = backend.store
    store.stage_channel("ops", "first", 100, 0)
    store.stage_channel("build", None, 50, 0)
    store.stage_subscription("ops", "a", subscribed=True)
    store.stage_subscription("ops", "b", subscribed=True)
    for seq in range(1, 6):
        store.stage_channel_message({"channel": "ops", "seq": seq, "text": f"m{seq}"}, 3)
    store.stage_channel_message({"channel": "build", "seq": 1, "text": "b" * 50}, 3)
    await store.commit()
    store.stage_channel("ops", "second", 999, 5)
    store.stage_subscription("ops", "a", subscribed=False)
    await store.commit()

    channels, subscriptions, messages = store.load_channels()
    assert channels == [("build", None, 50, 0), ("ops", "second", 100, 5)]
    assert subscriptions == [("ops", "b")]
    assert [(m["channel"], m["seq"]) for m in messages] == [
        ("build", 1), ("ops", 3), ("ops", 4), ("ops", 5)]  # fmt: skip

    # with a byte budget, each channel keeps its newest messages that fit, at least one
    _, _, budgeted = store.load_channels(history_bytes=90)
    assert [(m["channel"], m["seq"]) for m in budgeted] == [("build", 1), ("ops", 4), ("ops", 5)]


async def test_execution_tails_and_queue_minutes_are_replaced_and_trimmed(
    backend: Backend,
) -> None:
    store = backend.store
    store.stage_execution_tail("t1", [{"timestamp": 5, "line": "a"}])
    store.stage_execution_tail("t2", [{"timestamp": 3, "line": "b"}])
    store.stage_execution_tail("t3", [{"timestamp": 1}])
    store.stage_queue_minutes([(1, 4, 0), (2, 5, 1), (3, 6, 2)], oldest=2)
    await store.commit()
    store.stage_execution_tail("t2", [{"timestamp": 9, "line": "c"}])
    store.stage_execution_tail("t3", None)
    store.stage_queue_minutes([(3, 7, 3)], oldest=3)
    await store.commit()

    assert store.load_execution_tails() == [
        ("t1", [{"timestamp": 5, "line": "a"}]),
        ("t2", [{"timestamp": 9, "line": "c"}]),
    ]
    assert store.load_queue_history() == [(3, 7, 3)]


# --- tokens and revocations -------------------------------------------------------


def test_tokens_are_found_by_hash_and_revoked_when_replaced_or_deleted(backend: Backend) -> None:
    store = backend.store
    assert store.last_revocation() == 0
    backend.save_token("worker", "hash-1", "agent")
    backend.save_token("ops", "hash-2", "admin")

    found = store.find_token("hash-1")
    assert found is not None and (found.agent_id, found.role) == ("worker", "agent")
    assert store.has_token("worker") and store.has_token("worker", role="agent")
    assert not store.has_token("worker", role="admin") and not store.has_token("nobody")

    # when the worker's token is replaced, the operator's role changes, and the worker's
    # new token is deleted
    backend.save_token("worker", "hash-3", "agent")
    backend.save_token("ops", "hash-2", "admin")  # unchanged: no revocation
    backend.save_token("ops", "hash-2", "agent")
    assert backend.delete_token("worker") is True
    assert backend.delete_token("worker") is False

    # then each token that stopped being valid is a revocation, in order
    assert store.revocations_since(0) == [
        (1, "worker", "hash-1"), (2, "ops", "hash-2"), (3, "worker", "hash-3")]  # fmt: skip
    assert store.revocations_since(2) == [(3, "worker", "hash-3")]
    assert store.last_revocation() == 3
    assert store.find_token("hash-3") is None
