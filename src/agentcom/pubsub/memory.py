"""In-process pubsub: each event is encoded once, then offered to every subscriber.

A subscriber has a bounded queue; when it is full the oldest event is dropped and
counted, so publishing never waits for a slow subscriber.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Iterable
from typing import Any

__all__ = ["TOPICS", "MemoryPubSub", "Subscription"]

TOPICS = ("tasks", "agents", "validation")


class Subscription:
    """One subscriber's queue of encoded events.

    Args:
        topics: the topics it receives.
        max_queue: events kept while the subscriber is not reading; older ones are dropped.
    """

    def __init__(self, topics: Iterable[str], max_queue: int) -> None:
        self.topics = frozenset(topics)
        self._queue: deque[str] = deque()
        self._max_queue = max_queue
        self._ready = asyncio.Event()
        self._dropped = 0
        self.closed = False

    def offer(self, encoded: str) -> None:
        """Queue one event without waiting; drops the oldest when full."""
        if len(self._queue) >= self._max_queue:
            self._queue.popleft()
            self._dropped += 1
        self._queue.append(encoded)
        self._ready.set()

    async def next_batch(self) -> tuple[list[str], int]:
        """Wait for events; returns them all and how many were dropped since the last call."""
        while not self._queue and not self.closed:
            self._ready.clear()
            await self._ready.wait()
        batch = list(self._queue)
        self._queue.clear()
        dropped, self._dropped = self._dropped, 0
        return batch, dropped

    def close(self) -> None:
        """Wake the reader; :meth:`next_batch` returns empty batches from now on."""
        self.closed = True
        self._ready.set()


class MemoryPubSub:
    """Topics within one hub process."""

    def __init__(self, max_queue: int = 1000) -> None:
        self._max_queue = max_queue
        self._subscribers: dict[str, set[Subscription]] = {topic: set() for topic in TOPICS}

    def subscribe(self, topics: Iterable[str] | None = None) -> Subscription:
        """A new subscription to ``topics`` (all topics when None)."""
        subscription = Subscription(topics or TOPICS, self._max_queue)
        for topic in subscription.topics:
            self._subscribers.setdefault(topic, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop delivering to ``subscription`` and wake its reader."""
        for topic in subscription.topics:
            self._subscribers.get(topic, set()).discard(subscription)
        subscription.close()

    def publish(self, topic: str, event: dict[str, Any]) -> int:
        """Offer ``event`` to every subscriber of ``topic``; returns how many got it."""
        subscribers = self._subscribers.get(topic)
        if not subscribers:
            return 0
        encoded = json.dumps(event, separators=(",", ":"))
        for subscription in subscribers:
            subscription.offer(encoded)
        return len(subscribers)

    def subscriber_count(self) -> int:
        """Distinct live subscriptions."""
        return len({s for subscribers in self._subscribers.values() for s in subscribers})
