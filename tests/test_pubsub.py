"""Topic fan-out: bounded subscriber queues, drop accounting, one encoding per event.

The first tests drive MemoryPubSub directly; the last one runs a real dashboard
connection on /ws/dashboard against a hub with a small subscriber queue.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest
from conftest import TokenMaker
from websockets.asyncio.client import connect

from agentcom.config import Settings
from agentcom.pubsub import Notice
from agentcom.pubsub.memory import MemoryPubSub
from agentcom.server.app import HubServer

SUBSCRIBER_QUEUE = 4


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The test hub's settings, with viewers keeping only a few events while not reading."""
    return settings.model_copy(update={"subscriber_queue": SUBSCRIBER_QUEUE})


def decoded(batch: list[str]) -> list[dict[str, Any]]:
    """The events of a batch as objects."""
    return [json.loads(encoded) for encoded in batch]


async def test_events_reach_only_subscribers_of_their_topic() -> None:
    # given subscribers of one topic, of another, and of every topic
    pubsub = MemoryPubSub(max_queue=10)
    tasks = pubsub.subscribe(["tasks"])
    agents = pubsub.subscribe(["agents"])
    everything = pubsub.subscribe()

    # when one event is published on each topic
    reached = [
        pubsub.publish("tasks", {"n": 1}),
        pubsub.publish("agents", {"n": 2}),
        pubsub.publish("validation", {"n": 3}),
    ]

    # then each subscriber has exactly the events of its topics
    assert reached == [2, 2, 1]
    async with asyncio.timeout(1):
        assert decoded((await tasks.next_batch())[0]) == [{"n": 1}]
        assert decoded((await agents.next_batch())[0]) == [{"n": 2}]
        assert decoded((await everything.next_batch())[0]) == [{"n": 1}, {"n": 2}, {"n": 3}]


async def test_subscriber_that_does_not_read_keeps_the_newest_and_counts_the_rest_once() -> None:
    # given a subscriber keeping at most three events
    pubsub = MemoryPubSub(max_queue=3)
    subscription = pubsub.subscribe(["tasks"])

    # when ten events are published while it does not read
    for n in range(10):
        pubsub.publish("tasks", {"n": n})

    # then it gets the three newest and learns it missed seven
    async with asyncio.timeout(1):
        batch, dropped = await subscription.next_batch()
    assert [event["n"] for event in decoded(batch)] == [7, 8, 9]
    assert dropped == 7

    # and the loss is reported only once
    pubsub.publish("tasks", {"n": 10})
    async with asyncio.timeout(1):
        batch, dropped = await subscription.next_batch()
    assert [event["n"] for event in decoded(batch)] == [10]
    assert dropped == 0


async def test_dropped_events_are_counted_by_the_topic_they_belonged_to() -> None:
    # given two subscribers keeping at most two events, one of every topic
    pubsub = MemoryPubSub(max_queue=2)
    everything = pubsub.subscribe()
    pubsub.subscribe(["agents"])

    # when three task events then two agent events are published while neither reads
    for n in range(3):
        pubsub.publish("tasks", {"n": n})
    for n in range(2):
        pubsub.publish("agents", {"n": n})

    # then the first subscriber lost the three task events, the second nothing
    assert pubsub.dropped_by_topic == {"tasks": 3}
    async with asyncio.timeout(1):
        batch, dropped = await everything.next_batch()
    assert (len(batch), dropped) == (2, 3)


async def test_slow_subscriber_never_holds_back_the_others() -> None:
    # given a subscriber that never reads and one that reads as fast as it can
    pubsub = MemoryPubSub(max_queue=8)
    slow = pubsub.subscribe(["tasks"])
    fast = pubsub.subscribe(["tasks"])
    received: list[int] = []
    drops: list[int] = []

    async def read_fast() -> None:
        while len(received) < 1000:
            batch, dropped = await fast.next_batch()
            drops.append(dropped)
            received.extend(event["n"] for event in decoded(batch))

    reader = asyncio.create_task(read_fast())

    # when a thousand events are published, the publisher yielding between them
    for n in range(1000):
        assert pubsub.publish("tasks", {"n": n}) == 2  # returns at once, full queue or not
        await asyncio.sleep(0)

    # then the fast subscriber got every event, in order, without loss
    await asyncio.wait_for(reader, 5)
    assert received == list(range(1000))
    assert set(drops) == {0}
    # while the slow one kept only its bounded queue
    batch, dropped = await asyncio.wait_for(slow.next_batch(), 1)
    assert [event["n"] for event in decoded(batch)] == list(range(992, 1000))
    assert dropped == 992


async def test_an_event_is_encoded_once_for_all_subscribers() -> None:
    # given three subscribers
    pubsub = MemoryPubSub(max_queue=10)
    subscriptions = [pubsub.subscribe(["tasks"]) for _ in range(3)]

    # when one event is published
    event = {"type": "task_event", "event": "task_submitted", "task_id": "ab" * 16}
    pubsub.publish("tasks", event)

    # then every subscriber is offered the very same encoded string
    async with asyncio.timeout(1):
        offered = [(await subscription.next_batch())[0] for subscription in subscriptions]
    assert all(len(batch) == 1 for batch in offered)
    first = offered[0][0]
    assert all(batch[0] is first for batch in offered)
    assert json.loads(first) == event


async def test_unsubscribe_wakes_a_waiting_reader() -> None:
    # given a reader waiting for events
    pubsub = MemoryPubSub(max_queue=10)
    subscription = pubsub.subscribe(["tasks"])
    reader = asyncio.create_task(subscription.next_batch())
    await asyncio.sleep(0)  # let it start waiting
    assert not reader.done()

    # when it is unsubscribed
    pubsub.unsubscribe(subscription)

    # then the reader returns an empty batch, and nothing is delivered to it any more
    assert await asyncio.wait_for(reader, 1) == ([], 0)
    assert pubsub.publish("tasks", {"n": 1}) == 0
    assert pubsub.subscriber_count() == 0


async def test_dashboard_that_stops_reading_is_told_how_many_events_it_missed(
    hub: HubServer, make_token: TokenMaker
) -> None:
    # given a dashboard whose socket buffers little, subscribed to task events
    token = make_token("viewer", "viewer")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", hub.port))
    url = f"ws://127.0.0.1:{hub.port}/ws/dashboard"
    # no compression: the padding below must really fill the socket buffers
    async with connect(url, sock=sock, max_queue=1, max_size=None, compression=None) as dashboard:
        await dashboard.send(json.dumps({"type": "subscribe", "token": token, "topics": ["tasks"]}))
        snapshot = json.loads(await asyncio.wait_for(dashboard.recv(), 5))
        assert snapshot["type"] == "snapshot"

        # when it stops reading while far more events are published than buffers can hold
        total = 400
        padding = "x" * 65_536
        for seq in range(total):
            hub.pubsub.publish("tasks", {"type": "task_event", "seq": seq, "padding": padding})
            await asyncio.sleep(0)  # let the hub's sender run

        # and then resumes reading
        frames: list[dict[str, Any]] = []
        async with asyncio.timeout(10):
            while not frames or frames[-1].get("seq") != total - 1:
                frames.append(json.loads(await dashboard.recv()))

    # then it was told about a loss, and every count matches the gap it reports
    drops = [n for n, frame in enumerate(frames) if frame["type"] == "events_dropped"]
    assert drops, "the dashboard never learned it lost events"
    seqs = [frame["seq"] for frame in frames if "seq" in frame]
    assert seqs == sorted(set(seqs))
    assert sum(frames[n]["count"] for n in drops) + len(seqs) == total
    for n in drops:
        before = next((f["seq"] for f in reversed(frames[:n]) if "seq" in f), -1)
        after = frames[n + 1]["seq"]
        assert after - before - 1 == frames[n]["count"]
    # and what followed the last loss is the newest events, the subscriber queue's worth
    assert seqs[-SUBSCRIBER_QUEUE:] == list(range(total - SUBSCRIBER_QUEUE, total))


async def test_a_notice_wakes_the_reader_and_the_latest_one_wins() -> None:
    # given a subscriber waiting for events
    pubsub = MemoryPubSub(max_queue=10)
    subscription = pubsub.subscribe(["tasks"])
    reader = asyncio.ensure_future(subscription.next_batch())
    await asyncio.sleep(0)
    assert not reader.done()

    # when it is told that events may be missing, then to re-sync, before it reads
    pubsub.notify_all(Notice.events_may_be_missing)
    pubsub.notify_all(Notice.resync)

    # then it wakes with no events, and reads the latest notice once
    assert await asyncio.wait_for(reader, 1) == ([], 0)
    assert subscription.take_notice() is Notice.resync
    assert subscription.take_notice() is None


async def test_events_lost_upstream_are_counted_for_the_subscribers_of_their_topic() -> None:
    # given a subscriber of tasks and one of agents
    pubsub = MemoryPubSub(max_queue=10)
    tasks, agents = pubsub.subscribe(["tasks"]), pubsub.subscribe(["agents"])

    # when three task events are reported lost before they reached this process
    pubsub.missed("tasks", 3)
    pubsub.publish("agents", {"n": 1})

    # then the tasks subscriber is told of three missed, without the slow-reader metric
    assert await asyncio.wait_for(tasks.next_batch(), 1) == ([], 3)
    batch, dropped = await asyncio.wait_for(agents.next_batch(), 1)
    assert (decoded(batch), dropped) == ([{"n": 1}], 0)
    assert pubsub.dropped_by_topic == {}


async def test_batched_dashboard_gets_the_same_events_in_fewer_frames(
    hub: HubServer, make_token: TokenMaker
) -> None:
    # given two dashboards on the same topics, one asking for batches
    token = make_token("viewer", "viewer")
    url = f"ws://127.0.0.1:{hub.port}/ws/dashboard"
    async with connect(url) as single, connect(url) as batched:
        await single.send(json.dumps({"type": "subscribe", "token": token}))
        await batched.send(json.dumps({"type": "subscribe", "token": token, "batch": True}))
        for dashboard in (single, batched):
            snapshot = json.loads(await asyncio.wait_for(dashboard.recv(), 5))
            assert snapshot["type"] == "snapshot"

        # when several events are published at once, on several topics
        total = SUBSCRIBER_QUEUE  # within the queue: none is dropped
        topics = ("tasks", "agents", "validation")
        for seq in range(total):
            assert hub.pubsub.publish(topics[seq % 3], {"seq": seq, "text": "é\u2028"}) == 2

        async def events(dashboard: Any) -> tuple[list[dict[str, Any]], int]:
            received: list[dict[str, Any]] = []
            frames = 0
            async with asyncio.timeout(5):
                while len(received) < total:
                    frame = json.loads(await dashboard.recv())
                    frames += 1
                    received.extend(frame["events"] if frame.get("type") == "events" else [frame])
            return received, frames

        one_by_one, single_frames = await events(single)
        in_batches, batched_frames = await events(batched)

    # then both got every event, in order, alike; the batched one in fewer frames
    assert one_by_one == in_batches == [{"seq": n, "text": "é\u2028"} for n in range(total)]
    assert single_frames == total
    assert batched_frames < total
