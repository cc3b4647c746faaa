"""The hub's own close codes, in WebSocket's private range (4000-4999), named in one place.

Standard codes come from :class:`websockets.frames.CloseCode`: ``POLICY_VIOLATION`` (1008:
no identify in time, bad token, too many violations, cooldown, unknown path),
``GOING_AWAY`` (1001: an agent silent for too long), ``SERVICE_RESTART`` (1012: the hub
stops; clients reconnect) and ``UNSUPPORTED_DATA`` (1003: a binary message).
"""

from __future__ import annotations

__all__ = ["CLOSE_REPLACED", "CLOSE_REVOKED"]

CLOSE_REPLACED = 4001
"""An agent connection replaced by a newer one of the same agent (reason ``replaced``)."""

CLOSE_REVOKED = 4003
"""A session whose token was revoked (reason ``token revoked``)."""
