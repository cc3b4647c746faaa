"""Direct and channel messages between agents connected to different hub nodes sharing
one PostgreSQL database, with Redis between them (real hub processes).

A direct message to an agent not connected to the sender's node waits in the database
until the node its recipient is connected to, now or next, takes it; channel messages
are numbered by the database and delivered by every node to its own subscribers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from hubprocess import HubProcess
from sharednodes import Nodes

from agentcom.client import AgentClient, OperatorClient

Frame = dict[str, Any]

TIMEOUT_S = 10


async def _agent(
    hub: HubProcess, nodes: Nodes, agent_id: str, closing: list[Any], token: str | None = None
) -> AgentClient:
    client = AgentClient(
        hub.ws_url, agent_id, token or await nodes.token(agent_id), heartbeat_s=None
    )
    closing.append(client)
    await client.connect()
    return client


async def _ask(agent: AgentClient, frame: Frame, reply_type: str) -> Frame:
    """Send ``frame`` and return the reply of ``reply_type`` (an error fails the test);
    frames of other types before it are dropped."""
    await agent.send(frame)
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            reply = await agent.receive()
            assert reply["type"] != "error", f"{frame['type']} refused: {reply}"
            if reply["type"] == reply_type:
                return reply


async def _frames_until_pong(agent: AgentClient) -> list[Frame]:
    """Every frame the hub sent ``agent`` before answering a ping sent now."""
    await agent.send({"type": "ping"})
    frames = []
    async with asyncio.timeout(TIMEOUT_S):
        while (frame := await agent.receive())["type"] != "pong":
            frames.append(frame)
    return frames


async def _channel_messages(agent: AgentClient, count: int) -> list[Frame]:
    """The next ``count`` channel messages ``agent`` gets."""
    got = []
    async with asyncio.timeout(TIMEOUT_S):
        while len(got) < count:
            frame = await agent.receive()
            if frame["type"] == "channel_message":
                got.append(frame)
    return got


def _inbox_rows(url: str) -> int:
    with psycopg.connect(url) as connection:
        row = connection.execute("SELECT count(*) FROM agent_inbox").fetchone()
    assert row is not None
    return int(row[0])


async def test_a_direct_message_reaches_an_agent_connected_to_another_node_once(
    nodes: Nodes, closing: list[Any]
) -> None:
    # given two nodes, alice and carol on the first, bob on the second
    first = await nodes.start("n1")
    second = await nodes.start("n2")
    alice = await _agent(first, nodes, "alice", closing)
    carol = await _agent(first, nodes, "carol", closing)
    bob = await _agent(second, nodes, "bob", closing)

    # when alice writes to bob, and bob answers
    sent = await _ask(
        alice,
        {"type": "message", "to": "bob", "payload": {"q": "up?"}, "message_type": "ask"},
        "message_sent",
    )
    got = await bob.receive_type("message", TIMEOUT_S)
    answer = await _ask(
        bob, {"type": "message", "to": "alice", "payload": {"a": "yes"}, "reply_to": sent["id"]},
        "message_sent",
    )  # fmt: skip
    back = await alice.receive_type("message", TIMEOUT_S)

    # then each gets the other's message once, as sent
    assert (got["id"], got["from"], got["to"]) == (sent["id"], "alice", "bob")
    assert (got["payload"], got["message_type"], got["reply_to"]) == ({"q": "up?"}, "ask", None)
    assert (back["id"], back["from"], back["reply_to"]) == (answer["id"], "bob", sent["id"])
    for agent in (alice, bob, carol):
        assert [f for f in await _frames_until_pong(agent) if f["type"] == "message"] == []
    assert _inbox_rows(nodes.url) == 0

    # and a broadcast reaches every other agent of both nodes once
    broadcast = await _ask(carol, {"type": "message", "payload": {"all": 1}}, "message_sent")
    for agent in (alice, bob):
        message = await agent.receive_type("message", TIMEOUT_S)
        assert (message["id"], message["from"], message["to"]) == (broadcast["id"], "carol", None)
    for agent in (alice, bob, carol):
        assert [f for f in await _frames_until_pong(agent) if f["type"] == "message"] == []


async def test_a_message_to_an_agent_connected_nowhere_is_delivered_once_by_the_node_it_joins(
    nodes: Nodes, closing: list[Any]
) -> None:
    # given an agent connected to no node, and messages sent to it on the first node
    first = await nodes.start("n1")
    second = await nodes.start("n2")
    sleeper_token = await nodes.token("sleeper")
    alice = await _agent(first, nodes, "alice", closing)
    sent = [
        await _ask(alice, {"type": "message", "to": "sleeper", "payload": {"n": n}}, "message_sent")
        for n in range(3)
    ]
    assert _inbox_rows(nodes.url) == 3  # kept in the database, not in a node's memory

    # when it connects to the second node
    sleeper = await _agent(second, nodes, "sleeper", closing, sleeper_token)

    # then it gets them, in order, once: the database keeps none of them
    got = [await sleeper.receive_type("message", TIMEOUT_S) for _ in sent]
    assert [(m["id"], m["from"], m["payload"]) for m in got] == [
        (s["id"], "alice", {"n": n}) for n, s in enumerate(sent)
    ]
    assert _inbox_rows(nodes.url) == 0
    assert [f for f in await _frames_until_pong(sleeper) if f["type"] == "message"] == []
    await sleeper.close()
    for hub in (first, second):
        again = await _agent(hub, nodes, "sleeper", closing, sleeper_token)
        assert [f for f in await _frames_until_pong(again) if f["type"] == "message"] == []
        await again.close()


async def test_messages_waiting_for_an_agent_connected_nowhere_are_bounded_as_on_a_lone_hub(
    nodes: Nodes, closing: list[Any]
) -> None:
    # given nodes that keep 3 messages for an agent connected nowhere
    first = await nodes.start("n1", AGENTCOM_OFFLINE_MESSAGE_CAP="3")
    second = await nodes.start("n2", AGENTCOM_OFFLINE_MESSAGE_CAP="3")
    token = await nodes.token("later")
    alice = await _agent(first, nodes, "alice", closing)

    # when five are sent to it
    for n in range(5):
        await _ask(alice, {"type": "message", "to": "later", "payload": {"n": n}}, "message_sent")

    # then the newest three wait, and it gets them when it connects to the other node
    assert _inbox_rows(nodes.url) == 3
    later = await _agent(second, nodes, "later", closing, token)
    got = [(await later.receive_type("message", TIMEOUT_S))["payload"]["n"] for _ in range(3)]
    assert got == [2, 3, 4]
    assert [f for f in await _frames_until_pong(later) if f["type"] == "message"] == []
    assert _inbox_rows(nodes.url) == 0


async def test_channel_messages_published_on_two_nodes_at_once_reach_each_subscriber_once(
    nodes: Nodes, closing: list[Any]
) -> None:
    # given a channel made on the first node, a subscriber on each node, and a publisher
    # on each node
    first = await nodes.start("n1")
    second = await nodes.start("n2")
    operator = OperatorClient(first.http_url, await nodes.token("ops", "admin"))
    closing.append(operator)
    await operator.connect()
    await operator.request("channel_create", name="team")
    listeners = [
        await _agent(first, nodes, "listener-1", closing),
        await _agent(second, nodes, "listener-2", closing),
    ]
    for listener in listeners:
        await _ask(listener, {"type": "channel_subscribe", "channel": "team"}, "channel_subscribed")
    publishers = [
        await _agent(first, nodes, "publisher-1", closing),
        await _agent(second, nodes, "publisher-2", closing),
    ]

    # when both publish 20 messages at the same time
    async def publish_all(publisher: AgentClient) -> list[Frame]:
        frame = {"type": "channel_publish", "channel": "team"}
        return [
            await _ask(publisher, {**frame, "payload": {"n": n}}, "channel_published")
            for n in range(20)
        ]

    heard = [asyncio.ensure_future(_channel_messages(listener, 40)) for listener in listeners]
    published = await asyncio.gather(*(publish_all(publisher) for publisher in publishers))

    # then the numbers never collide: 1 to 40, each once
    seqs = sorted(reply["seq"] for replies in published for reply in replies)
    assert seqs == list(range(1, 41))
    ids = {reply["seq"]: reply["id"] for replies in published for reply in replies}
    # and each subscriber gets each message once, in the order of their numbers
    for got in await asyncio.gather(*heard):
        assert [(m["seq"], m["id"]) for m in got] == sorted(ids.items())
        assert {m["from"] for m in got} == {"publisher-1", "publisher-2"}
    for listener in listeners:
        extra = [f for f in await _frames_until_pong(listener) if f["type"] == "channel_message"]
        assert extra == []
    # and every node tells the same history and channel list
    for publisher in publishers:
        history = await _ask(
            publisher, {"type": "channel_history", "channel": "team", "limit": 100},
            "channel_history",
        )  # fmt: skip
        assert [(m["seq"], m["id"]) for m in history["messages"]] == sorted(ids.items())
        listing = await _ask(publisher, {"type": "list_channels"}, "channels")
        assert [(c["name"], c["subscribers"], c["last_seq"]) for c in listing["channels"]] == [
            ("team", 2, 40)
        ]


async def test_a_subscription_made_through_one_node_counts_on_the_node_the_agent_moves_to(
    nodes: Nodes, closing: list[Any]
) -> None:
    # given an agent that subscribed through the first node, then moved to the second
    first = await nodes.start("n1")
    second = await nodes.start("n2")
    operator = OperatorClient(second.http_url, await nodes.token("ops", "admin"))
    closing.append(operator)
    await operator.connect()
    await operator.request("channel_create", name="news", description="what happens")
    token = await nodes.token("reader")
    reader = await _agent(first, nodes, "reader", closing, token)
    await _ask(reader, {"type": "channel_subscribe", "channel": "news"}, "channel_subscribed")
    await reader.close()
    witness = await _agent(second, nodes, "witness", closing)
    await _ask(witness, {"type": "channel_subscribe", "channel": "news"}, "channel_subscribed")
    moved = await _agent(second, nodes, "reader", closing, token)

    # when another agent subscribes and publishes through the first node
    writer = await _agent(first, nodes, "writer", closing)
    await _ask(writer, {"type": "channel_subscribe", "channel": "news"}, "channel_subscribed")
    published = await _ask(
        writer, {"type": "channel_publish", "channel": "news", "payload": {"headline": "hi"}},
        "channel_published",
    )  # fmt: skip

    # then the agent hears of both on the second node, once
    joined = await moved.receive_type("channel_agent_joined", TIMEOUT_S)
    assert joined == {"type": "channel_agent_joined", "channel": "news", "agent_id": "writer"}
    message = await moved.receive_type("channel_message", TIMEOUT_S)
    assert (message["seq"], message["id"], message["from"]) == (1, published["id"], "writer")
    extra = [f for f in await _frames_until_pong(moved) if f["type"].startswith("channel_")]
    assert extra == []
    # and after unsubscribing there, publishing through the first node reaches it no more
    # (the second node delivered the next message to another subscriber first)
    await _ask(moved, {"type": "channel_unsubscribe", "channel": "news"}, "channel_unsubscribed")
    await _ask(
        writer, {"type": "channel_publish", "channel": "news", "payload": {"headline": "bye"}},
        "channel_published",
    )  # fmt: skip
    assert [m["seq"] for m in await _channel_messages(witness, 2)] == [1, 2]
    assert [f for f in await _frames_until_pong(moved) if f["type"] == "channel_message"] == []
    listing = await _ask(writer, {"type": "list_channels"}, "channels")
    assert [(c["subscribers"], c["last_seq"]) for c in listing["channels"]] == [(2, 2)]
