"""What a node sharing its database does with writes that lost to another node's: the
conflict log, and effects that drop what was decided from the lost state."""

from __future__ import annotations

from agentcom.hub.conflicts import ConflictLog
from agentcom.hub.hub import Effects
from agentcom.protocol.outbound import TaskAssign, TaskCancelled


def test_the_log_names_the_tasks_lost_after_a_mark() -> None:
    log = ConflictLog()
    log.record(["a"])
    mark = log.seq
    log.record(["b", "c"])
    assert log.since(0) == {"a", "b", "c"}
    assert log.since(mark) == {"b", "c"}
    assert log.since(log.seq) == set()


def test_effects_drop_pushes_events_and_finished_tasks_of_lost_tasks_only() -> None:
    effects = Effects(
        pushes=[("x", TaskCancelled(task_id="lost")), ("y", TaskCancelled(task_id="kept"))],
        events=[
            ("tasks", {"task_id": "lost"}),
            ("tasks", {"task_id": "kept"}),
            ("agents", {"agent_id": "x"}),
        ],
    )
    effects.drop_lost({"lost", "elsewhere"})
    assert effects.lost == frozenset({"lost"})
    assert [frame.task_id for _, frame in effects.pushes] == ["kept"]  # type: ignore[attr-defined]
    assert effects.events == [("tasks", {"task_id": "kept"}), ("agents", {"agent_id": "x"})]


def test_effects_that_touch_no_lost_task_keep_everything() -> None:
    assign = TaskAssign.model_construct(task_id="t1")
    effects = Effects(pushes=[("x", assign)], events=[("tasks", {"task_id": "t1"})])
    effects.drop_lost({"t2"})
    assert effects.lost == frozenset()
    assert effects.pushes == [("x", assign)]
