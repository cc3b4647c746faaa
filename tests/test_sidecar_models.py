"""``agentcom sidecar`` running model tasks: Ollama's chat API and the Claude Messages API,
against stand-in HTTP servers, through a real hub and a real sidecar process."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from anthropic_standin import MessagesStandin, messages_api  # noqa: F401
from ollama_standin import OllamaMaker, OllamaStandin, make_ollama, ollama  # noqa: F401
from realsidecar import SidecarMaker, Streamed, make_sidecar  # noqa: F401

from agentcom.client import OperatorClient
from agentcom.server.app import HubServer
from agentcom.sidecar.claude import NO_KEY
from agentcom.sidecar.prices import claude_cost_usd

MODEL = "qwen2.5-coder:7b"


async def serve_ollama(hub: HubServer, operator: OperatorClient, standin: OllamaStandin) -> None:
    """Register ``standin`` with the hub and have it checked healthy, with :data:`MODEL`."""
    standin.serve(models=[MODEL])
    await operator.request("endpoint_add", url=standin.url, name="gpu-box")
    await hub.prober.check_all()


async def run_task(operator: OperatorClient, tier: str, **fields: Any) -> dict[str, Any]:
    """Submit a task of ``tier`` and wait until it is completed or dead."""
    task = await operator.submit("write a haiku about queues", complexity_tier=tier, **fields)
    return await operator.wait_task(task["task_id"], timeout_s=15)


async def test_an_ollama_task_streams_tokens_and_reports_ollamas_counts(
    hub: HubServer,
    operator: OperatorClient,
    make_sidecar: SidecarMaker,  # noqa: F811
    ollama: OllamaStandin,  # noqa: F811
) -> None:
    await serve_ollama(hub, operator, ollama)
    pieces = [f"word{number} " for number in range(300)]
    ollama.chat(pieces, prompt_eval_count=26, eval_count=298)
    sidecar = make_sidecar()
    await sidecar.event("connected")

    async with Streamed(operator) as streamed:
        task = await operator.submit("write a haiku about queues", complexity_tier="standard")
        streamed.task_id = task["task_id"]
        task = await operator.wait_task(task["task_id"], timeout_s=15)
        await streamed.all_accounted(len("".join(pieces)))

    assert task["status"] == "completed"
    assert task["routing_decision"]["target_type"] == "ollama"
    assert task["result"]["output"] == "".join(pieces)
    assert task["execution"] == {
        "model_used": MODEL,
        "tokens_in": 26,
        "tokens_out": 298,
        "estimated_cost_usd": 0.0,
        "equivalent_claude_cost_usd": claude_cost_usd("claude-sonnet-4.5", 26, 298),
        "execution_ms": task["execution"]["execution_ms"],
    }
    assert task["tokens_used"] == 324
    request = ollama.chat_requests[-1]
    assert request["model"] == MODEL
    assert request["stream"] is True
    assert request["messages"] == [{"role": "user", "content": "write a haiku about queues"}]
    # Coalesced: far fewer events than pieces, each within the hub's text limit, the
    # answer's start streamed as it came, and what was left out counted.
    assert all(event["event_type"] == "token" for event in streamed.events)
    assert len(streamed.events) < 100
    assert all(len(event["text"]) <= 2000 for event in streamed.events)
    assert "".join(pieces).startswith(streamed.events[0]["text"])
    assert streamed.accounted_chars() == len("".join(pieces))


async def test_an_ollama_that_dies_mid_stream_fails_the_run_with_the_reason(
    hub: HubServer,
    operator: OperatorClient,
    make_sidecar: SidecarMaker,  # noqa: F811
    ollama: OllamaStandin,  # noqa: F811
) -> None:
    await serve_ollama(hub, operator, ollama)
    ollama.chat(["one ", "two ", "three "], die_after=2)
    make_sidecar()

    task = await run_task(operator, "standard", max_retries=0)

    assert task["status"] == "dead_letter"
    assert task["last_error"] == f"ollama at {ollama.url} ended its stream before it was done"


async def test_an_unreachable_ollama_fails_the_run_with_the_reason(
    hub: HubServer,
    operator: OperatorClient,
    make_sidecar: SidecarMaker,  # noqa: F811
    ollama: OllamaStandin,  # noqa: F811
) -> None:
    await serve_ollama(hub, operator, ollama)
    ollama.stop()  # the hub still believes it healthy
    make_sidecar()

    task = await run_task(operator, "standard", max_retries=0)

    assert task["status"] == "dead_letter"
    assert task["last_error"].startswith(f"ollama at {ollama.url} failed: ConnectError")


async def test_a_claude_task_streams_and_reports_real_tokens_and_cost(
    operator: OperatorClient,
    make_sidecar: SidecarMaker,  # noqa: F811
    messages_api: MessagesStandin,  # noqa: F811
) -> None:
    messages_api.reply(["Queues ", "wait ", "in ", "line."], input_tokens=1200, output_tokens=480)
    env = {"ANTHROPIC_API_KEY": "sk-test-key", "ANTHROPIC_BASE_URL": messages_api.url}
    make_sidecar(env=env)

    task = await run_task(operator, "complex")

    assert task["status"] == "completed"
    assert task["routing_decision"]["target_type"] == "claude"
    assert task["result"]["output"] == "Queues wait in line."
    cost = 1200 * 3 / 1e6 + 480 * 15 / 1e6
    execution = task["execution"]
    assert execution["model_used"] == "claude-sonnet-4-5"
    assert (execution["tokens_in"], execution["tokens_out"]) == (1200, 480)
    assert execution["estimated_cost_usd"] == pytest.approx(cost)
    assert execution["equivalent_claude_cost_usd"] == pytest.approx(cost)
    headers, body = messages_api.requests[-1]
    assert headers["x-api-key"] == "sk-test-key"
    assert headers["anthropic-version"] == "2023-06-01"
    assert body["model"] == "claude-sonnet-4-5"  # the hub's claude-sonnet-4.5, as the API spells it
    assert body["stream"] is True
    assert body["max_tokens"] == 4096


async def test_a_claude_task_without_an_api_key_fails_at_once_and_calls_nothing(
    operator: OperatorClient,
    make_sidecar: SidecarMaker,  # noqa: F811
    messages_api: MessagesStandin,  # noqa: F811
) -> None:
    make_sidecar(env={"ANTHROPIC_BASE_URL": messages_api.url})

    task = await run_task(operator, "complex", max_retries=0)

    assert task["status"] == "dead_letter"
    assert task["last_error"] == NO_KEY
    assert messages_api.requests == []


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ({"status": 529}, "answered HTTP 529: "),
        ({"error_after": 1}, "failed: overloaded_error: Overloaded"),
    ],
)
async def test_a_claude_error_fails_the_run_with_the_reason(
    operator: OperatorClient,
    make_sidecar: SidecarMaker,  # noqa: F811
    messages_api: MessagesStandin,  # noqa: F811
    reply: dict[str, Any],
    error: str,
) -> None:
    messages_api.reply(["a ", "b "], **reply)
    make_sidecar(env={"ANTHROPIC_API_KEY": "k", "ANTHROPIC_BASE_URL": messages_api.url})

    task = await run_task(operator, "complex", max_retries=0)

    assert task["status"] == "dead_letter"
    assert task["last_error"].startswith(f"the Claude API at {messages_api.url} {error}")


async def test_a_cancelled_ollama_task_aborts_its_request_at_once(
    hub: HubServer,
    operator: OperatorClient,
    make_sidecar: SidecarMaker,  # noqa: F811
    ollama: OllamaStandin,  # noqa: F811
) -> None:
    await serve_ollama(hub, operator, ollama)
    ollama.chat(["thinking "], hold=True)
    sidecar = make_sidecar()

    async with Streamed(operator) as streamed:
        task = await operator.submit("write a haiku about queues", complexity_tier="standard")
        streamed.task_id = task["task_id"]
        await streamed.text_matching("thinking")
        await operator.request("task_cancel", task_id=task["task_id"])
        await sidecar.event("cancelled", task_id=task["task_id"])

    assert await asyncio.to_thread(ollama.chat_abandoned.wait, 10)
