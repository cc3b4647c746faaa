"""Authentication and roles: refusals that reveal nothing, slower answers to repeated bad
tokens, tokens kept out of logs and replies, and role checks on every operator request
and every ``/api`` route.

What a refusal may depend on is fixed by PROTOCOL.md: on ``/ws`` a token the hub never
issued (or no longer honours) is ``invalid_token`` and a valid token presented for the
wrong identity is ``token_agent_mismatch``; neither answer depends on whether the claimed
agent id exists, or on why the token is bad. ``/ws/operator``, ``/ws/dashboard`` and
``/api/*`` answer every bad token alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import sqlite3
import time
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import AgentMaker, TokenMaker
from hubprocess import HubProcess
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from agentcom.client import AgentClient, OperatorClient, RequestFailed
from agentcom.config import Settings
from agentcom.hub.clock import ManualClock
from agentcom.protocol import operator as ops
from agentcom.server import http
from agentcom.server.app import HubServer
from agentcom.server.guard import Guard
from agentcom.server.viewer import AGENT_TOKEN_REFUSED
from agentcom.store.tokens import delete_token

EVENT_TIMEOUT_S = 10.0
Frame = dict[str, Any]
DOCS = Path(__file__).resolve().parent.parent / "docs"
UNKNOWN_ID = "0123456789abcdef0123456789abcdef"


def secret() -> str:
    """A token-shaped string nobody issued."""
    return "ac_" + secrets.token_urlsafe(32)


@pytest.fixture
def bad_tokens(make_token: TokenMaker, settings: Settings) -> dict[str, str]:
    """Tokens the hub does not honour, by why (the claimed agent ``worker`` has a token)."""
    make_token("worker")
    retired = make_token("retired")
    delete_token(settings.db, "retired")
    replaced = make_token("rotated")
    make_token("rotated")  # a new token for the same id: the old one stops working
    return {
        "unknown": secret(),
        "revoked": retired,
        "replaced": replaced,
        "malformed": "not a token at all",
        "malformed-prefix": "ac_" + "!" * 43,
        "malformed-unicode": "ac_\u00e9\u4e2d\u6587\U0001f511",
        "whitespace": "   ",
        "empty": "",
        "longest-allowed": "x" * 256,
    }


# --- what a refusal looks like, per surface ---------------------------------------------


async def identify_refusal(port: int, agent_id: str, token: str) -> tuple[Frame, Frame]:
    """Identify on a fresh ``/ws`` connection; the reply, and the reply to a ping after it
    (``not_identified`` while the connection stays open, as PROTOCOL.md says)."""
    async with connect(f"ws://127.0.0.1:{port}/ws") as connection:
        frame = {"type": "identify", "agent_id": agent_id, "token": token}
        await connection.send(json.dumps(frame))
        reply = json.loads(await asyncio.wait_for(connection.recv(), EVENT_TIMEOUT_S))
        await connection.send(json.dumps({"type": "ping"}))
        after = json.loads(await asyncio.wait_for(connection.recv(), EVENT_TIMEOUT_S))
        return reply, after


async def first_frame_refusal(port: int, path: str, token: str) -> tuple[Frame, int | None, str]:
    """Send ``auth`` / ``subscribe`` with ``token``; the reply and how the hub closed."""
    async with connect(f"ws://127.0.0.1:{port}{path}") as connection:
        kind = "auth" if path == "/ws/operator" else "subscribe"
        await connection.send(json.dumps({"type": kind, "token": token}))
        reply = json.loads(await asyncio.wait_for(connection.recv(), EVENT_TIMEOUT_S))
        code, reason = await close_of(connection)
        return reply, code, reason


async def close_of(connection: ClientConnection) -> tuple[int | None, str]:
    """Read until the hub closes; its close code and reason."""
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        try:
            while True:
                await connection.recv()
        except ConnectionClosed as closed:
            frame = closed.rcvd
            return (frame.code, frame.reason) if frame is not None else (None, "")


async def http_exchange(port: int, request: bytes, local_host: str = "127.0.0.1") -> bytes:
    """One raw HTTP request; the raw response (the hub closes after each)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local_host, 0))
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            return await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def api_request(port: int, path: str, authorization: list[str]) -> bytes:
    """``GET path`` with these ``Authorization`` header values (none, one, or several)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"Authorization: {value}" for value in authorization]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def status_of(response: bytes) -> int:
    """The status code of a raw HTTP response."""
    return int(response.split(b" ", 2)[1])


# --- refusals that reveal nothing -------------------------------------------------------


async def test_agent_socket_answers_every_unhonoured_token_alike(
    hub: HubServer, bad_tokens: dict[str, str]
) -> None:
    # when each bad token is presented as an agent that exists and as one that does not
    answers = {
        (reason, agent_id): await identify_refusal(hub.port, agent_id, token)
        for reason, token in bad_tokens.items()
        for agent_id in ("worker", "ghost")
    }

    # then every answer is the same invalid_token, and the connection stays open
    expected = (
        {"type": "error", "error": "invalid_token", "task_id": None, "message": None},
        {"type": "error", "error": "not_identified", "task_id": None, "message": None},
    )
    assert answers == dict.fromkeys(answers, expected)


async def test_agent_socket_answer_to_a_misused_valid_token_does_not_reveal_agent_ids(
    hub: HubServer, make_token: TokenMaker
) -> None:
    # given valid tokens that are not worker's agent token: another agent's and operators'
    make_token("worker")
    misused = {
        "another agent's": make_token("other"),
        "admin": make_token("boss", "admin"),
        "viewer": make_token("viewer", "viewer"),
    }

    # when each is presented for an agent that exists and for one that does not
    answers = {
        (kind, agent_id): await identify_refusal(hub.port, agent_id, token)
        for kind, token in misused.items()
        for agent_id in ("worker", "ghost")
    }

    # then every answer is the same token_agent_mismatch, whatever the id
    expected = (
        {"type": "error", "error": "token_agent_mismatch", "task_id": None, "message": None},
        {"type": "error", "error": "not_identified", "task_id": None, "message": None},
    )
    assert answers == dict.fromkeys(answers, expected)


@pytest.mark.parametrize("path", ["/ws/operator", "/ws/dashboard"])
async def test_operator_sockets_answer_every_bad_token_alike(
    hub: HubServer, make_token: TokenMaker, bad_tokens: dict[str, str], path: str
) -> None:
    # given every bad token, and an agent's valid token (agents may not operate)
    agent_token = make_token("worker")

    # when each is presented
    answers = {
        reason: await first_frame_refusal(hub.port, path, token)
        for reason, token in bad_tokens.items()
    }
    agent_answer = await first_frame_refusal(hub.port, path, agent_token)

    # then every bad token gets the same error and the same close
    if path == "/ws/operator":
        error = {"type": "error", "request_id": None, "error": "invalid_token", "message": None}
    else:
        error = {"type": "error", "error": "invalid_token", "task_id": None, "message": None}
    assert answers == dict.fromkeys(bad_tokens, (error, 1008, "invalid token"))
    # and the agent's token is refused the same way, told which token would do
    told = {**error, "message": AGENT_TOKEN_REFUSED}
    assert agent_answer == (told, 1008, "invalid token")
    assert "viewer or admin token" in AGENT_TOKEN_REFUSED


async def test_api_answers_every_bad_credential_byte_for_byte_alike(
    hub: HubServer, make_token: TokenMaker, bad_tokens: dict[str, str]
) -> None:
    # given every bad token as a bearer token, an agent's token, and broken headers
    admin = make_token("ops", "admin")
    credentials = {
        **{reason: [f"Bearer {token}"] for reason, token in bad_tokens.items()
           if token.isascii()},
        "agent": [f"Bearer {make_token('worker')}"],
        "none": [],
        "basic-scheme": [f"Basic {admin}"],
        "scheme-only": ["Bearer"],
        "repeated-header": [f"Bearer {admin}", f"Bearer {admin}"],
    }  # fmt: skip

    # when each is used on an API route
    answers = {
        reason: await http_exchange(hub.port, api_request(hub.port, "/api/tasks", values))
        for reason, values in credentials.items()
    }

    # then every response is the same 401, to the byte
    expected = answers["none"]
    assert status_of(expected) == 401
    assert expected.endswith(b'{"error": "unauthorized"}')
    assert answers == dict.fromkeys(credentials, expected)


# --- slower answers to repeated bad tokens ----------------------------------------------


@asynccontextmanager
async def hub_with(
    settings: Settings, clock: ManualClock, **changes: Any
) -> AsyncIterator[HubServer]:
    """A hub with some settings changed and the given clock; stopped on exit."""
    server = HubServer(settings.model_copy(update=changes), clock=clock, run_sweeps=False)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


BadAttempt = Callable[[HubServer, str], Awaitable[None]]


async def bad_identify(hub: HubServer, local_host: str) -> None:
    url = f"ws://127.0.0.1:{hub.port}/ws"
    async with connect(url, local_addr=(local_host, 0)) as connection:
        await connection.send(json.dumps({"type": "identify", "agent_id": "a", "token": secret()}))
        reply = json.loads(await asyncio.wait_for(connection.recv(), EVENT_TIMEOUT_S))
        assert reply["error"] == "invalid_token"


async def bad_auth(hub: HubServer, local_host: str) -> None:
    url = f"ws://127.0.0.1:{hub.port}/ws/operator"
    async with connect(url, local_addr=(local_host, 0)) as connection:
        await connection.send(json.dumps({"type": "auth", "token": secret()}))
        reply = json.loads(await asyncio.wait_for(connection.recv(), EVENT_TIMEOUT_S))
        assert reply["error"] == "invalid_token"


async def bad_subscribe(hub: HubServer, local_host: str) -> None:
    url = f"ws://127.0.0.1:{hub.port}/ws/dashboard"
    async with connect(url, local_addr=(local_host, 0)) as connection:
        await connection.send(json.dumps({"type": "subscribe", "token": secret()}))
        reply = json.loads(await asyncio.wait_for(connection.recv(), EVENT_TIMEOUT_S))
        assert reply["error"] == "invalid_token"


async def bad_bearer(hub: HubServer, local_host: str) -> None:
    request = api_request(hub.port, "/api/agents", [f"Bearer {secret()}"])
    assert status_of(await http_exchange(hub.port, request, local_host)) == 401


BAD_ATTEMPTS: dict[str, BadAttempt] = {
    "/ws": bad_identify,
    "/ws/operator": bad_auth,
    "/ws/dashboard": bad_subscribe,
    "/api": bad_bearer,
}


async def timed(attempt: Awaitable[None]) -> float:
    """Seconds from sending to the answer."""
    started = time.monotonic()
    await attempt
    return time.monotonic() - started


@pytest.mark.parametrize("surface", list(BAD_ATTEMPTS))
async def test_repeated_bad_tokens_from_one_address_are_answered_more_slowly(
    settings: Settings, surface: str
) -> None:
    attempt = BAD_ATTEMPTS[surface]
    async with hub_with(settings, ManualClock(), auth_failures_before_delay=2) as hub:
        # given an address that presented as many bad tokens as it may without delay
        for _ in range(2):
            await attempt(hub, "127.0.0.1")

        # when it keeps presenting bad tokens
        delays = [await timed(attempt(hub, "127.0.0.1")) for _ in range(3)]

    # then each answer waits at least the delay the hub imposes: 0.2 s, doubling
    for delay, imposed in zip(delays, (0.2, 0.4, 0.8), strict=True):
        assert delay >= imposed * 0.9, delays


async def test_slow_down_spares_good_tokens_other_addresses_and_ends_after_a_minute(
    settings: Settings, make_token: TokenMaker
) -> None:
    clock = ManualClock()
    async with hub_with(settings, clock, auth_failures_before_delay=1) as hub:
        # given an address whose next bad token would wait 1.6 s
        for _ in range(4):
            await bad_identify(hub, "127.0.0.1")

        # when an agent with a valid token identifies from that same address
        agent = AgentClient(f"ws://127.0.0.1:{hub.port}/ws", "good", make_token("good"),
                            heartbeat_s=None)  # fmt: skip
        good_s = await timed(agent.connect(timeout=EVENT_TIMEOUT_S))
        await agent.close()

        # and another address presents its first bad token
        other_address_s = await timed(bad_identify(hub, "127.0.0.2"))

        # and a minute has passed on the hub's clock before the first address tries again
        clock.advance(60_001)
        after_window_s = await timed(bad_identify(hub, "127.0.0.1"))

    # then none of them is delayed (loose bounds, well under the 1.6 s a delay would be)
    assert good_s < 1.2, good_s
    assert other_address_s < 1.2, other_address_s
    assert after_window_s < 1.2, after_window_s


def test_failure_records_are_bounded_and_expire() -> None:
    class Peer:
        """The one thing the guard reads from a connection: its remote address."""

        def __init__(self, host: str) -> None:
            self.remote_address = (host, 40000)

    clock = ManualClock()
    guard = Guard(clock, 10, [], auth_failures_before_delay=1000, max_tracked_addresses=100)

    async def fail_from(count: int, prefix: str) -> None:
        for index in range(count):
            peer = typing.cast(Any, Peer(f"{prefix}{index}"))
            await guard.slow_down_after_failure(peer)

    # when bad tokens arrive from many more addresses than it remembers
    asyncio.run(fail_from(1000, "10.0."))

    # then it remembers only the most recent ones
    assert guard.tracked_addresses() == 100

    # and once a minute has passed, a new failure lets it forget the old ones
    clock.advance(60_001)
    asyncio.run(fail_from(1, "10.1."))
    assert guard.tracked_addresses() == 1


# --- tokens stay out of logs and replies ------------------------------------------------


def assert_no_token(text: str, tokens: list[str]) -> None:
    """Neither a token nor a 16-character piece of its secret part appears in ``text``."""
    for token in tokens:
        assert token not in text
        piece = token.removeprefix("ac_")[:16]
        assert piece not in text, f"a piece of a token ({piece}) leaked"


async def exercise_every_authentication(
    port: int, good: dict[str, str], bad: list[str]
) -> list[str]:
    """Good and bad authentication on every surface; every frame and body received."""
    received: list[str] = []
    unknown, other, too_long = bad
    ws = f"ws://127.0.0.1:{port}"

    async def collect(path: str, frames: list[Frame], replies: int) -> tuple[int | None, str]:
        async with connect(ws + path) as connection:
            for frame in frames:
                await connection.send(json.dumps(frame))
            for _ in range(replies):
                received.append(str(await asyncio.wait_for(connection.recv(), EVENT_TIMEOUT_S)))
            await connection.close()
            return connection.close_code, connection.close_reason or ""

    identify = [
        {"type": "identify", "agent_id": "worker", "token": unknown},
        {"type": "identify", "agent_id": "worker", "token": good["admin"]},
        {"type": "identify", "agent_id": "worker", "token": too_long},
        {"type": "identify", "agent_id": "worker", "token": good["agent"]},
        {"type": "identify", "agent_id": "worker", "token": other},
    ]
    await collect("/ws", identify, 5)
    for path, kind in (("/ws/operator", "auth"), ("/ws/dashboard", "subscribe")):
        for token in (unknown, good["agent"], too_long):
            async with connect(ws + path) as connection:
                await connection.send(json.dumps({"type": kind, "token": token}))
                received.append(str(await asyncio.wait_for(connection.recv(), EVENT_TIMEOUT_S)))
                code, reason = await close_of(connection)
                received.append(f"{code} {reason}")
        await collect(path, [{"type": kind, "token": good["admin"]}], 1)
    for authorization in ([f"Bearer {unknown}"], [f"Bearer {good['viewer']}"] * 2,
                          [f"Bearer {good['viewer']}"]):  # fmt: skip
        request = api_request(port, "/api/agents", authorization)
        received.append((await http_exchange(port, request)).decode("utf-8", "replace"))
    return received


async def test_tokens_never_appear_in_logs_or_replies_of_an_in_process_hub(
    hub: HubServer, make_token: TokenMaker, caplog: pytest.LogCaptureFixture
) -> None:
    # given every log line captured at DEBUG, the library's included
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="websockets")
    good = {role: make_token(f"the-{role}", role) for role in ("admin", "viewer")}
    good["agent"] = make_token("worker")
    bad = [secret(), make_token("other"), "ac_" + secrets.token_urlsafe(240)]

    # and a watcher of validation events (a bad token is one)
    operator = OperatorClient(f"http://127.0.0.1:{hub.port}", good["admin"])
    events = operator.watch(["validation"])
    assert (await anext(events))["type"] == "snapshot"

    # when every surface sees good and bad tokens
    received = await exercise_every_authentication(hub.port, good, bad)
    published = [json.dumps(await asyncio.wait_for(anext(events), EVENT_TIMEOUT_S))
                 for _ in range(4)]  # fmt: skip
    await events.aclose()

    # then the hub did log (the connections, the identified agent, who came and who was
    # refused on the operator and dashboard sockets) ...
    log = hub_log(caplog)
    assert "connection open" in log and "agent worker identified" in log
    assert re.search(r"operator the-\w+ \(\w+\) connected from 127\.0\.0\.1:\d+", log)
    assert re.search(r"dashboard the-\w+ \(\w+\) subscribed from 127\.0\.0\.1:\d+", log)
    assert "operator from 127.0.0.1:" in log and "dashboard from 127.0.0.1:" in log
    assert "refused: invalid token" in log

    # ... but no token appears in the log, in a reply or in a published event
    tokens = [*good.values(), *bad]
    assert_no_token(log, tokens)
    assert_no_token("\n".join(received), tokens)
    assert_no_token("\n".join(published), tokens)
    assert any("invalid_token" in reply for reply in received)


def hub_log(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured line except those of the raw client connections this module opens."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(
        formatter.format(record) for record in caplog.records if record.name != "websockets.client"
    )


async def test_clients_never_log_their_tokens(
    hub: HubServer, make_token: TokenMaker, caplog: pytest.LogCaptureFixture
) -> None:
    # given every log line captured at DEBUG, the library's included
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="websockets")
    agent_token, admin_token = make_token("worker"), make_token("ops", "admin")

    # when an agent identifies and an operator authenticates, requests and watches
    agent = AgentClient(f"ws://127.0.0.1:{hub.port}/ws", "worker", agent_token, heartbeat_s=None)
    await agent.connect()
    async with OperatorClient(f"http://127.0.0.1:{hub.port}", admin_token) as operator:
        await operator.request("stats")
        events = operator.watch(["agents"])
        assert (await anext(events))["type"] == "snapshot"
        await events.aclose()
    await agent.close()

    # then nothing logged, by the clients or the hub, contains a token
    log = "\n".join(logging.Formatter("%(message)s").format(r) for r in caplog.records)
    assert "connection open" in log
    assert_no_token(log, [agent_token, admin_token])


async def test_tokens_never_appear_in_the_log_of_a_hub_process(tmp_path: Path) -> None:
    # given a hub process logging at DEBUG
    quick = {"AGENTCOM_AUTH_FAILURES_BEFORE_DELAY": "1000"}  # no slow-down needed here
    with HubProcess(tmp_path, env=quick, serve_args=["--log-level", "DEBUG"]) as process:
        good = {role: process.make_token(f"the-{role}", role) for role in ("admin", "viewer")}
        good["agent"] = process.make_token("worker")
        bad = [secret(), process.make_token("other"), "ac_" + secrets.token_urlsafe(240)]
        assert process.port is not None

        # when every surface sees good and bad tokens
        received = await exercise_every_authentication(process.port, good, bad)
        process.stop()
        log = process.log()

    # then the hub logged, but no token appears in its log or in a reply
    assert "agent worker identified" in log and "DEBUG" in log
    tokens = [*good.values(), *bad]
    assert_no_token(log, tokens)
    assert_no_token("\n".join(received), tokens)


# --- roles: every operator request, every API route -------------------------------------


def request_types() -> list[str]:
    """Every operator request type, read from the protocol models."""
    members = typing.get_args(typing.get_args(ops.OperatorFrame)[0])
    types = [typing.get_args(member.model_fields["type"].annotation)[0] for member in members]
    assert sorted(types) == sorted(ops.OPERATOR_FRAME_TYPES)
    return [kind for kind in types if kind != "auth"]


def stored_state(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the hub's database."""
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = [row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]  # fmt: skip
        return {
            table: sorted(connection.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)
            for table in tables
        }
    finally:
        connection.close()


@pytest.fixture
async def role_targets(
    hub: HubServer, operator: OperatorClient, make_agent: AgentMaker
) -> dict[str, Frame]:
    """One valid example of every operator request, each with something to act on."""
    # a dead-letter task to retry
    worker = await make_agent("worker")
    dead = await operator.submit("Run the migration", max_retries=0)
    assigned = await worker.receive_type("task_assign", timeout=EVENT_TIMEOUT_S)
    await worker.send({"type": "task_failed", "task_id": dead["task_id"],
                       "generation": assigned["generation"], "reason": "boom"})  # fmt: skip
    failed = await worker.receive_type("task_ack", timeout=EVENT_TIMEOUT_S)
    assert failed["status"] == "dead_letter"
    # a task that stays queued (nobody has the capability), to cancel
    queued = await operator.submit("Needs a GPU", needed_capabilities=["gpu"])
    # a finished task, to wait for
    cancelled = await operator.submit("Never mind", needed_capabilities=["gpu"])
    await operator.request("task_cancel", task_id=cancelled["task_id"])
    # an endpoint to remove (nobody listens there: its check fails at once)
    endpoint = await operator.request("endpoint_add", url="http://127.0.0.1:9", name="spare")
    # another dead-letter task and another queued one, for the bulk requests
    dead_too = await operator.submit("Run it again", max_retries=0)
    assigned = await worker.receive_type("task_assign", timeout=EVENT_TIMEOUT_S)
    await worker.send({"type": "task_failed", "task_id": dead_too["task_id"],
                       "generation": assigned["generation"], "reason": "boom"})  # fmt: skip
    assert (await worker.receive_type("task_ack", timeout=EVENT_TIMEOUT_S))["status"] == (
        "dead_letter"
    )
    queued_too = await operator.submit("Needs a GPU too", needed_capabilities=["gpu"])
    # a task the worker holds, to requeue
    held = await operator.submit("Hold this")
    await worker.receive_type("task_assign", timeout=EVENT_TIMEOUT_S)
    # an agent's endpoint to approve
    await make_agent("lender", ollama_url="http://127.0.0.1:9")
    return {
        "task_submit": {"task": {"description": "More work", "needed_capabilities": ["gpu"]}},
        "task_get": {"task_id": queued["task_id"]},
        "task_list": {},
        "task_cancel": {"task_id": queued["task_id"]},
        "task_retry": {"task_id": dead["task_id"]},
        "task_wait": {"task_id": cancelled["task_id"], "timeout_s": EVENT_TIMEOUT_S},
        "task_route": {"task": {"description": "Refactor the security layer"}},
        "agents_list": {},
        "agent_restart": {"agent_id": "worker", "reason": "new config"},
        "stats": {},
        "endpoints_list": {},
        "endpoint_add": {"url": "http://127.0.0.1:7", "name": "another"},
        "endpoint_remove": {"endpoint_id": endpoint["endpoint_id"]},
        "endpoint_approve": {"endpoint": "lender-local"},
        "channel_create": {"name": "announcements"},
        "channels_list": {},
        "task_requeue": {"task_id": held["task_id"]},
        "task_cancel_many": {"task_ids": [queued_too["task_id"]]},
        "task_retry_many": {"task_ids": [dead_too["task_id"]]},
        "agent_drain": {"agent_id": "worker"},
        "agent_undrain": {"agent_id": "worker"},
    }


# Admin requests that change what the hub does but nothing it stores.
ADMIN_WITHOUT_STORAGE = {"agent_drain", "agent_undrain", "agent_restart"}


async def outcome(client: OperatorClient, kind: str, fields: Frame) -> tuple[str, str | None]:
    """``("result", None)`` or ``(error code, message)`` for one request."""
    try:
        await client.request(kind, **fields)
    except RequestFailed as error:
        return error.code, error.message
    return "result", None


async def test_every_operator_request_checks_the_role(
    hub: HubServer, make_token: TokenMaker, role_targets: dict[str, Frame], settings: Settings
) -> None:
    # given an example of every request type the protocol defines
    kinds = request_types()
    assert sorted(role_targets) == sorted(kinds), "new request type: add an example here"

    # when a viewer sends each one
    viewer = OperatorClient(f"http://127.0.0.1:{hub.port}", make_token("looker", "viewer"))
    admin = OperatorClient(f"http://127.0.0.1:{hub.port}", make_token("boss", "admin"))
    await viewer.connect()
    await admin.connect()
    try:
        await hub.store.commit()
        before = stored_state(settings.db)
        as_viewer = {kind: await outcome(viewer, kind, role_targets[kind]) for kind in kinds}
        await hub.store.commit()

        # then nothing stored changed
        assert stored_state(settings.db) == before

        # when an admin sends each one, noting which change what is stored
        mutations = set()
        for kind in kinds:
            await hub.store.commit()
            state = stored_state(settings.db)
            assert (await outcome(admin, kind, role_targets[kind]))[0] == "result", kind
            await hub.store.commit()
            if stored_state(settings.db) != state:
                mutations.add(kind)
    finally:
        await viewer.close()
        await admin.close()

    # then exactly the requests that change something were refused to the viewer, with
    # the documented error, and all the others were served
    forbidden = ("forbidden", "this action needs an admin token")
    admin_only = mutations | ADMIN_WITHOUT_STORAGE
    assert {kind for kind, answer in as_viewer.items() if answer == forbidden} == admin_only
    assert {kind: answer for kind, answer in as_viewer.items() if kind not in admin_only} == (
        dict.fromkeys(set(kinds) - admin_only, ("result", None))
    )
    # and they are the changes docs/protocol.md lists as admin requests
    # (undraining may assign a queued task: a stored change it causes, not its own)
    assert mutations - ADMIN_WITHOUT_STORAGE == {"task_submit", "task_cancel", "task_retry",
                                                 "task_requeue", "task_cancel_many",
                                                 "task_retry_many", "endpoint_add",
                                                 "endpoint_remove", "endpoint_approve",
                                                 "channel_create"}  # fmt: skip


def api_routes() -> list[str]:
    """Every ``/api`` route: those named in the HTTP module and those documented."""
    source = Path(http.__file__).read_text()
    named = set(re.findall(r'"(/api/[^"]*)"', source))
    documented = set(re.findall(r"^\| `(/api/[^`]*)` \|", (DOCS / "protocol.md").read_text(),
                                re.MULTILINE))  # fmt: skip
    assert {"/api/tasks", "/api/agents", "/api/schemas"} <= named & documented
    routes = {route.replace("{id}", UNKNOWN_ID) for route in named | documented}
    routes = {route + UNKNOWN_ID if route.endswith("/") else route for route in routes}
    return sorted(routes)


async def test_every_api_route_needs_a_viewer_or_admin_token(
    hub: HubServer, make_token: TokenMaker
) -> None:
    routes = api_routes()
    agent, viewer = make_token("worker"), make_token("looker", "viewer")

    async def status(route: str, authorization: list[str]) -> int:
        return status_of(await http_exchange(hub.port, api_request(hub.port, route, authorization)))

    # when every route is fetched without a token, with an agent's and with a viewer's
    refused = {route: await status(route, []) for route in routes}
    refused_agent = {route: await status(route, [f"Bearer {agent}"]) for route in routes}
    served = {route: await status(route, [f"Bearer {viewer}"]) for route in routes}

    # then only the viewer is served (an unknown task or route is simply not found)
    assert refused == dict.fromkeys(routes, 401)
    assert refused_agent == dict.fromkeys(routes, 401)
    assert set(served.values()) <= {200, 404}
    assert [route for route, code in served.items() if code == 200]
