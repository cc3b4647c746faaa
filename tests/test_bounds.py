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
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
from hubprocess import HubProcess
from silentclient import SilentClient, frame_header

from agentcom.client import AgentClient, OperatorClient

MIB = 1024 * 1024
RESULT_CHARS = 1_000_000
TASKS = 20
LOG_TIMEOUT_S = 60.0


async def complete_tasks_with_large_results(hub: HubProcess, admin: str) -> list[str]:
    """Run ``TASKS`` tasks to completion, each with a result of about 1 MB."""
    agent = AgentClient(hub.ws_url, "worker", hub.make_token("worker"), heartbeat_s=None)
    await agent.connect()
    done = []
    try:
        async with OperatorClient(hub.http_url, admin) as operator:
            for index in range(TASKS):
                task = await operator.submit(f"task {index}", complexity_tier="complex")
                assign = await agent.receive_type("task_assign")
                await agent.send({"type": "task_accepted", "task_id": task["task_id"]})
                await agent.receive_type("task_ack")
                output = chr(ord("a") + index % 26) * RESULT_CHARS
                await agent.send({"type": "task_complete", "task_id": task["task_id"],
                                  "generation": assign["generation"],
                                  "result": {"status": "success", "output": output}})  # fmt: skip
                assert (await agent.receive_type("task_ack"))["status"] == "complete"
                done.append(task["task_id"])
    finally:
        await agent.close()
    return done


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
    assert "out of system resources" not in hub.log()


def test_the_soft_open_file_limit_is_raised_to_the_hard_one(tmp_path: Path) -> None:
    with HubProcess(tmp_path, open_files=(256, 1024)) as hub:
        limits = Path(f"/proc/{hub.pid}/limits").read_text()
        soft, hard = re.search(r"Max open files\s+(\d+)\s+(\d+)", limits).groups()  # type: ignore[union-attr]
        assert (soft, hard) == ("1024", "1024")
