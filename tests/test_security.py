"""Trust at the edges (issue 17): revocation that bites, no tokens in clear beyond
loopback, nothing secret in what viewers see, bounded memory for what an agent sends,
endpoints trusted only by their owner, and the small hardening of headers and files.

Hubs run as real processes (``agentcom serve``) where the behaviour involves the command
line or the database written by another process; memory is the hub process's RSS.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import AgentMaker
from hubprocess import HubProcess, run_cli_async, start_hub
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from agentcom.client import OperatorClient
from agentcom.hub.auth import new_token
from agentcom.server.app import HubServer

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
    # given a hub process with an agent, a dashboard and an admin operator connected
    hub = start_hub(hubs, tmp_path, AGENTCOM_TOKEN_CHECK_INTERVAL_S="0.2")
    agent = await identified_agent(hub, "worker", hub.make_token("worker"))
    dashboard = await subscribed_dashboard(hub, hub.make_token("watcher", "viewer"))
    operator = await authenticated_operator(hub, hub.make_token("ops", "admin"))
    keeper = await identified_agent(hub, "keeper", hub.make_token("keeper"))
    db = ["--db", str(hub.db)]

    # when each token is revoked with the command line, the hub still running
    for agent_id in ("worker", "watcher", "ops"):
        revoked = await run_cli_async("token", "revoke", agent_id, *db)
        assert revoked.returncode == 0, revoked.stderr

    # then each of their sessions is closed within seconds, and nothing more is served
    for connection in (agent, dashboard, operator):
        assert await closed_with(connection) == (4003, "token revoked")
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
