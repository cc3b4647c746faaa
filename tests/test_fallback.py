"""Routing over the wire: waiting for a target, falling back, dry runs and endpoint scoring.

PROTOCOL.md section 2: ``standard`` goes to the best healthy Ollama endpoint with a model;
when there is none the task waits (``fallback_wait_s``, 5 s here, on the ManualClock) and
then escalates to ``claude`` with ``fallback_used``. Endpoints are real HTTP stand-ins
(tests/ollama_standin.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import AgentMaker, TokenMaker
from ollama_standin import OllamaMaker, OllamaStandin, make_ollama, ollama  # noqa: F401
from websockets.asyncio.client import connect

from agentcom.client import AgentClient, OperatorClient, RequestFailed
from agentcom.config import Settings
from agentcom.hub.auth import hash_token, new_token
from agentcom.hub.clock import ManualClock
from agentcom.server.app import HubServer
from agentcom.store.tokens import save_token

WAIT_MS = 5_000
NO_ENDPOINTS = "no_healthy_ollama_endpoints"
STANDARD = "write a function that parses ISO dates"
MODELS = ["qwen2.5-coder:7b", "llama3.2:3b"]

Events = AsyncIterator[dict[str, Any]]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The default 5 s wait for a target; fast health checks."""
    return Settings(
        host="127.0.0.1", port=0, db=tmp_path / "hub.db", log_level="DEBUG",
        fallback_wait_s=WAIT_MS / 1000, endpoint_check_timeout_s=0.2,
    )  # fmt: skip


@pytest.fixture
async def agent_events(operator: OperatorClient) -> AsyncIterator[Events]:
    """Events on topic ``agents`` (snapshot consumed)."""
    events = operator.watch(["agents"])
    assert (await asyncio.wait_for(anext(events), 5))["type"] == "snapshot"
    yield events
    await events.aclose()


# --- helpers -----------------------------------------------------------------------------


async def frames_until_pong(agent: AgentClient) -> list[dict[str, Any]]:
    """Every frame the hub sent the agent before answering a ping sent now."""
    await agent.send({"type": "ping"})
    frames = []
    async with asyncio.timeout(5):
        while (frame := await agent.receive()).get("type") != "pong":
            frames.append(frame)
    return frames


async def assert_not_assigned(agent: AgentClient) -> None:
    """The hub has pushed no task to the agent (so far)."""
    types = [frame["type"] for frame in await frames_until_pong(agent)]
    assert "task_assign" not in types


async def healthy(events: Events, endpoint_id: str) -> dict[str, Any]:
    """Wait for ``endpoint_id`` to be reported healthy; its snapshot."""
    async with asyncio.timeout(5):
        async for event in events:
            if event.get("event") == "endpoint_healthy" and event["endpoint_id"] == endpoint_id:
                return dict(event["endpoint"])
    raise AssertionError("the event stream ended")


async def add_endpoint(
    operator: OperatorClient, events: Events, standin: OllamaStandin, name: str, **serve: Any
) -> None:
    """Register a stand-in serving ``serve`` and wait until it is healthy."""
    standin.serve(**serve)
    await operator.request("endpoint_add", url=standin.url, name=name)
    await healthy(events, name)


async def report_load(agent: AgentClient, ratio: float) -> None:
    """A resource report with CPU, RAM and VRAM all at ``ratio``; processed when this returns."""
    await agent.send(
        {
            "type": "resource_report",
            "cpu_percent": ratio * 100,
            "ram_used_bytes": int(ratio * 64e9),
            "ram_total_bytes": int(64e9),
            "vram_used_bytes": int(ratio * 24e9),
            "vram_total_bytes": int(24e9),
            "timestamp": 1_700_000_000_000,
            "agent_id": agent.agent_id,
        }
    )
    await frames_until_pong(agent)  # resource_report has no reply: the pong orders it


async def route(operator: OperatorClient, description: str, **task: Any) -> dict[str, Any]:
    """The hub's dry-run routing (``task_route``) of a task."""
    preview: dict[str, Any] = await operator.request(
        "task_route", task={"description": description, **task}
    )
    return preview


# --- waiting and falling back ------------------------------------------------------------


async def test_standard_task_waits_for_an_endpoint_then_falls_back_to_claude(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient, clock: ManualClock
) -> None:
    agent = await make_agent()
    task = await operator.submit(STANDARD, complexity_tier="standard")
    await assert_not_assigned(agent)
    waiting = await operator.get_task(task["task_id"])
    assert waiting["status"] == "queued"
    assert NO_ENDPOINTS in waiting["waiting_reason"]

    clock.advance(WAIT_MS - 1)
    await hub.sweep()
    await assert_not_assigned(agent)

    clock.advance(1)
    await hub.sweep()
    assign = await agent.receive_type("task_assign")
    assert assign["task_id"] == task["task_id"]
    decision = assign["routing_decision"]
    assert decision["fallback_used"] is True
    assert decision["fallback_reason"] == NO_ENDPOINTS
    assert decision["target_type"] == "claude"
    assert decision["effective_tier"] == "complex"
    assert decision["selected_model"] == "claude-sonnet-4.5"
    assert decision["selected_endpoint"] is None
    assert decision["estimated_cost_tier"] == "api"
    assert "escalated standard -> complex" in decision["classification_reason"]
    assert (
        assign["complexity"]["effective_tier"] == "standard"
    )  # what the task is, not where it ran

    stored = await operator.get_task(task["task_id"])
    assert stored["status"] == "assigned"
    assert stored["waiting_reason"] is None
    assert stored["routing_decision"] == decision


async def test_endpoint_turning_healthy_during_the_wait_releases_the_task_to_ollama(
    hub: HubServer,
    make_agent: AgentMaker,
    operator: OperatorClient,
    ollama: OllamaStandin,  # noqa: F811
) -> None:
    ollama.fail()
    await operator.request("endpoint_add", url=ollama.url, name="recovering")
    await ollama.wait_for_requests(1)  # its first check has been answered (500)
    agent = await make_agent()
    task = await operator.submit(STANDARD, complexity_tier="standard")
    await assert_not_assigned(agent)

    ollama.serve(models=MODELS)
    await hub.prober.check_all()  # no time has passed on the hub's clock
    assign = await agent.receive_type("task_assign")
    assert assign["task_id"] == task["task_id"]
    decision = assign["routing_decision"]
    assert decision["target_type"] == "ollama"
    assert decision["effective_tier"] == "standard"
    assert decision["selected_endpoint"] == ollama.host_port
    assert decision["selected_model"] in MODELS
    assert decision["fallback_used"] is False
    assert decision["fallback_reason"] is None


async def test_endpoint_gaining_a_model_during_the_wait_releases_the_task(
    hub: HubServer,
    make_agent: AgentMaker,
    operator: OperatorClient,
    agent_events: Events,
    ollama: OllamaStandin,  # noqa: F811
) -> None:
    await add_endpoint(operator, agent_events, ollama, "pulling", models=[])  # healthy, no model
    agent = await make_agent()
    await operator.submit(STANDARD, complexity_tier="standard")
    await assert_not_assigned(agent)

    ollama.serve(models=["qwen2.5-coder:7b"])  # the pull finished
    await hub.prober.check_all()
    decision = (await agent.receive_type("task_assign"))["routing_decision"]
    assert decision["target_type"] == "ollama"
    assert decision["selected_model"] == "qwen2.5-coder:7b"
    assert decision["fallback_used"] is False


async def test_trivial_prose_is_routed_as_standard_and_only_shell_commands_go_to_the_sidecar(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient, clock: ManualClock
) -> None:
    prose_runner = await make_agent("prose-runner", capabilities=["prose"])
    shell_runner = await make_agent("shell-runner", capabilities=["shell"])
    prose = await operator.submit(
        "fix the typo in the readme", complexity_tier="trivial", needed_capabilities=["prose"]
    )
    shell = await operator.submit(
        "bump version", complexity_tier="trivial", needed_capabilities=["shell"],
        metadata={"shell_command": "make bump-version"},
    )  # fmt: skip

    # with a command: straight to the sidecar, no endpoint needed
    assign = await shell_runner.receive_type("task_assign")
    assert assign["task_id"] == shell["task_id"]
    decision = assign["routing_decision"]
    assert decision["target_type"] == "sidecar"
    assert decision["effective_tier"] == "trivial"
    assert decision["estimated_cost_tier"] == "free"
    assert decision["fallback_used"] is False

    # prose is never sent to the sidecar: it waits for an endpoint like any standard task
    await assert_not_assigned(prose_runner)
    assert NO_ENDPOINTS in (await operator.get_task(prose["task_id"]))["waiting_reason"]
    clock.advance(WAIT_MS)
    await hub.sweep()
    decision = (await prose_runner.receive_type("task_assign"))["routing_decision"]
    assert decision["target_type"] == "claude"
    assert "no metadata.shell_command, so routed as standard" in decision["classification_reason"]
    assert "escalated standard -> complex" in decision["classification_reason"]


async def test_trivial_prose_goes_to_ollama_when_an_endpoint_is_healthy(
    hub: HubServer,
    make_agent: AgentMaker,
    operator: OperatorClient,
    agent_events: Events,
    ollama: OllamaStandin,  # noqa: F811
) -> None:
    await add_endpoint(operator, agent_events, ollama, "local", models=MODELS)
    agent = await make_agent()
    await operator.submit("fix the typo in the readme")  # inferred trivial, no command
    assign = await agent.receive_type("task_assign")
    assert assign["complexity"]["effective_tier"] == "trivial"
    decision = assign["routing_decision"]
    assert decision["effective_tier"] == "standard"
    assert decision["target_type"] == "ollama"
    assert decision["selected_endpoint"] == ollama.host_port
    assert decision["fallback_used"] is False
    assert "no metadata.shell_command, so routed as standard" in decision["classification_reason"]


async def test_complex_tasks_never_wait(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient
) -> None:
    first, second = await make_agent("first"), await make_agent("second")
    explicit = await operator.submit("print the date", complexity_tier="complex")
    inferred = await operator.submit(
        "refactor the authentication layer and fix the security vulnerability in the protocol"
    )
    assigns = {}
    for agent in (first, second):
        assign = await agent.receive_type("task_assign")
        assigns[assign["task_id"]] = assign
    assert set(assigns) == {explicit["task_id"], inferred["task_id"]}
    for assign in assigns.values():
        decision = assign["routing_decision"]
        assert decision["target_type"] == "claude"
        assert decision["effective_tier"] == "complex"
        assert decision["fallback_used"] is False
        assert decision["fallback_reason"] is None
    assert (
        "inferred: complex"
        in assigns[inferred["task_id"]]["routing_decision"]["classification_reason"]
    )


async def test_a_queued_task_says_why_it_waits(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient
) -> None:
    task = await operator.submit("render", complexity_tier="complex", needed_capabilities=["gpu"])
    assert (await operator.get_task(task["task_id"]))["waiting_reason"] == "no agent is connected"

    await make_agent("cpu-only", capabilities=["python"])
    reason = (await operator.get_task(task["task_id"]))["waiting_reason"]
    assert reason == "no connected agent has the capabilities gpu"

    gpu = await make_agent("gpu-box", capabilities=["gpu"])
    assert (await gpu.receive_type("task_assign"))["task_id"] == task["task_id"]
    assert (await operator.get_task(task["task_id"]))["waiting_reason"] is None
    second = await operator.submit(
        "render more", complexity_tier="complex", needed_capabilities=["gpu"]
    )
    assert (await operator.get_task(second["task_id"]))["waiting_reason"] == (
        "all 1 capable agents are busy"
    )


# --- dry runs ----------------------------------------------------------------------------


async def test_task_route_is_a_dry_run(
    hub: HubServer,
    make_agent: AgentMaker,
    operator: OperatorClient,
    agent_events: Events,
    ollama: OllamaStandin,  # noqa: F811
) -> None:
    agent = await make_agent()
    before = await operator.request("stats")

    preview = await route(operator, STANDARD, complexity_tier="standard")
    decision = preview["routing_decision"]
    assert decision["target_type"] == "claude"
    assert decision["fallback_used"] is True
    assert decision["fallback_reason"] == NO_ENDPOINTS
    assert preview["viable_endpoints"] == 0
    assert NO_ENDPOINTS in preview["would_wait"]
    assert "5 s" in preview["would_wait"]
    assert preview["complexity"]["effective_tier"] == "standard"

    hints = [f"src/m{n}.py" for n in range(5)]
    complex_preview = await route(operator, "refactor the module", file_hints=hints)
    assert complex_preview["routing_decision"]["target_type"] == "claude"
    assert complex_preview["routing_decision"]["fallback_used"] is False
    assert complex_preview["would_wait"] is None
    assert "5 file hints" in complex_preview["routing_decision"]["classification_reason"]

    await add_endpoint(operator, agent_events, ollama, "local", models=MODELS)
    preview = await route(operator, STANDARD, complexity_tier="standard")
    assert preview["routing_decision"]["target_type"] == "ollama"
    assert preview["routing_decision"]["selected_endpoint"] == ollama.host_port
    assert preview["viable_endpoints"] == 1
    assert preview["would_wait"] is None

    # a tier given as unknown runs as standard, whatever the text suggests
    unknown = await route(operator, "refactor the module", complexity_tier="unknown")
    assert unknown["complexity"]["effective_tier"] == "standard"
    assert unknown["complexity"]["source"] == "default"
    assert unknown["routing_decision"]["target_type"] == "ollama"
    assert unknown["routing_decision"]["classification_reason"].startswith("default: standard")

    # nothing was queued, assigned or counted
    after = await operator.request("stats")
    assert after["queue_depth"] == before["queue_depth"] == 0
    assert after["by_status"] == before["by_status"]
    assert await operator.request("task_list") == []
    await assert_not_assigned(agent)


# --- endpoint scoring --------------------------------------------------------------------


async def test_the_least_loaded_hosts_endpoint_is_chosen(
    hub: HubServer,
    make_agent: AgentMaker,
    operator: OperatorClient,
    agent_events: Events,
    make_ollama: OllamaMaker,  # noqa: F811
) -> None:
    busy_ollama, calm_ollama = make_ollama(), make_ollama()
    for standin in (busy_ollama, calm_ollama):
        standin.serve(models=MODELS)
    # on a tie the greater endpoint id wins, so the busy host would win without load figures
    busy = await make_agent("zz-busy", ollama_url=busy_ollama.url)
    await healthy(agent_events, "zz-busy-local")
    calm = await make_agent("aa-calm", ollama_url=calm_ollama.url)
    await healthy(agent_events, "aa-calm-local")
    await report_load(busy, 0.9)
    await report_load(calm, 0.1)
    for endpoint_id in ("zz-busy-local", "aa-calm-local"):  # agents' endpoints serve others
        await operator.request("endpoint_approve", endpoint=endpoint_id)  # once approved

    worker = await make_agent("worker", capabilities=["runner"])
    await operator.submit(STANDARD, complexity_tier="standard", needed_capabilities=["runner"])
    decision = (await worker.receive_type("task_assign"))["routing_decision"]
    assert decision["target_type"] == "ollama"
    assert decision["selected_endpoint"] == calm_ollama.host_port
    reason = decision["classification_reason"]
    assert "endpoint aa-calm-local (2 candidates, load 0.10)" in reason

    # the latest report counts
    await report_load(busy, 0.05)
    await report_load(calm, 0.95)
    preview = await route(operator, STANDARD, complexity_tier="standard")
    assert preview["routing_decision"]["selected_endpoint"] == busy_ollama.host_port


async def test_an_operator_added_endpoint_is_scored_by_the_load_of_agents_on_its_host(
    hub: HubServer,
    make_agent: AgentMaker,
    make_token: TokenMaker,
    operator: OperatorClient,
    agent_events: Events,
    make_ollama: OllamaMaker,  # noqa: F811
) -> None:
    # given two endpoints an operator added, on two hosts (two loopback addresses); on a
    # tie the greater endpoint id wins, so the busy host would win without load figures
    busy_ollama, calm_ollama = make_ollama("127.0.0.2"), make_ollama("127.0.0.1")
    await add_endpoint(operator, agent_events, busy_ollama, "zz-busy", models=MODELS)
    await add_endpoint(operator, agent_events, calm_ollama, "aa-calm", models=MODELS)

    # and an agent on each host reporting its load, neither of them owning an endpoint
    url = f"ws://127.0.0.1:{hub.port}/ws"
    async with connect(url, local_addr=("127.0.0.2", 0)) as busy:
        identify = {"type": "identify", "agent_id": "busy-host", "token": make_token("busy-host")}
        await busy.send(json.dumps(identify))
        assert json.loads(await busy.recv())["type"] == "identified"
        calm_agent = await make_agent("calm-host")
        await report_load(calm_agent, 0.1)
        await busy.send(json.dumps({"type": "resource_report", "cpu_percent": 90.0}))
        await busy.send(json.dumps({"type": "ping"}))
        async with asyncio.timeout(5):
            while json.loads(await busy.recv())["type"] != "pong":
                pass

        # when a standard task is routed
        preview = await route(operator, STANDARD, complexity_tier="standard")

    # then the endpoint on the calm host wins, and the reason names its host's load
    decision = preview["routing_decision"]
    assert decision["selected_endpoint"] == calm_ollama.host_port
    assert "endpoint aa-calm (2 candidates, load 0.10)" in decision["classification_reason"]


async def test_a_warm_model_is_preferred(
    hub: HubServer,
    make_agent: AgentMaker,
    operator: OperatorClient,
    agent_events: Events,
    make_ollama: OllamaMaker,  # noqa: F811
) -> None:
    cold, warm = make_ollama(), make_ollama()
    await add_endpoint(operator, agent_events, cold, "zz-cold", models=MODELS)
    await add_endpoint(operator, agent_events, warm, "aa-warm", models=MODELS,
                       loaded=["llama3.2:3b"])  # fmt: skip
    agent = await make_agent()
    await operator.submit(STANDARD, complexity_tier="standard")
    decision = (await agent.receive_type("task_assign"))["routing_decision"]
    assert decision["selected_endpoint"] == warm.host_port
    assert decision["selected_model"] == "llama3.2:3b"  # the loaded one, not the first listed
    assert (
        "endpoint aa-warm (2 candidates, unknown load, warm model)"
        in decision["classification_reason"]
    )


async def test_metadata_model_is_honoured_when_an_endpoint_has_it(
    hub: HubServer,
    make_agent: AgentMaker,
    operator: OperatorClient,
    agent_events: Events,
    make_ollama: OllamaMaker,  # noqa: F811
) -> None:
    general, coder = make_ollama(), make_ollama()
    # on a tie the greater endpoint id wins: zz-general, unless the wanted model counts
    await add_endpoint(operator, agent_events, general, "zz-general", models=["llama3.2:3b"])
    await add_endpoint(operator, agent_events, coder, "aa-coder",
                       models=["llama3.2:3b", "qwen2.5-coder:7b"])  # fmt: skip
    first, second, third = [await make_agent(name) for name in ("first", "second", "third")]

    await operator.submit(STANDARD, complexity_tier="standard",
                          metadata={"model": "qwen2.5-coder:7b"})  # fmt: skip
    decision = (await first.receive_type("task_assign"))["routing_decision"]
    assert decision["selected_endpoint"] == coder.host_port
    assert decision["selected_model"] == "qwen2.5-coder:7b"

    # the wanted model beats the warm one on the same endpoint
    coder.serve(models=["llama3.2:3b", "qwen2.5-coder:7b"], loaded=["llama3.2:3b"])
    await hub.prober.check_all()
    await operator.submit(STANDARD, complexity_tier="standard",
                          metadata={"model": "qwen2.5-coder:7b"})  # fmt: skip
    decision = (await second.receive_type("task_assign"))["routing_decision"]
    assert decision["selected_endpoint"] == coder.host_port
    assert decision["selected_model"] == "qwen2.5-coder:7b"

    # a model nobody serves: the best endpoint's own choice (its warm model)
    await operator.submit(STANDARD, complexity_tier="standard", metadata={"model": "nope:70b"})
    decision = (await third.receive_type("task_assign"))["routing_decision"]
    assert decision["selected_endpoint"] == coder.host_port
    assert decision["selected_model"] == "llama3.2:3b"


# --- trust: an agent's endpoint is its own -----------------------------------------------


async def test_an_agents_endpoint_serves_only_that_agent_until_an_admin_approves_it(
    hub: HubServer,
    make_agent: AgentMaker,
    operator: OperatorClient,
    agent_events: Events,
    make_ollama: OllamaMaker,  # noqa: F811
) -> None:
    # given an agent whose endpoint claims every model warm and its host idle, and an
    # endpoint an operator registered, with the same models but no load figures
    rogue_ollama, operator_ollama = make_ollama(), make_ollama("127.0.0.2")
    rogue_ollama.serve(models=MODELS, loaded=MODELS)
    rogue = await make_agent("rogue", ollama_url=rogue_ollama.url, capabilities=["rogue"])
    await healthy(agent_events, "rogue-local")
    await report_load(rogue, 0.0)
    await add_endpoint(operator, agent_events, operator_ollama, "ops-ep", models=MODELS)
    worker = await make_agent("worker", capabilities=["runner"])

    # when another agent's standard task is routed
    await operator.submit(STANDARD, complexity_tier="standard", needed_capabilities=["runner"])

    # then it goes to the operator's endpoint, whatever the agent's endpoint claims
    decision = (await worker.receive_type("task_assign"))["routing_decision"]
    assert decision["selected_endpoint"] == operator_ollama.host_port
    # and without the operator's endpoint, the agent's one is no candidate for others
    await operator.request("endpoint_remove", endpoint_id="ops-ep")
    preview = await route(operator, STANDARD, complexity_tier="standard")
    assert preview["routing_decision"]["target_type"] == "claude"
    # while it still serves its own agent
    await operator.submit(STANDARD, complexity_tier="standard", needed_capabilities=["rogue"])
    own = (await rogue.receive_type("task_assign"))["routing_decision"]
    assert own["selected_endpoint"] == rogue_ollama.host_port
    # until an admin approves it for every agent (viewers may not)
    approved = await operator.request("endpoint_approve", endpoint=rogue_ollama.url)
    assert (approved["endpoint_id"], approved["approved"]) == ("rogue-local", True)
    preview = await route(operator, STANDARD, complexity_tier="standard")
    assert preview["routing_decision"]["selected_endpoint"] == rogue_ollama.host_port


async def test_viewers_cannot_approve_endpoints(
    hub: HubServer, http_url: str, make_token: TokenMaker
) -> None:
    viewer = OperatorClient(http_url, make_token("watcher", "viewer"))
    await viewer.connect()
    try:
        with pytest.raises(RequestFailed, match="forbidden"):
            await viewer.request("endpoint_approve", endpoint="anything")
    finally:
        await viewer.close()


async def test_agents_may_name_endpoints_only_on_their_own_host_or_allowed_ones(
    hub: HubServer,
    settings: Settings,
    clock: ManualClock,
    make_agent: AgentMaker,
    make_token: TokenMaker,
    operator: OperatorClient,
) -> None:
    # given an agent connected from loopback
    agent = await make_agent("prober")

    # when it reports an endpoint on another host
    await agent.send({"type": "ollama_report", "ollama_url": "http://10.1.2.3:11434"})

    # then the report is refused and nothing is registered (so nothing is probed there)
    reply = await agent.receive_type("error")
    assert reply["error"] == "invalid_url" and "agent_endpoint_hosts" in reply["message"]
    assert await operator.request("endpoints_list") == []

    # but a hub whose allow-list names that network takes it
    allowing = HubServer(
        settings.model_copy(
            update={"agent_endpoint_hosts": ["10.0.0.0/8"], "db": settings.db.with_name("b.db")}
        ),
        clock=clock,
        run_sweeps=False,
    )
    await allowing.start()
    try:
        token = new_token()
        save_token(allowing.settings.db, "prober", hash_token(token), "agent")
        other = AgentClient(f"ws://127.0.0.1:{allowing.port}/ws", "prober", token, heartbeat_s=None)
        await other.connect()
        await other.send({"type": "ollama_report", "ollama_url": "http://10.1.2.3:11434"})
        assert (await other.receive_type("ollama_report_ack"))["status"] == "registered"
        await other.close()
    finally:
        await allowing.stop()
