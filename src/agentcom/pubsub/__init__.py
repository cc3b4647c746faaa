"""Topic fan-out with bounded per-subscriber queues."""

from agentcom.pubsub.memory import MemoryPubSub, Subscription

__all__ = ["MemoryPubSub", "Subscription"]
