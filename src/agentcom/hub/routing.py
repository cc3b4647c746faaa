"""From a task's tier to a target: the routing decision of PROTOCOL.md section 2."""

from __future__ import annotations

from agentcom.hub.agents import AgentRecord
from agentcom.hub.endpoints import EndpointRegistry
from agentcom.protocol.common import CostTier, TargetType, Tier
from agentcom.protocol.outbound import Complexity, RoutingDecision
from agentcom.protocol.task import Task

__all__ = ["Router", "classify"]

_TARGET_OF_TIER = {
    Tier.trivial: (TargetType.sidecar, CostTier.free),
    Tier.standard: (TargetType.ollama, CostTier.local),
    Tier.complex: (TargetType.claude, CostTier.api),
}


def classify(task: Task) -> Complexity:
    """The task's tier: explicit when given, otherwise the default ``standard``."""
    if task.complexity_tier is not None:
        return Complexity(
            effective_tier=task.complexity_tier,
            source="explicit",
            explicit_tier=task.complexity_tier,
            signals=["explicit tier"],
        )
    return Complexity(effective_tier=Tier.standard, source="default", signals=["no tier given"])


class Router:
    """Turns a task's complexity into a target, endpoint and model.

    Args:
        endpoints: the Ollama endpoint registry.
        claude_model: model id named for ``complex`` tasks.
        ollama_default_model: model named when an endpoint's models are unknown.
    """

    def __init__(
        self,
        endpoints: EndpointRegistry,
        claude_model: str,
        ollama_default_model: str | None = None,
    ) -> None:
        self._endpoints = endpoints
        self._claude_model = claude_model
        self._ollama_default_model = ollama_default_model

    def decide(self, task: Task, agent: AgentRecord) -> tuple[Complexity, RoutingDecision]:
        """The complexity and routing decision for running ``task`` on ``agent``."""
        complexity = classify(task)
        tier = complexity.effective_tier
        reason = _describe(complexity)
        if tier is Tier.trivial and not task.metadata.get("shell_command"):
            tier = Tier.standard
            reason += "; no metadata.shell_command, so routed as standard"
        if tier is Tier.trivial:
            return complexity, self._decision(tier, reason)
        if tier is Tier.standard:
            endpoint = self._endpoints.choose_for(agent)
            if endpoint is not None:
                model = endpoint.models[0] if endpoint.models else self._ollama_default_model
                return complexity, self._decision(
                    tier, reason, endpoint=endpoint.host_port, model=model
                )
            return complexity, self._decision(
                Tier.complex,
                reason,
                fallback_reason="no_healthy_ollama_endpoints",
                requested=tier,
            )
        return complexity, self._decision(tier, reason)

    def _decision(
        self,
        tier: Tier,
        reason: str,
        endpoint: str | None = None,
        model: str | None = None,
        fallback_reason: str | None = None,
        requested: Tier | None = None,
    ) -> RoutingDecision:
        target, cost = _TARGET_OF_TIER[tier]
        if target is TargetType.claude:
            model = self._claude_model
        if fallback_reason is not None and requested is not None:
            reason += f"; escalated {requested.value} -> {tier.value}"
        return RoutingDecision(
            effective_tier=tier,
            target_type=target,
            selected_endpoint=endpoint,
            selected_model=model,
            fallback_used=fallback_reason is not None,
            fallback_reason=fallback_reason,
            classification_reason=reason,
            estimated_cost_tier=cost,
        )


def _describe(complexity: Complexity) -> str:
    text = f"{complexity.source}: {complexity.effective_tier.value}"
    if complexity.inferred is not None:
        text += f" (confidence {complexity.inferred.confidence:.2f})"
    if complexity.signals:
        text += f" [{', '.join(complexity.signals)}]"
    return text
