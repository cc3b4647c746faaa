"""Channels: named topics agents subscribe to, with numbered, capped history."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import to_json

from agentcom.errors import HubError
from agentcom.hub.bounded import SizedQueue
from agentcom.protocol.outbound import channel_entry, channel_message

__all__ = ["Channel", "ChannelMessage", "ChannelRegistry", "channel_message_of"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


@dataclass(frozen=True, slots=True)
class ChannelMessage:
    """One message published on a channel."""

    channel: str
    seq: int
    id: str
    sender: str
    payload: dict[str, Any]
    message_type: str | None
    reply_to: str | None
    timestamp: int

    def as_dict(self) -> dict[str, Any]:
        """The wire and storage form."""
        return channel_message(
            channel=self.channel,
            seq=self.seq,
            id=self.id,
            sender=self.sender,
            payload=self.payload,
            message_type=self.message_type,
            reply_to=self.reply_to,
            timestamp=self.timestamp,
        )


@dataclass(slots=True)
class Channel:
    """A channel, its subscribers and its recent history."""

    name: str
    description: str | None
    created_at: int
    history_cap: int
    history_bytes: int = 8 * 1024 * 1024
    seq: int = 0
    subscribers: set[str] = field(default_factory=set)
    # Recent messages, sized by their payload's bytes as JSON.
    history: SizedQueue[ChannelMessage] = field(init=False)

    def __post_init__(self) -> None:
        self.history = SizedQueue(self.history_cap, self.history_bytes)

    def summary(self) -> dict[str, Any]:
        """The ``list_channels`` entry."""
        return channel_entry(
            name=self.name,
            description=self.description,
            created_at=self.created_at,
            subscribers=len(self.subscribers),
            last_seq=self.seq,
        )


class ChannelRegistry:
    """Every channel by name.

    Args:
        history_cap: messages kept per channel; older ones are dropped.
        history_bytes: payload bytes kept per channel; older messages are dropped.
    """

    def __init__(self, history_cap: int = 500, history_bytes: int = 8 * 1024 * 1024) -> None:
        self.channels: dict[str, Channel] = {}
        self._history_cap = history_cap
        self._history_bytes = history_bytes

    def create(self, name: str, description: str | None, now_ms: int) -> Channel:
        """A new channel; raises ``invalid_name`` or ``already_exists``."""
        if not _NAME.match(name):
            raise HubError("invalid_name", "channel names are 1-64 of A-Z a-z 0-9 _ . : -")
        if name in self.channels:
            raise HubError("already_exists", f"channel {name} exists")
        channel = Channel(name, description, now_ms, self._history_cap, self._history_bytes)
        self.channels[name] = channel
        return channel

    def get(self, name: str) -> Channel:
        """A channel; raises ``channel_not_found``."""
        channel = self.channels.get(name)
        if channel is None:
            raise HubError("channel_not_found", f"no channel {name}")
        return channel

    def publish(
        self,
        name: str,
        sender: str,
        payload: dict[str, Any],
        message_type: str | None,
        reply_to: str | None,
        now_ms: int,
        size: int,
    ) -> ChannelMessage:
        """Append a message (``size``: its payload's bytes as JSON) with the channel's next
        sequence number."""
        channel = self.get(name)
        channel.seq += 1
        message = ChannelMessage(
            channel=name,
            seq=channel.seq,
            id=secrets.token_hex(12),
            sender=sender,
            payload=payload,
            message_type=message_type,
            reply_to=reply_to,
            timestamp=now_ms,
        )
        channel.history.append(message, size)
        return message

    def history(self, name: str, limit: int, since: int | None) -> list[ChannelMessage]:
        """Up to ``limit`` most recent messages, only those after ``since`` when given."""
        messages = [m for m in self.get(name).history if since is None or m.seq > since]
        return messages[-limit:]

    def subscriptions_of(self, agent_id: str) -> list[Channel]:
        """Channels the agent is subscribed to."""
        return [c for c in self.channels.values() if agent_id in c.subscribers]

    def restore(
        self,
        channels: list[tuple[str, str | None, int, int]],
        subscriptions: list[tuple[str, str]],
        messages: list[dict[str, Any]],
    ) -> None:
        """Load channels, subscriptions and history read from the store."""
        for name, description, created_at, seq in channels:
            channel = Channel(
                name, description, created_at, self._history_cap, self._history_bytes, seq=seq
            )
            self.channels[name] = channel
        for name, agent_id in subscriptions:
            if name in self.channels:
                self.channels[name].subscribers.add(agent_id)
        for body in messages:
            owner = self.channels.get(body["channel"])
            if owner is not None:
                owner.history.append(channel_message_of(body), len(to_json(body["payload"])))


def channel_message_of(body: dict[str, Any]) -> ChannelMessage:
    """A channel message from its stored (and wire) form."""
    return ChannelMessage(
        channel=body["channel"],
        seq=body["seq"],
        id=body["id"],
        sender=body["from"],
        payload=body["payload"],
        message_type=body.get("message_type"),
        reply_to=body.get("reply_to"),
        timestamp=body["timestamp"],
    )
