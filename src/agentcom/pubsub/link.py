"""What a subscriber may be told about its stream apart from events (:class:`Notice`),
and the state and counts of the link between hub nodes (:class:`ClusterLink`)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["ClusterLink", "Notice"]


class Notice(StrEnum):
    """Something a subscriber is told about its stream of events, apart from the events.

    A subscriber keeps only the latest notice it has not read: a ``resync`` makes an
    earlier ``events_may_be_missing`` moot, and an ``events_may_be_missing`` after a
    ``resync`` it has not acted on yet announces a new gap, which the next ``resync``
    covers as well.
    """

    #: The link to the other hub nodes is down: their events may not arrive from now on.
    events_may_be_missing = "events_may_be_missing"
    #: The link is back: what the subscriber holds may be stale and must be read afresh.
    resync = "resync"


@dataclass
class ClusterLink:
    """The state and counts of a pubsub's link to the other hub nodes (read by ``/health``
    and ``/metrics``).

    Args:
        kind: the engine carrying the events (``redis``).
        cluster: the cluster's name.
        node_id: this node's name.
        connected: whether the link is up (events go out and come in).
        since_ms: when it took its current state (epoch milliseconds).
    """

    kind: str
    cluster: str
    node_id: str
    connected: bool
    since_ms: int
    sent: int = 0  #: events handed to the link for the other nodes
    received: int = 0  #: events of other nodes offered to local subscribers
    dropped: int = 0  #: events of this node that did not reach the link (down, too slow)
    losses: int = 0  #: times the link went down
