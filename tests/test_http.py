"""The read-only HTTP routes of PROTOCOL.md section 5, fetched with the stdlib over real sockets."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import AgentMaker, TokenMaker

from agentcom import __version__
from agentcom.client import AgentClient, OperatorClient
from agentcom.config import Settings
from agentcom.hub.clock import ManualClock
from agentcom.protocol.common import Priority, TaskStatus
from agentcom.protocol.task import Task
from agentcom.server.app import HubServer

SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (-?[0-9.e+-]+|NaN|[+-]Inf)")
API_ROUTES = [
    "/api/tasks",
    "/api/tasks/0123456789abcdef0123456789abcdef",
    "/api/tasks/dead-letter",
    "/api/tasks/stats",
    "/api/agents",
    "/api/endpoints",
    "/api/schemas",
    "/api/no-such-route",
]


@dataclass(frozen=True, slots=True)
class Reply:
    """One HTTP response."""

    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


def _get(url: str, authorization: str | None) -> Reply:
    request = urllib.request.Request(url, method="GET")
    if authorization is not None:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return Reply(response.status, response.headers.get("Content-Type", ""), response.read())
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, error.headers.get("Content-Type", ""), error.read())


async def fetch(url: str, token: str | None = None, authorization: str | None = None) -> Reply:
    """GET ``url`` in a thread, with a bearer ``token`` or a raw ``authorization`` header."""
    if token is not None:
        authorization = f"Bearer {token}"
    return await asyncio.to_thread(_get, url, authorization)


async def run_some_tasks(operator: OperatorClient, agent: AgentClient) -> dict[str, str]:
    """One task assigned to ``agent``, two queued behind it; their ids by description."""
    ids = {}
    for description, priority in (("urgent job", "urgent"), ("low job", "low"),
                                  ("high job", "high")):  # fmt: skip
        task = await operator.submit(description, priority=priority, complexity_tier="complex")
        ids[description] = task["task_id"]
    assign = await agent.receive_type("task_assign")
    assert assign["task_id"] == ids["urgent job"]
    return ids


# --- open routes -------------------------------------------------------------------


async def test_health_needs_no_token_and_reports_headline_figures(
    hub: HubServer, http_url: str, clock: ManualClock, make_agent: AgentMaker,
    operator: OperatorClient,
) -> None:  # fmt: skip
    # given one connected agent, one task it cannot run, and 5 s of uptime
    await make_agent("cpu-only")
    await operator.submit("needs a gpu", needed_capabilities=["gpu"], complexity_tier="complex")
    clock.advance(5_000)

    # when /health is fetched without a token
    reply = await fetch(f"{http_url}/health")

    # then it answers with the headline figures
    assert reply.status == 200
    assert reply.content_type.startswith("application/json")
    health = reply.json()
    assert health["status"] == "ok"
    assert health["version"] == __version__
    assert health["uptime_s"] == pytest.approx(5.0)
    assert (health["agents_connected"], health["queue_depth"]) == (1, 1)


@pytest.fixture
async def waiting_hub(settings: Settings, clock: ManualClock) -> AsyncIterator[HubServer]:
    """A hub that waits 5 s for an Ollama endpoint before a standard task falls back."""
    server = HubServer(settings.model_copy(update={"fallback_wait_s": 5.0}), clock=clock,
                       run_sweeps=False)  # fmt: skip
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_task_waiting_for_a_routing_target_counts_as_queued(
    waiting_hub: HubServer, make_token: TokenMaker
) -> None:
    # given an idle agent and a standard task held back because no Ollama endpoint exists
    base = f"http://127.0.0.1:{waiting_hub.port}"
    agent = AgentClient(f"ws://127.0.0.1:{waiting_hub.port}/ws", "worker", make_token("worker"),
                        heartbeat_s=None)  # fmt: skip
    await agent.connect()
    try:
        async with OperatorClient(base, make_token("ops", "admin")) as operator:
            task = await operator.submit("Make the thing work", complexity_tier="standard")
            assert (await operator.get_task(task["task_id"]))["status"] == "queued"

            # when the headline figures are fetched during the wait before the fallback
            health = (await fetch(f"{base}/health")).json()
            metrics = (await fetch(f"{base}/metrics")).body.decode()
    finally:
        await agent.close()

    # then the task is counted as queued, not as active
    assert health["queue_depth"] == 1
    assert "agentcom_queue_depth 1.0\n" in metrics
    assert "agentcom_tasks_active 0.0\n" in metrics


async def test_metrics_are_prometheus_text(
    hub: HubServer, http_url: str, operator: OperatorClient
) -> None:
    # given two queued tasks and no agent
    for description in ("one", "two"):
        await operator.submit(description, complexity_tier="complex")

    # when /metrics is fetched
    reply = await fetch(f"{http_url}/metrics")

    # then it is the Prometheus text format, every sample typed, with the live figures
    assert reply.status == 200
    assert reply.content_type.startswith("text/plain")
    assert "version=0.0.4" in reply.content_type
    lines = reply.body.decode().splitlines()
    typed = {line.split()[2] for line in lines if line.startswith("# TYPE ")}
    samples = {}
    for line in lines:
        if line.startswith("#") or not line:
            continue
        match = SAMPLE.fullmatch(line)
        assert match, line
        samples[match.group(1)] = float(match.group(3))
    # a histogram's _bucket, _sum and _count samples are typed under the histogram's name
    assert {name for name in samples if name.rsplit("_", 1)[0] not in typed} <= typed
    assert samples["agentcom_queue_depth"] == 2
    assert samples["agentcom_agents_connected"] == 0
    assert samples["agentcom_store_commits_total"] >= 1


async def test_dashboard_page_is_served_as_html(hub: HubServer, http_url: str) -> None:
    # when the dashboard page is fetched without a token
    reply = await fetch(f"{http_url}/dashboard")

    # then it is an HTML page
    assert reply.status == 200
    assert reply.content_type.startswith("text/html")
    assert b"<html" in reply.body.lower()


async def test_unknown_path_is_not_found(hub: HubServer, http_url: str) -> None:
    # when a path the hub does not serve is fetched
    reply = await fetch(f"{http_url}/no/such/page")

    # then it is 404
    assert reply.status == 404
    assert reply.json() == {"error": "not_found"}


# --- authentication ----------------------------------------------------------------


@pytest.mark.parametrize("credential", ["none", "wrong", "agent", "not-bearer"])
async def test_api_refuses_requests_without_an_operator_token(
    hub: HubServer, http_url: str, make_token: TokenMaker, credential: str
) -> None:
    # given a credential that is missing, unknown, an agent's, or not a bearer token
    admin = make_token("ops", "admin")
    authorization = {
        "none": None,
        "wrong": "Bearer ac_not-a-real-token",
        "agent": f"Bearer {make_token('worker', 'agent')}",
        "not-bearer": f"Basic {admin}",
    }[credential]

    # when every API route is fetched with it
    replies = {route: await fetch(f"{http_url}{route}", authorization=authorization)
               for route in API_ROUTES}  # fmt: skip

    # then each one is refused
    assert {route: reply.status for route, reply in replies.items()} == dict.fromkeys(
        API_ROUTES, 401)  # fmt: skip
    assert all(reply.json() == {"error": "unauthorized"} for reply in replies.values())


@pytest.mark.parametrize("role", ["admin", "viewer"])
async def test_api_serves_admin_and_viewer_tokens(
    hub: HubServer, http_url: str, make_token: TokenMaker, role: str
) -> None:
    # given an operator token of this role
    token = make_token("someone", role)

    # when every API route is fetched with it
    statuses = {route: (await fetch(f"{http_url}{route}", token)).status for route in API_ROUTES}

    # then each is served (the unknown task and the unknown route are simply not found)
    assert statuses == {
        "/api/tasks": 200,
        "/api/tasks/0123456789abcdef0123456789abcdef": 404,
        "/api/tasks/dead-letter": 200,
        "/api/tasks/stats": 200,
        "/api/agents": 200,
        "/api/endpoints": 200,
        "/api/schemas": 200,
        "/api/no-such-route": 404,
    }


# --- tasks -------------------------------------------------------------------------


async def test_task_list_filters_by_status_priority_agent_and_limit(
    hub: HubServer, http_url: str, make_token: TokenMaker, make_agent: AgentMaker,
    operator: OperatorClient,
) -> None:  # fmt: skip
    # given one assigned task and two queued ones
    agent = await make_agent("w1")
    ids = await run_some_tasks(operator, agent)
    token = make_token("viewer", "viewer")

    async def listed(query: str) -> set[str]:
        reply = await fetch(f"{http_url}/api/tasks{query}", token)
        assert reply.status == 200, reply
        return {task["task_id"] for task in reply.json()}

    # then each filter selects the right tasks
    assert await listed("") == set(ids.values())
    assert await listed("?status=queued") == {ids["low job"], ids["high job"]}
    assert await listed("?status=assigned") == {ids["urgent job"]}
    assert await listed("?priority=high") == {ids["high job"]}
    assert await listed("?agent=w1") == {ids["urgent job"]}
    assert await listed("?agent=nobody") == set()
    assert await listed("?status=queued&priority=low") == {ids["low job"]}
    assert len(await listed("?limit=2")) == 2


@pytest.mark.parametrize(
    "query",
    ["status=bogus", "priority=extreme", "limit=ten", "limit=0", "limit=-1", "limit=1001",
     "limit=1.5"],
)  # fmt: skip
async def test_task_list_rejects_a_bad_filter_value(
    hub: HubServer, http_url: str, make_token: TokenMaker, query: str
) -> None:
    # when the task list is asked for with a bad filter value
    reply = await fetch(f"{http_url}/api/tasks?{query}", make_token("viewer", "viewer"))

    # then it is a bad request
    assert reply.status == 400
    assert reply.json()["error"] == "bad_request"


async def test_task_by_id_is_the_full_task_object(
    hub: HubServer, http_url: str, make_token: TokenMaker, make_agent: AgentMaker,
    operator: OperatorClient,
) -> None:  # fmt: skip
    # given an assigned task
    agent = await make_agent("w1")
    ids = await run_some_tasks(operator, agent)

    # when it is fetched by id
    reply = await fetch(f"{http_url}/api/tasks/{ids['urgent job']}", make_token("v", "viewer"))

    # then it is the task object of PROTOCOL.md section 2
    assert reply.status == 200
    task = reply.json()
    assert {
        "task_id", "status", "priority", "description", "metadata", "needed_capabilities",
        "complexity", "routing_decision", "assigned_to", "generation", "retry_count",
        "max_retries", "last_error", "result", "execution", "tokens_used",
        "verification_report", "history", "created_at", "updated_at",
    } <= set(task)  # fmt: skip
    assert (task["task_id"], task["status"], task["priority"]) == (
        ids["urgent job"], "assigned", "urgent")  # fmt: skip
    assert (task["assigned_to"], task["generation"]) == ("w1", 1)
    assert [entry["status"] for entry in task["history"]] == ["queued", "assigned"]
    assert task["routing_decision"]["target_type"] == "claude"


async def test_unknown_task_id_is_not_found(
    hub: HubServer, http_url: str, make_token: TokenMaker
) -> None:
    reply = await fetch(f"{http_url}/api/tasks/ffffffffffffffffffffffffffffffff",
                        make_token("v", "viewer"))  # fmt: skip
    assert reply.status == 404


async def test_task_route_takes_an_abbreviated_id(
    hub: HubServer, http_url: str, make_token: TokenMaker, operator: OperatorClient
) -> None:
    # given a task, and two stored tasks whose ids share their first eight characters
    task = await operator.submit("find me by prefix")
    for twin in ("0badcafe" + "1" * 24, "0badcafe" + "2" * 24):
        hub.store.stage_task(Task(task_id=twin, status=TaskStatus.completed,
                                  priority=Priority.normal, description="twin",
                                  created_at=1, updated_at=1))  # fmt: skip
    await hub.store.commit()
    token = make_token("v", "viewer")

    found = await fetch(f"{http_url}/api/tasks/{task['task_id'][:6]}", token)
    ambiguous = await fetch(f"{http_url}/api/tasks/0badcafe", token)

    assert (found.status, found.json()["task_id"]) == (200, task["task_id"])
    assert ambiguous.status == 400
    assert ambiguous.json()["error"] == "ambiguous_task_id"
    assert "0badcafe" + "1" * 24 in ambiguous.json()["message"]


async def test_dead_letter_route_lists_only_dead_letter_tasks(
    hub: HubServer, http_url: str, make_token: TokenMaker, make_agent: AgentMaker,
    operator: OperatorClient,
) -> None:  # fmt: skip
    # given one task that failed for good and one still queued
    agent = await make_agent("w1")
    doomed = await operator.submit("doomed", max_retries=0, complexity_tier="complex")
    assign = await agent.receive_type("task_assign")
    await operator.submit("waiting", needed_capabilities=["gpu"], complexity_tier="complex")
    await agent.send({"type": "task_failed", "task_id": doomed["task_id"],
                      "generation": assign["generation"], "reason": "no disk"})  # fmt: skip
    assert (await agent.receive_type("task_ack"))["status"] == "dead_letter"

    # when the dead-letter list is fetched
    reply = await fetch(f"{http_url}/api/tasks/dead-letter", make_token("v", "viewer"))

    # then it holds exactly the dead-letter task
    assert reply.status == 200
    assert [(task["task_id"], task["status"], task["last_error"]) for task in reply.json()] == [
        (doomed["task_id"], "dead_letter", "no disk")]  # fmt: skip


async def test_stats_route_counts_tasks_and_execution_totals(
    hub: HubServer, http_url: str, make_token: TokenMaker, make_agent: AgentMaker,
    operator: OperatorClient,
) -> None:  # fmt: skip
    # given one completed task with execution metadata and one queued task
    agent = await make_agent("w1")
    done = await operator.submit("done", complexity_tier="complex")
    assign = await agent.receive_type("task_assign")
    await operator.submit("waiting", needed_capabilities=["gpu"], complexity_tier="complex")
    await agent.send({"type": "task_complete", "task_id": done["task_id"],
                      "generation": assign["generation"],
                      "result": {"status": "success", "model_used": "claude-sonnet-4.5",
                                 "tokens_in": 100, "tokens_out": 20,
                                 "estimated_cost_usd": 0.5}})  # fmt: skip
    assert (await agent.receive_type("task_ack"))["status"] == "complete"

    # when the stats are fetched
    reply = await fetch(f"{http_url}/api/tasks/stats", make_token("v", "viewer"))

    # then they count tasks by status and total the execution metadata
    assert reply.status == 200
    stats = reply.json()
    assert stats["by_status"] == {"completed": 1, "queued": 1}
    assert stats["queue_depth"] == 1
    assert stats["agents_connected"] == 1
    model = stats["by_model"]["claude-sonnet-4.5"]
    assert (model["tasks"], model["tokens_in"], model["tokens_out"]) == (1, 100, 20)
    assert stats["by_agent"]["w1"]["estimated_cost_usd"] == pytest.approx(0.5)


async def test_agents_route_lists_agents_with_their_state(
    hub: HubServer, http_url: str, make_token: TokenMaker, make_agent: AgentMaker,
    operator: OperatorClient,
) -> None:  # fmt: skip
    # given one busy agent and one idle agent
    busy = await make_agent("busy", capabilities=["gpu"])
    task = await operator.submit("job", needed_capabilities=["gpu"], complexity_tier="complex")
    await busy.receive_type("task_assign")
    await make_agent("idle")

    # when the agents are fetched
    reply = await fetch(f"{http_url}/api/agents", make_token("v", "viewer"))

    # then each is listed with its state and current task
    assert reply.status == 200
    agents = {agent["agent_id"]: agent for agent in reply.json()}
    assert set(agents) == {"busy", "idle"}
    busy_view = agents["busy"]
    assert (busy_view["state"], busy_view["current_task"]) == ("assigned", task["task_id"])
    assert agents["busy"]["capabilities"] == ["gpu"]
    assert (agents["idle"]["state"], agents["idle"]["current_task"]) == ("idle", None)


async def test_endpoints_route_lists_agent_endpoints(
    hub: HubServer, http_url: str, make_token: TokenMaker, make_agent: AgentMaker
) -> None:
    # given an agent that reported its local Ollama (a closed port: nothing answers there)
    await make_agent("gpu-box", ollama_url="http://127.0.0.1:9")

    # when the endpoints are fetched
    reply = await fetch(f"{http_url}/api/endpoints", make_token("v", "viewer"))

    # then its endpoint is listed under <agent_id>-local
    assert reply.status == 200
    endpoints = {endpoint["endpoint_id"]: endpoint for endpoint in reply.json()}
    assert set(endpoints) == {"gpu-box-local"}
    assert endpoints["gpu-box-local"]["agent_id"] == "gpu-box"
    assert "127.0.0.1:9" in endpoints["gpu-box-local"]["url"]


async def test_schemas_route_describes_every_frame(
    hub: HubServer, http_url: str, make_token: TokenMaker
) -> None:
    # when the schemas are fetched
    reply = await fetch(f"{http_url}/api/schemas", make_token("v", "viewer"))

    # then they cover each connection and direction, and name the frames of the protocol
    assert reply.status == 200
    schemas = reply.json()
    assert {"agent_to_hub", "hub_to_agent", "task"} <= set(schemas)
    inbound = json.dumps(schemas["agent_to_hub"])
    for frame_type in ("identify", "task_accepted", "task_progress", "task_complete", "task_failed",
                       "task_rejected", "task_recovering", "resource_report"):  # fmt: skip
        assert f'"{frame_type}"' in inbound, frame_type
    assert "TaskAssign" in schemas["hub_to_agent"]
    assert "routing_decision" in schemas["hub_to_agent"]["TaskAssign"]["properties"]
    assert "execution" in schemas["task"]["properties"]
