"""The task queue and scheduler without sockets: a real Hub on the in-memory store.

The hub is driven with the same typed frames the server decodes (PROTOCOL.md sections 1
and 2) and inspected through its outbox: the pushes it would send to agents and the
events it would publish (section 3). Every timeout is driven by the ManualClock. The
store is the MemoryStore, which ``test_store_contract.py`` holds to the SQLite store's
behaviour; what the database itself does is tested in ``test_store.py``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any

import pytest

from agentcom.config import Settings
from agentcom.errors import HubError, StoreError
from agentcom.hub.clock import ManualClock
from agentcom.hub.hub import Effects, Hub
from agentcom.protocol import agent as frames
from agentcom.protocol.common import Priority, TaskStatus, Tier
from agentcom.protocol.operator import BulkChange, RoutePreview, StatsReply
from agentcom.protocol.outbound import TaskAck, TaskAssign, TaskCancelled
from agentcom.protocol.task import Task, TaskSubmission
from agentcom.store.memory import MemoryStore

# Event names of PROTOCOL.md section 3.
PROTOCOL_EVENTS = frozenset(
    {"task_submitted", "task_assigned", "task_accepted", "task_progress", "task_completed",
     "task_failed", "task_retried", "task_dead_letter", "task_requeued", "task_reclaimed",
     "execution_progress"}
)  # fmt: skip

ACCEPT_TIMEOUT_MS = 60_000
RECLAIM_AFTER_MS = 300_000
GRACE_MS = 60_000

DomainMaker = Callable[..., Hub]


@pytest.fixture
def make_domain(clock: ManualClock) -> DomainMaker:
    """Build hubs, each on a store of its own."""

    def make(**overrides: Any) -> Hub:
        return Hub(MemoryStore(), clock, Settings(**overrides))

    return make


@pytest.fixture
def domain(make_domain: DomainMaker) -> Hub:
    """A hub with default settings."""
    return make_domain()


# --- helpers -----------------------------------------------------------------------


def identify(hub: Hub, agent_id: str, capabilities: list[str] | None = None) -> None:
    """The agent identifies (its token already checked by the edge)."""
    frame = {"type": "identify", "agent_id": agent_id, "token": "checked-by-the-edge",
             "status": "idle", "capabilities": capabilities or []}  # fmt: skip
    hub.identify(frames.Identify.model_validate(frame))


def submit(hub: Hub, description: str, priority: Priority = Priority.normal, **fields: Any) -> Task:
    """Submit a task; an explicit tier keeps routing out of the way of these tests."""
    fields.setdefault("complexity_tier", Tier.complex)
    return hub.task_ops.submit(TaskSubmission(description=description, priority=priority, **fields))


def assignments(outbox: Effects, agent_id: str | None = None) -> list[TaskAssign]:
    """``task_assign`` pushes in the outbox, optionally only those to ``agent_id``."""
    return [
        frame
        for target, frame in outbox.pushes
        if isinstance(frame, TaskAssign) and (agent_id is None or target == agent_id)
    ]


def task_events(outbox: Effects, task_id: str | None = None) -> list[dict[str, Any]]:
    """Events published on topic ``tasks``, optionally only those of one task."""
    return [
        event
        for topic, event in outbox.events
        if topic == "tasks" and (task_id is None or event["task_id"] == task_id)
    ]


def event_names(outbox: Effects, task_id: str | None = None) -> list[str]:
    """Names of the task events in the outbox."""
    return [event["event"] for event in task_events(outbox, task_id)]


def only_assignment(hub: Hub, agent_id: str) -> TaskAssign:
    """The single ``task_assign`` the hub just pushed to ``agent_id``."""
    pushed = assignments(hub.take_outbox(), agent_id)
    assert len(pushed) == 1, pushed
    return pushed[0]


def accept(hub: Hub, agent_id: str, task_id: str) -> TaskAck:
    """The agent accepts its task."""
    return hub.task_frames.task_accepted(agent_id, task_id)


def complete(hub: Hub, agent_id: str, task_id: str, generation: int, **fields: Any) -> TaskAck:
    """The agent reports completion."""
    frame = frames.TaskComplete.model_validate(
        {"type": "task_complete", "task_id": task_id, "generation": generation, **fields}
    )
    return hub.task_frames.task_complete(agent_id, frame)


def fail(hub: Hub, agent_id: str, task_id: str, generation: int, reason: str = "boom") -> TaskAck:
    """The agent reports a failure the way real sidecars do (with ``reason``)."""
    frame = frames.TaskFailed.model_validate(
        {"type": "task_failed", "task_id": task_id, "generation": generation, "reason": reason}
    )
    return hub.task_frames.task_failed(agent_id, frame)


def progress(hub: Hub, agent_id: str, task_id: str, **fields: Any) -> None:
    """The agent reports progress."""
    hub.task_frames.task_progress(
        agent_id,
        frames.TaskProgress.model_validate({"type": "task_progress", "task_id": task_id, **fields}),
    )


def run_to_completion(hub: Hub, agent_id: str, count: int) -> list[str]:
    """Complete ``count`` tasks one after another on one agent; their descriptions in order."""
    order = []
    for _ in range(count):
        assign = only_assignment(hub, agent_id)
        order.append(assign.description)
        complete(hub, agent_id, assign.task_id, assign.generation)
    return order


# --- order -------------------------------------------------------------------------


def test_priorities_are_served_urgent_then_high_then_normal_then_low(domain: Hub) -> None:
    # given one task of each priority, queued lowest first, and no agent
    for priority in (Priority.low, Priority.normal, Priority.high, Priority.urgent):
        submit(domain, priority.value, priority)
    assert assignments(domain.take_outbox()) == []

    # when one agent arrives and works through the queue
    identify(domain, "worker")
    order = run_to_completion(domain, "worker", 4)

    # then the highest priority is always served first
    assert order == ["urgent", "high", "normal", "low"]


def test_tasks_of_one_priority_are_served_first_in_first_out(domain: Hub) -> None:
    # given interleaved priorities
    for description, priority in [
        ("normal-1", Priority.normal), ("low-1", Priority.low), ("urgent-1", Priority.urgent),
        ("normal-2", Priority.normal), ("high-1", Priority.high), ("urgent-2", Priority.urgent),
        ("low-2", Priority.low), ("normal-3", Priority.normal),
    ]:  # fmt: skip
        submit(domain, description, priority)

    # when one agent works through the queue
    identify(domain, "worker")
    order = run_to_completion(domain, "worker", 8)

    # then within one priority the oldest comes first
    assert order == ["urgent-1", "urgent-2", "high-1", "normal-1", "normal-2", "normal-3",
                     "low-1", "low-2"]  # fmt: skip


def test_first_in_first_out_holds_across_capability_groups(domain: Hub) -> None:
    # given same-priority tasks needing different capabilities, in arrival order
    submit(domain, "plain-1")
    submit(domain, "gpu-1", needed_capabilities=["gpu"])
    submit(domain, "plain-2")
    submit(domain, "gpu-2", needed_capabilities=["gpu"])

    # when an agent able to run all of them works through the queue
    identify(domain, "big", ["gpu", "docker"])
    order = run_to_completion(domain, "big", 4)

    # then arrival order wins, whatever each task needs
    assert order == ["plain-1", "gpu-1", "plain-2", "gpu-2"]


# --- capabilities ------------------------------------------------------------------


def test_task_needing_gpu_goes_only_to_an_agent_with_gpu(domain: Hub) -> None:
    # given a task that needs a GPU
    task = submit(domain, "train", needed_capabilities=["gpu"])

    # when an agent without a GPU arrives
    identify(domain, "cpu-only", ["docker"])

    # then it is not offered the task
    assert assignments(domain.take_outbox()) == []
    assert domain.find_task(task.task_id).status is TaskStatus.queued

    # when an agent with a GPU arrives, then it gets the task
    identify(domain, "gpu-box", ["gpu"])
    assign = only_assignment(domain, "gpu-box")
    assert assign.task_id == task.task_id
    assert domain.find_task(task.task_id).assigned_to == "gpu-box"


def test_task_needing_nothing_goes_to_any_agent(domain: Hub) -> None:
    # given two tasks needing nothing
    first = submit(domain, "anything-1")
    second = submit(domain, "anything-2")

    # when an agent with capabilities and one without arrive
    identify(domain, "specialist", ["gpu"])
    identify(domain, "generalist")
    pushed = {frame.task_id: target for target, frame in domain.take_outbox().pushes
              if isinstance(frame, TaskAssign)}  # fmt: skip

    # then both are given work
    assert pushed == {first.task_id: "specialist", second.task_id: "generalist"}


def test_unmatched_task_does_not_block_later_tasks(domain: Hub) -> None:
    # given an urgent task nobody can run, then an ordinary one
    stuck = submit(domain, "needs a quantum computer", Priority.urgent,
                   needed_capabilities=["qpu"])  # fmt: skip
    runnable = submit(domain, "ordinary", Priority.low)

    # when an ordinary agent arrives
    identify(domain, "worker", ["gpu"])

    # then it gets the later task, and the unmatched one keeps waiting
    assert only_assignment(domain, "worker").task_id == runnable.task_id
    assert domain.find_task(stuck.task_id).status is TaskStatus.queued


# --- generation and timeouts -------------------------------------------------------


def test_every_assignment_increments_the_generation(domain: Hub) -> None:
    # given a task that keeps failing on one agent
    identify(domain, "worker")
    task = submit(domain, "flaky", max_retries=4)
    generations = []

    # when it is assigned again after each failure
    for _ in range(4):
        assign = only_assignment(domain, "worker")
        generations.append(assign.generation)
        assert domain.find_task(task.task_id).generation == assign.generation
        fail(domain, "worker", task.task_id, assign.generation)
    generations.append(only_assignment(domain, "worker").generation)

    # then each assignment carries the next generation
    assert generations == [1, 2, 3, 4, 5]


def test_rejected_task_is_assigned_again_with_a_new_generation(domain: Hub) -> None:
    # given a task assigned to the first of two agents
    identify(domain, "busy")
    task = submit(domain, "anything")
    first = only_assignment(domain, "busy")
    identify(domain, "free")

    # when the first agent rejects it
    ack = domain.task_frames.task_rejected(
        "busy", frames.TaskRejected.model_validate(
            {"type": "task_rejected", "task_id": task.task_id, "reason": "busy"})
    )  # fmt: skip

    # then it goes at once to the other agent with the next generation
    assert ack.status == "requeued"
    outbox = domain.take_outbox()
    assert "task_requeued" in event_names(outbox, task.task_id)
    second = assignments(outbox, "free")
    assert [frame.generation for frame in second] == [first.generation + 1]


def test_an_agent_that_declined_a_task_is_offered_nothing_until_its_next_frame(
    domain: Hub, clock: ManualClock
) -> None:
    # given the only agent, given a task
    identify(domain, "stopping")
    task = submit(domain, "anything")
    only_assignment(domain, "stopping")

    # when it declines it (a sidecar stopping gives its task back before it goes)
    domain.task_frames.task_rejected(
        "stopping", frames.TaskRejected.model_validate(
            {"type": "task_rejected", "task_id": task.task_id, "reason": "sidecar stopping"})
    )  # fmt: skip

    # then the task waits, queued, whatever schedules meanwhile (a sweep)
    clock.advance(1_000)
    domain.sweep()
    assert assignments(domain.take_outbox(), "stopping") == []
    assert domain.find_task(task.task_id).status is TaskStatus.queued

    # and once the agent sends anything again, it may have work
    domain.seen("stopping")
    again = assignments(domain.take_outbox(), "stopping")
    assert [frame.task_id for frame in again] == [task.task_id]


def test_unaccepted_task_is_reclaimed_after_the_acceptance_timeout(
    domain: Hub, clock: ManualClock
) -> None:
    # given a task assigned and never accepted
    identify(domain, "slow")
    task = submit(domain, "accept me")
    first = only_assignment(domain, "slow")

    # when just under the timeout passes, then nothing happens
    clock.advance(ACCEPT_TIMEOUT_MS - 1)
    domain.sweep()
    assert event_names(domain.take_outbox()) == []
    assert domain.find_task(task.task_id).status is TaskStatus.assigned

    # when the timeout is reached
    clock.advance(1)
    domain.sweep()

    # then the task goes back to the queue as reclaimed, and is assigned anew
    outbox = domain.take_outbox()
    names = event_names(outbox, task.task_id)
    assert names[:2] == ["task_reclaimed", "task_assigned"]
    reclaimed = task_events(outbox, task.task_id)[0]
    assert reclaimed["reason"] == "acceptance_timeout"
    assert reclaimed["status"] == TaskStatus.queued.value
    assert [frame.generation for frame in assignments(outbox)] == [first.generation + 1]


def test_accepted_task_without_progress_is_reclaimed_after_five_minutes(
    domain: Hub, clock: ManualClock
) -> None:
    # given an accepted task
    identify(domain, "quiet")
    task = submit(domain, "long job")
    assign = only_assignment(domain, "quiet")
    assert accept(domain, "quiet", task.task_id).status == "accepted"
    domain.take_outbox()

    # when just under five minutes pass without progress, then it is still working
    clock.advance(RECLAIM_AFTER_MS - 1)
    domain.sweep()
    assert event_names(domain.take_outbox()) == []
    assert domain.find_task(task.task_id).status is TaskStatus.working

    # when five minutes are reached
    clock.advance(1)
    domain.sweep()

    # then it is reclaimed and assigned again with a new generation
    outbox = domain.take_outbox()
    reclaimed = task_events(outbox, task.task_id)[0]
    assert (reclaimed["event"], reclaimed["reason"]) == ("task_reclaimed", "no_progress")
    assert [frame.generation for frame in assignments(outbox)] == [assign.generation + 1]


def test_progress_postpones_the_reclaim(domain: Hub, clock: ManualClock) -> None:
    # given an accepted task
    identify(domain, "chatty")
    task = submit(domain, "long job")
    only_assignment(domain, "chatty")
    accept(domain, "chatty", task.task_id)

    # when it reports progress four minutes in
    clock.advance(240_000)
    progress(domain, "chatty", task.task_id, progress=40)
    assert event_names(domain.take_outbox(), task.task_id)[-1] == "task_progress"

    # then eight minutes after acceptance it is still working
    clock.advance(240_000)
    domain.sweep()
    assert "task_reclaimed" not in event_names(domain.take_outbox())
    assert domain.find_task(task.task_id).status is TaskStatus.working

    # and five minutes after the last progress it is reclaimed
    clock.advance(RECLAIM_AFTER_MS - 240_000)
    domain.sweep()
    assert event_names(domain.take_outbox(), task.task_id)[0] == "task_reclaimed"


# --- failure, retry, dead letter ---------------------------------------------------


async def test_failures_are_retried_up_to_max_retries_then_dead_lettered(domain: Hub) -> None:
    # given a task allowed two retries
    identify(domain, "worker")
    task = submit(domain, "flaky", max_retries=2)
    assign: TaskAssign | None = only_assignment(domain, "worker")
    outcomes, names = [], []

    # when every attempt fails
    for attempt in range(3):
        assert assign is not None
        ack = fail(domain, "worker", task.task_id, assign.generation, f"boom {attempt}")
        outcomes.append(ack.status)
        outbox = domain.take_outbox()
        names.extend(event_names(outbox, task.task_id))
        assign = next(iter(assignments(outbox, "worker")), None)

    # then it is retried twice, then dead lettered and offered no more
    assert outcomes == ["retried", "retried", "dead_letter"]
    assert names == ["task_failed", "task_retried", "task_assigned",
                     "task_failed", "task_retried", "task_assigned",
                     "task_failed", "task_dead_letter"]  # fmt: skip
    assert assign is None
    await domain.store.commit()
    dead = domain.find_task(task.task_id)
    assert dead.status is TaskStatus.dead_letter
    assert dead.retry_count == 2
    assert dead.last_error == "boom 2"
    assert dead.assigned_to is None


async def test_operator_retry_of_a_dead_letter_task_resets_its_retry_count(domain: Hub) -> None:
    # given a dead-letter task that used its one retry
    identify(domain, "worker")
    task = submit(domain, "flaky", max_retries=1)
    assign = only_assignment(domain, "worker")
    fail(domain, "worker", task.task_id, assign.generation)
    assign = only_assignment(domain, "worker")
    assert fail(domain, "worker", task.task_id, assign.generation).status == "dead_letter"
    domain.take_outbox()
    await domain.store.commit()

    # when an operator retries it
    retried = domain.task_ops.retry(task.task_id)

    # then it is queued again with a clean slate and assigned with the next generation
    assert retried.retry_count == 0
    assert retried.last_error is None
    outbox = domain.take_outbox()
    assert event_names(outbox, task.task_id)[:2] == ["task_requeued", "task_assigned"]
    assert [frame.generation for frame in assignments(outbox, "worker")] == [3]
    # and it has its full retry budget again
    assert fail(domain, "worker", task.task_id, 3).status == "retried"


async def test_only_a_dead_letter_task_can_be_retried(domain: Hub) -> None:
    # given a queued task
    task = submit(domain, "waiting")

    # when an operator retries it, then it is refused
    with pytest.raises(HubError) as refused:
        domain.task_ops.retry(task.task_id)
    assert refused.value.code == "invalid_state"


# --- cancel ------------------------------------------------------------------------


async def test_cancelled_queued_task_is_never_assigned(domain: Hub) -> None:
    # given a queued task
    task = submit(domain, "never mind")
    domain.take_outbox()

    # when it is cancelled and an agent then arrives
    cancelled = domain.task_ops.cancel(task.task_id)
    outbox = domain.take_outbox()
    identify(domain, "worker")

    # then it is cancelled, announced, and not offered
    assert cancelled.status is TaskStatus.cancelled
    assert [event["status"] for event in task_events(outbox, task.task_id)] == ["cancelled"]
    assert assignments(domain.take_outbox()) == []
    await domain.store.commit()
    stored = domain.store.get_task(task.task_id)
    assert stored is not None and stored.status is TaskStatus.cancelled
    with pytest.raises(HubError) as again:
        domain.task_ops.cancel(task.task_id)
    assert again.value.code == "invalid_state"


async def test_cancelled_assigned_task_frees_its_agent_and_tells_it(domain: Hub) -> None:
    # given an agent holding one task while another waits
    identify(domain, "worker")
    held = submit(domain, "held")
    waiting = submit(domain, "waiting")
    only_assignment(domain, "worker")
    await domain.store.commit()

    # when the held task is cancelled
    domain.task_ops.cancel(held.task_id)
    outbox = domain.take_outbox()
    await domain.store.commit()

    # then the agent is told, and is free to take the waiting task
    cancels = [frame for target, frame in outbox.pushes
               if target == "worker" and isinstance(frame, TaskCancelled)]  # fmt: skip
    assert [frame.task_id for frame in cancels] == [held.task_id]
    assert [frame.task_id for frame in assignments(outbox, "worker")] == [waiting.task_id]
    # and a late completion of the cancelled task changes nothing
    with pytest.raises(HubError) as refused:
        complete(domain, "worker", held.task_id, 1)
    assert refused.value.code == "task_complete_failed: invalid_state"
    assert domain.find_task(held.task_id).status is TaskStatus.cancelled


async def test_completion_racing_an_uncommitted_cancel_is_refused(domain: Hub) -> None:
    # given an assigned task whose assignment is durable
    identify(domain, "worker")
    task = submit(domain, "racing")
    assign = only_assignment(domain, "worker")
    await domain.store.commit()

    # when an operator cancels it and, before that is committed, the agent completes it
    domain.task_ops.cancel(task.task_id)
    domain.take_outbox()
    with pytest.raises(HubError) as refused:
        complete(domain, "worker", task.task_id, assign.generation)

    # then the completion is fenced off and the task stays cancelled
    assert refused.value.code == "task_complete_failed: invalid_state"
    assert event_names(domain.take_outbox()) == []
    await domain.store.commit()
    assert domain.find_task(task.task_id).status is TaskStatus.cancelled


async def test_duplicate_completion_before_commit_is_refused(domain: Hub) -> None:
    # given a task assigned to an agent, durable, with another task waiting
    identify(domain, "worker")
    task = submit(domain, "once")
    waiting = submit(domain, "next")
    assign = only_assignment(domain, "worker")
    await domain.store.commit()

    # when the completion arrives twice before the first one is committed
    assert complete(domain, "worker", task.task_id, assign.generation).status == "complete"
    assert [a.task_id for a in assignments(domain.take_outbox(), "worker")] == [waiting.task_id]
    with pytest.raises(HubError) as refused:
        complete(domain, "worker", task.task_id, assign.generation)

    # then the duplicate changes nothing: the agent still holds its new task
    assert refused.value.code == "task_complete_failed: invalid_state"
    assert domain.presence.agents["worker"].current_task == waiting.task_id
    assert event_names(domain.take_outbox()) == []


# --- history -----------------------------------------------------------------------


async def test_history_is_capped_and_keeps_the_newest_transitions(
    make_domain: DomainMaker, clock: ManualClock
) -> None:
    # given a hub keeping four transitions per task
    domain = make_domain(history_cap=4)
    identify(domain, "worker")
    task = submit(domain, "flaky", max_retries=10)

    # when the task goes through many transitions
    for _ in range(5):
        assign = only_assignment(domain, "worker")
        clock.advance(1_000)
        fail(domain, "worker", task.task_id, assign.generation)
    await domain.store.commit()

    # then only the newest four are kept, in order, in memory and in the store
    history = domain.find_task(task.task_id).history
    assert len(history) == 4
    assert [entry.status for entry in history] == ["queued", "assigned", "queued", "assigned"]
    assert history[0].detail is not None and "retry 4/10" in history[0].detail
    assert history[-1].detail is not None and "generation 6" in history[-1].detail
    assert [entry.at for entry in history] == sorted(entry.at for entry in history)
    stored = domain.store.get_task(task.task_id)
    assert stored is not None and len(stored.history) == 4


# --- presence ----------------------------------------------------------------------


def test_agent_identifying_while_holding_a_task_is_not_offered_new_work(domain: Hub) -> None:
    # given an agent holding a task whose connection dropped
    identify(domain, "flappy")
    held = submit(domain, "keep me")
    assign = only_assignment(domain, "flappy")
    domain.disconnect("flappy")
    waiting = submit(domain, "second task")

    # when it identifies again (real sidecars say "idle")
    identify(domain, "flappy")

    # then it is busy with its task, not idle
    assert assignments(domain.take_outbox()) == []
    snapshot = next(a for a in domain.views.agents_snapshot() if a["agent_id"] == "flappy")
    assert snapshot["state"] == "assigned"
    assert snapshot["current_task"] == held.task_id

    # and once it completes that task it gets the next one
    assert complete(domain, "flappy", held.task_id, assign.generation).status == "complete"
    assert only_assignment(domain, "flappy").task_id == waiting.task_id


def test_disconnected_agent_keeps_its_task_for_the_grace_period_then_loses_it(
    domain: Hub, clock: ManualClock
) -> None:
    # given an agent working on a task
    identify(domain, "gone")
    task = submit(domain, "orphan")
    first = only_assignment(domain, "gone")
    accept(domain, "gone", task.task_id)

    # when its connection ends and just under the grace period passes
    domain.disconnect("gone")
    clock.advance(GRACE_MS - 1)
    domain.sweep()

    # then the task is still held for it
    assert domain.find_task(task.task_id).assigned_to == "gone"
    domain.take_outbox()

    # when the grace period ends
    clock.advance(1)
    domain.sweep()

    # then the task is requeued, and the next agent gets it with a new generation
    outbox = domain.take_outbox()
    assert event_names(outbox, task.task_id) == ["task_requeued"]
    requeued = domain.find_task(task.task_id)
    assert (requeued.status, requeued.assigned_to) == (TaskStatus.queued, None)
    identify(domain, "other")
    assert only_assignment(domain, "other").generation == first.generation + 1


def test_agent_back_within_the_grace_period_keeps_and_completes_its_task(
    domain: Hub, clock: ManualClock
) -> None:
    # given an agent working on a task whose connection drops
    identify(domain, "flappy")
    task = submit(domain, "keep me")
    assign = only_assignment(domain, "flappy")
    accept(domain, "flappy", task.task_id)
    domain.disconnect("flappy")

    # when it comes back in time and the grace period later elapses
    clock.advance(GRACE_MS // 2)
    identify(domain, "flappy")
    clock.advance(GRACE_MS)
    domain.sweep()

    # then the task stayed with it, and its completion with the old generation counts
    assert "task_requeued" not in event_names(domain.take_outbox())
    assert domain.find_task(task.task_id).assigned_to == "flappy"
    assert complete(domain, "flappy", task.task_id, assign.generation).status == "complete"


# --- ids and events ----------------------------------------------------------------


def test_task_ids_are_random_128_bit_hex_and_never_sequential(domain: Hub) -> None:
    # given many tasks submitted in a row
    ids = [submit(domain, f"task {n}").task_id for n in range(200)]

    # then each id is 128 bits of hex, all distinct
    assert all(re.fullmatch(r"[0-9a-f]{32}", task_id) for task_id in ids)
    assert len(set(ids)) == len(ids)
    # and nothing about them follows submission order
    values = [int(task_id, 16) for task_id in ids]
    assert values != sorted(values)
    assert len({b - a for a, b in itertools.pairwise(values)}) > 1
    # every hex position varies: no shared prefix, suffix or counter
    for position in range(32):
        assert len({task_id[position] for task_id in ids}) >= 8, position


def test_every_transition_publishes_its_protocol_event(domain: Hub, clock: ManualClock) -> None:
    # given an agent
    identify(domain, "worker")
    domain.take_outbox()
    seen: list[dict[str, Any]] = []

    def step(action: Callable[[], object]) -> list[str]:
        clock.advance(10)
        action()
        events = task_events(domain.take_outbox())
        for event in events:
            assert event["type"] == "task_event"
            assert event["timestamp"] == clock.now_ms()
            assert {"task_id", "agent_id"} <= set(event)
        seen.extend(events)
        return [event["event"] for event in events]

    # when a task runs to completion
    submitted: list[Task] = []
    assert step(lambda: submitted.append(submit(domain, "observed", max_retries=1))) == [
        "task_submitted", "task_assigned"]  # fmt: skip
    tid = submitted[0].task_id
    assert step(lambda: accept(domain, "worker", tid)) == ["task_accepted"]
    assert step(lambda: progress(domain, "worker", tid, progress=5)) == ["task_progress"]
    stdout = {"event_type": "stdout", "text": "hi"}
    assert step(lambda: progress(domain, "worker", tid, execution_event=stdout)) == [
        "task_progress", "execution_progress"]  # fmt: skip
    assert step(lambda: complete(domain, "worker", tid, 1, result={
        "status": "success", "model_used": "m", "tokens_in": 3})) == ["task_completed"]  # fmt: skip
    completed = seen[-1]
    assert completed["agent_id"] == "worker"
    assert completed["execution"]["model_used"] == "m"
    assert completed["execution"]["tokens_in"] == 3

    # when another task fails, is retried, reclaimed, rejected and finally dead lettered
    other = submit(domain, "unlucky", max_retries=1).task_id
    domain.take_outbox()
    assert step(lambda: fail(domain, "worker", other, 1)) == [
        "task_failed", "task_retried", "task_assigned"]  # fmt: skip

    def acceptance_times_out() -> None:
        clock.advance(ACCEPT_TIMEOUT_MS)
        domain.sweep()

    assert step(acceptance_times_out) == ["task_reclaimed", "task_assigned"]
    identify(domain, "spare")
    domain.take_outbox()
    rejected = frames.TaskRejected.model_validate({"type": "task_rejected", "task_id": other})
    assert step(lambda: domain.task_frames.task_rejected("worker", rejected)) == [
        "task_requeued", "task_assigned"]  # fmt: skip
    assert step(lambda: fail(domain, "spare", other, 4)) == ["task_failed", "task_dead_letter"]

    # then every event name is one of PROTOCOL.md section 3
    assert {event["event"] for event in seen} == PROTOCOL_EVENTS


async def test_a_refused_completion_leaves_the_task_with_its_agent_as_stored(
    clock: ManualClock,
) -> None:
    # given a task its agent is working on, stored, on a store whose refusals the hub hears
    store = MemoryStore()
    hub = Hub(store, clock, Settings())
    store.on_refused = hub.recovery.forget_refused
    identify(hub, "worker")
    task = submit(hub, "build")
    assign = only_assignment(hub, "worker")
    accept(hub, "worker", task.task_id)
    await store.commit()

    # when the store refuses the commit that carries its completion
    assert complete(hub, "worker", task.task_id, assign.generation).status == "complete"
    store.refuse_next_commit()
    with pytest.raises(StoreError):
        await store.commit()

    # then the task is back as stored, and the worker still holds it: it is offered nothing
    hub.take_outbox()
    restored = hub.find_task(task.task_id)
    assert (restored.status, restored.assigned_to) == (TaskStatus.working, "worker")
    following = submit(hub, "deploy")
    assert assignments(hub.take_outbox()) == []

    # and when the completion comes again and is stored, the worker gets the next task
    assert complete(hub, "worker", task.task_id, assign.generation).status == "complete"
    await store.commit()
    assert hub.find_task(task.task_id).status is TaskStatus.completed
    assert only_assignment(hub, "worker").task_id == following.task_id


async def test_stats_route_preview_and_bulk_change_replies_have_their_models_shape(
    domain: Hub,
) -> None:
    # given an agent that completed a task with execution figures, and a queued task
    identify(domain, "worker")
    done = submit(domain, "counted")
    accept(domain, "worker", done.task_id)
    complete(domain, "worker", done.task_id, 1,
             result={"status": "success", "model_used": "m", "tokens_in": 3})  # fmt: skip
    queued = submit(domain, "waiting")
    await domain.store.commit()

    # when the statistics, a route preview and a bulk cancel are asked for
    stats = await domain.views.stats()
    preview = domain.views.route_preview(TaskSubmission(description="a dry run"))
    bulk = domain.task_ops.for_each_task(domain.task_ops.cancel, [queued.task_id, "unknown-id"])

    # then each reply is what its model of the operator protocol describes
    assert StatsReply.model_validate(stats).by_model["m"].tokens_in == 3
    assert RoutePreview.model_validate(preview).viable_endpoints == 0
    change = BulkChange.model_validate(bulk)
    assert [task.task_id for task in change.changed] == [queued.task_id]
    assert [refusal.task_id for refusal in change.refused] == ["unknown-id"]
