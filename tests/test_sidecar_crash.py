"""``agentcom sidecar`` across crashes: of the hub mid-task, and of the sidecar between
finishing a task and hearing the hub acknowledge it. Work is neither lost nor run twice."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import TokenMaker
from hubprocess import HubProcess, start_hub
from realsidecar import RealSidecar

from agentcom.client import AgentClient, OperatorClient
from agentcom.sidecar.state import HeldTask, StateDir

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
    assert not (sidecar.state_dir / "task.json").exists()


def test_an_unreadable_state_record_is_set_aside(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.task_file.write_text("{not json")

    assert state.load() is None
    assert (tmp_path / "task.json.bad").read_text() == "{not json"
