"""RedisPubSub against the real Redis on 127.0.0.1:6379: two nodes in one process.

Each test uses a cluster name of its own, so its channel is its alone; Redis being
unreachable fails the tests (redisnodes.require_redis), it never skips them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hubprocess import closed_port
from redis.asyncio import Redis
from redisnodes import REDIS_PORT, REDIS_URL, new_cluster, require_redis
from tcpproxy import BlackHoleProxy

from agentcom.hub.clock import ManualClock
from agentcom.pubsub import Notice, Subscription
from agentcom.pubsub.redis import RedisPubSub

WAIT_S = 10.0  # upper bound for anything awaited; the tests take a fraction of it


class Nodes:
    """Starts RedisPubSub nodes of one cluster with fast timing, and stops them all."""

    def __init__(self) -> None:
        self.cluster = new_cluster()
        self.clock = ManualClock(1_000_000)
        self.started: list[RedisPubSub] = []

    async def start(self, node_id: str, url: str = REDIS_URL, **options: Any) -> RedisPubSub:
        timing = {"ping_interval_s": 0.2, "timeout_s": 0.5, "reconnect_max_s": 0.2}
        node = RedisPubSub(url, self.cluster, node_id, self.clock, **{**timing, **options})
        self.started.append(node)
        await node.start()
        return node

    async def stop(self) -> None:
        for node in self.started:
            await node.stop()


@pytest.fixture
async def nodes() -> AsyncIterator[Nodes]:
    require_redis()
    started = Nodes()
    try:
        yield started
    finally:
        await started.stop()


@pytest.fixture
async def proxies() -> AsyncIterator[list[BlackHoleProxy]]:
    started: list[BlackHoleProxy] = []
    yield started
    for proxy in started:
        await proxy.close()


class Reader:
    """What one subscription received: events (decoded), notices and missed counts."""

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription
        self.events: list[dict[str, Any]] = []
        self.notices: list[Notice] = []
        self.missed = 0

    async def _read_once(self) -> None:
        batch, dropped = await self.subscription.next_batch()
        notice = self.subscription.take_notice()
        if notice is not None:
            self.notices.append(notice)
        self.missed += dropped
        self.events += [json.loads(encoded) for encoded in batch]

    async def until(self, done: Callable[[Reader], bool]) -> None:
        """Read until ``done(self)`` holds (TimeoutError after WAIT_S)."""
        async with asyncio.timeout(WAIT_S):
            while not done(self):
                await self._read_once()

    async def notice(self, notice: Notice) -> None:
        """Read until ``notice`` has arrived, and forget the notices read so far."""
        await self.until(lambda reader: notice in reader.notices)
        self.notices.clear()

    async def events_where(self, count: int) -> list[dict[str, Any]]:
        """Read until ``count`` events have arrived; return them."""
        await self.until(lambda reader: len(reader.events) >= count)
        return self.events


async def connected(node: RedisPubSub) -> Reader:
    """A reader of every topic on ``node``, returned once the node's link is up (the
    subscriber is told ``resync`` when it comes up)."""
    reader = Reader(node.subscribe())
    if not node.link.connected:
        await reader.notice(Notice.resync)
    return reader


async def listener_id(cluster: str, node_id: str) -> int:
    """The id of a node's listening connection in Redis (by its client name)."""
    async with Redis.from_url(REDIS_URL) as admin:
        clients = await admin.client_list(_type="pubsub")
    name = f"agentcom:{cluster}:{node_id}:listen"
    return int(next(client["id"] for client in clients if client["name"] == name))


async def test_an_event_published_on_one_node_reaches_the_others_subscribers_once(
    nodes: Nodes,
) -> None:
    # given two nodes of one cluster, each with a subscriber, linked through Redis
    a, b = await nodes.start("node-a"), await nodes.start("node-b")
    on_a, on_b = await connected(a), await connected(b)

    # when node A publishes 50 task events
    for n in range(50):
        a.publish("tasks", {"type": "task_event", "n": n})

    # then B's subscriber gets them all, in order
    assert [event["n"] for event in await on_b.events_where(50)] == list(range(50))
    # and A's subscriber got them once, locally, not a second time back from Redis: an
    # event B publishes after receiving them all comes after any echo would have
    b.publish("tasks", {"type": "task_event", "n": "from b"})
    events = await on_a.events_where(51)
    assert [event["n"] for event in events] == [*range(50), "from b"]
    assert a.link.sent == 50 and b.link.received == 50 and a.link.received == 1


async def test_events_of_three_topics_keep_the_publishers_order(nodes: Nodes) -> None:
    # given two nodes; on B a subscriber of every topic and one of tasks only
    a, b = await nodes.start("node-a"), await nodes.start("node-b")
    await connected(a)
    everything = await connected(b)
    tasks_only = Reader(b.subscribe(["tasks"]))

    # when A publishes events of the three topics interleaved
    topics = ["tasks", "agents", "validation"]
    published = [(topics[n % 3], {"seq": n}) for n in range(300)]
    for topic, event in published:
        a.publish(topic, event)

    # then B's subscribers get them in the order A published them
    received = await everything.events_where(300)
    assert [event["seq"] for event in received] == list(range(300))
    tasks = await tasks_only.events_where(100)
    assert [event["seq"] for event in tasks] == [n for n in range(300) if n % 3 == 0]


async def test_a_large_batch_is_cut_into_several_messages_and_arrives_whole(
    nodes: Nodes,
) -> None:
    # given two linked nodes
    a, b = await nodes.start("node-a"), await nodes.start("node-b")
    await connected(a)
    on_b = await connected(b)

    # when A publishes, in one go, more than one Redis message holds
    text = "x" * 10_000
    for n in range(100):
        a.publish("tasks", {"seq": n, "text": text})

    # then B gets every event, in order
    assert [event["seq"] for event in await on_b.events_where(100)] == list(range(100))


async def test_the_listener_reconnects_after_redis_kills_its_connection(nodes: Nodes) -> None:
    # given two linked nodes with a subscriber on B
    a, b = await nodes.start("node-a"), await nodes.start("node-b")
    await connected(a)
    on_b = await connected(b)

    # when Redis kills B's listening connection
    killed = await listener_id(nodes.cluster, "node-b")
    async with Redis.from_url(REDIS_URL) as admin:
        await admin.client_kill_filter(_id=killed)

    # then B's subscriber is told that events may be missing, then to re-sync once back
    await on_b.notice(Notice.events_may_be_missing)
    await on_b.notice(Notice.resync)
    assert b.link.connected and b.link.losses == 1
    assert await listener_id(nodes.cluster, "node-b") != killed
    # and A's events reach B again
    a.publish("tasks", {"n": "after"})
    assert (await on_b.events_where(1))[-1] == {"n": "after"}


async def test_a_silent_connection_is_noticed_by_ping_and_rebuilt(
    nodes: Nodes, proxies: list[BlackHoleProxy]
) -> None:
    # given node B reaching Redis through a proxy, linked with A, subscribers on both
    proxy = await BlackHoleProxy(REDIS_PORT).start()
    proxies.append(proxy)
    a = await nodes.start("node-a")
    b = await nodes.start("node-b", url=f"redis://127.0.0.1:{proxy.port}/0")
    on_a, on_b = await connected(a), await connected(b)

    # when the network path goes dark: no byte passes, no connection closes
    proxy.go_dark()

    # then B notices within a PING interval and its timeout, and says so
    await on_b.notice(Notice.events_may_be_missing)
    assert not b.link.connected and b.link.losses == 1
    # and local delivery on B goes on, while its events for A are counted as not sent
    for n in range(3):
        b.publish("tasks", {"n": n})
    b.publish("agents", {"n": "agent"})
    assert [event["n"] for event in await on_b.events_where(4)] == [0, 1, 2, "agent"]
    assert b.link.dropped == 4

    # when the path comes back
    proxy.go_light()

    # then B reconnects and tells its subscriber to re-sync
    await on_b.notice(Notice.resync)
    assert b.link.connected
    # and A's subscriber learns how many of B's events it missed, then gets the next ones
    b.publish("tasks", {"n": "back"})
    await on_a.until(lambda reader: reader.missed == 4 and len(reader.events) == 1)
    assert on_a.events == [{"n": "back"}]


async def test_an_unreachable_redis_leaves_local_delivery_working_and_is_reported(
    nodes: Nodes,
) -> None:
    # given a node whose Redis refuses connections (a port nobody listens on)
    node = await nodes.start("lonely", url=f"redis://127.0.0.1:{closed_port()}/0")
    reader = Reader(node.subscribe())

    # then its subscriber is told that other nodes' events may be missing
    await reader.notice(Notice.events_may_be_missing)
    assert not node.link.connected
    # and a subscriber arriving later is told too
    late = Reader(node.subscribe(["tasks"]))
    await late.notice(Notice.events_may_be_missing)
    # and events published on the node still reach its own subscribers, counted as not sent
    node.publish("tasks", {"n": 1})
    assert await reader.events_where(1) == [{"n": 1}]
    assert await late.events_where(1) == [{"n": 1}]
    assert node.link.dropped == 1 and node.link.sent == 0


async def test_stop_sends_what_is_queued_and_leaves_no_task_behind(nodes: Nodes) -> None:
    # given two linked nodes
    a, b = await nodes.start("node-a"), await nodes.start("node-b")
    await connected(a)
    on_b = await connected(b)

    # when A publishes and stops at once
    a.publish("tasks", {"n": "last"})
    await a.stop()

    # then the event still went out, and none of A's background tasks is left
    assert await on_b.events_where(1) == [{"n": "last"}]
    assert not [task for task in asyncio.all_tasks() if "node-a" in task.get_name()]
