"""Topic fan-out with bounded per-subscriber queues: within one process (``memory``), or
also between the hub nodes of a cluster (``redis``); :func:`make_pubsub` picks one from
the settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentcom.pubsub.base import PubSub
from agentcom.pubsub.link import ClusterLink, Notice
from agentcom.pubsub.memory import MemoryPubSub, Subscription

if TYPE_CHECKING:
    from agentcom.config import Settings
    from agentcom.hub.clock import Clock

__all__ = ["ClusterLink", "MemoryPubSub", "Notice", "PubSub", "Subscription", "make_pubsub"]


def make_pubsub(settings: Settings, clock: Clock) -> PubSub:
    """The pubsub that ``settings.pubsub`` names: in-process for ``memory``, else Redis
    (whose client is imported only then)."""
    if settings.pubsub == "memory":
        return MemoryPubSub(settings.subscriber_queue, settings.subscriber_queue_bytes)
    from agentcom.pubsub.redis import RedisPubSub

    return RedisPubSub(
        settings.pubsub,
        settings.cluster,
        settings.node_id,
        clock,
        max_queue=settings.subscriber_queue,
        max_bytes=settings.subscriber_queue_bytes,
        ping_interval_s=settings.pubsub_ping_interval_s,
        timeout_s=settings.pubsub_timeout_s,
        reconnect_max_s=settings.pubsub_reconnect_max_s,
        outbox_events=settings.pubsub_outbox_events,
        outbox_bytes=settings.pubsub_outbox_bytes,
    )
