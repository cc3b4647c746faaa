"""Messages among the hub nodes sharing one PostgreSQL database: the server's part
(the domain's is :mod:`agentcom.hub.sharedmessaging`, the tables'
:mod:`agentcom.store.pgmessages`).

- **Numbering.** :meth:`SharedMessages.publish` has the database store and number a
  channel message before the domain delivers it and answers ``channel_published``.
- **Taking.** When an agent identifies here, or another node says a message waits for an
  agent connected here, the messages waiting for it are taken from the database (those
  of one loop turn's agents in one statement) and pushed.
- **Following.** The other nodes' events on the topic ``messages`` go to the domain.
- **A slow poll** every ``queue_poll_s`` does what a lost event (Redis down) would have
  done: it takes the messages waiting for every agent connected here, and delivers the
  channel messages this node has not.

What the domain decides to push here is settled by one task, in the order it was
decided: two settles running at once may finish in either order (one may wait for a
commit under way, the other not), and a subscriber must get a channel's messages in the
order of their numbers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from pydantic import ValidationError

from agentcom.errors import HubError, StoreError
from agentcom.hub.hub import Effects
from agentcom.hub.sharedmessaging import MESSAGES_TOPIC, SharedMessaging
from agentcom.server.cluster import every
from agentcom.store.pgmessages import ChannelDraft, MessageTables

if TYPE_CHECKING:
    from agentcom.config import Settings
    from agentcom.hub.hub import Hub
    from agentcom.protocol import agent as frames
    from agentcom.protocol.outbound import ChannelPublished

__all__ = ["SharedMessages"]

logger = logging.getLogger(__name__)


class MessagesHost(Protocol):
    """What the shared messages use of the server (``HubServer``)."""

    hub: Hub
    settings: Settings

    async def settle(self, *, effects: Effects) -> bool:
        """Commit, then send what ``effects`` hold."""


class SharedMessages:
    """This node's part in the messages of the nodes sharing its database; see the module
    docstring.

    Args:
        host: the server whose domain and settle it uses (its messaging must be a
            :class:`SharedMessaging`).
        tables: the database's numbering of channel messages and its waiting messages.
    """

    def __init__(self, host: MessagesHost, tables: MessageTables) -> None:
        messaging = host.hub.messaging
        if not isinstance(messaging, SharedMessaging):
            raise TypeError("the hub's messaging does not share its database")
        self.host = host
        self.tables = tables
        self.messaging = messaging
        messaging.on_inbox_waiting = self.inbox_waiting
        self._due: set[str] = set()  # agents connected here that messages may wait for
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._unsettled: list[Effects] = []  # in the order the domain decided them
        self._settle_wake = asyncio.Event()

    def start(self) -> None:
        """Start taking waiting messages, and the poll."""
        self._tasks = [
            asyncio.create_task(self._deliver_forever(), name="shared messages"),
            asyncio.create_task(
                every(self.host.settings.queue_poll_s, self.poll, "polling messages"),
                name="shared messages poll",
            ),
            asyncio.create_task(self._settle_forever(), name="shared messages settle"),
        ]

    async def stop(self) -> None:
        """Stop, and release the database connection."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.tables.close()

    # --- channel messages -----------------------------------------------------------

    async def publish(
        self, agent_id: str, frame: frames.ChannelPublish
    ) -> tuple[ChannelPublished, Effects]:
        """Publish on a channel: the message is stored and numbered by the database, then
        delivered here and sent to the other nodes (in order with the other messages
        delivered here); returns the reply and the effects left to settle with it.

        Raises:
            HubError: ``channel_not_found``, ``payload_too_large``.
            StoreError: the database could not store it.
        """
        hub = self.host.hub
        draft = self.messaging.draft_channel_message(agent_id, frame)
        seq = await self.tables.number_channel_message(
            ChannelDraft(draft.channel, draft.as_dict(), self.host.settings.channel_history_cap)
        )
        if seq is None:
            raise HubError("channel_not_found", f"no channel {draft.channel}")
        reply, effects = hub.run(
            self.messaging.channel_published, dataclasses.replace(draft, seq=seq)
        )
        self._settle_in_order(effects)
        return reply, Effects(mark=effects.mark)

    # --- what other nodes send ------------------------------------------------------

    def follow(self, others: Callable[[str, bytes], None]) -> Callable[[str, bytes], None]:
        """The handler of the other nodes' events (``PubSub.on_remote``): those about
        messages come here, the rest go to ``others``."""

        def remote_event(topic: str, encoded: bytes) -> None:
            if topic == MESSAGES_TOPIC:
                self.remote_event(topic, encoded)
            else:
                others(topic, encoded)

        return remote_event

    def remote_event(self, topic: str, encoded: bytes) -> None:
        """Another node published an event: one about messages goes to the domain."""
        if topic != MESSAGES_TOPIC:
            return
        try:
            event = json.loads(encoded)
            _, effects = self.host.hub.run(self.messaging.remote_event, event)
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            logger.warning("skipped a message event from another node: %s", exc)
            return
        self._settle_in_order(effects)

    def _settle_in_order(self, effects: Effects) -> None:
        """Settle ``effects`` after those given before (see the module docstring)."""
        if effects:
            self._unsettled.append(effects)
            self._settle_wake.set()

    async def _settle_forever(self) -> None:
        while True:
            await self._settle_wake.wait()
            self._settle_wake.clear()
            batch, self._unsettled = self._unsettled, []
            if not batch:
                continue
            effects = batch[0]
            for later in batch[1:]:
                effects.extend(later)
            try:
                if not await self.host.settle(effects=effects):
                    logger.warning("messages were not delivered: the commit failed")
            except Exception:
                logger.exception("delivering messages failed")

    # --- direct messages waiting in the database ------------------------------------

    def inbox_waiting(self, agent_id: str) -> None:
        """Messages may wait for ``agent_id``, connected here: take them soon."""
        self._due.add(agent_id)
        self._wake.set()

    async def _deliver_forever(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(0)  # the other agents of this loop turn join the batch
            self._wake.clear()
            due, self._due = self._due, set()
            try:
                await self.deliver(sorted(due))
            except StoreError as exc:  # the poll tries again
                logger.warning("could not take the messages waiting for %d agents: %s",
                               len(due), exc)  # fmt: skip
            except Exception:
                logger.exception("delivering messages waiting in the database failed")

    async def deliver(self, agent_ids: list[str]) -> None:
        """Take the messages waiting for those of ``agent_ids`` connected here, and push
        them. Raises StoreError when the database cannot be reached."""
        hub = self.host.hub
        connected = [
            agent_id
            for agent_id in agent_ids
            if (agent := hub.presence.get(agent_id)) is not None and agent.connected
        ]
        if not connected:
            return
        settings = self.host.settings
        oldest = hub.clock.now_ms() - int(settings.offline_message_ttl_s * 1000)
        taken = await self.tables.take_inboxes(connected, oldest)
        if not taken:
            return
        _, effects = hub.run(self.messaging.deliver_taken, taken)
        self._settle_in_order(effects)

    # --- the poll -------------------------------------------------------------------

    def poll(self) -> None:
        """Take the messages waiting for every agent connected here (soon), and deliver
        the channel messages this node missed. Raises StoreError when the channels
        cannot be read."""
        self._due.update(agent.agent_id for agent in self.host.hub.presence.connected())
        if self._due:
            self._wake.set()
        _, effects = self.host.hub.run(self.messaging.catch_up_channels)
        self._settle_in_order(effects)
