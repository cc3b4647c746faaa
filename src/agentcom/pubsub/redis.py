"""Events shared between hub nodes through Redis.

:class:`RedisPubSub` serves this process's subscribers with a :class:`MemoryPubSub`
inside, exactly as a single hub does, and also:

- hands every event it publishes to a background *sender*, which publishes what has
  gathered in batches (one pipeline per batch) on one channel per cluster,
  ``CLUSTER:events``: one node's events go out in the order they were published, whatever
  their topic, so the events of one task stay in order;
- runs a background *listener* on its own connection, subscribed to that channel, which
  offers the other nodes' events to local subscribers and skips the node's own.

One Redis message carries a batch, as ASCII lines (an encoded event holds no line break)::

    1 NODE_ID LOST          (LOST: "-", or TOPIC=COUNT,... events this node could not send)
    TOPIC ENCODED_EVENT
    ...

so a receiver neither parses nor encodes an event again: it offers the text as it came.

Failures. redis-py's asyncio pub/sub does not reconnect by itself here (its retries are
turned off so that every failure reaches this module), and a connection through a dead
network path can stay silent for ever, so the listener sends a PING after
``ping_interval_s`` without traffic and rebuilds its connection when no answer comes
within ``timeout_s``, or on any error, after a delay that starts at 0.1 s and doubles up
to ``reconnect_max_s``. While the link is down, local delivery goes on, the events this
node publishes are not sent (dropped and counted; the other nodes' subscribers are told
how many with its next message), and each local subscriber is told once
(:data:`Notice.events_may_be_missing`) that other nodes' events may not arrive; when the
link is back, each is told to read afresh (:data:`Notice.resync`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.client import PubSub as RedisChannel
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from agentcom.client import Backoff
from agentcom.pubsub.link import ClusterLink, Notice
from agentcom.pubsub.memory import MemoryPubSub, Subscription, encode_event

if TYPE_CHECKING:
    from agentcom.hub.clock import Clock

__all__ = ["MESSAGE_BYTES", "RedisPubSub"]

logger = logging.getLogger(__name__)

MESSAGE_BYTES = 256 * 1024
"""A batch is cut into Redis messages of about this size (an event is never cut)."""

_VERSION = "1"  # of the message format above
_RECONNECT_FIRST_S = 0.1
_LINK_ERRORS = (RedisError, OSError, TimeoutError)


class _Silent(Exception):
    """The listening connection did not answer a PING in time."""


def _where(url: str) -> str:
    """The Redis server of ``url`` without its credentials, for the log."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"


class RedisPubSub:
    """Topic fan-out to this process's subscribers and, through Redis, to every other hub
    node of the cluster.

    Args:
        url: the Redis server (``redis://`` or ``rediss://``).
        cluster: the cluster's name, the prefix of the channel.
        node_id: this node's name; its events carry it.
        clock: the time of the link's state changes.
        max_queue: events kept per local subscriber that is not reading.
        max_bytes: bytes of events kept per local subscriber that is not reading.
        ping_interval_s: a PING goes on the listening connection after this long silent.
        timeout_s: connecting, a PING's answer and sending a batch must each take less.
        reconnect_max_s: the longest wait between reconnect attempts.
        outbox_events: events waiting to be sent; beyond, new ones are dropped and counted.
        outbox_bytes: bytes of events waiting to be sent; beyond, as for ``outbox_events``.
    """

    def __init__(
        self,
        url: str,
        cluster: str,
        node_id: str,
        clock: Clock,
        *,
        max_queue: int = 1000,
        max_bytes: int = 4 * 1024 * 1024,
        ping_interval_s: float = 5.0,
        timeout_s: float = 5.0,
        reconnect_max_s: float = 5.0,
        outbox_events: int = 10_000,
        outbox_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.local = MemoryPubSub(max_queue, max_bytes)
        self.dropped_by_topic = self.local.dropped_by_topic
        self.url = url
        self.channel = f"{cluster}:events"
        self.node_id = node_id
        self.link = ClusterLink("redis", cluster, node_id, False, clock.now_ms())
        self._clock = clock
        self._ping_interval_s = ping_interval_s
        self._timeout_s = timeout_s
        self._reconnect_max_s = reconnect_max_s
        self._outbox_events = outbox_events
        self._outbox_max_bytes = outbox_bytes
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._outbox_bytes = 0
        self._outbox_ready = asyncio.Event()
        self._lost: dict[str, int] = {}  # events not sent since the last message, by topic
        self._own_prefix = f"{_VERSION} {node_id} ".encode()
        self._failed_attempts = 0  # since the link was last up
        self._stopping = False
        self._listen_client: Redis | None = None
        self._send_client: Redis | None = None
        self._listener: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        # Told of each event another node published (topic, encoded event), before local
        # subscribers get it: how nodes sharing a database hear of each other's changes.
        self.on_remote: Callable[[str, bytes], None] | None = None

    # --- what the server uses, as of MemoryPubSub ---------------------------------------

    @property
    def cluster_link(self) -> ClusterLink:
        """The link to the other nodes: its state and counts."""
        return self.link

    def subscribe(self, topics: Iterable[str] | None = None) -> Subscription:
        """A new local subscription to ``topics`` (all when None); told at once that other
        nodes' events may be missing when the link is known to be down."""
        subscription = self.local.subscribe(topics)
        if not self.link.connected and (self.link.losses or self._failed_attempts):
            subscription.notify(Notice.events_may_be_missing)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop delivering to ``subscription`` and wake its reader."""
        self.local.unsubscribe(subscription)

    def subscriptions(self) -> set[Subscription]:
        """Distinct live local subscriptions."""
        return self.local.subscriptions()

    def subscriber_count(self) -> int:
        """Distinct live local subscriptions."""
        return self.local.subscriber_count()

    def publish(self, topic: str, event: dict[str, Any]) -> int:
        """Offer ``event`` to local subscribers now and queue it for the other nodes
        (never waits); returns how many local subscribers got it.

        While the link is down, or beyond the outbox's bounds, it is not sent: it is
        counted as dropped, and the other nodes are told with the next message.
        """
        encoded = encode_event(event)
        delivered = self.local.offer(topic, encoded)
        if (
            not self.link.connected
            or len(self._outbox) >= self._outbox_events
            or self._outbox_bytes + len(encoded) > self._outbox_max_bytes
        ):
            self._not_sent(topic, 1)
        else:
            self._outbox.append((topic, encoded))
            self._outbox_bytes += len(encoded)
            self._outbox_ready.set()
        return delivered

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Start the listener and the sender; they connect in the background (a Redis that
        cannot be reached does not stop the hub from serving)."""
        self._listen_client = self._client("listen")
        self._send_client = self._client("send")
        self._listener = asyncio.create_task(
            self._listen_forever(), name=f"pubsub listener {self.node_id}"
        )
        self._sender = asyncio.create_task(
            self._send_forever(), name=f"pubsub sender {self.node_id}"
        )
        logger.info(
            "events shared through Redis at %s on channel %s as node %s",
            _where(self.url), self.channel, self.node_id,
        )  # fmt: skip

    async def stop(self) -> None:
        """Send what is queued (within ``timeout_s``), then stop both tasks and close the
        connections."""
        self._stopping = True
        self._outbox_ready.set()
        if self._sender is not None:
            try:
                async with asyncio.timeout(self._timeout_s):
                    await asyncio.shield(self._sender)
            except TimeoutError:
                pass
        for task in (self._sender, self._listener):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for client in (self._listen_client, self._send_client):
            if client is not None:
                with contextlib.suppress(*_LINK_ERRORS):
                    async with asyncio.timeout(self._timeout_s):
                        await client.aclose()

    def _client(self, role: str) -> Redis:
        """A client whose every failure surfaces here (no retries of its own), named
        after the cluster, the node and ``role`` in ``CLIENT LIST``."""
        client: Redis = Redis.from_url(
            self.url,
            socket_timeout=self._timeout_s,
            socket_connect_timeout=self._timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            client_name=f"agentcom:{self.link.cluster}:{self.node_id}:{role}",
        )
        return client

    # --- the link's state -------------------------------------------------------------

    def _link_up(self) -> None:
        self.link.connected = True
        self.link.since_ms = self._clock.now_ms()
        self._failed_attempts = 0
        self.local.notify_all(Notice.resync)
        self._outbox_ready.set()  # report what was not sent meanwhile
        logger.info(
            "connected to Redis at %s: events shared with the other nodes", _where(self.url)
        )

    def _link_down(self, reason: str) -> None:
        self._failed_attempts += 1
        if self.link.connected:
            self.link.connected = False
            self.link.since_ms = self._clock.now_ms()
            self.link.losses += 1
            logger.warning(
                "lost the link to Redis at %s (%s): other nodes' events may be missing "
                "until it is back; reconnecting", _where(self.url), reason,
            )  # fmt: skip
        elif self._failed_attempts == 1:
            logger.warning(
                "cannot reach Redis at %s (%s): other nodes' events may be missing until "
                "it answers; retrying", _where(self.url), reason,
            )  # fmt: skip
        else:
            logger.debug("Redis at %s still unreachable: %s", _where(self.url), reason)
        if self._failed_attempts == 1:
            self.local.notify_all(Notice.events_may_be_missing)

    def _not_sent(self, topic: str, count: int) -> None:
        self.link.dropped += count
        self._lost[topic] = self._lost.get(topic, 0) + count

    # --- the listener -----------------------------------------------------------------

    async def _listen_forever(self) -> None:
        backoff = Backoff(_RECONNECT_FIRST_S, self._reconnect_max_s)
        while True:
            try:
                await self._listen(backoff)
                reason = "the connection ended"
            except _Silent:
                reason = f"no answer to a PING within {self._timeout_s} s"
            except _LINK_ERRORS as exc:
                reason = str(exc) or type(exc).__name__
            except Exception as exc:  # the listener must outlive anything one pass hits
                logger.exception("the Redis listener failed")
                reason = str(exc) or type(exc).__name__
            self._link_down(reason)
            await backoff.wait()

    async def _listen(self, backoff: Backoff) -> None:
        """Subscribe on a fresh connection, then receive until it fails or goes silent."""
        assert self._listen_client is not None
        channel: RedisChannel = self._listen_client.pubsub()
        try:
            async with asyncio.timeout(self._timeout_s):
                await channel.subscribe(self.channel)
                while True:
                    message = await channel.get_message(timeout=self._timeout_s)
                    if message is not None and message["type"] == "subscribe":
                        break
            self._link_up()
            backoff.reset()
            await self._receive(channel)
        finally:
            with contextlib.suppress(*_LINK_ERRORS):
                async with asyncio.timeout(self._timeout_s):
                    await channel.aclose()

    async def _receive(self, channel: RedisChannel) -> None:
        """Offer every message to local subscribers; PING after ``ping_interval_s`` of
        silence and raise :class:`_Silent` when its answer is ``timeout_s`` late."""
        loop = asyncio.get_running_loop()
        heard_at = loop.time()
        ping_sent_at: float | None = None
        while True:
            now = loop.time()
            if ping_sent_at is not None:
                wait = ping_sent_at + self._timeout_s - now
                if wait <= 0:
                    raise _Silent
            else:
                wait = heard_at + self._ping_interval_s - now
                if wait <= 0:
                    await channel.ping()
                    ping_sent_at = now
                    continue
            message = await channel.get_message(timeout=wait)
            if message is None:
                continue
            heard_at, ping_sent_at = loop.time(), None
            if message["type"] == "message":
                self._deliver(message["data"])

    def _deliver(self, data: bytes) -> None:
        """Offer the events of another node's message to local subscribers."""
        if data.startswith(self._own_prefix):
            return
        try:
            head, _, body = data.partition(b"\n")
            version, _node, lost = head.decode("ascii").split(" ")
            missed = [] if lost == "-" else [part.split("=") for part in lost.split(",")]
            counts = [(topic, int(count)) for topic, count in missed]
        except ValueError:  # not ours, or another version's: skip it
            logger.debug("skipped a message on %s that is not an agentcom batch", self.channel)
            return
        if version != _VERSION:
            return
        for topic, count in counts:
            self.local.missed(topic, count)
        received = 0
        # An encoded event never holds a raw line break (JSON escapes them in strings).
        for line in body.split(b"\n"):
            if line:
                name, _, encoded = line.partition(b" ")
                topic = name.decode("ascii", "replace")
                if self.on_remote is not None:
                    self.on_remote(topic, encoded)
                self.local.offer(topic, encoded)
                received += 1
        self.link.received += received

    # --- the sender -------------------------------------------------------------------

    async def _send_forever(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            batch = list(self._outbox)
            self._outbox.clear()
            self._outbox_bytes = 0
            if not self.link.connected:  # queued before the link went down
                for topic, _ in batch:
                    self._not_sent(topic, 1)
            elif batch or self._lost:
                await self._send(batch)
            if self._stopping and not self._outbox:
                return

    async def _send(self, batch: list[tuple[str, bytes]]) -> None:
        """Publish ``batch`` in one pipeline; on failure count it as not sent."""
        assert self._send_client is not None
        lost, self._lost = self._lost, {}
        messages = self._messages(batch, lost)
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._send_client.pipeline(transaction=False) as pipeline:
                    for message in messages:
                        pipeline.publish(self.channel, message)
                    await pipeline.execute()
        except _LINK_ERRORS as exc:
            for topic, count in lost.items():
                self._lost[topic] = self._lost.get(topic, 0) + count
            for topic, _ in batch:
                self._not_sent(topic, 1)
            logger.warning(
                "could not send %d events to Redis (%s); the other nodes will be told",
                len(batch), str(exc) or type(exc).__name__,
            )  # fmt: skip
            return
        self.link.sent += len(batch)

    def _messages(self, batch: list[tuple[str, bytes]], lost: dict[str, int]) -> list[bytes]:
        """``batch`` as messages of about :data:`MESSAGE_BYTES`; the first one says what
        was ``lost``."""
        missed = (",".join(f"{topic}={count}" for topic, count in lost.items()) or "-").encode()
        head = f"{_VERSION} {self.node_id} ".encode()
        messages: list[bytes] = []
        parts = [head, missed, b"\n"]
        size = len(head) + len(missed) + 1
        for topic, encoded in batch:
            name = topic.encode()
            line_size = len(name) + len(encoded) + 2
            if len(parts) > 3 and size + line_size > MESSAGE_BYTES:
                messages.append(b"".join(parts))
                parts, size = [head, b"-\n"], len(head) + 2
            parts += (name, b" ", encoded, b"\n")
            size += line_size
        messages.append(b"".join(parts))
        return messages
