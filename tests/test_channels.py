"""Messages and channels over real sockets (PROTOCOL.md section 1).

Channels are created by operators; agents subscribe, publish (numbered per channel),
read history and list channels. Subscriptions and capped history are durable. Direct
messages to an offline agent wait in an inbox (capped, with a TTL on the ManualClock).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import AgentMaker, TokenMaker

from agentcom.client import AgentClient, OperatorClient, RequestFailed
from agentcom.config import Settings
from agentcom.hub.clock import ManualClock
from agentcom.server.app import HubServer

HISTORY_CAP = 5
INBOX_CAP = 3
TTL_S = 60

Frame = dict[str, Any]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A small history cap, a small offline inbox and a one-minute TTL."""
    return Settings(
        host="127.0.0.1", port=0, db=tmp_path / "hub.db", log_level="DEBUG", fallback_wait_s=0,
        channel_history_cap=HISTORY_CAP, offline_message_cap=INBOX_CAP,
        offline_message_ttl_s=TTL_S,
    )  # fmt: skip


class Hubs:
    """Hubs started on the test's settings, one after another; each is stopped once."""

    def __init__(self, settings: Settings, clock: ManualClock, make_token: TokenMaker) -> None:
        self.settings = settings
        self.clock = clock
        self.admin = make_token("ops", "admin")
        self._make_token = make_token
        self._tokens: dict[str, str] = {}
        self.running: list[HubServer] = []
        self.clients: list[AgentClient | OperatorClient] = []

    async def start(self) -> HubServer:
        server = HubServer(self.settings, clock=self.clock, run_sweeps=False)
        await server.start()
        self.running.append(server)
        return server

    async def stop(self, server: HubServer) -> None:
        for client in self.clients:
            await client.close()
        self.clients.clear()
        self.running.remove(server)
        await server.stop()

    async def agent(self, server: HubServer, agent_id: str) -> AgentClient:
        if agent_id not in self._tokens:
            self._tokens[agent_id] = self._make_token(agent_id)
        token = self._tokens[agent_id]
        client = AgentClient(f"ws://127.0.0.1:{server.port}/ws", agent_id, token, heartbeat_s=None)
        await client.connect()
        self.clients.append(client)
        return client

    async def operator(self, server: HubServer) -> OperatorClient:
        client = OperatorClient(f"http://127.0.0.1:{server.port}", self.admin)
        await client.connect()
        self.clients.append(client)
        return client


@pytest.fixture
async def hubs(
    settings: Settings, clock: ManualClock, make_token: TokenMaker
) -> AsyncIterator[Hubs]:
    """Start and restart hubs by hand (for persistence tests)."""
    started = Hubs(settings, clock, make_token)
    yield started
    for server in list(started.running):
        await started.stop(server)


# --- helpers -----------------------------------------------------------------------------


async def frames_until_pong(agent: AgentClient) -> list[Frame]:
    """Every frame the hub sent the agent before answering a ping sent now."""
    await agent.send({"type": "ping"})
    frames = []
    async with asyncio.timeout(5):
        while (frame := await agent.receive()).get("type") != "pong":
            frames.append(frame)
    return frames


async def quiet(agent: AgentClient, *types: str) -> None:
    """The hub has sent the agent nothing of these types (so far)."""
    got = [frame for frame in await frames_until_pong(agent) if frame["type"] in types]
    assert got == []


async def ask(agent: AgentClient, frame: Frame, reply_type: str) -> Frame:
    """Send a frame and return the reply of ``reply_type`` (an ``error`` fails the test)."""
    await agent.send(frame)
    async with asyncio.timeout(5):
        while True:
            reply = await agent.receive()
            if reply["type"] == "error":
                raise AssertionError(f"{frame['type']} refused: {reply}")
            if reply["type"] == reply_type:
                return dict(reply)


async def subscribe(agent: AgentClient, channel: str) -> None:
    reply = await ask(
        agent, {"type": "channel_subscribe", "channel": channel}, "channel_subscribed"
    )
    assert reply == {"type": "channel_subscribed", "channel": channel}


async def publish(agent: AgentClient, channel: str, payload: Frame, **fields: Any) -> Frame:
    frame = {"type": "channel_publish", "channel": channel, "payload": payload, **fields}
    return await ask(agent, frame, "channel_published")


async def history(agent: AgentClient, channel: str, **fields: Any) -> list[Frame]:
    frame = {"type": "channel_history", "channel": channel, **fields}
    reply = await ask(agent, frame, "channel_history")
    assert reply["channel"] == channel
    messages: list[Frame] = reply["messages"]
    return messages


ChannelMaker = Callable[..., Awaitable[Frame]]


@pytest.fixture
def create_channel(hub: HubServer, operator: OperatorClient) -> ChannelMaker:
    """Create a channel as an operator."""

    async def create(name: str, description: str | None = None) -> Frame:
        fields = (
            {"name": name} if description is None else {"name": name, "description": description}
        )
        channel: Frame = await operator.request("channel_create", **fields)
        return channel

    return create


# --- channels ----------------------------------------------------------------------------


async def test_unknown_channels_are_refused(hub: HubServer, make_agent: AgentMaker) -> None:
    agent = await make_agent()
    for frame in (
        {"type": "channel_subscribe", "channel": "nowhere"},
        {"type": "channel_unsubscribe", "channel": "nowhere"},
        {"type": "channel_publish", "channel": "nowhere", "payload": {"x": 1}},
        {"type": "channel_history", "channel": "nowhere"},
    ):
        await agent.send(frame)
        error = await agent.receive_type("error")
        assert error["error"] == "channel_not_found", frame["type"]
    assert await ask(agent, {"type": "list_channels"}, "channels") == {
        "type": "channels", "channels": [],
    }  # fmt: skip


async def test_operators_create_channels_that_agents_and_operators_list(
    hub: HubServer,
    http_url: str,
    operator: OperatorClient,
    make_agent: AgentMaker,
    make_token: TokenMaker,
    create_channel: ChannelMaker,
) -> None:
    created = await create_channel("builds", "CI results")
    assert created["name"] == "builds"
    assert created["description"] == "CI results"
    assert created["subscribers"] == 0
    assert created["last_seq"] == 0
    with pytest.raises(RequestFailed) as refused:
        await create_channel("builds")
    assert refused.value.code == "already_exists"
    with pytest.raises(RequestFailed) as refused:
        await create_channel("no spaces allowed")
    assert refused.value.code == "invalid_name"
    async with OperatorClient(http_url, make_token("watcher", "viewer")) as viewer:
        with pytest.raises(RequestFailed) as refused:
            await viewer.request("channel_create", name="sneaky")
        assert refused.value.code == "forbidden"
        assert [c["name"] for c in await viewer.request("channels_list")] == ["builds"]

    agent = await make_agent()
    await subscribe(agent, "builds")
    listing = (await ask(agent, {"type": "list_channels"}, "channels"))["channels"]
    assert [(c["name"], c["description"], c["subscribers"]) for c in listing] == [
        ("builds", "CI results", 1),
    ]  # fmt: skip
    assert await operator.request("channels_list") == listing


async def test_subscribers_hear_of_new_subscribers_but_not_of_themselves(
    hub: HubServer, make_agent: AgentMaker, create_channel: ChannelMaker
) -> None:
    await create_channel("team")
    first, second, outsider = (
        await make_agent("first"),
        await make_agent("second"),
        await make_agent("outsider"),
    )
    await subscribe(first, "team")
    await subscribe(second, "team")
    joined = await first.receive_type("channel_agent_joined")
    assert joined == {"type": "channel_agent_joined", "channel": "team", "agent_id": "second"}
    await quiet(second, "channel_agent_joined")
    await quiet(outsider, "channel_agent_joined")

    await subscribe(second, "team")  # already subscribed: nobody hears of it again
    await quiet(first, "channel_agent_joined")


async def test_published_messages_are_numbered_and_reach_the_other_subscribers(
    hub: HubServer, make_agent: AgentMaker, create_channel: ChannelMaker
) -> None:
    await create_channel("team")
    await create_channel("other")
    sender, listener, outsider = (
        await make_agent("sender"),
        await make_agent("listener"),
        await make_agent("outsider"),
    )
    await subscribe(sender, "team")
    await subscribe(listener, "team")
    await subscribe(outsider, "other")

    first = await publish(sender, "team", {"text": "hello"}, message_type="greeting")
    second = await publish(sender, "team", {"text": "again"}, reply_to=first["id"])
    assert (first["seq"], second["seq"]) == (1, 2)
    assert first["channel"] == "team" and first["id"] != second["id"]
    other = await publish(outsider, "other", {"n": 1})
    assert other["seq"] == 1  # numbered per channel

    got = [await listener.receive_type("channel_message") for _ in range(2)]
    assert [(m["seq"], m["from"], m["payload"]) for m in got] == [
        (1, "sender", {"text": "hello"}), (2, "sender", {"text": "again"}),
    ]  # fmt: skip
    assert got[0]["channel"] == "team"
    assert got[0]["id"] == first["id"]
    assert got[0]["message_type"] == "greeting"
    assert got[1]["reply_to"] == first["id"]
    assert isinstance(got[0]["timestamp"], int)
    await quiet(sender, "channel_message")  # no echo
    await quiet(outsider, "channel_message")  # not subscribed to team
    await quiet(listener, "channel_message")  # nothing from the other channel


async def test_history_honours_limit_and_since(
    hub: HubServer, make_agent: AgentMaker, create_channel: ChannelMaker
) -> None:
    await create_channel("log")
    agent = await make_agent()
    for n in range(1, 5):
        await publish(agent, "log", {"n": n})
    reader = await make_agent("reader")  # history needs no subscription

    everything = await history(reader, "log")
    assert [m["seq"] for m in everything] == [1, 2, 3, 4]
    assert [m["payload"]["n"] for m in everything] == [1, 2, 3, 4]
    assert {m["from"] for m in everything} == {"agent-1"}
    assert [m["seq"] for m in await history(reader, "log", limit=2)] == [3, 4]
    assert [m["seq"] for m in await history(reader, "log", since=2)] == [3, 4]
    assert [m["seq"] for m in await history(reader, "log", since=1, limit=1)] == [4]
    assert await history(reader, "log", since=4) == []


async def test_unsubscribing_stops_delivery(
    hub: HubServer, make_agent: AgentMaker, create_channel: ChannelMaker
) -> None:
    await create_channel("team")
    sender, listener = await make_agent("sender"), await make_agent("listener")
    await subscribe(listener, "team")
    await publish(sender, "team", {"n": 1})  # a non-subscriber may publish
    assert (await listener.receive_type("channel_message"))["seq"] == 1

    reply = await ask(listener, {"type": "channel_unsubscribe", "channel": "team"},
                      "channel_unsubscribed")  # fmt: skip
    assert reply == {"type": "channel_unsubscribed", "channel": "team"}
    await publish(sender, "team", {"n": 2})
    await quiet(listener, "channel_message")
    listing = (await ask(listener, {"type": "list_channels"}, "channels"))["channels"]
    assert listing[0]["subscribers"] == 0


async def test_subscriptions_survive_a_reconnect(
    hub: HubServer, make_agent: AgentMaker, create_channel: ChannelMaker
) -> None:
    await create_channel("team")
    sender = await make_agent("sender")
    listener = await make_agent("listener")
    await subscribe(listener, "team")
    await listener.close()

    again = await make_agent("listener")
    published = await publish(sender, "team", {"after": "reconnect"})
    message = await again.receive_type("channel_message")
    assert message["id"] == published["id"]


async def test_channels_subscriptions_and_capped_history_survive_a_restart(
    hubs: Hubs, settings: Settings
) -> None:
    first = await hubs.start()
    operator = await hubs.operator(first)
    await operator.request("channel_create", name="team", description="the team")
    sender, listener = await hubs.agent(first, "sender"), await hubs.agent(first, "listener")
    await subscribe(listener, "team")
    for n in range(1, 9):
        await publish(sender, "team", {"n": n})
    await hubs.stop(first)

    kept = sqlite3.connect(settings.db)
    try:
        rows = kept.execute("SELECT seq FROM channel_messages ORDER BY seq").fetchall()
    finally:
        kept.close()
    assert [seq for (seq,) in rows] == [4, 5, 6, 7, 8]  # capped in the database too

    second = await hubs.start()
    operator = await hubs.operator(second)
    channels = await operator.request("channels_list")
    assert [(c["name"], c["description"], c["subscribers"], c["last_seq"]) for c in channels] == [
        ("team", "the team", 1, 8),
    ]  # fmt: skip
    sender, listener = await hubs.agent(second, "sender"), await hubs.agent(second, "listener")
    kept_history = await history(sender, "team")
    assert [m["seq"] for m in kept_history] == [4, 5, 6, 7, 8]
    assert [m["payload"]["n"] for m in kept_history] == [4, 5, 6, 7, 8]
    assert kept_history[0]["from"] == "sender"

    published = await publish(sender, "team", {"n": 9})
    assert published["seq"] == 9  # numbering goes on
    message = await listener.receive_type("channel_message")  # still subscribed
    assert (message["seq"], message["payload"]) == (9, {"n": 9})
    assert [m["seq"] for m in await history(sender, "team")] == [5, 6, 7, 8, 9]


# --- direct and broadcast messages -------------------------------------------------------


async def test_direct_message_to_an_offline_agent_is_delivered_when_it_identifies(
    hub: HubServer, make_agent: AgentMaker, make_token: TokenMaker
) -> None:
    make_token("sleeper")  # a real agent, not connected yet
    sender = await make_agent("sender")
    sent = await ask(
        sender,
        {"type": "message", "to": "sleeper", "payload": {"wake": "up"}, "message_type": "ping"},
        "message_sent",
    )
    sleeper = await make_agent("sleeper")
    message = await sleeper.receive_type("message")
    assert message["id"] == sent["id"]
    assert message["from"] == "sender"
    assert message["to"] == "sleeper"
    assert message["payload"] == {"wake": "up"}
    assert message["message_type"] == "ping"
    await quiet(sender, "message")

    # delivered once: not again on the next connection
    await sleeper.close()
    again = await make_agent("sleeper")
    await quiet(again, "message")


async def test_offline_inbox_is_capped_and_expires(
    hub: HubServer, make_agent: AgentMaker, make_token: TokenMaker, clock: ManualClock
) -> None:
    make_token("capped")
    make_token("late")
    sender = await make_agent("sender")
    for n in range(1, INBOX_CAP + 2):
        await ask(sender, {"type": "message", "to": "capped", "payload": {"n": n}}, "message_sent")
    capped = await make_agent("capped")
    got = [(await capped.receive_type("message"))["payload"]["n"] for _ in range(INBOX_CAP)]
    assert got == [2, 3, 4]  # the oldest was dropped
    await quiet(capped, "message")

    await ask(sender, {"type": "message", "to": "late", "payload": {"n": 1}}, "message_sent")
    clock.advance(TTL_S * 1000 - 1)
    await ask(sender, {"type": "message", "to": "late", "payload": {"n": 2}}, "message_sent")
    clock.advance(2)  # the first is now older than the TTL, the second is not
    late = await make_agent("late")
    assert (await late.receive_type("message"))["payload"] == {"n": 2}
    await quiet(late, "message")


async def test_messages_are_direct_or_broadcast_to_all_others(
    hub: HubServer, make_agent: AgentMaker
) -> None:
    alice, bob, carol = [await make_agent(name) for name in ("alice", "bob", "carol")]
    sent = await ask(alice, {"type": "message", "payload": {"all": True}}, "message_sent")
    for other in (bob, carol):
        message = await other.receive_type("message")
        assert (message["id"], message["from"], message["to"]) == (sent["id"], "alice", None)
        assert message["payload"] == {"all": True}
    await quiet(alice, "message")

    await ask(bob, {"type": "message", "to": "carol", "payload": {"just": "you"}}, "message_sent")
    assert (await carol.receive_type("message"))["payload"] == {"just": "you"}
    await quiet(alice, "message")
    await quiet(bob, "message")


async def test_message_to_a_made_up_agent_is_refused_and_kept_nowhere(
    hub: HubServer, make_agent: AgentMaker
) -> None:
    sender = await make_agent("sender")
    await sender.send({"type": "message", "to": "nobody-at-all", "payload": {}})
    error = await sender.receive_type("error")
    assert error["error"] == "unknown_recipient"
    assert "nobody-at-all" not in hub.hub.messaging._inboxes
