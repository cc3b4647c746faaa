"""Messages and channels on a hub node that shares its database with other nodes
(``Settings.shares_database``): what :class:`Messaging` does, reaching the agents of
every node.

- **Direct messages.** To an agent connected here: pushed, as by a lone hub. To any
  other agent: kept in the database with the commit that answers ``message_sent``
  (``store/pgmessages.py``), and the other nodes are told (an ``inbox`` event); the node
  the recipient is connected to, now or when it next connects, takes the message from
  the database, which lets one node take it, and delivers it (:meth:`deliver_taken`,
  driven by ``server/sharedmessages.py``).
- **Broadcasts.** Pushed to this node's agents and sent to the other nodes, which push
  them to theirs.
- **Channels.** The database numbers each message: ``server/sharedmessages.py`` has it
  stored and numbered between :meth:`draft_channel_message` and
  :meth:`channel_published`. Each node pushes every message to its own connected
  subscribers once, in the order of their numbers: a channel's ``seq`` in memory is how
  far this node has delivered it, and a message numbered past the next is preceded by
  those between, read from the database. Channels, their subscriber counts and history
  are read from the database, so every node answers alike; an agent's subscriptions are
  read when it identifies here (it can change them only through the node it is
  connected to).

Events between nodes go on the pubsub's topic :data:`MESSAGES_TOPIC`, which no dashboard
can subscribe to.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any, Protocol

from pydantic_core import to_json

from agentcom.config import Settings
from agentcom.errors import HubError, StoreError
from agentcom.hub.agents import Presence
from agentcom.hub.channels import Channel, ChannelMessage, channel_message_of
from agentcom.hub.clock import Clock
from agentcom.hub.messaging import Messaging, Push, channel_push, kept_size
from agentcom.protocol import agent as frames
from agentcom.protocol.outbound import (
    ChannelAgentJoined,
    ChannelHistoryReply,
    ChannelList,
    ChannelPublished,
    ChannelSubscribed,
    MessagePush,
    channel_entry,
)
from agentcom.store.base import ChannelRow, Store

__all__ = ["MESSAGES_TOPIC", "SharedMessageStore", "SharedMessaging"]

logger = logging.getLogger(__name__)

MESSAGES_TOPIC = "messages"
"""The pubsub topic of the events nodes send one another about messages and channels."""

Publish = Callable[[str, dict[str, Any]], None]


class SharedMessageStore(Store, Protocol):
    """The store of a database shared by several nodes, for messages
    (:class:`agentcom.store.postgres.PostgresStore`)."""

    def stage_inbox_message(
        self, message_id: str, recipient: str, sent_at: int, size: int, body: str
    ) -> None:
        """Queue a direct message kept for ``recipient``."""

    def stage_inbox_trim(
        self, recipient: str, oldest_ms: int, max_messages: int, max_bytes: int,
        node_timeout_ms: int,
    ) -> None:  # fmt: skip
        """Queue the trimming of an inbox whose recipient is connected to no live node."""

    def stage_inbox_removal(self, recipient: str) -> None:
        """Queue the removal of every message kept for ``recipient``."""

    def stage_new_channel(self, name: str, description: str | None, created_at: int) -> None:
        """Queue a new channel."""

    def channel_summary(self, name: str) -> tuple[ChannelRow, int] | None:
        """A channel as stored and its subscribers' count, or None."""

    def channel_summaries(self) -> list[tuple[ChannelRow, int]]:
        """Every channel as stored with its subscribers' count."""

    def channel_seqs(self) -> dict[str, int]:
        """The number of the last message of every channel, by name."""

    def subscribed_channels(self, agent_id: str) -> list[ChannelRow]:
        """The channels ``agent_id`` is subscribed to, as stored."""

    def channel_messages_between(
        self, channel: str, after: int, before: int
    ) -> list[dict[str, Any]]:
        """The stored messages of ``channel`` numbered strictly between, in order."""

    def channel_history(
        self, channel: str, since: int, limit: int, max_chars: int
    ) -> list[dict[str, Any]]:
        """The newest stored messages of ``channel`` after ``since``, oldest first."""


class SharedMessaging(Messaging):
    """:class:`Messaging` for a node sharing its database; see the module docstring.

    Args:
        presence: who is connected to this node.
        store: the shared database's store.
        clock: time source.
        settings: inbox bounds, channel history bounds, node timeout.
        push: queues a frame for one agent of this node (sent after the next commit).
        publish: queues an event for the pubsub (published after the next commit).
    """

    def __init__(
        self,
        presence: Presence,
        store: SharedMessageStore,
        clock: Clock,
        settings: Settings,
        push: Push,
        publish: Publish,
    ) -> None:
        super().__init__(presence, store, clock, settings, push)
        self._shared_store = store
        self._publish = publish
        # Told of each agent connected here for whom messages may wait in the database.
        self.on_inbox_waiting: Callable[[str], None] | None = None

    # --- direct and broadcast messages ------------------------------------------------

    def _broadcast(self, message: MessagePush) -> None:
        super()._broadcast(message)
        self._publish(MESSAGES_TOPIC, {"type": "broadcast", "message": _wire(message)})

    def _keep(self, recipient: str, message: MessagePush, size: int) -> None:
        """Keep ``message`` in the database for the node ``recipient`` is connected to,
        now or next; the other nodes are told once it is committed."""
        settings = self._settings
        store = self._shared_store
        body = to_json(_wire(message)).decode()
        store.stage_inbox_message(message.id, recipient, message.timestamp, size, body)
        store.stage_inbox_trim(
            recipient,
            self._clock.now_ms() - int(settings.offline_message_ttl_s * 1000),
            settings.offline_message_cap,
            settings.offline_inbox_bytes,
            int(settings.node_timeout_s * 1000),
        )
        self._publish(MESSAGES_TOPIC, {"type": "inbox", "agent_id": recipient})

    def agent_arrived(self, agent_id: str) -> None:
        """An agent identified here: its subscriptions are read from the database, and
        the messages kept for it are taken (by the server, told through
        :attr:`on_inbox_waiting`)."""
        try:
            self._load_subscriptions(agent_id)
        except StoreError as exc:
            logger.warning("could not read agent %s's subscriptions: %s", agent_id, exc)
        if self.on_inbox_waiting is not None:
            self.on_inbox_waiting(agent_id)

    def deliver_taken(self, taken: list[tuple[str, str]]) -> None:
        """Push messages taken from the database, ``(recipient, body)``; one whose
        recipient left this node meanwhile is kept again."""
        for recipient, body in taken:
            message = MessagePush.model_validate_json(body)
            if self._is_connected(recipient):
                self._push(recipient, message)
            else:
                self._keep(recipient, message, kept_size(message))

    def forget_inbox(self, agent_id: str) -> None:
        super().forget_inbox(agent_id)
        self._shared_store.stage_inbox_removal(agent_id)

    # --- what other nodes send --------------------------------------------------------

    def remote_event(self, event: dict[str, Any]) -> None:
        """Another node sent ``event`` (on :data:`MESSAGES_TOPIC`): deliver what it
        carries to this node's agents."""
        kind = event.get("type")
        if kind == "inbox":
            agent_id = event["agent_id"]
            if self._is_connected(agent_id) and self.on_inbox_waiting is not None:
                self.on_inbox_waiting(agent_id)
        elif kind == "broadcast":
            super()._broadcast(MessagePush.model_validate(event["message"]))
        elif kind == "channel_message":
            self.channel_message_arrived(channel_message_of(event["message"]))
        elif kind == "channel_joined":
            channel = self.channels.channels.get(event["channel"])
            if channel is not None:
                joined = ChannelAgentJoined(channel=channel.name, agent_id=event["agent_id"])
                self._push_to_subscribers(channel, joined, event["agent_id"])

    # --- channels ---------------------------------------------------------------------

    def restore(self) -> None:
        """Load channels and subscriptions from the store; not their history, which is
        read from the database when asked for."""
        channels, subscriptions, _ = self._store.load_channels(0)
        self.channels.restore(channels, subscriptions, [])

    def _channel(self, name: str) -> Channel:
        """A channel, read from the database when this node does not know it yet;
        raises ``channel_not_found``."""
        channel = self.channels.channels.get(name)
        if channel is not None:
            return channel
        found = self._shared_store.channel_summary(name)
        if found is None:
            raise HubError("channel_not_found", f"no channel {name}")
        return self._known(found[0])

    def _known(self, row: ChannelRow) -> Channel:
        """The channel of a stored row, added to memory (numbered as stored) when new."""
        name, description, created_at, seq = row
        channel = self.channels.channels.get(name)
        if channel is None:
            settings = self._settings
            channel = Channel(
                name, description, created_at, settings.channel_history_cap,
                settings.channel_history_bytes, seq=seq,
            )  # fmt: skip
            self.channels.channels[name] = channel
        return channel

    def _load_subscriptions(self, agent_id: str) -> None:
        """Take ``agent_id``'s subscriptions as stored. Its channels' other subscribers
        here get what this node missed of them first: the agent itself gets only what
        is published from now on."""
        stored = self._shared_store.subscribed_channels(agent_id)
        for channel in self.channels.subscriptions_of(agent_id):
            channel.subscribers.discard(agent_id)
        for row in stored:
            channel = self._known(row)
            try:
                self._catch_up(channel, row[3])
            except StoreError as exc:
                logger.warning("channel %s: messages up to %d could not be read (%s); not "
                               "delivered here", channel.name, row[3], exc)  # fmt: skip
                channel.seq = max(channel.seq, row[3])
            channel.subscribers.add(agent_id)

    def create_channel(self, name: str, description: str | None) -> dict[str, Any]:
        """A new channel (operators create them); ``already_exists`` when any node made
        it."""
        channel = self.channels.create(name, description, self._clock.now_ms())
        try:
            found = self._shared_store.channel_summary(name)
        except StoreError:
            del self.channels.channels[name]
            raise
        if found is not None:
            del self.channels.channels[name]
            self._known(found[0])
            raise HubError("already_exists", f"channel {name} exists")
        self._shared_store.stage_new_channel(name, description, channel.created_at)
        return channel.summary()

    def list_channels(self) -> ChannelList:
        """Every channel, as stored (subscribers of every node counted)."""
        entries = []
        for (name, description, created_at, seq), count in self._shared_store.channel_summaries():
            entry = channel_entry(
                name=name, description=description, created_at=created_at,
                subscribers=count, last_seq=seq,
            )  # fmt: skip
            entries.append(entry)
        return ChannelList(channels=entries)

    def subscribe(self, agent_id: str, name: str) -> ChannelSubscribed:
        """Subscribe; other connected subscribers of every node hear of it."""
        joining = agent_id not in self._channel(name).subscribers
        reply = super().subscribe(agent_id, name)
        if joining:
            event = {"type": "channel_joined", "channel": name, "agent_id": agent_id}
            self._publish(MESSAGES_TOPIC, event)
        return reply

    def publish(self, agent_id: str, frame: frames.ChannelPublish) -> ChannelPublished:
        """Not here: the database numbers the messages (:meth:`draft_channel_message`,
        then :meth:`channel_published`)."""
        raise NotImplementedError("nodes sharing a database number channel messages in it")

    def draft_channel_message(self, agent_id: str, frame: frames.ChannelPublish) -> ChannelMessage:
        """The message ``frame`` publishes, numbered 0 until the database numbers it;
        raises ``channel_not_found`` or ``payload_too_large``."""
        self._payload_size(frame.payload)
        self._channel(frame.channel)
        return ChannelMessage(
            channel=frame.channel, seq=0, id=secrets.token_hex(12), sender=agent_id,
            payload=frame.payload, message_type=frame.message_type,
            reply_to=frame.reply_to, timestamp=self._clock.now_ms(),
        )  # fmt: skip

    def channel_published(self, message: ChannelMessage) -> ChannelPublished:
        """``message`` is stored with its number: deliver it to this node's subscribers
        and send it to the other nodes."""
        self.channel_message_arrived(message)
        self._publish(MESSAGES_TOPIC, {"type": "channel_message", "message": message.as_dict()})
        return ChannelPublished(channel=message.channel, seq=message.seq, id=message.id)

    def channel_message_arrived(self, message: ChannelMessage) -> None:
        """Deliver ``message`` to this node's connected subscribers (but its sender)
        unless they had it, after those numbered before it that they did not have."""
        channel = self.channels.channels.get(message.channel)
        if channel is None or message.seq <= channel.seq:
            return  # no subscriber here has ever seen the channel, or delivered already
        if message.seq > channel.seq + 1:
            try:
                self._catch_up(channel, message.seq - 1)
            except StoreError as exc:
                logger.warning(
                    "channel %s: messages %d to %d could not be read (%s); not delivered "
                    "here", channel.name, channel.seq + 1, message.seq - 1, exc,
                )  # fmt: skip
        channel.seq = message.seq
        self._push_to_subscribers(channel, channel_push(message), message.sender)

    def _catch_up(self, channel: Channel, up_to: int) -> None:
        """Deliver the messages of ``channel`` numbered after what this node delivered,
        up to ``up_to``, read from the database (only when someone here listens)."""
        if up_to <= channel.seq:
            return
        if any(self._is_connected(agent_id) for agent_id in channel.subscribers):
            for body in self._shared_store.channel_messages_between(
                channel.name, channel.seq, up_to + 1
            ):
                message = channel_message_of(body)
                self._push_to_subscribers(channel, channel_push(message), message.sender)
        channel.seq = up_to

    def catch_up_channels(self) -> None:
        """Deliver what this node missed of every channel it knows (events lost while
        the link between nodes was down)."""
        for name, seq in self._shared_store.channel_seqs().items():
            channel = self.channels.channels.get(name)
            if channel is not None:
                self._catch_up(channel, seq)

    def history(self, frame: frames.ChannelHistory) -> ChannelHistoryReply:
        """Recent messages of a channel as stored (``limit`` default 50, after ``since``
        when given)."""
        self._channel(frame.channel)
        stored = self._shared_store.channel_history(
            frame.channel,
            -1 if frame.since is None else frame.since,
            frame.limit or 50,
            self._settings.channel_history_bytes,
        )
        return ChannelHistoryReply(
            channel=frame.channel, messages=[channel_message_of(body).as_dict() for body in stored]
        )


def _wire(message: MessagePush) -> dict[str, Any]:
    """A message push as sent (``from``, not ``sender``)."""
    return message.model_dump(by_alias=True)
