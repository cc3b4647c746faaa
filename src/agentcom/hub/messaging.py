"""Messages between agents and channels: delivery, offline inboxes, durable history."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from pydantic_core import to_json

from agentcom.config import Settings
from agentcom.errors import HubError
from agentcom.hub.agents import Presence
from agentcom.hub.bounded import SizedQueue
from agentcom.hub.channels import Channel, ChannelMessage, ChannelRegistry
from agentcom.hub.clock import Clock
from agentcom.protocol import agent as frames
from agentcom.protocol.common import Outbound
from agentcom.protocol.outbound import (
    ChannelAgentJoined,
    ChannelHistoryReply,
    ChannelList,
    ChannelMessagePush,
    ChannelPublished,
    ChannelSubscribed,
    ChannelUnsubscribed,
    MessagePush,
    MessageSent,
)
from agentcom.store.base import Store

__all__ = ["MESSAGE_OVERHEAD", "Messaging", "Push", "channel_push", "kept_size"]

Push = Callable[[str, Outbound], None]
MESSAGE_OVERHEAD = 256
"""A kept message's fields besides its payload, roughly, in bytes (counted against an
inbox's bytes)."""


class Messaging:
    """Direct and broadcast messages, offline inboxes, and channels.

    Args:
        presence: who is connected.
        store: where channels, subscriptions and history are staged.
        clock: time source.
        settings: inbox cap and TTL, channel history cap.
        push: queues a frame for one agent (sent after the next commit).
    """

    def __init__(
        self, presence: Presence, store: Store, clock: Clock, settings: Settings, push: Push
    ) -> None:
        self._presence = presence
        self._store = store
        self._clock = clock
        self._settings = settings
        self._push = push
        self.channels = ChannelRegistry(
            settings.channel_history_cap, settings.channel_history_bytes
        )
        # Direct messages kept for offline agents, bounded in count and in bytes.
        self._inboxes: dict[str, SizedQueue[MessagePush]] = {}

    def restore(self) -> None:
        """Load channels, subscriptions and history from the store."""
        self.channels.restore(*self._store.load_channels(self._settings.channel_history_bytes))

    def reload(self) -> None:
        """Forget channel state in memory and load it again, after the store refused a change."""
        self.channels = ChannelRegistry(
            self._settings.channel_history_cap, self._settings.channel_history_bytes
        )
        self.restore()

    def _others(self, sender: str) -> list[str]:
        return [a.agent_id for a in self._presence.connected() if a.agent_id != sender]

    # --- messages -------------------------------------------------------------------

    def _payload_size(self, payload: dict[str, Any]) -> int:
        """The payload's size as JSON; raises ``payload_too_large`` past the setting."""
        size = len(to_json(payload))
        limit = self._settings.max_message_payload_bytes
        if size > limit:
            raise HubError("payload_too_large", f"payload is {size} bytes; the limit is {limit}")
        return size

    def send(self, sender: str, frame: frames.Message) -> MessageSent:
        """Deliver a direct or broadcast message; keep direct ones for an offline recipient
        that holds an agent token."""
        size = self._payload_size(frame.payload) + MESSAGE_OVERHEAD
        message = MessagePush(
            id=secrets.token_hex(12),
            sender=sender,
            to=frame.to,
            payload=frame.payload,
            message_type=frame.message_type,
            reply_to=frame.reply_to,
            timestamp=self._clock.now_ms(),
        )
        if frame.to is None:
            self._broadcast(message)
        elif self._is_connected(frame.to):
            self._push(frame.to, message)
        elif not self._store.has_token(frame.to, role="agent"):
            # Only real agents get an inbox: made-up ids, operators' ids and revoked
            # agents must not grow memory.
            raise HubError("unknown_recipient", f"no agent {frame.to}")
        else:
            self._keep(frame.to, message, size)
        return MessageSent(id=message.id)

    def _is_connected(self, agent_id: str) -> bool:
        """Whether ``agent_id`` is connected here."""
        agent = self._presence.get(agent_id)
        return agent is not None and agent.connected

    def _broadcast(self, message: MessagePush) -> None:
        """Push ``message`` to every connected agent but its sender."""
        for agent_id in self._others(message.sender):
            self._push(agent_id, message)

    def _keep(self, recipient: str, message: MessagePush, size: int) -> None:
        """Keep ``message`` (of ``size`` as counted against the inbox's bytes) for an
        agent that is not connected."""
        if not self._settings.offline_message_cap:
            return
        inbox = self._inboxes.get(recipient)
        if inbox is None:
            settings = self._settings
            inbox = self._inboxes[recipient] = SizedQueue(
                settings.offline_message_cap, settings.offline_inbox_bytes
            )
        inbox.append(message, size)

    def agent_arrived(self, agent_id: str) -> None:
        """An agent identified: the messages kept for it are delivered."""
        self.deliver_inbox(agent_id)

    def deliver_inbox(self, agent_id: str) -> int:
        """Push an agent's kept messages that have not expired; returns how many."""
        inbox = self._inboxes.pop(agent_id, None)
        if not inbox:
            return 0
        oldest = self._clock.now_ms() - int(self._settings.offline_message_ttl_s * 1000)
        fresh = [message for message in inbox if message.timestamp >= oldest]
        for message in fresh:
            self._push(agent_id, message)
        return len(fresh)

    def forget_inbox(self, agent_id: str) -> None:
        """Drop the messages kept for ``agent_id`` (its token was revoked)."""
        self._inboxes.pop(agent_id, None)

    # --- channels -------------------------------------------------------------------

    def create_channel(self, name: str, description: str | None) -> dict[str, Any]:
        """A new channel (operators create them)."""
        channel = self.channels.create(name, description, self._clock.now_ms())
        self._store.stage_channel(channel.name, description, channel.created_at, channel.seq)
        return channel.summary()

    def list_channels(self) -> ChannelList:
        """Every channel."""
        return ChannelList(channels=[c.summary() for c in self.channels.channels.values()])

    def _channel(self, name: str) -> Channel:
        """A channel; raises ``channel_not_found``."""
        return self.channels.get(name)

    def _push_to_subscribers(self, channel: Channel, frame: Outbound, sender: str) -> None:
        """Push ``frame`` to every connected subscriber of ``channel`` but ``sender``."""
        for subscriber in channel.subscribers:
            if subscriber != sender and self._is_connected(subscriber):
                self._push(subscriber, frame)

    def subscribe(self, agent_id: str, name: str) -> ChannelSubscribed:
        """Subscribe; other connected subscribers hear of it."""
        channel = self._channel(name)
        if agent_id not in channel.subscribers:
            channel.subscribers.add(agent_id)
            self._store.stage_subscription(name, agent_id, subscribed=True)
            joined = ChannelAgentJoined(channel=name, agent_id=agent_id)
            self._push_to_subscribers(channel, joined, agent_id)
        return ChannelSubscribed(channel=name)

    def unsubscribe(self, agent_id: str, name: str) -> ChannelUnsubscribed:
        """Unsubscribe (idempotent)."""
        channel = self._channel(name)
        if agent_id in channel.subscribers:
            channel.subscribers.discard(agent_id)
            self._store.stage_subscription(name, agent_id, subscribed=False)
        return ChannelUnsubscribed(channel=name)

    def publish(self, agent_id: str, frame: frames.ChannelPublish) -> ChannelPublished:
        """Number, store and deliver a message to every other connected subscriber."""
        size = self._payload_size(frame.payload)
        message = self.channels.publish(
            frame.channel, agent_id, frame.payload, frame.message_type, frame.reply_to,
            self._clock.now_ms(), size,
        )  # fmt: skip
        channel = self.channels.channels[frame.channel]
        self._store.stage_channel(
            channel.name, channel.description, channel.created_at, channel.seq
        )
        self._store.stage_channel_message(message.as_dict(), self._settings.channel_history_cap)
        self._push_to_subscribers(channel, channel_push(message), agent_id)
        return ChannelPublished(channel=message.channel, seq=message.seq, id=message.id)

    def history(self, frame: frames.ChannelHistory) -> ChannelHistoryReply:
        """Recent messages of a channel (``limit`` default 50, after ``since`` when given)."""
        messages = self.channels.history(frame.channel, frame.limit or 50, frame.since)
        return ChannelHistoryReply(
            channel=frame.channel, messages=[message.as_dict() for message in messages]
        )


def channel_push(message: ChannelMessage) -> ChannelMessagePush:
    """The push of a channel message to its subscribers."""
    return ChannelMessagePush(
        channel=message.channel, seq=message.seq, id=message.id, sender=message.sender,
        payload=message.payload, message_type=message.message_type,
        reply_to=message.reply_to, timestamp=message.timestamp,
    )  # fmt: skip


def kept_size(message: MessagePush) -> int:
    """What a kept message counts against its inbox's bytes."""
    return len(to_json(message.payload)) + MESSAGE_OVERHEAD
