"""JSON Schema of every frame, generated from the models (served at ``/api/schemas``)."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel

from agentcom.protocol import outbound
from agentcom.protocol.agent import AGENT_FRAME
from agentcom.protocol.common import Outbound
from agentcom.protocol.events import AgentEvent, EndpointEvent, TaskEvent, ValidationEvent
from agentcom.protocol.operator import (
    DASHBOARD_FRAME,
    OPERATOR_FRAME,
    AuthOk,
    EventsDropped,
    OperatorError,
    OperatorResult,
    Snapshot,
)
from agentcom.protocol.task import Task

__all__ = ["all_schemas"]


def _outbound_models() -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    for name in outbound.__dict__:
        value = getattr(outbound, name)
        if (
            isinstance(value, type)
            and issubclass(value, Outbound)
            and value is not Outbound
            and "type" in value.model_fields
        ):
            found.append(value)
    return found


@functools.cache
def all_schemas() -> dict[str, Any]:
    """Schemas grouped by connection and direction."""
    hub_to_agent = {
        model.__name__: model.model_json_schema(by_alias=True, mode="serialization")
        for model in _outbound_models()
    }
    operator_replies: list[type[BaseModel]] = [AuthOk, OperatorResult, OperatorError]
    dashboard_frames: list[type[BaseModel]] = [
        Snapshot, EventsDropped, TaskEvent, AgentEvent, EndpointEvent, ValidationEvent,
    ]  # fmt: skip
    return {
        "agent_to_hub": AGENT_FRAME.json_schema(),
        "hub_to_agent": hub_to_agent,
        "operator_to_hub": OPERATOR_FRAME.json_schema(),
        "hub_to_operator": {m.__name__: m.model_json_schema() for m in operator_replies},
        "dashboard_to_hub": DASHBOARD_FRAME.json_schema(),
        "hub_to_dashboard": {m.__name__: m.model_json_schema() for m in dashboard_frames},
        "task": Task.model_json_schema(),
    }
