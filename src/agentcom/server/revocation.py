"""Revocation that bites: the open sessions of a token that stops being valid are closed.

Tokens are written straight to the database (``agentcom token revoke`` works while hubs
run), so a hub cannot be told; it finds out instead. Triggers in the database append a
row to ``token_revocations`` whenever a token is deleted, replaced or changes role, and
each hub polls for rows past the last one it saw: one indexed query per interval, the
same on every node sharing the database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from websockets.asyncio.server import ServerConnection

from agentcom.hub.auth import hash_token
from agentcom.server.closecodes import CLOSE_REVOKED
from agentcom.store.base import Store

__all__ = ["RevocationWatch"]

logger = logging.getLogger(__name__)

Closer = Callable[[ServerConnection, int, str], None]


class RevocationWatch:
    """Sessions by token, and the poll that closes those of revoked tokens.

    Args:
        store: where revocations are read.
        interval_s: time between polls; a revoked token's sessions close within it.
        close: starts closing a connection without waiting (``HubServer.close_in_background``).
        on_revoked: told the agent id of each revoked token (to forget what it held).
    """

    def __init__(
        self,
        store: Store,
        interval_s: float,
        close: Closer,
        on_revoked: Callable[[str], None],
    ) -> None:
        self._store = store
        self._interval_s = interval_s
        self._close = close
        self._on_revoked = on_revoked
        self._sessions: dict[str, set[ServerConnection]] = {}
        self._seen = store.last_revocation()
        self._poller: asyncio.Task[None] | None = None

    def track(self, token: str, connection: ServerConnection) -> str:
        """Remember that ``connection`` authenticated with ``token``; returns the key to
        :meth:`forget` it with when it ends."""
        digest = hash_token(token)
        self._sessions.setdefault(digest, set()).add(connection)
        return digest

    def forget(self, digest: str, connection: ServerConnection) -> None:
        """The session ended."""
        sessions = self._sessions.get(digest)
        if sessions is not None:
            sessions.discard(connection)
            if not sessions:
                del self._sessions[digest]

    def start(self) -> None:
        """Start polling."""
        self._poller = asyncio.create_task(self._poll_forever())

    async def stop(self) -> None:
        """Stop polling."""
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)

    def check(self) -> int:
        """Close the sessions of tokens revoked since the last check; returns how many."""
        closed = 0
        for seq, agent_id, digest in self._store.revocations_since(self._seen):
            self._seen = seq
            self._on_revoked(agent_id)
            for connection in self._sessions.pop(digest, ()):
                logger.warning("token of %s revoked: closing its session", agent_id)
                self._close(connection, CLOSE_REVOKED, "token revoked")
                closed += 1
        return closed

    async def _poll_forever(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                self.check()
            except Exception as exc:  # a failed read (database locked ...) is retried
                if not failing:  # said once per outage, not every interval
                    logger.warning("checking for revoked tokens failed: %s; retrying", exc)
                failing = True
            else:
                if failing:
                    logger.info("checking for revoked tokens works again")
                failing = False
