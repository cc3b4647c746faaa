"""What a connection session may use of the hub that runs it: :class:`SessionHost`.

As a python-websockets connection sees a few members of its server, the sessions
(``agent.py``, ``viewer.py``, ``http.py``, ``health.py``) see the hub through this
protocol rather than through :class:`~agentcom.server.app.HubServer` itself: they import
this module, never ``app``, and a session can be read (and faked) knowing only what is
named here. ``HubServer`` is the one implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

    from agentcom.config import Settings
    from agentcom.hub.auth import Authenticator
    from agentcom.hub.clock import Clock
    from agentcom.hub.hub import Effects, Hub
    from agentcom.hub.limits import ViolationTracker
    from agentcom.protocol.common import Outbound
    from agentcom.pubsub.base import PubSub
    from agentcom.server.cluster import SharedNode
    from agentcom.server.guard import Guard
    from agentcom.server.metrics import HubMetrics
    from agentcom.server.output import ReplyBudget
    from agentcom.server.revocation import RevocationWatch
    from agentcom.server.sharedmessages import SharedMessages
    from agentcom.server.waiters import TaskWaiters

    Answer = tuple[Outbound | None, Effects | None]
    """A frame's answer waiting for a commit: its reply, and what its command caused
    (None: a plain reply, which needs no commit)."""

__all__ = ["SessionHost"]


class SessionHost(Protocol):
    """The hub as its connection sessions see it: the domain, the shared services of the
    shell, and the operations that commit, send and close."""

    @property
    def settings(self) -> Settings:
        """The hub's configuration."""

    @property
    def clock(self) -> Clock:
        """The hub's time source."""

    @property
    def hub(self) -> Hub:
        """The domain facade; commands go through ``hub.run`` and their effects to
        :meth:`settle`."""

    @property
    def auth(self) -> Authenticator:
        """Tokens and their roles."""

    @property
    def guard(self) -> Guard:
        """Admission: a connection is marked authenticated, bad tokens are slowed down."""

    @property
    def revocations(self) -> RevocationWatch:
        """The open sessions of each token, closed when it is revoked."""

    @property
    def violations(self) -> ViolationTracker:
        """Protocol violations of agents, and their cooldowns."""

    @property
    def pubsub(self) -> PubSub:
        """Topic fan-out to dashboards."""

    @property
    def metrics(self) -> HubMetrics:
        """The hub's Prometheus metrics."""

    @property
    def replies(self) -> ReplyBudget:
        """The byte budget of replies written but not read."""

    @property
    def waiters(self) -> TaskWaiters:
        """Operators waiting for tasks to finish."""

    @property
    def agent_connections(self) -> dict[str, ServerConnection]:
        """The connection of each identified agent (pushes go there)."""

    @property
    def shared(self) -> SharedNode | None:
        """This node's part among nodes sharing the database; None for a lone hub."""

    @property
    def shared_messages(self) -> SharedMessages | None:
        """This node's part in the messages of nodes sharing the database; None for a
        lone hub."""

    @property
    def tls(self) -> bool:
        """Whether the hub serves wss:// and https://."""

    @property
    def insecure(self) -> bool:
        """Whether the hub listens beyond loopback without TLS."""

    @property
    def store_failing(self) -> bool:
        """The last write failed and none has succeeded since."""

    @property
    def store_error(self) -> str | None:
        """While the store fails: what the database last said (e.g. that it is unreachable)."""

    async def settle(
        self,
        connection: ServerConnection | None = None,
        reply: Outbound | None = None,
        effects: Effects | None = None,
    ) -> bool:
        """Commit what is staged, then send ``reply`` and ``effects``; False (after telling
        ``connection``) when the store refused the commit."""

    async def settle_all(
        self,
        connection: ServerConnection | None,
        answers: Sequence[Answer],
    ) -> bool:
        """:meth:`settle` for several frames of one connection: one commit, then their
        replies in order (a reply with None effects is sent even if the commit fails)."""

    async def commit(self) -> None:
        """Make what is staged durable, so that a read sees it."""

    async def ensure_store_writable(self) -> None:
        """Before new work: raise ``StoreError`` while the database cannot be written."""

    async def send(self, connection: ServerConnection, frame: Outbound) -> None:
        """Send one frame, waiting for the connection to take it."""

    def send_replies(
        self, connection: ServerConnection, frames: Sequence[Outbound], who: str
    ) -> None:
        """Write replies to an operator or dashboard, in one write, within the reply
        budget."""

    def close_in_background(self, connection: ServerConnection, code: int, reason: str) -> None:
        """Start closing ``connection`` without waiting for its peer."""
