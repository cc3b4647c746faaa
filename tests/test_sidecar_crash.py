"""``agentcom sidecar`` across crashes: of the hub mid-task, and of the sidecar between
finishing a task and hearing the hub acknowledge it. Work is neither lost nor run twice."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import TokenMaker
from hubprocess import HubProcess, start_hub
from realsidecar import RealSidecar
from websockets.asyncio.server import ServerConnection, serve

from agentcom.client import AgentClient, OperatorClient
from agentcom.sidecar.state import HeldTask, StateDir, kill_leftover_group, process_identity

pytestmark = pytest.mark.skipif(os.name != "posix", reason="FIFOs")

FAST_RECONNECT = {"backoff_initial_s": 0.1, "backoff_max_s": 0.5}


async def test_a_task_finished_while_the_hub_was_down_is_delivered_when_it_is_back(
    tmp_path: Path, hubs: list[HubProcess], closing: list[Any]
) -> None:
    hub = start_hub(hubs, tmp_path)
    admin = hub.make_token("ops", "admin")
    sidecar = RealSidecar(
        tmp_path, hub.ws_url, "box-1", hub.make_token("box-1"), settings=FAST_RECONNECT
    )
    closing.append(sidecar)  # stopped at the end, before the hub
    sidecar.start()
    await sidecar.event("connected")
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    async with OperatorClient(hub.http_url, admin) as operator:
        task = await operator.submit(
            "wait for the gate", complexity_tier="trivial",
            metadata={"shell_command": f"echo waiting; cat {gate}; echo done"},
        )  # fmt: skip
    task_id = task["task_id"]
    await sidecar.event("assigned", task_id=task_id)

    hub.kill()  # a crash: nothing flushed, no close frame
    await asyncio.to_thread(gate.write_text, "open\n")
    await sidecar.event("finished", task_id=task_id, status="success")
    restarted = start_hub(hubs, tmp_path, port=hub.port or 0)
    await sidecar.event("connected")
    await sidecar.event("acknowledged", task_id=task_id, status="complete")

    async with OperatorClient(restarted.http_url, admin) as operator:
        task = await operator.get_task(task_id)
    assert task["status"] == "completed"
    assert task["generation"] == 1  # delivered with the generation it was assigned with
    assert task["result"]["output"] == "waiting\nopen\ndone\n"
    assert not (sidecar.state_dir / "task.json").exists()


async def test_a_completion_recorded_before_a_crash_is_delivered_by_the_restarted_sidecar(
    tmp_path: Path,
    ws_url: str,
    make_token: TokenMaker,
    operator: OperatorClient,
    closing: list[Any],
) -> None:
    # Given a task assigned to box-1 and accepted, whose completion box-1 recorded in its
    # state directory, then crashed before sending it ...
    token = make_token("box-1")
    agent = AgentClient(ws_url, "box-1", token, heartbeat_s=None)
    await agent.connect()
    task = await operator.submit(
        "echo hi", complexity_tier="trivial", metadata={"shell_command": "echo hi"}
    )
    assign = await agent.receive_type("task_assign")
    await agent.send({"type": "task_accepted", "task_id": task["task_id"]})
    await agent.receive_type("task_ack")
    completion = {
        "type": "task_complete", "task_id": task["task_id"], "generation": assign["generation"],
        "result": {"status": "success", "output": "hi\n", "exit_code": 0, "execution_ms": 3},
    }  # fmt: skip
    StateDir(tmp_path / "state").save(
        HeldTask(assign=assign, phase="finished", completion=completion)
    )
    await agent.close()

    # ... when it restarts, it delivers that completion and runs nothing again.
    sidecar = RealSidecar(tmp_path, ws_url, "box-1", token)
    closing.append(sidecar)  # stopped at the end, before the hub
    sidecar.start()
    await sidecar.event("acknowledged", task_id=task["task_id"], status="complete")
    done = await operator.wait_task(task["task_id"], timeout_s=10)

    assert done["status"] == "completed"
    assert done["result"] == completion["result"]
    assert not any(event.get("event") == "assigned" for event in sidecar.events)
    # A finished attempt is reported (its completion is still to be acknowledged), and
    # the hub, which still gives it to box-1, says continue.
    reported = next(event for event in sidecar.events if event.get("event") == "state_reported")
    assert (reported["generation"], reported["status"]) == (assign["generation"], "completed")
    assert any(event.get("event") == "state_continue" for event in sidecar.events)
    assert not (sidecar.state_dir / "task.json").exists()


def test_an_unreadable_state_record_is_set_aside(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.task_file.write_text("{not json")

    assert state.load() is None
    assert (tmp_path / "task.json.bad").read_text() == "{not json"


async def test_a_wake_task_the_hub_says_to_continue_runs_again_under_the_new_generation(
    tmp_path: Path, closing: list[Any]
) -> None:
    # Our hub answers task_continue only for wake tasks, which its router never produces:
    # a minimal hub written here plays that part of the protocol.
    assign = {
        "type": "task_assign", "task_id": "w1", "generation": 3, "description": "wake up",
        "metadata": {}, "routing_decision": {"effective_tier": "standard", "target_type": "wake"},
    }  # fmt: skip
    StateDir(tmp_path / "state").save(HeldTask(assign=assign, phase="running"))
    received: list[dict[str, Any]] = []
    completed = asyncio.get_running_loop().create_future()

    async def hub(connection: ServerConnection) -> None:
        async for raw in connection:
            frame = json.loads(raw)
            received.append(frame)
            if frame["type"] == "identify":
                await connection.send(json.dumps({"type": "identified", "agent_id": "box-1"}))
            elif frame["type"] == "task_recovering":
                await connection.send(
                    json.dumps({"type": "task_continue", "task_id": "w1", "generation": 4})
                )
            elif frame["type"] == "task_complete":
                ack = {"type": "task_ack", "task_id": "w1", "status": "complete"}
                await connection.send(json.dumps(ack))
                completed.done() or completed.set_result(frame)

    async with serve(hub, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        sidecar = RealSidecar(
            tmp_path, f"ws://127.0.0.1:{port}/ws", "box-1", "token",
            args=["--wake-command", 'echo "woke for $AGENTCOM_TASK_GENERATION"'],
        )  # fmt: skip
        closing.append(sidecar)
        sidecar.start()
        await sidecar.event("continue", task_id="w1", generation=4)
        completion = await asyncio.wait_for(completed, 10)
        await sidecar.event("acknowledged", task_id="w1")

    recovering = next(frame for frame in received if frame["type"] == "task_recovering")
    assert recovering["last_status"] == "running"
    assert completion["generation"] == 4
    assert completion["result"]["output"] == "woke for 4\n"
    assert any(frame["type"] == "wake_result" for frame in received)
    assert not any(frame["type"] == "task_accepted" for frame in received)
    # The run held before the restart died with it: only task_recovering asks about it.
    assert not any(frame["type"] == "state_report" for frame in received)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_leftover_group_is_killed_only_when_it_is_surely_the_recorded_one() -> None:
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        identity = process_identity(process.pid)
        assert identity is not None
        boot, _, start = identity.partition(":")

        assert not kill_leftover_group(process.pid, f"{boot}:{int(start) + 1}")  # a later one
        assert not kill_leftover_group(process.pid, f"another-boot:{start}")
        assert not kill_leftover_group(process.pid, None)
        assert process.poll() is None

        assert kill_leftover_group(process.pid, identity)
        assert process.wait(10) == -signal.SIGKILL
    finally:
        process.kill()
        process.wait()


async def test_the_task_is_recorded_before_it_is_accepted_and_its_outcome_before_it_is_sent(
    tmp_path: Path, closing: list[Any]
) -> None:
    # A minimal hub that looks at the sidecar's state directory the moment each frame
    # arrives: what it finds there is what a crash at that moment would leave.
    state = StateDir(tmp_path / "state")
    seen: dict[str, Any] = {}
    done = asyncio.get_running_loop().create_future()
    assign = {
        "type": "task_assign", "task_id": "t1", "generation": 5, "description": "say hi",
        "metadata": {"shell_command": "echo hi"},
        "routing_decision": {"effective_tier": "trivial", "target_type": "sidecar"},
    }  # fmt: skip

    async def hub(connection: ServerConnection) -> None:
        async for raw in connection:
            frame = json.loads(raw)
            if frame["type"] == "identify":
                await connection.send(json.dumps({"type": "identified", "agent_id": "box-1"}))
                await connection.send(json.dumps(assign))
            elif frame["type"] in ("task_accepted", "task_complete"):
                seen[frame["type"]] = (frame, state.load())
                status = "accepted" if frame["type"] == "task_accepted" else "complete"
                ack = {"type": "task_ack", "task_id": "t1", "status": status}
                await connection.send(json.dumps(ack))
                if status == "complete":
                    done.done() or done.set_result(None)

    async with serve(hub, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        sidecar = RealSidecar(tmp_path, f"ws://127.0.0.1:{port}/ws", "box-1", "token")
        closing.append(sidecar)
        sidecar.start()
        await asyncio.wait_for(done, 10)
        await sidecar.event("acknowledged", task_id="t1")

    _, held_when_accepted = seen["task_accepted"]
    assert held_when_accepted is not None
    assert held_when_accepted.assign == assign
    completion, held_when_completed = seen["task_complete"]
    assert held_when_completed is not None
    assert held_when_completed.phase == "finished"
    assert held_when_completed.completion == completion
    assert completion["generation"] == 5
    assert state.load() is None  # forgotten once acknowledged
