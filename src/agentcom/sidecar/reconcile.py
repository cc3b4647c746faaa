"""Reconciliation after a reconnect: ``state_report`` out, ``state_report_ack`` in.

After every identify, a sidecar holding a task it still runs (or whose completion the hub
has not acknowledged yet) tells the hub which attempt it holds; the hub answers
``continue`` (the attempt is still this agent's) or ``abort`` (it is not: stop and drop
it). A hub that predates the frame answers ``validation_failed`` for it; the sidecar then
carries on as before the frame existed (its completion is fenced by the hub anyway).

Not sent for a task held across a sidecar restart that had not finished: that run died
with the old process, and ``task_recovering`` asks the hub what to do instead.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from agentcom.protocol.agent import StateReport
from agentcom.protocol.outbound import StateReportAck
from agentcom.sidecar.state import HeldTask

__all__ = ["read_ack", "refuses_state_report", "state_report"]

_ACK_FIELDS = tuple(StateReportAck.model_fields)


def _reported_status(held: HeldTask) -> str:
    """``working`` while it runs; ``completed`` or ``failed`` once its outcome is recorded."""
    if held.completion is None:
        return "working"
    result = held.completion.get("result") or {}
    return "completed" if result.get("status") == "success" else "failed"


def state_report(held: HeldTask) -> dict[str, Any]:
    """The ``state_report`` frame for ``held``, as the protocol model shapes it."""
    assigned_at = held.assign.get("assigned_at")
    report = StateReport(
        type="state_report",
        task_id=held.task_id,
        generation=held.generation,
        status=_reported_status(held),
        assigned_at=assigned_at if isinstance(assigned_at, int | float) else None,
    )
    return report.model_dump(exclude_none=True)


def read_ack(frame: dict[str, Any]) -> StateReportAck | None:
    """The hub's ``state_report_ack``, or None when it is malformed (keys beyond the
    protocol's, which another hub may add, are ignored)."""
    try:
        return StateReportAck.model_validate({key: frame.get(key) for key in _ACK_FIELDS})
    except ValidationError:
        return None


def refuses_state_report(frame: dict[str, Any]) -> bool:
    """Whether an ``error`` frame is a hub that does not speak ``state_report`` refusing it."""
    return frame.get("error") == "validation_failed" and frame.get("message_type") == "state_report"
