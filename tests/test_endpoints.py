"""The Ollama endpoint registry over the wire (PROTOCOL.md sections 1 and 2).

Endpoints are registered by operators (``endpoint_add``) or by sidecars (``ollama_url``
in ``identify``, ``ollama_report``), checked over real HTTP against a stand-in Ollama
(tests/ollama_standin.py), and chosen by the router for ``standard`` tasks. Health rounds
are run by the test (``hub.prober.check_all()``); a registration's own background check
is awaited through the ``endpoint_event`` it publishes on topic ``agents``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import AgentMaker, TokenMaker
from ollama_standin import OllamaMaker, OllamaStandin, make_ollama, ollama  # noqa: F401

from agentcom.client import AgentClient, OperatorClient, RequestFailed
from agentcom.config import Settings
from agentcom.hub.clock import ManualClock
from agentcom.server.app import HubServer

UNHEALTHY_AFTER = 3
MODELS = ["qwen2.5-coder:7b", "llama3.2:3b"]

Events = AsyncIterator[dict[str, Any]]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Fast health checks (a stand-in slower than 0.2 s has failed) and no fallback wait."""
    return Settings(
        host="127.0.0.1", port=0, db=tmp_path / "hub.db", log_level="DEBUG",
        fallback_wait_s=0, endpoint_check_timeout_s=0.2,
        endpoint_unhealthy_after=UNHEALTHY_AFTER,
    )  # fmt: skip


@pytest.fixture
async def agent_events(operator: OperatorClient) -> AsyncIterator[Events]:
    """Events on topic ``agents``, subscribed before the test acts (snapshot consumed)."""
    events = operator.watch(["agents"])
    snapshot = await asyncio.wait_for(anext(events), 5)
    assert snapshot["type"] == "snapshot"
    yield events
    await events.aclose()


# --- helpers -----------------------------------------------------------------------------


async def next_event(events: Events, timeout: float = 5.0, **expected: Any) -> dict[str, Any]:
    """The next event whose fields include ``expected`` (others are skipped)."""
    async with asyncio.timeout(timeout):
        async for event in events:
            if all(event.get(key) == value for key, value in expected.items()):
                return event
    raise AssertionError("the event stream ended")


async def endpoint_events_until(
    events: Events, marker: Callable[[dict[str, Any]], bool], timeout: float = 5.0
) -> list[tuple[str, str]]:
    """``(event, endpoint_id)`` of every endpoint event before the first ``marker`` event."""
    seen: list[tuple[str, str]] = []
    async with asyncio.timeout(timeout):
        async for event in events:
            if marker(event):
                return seen
            if event.get("type") == "endpoint_event":
                seen.append((event["event"], event["endpoint_id"]))
    raise AssertionError("the event stream ended")


async def healthy_event(events: Events, endpoint_id: str) -> dict[str, Any]:
    """Wait for ``endpoint_id`` to be reported healthy."""
    return await next_event(
        events, type="endpoint_event", event="endpoint_healthy", endpoint_id=endpoint_id
    )


async def listed(operator: OperatorClient) -> dict[str, dict[str, Any]]:
    """``endpoints_list`` by endpoint id."""
    endpoints = await operator.request("endpoints_list")
    return {endpoint["endpoint_id"]: endpoint for endpoint in endpoints}


async def frames_until_pong(agent: AgentClient) -> list[dict[str, Any]]:
    """Every frame the hub sent the agent before answering a ping sent now."""
    await agent.send({"type": "ping"})
    frames = []
    async with asyncio.timeout(5):
        while (frame := await agent.receive()).get("type") != "pong":
            frames.append(frame)
    return frames


async def add_healthy(
    operator: OperatorClient, events: Events, standin: OllamaStandin, name: str, **serve: Any
) -> dict[str, Any]:
    """Register the stand-in under ``name`` and wait until its first check made it healthy."""
    standin.serve(**serve)
    await operator.request("endpoint_add", url=standin.url, name=name)
    return dict((await healthy_event(events, name))["endpoint"])


# --- registration and routing ------------------------------------------------------------


async def test_operator_endpoint_is_checked_listed_and_serves_standard_tasks(
    hub: HubServer,
    operator: OperatorClient,
    agent_events: Events,
    make_agent: AgentMaker,
    ollama: OllamaStandin,  # noqa: F811
) -> None:
    ollama.serve(models=MODELS)
    added = await operator.request("endpoint_add", url=ollama.url, name="gpu-box")
    assert added["endpoint_id"] == "gpu-box"
    assert added["url"] == ollama.url
    assert added["host_port"] == ollama.host_port
    assert added["source"] == "operator"
    assert added["healthy"] is None  # not checked yet

    # registration triggers a check of its own
    event = await healthy_event(agent_events, "gpu-box")
    assert event["endpoint"]["models"] == MODELS
    assert ollama.requests("/api/tags") == 1

    # a round of checks picks up a changed model list
    ollama.serve(models=["mistral:7b"], loaded=["mistral:7b"])
    await hub.prober.check_all()
    assert ollama.requests("/api/tags") == 2
    entry = (await listed(operator))["gpu-box"]
    assert entry["healthy"] is True
    assert entry["models"] == ["mistral:7b"]
    assert entry["loaded"] == ["mistral:7b"]
    assert entry["failures"] == 0
    assert entry["last_checked"] is not None

    # the same URL again is the same endpoint
    again = await operator.request("endpoint_add", url=f"{ollama.url}/")
    assert again["endpoint_id"] == "gpu-box"
    assert len(await listed(operator)) == 1

    agent = await make_agent("worker")
    await operator.submit("write a function that parses ISO dates", complexity_tier="standard")
    decision = (await agent.receive_type("task_assign"))["routing_decision"]
    assert decision["target_type"] == "ollama"
    assert decision["effective_tier"] == "standard"
    assert decision["selected_endpoint"] == ollama.host_port
    assert decision["selected_model"] == "mistral:7b"
    assert decision["estimated_cost_tier"] == "local"
    assert decision["fallback_used"] is False
    assert decision["fallback_reason"] is None


async def test_identify_with_ollama_url_registers_the_agents_local_endpoint(
    hub: HubServer,
    operator: OperatorClient,
    agent_events: Events,
    make_agent: AgentMaker,
    ollama: OllamaStandin,  # noqa: F811
) -> None:
    ollama.serve(models=MODELS, loaded=["llama3.2:3b"])
    await make_agent("box-1", ollama_url=ollama.url)
    event = await healthy_event(agent_events, "box-1-local")
    assert event["endpoint"]["agent_id"] == "box-1"
    assert event["endpoint"]["source"] == "agent"
    assert event["endpoint"]["loaded"] == ["llama3.2:3b"]

    entry = (await listed(operator))["box-1-local"]
    assert entry["url"] == ollama.url
    assert entry["models"] == MODELS
    agents = {agent["agent_id"]: agent for agent in await operator.request("agents_list")}
    assert agents["box-1"]["ollama_url"] == ollama.url


async def test_ollama_report_registers_the_local_endpoint_and_refuses_a_bad_url(
    hub: HubServer,
    operator: OperatorClient,
    agent_events: Events,
    make_agent: AgentMaker,
    ollama: OllamaStandin,  # noqa: F811
) -> None:
    ollama.serve(models=MODELS)
    agent = await make_agent("box-2")
    assert await listed(operator) == {}

    await agent.send({"type": "ollama_report", "ollama_url": ollama.host_port})  # no scheme
    assert await agent.receive_type("ollama_report_ack") == {
        "type": "ollama_report_ack", "status": "registered",
    }  # fmt: skip
    await healthy_event(agent_events, "box-2-local")
    entry = (await listed(operator))["box-2-local"]
    assert entry["url"] == ollama.url
    assert entry["agent_id"] == "box-2"

    for bad in ("ftp://files.example/ollama", "http://", "localhost:99999", "not a url"):
        await agent.send({"type": "ollama_report", "ollama_url": bad})
        error = await agent.receive_type("error")
        assert error["error"] == "invalid_url", bad
    # nothing changed
    assert (await listed(operator))["box-2-local"]["url"] == ollama.url
    assert len(await listed(operator)) == 1


# --- health ------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["http_500", "garbage", "slow"])
async def test_endpoint_is_unhealthy_after_consecutive_failures_and_healthy_on_success(
    failure: str,
    hub: HubServer,
    operator: OperatorClient,
    agent_events: Events,
    make_agent: AgentMaker,
    ollama: OllamaStandin,  # noqa: F811
) -> None:
    await add_healthy(operator, agent_events, ollama, "flaky", models=MODELS)
    {"http_500": ollama.fail, "garbage": ollama.garbage, "slow": ollama.slow}[failure]()

    for attempt in range(1, UNHEALTHY_AFTER):
        await hub.prober.check_all()
        entry = (await listed(operator))["flaky"]
        assert entry["healthy"] is True, f"unhealthy after {attempt} failures"
        assert entry["failures"] == attempt
        assert entry["last_error"]
    await hub.prober.check_all()
    entry = (await listed(operator))["flaky"]
    assert entry["healthy"] is False
    assert entry["failures"] == UNHEALTHY_AFTER
    await hub.prober.check_all()  # still failing: no new change
    assert (await listed(operator))["flaky"]["healthy"] is False

    ollama.serve(models=MODELS)
    await hub.prober.check_all()
    entry = (await listed(operator))["flaky"]
    assert entry["healthy"] is True
    assert entry["failures"] == 0
    assert entry["last_error"] is None
    await hub.prober.check_all()  # still healthy: no new change

    # an agent connecting marks the end of what the checks published
    await make_agent("marker")
    changes = await endpoint_events_until(
        agent_events, lambda e: e.get("event") == "agent_connected"
    )
    # (the first failure brought an error to show; the same error again is no change)
    assert changes == [
        ("endpoint_updated", "flaky"),
        ("endpoint_unhealthy", "flaky"),
        ("endpoint_healthy", "flaky"),
    ]


async def test_unhealthy_and_model_less_endpoints_are_not_chosen(
    hub: HubServer,
    operator: OperatorClient,
    agent_events: Events,
    make_agent: AgentMaker,
    make_ollama: OllamaMaker,  # noqa: F811
) -> None:
    empty, flaky = make_ollama(), make_ollama()
    model_less = await add_healthy(operator, agent_events, empty, "empty", models=[])
    assert model_less["healthy"] is True and model_less["models"] == []
    await add_healthy(operator, agent_events, flaky, "flaky", models=MODELS)
    flaky.fail()
    for _ in range(UNHEALTHY_AFTER):
        await hub.prober.check_all()
    assert (await listed(operator))["flaky"]["healthy"] is False

    first = await make_agent("first")
    await operator.submit("write a function that parses ISO dates", complexity_tier="standard")
    decision = (await first.receive_type("task_assign"))["routing_decision"]
    assert decision["target_type"] == "claude"
    assert decision["selected_endpoint"] is None
    assert decision["fallback_used"] is True
    assert decision["fallback_reason"] == "no_healthy_ollama_endpoints"

    flaky.serve(models=MODELS)
    await hub.prober.check_all()
    second = await make_agent("second")
    await operator.submit("write a function that parses ISO dates", complexity_tier="standard")
    decision = (await second.receive_type("task_assign"))["routing_decision"]
    assert decision["target_type"] == "ollama"
    assert decision["selected_endpoint"] == flaky.host_port
    assert "(1 candidate," in decision["classification_reason"]


async def test_registering_a_known_url_again_keeps_health_and_models(
    hub: HubServer,
    operator: OperatorClient,
    agent_events: Events,
    make_agent: AgentMaker,
    ollama: OllamaStandin,  # noqa: F811
) -> None:
    ollama.serve(models=MODELS, loaded=["llama3.2:3b"])
    first = await make_agent("box", ollama_url=ollama.url)
    await healthy_event(agent_events, "box-local")
    # from now on a check cannot succeed (nor, failing once, change the endpoint's health)
    ollama.slow()

    await first.close()
    await make_agent("box", ollama_url=ollama.host_port)  # the same endpoint, spelled differently
    entry = (await listed(operator))["box-local"]
    assert entry["healthy"] is True
    assert entry["models"] == MODELS
    assert entry["loaded"] == ["llama3.2:3b"]

    again = await make_agent("box", ollama_url=ollama.url)
    await again.send({"type": "ollama_report", "ollama_url": f"{ollama.url}/"})
    await again.receive_type("ollama_report_ack")
    entry = (await listed(operator))["box-local"]
    assert entry["healthy"] is True
    assert entry["models"] == MODELS


async def test_endpoint_remove_forgets_it(
    hub: HubServer,
    operator: OperatorClient,
    agent_events: Events,
    make_agent: AgentMaker,
    ollama: OllamaStandin,  # noqa: F811
) -> None:
    await add_healthy(operator, agent_events, ollama, "gone-soon", models=MODELS)
    removed = await operator.request("endpoint_remove", endpoint_id="gone-soon")
    assert removed["endpoint_id"] == "gone-soon"
    assert await listed(operator) == {}
    with pytest.raises(RequestFailed) as refused:
        await operator.request("endpoint_remove", endpoint_id="gone-soon")
    assert refused.value.code == "not_found"

    agent = await make_agent()
    await operator.submit("write a function that parses ISO dates", complexity_tier="standard")
    decision = (await agent.receive_type("task_assign"))["routing_decision"]
    assert decision["target_type"] == "claude"
    assert decision["fallback_reason"] == "no_healthy_ollama_endpoints"


async def test_adding_and_removing_an_endpoint_is_published_with_its_hosts_load(
    hub: HubServer,
    operator: OperatorClient,
    agent_events: Events,
    make_agent: AgentMaker,
    ollama: OllamaStandin,  # noqa: F811
) -> None:
    # given a sidecar on the endpoint's host (loopback) that reported its load
    agent = await make_agent("box-1")
    report = {"type": "resource_report", "cpu_percent": 81.5, "ram_total_bytes": 8 * 1024**3}
    await agent.send(report)
    await agent.send({"type": "ping"})
    await agent.receive_type("pong")  # the hub has handled the report

    # when an operator adds an endpoint on that host, then removes it
    ollama.serve(models=MODELS)
    await operator.request("endpoint_add", url=ollama.url, name="shared")
    added = await next_event(agent_events, type="endpoint_event", event="endpoint_added")
    listed_load = (await listed(operator))["shared"]["load"]
    await operator.request("endpoint_remove", endpoint_id="shared")
    removed = await next_event(agent_events, type="endpoint_event", event="endpoint_removed")

    # then dashboards heard of both, each with the endpoint and the load routing sees
    assert added["endpoint"]["endpoint_id"] == removed["endpoint_id"] == "shared"
    assert added["endpoint"]["load"]["cpu_percent"] == 81.5
    assert listed_load is not None and listed_load["ram_total_bytes"] == 8 * 1024**3
    assert removed["endpoint"]["url"] == ollama.url


async def test_invalid_endpoint_url_is_refused(hub: HubServer, operator: OperatorClient) -> None:
    for bad in ("ftp://files.example", "http://:80", "host:notaport"):
        with pytest.raises(RequestFailed) as refused:
            await operator.request("endpoint_add", url=bad)
        assert refused.value.code == "invalid_url", bad
    assert await listed(operator) == {}


async def test_viewer_tokens_may_list_but_not_change_endpoints(
    hub: HubServer,
    http_url: str,
    operator: OperatorClient,
    make_token: TokenMaker,
    agent_events: Events,
    ollama: OllamaStandin,  # noqa: F811
) -> None:
    await add_healthy(operator, agent_events, ollama, "kept", models=MODELS)
    async with OperatorClient(http_url, make_token("watcher", "viewer")) as viewer:
        assert [e["endpoint_id"] for e in await viewer.request("endpoints_list")] == ["kept"]
        with pytest.raises(RequestFailed) as refused:
            await viewer.request("endpoint_add", url="http://127.0.0.1:1", name="sneaky")
        assert refused.value.code == "forbidden"
        with pytest.raises(RequestFailed) as refused:
            await viewer.request("endpoint_remove", endpoint_id="kept")
        assert refused.value.code == "forbidden"
    assert list(await listed(operator)) == ["kept"]


# --- persistence -------------------------------------------------------------------------


async def test_endpoints_survive_a_hub_restart(
    settings: Settings,
    clock: ManualClock,
    make_token: TokenMaker,
    make_ollama: OllamaMaker,  # noqa: F811
) -> None:
    served, local = make_ollama(), make_ollama()
    served.serve(models=MODELS)
    local.serve(models=["llama3.2:3b"])
    admin = make_token("ops", "admin")
    agent_token = make_token("box")

    async def run_hub(action: Callable[[HubServer, OperatorClient], Any]) -> Any:
        server = HubServer(settings, clock=clock, run_sweeps=False)
        await server.start()
        try:
            async with OperatorClient(f"http://127.0.0.1:{server.port}", admin) as operator:
                return await action(server, operator)
        finally:
            await server.stop()

    async def register(server: HubServer, operator: OperatorClient) -> None:
        await operator.request("endpoint_add", url=served.url, name="served")
        await operator.request("endpoint_add", url="http://127.0.0.1:9", name="doomed")
        agent = AgentClient(
            f"ws://127.0.0.1:{server.port}/ws", "box", agent_token, heartbeat_s=None
        )
        await agent.connect()
        await agent.send({"type": "ollama_report", "ollama_url": local.url})
        await agent.receive_type("ollama_report_ack")
        await agent.close()
        await operator.request("endpoint_remove", endpoint_id="doomed")

    async def restored(server: HubServer, operator: OperatorClient) -> dict[str, dict[str, Any]]:
        before = await listed(operator)
        await server.prober.check_all()
        after = await listed(operator)
        return {"before": before, "after": after}

    await run_hub(register)
    state = await run_hub(restored)
    before, after = state["before"], state["after"]
    assert sorted(before) == ["box-local", "served"]
    assert before["served"]["url"] == served.url
    assert before["served"]["source"] == "operator"
    assert before["box-local"]["url"] == local.url
    assert before["box-local"]["source"] == "agent"
    assert before["box-local"]["agent_id"] == "box"
    assert after["served"]["healthy"] is True
    assert after["served"]["models"] == MODELS
    assert after["box-local"]["models"] == ["llama3.2:3b"]
