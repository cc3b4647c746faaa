"""The full task lifecycle over real sockets, as PROTOCOL.md describes it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from conftest import METADATA, AgentMaker

from agentcom.client import OperatorClient
from agentcom.hub.clock import ManualClock
from agentcom.protocol.events import EVENT
from agentcom.server.app import HubServer


async def events_until(
    events: AsyncIterator[dict[str, Any]], name: str, timeout: float = 10
) -> list[dict[str, Any]]:
    """Every event up to and including the first named ``name``; then the stream is closed."""
    seen = []
    async with asyncio.timeout(timeout):
        async for event in events:
            seen.append(event)
            if event.get("event") == name:
                break
    await events.aclose()
    return seen


async def test_task_runs_end_to_end_with_routing_and_execution_metadata(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient, http_url: str
) -> None:
    # given a connected agent and a dashboard subscriber
    agent = await make_agent("worker-1")
    events = operator.watch(["tasks"])
    snapshot = await anext(events)
    assert snapshot["type"] == "snapshot"

    # when a task is submitted
    task = await operator.submit("print the date", complexity_tier="complex")
    assign = await agent.receive_type("task_assign")

    # then it arrives with a full routing decision
    assert assign["task_id"] == task["task_id"]
    assert assign["generation"] == 1
    decision = assign["routing_decision"]
    assert set(decision) == {
        "effective_tier", "target_type", "selected_endpoint", "selected_model",
        "fallback_used", "fallback_reason", "classification_reason", "estimated_cost_tier",
    }  # fmt: skip
    assert decision["target_type"] == "claude"
    assert decision["selected_model"] == "claude-sonnet-4.5"
    assert decision["estimated_cost_tier"] == "api"

    await agent.send({"type": "task_accepted", "task_id": task["task_id"]})
    ack = await agent.receive_type("task_ack")
    assert ack["status"] == "accepted"

    # progress without and with an execution event
    await agent.send({"type": "task_progress", "task_id": task["task_id"], "progress": 10})
    await agent.send(
        {
            "type": "task_progress",
            "task_id": task["task_id"],
            "execution_event": {"event_type": "stdout", "text": "hello", "timestamp": 1},
        }
    )
    await agent.send(
        {"type": "task_complete", "task_id": task["task_id"], "generation": 1, "result": METADATA}
    )
    ack = await agent.receive_type("task_ack")
    assert ack == {
        "type": "task_ack",
        "task_id": task["task_id"],
        "status": "complete",
        "generation": 1,
    }

    seen = await events_until(events, "task_completed")
    names = [event["event"] for event in seen]
    assert names.count("execution_progress") == 1
    assert names.count("task_progress") == 2
    progress = next(e for e in seen if e["event"] == "execution_progress")
    assert progress["execution_event"]["text"] == "hello"
    completed = seen[-1]
    assert completed["execution"]["tokens_in"] == 120
    assert completed["execution"]["model_used"] == "qwen2.5-coder:7b"

    stored = await operator.get_task(task["task_id"])
    assert stored["status"] == "completed"
    assert stored["execution"] == {
        "model_used": "qwen2.5-coder:7b", "tokens_in": 120, "tokens_out": 48,
        "estimated_cost_usd": 0.0, "equivalent_claude_cost_usd": 0.00108, "execution_ms": 1534.0,
    }  # fmt: skip
    assert [entry["status"] for entry in stored["history"]] == [
        "queued", "assigned", "working", "completed",
    ]  # fmt: skip
    stats = await operator.request("stats")
    assert stats["by_model"]["qwen2.5-coder:7b"]["tokens_out"] == 48


async def test_failure_retries_then_dead_letters_and_operator_retry_requeues(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient
) -> None:
    agent = await make_agent()
    task = await operator.submit("flaky", max_retries=1, complexity_tier="complex")
    for expected in ("retried", "dead_letter"):
        assign = await agent.receive_type("task_assign")
        await agent.send(
            {
                "type": "task_failed",
                "task_id": task["task_id"],
                "generation": assign["generation"],
                "reason": "boom",
            }
        )
        ack = await agent.receive_type("task_ack")
        assert ack["status"] == expected
    dead = await operator.get_task(task["task_id"])
    assert dead["status"] == "dead_letter"
    assert dead["last_error"] == "boom"
    assert dead["retry_count"] == 1

    await operator.request("task_retry", task_id=task["task_id"])
    assign = await agent.receive_type("task_assign")
    assert assign["generation"] == 3
    again = await operator.get_task(task["task_id"])
    assert again["retry_count"] == 0


async def test_completion_reporting_failure_is_treated_as_failure(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient
) -> None:
    agent = await make_agent()
    task = await operator.submit("will fail", max_retries=0)
    assign = await agent.receive_type("task_assign")
    await agent.send(
        {
            "type": "task_progress",
            "task_id": task["task_id"],
            "execution_event": {"event_type": "error", "text": "model not found"},
        }
    )
    await agent.send(
        {
            "type": "task_complete",
            "task_id": task["task_id"],
            "generation": assign["generation"],
            "result": {"status": "failed", "output": "", "verification_status": "execution_failed"},
        }
    )
    ack = await agent.receive_type("task_ack")
    assert ack["status"] == "dead_letter"
    stored = await operator.get_task(task["task_id"])
    assert stored["last_error"] == "model not found"


async def test_stale_generation_is_refused_and_changes_nothing(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient, clock
) -> None:
    agent = await make_agent()
    task = await operator.submit("slow to accept")
    first = await agent.receive_type("task_assign")
    clock.advance(61_000)  # past the acceptance timeout
    await agent.send({"type": "ping"})  # the agent itself is alive
    await agent.receive_type("pong")
    await hub.sweep()
    second = await agent.receive_type("task_assign")
    assert second["generation"] == first["generation"] + 1

    await agent.send({"type": "task_complete", "task_id": task["task_id"], "generation": 1})
    error = await agent.receive_type("error")
    assert error["error"] == "task_complete_failed: stale_generation"
    stored = await operator.get_task(task["task_id"])
    assert stored["status"] == "assigned"
    assert stored["generation"] == 2


async def test_rejected_task_goes_to_another_agent(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient
) -> None:
    busy = await make_agent("busy")
    task = await operator.submit("anything")
    assign = await busy.receive_type("task_assign")
    free = await make_agent("free")
    await busy.send({"type": "task_rejected", "task_id": task["task_id"], "reason": "busy"})
    ack = await busy.receive_type("task_ack")
    assert ack["status"] == "requeued"
    reassigned = await free.receive_type("task_assign")
    assert reassigned["task_id"] == assign["task_id"]
    assert reassigned["generation"] == 2


async def test_recovering_sidecar_executed_task_is_reassigned(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient, ws_url: str
) -> None:
    agent = await make_agent("restarter")
    task = await operator.submit("long job")
    await agent.receive_type("task_assign")
    await agent.send({"type": "task_accepted", "task_id": task["task_id"]})
    await agent.receive_type("task_ack")
    await agent.connection.close()  # the sidecar restarts

    again = await make_agent("restarter")
    await again.send(
        {"type": "task_recovering", "task_id": task["task_id"], "last_status": "working"}
    )
    answer = await again.receive_type("task_reassign")
    assert answer["task_id"] == task["task_id"]
    # the requeued task comes straight back with a new generation
    assign = await again.receive_type("task_assign")
    assert assign["generation"] == 2


async def test_reconnecting_agent_keeps_its_task_and_may_complete_it(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient
) -> None:
    agent = await make_agent("flappy")
    task = await operator.submit("keep me")
    assign = await agent.receive_type("task_assign")
    await agent.connection.close()
    again = await make_agent("flappy")
    agents = await operator.request("agents_list")
    assert agents[0]["state"] == "assigned"
    await operator.submit("second task")  # must not go to the busy agent
    await again.send(
        {"type": "task_complete", "task_id": task["task_id"], "generation": assign["generation"]}
    )
    ack = await again.receive_type("task_ack")
    assert ack["status"] == "complete"
    second = await again.receive_type("task_assign")
    assert second["description"] == "second task"


async def test_disconnected_agent_task_is_requeued_after_grace(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient, clock
) -> None:
    gone = await make_agent("gone")
    task = await operator.submit("orphan")
    await gone.receive_type("task_assign")
    presence = operator.watch(["agents"])
    await anext(presence)  # snapshot
    await gone.close()
    async with asyncio.timeout(5):
        async for event in presence:
            if event["event"] == "agent_disconnected":
                break
    await presence.aclose()
    clock.advance(59_000)
    await hub.sweep()
    assert (await operator.get_task(task["task_id"]))["status"] == "assigned"
    clock.advance(2_000)
    await hub.sweep()
    stored = await operator.get_task(task["task_id"])
    assert stored["status"] == "queued"
    assert stored["assigned_to"] is None


async def test_cancel_frees_the_agent_and_tells_it(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient
) -> None:
    agent = await make_agent()
    task = await operator.submit("cancel me")
    await agent.receive_type("task_assign")
    cancelled = await operator.request("task_cancel", task_id=task["task_id"])
    assert cancelled["status"] == "cancelled"
    push = await agent.receive_type("task_cancelled")
    assert push["task_id"] == task["task_id"]
    await agent.send({"type": "task_complete", "task_id": task["task_id"], "generation": 1})
    error = await agent.receive_type("error")
    assert error["error"] == "task_complete_failed: invalid_state"


async def test_every_event_a_busy_hub_publishes_matches_its_documented_model(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient, clock: ManualClock
) -> None:
    # given a subscriber of every topic
    events = operator.watch()
    assert (await anext(events))["type"] == "snapshot"

    # when an agent connects, reports, runs a task through progress to completion, fails
    # another into dead letter, has it retried, sends an invalid frame and leaves, while an
    # operator cancels a task nobody can run
    agent = await make_agent("worker-1")
    await agent.send({"type": "status", "status": "warming up"})
    await agent.send({"type": "resource_report", "cpu_percent": 12.5, "ram_used_bytes": 10})
    clock.advance(10_000)
    await agent.send({"type": "ping"})
    await agent.receive_type("pong")
    done = await operator.submit("print the date", complexity_tier="complex")
    assign = await agent.receive_type("task_assign")
    await agent.send({"type": "task_accepted", "task_id": done["task_id"]})
    await agent.send({"type": "task_progress", "task_id": done["task_id"], "progress": 50})
    await agent.send({"type": "task_progress", "task_id": done["task_id"],
                      "execution_event": {"event_type": "stdout", "text": "hi"}})  # fmt: skip
    await agent.send({"type": "task_complete", "task_id": done["task_id"],
                      "generation": assign["generation"], "result": METADATA})  # fmt: skip
    await agent.receive_type("task_ack")
    await agent.receive_type("task_ack")
    failing = await operator.submit("fail me", complexity_tier="complex", max_retries=0)
    assign = await agent.receive_type("task_assign")
    await agent.send({"type": "task_failed", "task_id": failing["task_id"],
                      "generation": assign["generation"], "error": "boom"})  # fmt: skip
    await agent.receive_type("task_ack")
    stranded = await operator.submit("needs a gpu", needed_capabilities=["gpu"])
    await operator.request("task_cancel", task_id=stranded["task_id"])
    await operator.request("task_retry", task_id=failing["task_id"])
    await agent.receive_type("task_assign")
    await agent.send({"type": "no_such_frame"})
    await agent.receive_type("error")
    await agent.close()

    # then every event, up to the agent's departure, has the shape the models document
    seen = await events_until(events, "agent_disconnected")
    for event in seen:
        EVENT.validate_python(event)
    kinds = {(event["type"], event.get("event")) for event in seen}
    assert {
        ("agent_event", "agent_connected"), ("agent_event", "agent_status"),
        ("agent_event", "agent_resources"), ("agent_event", "agent_seen"),
        ("task_event", "task_submitted"), ("task_event", "task_assigned"),
        ("task_event", "task_accepted"), ("task_event", "task_progress"),
        ("task_event", "execution_progress"), ("task_event", "task_completed"),
        ("task_event", "task_failed"), ("task_event", "task_dead_letter"),
        ("task_event", "task_cancelled"), ("task_event", "task_requeued"),
        ("validation_event", None), ("agent_event", "agent_disconnected"),
    } <= kinds  # fmt: skip
