"""The frames of the latest AgentCom sidecar (phases 24-44), as its source sends them.

Each helper below builds a frame exactly as ``sidecar/index.js`` does (its ``send()``
adds ``protocol_version: 1`` to every frame), so these tests speak to the hub as that
sidecar does, over a real socket, with our own client.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import AgentMaker, TokenMaker
from hubprocess import HubProcess, run_cli_async, start_hub
from websockets.asyncio.client import ClientConnection, connect

from agentcom.client import AgentClient, OperatorClient, RequestFailed
from agentcom.protocol.events import EVENT

Frame = dict[str, Any]
EVENT_TIMEOUT_S = 10.0


def state_report(assign: Frame, status: str = "working") -> Frame:
    """``reportActiveState()``: sent after ``identified`` while a task is active."""
    return {
        "type": "state_report",
        "task_id": assign["task_id"],
        "status": status,
        "generation": assign["generation"],
        "assigned_at": assign["assigned_at"],
        "protocol_version": 1,
    }


def task_complete(assign: Frame, **result: Any) -> Frame:
    """``sendTaskComplete()`` after ``executeTask()``: verification moved to the top level."""
    return {
        "type": "task_complete",
        "task_id": assign["task_id"],
        "result": {
            "status": "success",
            "output": "done",
            "model_used": "qwen2.5-coder:7b",
            "tokens_in": 120,
            "tokens_out": 48,
            "estimated_cost_usd": 0,
            "equivalent_claude_cost_usd": 0.00108,
            "execution_ms": 1534,
            "verification_status": "skipped",
            "verification_attempts": 0,
            "termination_reason": None,
            "iterations_used": None,
            **result,
        },
        "generation": assign["generation"],
        "verification_report": None,
        "verification_history": None,
        "protocol_version": 1,
    }


async def next_event(events: Any, name: str) -> Frame:
    """The next published event called ``name``."""
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        while True:
            event: Frame = await anext(events)
            if event.get("event") == name:
                return event


async def test_state_report_of_the_running_attempt_is_answered_continue(
    make_agent: AgentMaker, operator: OperatorClient
) -> None:
    # given an agent running a task, whose connection drops and comes back
    agent = await make_agent("worker")
    task = await operator.submit("run it")
    assign = await agent.receive_type("task_assign")
    await agent.send({"type": "task_accepted", "task_id": task["task_id"]})
    await agent.receive_type("task_ack")
    events = operator.watch(["tasks"])
    assert (await anext(events))["type"] == "snapshot"
    await agent.close()
    back = await make_agent("worker")

    # when it reports the task it still runs
    await back.send(state_report(assign))

    # then the hub says continue, publishes the decision, and takes the completion once
    assert await back.receive_type("state_report_ack") == {
        "type": "state_report_ack", "task_id": task["task_id"], "action": "continue",
    }  # fmt: skip
    event = await next_event(events, "task_state_reported")
    EVENT.validate_python(event)  # as documented
    assert (event["agent_id"], event["action"], event["reported_generation"]) == (
        "worker", "continue", assign["generation"],
    )  # fmt: skip
    await events.aclose()
    await back.send(task_complete(assign))
    assert (await back.receive_type("task_ack"))["status"] == "complete"
    await back.send(task_complete(assign))
    refused = await back.receive_type("error")
    assert refused["error"] == "task_complete_failed: invalid_state"
    assert [e["status"] for e in (await operator.get_task(task["task_id"]))["history"]] == [
        "queued", "assigned", "working", "completed",
    ]  # fmt: skip


async def test_state_report_of_a_task_not_yet_accepted_starts_it(
    make_agent: AgentMaker, operator: OperatorClient
) -> None:
    # given a task assigned to an agent whose task_accepted never reached the hub
    agent = await make_agent("worker")
    task = await operator.submit("run it")
    assign = await agent.receive_type("task_assign")

    # when the agent reports it (the sidecar saves it as accepted before saying so)
    await agent.send(state_report(assign, status="accepted"))

    # then it continues, and the task is working: no acceptance timeout can take it away
    assert (await agent.receive_type("state_report_ack"))["action"] == "continue"
    stored = await operator.get_task(task["task_id"])
    assert (stored["status"], stored["assigned_to"]) == ("working", "worker")


async def test_state_report_of_another_attempt_is_answered_abort_and_changes_nothing(
    make_agent: AgentMaker, operator: OperatorClient
) -> None:
    # given a task running on one agent
    owner = await make_agent("owner", capabilities=["a"])
    other = await make_agent("other", capabilities=["b"])
    task = await operator.submit("run it", needed_capabilities=["a"])
    assign = await owner.receive_type("task_assign")

    # when reports name an older generation, another agent's task, or an unknown task
    stale = {**assign, "generation": assign["generation"] - 1}
    unknown = {**assign, "task_id": "f" * 32}
    for agent, reported in ((owner, stale), (other, assign), (owner, unknown)):
        await agent.send(state_report(reported))

        # then each is told to abort
        ack = await agent.receive_type("state_report_ack")
        assert (ack["task_id"], ack["action"]) == (reported["task_id"], "abort")

    # and the task is as it was
    stored = await operator.get_task(task["task_id"])
    assert (stored["status"], stored["assigned_to"], stored["generation"]) == (
        "assigned", "owner", assign["generation"],
    )  # fmt: skip


async def test_a_task_running_across_a_sigkill_of_the_hub_completes_once(
    hubs: list[HubProcess], tmp_path: Path, closing: list[Any]
) -> None:
    # given an agent running a task on a hub that is then killed with SIGKILL
    hub = start_hub(hubs, tmp_path)
    admin, token = hub.make_token("ops", "admin"), hub.make_token("worker")
    operator = OperatorClient(hub.http_url, admin)
    closing.append(operator)
    await operator.connect()
    agent = AgentClient(hub.ws_url, "worker", token, heartbeat_s=None)
    closing.append(agent)
    await agent.connect()
    task = await operator.submit("long job")
    assign = await agent.receive_type("task_assign")
    await agent.send({"type": "task_accepted", "task_id": task["task_id"]})
    assert (await agent.receive_type("task_ack"))["status"] == "accepted"
    assert hub.kill() == -9

    # when a new hub starts on its database and the sidecar reconnects and reports
    restarted = start_hub(hubs, tmp_path)
    operator = OperatorClient(restarted.http_url, admin)
    closing.append(operator)
    await operator.connect()
    back = AgentClient(restarted.ws_url, "worker", token, heartbeat_s=None)
    closing.append(back)
    await back.connect()
    await back.send(state_report(assign))

    # then it continues (no validation_failed), and completes the task exactly once
    assert (await back.receive_type("state_report_ack"))["action"] == "continue"
    await back.send(task_complete(assign))
    assert (await back.receive_type("task_ack"))["status"] == "complete"
    await back.send(task_complete(assign))
    assert (await back.receive_type("error"))["error"] == "task_complete_failed: invalid_state"
    stored = await operator.get_task(task["task_id"])
    assert [entry["status"] for entry in stored["history"]] == [
        "queued", "assigned", "working", "completed",
    ]  # fmt: skip
    assert stored["generation"] == assign["generation"]


PM2_INFO = {"name": "agentcom-sc1", "status": "online", "uptime_ms": 3_600_000,
            "restart_count": 2, "memory_bytes": 83_886_080}  # fmt: skip


async def sidecar_connect(ws_url: str, agent_id: str, token: str) -> ClientConnection:
    """Connect and send ``identify()`` as the sidecar builds it under pm2."""
    connection = await connect(ws_url)
    await connection.send(json.dumps({
        "type": "identify", "agent_id": agent_id, "token": token, "name": agent_id,
        "status": "idle", "capabilities": ["code"], "client_type": "sidecar",
        "protocol_version": 1, "pm2_info": PM2_INFO,
    }))  # fmt: skip
    assert json.loads(await connection.recv())["type"] == "identified"
    return connection


async def next_frame(connection: ClientConnection, frame_type: str) -> Frame:
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        while True:
            frame: Frame = json.loads(await connection.recv())
            if frame["type"] == frame_type:
                return frame


async def test_an_operator_restarts_a_sidecar_that_reports_pm2_and_restarting(
    ws_url: str, http_url: str, make_token: TokenMaker, operator: OperatorClient
) -> None:
    # given a sidecar under pm2
    token = make_token("sc1")
    sidecar = await sidecar_connect(ws_url, "sc1", token)
    admin, viewer = make_token("root", "admin"), make_token("watcher", "viewer")

    # then agents shows its process
    listed = await run_cli_async("agents", "--hub", http_url, "--token", viewer)
    assert "  pm2: agentcom-sc1 online, up 3600 s, 2 restarts, 80 MiB" in listed.stdout
    assert (await operator.request("agents_list"))[0]["pm2_info"] == PM2_INFO

    # when a viewer, then an admin, asks it to restart
    refused = await run_cli_async("agents", "restart", "sc1", "--hub", http_url,
                                  "--token", viewer)  # fmt: skip
    assert refused.returncode == 1 and "forbidden" in refused.stderr
    asked = await run_cli_async("agents", "restart", "sc1", "--reason", "new config",
                                "--hub", http_url, "--token", admin)  # fmt: skip
    assert asked.stdout.strip() == "asked sc1 to restart", asked

    # then the sidecar is told, and its agent_restarting is accepted and shown
    assert await next_frame(sidecar, "restart_sidecar") == {
        "type": "restart_sidecar", "reason": "new config",
    }  # fmt: skip
    frame = {"type": "agent_restarting", "reason": "new config", "protocol_version": 1}
    await sidecar.send(json.dumps(frame))
    await sidecar.send(json.dumps({"type": "ping", "protocol_version": 1}))
    assert json.loads(await sidecar.recv())["type"] == "pong"  # no error came first
    (agent,) = await operator.request("agents_list")
    assert agent["restarting"]["reason"] == "new config"
    listed = await run_cli_async("agents", "--hub", http_url, "--token", viewer)
    assert ": new config" in listed.stdout and "restarting since" in listed.stdout

    # until it comes back
    await sidecar.close()
    back = await sidecar_connect(ws_url, "sc1", token)
    (agent,) = await operator.request("agents_list")
    assert (agent["state"], agent["restarting"]) == ("idle", None)
    events = operator.watch(["agents"])
    assert (await anext(events))["type"] == "snapshot"
    await back.close()
    await next_event(events, "agent_disconnected")
    await events.aclose()

    # and an agent that is not connected cannot be asked
    with pytest.raises(RequestFailed) as not_connected:
        await operator.request("agent_restart", agent_id="sc1")
    assert not_connected.value.code == "not_connected"


def tool_call(assign: Frame, tool: str, iteration: int, args: str | None = None,
              result: str | None = None) -> Frame:  # fmt: skip
    """``executeTask()``'s progress emitter for one ``tool_call`` event of an agentic run."""
    return {
        "type": "task_progress",
        "task_id": assign["task_id"],
        "execution_event": {
            "event_type": "tool_call", "text": "", "tokens_so_far": None, "model": None,
            "timestamp": 1795602658887, "tool_name": tool, "args_summary": args,
            "result_summary": result, "iteration": iteration,
        },
        "protocol_version": 1,
    }  # fmt: skip


async def test_an_agentic_run_keeps_its_tool_calls_and_why_it_stopped(
    make_agent: AgentMaker, operator: OperatorClient, http_url: str, make_token: TokenMaker
) -> None:
    # given an agent running a task as an agentic loop, and a watcher
    agent = await make_agent("worker")
    task = await operator.submit("fix the bug")
    assign = await agent.receive_type("task_assign")
    await agent.send({"type": "task_accepted", "task_id": task["task_id"]})
    await agent.receive_type("task_ack")
    events = operator.watch(["tasks"])
    assert (await anext(events))["type"] == "snapshot"

    # when it streams two tool calls (each: the call, then its result) and completes
    calls = [
        tool_call(assign, "read_file", 1, args='{"path":"app.py"}'),
        tool_call(assign, "read_file", 1, result="OK: read_file -> def main():"),
        tool_call(assign, "write_file", 2, args='{"path":"app.py","content":"..."}'),
        tool_call(assign, "write_file", 2, result="OK: write_file -> written"),
    ]
    for frame in calls:
        await agent.send(frame)
    published = await next_event(events, "execution_progress")
    await events.aclose()
    await agent.send(task_complete(assign, termination_reason="final_answer", iterations_used=3))
    assert (await agent.receive_type("task_ack"))["status"] == "complete"

    # then the events went out as sent, and the task keeps each call with its result
    assert published["execution_event"] == calls[0]["execution_event"]
    stored = await operator.get_task(task["task_id"])
    agentic = stored["agentic"]
    assert (agentic["termination_reason"], agentic["iterations_used"]) == ("final_answer", 3)
    assert agentic["tool_calls_total"] == 2
    assert [(c["tool_name"], c["iteration"], c["args_summary"], c["result_summary"])
            for c in agentic["tool_calls"]] == [
        ("read_file", 1, '{"path":"app.py"}', "OK: read_file -> def main():"),
        ("write_file", 2, '{"path":"app.py","content":"..."}', "OK: write_file -> written"),
    ]  # fmt: skip

    # and task show prints them
    shown = await run_cli_async("task", "show", task["task_id"], "--hub", http_url,
                                "--token", make_token("watcher", "viewer"))  # fmt: skip
    assert "  agentic: 2 tool calls; stopped: final_answer after 3 iterations" in shown.stdout
    assert '#1 read_file {"path":"app.py"} -> OK: read_file -> def main():' in shown.stdout


async def test_an_oversized_tool_call_summary_is_refused(
    make_agent: AgentMaker, operator: OperatorClient
) -> None:
    agent = await make_agent("worker")
    await operator.submit("fix the bug")
    assign = await agent.receive_type("task_assign")
    await agent.send(tool_call(assign, "read_file", 1, args="x" * 2001))
    refused = await agent.receive_type("error")
    assert refused["error"] == "validation_failed"
    assert [(e["field"], e["error"]) for e in refused["errors"]] == [
        ("execution_event.args_summary", "too_long"),
    ]  # fmt: skip


async def test_a_cancelled_task_frees_its_agent_at_once_and_its_late_completion_is_refused(
    make_agent: AgentMaker, operator: OperatorClient
) -> None:
    # given an agent working on a task, and another task waiting behind it
    agent = await make_agent("worker")
    running = await operator.submit("long job")
    assign = await agent.receive_type("task_assign")
    await agent.send({"type": "task_accepted", "task_id": running["task_id"],
                      "protocol_version": 1})  # fmt: skip
    await agent.receive_type("task_ack")
    waiting = await operator.submit("next job")

    # when an operator cancels the running one
    await operator.request("task_cancel", task_id=running["task_id"])

    # then the agent is told, and is given the next task at once
    assert (await agent.receive_type("task_cancelled"))["task_id"] == running["task_id"]
    assert (await agent.receive_type("task_assign"))["task_id"] == waiting["task_id"]

    # and the completion the sidecar sends anyway is refused, changing nothing
    await agent.send(task_complete(assign))
    refused = await agent.receive_type("error")
    assert (refused["error"], refused["task_id"]) == (
        "task_complete_failed: invalid_state", running["task_id"],
    )  # fmt: skip
    assert (await operator.get_task(running["task_id"]))["status"] == "cancelled"
    (worker,) = await operator.request("agents_list")
    assert (worker["state"], worker["current_task"]) == ("assigned", waiting["task_id"])
