"""What waiting dependants cost the queue: completions, submits and a restart.

Usage (from the repository root, with the project's virtualenv)::

    python bench/dependencies.py                    # 10,000 waiting dependants
    python bench/dependencies.py --dependants 50000

Unlike the other benchmarks this one drives the domain directly (``TaskQueue`` on a
SQLite store in a temporary directory, no sockets), because what it measures is the
queue's own work. It submits one prerequisite and ``--dependants`` tasks that depend on
it, then times, against a baseline with no dependant waiting:

- the completion of an unrelated task (what every completion pays while they wait);
- a submit and the next-task lookup for an agent;
- loading the queue again from the database, as a restarted hub does;
- the completion of the prerequisite, which releases every dependant at once.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from agentcom.hub.clock import ManualClock
from agentcom.hub.queue import TaskQueue
from agentcom.protocol.common import TargetType, Tier
from agentcom.protocol.outbound import Complexity, RoutingDecision
from agentcom.protocol.task import Task, TaskSubmission
from agentcom.store.sqlite import SqliteStore

COMPLEXITY = Complexity(effective_tier=Tier.standard, source="default")
DECISION = RoutingDecision(effective_tier=Tier.standard, target_type=TargetType.ollama)
REPEAT = 200


def ignore(name: str, task: Task, extra: dict[str, Any]) -> None:
    """Events go nowhere: only the queue's work is measured."""


def run_unrelated(queue: TaskQueue, count: int) -> list[float]:
    """Microseconds to submit, assign and complete each of ``count`` independent tasks."""
    times = []
    for _ in range(count):
        task = queue.submit(TaskSubmission(description="unrelated"))
        started = time.perf_counter()
        queue.assign(task, "agent", COMPLEXITY, DECISION)
        queue.complete(task)
        times.append((time.perf_counter() - started) * 1e6)
    return times


def timed_us(action: Any) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1e6


async def measure(dependants: int, directory: Path) -> dict[str, float]:
    store = SqliteStore(directory / "hub.db")
    queue = TaskQueue(store, ManualClock(), ignore)
    figures: dict[str, float] = {}
    figures["complete_us_baseline"] = statistics.median(run_unrelated(queue, REPEAT))
    await store.commit()

    prerequisite = queue.submit(TaskSubmission(description="prerequisite"))
    started = time.perf_counter()
    for _ in range(dependants):
        queue.submit(TaskSubmission(description="dependant", depends_on=[prerequisite.task_id]))
    figures["submit_dependant_us"] = (time.perf_counter() - started) * 1e6 / dependants
    started = time.perf_counter()
    await store.commit()
    figures["commit_dependants_ms"] = (time.perf_counter() - started) * 1e3

    figures["complete_us_while_waiting"] = statistics.median(run_unrelated(queue, REPEAT))
    figures["next_for_us_while_waiting"] = timed_us(lambda: queue.next_for(frozenset()))
    await store.commit()

    restarted = TaskQueue(store, ManualClock(), ignore)
    figures["restore_ms"] = timed_us(lambda: restarted.restore(store.load_unfinished_tasks())) / 1e3
    assert len(restarted.dependencies) == dependants

    queue.assign(prerequisite, "agent", COMPLEXITY, DECISION)
    figures["complete_prerequisite_ms"] = timed_us(lambda: queue.complete(prerequisite)) / 1e3
    assert not queue.dependencies and queue.queued_count() == dependants
    store.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dependants", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        figures = asyncio.run(measure(args.dependants, Path(directory)))
    print(f"{args.dependants} dependants waiting for one prerequisite")
    for name, value in figures.items():
        print(f"  {name:<28} {value:12.1f}")


if __name__ == "__main__":
    main()
