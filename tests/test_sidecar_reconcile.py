"""``agentcom sidecar`` reconciles its task with the hub after every reconnect.

It sends ``state_report`` for the task it holds and acts on the answer: ``continue``
keeps the run (its completion lands once), ``abort`` stops it at once and frees the
sidecar, and a hub that does not know the frame (``validation_failed``) changes nothing.
Real hub and sidecar processes; a minimal stand-in plays the older hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from hubprocess import HubProcess, run_cli_async, start_hub
from realsidecar import RealSidecar, Streamed, process_gone, watch_pid
from websockets.asyncio.server import ServerConnection, serve

from agentcom.client import AgentClient, OperatorClient

pytestmark = pytest.mark.skipif(os.name != "posix", reason="FIFOs, process groups")

FAST_RECONNECT = {"backoff_initial_s": 0.1, "backoff_max_s": 0.5}


def start_sidecar(
    tmp_path: Path, hub: HubProcess, closing: list[Any], agent_id: str = "box-1"
) -> RealSidecar:
    """The real sidecar against ``hub``, stopped at the end (before the hub)."""
    sidecar = RealSidecar(
        tmp_path, hub.ws_url, agent_id, hub.make_token(agent_id), settings=FAST_RECONNECT
    )
    closing.append(sidecar)
    return sidecar.start()


@pytest.mark.parametrize("crash", [False, True], ids=["sigterm", "kill-9"])
async def test_a_task_running_across_a_hub_restart_is_continued_and_completed_once(
    tmp_path: Path, hubs: list[HubProcess], closing: list[Any], crash: bool
) -> None:
    # Given a sidecar running a shell task that waits for a gate ...
    hub = start_hub(hubs, tmp_path)
    admin = hub.make_token("ops", "admin")
    sidecar = start_sidecar(tmp_path, hub, closing)
    await sidecar.event("connected")
    gate, runs = tmp_path / "gate", tmp_path / "runs"
    os.mkfifo(gate)
    async with OperatorClient(hub.http_url, admin) as operator:
        task = await operator.submit(
            "wait for the gate", complexity_tier="trivial",
            metadata={"shell_command": f"echo run >> {runs}; cat {gate}; echo done"},
        )  # fmt: skip
    task_id = task["task_id"]
    await sidecar.event("assigned", task_id=task_id)

    # ... when the hub stops (or crashes) and comes back on the same database ...
    hub.kill() if crash else hub.stop()
    restarted = start_hub(hubs, tmp_path, port=hub.port or 0)

    # ... the sidecar reports the attempt it runs, the hub says continue and takes it as
    # running (no longer held for the agent's return) ...
    reported = await sidecar.event("state_reported", task_id=task_id)
    await sidecar.event("state_continue", task_id=task_id, generation=1)
    async with OperatorClient(restarted.http_url, admin) as operator:
        running = await operator.get_task(task_id)
        await asyncio.to_thread(gate.write_text, "open\n")
        await sidecar.event("acknowledged", task_id=task_id, status="complete")
        done = await operator.get_task(task_id)

    # ... and the task completes once, from the one run, under its first generation.
    assert reported["generation"] == 1
    assert reported["status"] == "working"
    assert running["status"] == "working"
    assert running["assigned_to"] == "box-1"
    assert done["status"] == "completed"
    assert done["generation"] == 1
    assert done["result"]["output"] == "open\ndone\n"
    assert runs.read_text() == "run\n"
    assert not any(event.get("event") == "state_abort" for event in sidecar.events)
    assert not (sidecar.state_dir / "task.json").exists()


async def test_a_task_requeued_while_the_sidecar_was_away_is_aborted_on_its_return(
    tmp_path: Path, hubs: list[HubProcess], closing: list[Any]
) -> None:
    # Given box-1 running a task whose command started a child process ...
    hub = start_hub(hubs, tmp_path)
    admin = hub.make_token("ops", "admin")
    sidecar = start_sidecar(tmp_path, hub, closing)
    await sidecar.event("connected")
    async with OperatorClient(hub.http_url, admin) as operator, Streamed(operator) as streamed:
        task = await operator.submit(
            "sleep", complexity_tier="trivial",
            metadata={"shell_command": "sleep 300 & echo child $!; wait"},
        )  # fmt: skip
        task_id = streamed.task_id = task["task_id"]
        match = await streamed.text_matching(r"child (\d+)")
    child_pid = int(match[1])
    child = watch_pid(child_pid)
    gone = False
    sidecar.signal(signal.SIGSTOP)  # frozen: it cannot reconnect until the test says so
    try:
        # ... and cut off from the hub (which restarts), while an operator requeues the
        # task and box-2 takes it ...
        hub.kill()
        restarted = start_hub(hubs, tmp_path, port=hub.port or 0)
        other = AgentClient(restarted.ws_url, "box-2", restarted.make_token("box-2"))
        closing.append(other)
        await other.connect()
        requeue = await run_cli_async("task", "requeue", task_id, *restarted.operator_args(admin))
        assert requeue.returncode == 0, requeue.stderr
        reassigned = await other.receive_type("task_assign")
        await other.send({"type": "task_accepted", "task_id": task_id})

        # ... when box-1 comes back, the hub answers its report with abort: the run
        # stops at once, its child process goes with it ...
        sidecar.signal(signal.SIGCONT)
        reported = await sidecar.event("state_reported", task_id=task_id)
        await sidecar.event("state_abort", task_id=task_id)
        gone = await process_gone(child)
        assert gone
    finally:
        sidecar.signal(signal.SIGCONT)
        if not gone:  # the test failed: leave nothing behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(child_pid, signal.SIGKILL)
        os.close(child)

    # ... and box-1 takes the next task (box-2 is busy with the requeued one).
    assert reported["generation"] == 1
    assert reassigned["generation"] == 2
    assert not (sidecar.state_dir / "task.json").exists()
    async with OperatorClient(restarted.http_url, admin) as operator:
        following = await operator.submit(
            "echo next", complexity_tier="trivial", metadata={"shell_command": "echo next"}
        )
        done = await operator.wait_task(following["task_id"], timeout_s=10)
        requeued = await operator.get_task(task_id)
    assert done["status"] == "completed"
    assert done["assigned_to"] == "box-1"
    assert done["result"]["output"] == "next\n"
    assert requeued["status"] == "working"
    assert requeued["assigned_to"] == "box-2"


async def test_a_hub_that_does_not_know_state_report_changes_nothing(
    tmp_path: Path, closing: list[Any]
) -> None:
    # An older hub (the phase-20 contract) refuses the unknown frame with
    # validation_failed; a minimal stand-in plays it, dropping the first connection once
    # the task is accepted.
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    assign = {
        "type": "task_assign", "task_id": "t1", "generation": 2, "description": "wait",
        "metadata": {"shell_command": f"cat {gate}"}, "assigned_at": 1_795_602_658_384,
        "routing_decision": {"effective_tier": "trivial", "target_type": "sidecar"},
    }  # fmt: skip
    received: list[dict[str, Any]] = []
    completed = asyncio.get_running_loop().create_future()
    connections = 0

    async def hub(connection: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        async for raw in connection:
            frame = json.loads(raw)
            received.append(frame)
            kind = frame["type"]
            if kind == "identify":
                await connection.send(json.dumps({"type": "identified", "agent_id": "box-1"}))
                if connections == 1:
                    await connection.send(json.dumps(assign))
            elif kind == "task_accepted" and connections == 1:
                await connection.close()
            elif kind == "task_accepted":  # delivered again on the new connection
                ack = {"type": "task_ack", "task_id": "t1", "status": "accepted"}
                await connection.send(json.dumps(ack))
            elif kind == "state_report":
                refusal = {
                    "type": "error", "error": "validation_failed", "message_type": "state_report",
                    "errors": [{"field": "type", "error": "unknown_message_type",
                                "detail": "unknown message type 'state_report'"}],
                }  # fmt: skip
                await connection.send(json.dumps(refusal))
            elif kind == "task_complete":
                ack = {"type": "task_ack", "task_id": "t1", "status": "complete"}
                await connection.send(json.dumps(ack))
                completed.done() or completed.set_result(frame)

    async with serve(hub, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        sidecar = RealSidecar(
            tmp_path, f"ws://127.0.0.1:{port}/ws", "box-1", "token", settings=FAST_RECONNECT
        )
        closing.append(sidecar)
        sidecar.start()
        await sidecar.event("state_report_unknown")
        await asyncio.to_thread(gate.write_text, "open\n")
        completion = await asyncio.wait_for(completed, 10)
        await sidecar.event("acknowledged", task_id="t1")

    report = next(frame for frame in received if frame["type"] == "state_report")
    assert report == {
        "type": "state_report", "task_id": "t1", "generation": 2, "status": "working",
        "assigned_at": 1_795_602_658_384,
    }  # fmt: skip
    assert completion["generation"] == 2
    assert completion["result"]["output"] == "open\n"
    assert not any(event.get("event") == "state_abort" for event in sidecar.events)


async def test_an_abort_about_an_attempt_already_replaced_leaves_the_new_one_running(
    tmp_path: Path, closing: list[Any]
) -> None:
    # A hub may give the task back to the same agent (a new generation) before it answers
    # the report about the old attempt: the abort names the task, not the attempt, and
    # must not stop the new run. A minimal stand-in orders the frames so.
    def assign(generation: int) -> dict[str, Any]:
        return {
            "type": "task_assign", "task_id": "t1", "generation": generation,
            "description": "say which", "metadata": {"shell_command": "echo run"},
            "routing_decision": {"effective_tier": "trivial", "target_type": "sidecar"},
        }  # fmt: skip

    completed = asyncio.get_running_loop().create_future()
    connections = 0

    async def hub(connection: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        async for raw in connection:
            frame = json.loads(raw)
            kind = frame["type"]
            if kind == "identify":
                await connection.send(json.dumps({"type": "identified", "agent_id": "box-1"}))
                if connections == 1:
                    await connection.send(json.dumps(assign(1)))
            elif kind == "task_accepted" and connections == 1:
                await connection.close()
            elif kind == "state_report":
                await connection.send(json.dumps(assign(2)))
                ack = {"type": "state_report_ack", "task_id": "t1", "action": "abort"}
                await connection.send(json.dumps(ack))
            elif kind == "task_accepted":
                ack = {"type": "task_ack", "task_id": "t1", "status": "accepted"}
                await connection.send(json.dumps(ack))
            elif kind == "task_complete" and frame["generation"] == 2:
                ack = {"type": "task_ack", "task_id": "t1", "status": "complete"}
                await connection.send(json.dumps(ack))
                completed.done() or completed.set_result(frame)

    async with serve(hub, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        sidecar = RealSidecar(
            tmp_path, f"ws://127.0.0.1:{port}/ws", "box-1", "token", settings=FAST_RECONNECT
        )
        closing.append(sidecar)
        sidecar.start()
        reported = await sidecar.event("state_reported", task_id="t1")
        await sidecar.event("assigned", task_id="t1", generation=2)
        completion = await asyncio.wait_for(completed, 10)
        await sidecar.event("acknowledged", task_id="t1")

    assert reported["generation"] == 1
    assert completion["result"]["output"] == "run\n"
    assert not any(event.get("event") == "state_abort" for event in sidecar.events)
