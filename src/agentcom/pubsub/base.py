"""What the server uses of a pubsub: :class:`PubSub`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from agentcom.pubsub.link import ClusterLink
    from agentcom.pubsub.memory import Subscription

__all__ = ["PubSub"]


class PubSub(Protocol):
    """Topic fan-out to this process's subscribers, and to other hub nodes' when the
    implementation reaches them. Publishing never waits."""

    #: Events dropped from slow local subscribers' queues since start, by topic.
    dropped_by_topic: dict[str, int]

    #: Told of each event another node published (topic, encoded event); never called
    #: by a pubsub that reaches no other node.
    on_remote: Callable[[str, bytes], None] | None

    @property
    def cluster_link(self) -> ClusterLink | None:
        """The link to the other nodes; None when events stay within this process."""

    def subscribe(self, topics: Iterable[str] | None = None) -> Subscription:
        """A new subscription to ``topics`` (all topics when None)."""

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop delivering to ``subscription`` and wake its reader."""

    def publish(self, topic: str, event: dict[str, Any]) -> int:
        """Offer ``event`` to every subscriber of ``topic``; returns how many local
        subscribers got it."""

    def subscriptions(self) -> set[Subscription]:
        """Distinct live local subscriptions."""

    def subscriber_count(self) -> int:
        """Distinct live local subscriptions."""

    async def start(self) -> None:
        """Start what runs in the background (nothing for an in-process pubsub)."""

    async def stop(self) -> None:
        """Stop what :meth:`start` started; no task is left behind."""
