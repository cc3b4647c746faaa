"""In-process pubsub: each event is encoded once, then offered to every subscriber.

A subscriber has a queue bounded in events and in bytes; when either bound is reached
the oldest events are dropped and counted, so publishing never waits for a slow
subscriber and a slow subscriber never holds more than its bounds, whatever the size of
the events (an execution event may be as large as an inbound frame).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from pydantic_core import to_json

from agentcom.pubsub.link import ClusterLink, Notice

__all__ = ["TOPICS", "MemoryPubSub", "Subscription", "encode_event"]

TOPICS = ("tasks", "agents", "validation")


def encode_event(event: dict[str, Any]) -> bytes:
    """``event`` as subscribers receive it: compact UTF-8 JSON (which never holds a raw
    line break: JSON escapes them in strings)."""
    return to_json(event)


class Subscription:
    """One subscriber's queue of encoded events.

    Args:
        topics: the topics it receives.
        max_queue: events kept while the subscriber is not reading; older ones are dropped.
        max_bytes: size of the events kept, counting the last batch handed out (which its
            reader is still sending) until it asks for the next one; beyond it the oldest
            queued events are dropped. The newest event is always kept.
        dropped_by_topic: counts of dropped events by topic, added to (shared by every
            subscription of a pubsub, for metrics).
    """

    def __init__(
        self,
        topics: Iterable[str],
        max_queue: int,
        max_bytes: int,
        dropped_by_topic: dict[str, int] | None = None,
    ) -> None:
        self.topics = frozenset(topics)
        self._queue: deque[tuple[str, bytes]] = deque()  # (topic, encoded event)
        self._dropped_by_topic = {} if dropped_by_topic is None else dropped_by_topic
        self._max_queue = max_queue
        self._max_bytes = max_bytes
        self._queued_bytes = 0
        self._batch_bytes = 0
        self._ready = asyncio.Event()
        self._dropped = 0
        self._notice: Notice | None = None
        self.closed = False

    def offer(self, item: tuple[str, bytes]) -> None:
        """Queue one ``(topic, encoded event)`` without waiting (the same tuple goes to
        every subscriber); drops the oldest while over a bound."""
        self._queue.append(item)
        encoded = item[1]
        self._queued_bytes += len(encoded)
        while len(self._queue) > 1 and (
            len(self._queue) > self._max_queue
            or self._queued_bytes + self._batch_bytes > self._max_bytes
        ):
            dropped_topic, dropped = self._queue.popleft()
            self._queued_bytes -= len(dropped)
            self._dropped_by_topic[dropped_topic] = self._dropped_by_topic.get(dropped_topic, 0) + 1
            self._dropped += 1
        self._ready.set()

    def missed(self, count: int) -> None:
        """Count ``count`` events the subscriber will never get (lost before they reached
        this process); reported with the next batch like dropped ones."""
        self._dropped += count
        self._ready.set()

    def notify(self, notice: Notice) -> None:
        """Tell the reader ``notice`` with the next batch (it replaces an unread one)."""
        self._notice = notice
        self._ready.set()

    def take_notice(self) -> Notice | None:
        """The notice not yet read, if any; it is read once."""
        notice, self._notice = self._notice, None
        return notice

    @property
    def queued(self) -> int:
        """Events waiting for the subscriber to read them."""
        return len(self._queue)

    async def next_batch(self) -> tuple[list[bytes], int]:
        """Wait for events, a count of missed ones or a notice (:meth:`take_notice`);
        returns the events and how many were dropped since the last call.

        Calling it again means the previous batch was sent: its bytes stop counting.
        """
        self._batch_bytes = 0
        while not self._queue and not self._dropped and self._notice is None and not self.closed:
            self._ready.clear()
            await self._ready.wait()
        batch = [encoded for _, encoded in self._queue]
        self._queue.clear()
        self._batch_bytes, self._queued_bytes = self._queued_bytes, 0
        dropped, self._dropped = self._dropped, 0
        return batch, dropped

    def close(self) -> None:
        """Wake the reader; :meth:`next_batch` returns empty batches from now on."""
        self.closed = True
        self._ready.set()


class MemoryPubSub:
    """Topics within one hub process.

    Args:
        max_queue: events kept per subscriber that is not reading.
        max_bytes: bytes of events kept per subscriber that is not reading.
    """

    def __init__(self, max_queue: int = 1000, max_bytes: int = 4 * 1024 * 1024) -> None:
        self._max_queue = max_queue
        self._max_bytes = max_bytes
        # Events dropped from slow subscribers' queues since start, by topic.
        self.dropped_by_topic: dict[str, int] = {}
        self.on_remote: Callable[[str, bytes], None] | None = None  # no other node here
        self._subscribers: dict[str, set[Subscription]] = {topic: set() for topic in TOPICS}

    @property
    def cluster_link(self) -> ClusterLink | None:
        """None: events stay within this process."""
        return None

    async def start(self) -> None:
        """Nothing runs in the background."""

    async def stop(self) -> None:
        """Nothing runs in the background."""

    def subscribe(self, topics: Iterable[str] | None = None) -> Subscription:
        """A new subscription to ``topics`` (all topics when None)."""
        subscription = Subscription(
            topics or TOPICS, self._max_queue, self._max_bytes, self.dropped_by_topic
        )
        for topic in subscription.topics:
            self._subscribers.setdefault(topic, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop delivering to ``subscription`` and wake its reader."""
        for topic in subscription.topics:
            self._subscribers.get(topic, set()).discard(subscription)
        subscription.close()

    def publish(self, topic: str, event: dict[str, Any]) -> int:
        """Offer ``event`` to every subscriber of ``topic``; returns how many got it.

        The event is encoded only when someone subscribes to ``topic``.
        """
        if not self._subscribers.get(topic):
            return 0
        return self.offer(topic, encode_event(event))

    def offer(self, topic: str, encoded: bytes) -> int:
        """Offer an event already encoded (:func:`encode_event`) to every subscriber of
        ``topic``; returns how many got it."""
        subscribers = self._subscribers.get(topic)
        if not subscribers:
            return 0
        item = (topic, encoded)
        for subscription in subscribers:
            subscription.offer(item)
        return len(subscribers)

    def subscriptions(self) -> set[Subscription]:
        """Distinct live subscriptions."""
        return {s for subscribers in self._subscribers.values() for s in subscribers}

    def subscriber_count(self) -> int:
        """Distinct live subscriptions."""
        return len(self.subscriptions())

    def notify_all(self, notice: Notice) -> None:
        """Give every live subscription ``notice``."""
        for subscription in self.subscriptions():
            subscription.notify(notice)

    def missed(self, topic: str, count: int) -> None:
        """Tell every subscriber of ``topic`` that ``count`` events of it were lost before
        they reached this process."""
        for subscription in self._subscribers.get(topic, ()):
            subscription.missed(count)
