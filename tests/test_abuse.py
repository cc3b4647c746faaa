"""Handshake abuse: oversized requests, slow handshakes, too many connections from one
address, connections that never identify, and browser origins (``server/guard.py``).

Every abusive peer here is a raw TCP socket or a real WebSocket client against a real hub
on a loopback port; each test also checks that a well-behaved client is served meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from typing import Any

import pytest
from conftest import AgentMaker, TokenMaker, hub_with
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agentcom.client import AgentClient, OperatorClient
from agentcom.config import Settings
from agentcom.server.app import HubServer

HANDSHAKE_TIMEOUT_S = 0.5
IDENTIFY_TIMEOUT_S = 0.5
# Generous: the hub's own timeouts are short, but the machine may be busy.
EVENT_TIMEOUT_S = 10.0
ALLOWED_ORIGIN = "https://ops.example.com"
KEY_HEADERS = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Short handshake and identify timeouts, and one allowed browser origin."""
    return settings.model_copy(
        update={
            "handshake_timeout_s": HANDSHAKE_TIMEOUT_S,
            "identify_timeout_s": IDENTIFY_TIMEOUT_S,
            "allowed_origins": [ALLOWED_ORIGIN],
        }
    )


def upgrade_request(
    path: str,
    port: int,
    headers: Sequence[tuple[str, str]] = (),
    request_line: str | None = None,
) -> bytes:
    """The bytes of a WebSocket opening handshake, with extra ``headers``."""
    lines = [request_line or f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in [*KEY_HEADERS, *headers]]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def exchange(port: int, request: bytes, timeout: float = EVENT_TIMEOUT_S) -> bytes:
    """Send ``request`` on a raw TCP connection; everything the hub answers until it closes.

    A hub that closes while the request is still being written may reset the
    connection: what arrived before that is returned.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = b""
    try:
        try:
            writer.write(request)
            await writer.drain()
        except ConnectionError:
            pass
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                received += chunk
    except ConnectionError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return received


def status_of(response: bytes) -> int | None:
    """The status code of an HTTP response, None when nothing came back."""
    if not response:
        return None
    return int(response.split(b" ", 2)[1])


async def assert_served(hub: HubServer, make_token: TokenMaker, agent_id: str) -> None:
    """A well-behaved agent connects, identifies and gets its pong."""
    agent = AgentClient(f"ws://127.0.0.1:{hub.port}/ws", agent_id, make_token(agent_id),
                        heartbeat_s=None)  # fmt: skip
    try:
        await agent.connect(timeout=EVENT_TIMEOUT_S)
        await agent.send({"type": "ping"})
        assert (await agent.receive_type("pong", timeout=EVENT_TIMEOUT_S))["type"] == "pong"
    finally:
        await agent.close()


async def close_of(connection: ClientConnection) -> tuple[int | None, str]:
    """Read until the hub closes ``connection``; its close code and reason."""
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        try:
            while True:
                await connection.recv()
        except ConnectionClosed as closed:
            frame = closed.rcvd
            return (frame.code, frame.reason) if frame is not None else (None, "")


# --- oversized requests ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("abuse", "expected_status"),
    [("one 64 KiB header", 431), ("500 headers", 431), ("64 KiB request line", 414)],
)
async def test_oversized_handshake_is_refused_without_harming_others(
    hub: HubServer, make_token: TokenMaker, abuse: str, expected_status: int
) -> None:
    # given a handshake far larger than any real client sends
    port = hub.port
    if abuse == "one 64 KiB header":
        request = upgrade_request("/ws", port, [("X-Padding", "a" * 65536)])
    elif abuse == "500 headers":
        request = upgrade_request("/ws", port, [(f"X-Header-{i}", "v") for i in range(500)])
    else:
        request = upgrade_request("/ws", port, request_line=f"GET /ws?{'a' * 65536} HTTP/1.1")

    # when it is sent
    response = await exchange(port, request)

    # then it is refused with a 4xx (or the connection is simply closed), never upgraded
    assert status_of(response) in (expected_status, None), response[:200]

    # and a well-behaved agent is served as usual
    await assert_served(hub, make_token, "polite")


# --- slow handshakes -------------------------------------------------------------------


@pytest.mark.parametrize("pace", ["silent", "one byte at a time"])
async def test_slow_handshake_is_dropped_after_the_handshake_timeout(
    hub: HubServer, make_token: TokenMaker, pace: str
) -> None:
    # given a client that opens a TCP connection and sends its handshake too slowly
    request = upgrade_request("/ws", hub.port)
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    opened = time.monotonic()
    sent = 0

    async def drip() -> None:
        nonlocal sent
        if pace == "silent":
            return
        for byte in request:
            writer.write(bytes([byte]))
            sent += 1
            await asyncio.sleep(0.05)  # the abuser's pace: the whole request would take ~7 s

    dripping = asyncio.create_task(drip())
    try:
        # when the hub serves a well-behaved agent meanwhile
        await assert_served(hub, make_token, "patient")

        # then the slow connection is closed once the handshake timeout has passed
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            try:
                leftover = await reader.read()
            except ConnectionError:
                leftover = b""
        elapsed = time.monotonic() - opened
    finally:
        dripping.cancel()
        await asyncio.gather(dripping, return_exceptions=True)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    assert leftover == b""  # dropped without an answer
    assert elapsed >= HANDSHAKE_TIMEOUT_S * 0.9
    assert sent < len(request)  # it was still sending: the hub did not wait for it


# --- connections per address -----------------------------------------------------------


async def open_socket(port: int, **options: Any) -> ClientConnection:
    """A WebSocket connection on ``/ws`` that has not identified."""
    return await connect(f"ws://127.0.0.1:{port}/ws", open_timeout=EVENT_TIMEOUT_S, **options)


async def test_connections_beyond_the_per_address_limit_get_429_until_one_closes(
    settings: Settings,
) -> None:
    async with hub_with(settings, max_connections_per_address=3, identify_timeout_s=60) as hub:
        # given an address holding as many connections as it may
        held = [await open_socket(hub.port) for _ in range(3)]
        try:
            # when it opens one more
            with pytest.raises(InvalidStatus) as refused:
                await open_socket(hub.port)

            # then the handshake is refused with 429
            assert refused.value.response.status_code == 429
            assert json.loads(refused.value.response.body) == {"error": "too_many_connections"}

            # and another address is not affected
            other = await open_socket(hub.port, local_addr=("127.0.0.2", 0))
            await other.close()

            # when one of the held connections closes, its slot is free again
            await held.pop().close()
            async with asyncio.timeout(EVENT_TIMEOUT_S):
                while True:
                    try:
                        held.append(await open_socket(hub.port))
                        break
                    except InvalidStatus as still_full:  # the hub has not seen the close yet
                        assert still_full.response.status_code == 429

            # and the limit holds again once it is taken
            with pytest.raises(InvalidStatus) as refused_again:
                await open_socket(hub.port)
            assert refused_again.value.response.status_code == 429
        finally:
            for connection in held:
                await connection.close()


async def test_a_burst_of_handshakes_cannot_exceed_the_per_address_limit(
    settings: Settings,
) -> None:
    async with hub_with(settings, max_connections_per_address=3, identify_timeout_s=60) as hub:
        # when ten handshakes from one address arrive at once
        attempts = await asyncio.gather(
            *(open_socket(hub.port) for _ in range(10)), return_exceptions=True
        )
        opened = [a for a in attempts if isinstance(a, ClientConnection)]
        try:
            # then exactly the limit gets through and the rest get 429
            refused = [a for a in attempts if isinstance(a, InvalidStatus)]
            assert len(opened) == 3
            assert [r.response.status_code for r in refused] == [429] * 7
        finally:
            for connection in opened:
                await connection.close()


async def test_unfinished_handshakes_count_against_the_per_address_limit(
    settings: Settings,
) -> None:
    async with hub_with(
        settings, max_connections_per_address=3, handshake_timeout_s=60, identify_timeout_s=60
    ) as hub:
        # given an address holding as many TCP connections as it may, none past its handshake
        silent = [await asyncio.open_connection("127.0.0.1", hub.port) for _ in range(3)]
        try:
            # when it completes a handshake on one more
            with pytest.raises(InvalidStatus) as refused:
                await open_socket(hub.port)

            # then that one is refused: the unfinished handshakes hold the slots
            assert refused.value.response.status_code == 429

            # and one more that stays silent is dropped long before the handshake timeout
            reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
            try:
                async with asyncio.timeout(EVENT_TIMEOUT_S):
                    try:
                        leftover = await reader.read()
                    except ConnectionError:
                        leftover = b""
            finally:
                writer.close()
            assert leftover == b""
        finally:
            for _, silent_writer in silent:
                silent_writer.close()

        # when the unfinished handshakes are closed, their slots are free again
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            while True:
                try:
                    connection = await open_socket(hub.port)
                    break
                except InvalidStatus as still_full:  # the hub has not seen the closes yet
                    assert still_full.response.status_code == 429
        await connection.close()

    # then nothing is left counted once every connection is gone (the stop waits for each)
    assert hub.guard.open_connections("127.0.0.1") == 0


# --- connections that never identify ---------------------------------------------------


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/ws", "identify timeout"),
        ("/ws/operator", "no authentication in time"),
        ("/ws/dashboard", "no authentication in time"),
    ],
)
async def test_connection_that_never_identifies_is_closed_with_1008(
    hub: HubServer, path: str, reason: str
) -> None:
    # given a connection that completes the handshake and then says nothing useful
    connection = await connect(f"ws://127.0.0.1:{hub.port}{path}")
    opened = time.monotonic()
    if path == "/ws":
        await connection.send(json.dumps({"type": "ping"}))  # not an identify

    # then the hub closes it with 1008 and the documented reason
    assert await close_of(connection) == (1008, reason)
    assert time.monotonic() - opened >= IDENTIFY_TIMEOUT_S * 0.9


async def test_identify_timeout_spares_connections_that_identified(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient
) -> None:
    # given an agent and an operator that authenticated at once, and a silent connection
    # opened after them
    agent = await make_agent("prompt")
    silent = await connect(f"ws://127.0.0.1:{hub.port}/ws")

    # when the silent one is closed for not identifying (so the timeout has passed)
    assert (await close_of(silent))[0] == 1008

    # then the others are still served
    await agent.send({"type": "ping"})
    assert (await agent.receive_type("pong", timeout=EVENT_TIMEOUT_S))["type"] == "pong"
    assert isinstance(await operator.request("stats"), dict)


# --- browser origins -------------------------------------------------------------------


async def open_with_origin(hub: HubServer, path: str, *origins: str) -> ClientConnection:
    """A WebSocket handshake that sends these ``Origin`` headers (none when empty)."""
    headers = [("Origin", origin) for origin in origins]
    return await connect(f"ws://127.0.0.1:{hub.port}{path}", additional_headers=headers)


async def authenticates(connection: ClientConnection, path: str, token: str) -> bool:
    """Send the path's first frame with ``token``; whether the hub accepted it."""
    first = {"type": "auth" if path == "/ws/operator" else "subscribe", "token": token}
    await connection.send(json.dumps(first))
    reply = json.loads(await asyncio.wait_for(connection.recv(), EVENT_TIMEOUT_S))
    await connection.close()
    return bool(reply["type"] in ("auth_ok", "snapshot"))


@pytest.mark.parametrize("path", ["/ws/dashboard", "/ws/operator"])
@pytest.mark.parametrize(
    "origins",
    [("http://evil.example",), ("null",), (ALLOWED_ORIGIN, "http://evil.example")],
    ids=["foreign", "opaque", "two-origins"],
)
async def test_browser_socket_refuses_foreign_origins_with_403(
    hub: HubServer, path: str, origins: tuple[str, ...]
) -> None:
    # when a page from another origin opens the socket
    with pytest.raises(InvalidStatus) as refused:
        await open_with_origin(hub, path, *origins)

    # then the handshake is refused before any token is read
    assert refused.value.response.status_code == 403
    assert json.loads(refused.value.response.body) == {"error": "origin_not_allowed"}


@pytest.mark.parametrize("path", ["/ws/dashboard", "/ws/operator"])
@pytest.mark.parametrize("scheme", ["https", "ftp"])
async def test_the_hubs_own_host_under_another_scheme_is_a_foreign_origin(
    hub: HubServer, path: str, scheme: str
) -> None:
    # when a page served under another scheme, on the hub's host and port, opens the socket
    with pytest.raises(InvalidStatus) as refused:
        await open_with_origin(hub, path, f"{scheme}://127.0.0.1:{hub.port}")

    # then it is refused like any other origin (the hub serves http here)
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize("path", ["/ws/dashboard", "/ws/operator"])
@pytest.mark.parametrize("origin", ["own", "listed", "none"])
async def test_browser_socket_accepts_its_own_listed_or_absent_origin(
    hub: HubServer, make_token: TokenMaker, path: str, origin: str
) -> None:
    # given the hub's own origin, one listed in allowed_origins, or none (a CLI, a script)
    origins = {
        "own": (f"http://127.0.0.1:{hub.port}",),
        "listed": (ALLOWED_ORIGIN,),
        "none": (),
    }[origin]

    # when the socket is opened with it
    connection = await open_with_origin(hub, path, *origins)

    # then the handshake succeeds and a viewer token is accepted
    assert await authenticates(connection, path, make_token("watcher", "viewer"))


async def test_any_origin_is_accepted_when_allowed_origins_has_a_wildcard(
    settings: Settings, make_token: TokenMaker
) -> None:
    async with hub_with(settings, allowed_origins=["*"]) as hub:
        connection = await open_with_origin(hub, "/ws/operator", "http://anywhere.example")
        assert await authenticates(connection, "/ws/operator", make_token("ops", "admin"))


async def test_agent_socket_does_not_check_origin(hub: HubServer, make_token: TokenMaker) -> None:
    # given a handshake on /ws from a foreign origin (sidecars are not browsers: the
    # identify token is the agent socket's only gate)
    connection = await open_with_origin(hub, "/ws", "http://evil.example")

    # then the handshake succeeds, and only a valid token identifies
    await connection.send(json.dumps({"type": "identify", "agent_id": "a", "token": "ac_x"}))
    refused = json.loads(await asyncio.wait_for(connection.recv(), EVENT_TIMEOUT_S))
    assert refused["error"] == "invalid_token"
    frame = {"type": "identify", "agent_id": "a", "token": make_token("a")}
    await connection.send(json.dumps(frame))
    accepted = json.loads(await asyncio.wait_for(connection.recv(), EVENT_TIMEOUT_S))
    assert accepted == {"type": "identified", "agent_id": "a"}
    await connection.close()


async def test_repeated_headers_are_refused_not_crashed_on(hub: HubServer) -> None:
    # given requests that repeat a header the hub reads (no browser does this)
    port = hub.port
    requests = {
        "origin": upgrade_request("/ws/operator", port, [("Origin", ALLOWED_ORIGIN)] * 2),
        "authorization": (
            f"GET /api/tasks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Authorization: Bearer ac_a\r\nAuthorization: Bearer ac_b\r\n\r\n"
        ).encode(),
        "host": b"GET /dashboard HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    }

    # when each is sent
    statuses = {name: status_of(await exchange(port, raw)) for name, raw in requests.items()}

    # then each gets the answer for a bad header, not a server error
    assert statuses == {"origin": 403, "authorization": 401, "host": 200}
