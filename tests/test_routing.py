"""Routing decisions of PROTOCOL.md section 2: tier, target, endpoint, model and fallback.

Most tests ask the Router directly, with a real EndpointRegistry; the last ones run a
Hub on the in-memory store to check the wait before a fallback with the ManualClock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agentcom.config import Settings
from agentcom.hub.agents import AgentRecord
from agentcom.hub.clock import ManualClock
from agentcom.hub.endpoints import Endpoint, EndpointRegistry
from agentcom.hub.hub import Hub
from agentcom.hub.routing import NoViableTarget, Router
from agentcom.protocol import agent as frames
from agentcom.protocol.common import Priority, TaskStatus, Tier
from agentcom.protocol.outbound import Complexity, RoutingDecision, TaskAssign
from agentcom.protocol.task import Task, TaskSubmission
from agentcom.store.memory import MemoryStore

NEUTRAL = "Make the thing work as the ticket explains it"  # no signal either way
DECISION_KEYS = {
    "effective_tier", "target_type", "selected_endpoint", "selected_model", "fallback_used",
    "fallback_reason", "classification_reason", "estimated_cost_tier",
}  # fmt: skip


@pytest.fixture
def registry() -> EndpointRegistry:
    """An empty endpoint registry."""
    return EndpointRegistry()


@pytest.fixture
def router(registry: EndpointRegistry, tmp_path: Path) -> Router:
    """A router with the default settings and no resource reports."""
    settings = Settings(db=tmp_path / "unused.db")
    return Router(registry, lambda agent_id: None, settings.claude_model)


def make_task(description: str = NEUTRAL, tier: Tier | None = None, **fields: Any) -> Task:
    """A queued task as the queue would hold it."""
    return Task(task_id="0" * 32, status=TaskStatus.queued, priority=Priority.normal,
                description=description, complexity_tier=tier, created_at=0, updated_at=0,
                **fields)  # fmt: skip


def agent(agent_id: str = "worker") -> AgentRecord:
    """A connected agent."""
    return AgentRecord(agent_id=agent_id, connected=True)


def healthy_endpoint(
    registry: EndpointRegistry,
    agent_id: str,
    url: str,
    models: list[str],
    loaded: list[str] | None = None,
) -> Endpoint:
    """Register an agent's endpoint and record one successful health check."""
    endpoint, _ = registry.register_for_agent(agent_id, url)
    registry.record_check(endpoint.endpoint_id, 0, models, loaded or [])
    return endpoint


def decide(router: Router, task: Task, on: str = "worker") -> tuple[Complexity, RoutingDecision]:
    """The decision for running ``task`` on agent ``on``, fallback allowed."""
    complexity, decision, _ = router.decide(task, agent(on), allow_fallback=True)
    return complexity, decision


def cost_tier(decision: RoutingDecision) -> str | None:
    """The decision's cost tier as sent on the wire."""
    value: str | None = decision.model_dump(mode="json")["estimated_cost_tier"]
    return value


def assert_wire_types(decision: RoutingDecision) -> None:
    """Exactly the protocol's keys; strings or null, except the boolean fallback_used."""
    wire = decision.model_dump(mode="json")
    assert set(wire) == DECISION_KEYS
    for key, value in wire.items():
        if key == "fallback_used":
            assert isinstance(value, bool), (key, value)
        else:
            assert value is None or isinstance(value, str), (key, value)


# --- tiers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tier", "metadata", "target", "cost"),
    [
        (Tier.trivial, {"shell_command": "date"}, "sidecar", "free"),
        (Tier.standard, {}, "ollama", "local"),
        (Tier.complex, {}, "claude", "api"),
    ],
)
def test_explicit_tier_wins_over_the_description(
    router: Router, registry: EndpointRegistry, tier: Tier, metadata: dict[str, Any],
    target: str, cost: str,
) -> None:  # fmt: skip
    # given a usable endpoint and a description that leans elsewhere
    healthy_endpoint(registry, "worker", "http://127.0.0.1:11434", ["qwen2.5-coder:7b"])
    leaning = "Fix typo in README" if tier is Tier.complex else "Refactor the security layer"

    # when the task names its tier
    complexity, decision = decide(router, make_task(leaning, tier, metadata=metadata))

    # then that tier decides the target
    assert (complexity.source, complexity.explicit_tier, complexity.effective_tier) == (
        "explicit", tier, tier)  # fmt: skip
    assert (decision.effective_tier, decision.target_type.value) == (tier, target)
    assert cost_tier(decision) == cost
    assert decision.fallback_used is False
    assert_wire_types(decision)


def test_task_without_a_tier_is_classified_and_neutral_text_is_standard(
    router: Router, registry: EndpointRegistry
) -> None:
    # given a usable endpoint
    healthy_endpoint(registry, "worker", "http://127.0.0.1:11434", ["qwen2.5-coder:7b"])

    # when a task with no tier and no telling words is routed
    complexity, decision = decide(router, make_task(NEUTRAL))

    # then it is standard, not explicit, and the reason says where the tier came from
    assert complexity.effective_tier is Tier.standard
    assert complexity.source != "explicit" and complexity.explicit_tier is None
    assert decision.target_type.value == "ollama"
    reason = decision.classification_reason
    assert reason is not None and "\n" not in reason
    assert complexity.source in reason and "standard" in reason


def test_trivial_task_without_shell_command_is_routed_as_standard_and_says_so(
    router: Router, registry: EndpointRegistry
) -> None:
    # given a usable endpoint
    healthy_endpoint(registry, "worker", "http://127.0.0.1:11434", ["qwen2.5-coder:7b"])

    # when a trivial task carries prose but no shell command
    complexity, decision = decide(router, make_task("Fix typo in README", Tier.trivial))

    # then it is never sent to the sidecar's shell
    assert complexity.effective_tier is Tier.trivial
    assert decision.target_type.value == "ollama"
    assert decision.effective_tier is Tier.standard
    assert decision.classification_reason is not None
    assert "shell_command" in decision.classification_reason
    assert_wire_types(decision)


def test_trivial_task_without_shell_command_and_no_endpoint_still_avoids_the_sidecar(
    router: Router,
) -> None:
    # when a trivial prose task is routed with no endpoint anywhere
    _, decision = decide(router, make_task("Fix typo in README", Tier.trivial))

    # then it escalates past standard instead of running the prose as a command
    assert decision.target_type.value == "claude"
    assert decision.fallback_used is True


def test_trivial_task_with_shell_command_runs_on_the_sidecar_for_free(router: Router) -> None:
    # when a trivial task carries a shell command
    _, decision = decide(router, make_task("print the date", Tier.trivial,
                                           metadata={"shell_command": "date"}))  # fmt: skip

    # then the sidecar runs it, at no cost, with no endpoint or model
    assert decision.target_type.value == "sidecar"
    assert decision.effective_tier is Tier.trivial
    assert cost_tier(decision) == "free"
    assert (decision.selected_endpoint, decision.fallback_used) == (None, False)
    assert_wire_types(decision)


# --- endpoints ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host_port"),
    [
        ("http://10.0.0.5:11434", "10.0.0.5:11434"),
        ("http://gpu-box:11500", "gpu-box:11500"),
        ("gpu-box", "gpu-box:11434"),
        ("gpu-box:11500", "gpu-box:11500"),
        ("https://ollama.example.com", "ollama.example.com:11434"),
        ("http://[::1]:11434", "[::1]:11434"),
    ],
)
def test_standard_task_goes_to_a_registered_endpoint_as_host_and_port(
    router: Router, registry: EndpointRegistry, url: str, host_port: str
) -> None:
    # given an agent's healthy endpoint serving models
    healthy_endpoint(registry, "worker", url, ["qwen2.5-coder:7b", "llama3:8b"])

    # when a standard task is routed
    _, decision = decide(router, make_task(NEUTRAL, Tier.standard))

    # then it goes to that endpoint as host:port, which sidecars split on the last ':'
    assert decision.target_type.value == "ollama"
    assert decision.selected_endpoint == host_port
    host, _, port = decision.selected_endpoint.rpartition(":")
    assert host and port.isdigit()
    assert decision.selected_model == "qwen2.5-coder:7b"
    assert cost_tier(decision) == "local"
    assert decision.fallback_used is False
    assert_wire_types(decision)


def test_model_comes_from_the_endpoint_and_prefers_a_warm_one(
    router: Router, registry: EndpointRegistry
) -> None:
    # given an endpoint with two models, the second one loaded
    models = ["llama3:8b", "qwen2.5-coder:7b"]
    healthy_endpoint(registry, "worker", "http://127.0.0.1:11434", models, loaded=models[1:])

    # when a standard task is routed, then the warm model is named
    _, decision = decide(router, make_task(NEUTRAL, Tier.standard))
    assert decision.selected_model == "qwen2.5-coder:7b"


def test_agent_own_endpoint_is_preferred(router: Router, registry: EndpointRegistry) -> None:
    # given two agents with equally good endpoints
    healthy_endpoint(registry, "alpha", "http://10.0.0.1:11434", ["qwen2.5-coder:7b"])
    healthy_endpoint(registry, "beta", "http://10.0.0.2:11434", ["qwen2.5-coder:7b"])
    task = make_task(NEUTRAL, Tier.standard)

    # when the same task is routed for each agent
    _, for_alpha = decide(router, task, on="alpha")
    _, for_beta = decide(router, task, on="beta")

    # then each is sent to its own endpoint
    assert for_alpha.selected_endpoint == "10.0.0.1:11434"
    assert for_beta.selected_endpoint == "10.0.0.2:11434"


def test_unhealthy_endpoint_is_skipped(router: Router, registry: EndpointRegistry) -> None:
    # given the agent's own endpoint that has gone unhealthy, and another healthy one
    own = healthy_endpoint(registry, "worker", "http://10.0.0.1:11434", ["qwen2.5-coder:7b"])
    other = healthy_endpoint(registry, "other", "http://10.0.0.2:11434", ["qwen2.5-coder:7b"])
    registry.approve(other.endpoint_id)  # another agent's endpoint serves others once approved
    while own.healthy is not False:
        registry.record_check(own.endpoint_id, 1, None, error="connection refused")

    # when a standard task is routed for the agent
    _, decision = decide(router, make_task(NEUTRAL, Tier.standard))

    # then the healthy endpoint is chosen
    assert decision.selected_endpoint == "10.0.0.2:11434"


def test_standard_task_without_a_viable_endpoint_falls_back_to_claude(
    router: Router, registry: EndpointRegistry
) -> None:
    # given only an unhealthy endpoint
    endpoint = healthy_endpoint(registry, "worker", "http://10.0.0.1:11434", ["qwen2.5-coder:7b"])
    endpoint.healthy = False
    task = make_task(NEUTRAL, Tier.standard)

    # when the router may not fall back yet, then it says there is no target
    with pytest.raises(NoViableTarget) as no_target:
        router.decide(task, agent(), allow_fallback=False)
    assert no_target.value.reason == "no_healthy_ollama_endpoints"

    # when it may, then it escalates to Claude and records why
    _, decision = decide(router, task)
    assert decision.target_type.value == "claude"
    assert decision.effective_tier is Tier.complex
    assert decision.selected_model == "claude-sonnet-4.5"
    assert decision.selected_endpoint is None
    assert decision.fallback_used is True
    assert decision.fallback_reason == "no_healthy_ollama_endpoints"
    assert_wire_types(decision)


def test_complex_task_goes_to_claude_with_the_configured_model(router: Router) -> None:
    # when a complex task is routed
    _, decision = decide(router, make_task("Refactor the scheduler", Tier.complex))

    # then Claude runs it under a model id the sidecar's cost calculator prices
    assert decision.target_type.value == "claude"
    assert decision.selected_model == "claude-sonnet-4.5"
    assert cost_tier(decision) == "api"
    assert (decision.fallback_used, decision.fallback_reason) == (False, None)
    assert_wire_types(decision)


# --- the wait before falling back, in the hub -------------------------------------


@pytest.fixture
def domain(clock: ManualClock) -> Hub:
    """A hub with default settings (5 s wait before a fallback)."""
    return Hub(MemoryStore(), clock, Settings())


def identify(hub: Hub, agent_id: str) -> None:
    """An agent identifies."""
    hub.identify(frames.Identify.model_validate(
        {"type": "identify", "agent_id": agent_id, "token": "checked-by-the-edge"}))  # fmt: skip


def pushed_assignments(hub: Hub) -> list[TaskAssign]:
    """``task_assign`` pushes since the last look."""
    return [frame for _, frame in hub.take_outbox().pushes if isinstance(frame, TaskAssign)]


def test_standard_task_waits_for_an_endpoint_before_falling_back(
    domain: Hub, clock: ManualClock
) -> None:
    # given an idle agent and no Ollama endpoint anywhere
    identify(domain, "worker")
    task = domain.task_ops.submit(
        TaskSubmission(description=NEUTRAL, complexity_tier=Tier.standard)
    )

    # then the task is not assigned during the wait
    assert pushed_assignments(domain) == []
    clock.advance(4_999)
    domain.sweep()
    assert pushed_assignments(domain) == []
    assert domain.find_task(task.task_id).status is TaskStatus.queued

    # when the wait is over, then it goes to Claude as a recorded fallback
    clock.advance(1)
    domain.sweep()
    [assign] = pushed_assignments(domain)
    assert assign.task_id == task.task_id
    assert assign.routing_decision is not None
    assert assign.routing_decision.target_type.value == "claude"
    assert assign.routing_decision.fallback_used is True
    assert assign.routing_decision.fallback_reason == "no_healthy_ollama_endpoints"


def test_endpoint_that_turns_healthy_during_the_wait_gets_the_task(
    domain: Hub, clock: ManualClock
) -> None:
    # given a standard task waiting because the agent's endpoint is not checked yet
    domain.identify(frames.Identify.model_validate(
        {"type": "identify", "agent_id": "worker", "token": "checked-by-the-edge",
         "ollama_url": "http://10.0.0.7:11434"}), "10.0.0.7")  # fmt: skip
    domain.task_ops.submit(TaskSubmission(description=NEUTRAL, complexity_tier=Tier.standard))
    assert pushed_assignments(domain) == []

    # when its health check succeeds and the wait ends
    domain.endpoints.record_check("worker-local", clock.now_ms(), ["qwen2.5-coder:7b"])
    clock.advance(5_000)
    domain.sweep()

    # then the task runs on that endpoint, with no fallback
    [assign] = pushed_assignments(domain)
    decision = assign.routing_decision
    assert decision is not None
    assert (decision.target_type.value, decision.selected_endpoint, decision.fallback_used) == (
        "ollama", "10.0.0.7:11434", False)  # fmt: skip
