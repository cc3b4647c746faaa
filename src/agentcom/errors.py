"""The exceptions of agentcom: a small hierarchy, each saying what happened."""

from __future__ import annotations

__all__ = ["AgentcomError", "HubError", "StoreError"]


class AgentcomError(Exception):
    """Base of every error agentcom raises on purpose."""


class HubError(AgentcomError):
    """A request the hub refuses; ``code`` is the wire error code.

    Args:
        code: machine-readable code sent as ``error`` (``not_found``, ``invalid_state`` ...).
        message: one human-readable line.
        task_id: the task concerned, when there is one.
    """

    def __init__(self, code: str, message: str | None = None, task_id: str | None = None) -> None:
        super().__init__(message or code)
        self.code = code
        self.message = message
        self.task_id = task_id


class StoreError(AgentcomError):
    """The database could not read or commit; nothing was acknowledged."""
