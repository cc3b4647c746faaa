"""``agentcom task route``, ``agentcom endpoints`` and ``agentcom channel`` as an operator runs
them: real ``python -m agentcom.cli`` processes against a hub process, with a stand-in
Ollama (tests/ollama_standin.py) for the endpoint.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hubprocess import CliResult, HubProcess, run_cli_async, running_hub
from ollama_standin import OllamaStandin, make_ollama, ollama  # noqa: F401

from agentcom.client import AgentClient, OperatorClient

MODELS = ["qwen2.5-coder:7b", "llama3.2:3b"]


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    """``agentcom serve`` with the default 5 s wait for a routing target."""
    with running_hub(tmp_path, env={"AGENTCOM_FALLBACK_WAIT_S": "5"}) as process:
        yield process


@pytest.fixture
def admin_token(hub: HubProcess) -> str:
    return hub.make_token("ops", "admin")


@pytest.fixture
def admin(hub: HubProcess, admin_token: str) -> list[str]:
    """``--hub URL --token T`` with an admin token."""
    return hub.operator_args(admin_token)


@pytest.fixture
async def agent_events(hub: HubProcess, admin_token: str) -> AsyncIterator[AsyncIterator[Any]]:
    """Events on topic ``agents`` from the hub process (snapshot consumed)."""
    async with OperatorClient(hub.http_url, admin_token) as operator:
        events = operator.watch(["agents"])
        assert (await asyncio.wait_for(anext(events), 10))["type"] == "snapshot"
        yield events
        await events.aclose()


async def cli(*args: str) -> CliResult:
    return await run_cli_async(*args, timeout=20)


def succeeded(result: CliResult) -> str:
    assert result.returncode == 0, result
    return result.stdout


async def test_endpoints_add_list_remove_and_route_to_the_endpoint(
    hub: HubProcess,
    admin: list[str],
    agent_events: AsyncIterator[Any],
    ollama: OllamaStandin,  # noqa: F811
) -> None:
    ollama.serve(models=MODELS)
    assert succeeded(await cli("endpoints", "add", ollama.url, "--name", "gpu-box", *admin)) == (
        "gpu-box\n"
    )
    async with asyncio.timeout(10):
        async for event in agent_events:
            if event.get("event") == "endpoint_healthy" and event["endpoint_id"] == "gpu-box":
                break

    header, *lines = succeeded(await cli("endpoints", *admin)).splitlines()
    assert header.split() == ["ID", "URL", "STATE", "MODELS", "LAST", "ERROR"]
    assert len(lines) == 1
    assert lines[0].split() == ["gpu-box", ollama.url, "healthy", ",".join(MODELS), "-"]
    listed = json.loads(succeeded(await cli("endpoints", "--json", *admin)))
    assert [(e["endpoint_id"], e["healthy"], e["models"]) for e in listed] == [
        ("gpu-box", True, MODELS),
    ]  # fmt: skip

    out = succeeded(await cli("task", "route", "write a date parser", "--complexity", "standard",
                              *admin))  # fmt: skip
    assert out.splitlines()[0] == (
        f"tier standard -> ollama  endpoint {ollama.host_port}  model {MODELS[0]}  cost tier local"
    )
    assert "viable endpoints: 1" in out
    assert "fallback" not in out and "note:" not in out

    viewer = hub.operator_args(hub.make_token("watcher", "viewer"))
    refused = await cli("endpoints", "add", "http://127.0.0.1:1", *viewer)
    assert refused.returncode == 1
    assert "forbidden" in refused.stderr

    assert succeeded(await cli("endpoints", "remove", "gpu-box", *admin)) == "removed gpu-box\n"
    assert succeeded(await cli("endpoints", *admin)) == "no endpoints\n"
    missing = await cli("endpoints", "remove", "gpu-box", *admin)
    assert missing.returncode == 1
    assert "not_found" in missing.stderr


async def test_task_route_explains_the_decision_and_queues_nothing(
    hub: HubProcess, admin: list[str]
) -> None:
    out = succeeded(await cli("task", "route", "write a date parser", "--complexity", "standard",
                              *admin))  # fmt: skip
    lines = out.splitlines()
    assert lines[0] == "tier complex -> claude  endpoint -  model claude-sonnet-4.5  cost tier api"
    assert "fallback: no_healthy_ollama_endpoints" in lines
    assert "viable endpoints: 0" in lines
    assert any(line.startswith("note: no_healthy_ollama_endpoints") and "5 s" in line
               for line in lines)  # fmt: skip

    hints = [arg for n in range(5) for arg in ("--file-hint", f"src/module_{n}.py")]
    preview = json.loads(succeeded(await cli("task", "route", "refactor the module", *hints,
                                             "--json", *admin)))  # fmt: skip
    assert preview["complexity"]["source"] == "inferred"
    assert preview["complexity"]["effective_tier"] == "complex"
    assert preview["routing_decision"]["target_type"] == "claude"
    assert preview["routing_decision"]["fallback_used"] is False
    assert "5 file hints" in preview["routing_decision"]["classification_reason"]
    assert preview["would_wait"] is None

    unknown_tier = ["--complexity", "unknown", "--json", *admin]
    unknown = json.loads(succeeded(await cli("task", "route", "refactor it", *unknown_tier)))
    assert (unknown["complexity"]["source"], unknown["complexity"]["effective_tier"]) == (
        "default", "standard",
    )  # fmt: skip

    assert json.loads(succeeded(await cli("task", "list", "--json", *admin))) == []


async def test_channel_create_and_list(hub: HubProcess, admin: list[str]) -> None:
    assert succeeded(await cli("channel", "create", "builds", "--description", "CI results",
                               *admin)) == "builds\n"  # fmt: skip
    assert succeeded(await cli("channel", "create", "alerts", *admin)) == "alerts\n"
    duplicate = await cli("channel", "create", "builds", *admin)
    assert duplicate.returncode == 1
    assert "already_exists" in duplicate.stderr

    header, *rows = succeeded(await cli("channel", "list", *admin)).splitlines()
    assert header.split() == ["NAME", "SUBSCRIBERS", "LAST", "SEQ", "DESCRIPTION"]
    lines = {line.split()[0]: line.split() for line in rows}
    assert sorted(lines) == ["alerts", "builds"]
    assert lines["builds"] == ["builds", "0", "0", "CI", "results"]
    assert lines["alerts"] == ["alerts", "0", "0", "-"]
    channels = json.loads(succeeded(await cli("channel", "list", "--json", *admin)))
    assert {c["name"]: c["description"] for c in channels} == {
        "alerts": None,
        "builds": "CI results",
    }


async def test_endpoints_approve_lets_an_agents_endpoint_serve_everyone(
    hub: HubProcess,
    admin: list[str],
    ollama: OllamaStandin,  # noqa: F811
) -> None:
    # given an agent that reported its own Ollama server
    ollama.serve(models=MODELS)
    agent = AgentClient(
        hub.ws_url, "box", hub.make_token("box"), heartbeat_s=None, ollama_url=ollama.url
    )
    await agent.connect()
    try:
        listed = json.loads(succeeded(await cli("endpoints", "--json", *admin)))
        assert [(e["endpoint_id"], e["approved"]) for e in listed] == [("box-local", False)]

        # when an admin approves it by URL; a viewer may not
        viewer = hub.operator_args(hub.make_token("watcher", "viewer"))
        refused = await cli("endpoints", "approve", ollama.url, *viewer)
        approved = await cli("endpoints", "approve", ollama.url, *admin)

        # then it is approved, and unknown endpoints are named in one line
        assert refused.returncode != 0 and "forbidden" in refused.stderr
        assert succeeded(approved) == "approved box-local\n"
        listed = json.loads(succeeded(await cli("endpoints", "--json", *admin)))
        assert [(e["endpoint_id"], e["approved"]) for e in listed] == [("box-local", True)]
        missing = await cli("endpoints", "approve", "nowhere", *admin)
        assert missing.returncode != 0 and "nowhere" in missing.stderr
    finally:
        await agent.close()
