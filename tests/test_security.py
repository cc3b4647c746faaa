"""Trust at the edges (issue 17): revocation that bites, no tokens in clear beyond
loopback, nothing secret in what viewers see, bounded memory for what an agent sends,
endpoints trusted only by their owner, and the small hardening of headers and files.

Hubs run as real processes (``agentcom serve``) where the behaviour involves the command
line or the database written by another process; memory is the hub process's RSS.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import AgentMaker, TokenMaker
from hubprocess import CliProcess, HubProcess, run_cli_async, start_hub
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from agentcom.client import OperatorClient, RequestFailed
from agentcom.config import Settings
from agentcom.hub.auth import new_token
from agentcom.hub.endpoints import HostAllowList
from agentcom.server.app import HubServer
from agentcom.store.tokens import delete_token

Frame = dict[str, Any]
EVENT_TIMEOUT_S = 10.0
MIB = 1024 * 1024


async def identified_agent(hub: HubProcess, agent_id: str, token: str) -> ClientConnection:
    """An agent identified on a bare connection."""
    connection = await connect(hub.ws_url, ping_interval=None)
    await connection.send(json.dumps({"type": "identify", "agent_id": agent_id, "token": token}))
    reply = json.loads(await asyncio.wait_for(connection.recv(), EVENT_TIMEOUT_S))
    assert reply["type"] == "identified", reply
    return connection


async def subscribed_dashboard(hub: HubProcess, token: str) -> ClientConnection:
    """A dashboard connection past its snapshot."""
    url = hub.ws_url.replace("/ws", "/ws/dashboard")
    connection = await connect(url, ping_interval=None, max_size=None)
    await connection.send(json.dumps({"type": "subscribe", "token": token}))
    snapshot = json.loads(await asyncio.wait_for(connection.recv(), EVENT_TIMEOUT_S))
    assert snapshot["type"] == "snapshot", snapshot
    return connection


async def authenticated_operator(hub: HubProcess, token: str) -> ClientConnection:
    """An operator connection past ``auth_ok``."""
    connection = await connect(hub.ws_url.replace("/ws", "/ws/operator"), ping_interval=None)
    await connection.send(json.dumps({"type": "auth", "token": token}))
    reply = json.loads(await asyncio.wait_for(connection.recv(), EVENT_TIMEOUT_S))
    assert reply["type"] == "auth_ok", reply
    return connection


async def closed_with(connection: ClientConnection) -> tuple[int | None, str | None]:
    """Read until the hub closes the connection; its close code and reason."""
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            while True:
                await connection.recv()
    received = closed.value.rcvd
    return (received.code, received.reason) if received else (None, None)


async def receive_type(connection: ClientConnection, frame_type: str) -> Frame:
    """The next frame of ``frame_type``; others before it are skipped."""
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        while (frame := json.loads(await connection.recv()))["type"] != frame_type:
            pass
    return frame


# --- 7. revocation bites ---------------------------------------------------------------


async def test_revoking_a_token_closes_its_open_agent_dashboard_and_operator_sessions(
    tmp_path: Path, hubs: list[HubProcess]
) -> None:
    # given a hub process with an agent, a dashboard, an admin operator and a watch open
    hub = start_hub(hubs, tmp_path, AGENTCOM_TOKEN_CHECK_INTERVAL_S="0.2")
    agent = await identified_agent(hub, "worker", hub.make_token("worker"))
    dashboard = await subscribed_dashboard(hub, hub.make_token("watcher", "viewer"))
    operator = await authenticated_operator(hub, hub.make_token("ops", "admin"))
    keeper = await identified_agent(hub, "keeper", hub.make_token("keeper"))
    with CliProcess("watch", *hub.operator_args(hub.make_token("looker", "viewer"))) as watch:
        assert (await watch.next_line()).startswith("connected:")

        # when each token is revoked with the command line, the hub still running
        started = time.monotonic()
        for agent_id in ("worker", "watcher", "ops", "looker"):
            revoked = await run_cli_async("token", "revoke", agent_id, "--db", str(hub.db))
            assert revoked.returncode == 0, revoked.stderr
        revoking = time.monotonic() - started

        # then each of their sessions is closed within seconds, and nothing more is served
        for connection in (agent, dashboard, operator):
            assert await closed_with(connection) == (4003, "token revoked")
        closed = time.monotonic() - started
        # and agentcom watch ends, saying why
        watched = await watch.finish(EVENT_TIMEOUT_S)
    assert watched.returncode != 0 and "token revoked" in watched.stderr, watched
    print(f"4 revokes took {revoking:.2f} s; their sessions were all closed at {closed:.2f} s")
    print(f"agentcom watch: exit {watched.returncode}, {watched.stderr.strip()}")
    # while a session whose token stands is untouched
    await keeper.send(json.dumps({"type": "ping"}))
    assert (await receive_type(keeper, "pong"))["type"] == "pong"
    await keeper.close()


# --- 2. no tokens in clear beyond loopback ---------------------------------------------


async def test_hub_refuses_to_listen_beyond_loopback_without_tls(tmp_path: Path) -> None:
    # when the hub is asked to listen on every interface, in clear
    result = await run_cli_async(
        "serve", "--host", "0.0.0.0", "--port", "0", "--db", str(tmp_path / "hub.db")
    )

    # then it does not start, and says how to use TLS or accept the risk
    assert result.returncode == 2, result
    assert "without TLS" in result.stderr and "--insecure" in result.stderr
    assert "hub on" not in result.stdout


@pytest.mark.parametrize("how", ["flag", "environment"])
async def test_an_insecure_hub_warns_at_start_and_on_health(
    tmp_path: Path, hubs: list[HubProcess], how: str
) -> None:
    # given a hub told to listen beyond loopback in clear, by flag or by environment
    args = ["--host", "0.0.0.0"] + (["--insecure"] if how == "flag" else [])
    env = {"AGENTCOM_INSECURE": "1"} if how == "environment" else {}
    hub = HubProcess(tmp_path, serve_args=args, env=env)
    hubs.append(hub)
    hub.start()

    # then it warns in its log and reports it on /health
    async with httpx.AsyncClient(timeout=EVENT_TIMEOUT_S) as client:
        health = (await client.get(f"{hub.http_url}/health")).json()
    assert health["insecure"] is True
    assert "WITHOUT TLS" in hub.log()


async def test_a_loopback_hub_is_not_insecure_and_its_server_header_has_no_version(
    tmp_path: Path, hubs: list[HubProcess]
) -> None:
    hub = start_hub(hubs, tmp_path)
    async with httpx.AsyncClient(timeout=EVENT_TIMEOUT_S) as client:
        response = await client.get(f"{hub.http_url}/health")
    assert response.json()["insecure"] is False
    assert response.headers["Server"] == "agentcom"
    assert "WITHOUT TLS" not in hub.log()


# --- 9. nothing a peer sent reaches viewers ----------------------------------------------


async def test_validation_events_carry_field_names_and_kinds_but_never_values(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient
) -> None:
    # given a viewer of the validation topic, and an agent that sends bad frames
    events = operator.watch(["validation"])
    assert (await anext(events))["type"] == "snapshot"
    agent = await make_agent("sloppy")
    token = new_token()
    frames = [
        {"type": "task_complete", "task_id": "t1", "generation": "plain-value-41"},  # safe
        {"type": "task_progress", "task_id": "t1", "progress": token},  # a token, misplaced
        {"type": token},  # a token as the frame type
    ]

    # when the agent sends them
    replies = []
    for frame in frames:
        await agent.send(frame)
        replies.append(await agent.receive_type("error"))
    published = []
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        for _ in frames:
            published.append(await anext(events))
    await events.aclose()

    # then the sender may see its own harmless value, but never a token
    assert replies[0]["errors"][0]["value"] == "plain-value-41"
    assert token not in json.dumps(replies[1])
    # and viewers get the frame type (when known), field names and error kinds, no values
    assert [event["reply"] for event in published] == [
        {"type": "error", "error": "validation_failed", "message_type": "task_complete",
         "errors": [{"field": "generation", "error": "wrong_type"}]},
        {"type": "error", "error": "validation_failed", "message_type": "task_progress",
         "errors": [{"field": "progress", "error": "wrong_type"}]},
        {"type": "error", "error": "validation_failed", "message_type": None,
         "errors": [{"field": "type", "error": "unknown_message_type"}]},
    ]  # fmt: skip
    assert "plain-value-41" not in json.dumps(published)


# --- 6. what an agent sends cannot pin memory -------------------------------------------


def rss_bytes(hub: HubProcess) -> int:
    """The hub process's resident set size, from /proc."""
    assert hub.process is not None
    for line in Path(f"/proc/{hub.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def random_text(size: int) -> str:
    """``size`` characters that do not compress."""
    return base64.b64encode(os.urandom(size * 3 // 4 + 3)).decode()[:size]


async def pong(connection: ClientConnection) -> None:
    """Round trip: every frame sent before has been handled once this returns."""
    await connection.send(json.dumps({"type": "ping"}))
    await receive_type(connection, "pong")


async def test_execution_events_with_huge_keys_stay_small_in_memory_and_in_snapshots(
    tmp_path: Path, hubs: list[HubProcess]
) -> None:
    # given an agent working on a task
    hub = start_hub(hubs, tmp_path)
    agent = await identified_agent(hub, "worker", hub.make_token("worker"))
    operator = OperatorClient(hub.http_url, hub.make_token("ops", "admin"))
    await operator.connect()
    await operator.submit("print a lot", complexity_tier="complex")
    task_id = (await receive_type(agent, "task_assign"))["task_id"]
    await agent.send(json.dumps({"type": "task_accepted", "task_id": task_id}))
    await receive_type(agent, "task_ack")
    rss_before = rss_bytes(hub)

    # when it reports 150 execution events, each with a 500 kB key and a 500 kB text
    for number in range(150):
        event = {random_text(500_000): 1, "text": random_text(500_000), "n": number}
        progress = {"type": "task_progress", "task_id": task_id, "execution_event": event}
        await agent.send(json.dumps(progress))
    await pong(agent)
    rss_after = rss_bytes(hub)

    # then the hub holds a bounded tail (unbounded: 75 MB of keys alone)
    assert rss_after - rss_before < 16 * MIB, (rss_before / MIB, rss_after / MIB)
    print(f"huge execution events: hub RSS {rss_before / MIB:.1f} -> {rss_after / MIB:.1f} MiB")
    # and a dashboard's snapshot stays small, its events without the huge keys
    snapshot = await snapshot_of(hub)
    tail = snapshot["execution_tails"][task_id]
    assert len(json.dumps(snapshot)) < 1 * MIB
    assert tail[-1]["execution_event"]["n"] == 149
    assert all(len(key) <= 64 for event in tail for key in event["execution_event"])
    await operator.close()
    await agent.close()


async def snapshot_of(hub: HubProcess) -> Frame:
    """A dashboard snapshot, as a viewer gets it."""
    url = hub.ws_url.replace("/ws", "/ws/dashboard")
    async with connect(url, ping_interval=None, max_size=None) as connection:
        await connection.send(
            json.dumps({"type": "subscribe", "token": hub.make_token("viewer", "viewer")})
        )
        snapshot: Frame = json.loads(await asyncio.wait_for(connection.recv(), EVENT_TIMEOUT_S))
    return snapshot


async def test_big_messages_are_refused_and_inboxes_are_for_agents_only(
    tmp_path: Path, hubs: list[HubProcess]
) -> None:
    # given an agent that never connects (it holds a token) and an operator id
    hub = start_hub(hubs, tmp_path, AGENTCOM_REQUEST_RATE="1000", AGENTCOM_REQUEST_BURST="1000")
    hub.make_token("absent")
    hub.make_token("ops", "admin")
    talker = await identified_agent(hub, "talker", hub.make_token("talker"))
    rss_before = rss_bytes(hub)

    # when another agent sends it 100 messages of 1 MB, and a channel 1 MB too
    errors = []
    for _ in range(100):
        payload = {"blob": random_text(1_000_000)}
        await talker.send(json.dumps({"type": "message", "to": "absent", "payload": payload}))
        errors.append((await receive_type(talker, "error"))["error"])
    rss_after = rss_bytes(hub)

    # then each is refused (unbounded: 100 MB held until restart)
    assert set(errors) == {"payload_too_large"}
    assert rss_after - rss_before < 16 * MIB, (rss_before / MIB, rss_after / MIB)
    print(f"100 MB of messages: hub RSS {rss_before / MIB:.1f} -> {rss_after / MIB:.1f} MiB")
    # and a message to an id without an agent token finds no inbox
    await talker.send(json.dumps({"type": "message", "to": "ops", "payload": {"a": 1}}))
    assert (await receive_type(talker, "error"))["error"] == "unknown_recipient"
    await talker.close()


async def test_an_offline_inbox_keeps_only_its_newest_bytes(
    tmp_path: Path, hubs: list[HubProcess]
) -> None:
    # given an inbox capped at 200 kB, for an agent that is offline
    hub = start_hub(hubs, tmp_path, AGENTCOM_OFFLINE_INBOX_BYTES="200000")
    later_token = hub.make_token("later")
    talker = await identified_agent(hub, "talker", hub.make_token("talker"))

    # when ten 50 kB messages are sent to it
    for number in range(10):
        payload = {"blob": random_text(50_000), "n": number}
        await talker.send(json.dumps({"type": "message", "to": "later", "payload": payload}))
        await receive_type(talker, "message_sent")

    # then it gets only the newest that fit, once it connects
    later = await identified_agent(hub, "later", later_token)
    await later.send(json.dumps({"type": "ping"}))
    received = []
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        while (frame := json.loads(await later.recv()))["type"] != "pong":
            if frame["type"] == "message":
                received.append(frame["payload"]["n"])
    assert received == [7, 8, 9]
    await later.close()
    await talker.close()


async def test_channel_history_is_capped_in_bytes_and_reloads_within_the_cap(
    tmp_path: Path, hubs: list[HubProcess]
) -> None:
    # given a channel whose history is capped at 200 kB
    hub = start_hub(hubs, tmp_path, AGENTCOM_CHANNEL_HISTORY_BYTES="200000")
    operator = OperatorClient(hub.http_url, hub.make_token("ops", "admin"))
    await operator.connect()
    await operator.request("channel_create", name="news")
    await operator.close()
    token = hub.make_token("talker")
    talker = await identified_agent(hub, "talker", token)

    # when ten 50 kB messages are published, and one of 1 MB
    for number in range(10):
        frame = {"type": "channel_publish", "channel": "news",
                 "payload": {"blob": random_text(50_000), "n": number}}  # fmt: skip
        await talker.send(json.dumps(frame))
        await receive_type(talker, "channel_published")
    big = {"type": "channel_publish", "channel": "news", "payload": {"b": random_text(10**6)}}
    await talker.send(json.dumps(big))
    assert (await receive_type(talker, "error"))["error"] == "payload_too_large"

    # then the history holds the newest that fit, and so does a restarted hub
    async def history(connection: ClientConnection) -> list[int]:
        await connection.send(json.dumps({"type": "channel_history", "channel": "news"}))
        reply = await receive_type(connection, "channel_history")
        return [message["payload"]["n"] for message in reply["messages"]]

    assert await history(talker) == [7, 8, 9]
    await talker.close()
    hub.stop()
    restarted = start_hub(hubs, tmp_path, AGENTCOM_CHANNEL_HISTORY_BYTES="200000")
    talker = await identified_agent(restarted, "talker", token)
    assert await history(talker) == [7, 8, 9]
    await talker.close()


# --- 10. small hardening -------------------------------------------------------------------


async def test_a_new_database_file_is_private_to_its_owner(
    tmp_path: Path, hubs: list[HubProcess]
) -> None:
    # when a hub creates its database, whatever the umask
    previous = os.umask(0o022)
    try:
        hub = start_hub(hubs, tmp_path)
    finally:
        os.umask(previous)
    hub.make_token("worker")

    # then only its owner may read the file and its journal
    assert stat.S_IMODE(hub.db.stat().st_mode) == 0o600
    wal = hub.db.with_name(hub.db.name + "-wal")
    if wal.exists():
        assert stat.S_IMODE(wal.stat().st_mode) == 0o600


async def test_task_wait_with_timeout_zero_answers_at_once(
    hub: HubServer, operator: OperatorClient
) -> None:
    # given a queued task (no agent) and an unknown one
    task = await operator.submit("waits for an agent")

    # when an operator waits for it with timeout 0, as the protocol allows
    with pytest.raises(RequestFailed) as waited:
        await operator.request("task_wait", task_id=task["task_id"], timeout_s=0)

    # then the answer is at once: not finished yet
    assert waited.value.code == "timeout"
    cancelled = await operator.request("task_cancel", task_id=task["task_id"])
    assert cancelled["status"] == "cancelled"
    finished = await operator.request("task_wait", task_id=task["task_id"], timeout_s=0)
    assert finished["status"] == "cancelled"


async def test_a_revoked_agent_loses_its_inbox_and_gets_no_new_one(
    hub: HubServer, settings: Settings, make_agent: AgentMaker, make_token: TokenMaker
) -> None:
    # given a message kept for an offline agent
    make_token("later")
    talker = await make_agent("talker")
    await talker.send({"type": "message", "to": "later", "payload": {"secret": "plans"}})
    await talker.receive_type("message_sent")

    # when its token is revoked and the hub looks for revocations
    delete_token(settings.db, "later")
    assert hub.revocations.check() == 0  # it had no open session

    # then no message is kept for it any more, and none is taken
    await talker.send({"type": "message", "to": "later", "payload": {"more": "plans"}})
    assert (await talker.receive_type("error"))["error"] == "unknown_recipient"
    # and an agent later given that id starts with an empty inbox
    later = await make_agent("later")
    await later.send({"type": "ping"})
    frames = []
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        while (frame := await later.receive())["type"] != "pong":
            frames.append(frame["type"])
    assert "message" not in frames


# --- 5. where an agent's endpoint may be ---------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "host", "agent_host", "permitted"),
    [
        ([], "10.0.0.7", "10.0.0.7", True),  # the agent's own address
        ([], "localhost", "127.0.0.1", True),  # loopback names are one host
        ([], "10.0.0.8", "10.0.0.7", False),  # a neighbour
        ([], "10.0.0.8", None, False),  # the agent's address unknown: only the list
        (["10.0.0.0/8"], "10.0.0.8", "192.0.2.1", True),
        (["10.0.0.0/8"], "11.0.0.1", "192.0.2.1", False),
        (["gpu.example"], "GPU.example", "192.0.2.1", True),
        (["gpu.example"], "gpu.example.evil", "192.0.2.1", False),
        (["fd00::/8"], "[fd00::5]", "192.0.2.1", True),
        (["*"], "anything.example", None, True),
    ],
)
def test_agents_endpoint_hosts_allow_the_agents_own_address_and_what_is_listed(
    entries: list[str], host: str, agent_host: str | None, permitted: bool
) -> None:
    assert HostAllowList(entries).permits(host, agent_host) is permitted
