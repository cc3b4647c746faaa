"""Memory and descriptors a client can make the hub hold (``server/output.py``,
``server/guard.py``, ``server/sockets.py``).

The abusive clients here are raw sockets (:mod:`silentclient`) that ask and never read,
or hold partial frames, against an ``agentcom serve`` subprocess whose resident memory
(``/proc/PID/status``) is measured. Each bound is checked against figures an unbounded
buffer would exceed many times over, and each test checks that well-behaved clients are
served meanwhile and that memory comes back down once the abusers leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import TokenMaker, hub_with
from hubprocess import HubProcess
from silentclient import SilentClient, frame_header
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from agentcom.client import AgentClient, OperatorClient, RequestFailed
from agentcom.config import Settings
from agentcom.hub.clock import ManualClock
from agentcom.server.app import HubServer
from agentcom.server.sockets import AcceptFailureLog

MIB = 1024 * 1024
RESULT_CHARS = 1_000_000
TASKS = 20
LOG_TIMEOUT_S = 60.0
EVENT_TIMEOUT_S = 10.0


async def finish_tasks(
    operator: OperatorClient, agent: AgentClient, outputs: list[str]
) -> list[str]:
    """Submit and complete one task per output; their ids in order."""
    done = []
    for output in outputs:
        task = await operator.submit("some work", complexity_tier="complex")
        assign = await agent.receive_type("task_assign")
        await agent.send({"type": "task_complete", "task_id": task["task_id"],
                          "generation": assign["generation"],
                          "result": {"status": "success", "output": output}})  # fmt: skip
        assert (await agent.receive_type("task_ack"))["status"] == "complete"
        done.append(task["task_id"])
    return done


async def complete_tasks_with_large_results(
    hub: HubProcess, admin: str, count: int = TASKS
) -> list[str]:
    """Run ``count`` tasks to completion, each with a result of about 1 MB."""
    agent = AgentClient(hub.ws_url, "worker", hub.make_token("worker"), heartbeat_s=None)
    await agent.connect()
    try:
        async with OperatorClient(hub.http_url, admin) as operator:
            outputs = [chr(ord("a") + index % 26) * RESULT_CHARS for index in range(count)]
            return await finish_tasks(operator, agent, outputs)
    finally:
        await agent.close()


async def await_log_count(hub: HubProcess, pattern: str, count: int) -> None:
    """Wait until the hub has logged ``count`` lines matching ``pattern`` in all."""
    assert hub.stderr is not None
    async with asyncio.timeout(LOG_TIMEOUT_S):
        while sum(1 for line in hub.stderr.seen if re.search(pattern, line)) < count:
            await hub.stderr.next_line_async(LOG_TIMEOUT_S)


def operator_socket(hub: HubProcess, token: str) -> SilentClient:
    """A raw operator connection, authenticated (its ``auth_ok`` read), then silent."""
    assert hub.port is not None
    client = SilentClient(hub.port)
    client.upgrade("/ws/operator")
    client.send_text(json.dumps({"type": "auth", "token": token}))
    assert json.loads(client.read_frame()[1])["type"] == "auth_ok"
    return client


@contextlib.contextmanager
def closing_all() -> Iterator[list[SilentClient]]:
    """Raw clients a test opens; all closed at the end."""
    opened: list[SilentClient] = []
    try:
        yield opened
    finally:
        for client in opened:
            client.close()


def mib(size: int) -> float:
    return round(size / MIB, 1)


async def test_clients_that_never_read_cannot_make_the_hub_hold_their_replies(
    tmp_path: Path,
) -> None:
    with HubProcess(tmp_path, log_pipe=True) as hub:
        # given 20 tasks carrying 1 MB results each
        admin = hub.make_token("ops", "admin")
        viewer = hub.make_token("watcher", "viewer")
        task_ids = await complete_tasks_with_large_results(hub, admin)
        baseline, _ = hub.memory()
        assert hub.port is not None

        with closing_all() as abusers:
            # when a viewer asks for every task 32 times at once and reads nothing
            lister = operator_socket(hub, viewer)
            abusers.append(lister)
            for request_id in range(32):
                lister.send_text(json.dumps({"type": "task_list", "request_id": str(request_id),
                                             "limit": 1000}))  # fmt: skip
            # and 8 more ask for 32 whole tasks each (32 MB apiece) and read nothing
            getters = [operator_socket(hub, viewer) for _ in range(8)]
            abusers += getters
            for getter in getters:
                for request_id in range(32):
                    task_id = task_ids[request_id % TASKS]
                    getter.send_text(json.dumps({"type": "task_get", "request_id": str(request_id),
                                                 "task_id": task_id}))  # fmt: skip
            # and 20 ask /api/tasks for 1000 tasks and 20 dashboards subscribe, reading
            # only the first bytes (so the hub is known to have written its answer)
            for _ in range(20):
                http = SilentClient(hub.port)
                abusers.append(http)
                http.request("/api/tasks?limit=1000", [("Authorization", f"Bearer {viewer}")])
                assert http.read_exactly(12) == b"HTTP/1.1 200"
                dashboard = SilentClient(hub.port)
                abusers.append(dashboard)
                dashboard.upgrade("/ws/dashboard")
                dashboard.send_text(json.dumps({"type": "subscribe", "token": viewer}))
                dashboard.read_exactly(2)
            lister.read_exactly(1)

            # then every client asking for whole tasks is cut off once it holds too much
            await await_log_count(hub, r"is not reading .* cutting it off", len(getters))
            during, peak = hub.memory()

            # and well-behaved clients are served meanwhile, by page, without results
            async with OperatorClient(hub.http_url, admin) as operator:
                page = await operator.request("task_list", limit=1000)
                assert len(page) == TASKS
                assert all("result" not in task for task in page)
                assert page[0]["result_summary"]["output_chars"] == RESULT_CHARS
                whole = await operator.get_task(task_ids[0])
                assert len(whole["result"]["output"]) == RESULT_CHARS

        # when they all leave, memory comes back down
        await await_log_count(hub, r"dashboard .* disconnected", 20)
        await await_log_count(hub, r"operator watcher .* disconnected", 1 + len(getters))
        after, _ = hub.memory()

    print(f"RSS baseline {mib(baseline)} MiB, during {mib(during)}, peak {mib(peak)}, "
          f"after {mib(after)}")  # fmt: skip
    # Unbounded, these clients held about 1.7 GiB (32 x 20 MB lists, 8 x 32 MB of tasks,
    # 40 x 20 MB of HTTP responses and snapshots); bounded, at most the 64 MiB of unread
    # replies the hub allows in all, and what is being built.
    assert peak - baseline < 96 * MIB
    assert after - baseline < 32 * MIB


async def test_when_the_hub_holds_too_many_unread_replies_the_largest_holders_go(
    tmp_path: Path,
) -> None:
    # given a hub that lets each client leave 64 MiB unread, but all of them only 4 MiB
    env = {"AGENTCOM_MAX_REPLY_BUFFER_BYTES": str(64 * MIB),
           "AGENTCOM_MAX_REPLY_BYTES_IN_FLIGHT": str(4 * MIB)}  # fmt: skip
    with HubProcess(tmp_path, log_pipe=True, env=env) as hub:
        admin = hub.make_token("ops", "admin")
        task_ids = await complete_tasks_with_large_results(hub, admin, count=4)
        with closing_all() as silent:
            # when three clients ask for 12 whole tasks each (12 MB) and read nothing
            for _ in range(3):
                client = operator_socket(hub, admin)
                silent.append(client)
                for request_id in range(12):
                    client.send_text(json.dumps({"type": "task_get", "request_id": str(request_id),
                                                 "task_id": task_ids[request_id % 4]}))  # fmt: skip

            # then clients holding the most are cut off, though each is below its own limit
            await await_log_count(hub, r"the client with the most unread replies is not reading", 1)
            # and a client that reads still gets whole tasks
            async with OperatorClient(hub.http_url, admin) as operator:
                whole = await operator.get_task(task_ids[0])
                assert len(whole["result"]["output"]) == RESULT_CHARS


async def test_partial_frames_before_authentication_cost_the_hub_little(
    tmp_path: Path,
) -> None:
    with HubProcess(tmp_path, log_pipe=True) as hub:
        assert hub.port is not None
        baseline, _ = hub.memory()
        with closing_all() as abusers:
            # when 500 connections from two addresses each start a 1 MiB frame without
            # having identified (fewer than the unauthenticated cap, 512)
            for index in range(500):
                client = SilentClient(hub.port, source=f"127.0.0.{2 + index % 2}")
                abusers.append(client)
                client.upgrade(("/ws", "/ws/operator", "/ws/dashboard")[index % 3])
                with contextlib.suppress(OSError):  # the hub may close before all is sent
                    client.send_raw(frame_header(MIB) + b"x" * (MIB - 1))

            # then each is closed at once for a frame above the small limit (1009)
            for client in abusers:
                opcode, payload = client.read_frame()
                assert (opcode, payload[:2]) == (0x8, (1009).to_bytes(2, "big"))
            _, peak = hub.memory()

            # and a real agent is served meanwhile
            agent = AgentClient(hub.ws_url, "agent-1", hub.make_token("agent-1"),
                                heartbeat_s=None)  # fmt: skip
            assert (await agent.connect())["type"] == "identified"
            await agent.close()
        async with httpx.AsyncClient() as http:
            health = (await http.get(f"{hub.http_url}/health", timeout=10)).json()
        assert health["status"] == "ok"
        after, _ = hub.memory()

    print(f"RSS baseline {mib(baseline)} MiB, peak {mib(peak)}, after {mib(after)}")
    # Unbounded, each connection held its partial frame: +500 MiB.
    assert peak - baseline < 48 * MIB
    assert after - baseline < 32 * MIB


async def test_endless_request_headers_cost_the_hub_little(tmp_path: Path) -> None:
    with HubProcess(tmp_path, log_pipe=True) as hub:
        assert hub.port is not None
        baseline, _ = hub.memory()
        head = "GET /ws HTTP/1.1\r\nHost: hub\r\n" + "".join(
            f"X-Padding-{index}: {'y' * 8000}\r\n" for index in range(120)
        )
        with closing_all() as abusers:
            # when 500 connections each send nearly 1 MB of headers that never end
            for index in range(500):
                client = SilentClient(hub.port, source=f"127.0.0.{2 + index % 2}")
                abusers.append(client)
                with contextlib.suppress(OSError):  # the hub may close before all is sent
                    client.send_raw(head.encode())
            # then each is answered 431 and closed once it passes the handshake limit
            for client in abusers:
                assert client.read_exactly(12) == b"HTTP/1.1 431"
            _, peak = hub.memory()
        after, _ = hub.memory()

    print(f"RSS baseline {mib(baseline)} MiB, peak {mib(peak)}, after {mib(after)}")
    # Unbounded (up to websockets' own 128 lines of 8 KiB): +525 MiB, kept after they left.
    assert peak - baseline < 48 * MIB
    assert after - baseline < 32 * MIB


async def test_idle_connection_flood_under_a_low_open_file_limit_spares_health_and_agents(
    tmp_path: Path,
) -> None:
    # given a hub that may open 1024 files and cannot raise that
    with HubProcess(tmp_path, log_pipe=True, open_files=(1024, 1024)) as hub:
        assert hub.port is not None
        await hub.await_log(r"open-file limit 1024: at most 960 connections")
        with closing_all() as flood:
            # when one address opens 1,100 connections and stays silent
            for _ in range(1100):
                flood.append(SilentClient(hub.port, source="127.0.0.2"))

            # then /health and a real agent are still served from elsewhere
            async with httpx.AsyncClient() as http:
                health = await http.get(f"{hub.http_url}/health", timeout=10)
                assert health.json()["status"] == "ok"
            agent = AgentClient(hub.ws_url, "agent-1", hub.make_token("agent-1"),
                                heartbeat_s=None)  # fmt: skip
            assert (await agent.connect())["type"] == "identified"
            await agent.close()
            async with httpx.AsyncClient() as http:
                metrics = (await http.get(f"{hub.http_url}/metrics", timeout=10)).text
        held = re.search(r"agentcom_connections_open (\d+)", metrics)

    # and the flood held no more than its address may (and 8 waiting to be told 429),
    # with the metrics request itself; nothing was logged per accept
    assert held is not None and int(held[1]) <= 256 + 8 + 1
    assert "Traceback" not in hub.log()
    assert "out of system resource" not in hub.log()


def test_the_soft_open_file_limit_is_raised_to_the_hard_one(tmp_path: Path) -> None:
    with HubProcess(tmp_path, open_files=(256, 1024)) as hub:
        limits = Path(f"/proc/{hub.pid}/limits").read_text()
        soft, hard = re.search(r"Max open files\s+(\d+)\s+(\d+)", limits).groups()  # type: ignore[union-attr]
        assert (soft, hard) == ("1024", "1024")


# --- in-process: lists, frame limits, the unauthenticated cap, waits, accept failures ---


async def test_task_lists_carry_a_result_summary_and_a_cursor_not_the_result(
    settings: Settings, make_token: TokenMaker, closing: list[Any]
) -> None:
    async with hub_with(settings, list_limit_max=2) as hub:
        # given three finished tasks with results of 1, 2 and 3 kB
        agent = AgentClient(f"ws://127.0.0.1:{hub.port}/ws", "worker", make_token("worker"),
                            heartbeat_s=None)  # fmt: skip
        await agent.connect()
        closing.append(agent)
        operator = OperatorClient(f"http://127.0.0.1:{hub.port}", make_token("ops", "admin"))
        await operator.connect()
        closing.append(operator)
        outputs = [str(size) * (1000 * size) for size in (1, 2, 3)]
        ids = await finish_tasks(operator, agent, outputs)

        # when an operator asks for more tasks than a page holds
        first, cursor = await operator.list_tasks(limit=1000)

        # then it gets a page of the cap's size, newest first, with summaries, no results
        assert [task["task_id"] for task in first] == [ids[2], ids[1]]
        assert all(not {"result", "verification_report"} & set(task) for task in first)
        assert first[0]["result_summary"] == {
            "status": "success", "output_preview": outputs[2][:200], "output_chars": 3000,
        }  # fmt: skip
        # and the cursor leads to the rest, the last page saying there is no more
        second, last = await operator.list_tasks(limit=1000, cursor=cursor)
        assert [task["task_id"] for task in second] == [ids[0]]
        assert last is None
        # and the result itself is there for the one task asked for
        assert (await operator.get_task(ids[2]))["result"]["output"] == outputs[2]

        # the same over HTTP, the cursor in a header
        base = f"http://127.0.0.1:{hub.port}/api/tasks"
        bearer = {"Authorization": f"Bearer {make_token('viewer', 'viewer')}"}
        async with httpx.AsyncClient(headers=bearer) as http:
            page = await http.get(base, params={"limit": 1000})
            assert [task["task_id"] for task in page.json()] == [ids[2], ids[1]]
            assert "result" not in page.json()[0]
            rest = await http.get(base, params={"cursor": page.headers["X-Next-Cursor"]})
            assert [task["task_id"] for task in rest.json()] == [ids[0]]
            assert "X-Next-Cursor" not in rest.headers
            assert (await http.get(f"{base}/{ids[0]}")).json()["result"]["output"] == outputs[0]

        # and a dashboard's snapshot lists recent tasks the same way
        events = operator.watch()
        snapshot = await anext(events)
        await events.aclose()
        assert {task["task_id"] for task in snapshot["recent_tasks"]} == set(ids)
        assert all("result" not in task for task in snapshot["recent_tasks"])


@pytest.mark.parametrize(
    ("path", "first"),
    [
        ("/ws", {"type": "identify", "agent_id": "a", "token": "t"}),
        ("/ws/operator", {"type": "auth", "token": "t"}),
        ("/ws/dashboard", {"type": "subscribe", "token": "t"}),
    ],
)
async def test_frames_before_authentication_are_held_to_the_small_limit(
    settings: Settings, path: str, first: dict[str, Any]
) -> None:
    async with hub_with(settings, max_unauthenticated_frame_bytes=4096) as hub:
        async with connect(f"ws://127.0.0.1:{hub.port}{path}") as connection:
            # when the first frame is larger than the small limit
            await connection.send(json.dumps({**first, "padding": "x" * 5000}))

            # then the connection is closed with 1009 (message too big)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(connection.recv(), EVENT_TIMEOUT_S)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_authenticated_connections_get_the_normal_frame_limit(
    settings: Settings, make_token: TokenMaker, closing: list[Any]
) -> None:
    async with hub_with(settings, max_unauthenticated_frame_bytes=4096) as hub:
        # given an agent and an operator that have authenticated
        agent = AgentClient(f"ws://127.0.0.1:{hub.port}/ws", "agent-1", make_token("agent-1"),
                            heartbeat_s=None)  # fmt: skip
        await agent.connect()
        closing.append(agent)
        operator = OperatorClient(f"http://127.0.0.1:{hub.port}", make_token("ops", "admin"))
        await operator.connect()
        closing.append(operator)

        # when each sends a frame of 50 kB
        await agent.send({"type": "ping", "padding": "x" * 50_000})
        stats = await operator.request("stats", padding="x" * 50_000)

        # then both are served
        assert (await agent.receive_type("pong"))["type"] == "pong"
        assert "queue_depth" in stats


async def test_unauthenticated_connections_beyond_the_cap_are_closed_at_accept(
    settings: Settings, make_token: TokenMaker, closing: list[Any]
) -> None:
    async with hub_with(
        settings, max_unauthenticated_connections=3, handshake_timeout_s=60, identify_timeout_s=60
    ) as hub:
        # given as many silent TCP connections as may be unauthenticated
        silent = [await asyncio.open_connection("127.0.0.1", hub.port) for _ in range(3)]
        try:
            # when one more arrives, it is closed at once without a word
            reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
            try:
                async with asyncio.timeout(EVENT_TIMEOUT_S):
                    with contextlib.suppress(ConnectionError):
                        assert await reader.read() == b""
            finally:
                writer.close()

            # when a silent one goes, an agent gets its place and, once identified, no
            # longer counts: a further connection gets through
            silent.pop()[1].close()
            async with asyncio.timeout(EVENT_TIMEOUT_S):
                while True:
                    agent = AgentClient(f"ws://127.0.0.1:{hub.port}/ws", "agent-1",
                                        make_token("agent-1"), heartbeat_s=None)  # fmt: skip
                    try:
                        await agent.connect()
                        break
                    except (InvalidHandshake, ConnectionClosed, OSError):
                        continue  # the hub has not seen the close yet
            closing.append(agent)
            async with connect(f"ws://127.0.0.1:{hub.port}/ws"):
                assert hub.guard.unauthenticated_connections() == 3
        finally:
            for _, silent_writer in silent:
                silent_writer.close()
    assert hub.guard.refused_at_accept >= 1


async def until(condition: Callable[[], bool], timeout: float = EVENT_TIMEOUT_S) -> None:
    """Return once ``condition()`` holds (checked as the loop turns); TimeoutError after
    ``timeout`` s."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_abandoned_task_waits_are_forgotten(
    hub: HubServer, operator: OperatorClient, http_url: str, make_token: TokenMaker
) -> None:
    # given a task that will not finish (no agent) and a second operator waiting for it
    task = await operator.submit("nobody runs this")
    waiting = OperatorClient(http_url, make_token("ops-2", "admin"))
    await waiting.connect()
    waits = [asyncio.create_task(waiting.wait_task(task["task_id"])) for _ in range(3)]
    await waiting.request("stats")  # answered after the waits were taken up
    assert hub.waiters.count() == 3

    # when a wait times out, and the connection of the others goes
    with pytest.raises(RequestFailed, match="timeout"):
        await operator.wait_task(task["task_id"], timeout_s=0.01)
    await waiting.close()
    await asyncio.gather(*waits, return_exceptions=True)

    # then no wait is left behind
    await until(lambda: hub.waiters.count() == 0)
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{http_url}/metrics")).text
    assert "agentcom_task_waiters 0" in metrics


async def test_failed_accepts_are_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    failures = AcceptFailureLog(clock, interval_s=60)
    loop = asyncio.get_running_loop()
    out_of_files = {"message": "socket.accept() out of system resources",
                    "exception": OSError(errno.EMFILE, "Too many open files")}  # fmt: skip
    other: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: other.append(context))
    failures.install(loop)
    try:
        # when accepts fail 100 times within an interval, then once more after it
        for _ in range(100):
            loop.call_exception_handler(out_of_files)
        clock.advance(60_000)
        loop.call_exception_handler(out_of_files)
        # and something else goes wrong meanwhile
        loop.call_exception_handler({"message": "something else"})
    finally:
        failures.uninstall()
        loop.set_exception_handler(None)

    # then two lines were logged, the second counting the failures it stood for
    lines = [r.getMessage() for r in caplog.records if "cannot accept" in r.getMessage()]
    assert len(lines) == 2
    assert "EMFILE" in lines[0] and "99 more" in lines[1]
    assert failures.failures == 101
    # and the rest still reached the handler that was there before
    assert [context["message"] for context in other] == ["something else"]


async def test_running_out_of_descriptors_logs_a_line_not_a_traceback_per_accept(
    tmp_path: Path,
) -> None:
    # given a hub with 64 open files and (unwisely) almost none kept in reserve
    with HubProcess(tmp_path, log_pipe=True, open_files=(64, 64),
                    env={"AGENTCOM_RESERVED_DESCRIPTORS": "8"}) as hub:  # fmt: skip
        assert hub.port is not None
        with closing_all() as flood:
            # when 80 idle connections arrive, more than it has descriptors for
            for index in range(80):
                flood.append(SilentClient(hub.port, source=f"127.0.0.{2 + index % 2}"))
            # then it says so once
            await hub.await_log(r"cannot accept connections \(EMFILE")
        # and once they go, it serves again
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            while True:
                try:
                    async with httpx.AsyncClient() as http:
                        health = await http.get(f"{hub.http_url}/health", timeout=2)
                    break
                except httpx.TransportError:
                    continue  # the flood's descriptors are not all closed yet
        assert health.json()["status"] == "ok"
    assert "Traceback" not in hub.log()
    assert hub.log().count("cannot accept connections") == 1
