"""Every agent frame type of PROTOCOL.md section 1, end to end over real sockets."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import METADATA, AgentMaker, TokenMaker
from ollama_standin import OllamaStandin
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from agentcom.client import AgentClient, OperatorClient
from agentcom.config import Settings
from agentcom.hub.auth import hash_token, new_token
from agentcom.hub.clock import ManualClock
from agentcom.protocol.events import EVENT
from agentcom.server.app import HubServer
from agentcom.store.tokens import save_token

Frame = dict[str, Any]
SocketOpener = Callable[..., Awaitable[AgentClient]]

AGENT_INFO_KEYS = {"agent_id", "name", "status", "capabilities", "connected_at"}


@pytest.fixture
def local_ollama() -> Iterator[OllamaStandin]:
    """A stand-in for the agent's local Ollama (healthy, no model until told)."""
    with OllamaStandin() as standin:
        yield standin


@pytest.fixture
async def open_socket(ws_url: str) -> AsyncIterator[SocketOpener]:
    """Open agent sockets that have not identified yet; all are closed at the end."""
    clients: list[AgentClient] = []

    async def open_socket(agent_id: str = "agent-1", token: str = "") -> AgentClient:
        client = AgentClient(ws_url, agent_id, token, heartbeat_s=None)
        client.connection = await connect(ws_url)
        clients.append(client)
        return client

    yield open_socket
    for client in clients:
        await client.close()


async def assert_nothing_pending(client: AgentClient) -> None:
    """The next frame after a ping is its pong: nothing else was sent to ``client`` before."""
    await client.send({"type": "ping"})
    frame = await client.receive(5)
    assert frame["type"] == "pong", f"unexpected frame {frame}"


async def send_text(client: AgentClient, text: str) -> None:
    """Send raw text as one frame (for frames that are not JSON)."""
    assert client.connection is not None
    await client.connection.send(text)


async def close_of(client: AgentClient, timeout: float = 5.0) -> tuple[int | None, str]:
    """Read until the hub closes the connection; its close code and reason."""
    assert client.connection is not None
    async with asyncio.timeout(timeout):
        try:
            while True:
                await client.connection.recv()
        except ConnectionClosed as closed:
            frame = closed.rcvd
            return (frame.code, frame.reason) if frame is not None else (None, "")


async def get_json(url: str, token: str) -> Any:
    """GET ``url`` with a bearer token (in a thread: the hub runs on this loop)."""

    def fetch() -> Any:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    return await asyncio.to_thread(fetch)


async def agent_state(operator: OperatorClient, agent_id: str) -> dict[str, Any] | None:
    """The operator's view of one agent."""
    agents = await operator.request("agents_list")
    return next((agent for agent in agents if agent["agent_id"] == agent_id), None)


# --- identify -------------------------------------------------------------------------------


async def test_identify_with_valid_token_makes_the_agent_present_and_idle(
    hub: HubServer, open_socket: SocketOpener, make_token: TokenMaker, operator: OperatorClient
) -> None:
    # given a fresh socket and a token issued for the agent
    client = await open_socket("worker-1", make_token("worker-1"))

    # when it identifies
    await client.send(client.identify_frame())
    reply = await client.receive(5)

    # then it is identified, present and idle
    assert reply == {"type": "identified", "agent_id": "worker-1"}
    state = await agent_state(operator, "worker-1")
    assert state is not None
    assert state["state"] == "idle"
    assert state["connected_at"] == hub.clock.now_ms()


async def test_unknown_token_is_refused_and_the_connection_may_retry(
    hub: HubServer, open_socket: SocketOpener, make_token: TokenMaker, operator: OperatorClient
) -> None:
    # given a socket identifying with a token nobody issued
    client = await open_socket("worker-1", "ac_not-a-real-token")
    await client.send(client.identify_frame())

    # then it is refused, and the agent is not present
    reply = await client.receive(5)
    assert (reply["type"], reply["error"]) == ("error", "invalid_token")
    assert await agent_state(operator, "worker-1") is None

    # when it retries on the same connection with a valid token
    client.token = make_token("worker-1")
    await client.send(client.identify_frame())

    # then it is identified
    assert await client.receive(5) == {"type": "identified", "agent_id": "worker-1"}
    await assert_nothing_pending(client)


async def test_token_of_another_agent_is_a_mismatch(
    hub: HubServer, open_socket: SocketOpener, make_token: TokenMaker, operator: OperatorClient
) -> None:
    # given alice's token used to identify as bob
    alice_token = make_token("alice")
    client = await open_socket("bob", alice_token)
    await client.send(client.identify_frame())

    # then it is refused, and neither agent becomes present
    reply = await client.receive(5)
    assert (reply["type"], reply["error"]) == ("error", "token_agent_mismatch")
    assert await agent_state(operator, "bob") is None
    assert await agent_state(operator, "alice") is None

    # and the connection may still identify properly
    client.token = make_token("bob")
    await client.send(client.identify_frame())
    assert (await client.receive(5))["type"] == "identified"


async def test_admin_token_cannot_identify_as_an_agent(
    hub: HubServer, open_socket: SocketOpener, make_token: TokenMaker, operator: OperatorClient
) -> None:
    # given an admin token, used with its own id
    client = await open_socket("boss", make_token("boss", "admin"))
    await client.send(client.identify_frame())

    # then the agent protocol refuses it
    reply = await client.receive(5)
    assert (reply["type"], reply["error"]) == ("error", "token_agent_mismatch")
    assert await agent_state(operator, "boss") is None
    await client.send({"type": "ping"})
    assert (await client.receive(5))["error"] == "not_identified"


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "ping"},
        {"type": "status", "status": "busy"},
        {"type": "list_agents"},
        {"type": "message", "payload": {"text": "hi"}},
        {"type": "task_complete", "task_id": "t1", "generation": 1},
        {"type": "resource_report", "cpu_percent": 5},
    ],
)
async def test_any_frame_before_identify_is_not_identified(
    hub: HubServer, open_socket: SocketOpener, make_token: TokenMaker, frame: Frame
) -> None:
    # given a socket that has not identified
    client = await open_socket("worker-1", make_token("worker-1"))

    # when it sends a valid frame
    await client.send(frame)

    # then it is told to identify first, and may still do so
    reply = await client.receive(5)
    assert (reply["type"], reply["error"]) == ("error", "not_identified")
    await client.send(client.identify_frame())
    assert (await client.receive(5))["type"] == "identified"


async def test_second_connection_replaces_the_first_and_keeps_its_task(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient
) -> None:
    # given an agent holding a task
    first = await make_agent("worker-1")
    task = await operator.submit("keep me", complexity_tier="complex")
    assign = await first.receive_type("task_assign")

    # when a second connection identifies as the same agent
    second = await make_agent("worker-1")

    # then the first is closed as replaced
    assert await close_of(first) == (4001, "replaced")
    # and the task is still assigned to the agent, same generation
    stored = await operator.get_task(task["task_id"])
    assert stored["status"] == "assigned"
    assert stored["assigned_to"] == "worker-1"
    assert stored["generation"] == assign["generation"]
    state = await agent_state(operator, "worker-1")
    assert state is not None and state["state"] == "assigned"

    # and the new connection settles it
    await second.send(
        {"type": "task_complete", "task_id": task["task_id"], "generation": assign["generation"]}
    )
    ack = await second.receive_type("task_ack")
    assert ack["status"] == "complete"


async def test_replaced_connection_does_not_make_the_agent_leave(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient
) -> None:
    watcher = await make_agent("watcher")
    first = await make_agent("worker-1")
    await watcher.receive_type("agent_joined")
    await make_agent("worker-1")
    assert await close_of(first) == (4001, "replaced")
    rejoined = await watcher.receive_type("agent_joined")
    assert rejoined["agent"]["agent_id"] == "worker-1"
    await assert_nothing_pending(watcher)  # no agent_left for the replaced connection
    state = await agent_state(operator, "worker-1")
    assert state is not None and state["state"] == "idle"


# --- compression ---------------------------------------------------------------------------


@pytest.mark.parametrize("enabled", [False, True])
async def test_permessage_deflate_is_negotiated_only_when_enabled(
    settings: Settings, enabled: bool
) -> None:
    server = HubServer(
        settings.model_copy(update={"compression": enabled}), clock=ManualClock(), run_sweeps=False
    )
    await server.start()
    try:
        # given a client that offers permessage-deflate (websockets does by default)
        async with connect(f"ws://127.0.0.1:{server.port}/ws") as connection:
            # then the hub accepts the offer only when compression is enabled
            assert connection.response is not None
            accepted = connection.response.headers.get("Sec-WebSocket-Extensions", "")
            assert accepted.startswith("permessage-deflate") is enabled

            # and frames flow either way
            await connection.send(json.dumps({"type": "ping"}))
            reply = json.loads(await asyncio.wait_for(connection.recv(), 5))
            assert reply["error"] == "not_identified"
    finally:
        await server.stop()


# --- ping, status, list_agents -----------------------------------------------------------


async def test_ping_is_answered_with_the_hub_time(
    hub: HubServer, make_agent: AgentMaker, clock: ManualClock
) -> None:
    agent = await make_agent()
    await agent.send({"type": "ping"})
    assert await agent.receive(5) == {"type": "pong", "timestamp": clock.now_ms()}

    clock.advance(1_234)
    await agent.send({"type": "ping"})
    assert (await agent.receive(5))["timestamp"] == clock.now_ms()


async def test_frames_tell_dashboards_the_agent_was_seen_at_most_every_ten_seconds(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient, clock: ManualClock
) -> None:
    agent = await make_agent("pinger")
    presence = operator.watch(["agents"])
    await anext(presence)  # snapshot

    # when the agent pings at once after identifying, and again ten seconds later
    await agent.send({"type": "ping"})
    await agent.receive_type("pong")
    clock.advance(10_000)
    await agent.send({"type": "ping"})
    await agent.receive_type("pong")

    # then only the second is published, with the time it was seen
    seen = await asyncio.wait_for(anext(presence), 5)
    assert (seen["event"], seen["agent_id"]) == ("agent_seen", "pinger")
    assert seen["agent"]["last_seen"] == clock.now_ms()

    # when it pings again within ten seconds, nothing is published; a status change is
    clock.advance(9_999)
    await agent.send({"type": "ping"})
    await agent.receive_type("pong")
    await agent.send({"type": "status", "status": "thinking"})
    following = await asyncio.wait_for(anext(presence), 5)
    assert following["event"] == "agent_status"
    assert following["agent"]["last_seen"] == clock.now_ms()
    await presence.aclose()


async def test_ping_refreshes_liveness(
    hub: HubServer, make_agent: AgentMaker, clock: ManualClock
) -> None:
    # given an agent that pings just before the idle timeout
    chatty = await make_agent("chatty")
    silent = await make_agent("silent")
    clock.advance(59_000)
    await chatty.send({"type": "ping"})
    await chatty.receive_type("pong")

    # when the sweep runs after the silent one's timeout
    clock.advance(2_000)
    await hub.sweep()

    # then only the silent agent is disconnected
    assert (await close_of(silent))[0] == 1001
    assert (await chatty.receive_type("agent_left"))["agent_id"] == "silent"
    await assert_nothing_pending(chatty)


async def test_status_is_acknowledged_and_shown_to_other_agents_only(
    hub: HubServer, make_agent: AgentMaker
) -> None:
    # given two agents
    sender = await make_agent("sender")
    other = await make_agent("other")
    await sender.receive_type("agent_joined")

    # when one changes its status
    await sender.send({"type": "status", "status": "compiling"})

    # then it gets status_updated, the other gets status_changed, and the sender nothing more
    assert await sender.receive(5) == {"type": "status_updated"}
    changed = await other.receive_type("status_changed")
    assert changed["agent"]["agent_id"] == "sender"
    assert changed["agent"]["status"] == "compiling"
    assert set(changed["agent"]) == AGENT_INFO_KEYS
    await assert_nothing_pending(sender)


async def test_list_agents_lists_connected_agents(
    hub: HubServer, make_agent: AgentMaker, clock: ManualClock
) -> None:
    # given two connected agents and one that left
    first = await make_agent("first", name="First", capabilities=["python", "git"])
    clock.advance(1_000)
    await make_agent("second")
    gone = await make_agent("gone")
    await gone.close()
    await first.receive_type("agent_left")

    # when one lists the agents
    await first.send({"type": "list_agents"})
    reply = await first.receive_type("agents")

    # then both connected agents are listed with the contract's fields
    agents = {agent["agent_id"]: agent for agent in reply["agents"]}
    assert set(agents) == {"first", "second"}
    for agent in agents.values():
        assert set(agent) == AGENT_INFO_KEYS
    assert agents["first"]["name"] == "First"
    assert agents["first"]["status"] == "idle"
    assert sorted(agents["first"]["capabilities"]) == ["git", "python"]
    assert agents["second"]["connected_at"] - agents["first"]["connected_at"] == 1_000


# --- messages and presence ----------------------------------------------------------------


async def test_direct_message_reaches_only_its_recipient(
    hub: HubServer, make_agent: AgentMaker, clock: ManualClock
) -> None:
    alice = await make_agent("alice")
    bob = await make_agent("bob")
    carol = await make_agent("carol")

    await alice.send(
        {
            "type": "message",
            "to": "bob",
            "payload": {"text": "hi"},
            "message_type": "chat",
            "reply_to": "m0",
        }
    )
    sent = await alice.receive_type("message_sent")

    delivered = await bob.receive_type("message")
    assert delivered["id"] == sent["id"]
    assert delivered["from"] == "alice"
    assert delivered["to"] == "bob"
    assert delivered["payload"] == {"text": "hi"}
    assert delivered["message_type"] == "chat"
    assert delivered["reply_to"] == "m0"
    assert delivered["timestamp"] == clock.now_ms()
    await assert_nothing_pending(alice)
    await assert_nothing_pending(carol)


async def test_broadcast_reaches_every_other_agent_but_not_the_sender(
    hub: HubServer, make_agent: AgentMaker
) -> None:
    alice = await make_agent("alice")
    bob = await make_agent("bob")
    carol = await make_agent("carol")

    await alice.send({"type": "message", "payload": {"announce": 1}})
    sent = await alice.receive_type("message_sent")

    for receiver in (bob, carol):
        message = await receiver.receive_type("message")
        assert message["id"] == sent["id"]
        assert message["from"] == "alice"
        assert message["to"] is None
        assert message["payload"] == {"announce": 1}
    await assert_nothing_pending(alice)


async def test_message_to_an_offline_agent_is_delivered_when_it_identifies(
    hub: HubServer, make_agent: AgentMaker, make_token: TokenMaker
) -> None:
    # given an agent that holds a token but is not connected
    make_token("later")
    alice = await make_agent("alice")

    # when a message is sent to it
    await alice.send({"type": "message", "to": "later", "payload": {"n": 1}})
    await alice.send({"type": "message", "to": "later", "payload": {"n": 2}})
    first = await alice.receive_type("message_sent")
    second = await alice.receive_type("message_sent")

    # then it arrives, in order, once the agent identifies
    later = await make_agent("later")
    received = [await later.receive_type("message"), await later.receive_type("message")]
    assert [message["id"] for message in received] == [first["id"], second["id"]]
    assert [message["payload"]["n"] for message in received] == [1, 2]
    assert received[0]["from"] == "alice"
    # and only once
    await later.close()
    again = await make_agent("later")
    await assert_nothing_pending(again)


async def test_joins_and_leaves_are_pushed_to_other_agents(
    hub: HubServer, make_agent: AgentMaker
) -> None:
    # given one agent
    first = await make_agent("first")

    # when another joins
    second = await make_agent("second", name="Second", capabilities=["rust"])

    # then the first is told, and the newcomer is not told about itself
    joined = await first.receive_type("agent_joined")
    assert joined["agent"]["agent_id"] == "second"
    assert joined["agent"]["name"] == "Second"
    assert joined["agent"]["capabilities"] == ["rust"]
    await assert_nothing_pending(second)

    # when it leaves, the first is told
    await second.close()
    left = await first.receive_type("agent_left")
    assert left == {"type": "agent_left", "agent_id": "second"}


# --- resources and endpoints ----------------------------------------------------------------


async def test_resource_report_is_stored_without_a_reply(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient, clock: ManualClock
) -> None:
    agent = await make_agent("gpu-box")
    await agent.send(
        {
            "type": "resource_report",
            "agent_id": "gpu-box",
            "cpu_percent": 37.5,
            "ram_used_bytes": 8_000_000_000,
            "ram_total_bytes": 16_000_000_000,
            "vram_used_bytes": None,
            "vram_total_bytes": 24_000_000_000,
            "timestamp": 1_700_000_000,
        }
    )
    await assert_nothing_pending(agent)

    state = await agent_state(operator, "gpu-box")
    assert state is not None
    resources = state["resources"]
    assert resources["cpu_percent"] == 37.5
    assert resources["ram_used_bytes"] == 8_000_000_000
    assert resources["ram_total_bytes"] == 16_000_000_000
    assert resources["vram_total_bytes"] == 24_000_000_000
    assert resources["vram_used_bytes"] is None
    assert resources["received_at"] == clock.now_ms()


async def wait_until_healthy(events: AsyncIterator[Frame], endpoint_id: str) -> Frame:
    """The ``endpoint_healthy`` event of ``endpoint_id`` (after its first health check)."""
    async with asyncio.timeout(10):
        async for event in events:
            if event.get("event") == "endpoint_healthy" and event["endpoint_id"] == endpoint_id:
                EVENT.validate_python(event)  # the documented shape (protocol/events.py)
                return event
    raise AssertionError("the event stream ended")


async def test_ollama_url_at_identify_registers_the_local_endpoint_and_routes_to_it(
    hub: HubServer,
    make_agent: AgentMaker,
    operator: OperatorClient,
    http_url: str,
    make_token: TokenMaker,
    local_ollama: OllamaStandin,
) -> None:
    # given a local Ollama serving a model, and an agent that identifies with its URL
    local_ollama.serve(models=["qwen2.5-coder:7b"])
    presence = operator.watch(["agents"])
    await anext(presence)  # snapshot
    agent = await make_agent("gpu-box", ollama_url=local_ollama.url)

    # then its endpoint is registered as <agent_id>-local (and checked)
    await wait_until_healthy(presence, "gpu-box-local")
    await presence.aclose()
    endpoints = await get_json(f"{http_url}/api/endpoints", make_token("reader", "admin"))
    mine = [endpoint for endpoint in endpoints if endpoint["endpoint_id"] == "gpu-box-local"]
    assert len(mine) == 1
    assert mine[0]["url"] == local_ollama.url
    assert mine[0]["agent_id"] == "gpu-box"

    # and a standard task is routed to it as host:port
    await operator.submit("summarise the changelog", complexity_tier="standard")
    assign = await agent.receive_type("task_assign")
    decision = assign["routing_decision"]
    assert decision["target_type"] == "ollama"
    assert decision["selected_endpoint"] == f"127.0.0.1:{local_ollama.port}"
    assert decision["selected_model"] == "qwen2.5-coder:7b"
    assert decision["estimated_cost_tier"] == "local"
    assert decision["fallback_used"] is False


async def test_ollama_report_registers_the_local_endpoint(
    hub: HubServer,
    make_agent: AgentMaker,
    operator: OperatorClient,
    http_url: str,
    make_token: TokenMaker,
    local_ollama: OllamaStandin,
) -> None:
    # given an agent that identified without an Ollama URL
    local_ollama.serve(models=["llama3.2:3b"])
    agent = await make_agent("laptop")
    reader = make_token("reader", "admin")
    assert await get_json(f"{http_url}/api/endpoints", reader) == []
    presence = operator.watch(["agents"])
    await anext(presence)  # snapshot

    # when it reports one
    await agent.send({"type": "ollama_report", "ollama_url": local_ollama.url})

    # then it is acknowledged and registered
    assert await agent.receive(5) == {"type": "ollama_report_ack", "status": "registered"}
    endpoints = await get_json(f"{http_url}/api/endpoints", reader)
    assert [endpoint["endpoint_id"] for endpoint in endpoints] == ["laptop-local"]
    assert endpoints[0]["agent_id"] == "laptop"
    await wait_until_healthy(presence, "laptop-local")
    await presence.aclose()
    await operator.submit("explain this function", complexity_tier="standard")
    assign = await agent.receive_type("task_assign")
    assert assign["routing_decision"]["selected_endpoint"] == f"127.0.0.1:{local_ollama.port}"


async def test_invalid_ollama_url_is_refused_and_registers_nothing(
    hub: HubServer, make_agent: AgentMaker, http_url: str, make_token: TokenMaker
) -> None:
    agent = await make_agent("laptop")
    await agent.send({"type": "ollama_report", "ollama_url": "ftp://127.0.0.1:21"})
    reply = await agent.receive(5)
    assert reply["type"] == "error"
    assert reply["error"] != "validation_failed"  # well-formed, but not an http(s) URL
    assert await get_json(f"{http_url}/api/endpoints", make_token("reader", "admin")) == []
    await assert_nothing_pending(agent)


# --- channels and other frames ------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "channel_subscribe", "channel": "builds"},
        {"type": "channel_unsubscribe", "channel": "builds"},
        {"type": "channel_publish", "channel": "builds", "payload": {"ok": True}},
        {"type": "channel_history", "channel": "builds", "limit": 10},
    ],
)
async def test_channel_frames_name_an_unknown_channel(
    hub: HubServer, make_agent: AgentMaker, frame: Frame
) -> None:
    other = await make_agent("other")
    agent = await make_agent()
    await other.receive_type("agent_joined")
    await agent.send(frame)
    reply = await agent.receive(5)
    assert (reply["type"], reply["error"]) == ("error", "channel_not_found")
    await assert_nothing_pending(agent)
    await assert_nothing_pending(other)


async def test_list_channels_is_empty(hub: HubServer, make_agent: AgentMaker) -> None:
    agent = await make_agent()
    await agent.send({"type": "list_channels"})
    assert await agent.receive(5) == {"type": "channels", "channels": []}


async def test_wake_result_is_accepted_silently(hub: HubServer, make_agent: AgentMaker) -> None:
    agent = await make_agent()
    await agent.send(
        {"type": "wake_result", "task_id": "t1", "status": "woken", "attempt": 1, "error": None}
    )
    await assert_nothing_pending(agent)


async def test_frame_larger_than_the_maximum_closes_with_1009(
    tmp_path: Path, clock: ManualClock
) -> None:
    # given a hub that accepts frames of at most 2 KiB
    settings = Settings(host="127.0.0.1", port=0, db=tmp_path / "small.db", max_frame_bytes=2048)
    server = HubServer(settings, clock=clock, run_sweeps=False)
    await server.start()
    url = f"ws://127.0.0.1:{server.port}/ws"
    try:

        def token_for(agent_id: str) -> str:
            token = new_token()
            save_token(settings.db, agent_id, hash_token(token), "agent")
            return token

        big = AgentClient(url, "big", token_for("big"), heartbeat_s=None)
        small = AgentClient(url, "small", token_for("small"), heartbeat_s=None)
        await big.connect()
        await small.connect()

        # a frame just under the limit is fine
        await big.send({"type": "message", "payload": {"blob": "x" * 1900}})
        await big.receive_type("message_sent")

        # when a frame exceeds it
        await big.send({"type": "message", "payload": {"blob": "x" * 3000}})

        # then the connection is closed with 1009, and other agents carry on
        assert (await close_of(big))[0] == 1009
        left = await small.receive_type("agent_left")
        assert left["agent_id"] == "big"
        await assert_nothing_pending(small)
        await small.close()
    finally:
        await server.stop()


# --- ownership and fencing ------------------------------------------------------------------


def frames_about(task_id: str, generation: int) -> dict[str, Frame]:
    """Every task frame an agent may send about ``task_id``."""
    return {
        "task_accepted": {"type": "task_accepted", "task_id": task_id},
        "task_progress": {"type": "task_progress", "task_id": task_id, "progress": 50},
        "task_rejected": {"type": "task_rejected", "task_id": task_id, "reason": "busy"},
        "task_complete": {"type": "task_complete", "task_id": task_id, "generation": generation},
        "task_failed": {
            "type": "task_failed",
            "task_id": task_id,
            "generation": generation,
            "reason": "boom",
        },
    }


@pytest.mark.parametrize(
    "frame_type",
    ["task_accepted", "task_progress", "task_rejected", "task_complete", "task_failed"],
)
async def test_task_frame_about_another_agents_task_is_not_assigned(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient, frame_type: str
) -> None:
    # given a task assigned to its owner, and an intruder connected afterwards
    owner = await make_agent("owner")
    task = await operator.submit("mine", complexity_tier="complex")
    assign = await owner.receive_type("task_assign")
    intruder = await make_agent("intruder")
    await owner.receive_type("agent_joined")
    events = operator.watch(["tasks"])
    await anext(events)  # snapshot

    # when the intruder sends a frame about it, with the right generation
    await intruder.send(frames_about(task["task_id"], assign["generation"])[frame_type])

    # then it is refused with the task id
    reply = await intruder.receive(5)
    assert (reply["type"], reply["error"], reply["task_id"]) == (
        "error",
        "not_assigned",
        task["task_id"],
    )

    # and nothing changed: same state, owner, generation, retries
    stored = await operator.get_task(task["task_id"])
    assert stored["status"] == "assigned"
    assert stored["assigned_to"] == "owner"
    assert stored["generation"] == assign["generation"]
    assert stored["retry_count"] == 0
    assert stored["progress"] is None
    assert [entry["status"] for entry in stored["history"]] == ["queued", "assigned"]
    await assert_nothing_pending(owner)
    await assert_nothing_pending(intruder)  # in particular, no task was pushed to it

    # nor was any task event published: the owner's accept is the next one
    await owner.send({"type": "task_accepted", "task_id": task["task_id"]})
    await owner.receive_type("task_ack")
    async with asyncio.timeout(5):
        event = await anext(events)
    await events.aclose()
    assert (event["event"], event["agent_id"]) == ("task_accepted", "owner")


async def test_task_frame_about_a_queued_task_is_not_assigned(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient
) -> None:
    agent = await make_agent("plain")
    task = await operator.submit("needs a gpu", needed_capabilities=["gpu"])
    await agent.send({"type": "task_accepted", "task_id": task["task_id"]})
    reply = await agent.receive(5)
    assert (reply["error"], reply["task_id"]) == ("not_assigned", task["task_id"])
    stored = await operator.get_task(task["task_id"])
    assert (stored["status"], stored["assigned_to"]) == ("queued", None)


async def test_completion_of_an_unknown_task_is_not_found(
    hub: HubServer, make_agent: AgentMaker
) -> None:
    agent = await make_agent()
    await agent.send({"type": "task_complete", "task_id": "f" * 32, "generation": 1})
    reply = await agent.receive(5)
    assert (reply["type"], reply["error"]) == ("error", "task_complete_failed: not_found")
    assert reply["task_id"] == "f" * 32


async def test_failure_of_an_unknown_task_is_not_found(
    hub: HubServer, make_agent: AgentMaker
) -> None:
    agent = await make_agent()
    await agent.send({"type": "task_failed", "task_id": "e" * 32, "generation": 1, "reason": "x"})
    reply = await agent.receive(5)
    assert (reply["type"], reply["error"]) == ("error", "task_fail_failed: not_found")
    assert reply["task_id"] == "e" * 32


async def test_error_replies_leave_the_connection_and_other_agents_working(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient
) -> None:
    # given two agents, one holding a task
    clumsy = await make_agent("clumsy")
    task = await operator.submit("real work", complexity_tier="complex")
    assign = await clumsy.receive_type("task_assign")
    other = await make_agent("other")

    # when the first sends one bad frame of every kind
    await send_text(clumsy, "{not json")
    await clumsy.send({"type": "status"})
    await clumsy.send({"type": "bogus"})
    await clumsy.send({"type": "task_complete", "task_id": "f" * 32, "generation": 1})
    await clumsy.send({"type": "channel_subscribe", "channel": "nope"})
    errors = [await clumsy.receive_type("error") for _ in range(5)]

    # then each got its own error, in order
    assert [error["error"] for error in errors] == [
        "invalid_json",
        "validation_failed",
        "validation_failed",
        "task_complete_failed: not_found",
        "channel_not_found",
    ]

    # and the connection still works, for messages and for its task
    await clumsy.send({"type": "message", "payload": {"still": "here"}})
    await clumsy.receive_type("message_sent")
    assert (await other.receive_type("message"))["from"] == "clumsy"
    await clumsy.send(
        {"type": "task_complete", "task_id": task["task_id"], "generation": assign["generation"]}
    )
    assert (await clumsy.receive_type("task_ack"))["status"] == "complete"
    await assert_nothing_pending(other)


async def test_frames_sent_in_a_burst_are_answered_each_in_order(
    hub: HubServer, make_agent: AgentMaker
) -> None:
    # given an agent that sends frames back to back without reading (frames no rate limit
    # applies to, refused because it holds none of those tasks)
    agent = await make_agent()
    burst = 300  # far more than the answers allowed to wait for the frames after them
    for n in range(burst):
        await agent.send({"type": "task_accepted", "task_id": f"{n:032x}"})

    # then every frame gets its own answer, in the order the frames were sent
    for n in range(burst):
        refused = await agent.receive(5)
        assert refused["type"] == "error" and refused["task_id"] == f"{n:032x}", refused


async def test_frames_that_arrive_together_are_made_durable_by_one_commit(
    hub: HubServer, ws_url: str, make_token: TokenMaker, operator: OperatorClient
) -> None:
    # given an agent holding a task
    async with connect(ws_url) as agent:
        await agent.send(json.dumps({"type": "identify", "agent_id": "worker",
                                     "token": make_token("worker")}))  # fmt: skip
        assert json.loads(await agent.recv())["type"] == "identified"
        task = await operator.submit("one commit", complexity_tier="complex")
        while (assign := json.loads(await agent.recv()))["type"] != "task_assign":
            pass
        task_id = task["task_id"]

        # when it sends task_accepted, task_progress and task_complete in one TCP write
        commits = hub.store.commits
        for frame in (
            {"type": "task_accepted", "task_id": task_id},
            {"type": "task_progress", "task_id": task_id, "progress": 50},
            {"type": "task_complete", "task_id": task_id,
             "generation": assign["generation"], "result": METADATA},
        ):  # fmt: skip
            agent.protocol.send_text(json.dumps(frame).encode())
        agent.send_data()

        # then both acknowledgements come, in order, after a single commit for all three
        acks = []
        async with asyncio.timeout(5):
            while len(acks) < 2:
                frame = json.loads(await agent.recv())
                if frame["type"] == "task_ack":
                    acks.append(frame["status"])
    assert acks == ["accepted", "complete"]
    assert hub.store.commits == commits + 1
