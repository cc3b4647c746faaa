"""Long-lived ``agentcom`` commands across a hub restart, and what operators see of a task
held for an agent after one.

Every hub is a real ``agentcom serve`` process, stopped with SIGTERM and started again on
the same database and port under the command; every command is a real subprocess.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import METADATA
from hubprocess import CliProcess, HubProcess, run_cli_async

from agentcom.client import AgentClient, OperatorClient

Frame = dict[str, Any]
LINE_TIMEOUT_S = 20.0  # a restart: the old hub stops, a new Python process starts
PROMPT_EXIT_S = 10.0  # Ctrl-C must end a command well before this


class Hubs:
    """The hub of a test and its restarts; every process is stopped at the end."""

    def __init__(self, directory: Path) -> None:
        self.processes = [HubProcess(directory).start()]
        self.admin = self.current.make_token("ops", "admin")

    @property
    def current(self) -> HubProcess:
        return self.processes[-1]

    def operator_args(self) -> list[str]:
        return self.current.operator_args(self.admin)

    def stop(self) -> None:
        """SIGTERM the running hub and wait for it (exit status 0)."""
        assert self.current.stop() == 0

    def restart(self) -> HubProcess:
        """Stop the hub; start a new one on its database and port."""
        old = self.current
        self.stop()
        self.processes.append(HubProcess(old.directory, db=old.db, port=old.port or 0).start())
        return self.current

    def stop_all(self) -> None:
        for process in self.processes:
            process.stop()


@pytest.fixture
def hubs(tmp_path: Path) -> Iterator[Hubs]:
    started = Hubs(tmp_path)
    yield started
    started.stop_all()


@pytest.fixture
async def agents() -> AsyncIterator[list[AgentClient]]:
    """Agent clients a test connects; closed at the end."""
    opened: list[AgentClient] = []
    yield opened
    for agent in opened:
        await agent.close()


async def stderr_line(command: CliProcess) -> str:
    assert command.stderr is not None
    return await command.stderr.next_line_async(LINE_TIMEOUT_S)


async def connect_agent(hub: HubProcess, token: str, agents: list[AgentClient]) -> AgentClient:
    agent = AgentClient(hub.ws_url, "worker-1", token, heartbeat_s=None)
    agents.append(agent)
    await agent.connect()
    return agent


# --- watch --------------------------------------------------------------------------------


async def test_watch_reconnects_after_a_hub_restart_says_so_and_carries_on(hubs: Hubs) -> None:
    # given `agentcom watch` following a hub
    with CliProcess("watch", *hubs.operator_args()) as watch:
        assert await watch.next_line(LINE_TIMEOUT_S) == "connected: 0 agents, queue depth 0"

        # when the hub restarts under it
        restarted = await asyncio.to_thread(hubs.restart)

        # then it says so in one line, reconnects, and streams the new hub's events
        assert await stderr_line(watch) == "agentcom: the hub is restarting; reconnecting..."
        assert await watch.next_line(LINE_TIMEOUT_S) == "reconnected: 0 agents, queue depth 0"
        async with OperatorClient(restarted.http_url, hubs.admin) as operator:
            task = await operator.submit("after the restart")
        line = await watch.next_line(LINE_TIMEOUT_S)
        assert f"task_submitted     task {task['task_id']}" in line
        assert watch.process is not None and watch.process.poll() is None


async def test_watch_task_follows_its_task_across_a_hub_restart(
    hubs: Hubs, agents: list[AgentClient]
) -> None:
    # given `agentcom watch --task` following a queued task
    async with OperatorClient(hubs.current.http_url, hubs.admin) as operator:
        task = await operator.submit("outlive the hub", complexity_tier="complex")
    task_id = task["task_id"]
    with CliProcess("watch", "--task", task_id[:8], *hubs.operator_args()) as watch:
        assert await watch.next_line(LINE_TIMEOUT_S) == f"task {task_id} queued"

        # when the hub restarts under it, and then an agent runs the task
        restarted = await asyncio.to_thread(hubs.restart)
        assert await stderr_line(watch) == (
            f"agentcom: the hub is restarting; reconnecting to follow task {task_id}..."
        )
        assert await watch.next_line(LINE_TIMEOUT_S) == f"task {task_id} queued"
        agent = await connect_agent(restarted, restarted.make_token("worker-1"), agents)
        assign = await agent.receive_type("task_assign")
        await agent.send({"type": "task_accepted", "task_id": task_id})
        await agent.send({"type": "task_complete", "task_id": task_id,
                          "generation": assign["generation"], "result": METADATA})  # fmt: skip

        # then it shows the new hub's events for the task and ends with its completion
        result = await watch.finish(LINE_TIMEOUT_S)
    assert result.returncode == 0, result
    events = [line.split()[2] for line in result.stdout.splitlines()]
    assert events == ["task_assigned", "task_accepted", "task_completed"]


async def test_ctrl_c_during_the_reconnect_backoff_ends_watch_at_once(hubs: Hubs) -> None:
    # given `agentcom watch` retrying a hub that went away
    with CliProcess("watch", *hubs.operator_args()) as watch:
        await watch.next_line(LINE_TIMEOUT_S)
        await asyncio.to_thread(hubs.stop)
        assert await stderr_line(watch) == "agentcom: the hub is restarting; reconnecting..."

        # when the operator presses Ctrl-C
        assert watch.process is not None
        watch.process.send_signal(signal.SIGINT)

        # then it exits with 130 at once, without a traceback
        result = await watch.finish(PROMPT_EXIT_S)
    assert result.returncode == 130
    assert "Traceback" not in result.stderr


# --- task submit --wait ------------------------------------------------------------------


async def test_submit_wait_survives_a_hub_restart_and_waits_for_the_same_task(
    hubs: Hubs, agents: list[AgentClient]
) -> None:
    # given `task submit --wait` waiting for a queued task
    token = hubs.current.make_token("worker-1")
    with CliProcess(
        "task", "submit", "Summarise the notes", "--wait", *hubs.operator_args()
    ) as waiting:
        task_id = await stderr_line(waiting)

        # when the hub restarts under it
        restarted = await asyncio.to_thread(hubs.restart)

        # then it says so, reconnects and waits on, for the same task
        reconnecting = (
            f"agentcom: the hub is restarting; reconnecting to wait for task {task_id}..."
        )
        assert await stderr_line(waiting) == reconnecting
        assert await stderr_line(waiting) == f"agentcom: reconnected; waiting for task {task_id}"
        agent = await connect_agent(restarted, token, agents)
        assign = await agent.receive_type("task_assign")
        await agent.send({"type": "task_complete", "task_id": task_id,
                          "generation": assign["generation"], "result": METADATA})  # fmt: skip
        result = await waiting.finish()
    assert result.returncode == 0, result
    assert result.stdout.startswith(f"task {task_id}  completed")
    # and the task was submitted once
    listed = await run_cli_async("task", "list", "--json", *hubs.operator_args())
    assert [task["task_id"] for task in json.loads(listed.stdout)] == [task_id]


async def test_ctrl_c_while_waiting_says_the_task_stays_queued_and_exits_130(hubs: Hubs) -> None:
    # given `task submit --wait` waiting for a task no agent takes
    with CliProcess("task", "submit", "nobody runs this", "--wait", *hubs.operator_args()) as c:
        task_id = await stderr_line(c)

        # when the operator presses Ctrl-C
        assert c.process is not None
        c.process.send_signal(signal.SIGINT)

        # then it says the task stays queued, with its id, and exits with 130
        result = await c.finish(PROMPT_EXIT_S)
    assert result.returncode == 130
    assert result.stderr == (
        f"agentcom: interrupted; task {task_id} stays queued and runs without this command "
        f"(agentcom task show {task_id})\n"
    )
    shown = await run_cli_async("task", "show", task_id, "--json", *hubs.operator_args())
    assert json.loads(shown.stdout)["status"] == "queued"


async def test_ctrl_c_during_the_reconnect_backoff_of_a_wait_names_the_task(hubs: Hubs) -> None:
    # given `task submit --wait` retrying a hub that went away
    with CliProcess("task", "submit", "a job", "--wait", *hubs.operator_args()) as waiting:
        task_id = await stderr_line(waiting)
        await asyncio.to_thread(hubs.stop)
        assert (await stderr_line(waiting)).endswith(f"reconnecting to wait for task {task_id}...")

        # when the operator presses Ctrl-C
        assert waiting.process is not None
        waiting.process.send_signal(signal.SIGINT)

        # then it exits with 130 at once, naming the task that stays queued
        result = await waiting.finish(PROMPT_EXIT_S)
    assert result.returncode == 130
    assert f"task {task_id} stays queued" in result.stderr
    assert "Traceback" not in result.stderr


# --- a task held for an agent, as operators see it ---------------------------------------


async def test_agents_and_task_show_say_a_task_is_held_for_its_agent_after_a_restart(
    hubs: Hubs, agents: list[AgentClient]
) -> None:
    # given an agent that accepted a task, and a hub restarted under it
    token = hubs.current.make_token("worker-1")
    agent = await connect_agent(hubs.current, token, agents)
    async with OperatorClient(hubs.current.http_url, hubs.admin) as operator:
        task = await operator.submit("long job", complexity_tier="complex")
    task_id = task["task_id"]
    await agent.receive_type("task_assign")
    await agent.send({"type": "task_accepted", "task_id": task_id})
    await agent.receive_type("task_ack")
    restarted = await asyncio.to_thread(hubs.restart)

    # when operators look while the agent is away
    shown = await run_cli_async("task", "show", task_id, *hubs.operator_args())
    listed = await run_cli_async("agents", *hubs.operator_args())

    # then both say the task is kept for it, since when, and until when
    assert f"  held: task {task_id} kept for worker-1 (disconnected) since " in shown.stdout
    assert "(grace period) unless the agent comes back" in shown.stdout
    assert listed.stdout.splitlines()[2].startswith(  # under the header and the agent's row
        f"  held: task {task_id} kept for worker-1 (disconnected) since "
    )

    # when the agent identifies again, idle and silent on the task (as real sidecars do)
    await agent.close()
    await connect_agent(restarted, token, agents)

    # then the hold says it is back, and names the no-progress reclaim time
    listed = await run_cli_async("agents", "--json", *hubs.operator_args())
    held = json.loads(listed.stdout)[0]["held_task"]
    assert held["task_id"] == task_id
    assert held["agent_connected"] is True
    assert held["reclaim_reason"] == "no_progress"
    assert held["reclaim_at"] > held["since"]
    human = await run_cli_async("agents", *hubs.operator_args())
    assert "(back, but silent on the task)" in human.stdout
    assert "(no progress) unless the agent reports on it" in human.stdout
