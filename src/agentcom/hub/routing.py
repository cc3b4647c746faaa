"""From a task's tier to a target: the routing decision of PROTOCOL.md section 2.

``trivial`` runs as a shell command on the agent's host (only when the task carries
``metadata.shell_command``), ``standard`` on the best healthy Ollama endpoint,
``complex`` on the Claude API. When a tier has no viable target the router says so
(:class:`NoViableTarget`); the hub waits a while for one to appear, then asks again
with escalation allowed, and the decision records the fallback and why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agentcom.hub.agents import AgentRecord
from agentcom.hub.complexity import classify
from agentcom.hub.endpoints import Endpoint, EndpointRegistry
from agentcom.protocol.common import CostTier, TargetType, Tier
from agentcom.protocol.outbound import Complexity, RoutingDecision
from agentcom.protocol.task import Task

__all__ = ["NoViableTarget", "Router", "task_complexity"]

_TARGET_OF_TIER = {
    Tier.trivial: (TargetType.sidecar, CostTier.free),
    Tier.standard: (TargetType.ollama, CostTier.local),
    Tier.complex: (TargetType.claude, CostTier.api),
}
_ESCALATION = {Tier.trivial: Tier.standard, Tier.standard: Tier.complex}
_UNKNOWN_LOAD = 0.5


class NoViableTarget(Exception):
    """The preferred tier has no target now; ``reason`` is the fallback reason."""

    def __init__(self, reason: str, tier: Tier) -> None:
        super().__init__(reason)
        self.reason = reason
        self.tier = tier


@dataclass(frozen=True, slots=True)
class EndpointChoice:
    """The endpoint picked for a ``standard`` task, and how."""

    endpoint: Endpoint
    model: str
    candidates: int
    load: float | None
    warm: bool

    def describe(self) -> str:
        """One line for ``classification_reason``."""
        load = "unknown load" if self.load is None else f"load {self.load:.2f}"
        warm = ", warm model" if self.warm else ""
        return (
            f"endpoint {self.endpoint.endpoint_id} ({self.candidates} candidate"
            f"{'s' if self.candidates != 1 else ''}, {load}{warm})"
        )


def task_complexity(task: Task) -> Complexity:
    """The complexity of a task: explicit tier, else inferred from its text and shape."""
    return classify(
        task.description,
        task.complexity_tier,
        file_hints=len(task.file_hints),
        verification_steps=len(task.verification_steps),
    )


def host_load(resources: dict[str, Any] | None) -> float | None:
    """Mean of the CPU, RAM and VRAM usage ratios a host reported (None: nothing reported)."""
    if not resources:
        return None
    ratios = []
    cpu = resources.get("cpu_percent")
    if isinstance(cpu, int | float):
        ratios.append(min(1.0, cpu / 100))
    for used_key, total_key in (("ram_used_bytes", "ram_total_bytes"),
                                ("vram_used_bytes", "vram_total_bytes")):  # fmt: skip
        used, total = resources.get(used_key), resources.get(total_key)
        if isinstance(used, int | float) and isinstance(total, int | float) and total > 0:
            ratios.append(min(1.0, used / total))
    return sum(ratios) / len(ratios) if ratios else None


class Router:
    """Turns a task's complexity into a target, endpoint and model.

    Args:
        endpoints: the Ollama endpoint registry.
        resources_of: the latest resource report of an endpoint's host, or None.
        claude_model: model id named for ``complex`` tasks.
    """

    def __init__(
        self,
        endpoints: EndpointRegistry,
        resources_of: Callable[[Endpoint], dict[str, Any] | None],
        claude_model: str,
    ) -> None:
        self._endpoints = endpoints
        self._resources_of = resources_of
        self._claude_model = claude_model

    def decide(
        self, task: Task, agent: AgentRecord | None, allow_fallback: bool
    ) -> tuple[Complexity, RoutingDecision, EndpointChoice | None]:
        """The routing of ``task`` on ``agent`` (None for a dry run).

        Raises:
            NoViableTarget: the tier has no target and ``allow_fallback`` is False.
        """
        complexity = task_complexity(task)
        tier = complexity.effective_tier
        reason = describe_complexity(complexity)
        if tier is Tier.trivial and not task.metadata.get("shell_command"):
            tier = Tier.standard
            reason += "; no metadata.shell_command, so routed as standard"
        requested = tier
        fallback_reason: str | None = None
        while True:
            if tier is not Tier.standard:
                break
            choice = self.choose_endpoint(task, agent)
            if choice is not None:
                reason += "; " + choice.describe()
                decision = self._decision(tier, reason, choice, fallback_reason, requested)
                return complexity, decision, choice
            fallback_reason = fallback_reason or "no_healthy_ollama_endpoints"
            if not allow_fallback:
                raise NoViableTarget(fallback_reason, tier)
            tier = _ESCALATION[tier]
        return complexity, self._decision(tier, reason, None, fallback_reason, requested), None

    def choose_endpoint(self, task: Task, agent: AgentRecord | None) -> EndpointChoice | None:
        """The best viable endpoint: least loaded host, warm model, local, repo affinity.

        Only endpoints the agent may use count: operators' endpoints, endpoints an admin
        approved, and the agent's own. Another agent's endpoint, even approved, comes
        after every operator endpoint whatever it reports (load, warm models), since
        those figures are its owner's word.
        """
        owner = agent.agent_id if agent is not None else None
        candidates = [
            e for e in self._endpoints.viable() if e.shared or (owner and e.agent_id == owner)
        ]
        if not candidates:
            return None
        wanted = task.metadata.get("model")

        def score(endpoint: Endpoint) -> tuple[int, float, str]:
            trusted = int(endpoint.source == "operator" or endpoint.agent_id == owner)
            load = host_load(self._resources_of(endpoint))
            value = 1 - (_UNKNOWN_LOAD if load is None else load)
            if endpoint.loaded:
                value += 0.5
            if wanted in endpoint.models:
                value += 0.5
            if agent is not None and endpoint.agent_id == agent.agent_id:
                value += 0.3
            if task.repo and task.repo in endpoint.recent_repos:
                value += 0.2
            return trusted, value, endpoint.endpoint_id

        best = max(candidates, key=score)
        warm_models = [m for m in best.loaded if m in best.models]
        if isinstance(wanted, str) and wanted in best.models:
            model = wanted
        else:
            model = warm_models[0] if warm_models else best.models[0]
        load = host_load(self._resources_of(best))
        return EndpointChoice(best, model, len(candidates), load, model in best.loaded)

    def _decision(
        self,
        tier: Tier,
        reason: str,
        choice: EndpointChoice | None,
        fallback_reason: str | None,
        requested: Tier,
    ) -> RoutingDecision:
        target, cost = _TARGET_OF_TIER[tier]
        model = choice.model if choice else None
        if target is TargetType.claude:
            model = self._claude_model
        if tier is not requested:
            reason += f"; escalated {requested.value} -> {tier.value}"
        return RoutingDecision(
            effective_tier=tier,
            target_type=target,
            selected_endpoint=choice.endpoint.host_port if choice else None,
            selected_model=model,
            fallback_used=fallback_reason is not None,
            fallback_reason=fallback_reason,
            classification_reason=reason,
            estimated_cost_tier=cost,
        )


def describe_complexity(complexity: Complexity) -> str:
    """Source, tier, confidence and signals in one line."""
    text = f"{complexity.source}: {complexity.effective_tier.value}"
    if complexity.source != "explicit" and complexity.inferred is not None:
        text += f" (confidence {complexity.inferred.confidence:.2f})"
    if complexity.signals:
        text += f" [{'; '.join(complexity.signals)}]"
    return text
