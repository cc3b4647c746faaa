"""The exceptions of agentcom: a small hierarchy, each saying what happened."""

from __future__ import annotations

__all__ = [
    "AgentcomError",
    "ConfigurationError",
    "DatabaseInUse",
    "HubError",
    "LockLost",
    "StoreError",
]


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


class DatabaseInUse(AgentcomError):
    """Another hub process serves the database: one database has one hub.

    Args:
        database: the database file, as given.
        pid: the other hub's process id, when its lock file names it.
        host: the host it runs on, when known (a pid means little on another host or
            in another container).
        address: its agent endpoint (``ws://HOST:PORT/ws``), when known.
    """

    def __init__(
        self,
        database: str,
        pid: int | None = None,
        host: str | None = None,
        address: str | None = None,
    ) -> None:
        self.database = database
        self.pid = pid
        self.host = host
        self.address = address
        known = []
        if pid is not None:
            known.append(f"pid {pid}" + (f" on {host}" if host else ""))
        if address:
            known.append(f"listening on {address}")
        other = f"another hub ({', '.join(known)})" if known else "another hub"
        super().__init__(f"the database {database} is already served by {other}")


class ConfigurationError(AgentcomError):
    """The settings ask for something the hub refuses to do (listen in clear beyond
    loopback ...); the message says which setting changes it."""


class LockLost(AgentcomError):
    """The serving hub no longer holds its database's lock (its PostgreSQL session ended
    and another hub took the lock, or it could not tell in time): it must stop serving,
    since another hub may be serving the same database."""
