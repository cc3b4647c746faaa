"""Resilience of a live hub process: viewers that stop reading, reconnect storms, and a
database that cannot be written (locked by another process, or a full disk).

Every test runs the real ``agentcom serve`` in a subprocess on a free loopback port with
its SQLite file in tmp_path, and talks to it over real sockets.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import resource
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from hubprocess import HubProcess, LineReader, clean_env, start_hub
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from agentcom.client import AgentClient, OperatorClient, RequestFailed

Frame = dict[str, Any]

MIB = 1024 * 1024
# Progress frames are the cheapest way to publish many events: no commit, two events each.
UNTHROTTLED_PROGRESS = {"AGENTCOM_PROGRESS_RATE": "1000000", "AGENTCOM_PROGRESS_BURST": "1000000"}


def rss_bytes(pid: int) -> int:
    """The resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def random_text(size: int) -> str:
    """``size`` characters that do not compress."""
    return base64.b64encode(os.urandom(size * 3 // 4 + 3)).decode()[:size]


def hub_pid(hub: HubProcess) -> int:
    assert hub.process is not None
    return hub.process.pid


async def http_json(hub: HubProcess, path: str) -> Any:
    """GET a JSON route of the hub."""
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(f"{hub.http_url}{path}")
    return response.json()


# --- 1. a viewer that stops reading ----------------------------------------------------------


@dataclass
class Viewer:
    """A ``/ws/dashboard`` connection and what it received after its snapshot."""

    connection: ClientConnection
    events: list[Frame] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def take(self, frame: Frame) -> None:
        if frame["type"] == "events_dropped":
            self.dropped.append(frame["count"])
        else:
            self.events.append(frame)
        self.changed.set()

    def has_or_dropped(self, count: int) -> bool:
        """Whether it received ``count`` events, or was told it lost some."""
        return len(self.events) >= count or bool(self.dropped)

    async def read_forever(self) -> None:
        async for raw in self.connection:
            self.take(json.loads(raw))

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


async def open_socket(hub: HubProcess, receive_buffer: int | None = None) -> socket.socket:
    """A TCP connection to the hub, with ``receive_buffer`` as SO_RCVBUF when given (set
    before connecting, so the window stays small): a peer that stops reading it soon
    stops the hub's writes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", hub.port))
    return sock


async def open_viewer(hub: HubProcess, token: str, receive_buffer: int | None = None) -> Viewer:
    """Subscribe on ``/ws/dashboard`` and read the snapshot.

    The client stops reading its socket as soon as one frame waits unread (max_queue=1),
    so a viewer whose frames are not read is a viewer that stopped reading. Without
    compression, the bytes on the wire are the events.
    """
    url = f"ws://127.0.0.1:{hub.port}/ws/dashboard"
    sock = await open_socket(hub, receive_buffer)
    connection = await connect(
        url, sock=sock, max_size=None, max_queue=1, ping_interval=None, compression=None
    )
    await connection.send(json.dumps({"type": "subscribe", "token": token}))
    snapshot = json.loads(await asyncio.wait_for(connection.recv(), 10))
    assert snapshot["type"] == "snapshot"
    return Viewer(connection)


async def raw_agent(
    hub: HubProcess, agent_id: str, receive_buffer: int | None = None
) -> ClientConnection:
    """An identified agent on a bare socket (no compression: the bytes are the frames).

    Like a viewer, it stops reading its socket as soon as one frame waits unread.
    """
    sock = await open_socket(hub, receive_buffer)
    connection = await connect(
        hub.ws_url, sock=sock, max_queue=1, ping_interval=None, compression=None
    )
    token = hub.make_token(agent_id)
    await connection.send(json.dumps({"type": "identify", "agent_id": agent_id, "token": token}))
    reply = json.loads(await asyncio.wait_for(connection.recv(), 10))
    assert reply["type"] == "identified", reply
    return connection


async def receive_type(connection: ClientConnection, frame_type: str, timeout: float = 30) -> Frame:
    """The next frame of ``frame_type`` on a bare connection; others before it are skipped."""
    async with asyncio.timeout(timeout):
        while (frame := json.loads(await connection.recv()))["type"] != frame_type:
            pass
    return frame


async def working_agent(
    hub: HubProcess, operator: OperatorClient, closing: list[Any]
) -> tuple[ClientConnection, str]:
    """An agent holding one accepted task, ready to stream progress for it."""
    agent = await raw_agent(hub, "streamer")
    closing.append(agent)
    task = await operator.submit("stream a lot of output")
    assert (await receive_type(agent, "task_assign"))["task_id"] == task["task_id"]
    await agent.send(json.dumps({"type": "task_accepted", "task_id": task["task_id"]}))
    assert (await receive_type(agent, "task_ack"))["status"] == "accepted"
    return agent, task["task_id"]


@dataclass
class StreamReport:
    """What one run of :func:`stream_past_a_stalled_viewer` measured."""

    published: int
    rss_before: int
    rss_after: int
    completion_seen_after_ack_s: float
    window_lag_max_s: float
    slow_received: int
    slow_told_dropped: int


async def stream_past_a_stalled_viewer(
    tmp_path: Path, hubs: list[HubProcess], closing: list[Any], frames: int, text_bytes: int
) -> StreamReport:
    """Stream ``frames`` progress frames (two events each, ``text_bytes`` of output in each
    execution event) past one viewer that never reads and one that reads everything."""
    # Texts are kept whole: the events must be as big as the test says.
    texts = {"AGENTCOM_EXECUTION_EVENT_MAX_TEXT": str(text_bytes)}
    hub = start_hub(hubs, tmp_path, **UNTHROTTLED_PROGRESS, **texts)
    admin = hub.make_token("ops", "admin")
    operator = OperatorClient(hub.http_url, admin)
    closing.append(operator)
    await operator.connect()
    agent, task_id = await working_agent(hub, operator, closing)

    stalled = await open_viewer(hub, admin, receive_buffer=4096)
    closing.append(stalled.connection)
    normal = await open_viewer(hub, admin)
    closing.append(normal.connection)
    reader = asyncio.create_task(normal.read_forever())
    rss_before = rss_bytes(hub_pid(hub))

    # when the agent streams in windows, each sent once the reading viewer has the last
    # (a window stays well within what the hub buffers for a viewer that does read)
    window, lag_max, sent_events = max(1, min(250, 2 * MIB // text_bytes)), 0.0, 0
    for start in range(0, frames, window):
        for n in range(start, min(start + window, frames)):
            # Random text: it stays as large as it is even on a compressed connection.
            event = {"event_type": "output", "text": random_text(text_bytes), "n": n}
            progress = {"type": "task_progress", "task_id": task_id, "progress": n % 100}
            await agent.send(json.dumps({**progress, "execution_event": event}))
            sent_events += 2
        began = time.monotonic()
        await normal.wait_for(partial(normal.has_or_dropped, sent_events), timeout=30)
        assert normal.dropped == []
        lag_max = max(lag_max, time.monotonic() - began)
    rss_after = rss_bytes(hub_pid(hub))

    await agent.send(json.dumps({"type": "task_complete", "task_id": task_id, "generation": 1}))
    assert (await receive_type(agent, "task_ack"))["status"] == "complete"
    acked = time.monotonic()

    def completed(viewer: Viewer) -> bool:
        return any(e.get("event") == "task_completed" for e in viewer.events[-5:])

    await normal.wait_for(lambda: completed(normal), timeout=30)
    seen_after = time.monotonic() - acked

    # then the stalled viewer, reading again, is told how many events it lost
    stalled_reader = asyncio.create_task(stalled.read_forever())
    await stalled.wait_for(lambda: completed(stalled), timeout=30)
    stalled_reader.cancel()
    reader.cancel()
    assert normal.dropped == []
    return StreamReport(
        published=len(normal.events),
        rss_before=rss_before,
        rss_after=rss_after,
        completion_seen_after_ack_s=seen_after,
        window_lag_max_s=lag_max,
        slow_received=len(stalled.events),
        slow_told_dropped=sum(stalled.dropped),
    )


async def test_a_viewer_that_stops_reading_loses_the_oldest_events_and_is_told_how_many(
    tmp_path: Path, hubs: list[HubProcess], closing: list[Any]
) -> None:
    report = await stream_past_a_stalled_viewer(
        tmp_path, hubs, closing, frames=10_000, text_bytes=1000
    )
    print(report)
    assert report.published == 20_000 + 1  # and the task's completion
    assert report.window_lag_max_s < 10
    assert report.slow_told_dropped > 0
    assert report.slow_received + report.slow_told_dropped == report.published
    # unbounded, the hub would hold the ~25 MB streamed; the viewer's queue holds 4 MiB
    assert report.rss_after - report.rss_before < 12 * MIB
    # the reading viewer keeps its normal pace (about a millisecond here)
    assert report.completion_seen_after_ack_s < 2


async def test_a_viewer_that_stops_reading_holds_bounded_memory_whatever_the_event_size(
    tmp_path: Path, hubs: list[HubProcess], closing: list[Any]
) -> None:
    report = await stream_past_a_stalled_viewer(
        tmp_path, hubs, closing, frames=400, text_bytes=256 * 1024
    )
    print(report)
    assert report.slow_told_dropped > 0
    assert report.slow_received + report.slow_told_dropped == report.published
    # unbounded, the hub would hold the ~100 MiB streamed (it did, before the byte cap)
    assert report.rss_after - report.rss_before < 24 * MIB


async def test_an_agent_that_stops_reading_its_pushes_is_dropped_before_the_hub_buffers_much(
    tmp_path: Path, hubs: list[HubProcess], closing: list[Any]
) -> None:
    # given an agent that stops reading, and another that may broadcast big messages fast
    hub = start_hub(
        hubs, tmp_path, AGENTCOM_MAX_PUSH_BUFFER_BYTES=str(MIB),
        AGENTCOM_REQUEST_RATE="1000", AGENTCOM_REQUEST_BURST="1000",
        AGENTCOM_MAX_MESSAGE_PAYLOAD_BYTES=str(MIB),
    )  # fmt: skip
    stalled = await raw_agent(hub, "stalled", receive_buffer=4096)
    closing.append(stalled)
    talker = await raw_agent(hub, "talker")
    closing.append(talker)
    rss_before = rss_bytes(hub_pid(hub))

    # when the other broadcasts far more than the hub may hold for the one not reading
    messages, size = 60, 256 * 1024
    for _ in range(messages):
        payload = {"blob": random_text(size)}
        await talker.send(json.dumps({"type": "message", "payload": payload}))

    # then the hub drops the connection that is not reading, and tells the others it left
    async with asyncio.timeout(30):
        while (frame := json.loads(await talker.recv())) != {
            "type": "agent_left", "agent_id": "stalled"
        }:  # fmt: skip
            assert frame["type"] == "message_sent", frame
    rss_after = rss_bytes(hub_pid(hub))
    assert "stalled is not reading" in hub.log()
    # (the dropped agent finds its connection gone once it reads again)
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(30):
            while True:
                await stalled.recv()
    # and it keeps serving the agent that reads
    await talker.send(json.dumps({"type": "ping"}))
    async with asyncio.timeout(30):
        while json.loads(await talker.recv())["type"] != "pong":
            pass
    assert rss_after - rss_before < 8 * MIB  # unbounded: the 15 MiB broadcast, and more
    print(
        f"unread pushes: {messages * size // MIB} MiB broadcast; hub RSS "
        f"{rss_before / MIB:.1f} -> {rss_after / MIB:.1f} MiB"
    )


# --- 2. a reconnect storm ----------------------------------------------------------------------

STORM = 500
STORM_SCRIPT = Path(__file__).with_name("sidecar_storm.py")


@dataclass
class Pinger:
    """An identified agent that pings every ``interval_s`` and times every pong; it also
    counts the other agents it is told have left."""

    connection: ClientConnection
    interval_s: float = 0.05
    sent: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    left: set[str] = field(default_factory=set)
    answered: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self) -> None:
        async for raw in self.connection:
            frame = json.loads(raw)
            if frame["type"] == "pong":  # pongs come back in the order of the pings
                self.latencies.append(time.monotonic() - self.sent[len(self.latencies)])
            elif frame["type"] == "agent_left":
                self.left.add(frame["agent_id"])
            self.answered.set()

    async def ping_until(self, done: asyncio.Event) -> None:
        while not done.is_set():
            self.sent.append(time.monotonic())
            await self.connection.send(json.dumps({"type": "ping"}))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), self.interval_s)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.answered.clear()
                await self.answered.wait()

    def all_answered(self) -> bool:
        return len(self.latencies) == len(self.sent)


@contextlib.contextmanager
def sidecar_storm(
    hub: HubProcess, tokens: dict[str, str], directory: Path
) -> Iterator[tuple[subprocess.Popen[str], LineReader]]:
    """``sidecar_storm.py`` against ``hub``: it identifies every agent at once on start."""
    token_file = directory / "storm-tokens.json"
    token_file.write_text(json.dumps(tokens))
    process = subprocess.Popen(
        [sys.executable, str(STORM_SCRIPT), hub.ws_url, str(token_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    assert process.stdout is not None
    lines = LineReader(process.stdout)
    try:
        yield process, lines
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        lines.join()


async def test_five_hundred_sidecars_identifying_at_once_are_all_served_and_pings_keep_flowing(
    tmp_path: Path, hubs: list[HubProcess], closing: list[Any]
) -> None:
    # given a hub that lets one address (all the sidecars share loopback, as behind NAT)
    # hold them all, tokens for a storm of sidecars, and one agent pinging every 50 ms
    hub = start_hub(hubs, tmp_path, AGENTCOM_MAX_CONNECTIONS_PER_ADDRESS=str(STORM + 10))
    agent_ids = [f"storm-{n:03}" for n in range(STORM)]
    tokens = {agent_id: hub.make_token(agent_id) for agent_id in agent_ids}
    admin = hub.make_token("ops", "admin")
    pinger = Pinger(await raw_agent(hub, "probe"))
    closing.append(pinger.connection)
    reading = asyncio.create_task(pinger.read())
    storm_over = asyncio.Event()
    pinging = asyncio.create_task(pinger.ping_until(storm_over))

    # when every sidecar connects and identifies at the same moment
    with sidecar_storm(hub, tokens, tmp_path) as (storm, lines):
        outcome = await lines.next_line_async(timeout=60)
        storm_over.set()
        await pinging

        # then every one was identified, every ping was answered, and the hub counts them all
        assert outcome.startswith(f"identified {STORM} "), outcome
        await pinger.wait_for(pinger.all_answered, timeout=30)
        assert max(pinger.latencies) < 5  # 1-2 s here: every join is pushed to every agent
        async with OperatorClient(hub.http_url, admin) as operator:
            listed = await operator.request("agents_list")
        connected = sorted(a["agent_id"] for a in listed if a["state"] != "offline")
        assert connected == sorted([*agent_ids, "probe"])
        health = await http_json(hub, "/health")
        assert health["agents_connected"] == STORM + 1
        print(
            f"storm: {outcome}; {len(pinger.latencies)} pings, "
            f"max latency {max(pinger.latencies) * 1000:.0f} ms"
        )

        # and when they all leave, the hub sees every one go
        assert storm.stdin is not None
        storm.stdin.close()
        assert await lines.next_line_async(timeout=60) == "closed"
        await pinger.wait_for(lambda: pinger.left == set(agent_ids), timeout=30)
        assert (await http_json(hub, "/health"))["agents_connected"] == 1
    reading.cancel()


# --- 3. a database locked by another process -------------------------------------------------

BUSY_TIMEOUT_S = 0.5
STORE_ENV = {"AGENTCOM_DB_BUSY_TIMEOUT_S": str(BUSY_TIMEOUT_S)}


async def api_json(hub: HubProcess, token: str, path: str) -> Any:
    """GET an ``/api/*`` route with a bearer token."""
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(
            f"{hub.http_url}{path}", headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 200, response.text
    return response.json()


async def descriptions(hub: HubProcess, token: str) -> set[str]:
    """The description of every task the hub has stored."""
    return {task["description"] for task in await api_json(hub, token, "/api/tasks?limit=1000")}


async def refused(operator: OperatorClient, description: str, **fields: Any) -> tuple[str, float]:
    """Submit and expect a refusal; returns its error code and how long it took."""
    began = time.monotonic()
    with pytest.raises(RequestFailed) as failure:
        await asyncio.wait_for(operator.submit(description, **fields), timeout=30)
    return failure.value.code, time.monotonic() - began


async def agent_states(operator: OperatorClient) -> dict[str, str]:
    """Each known agent's state (idle, assigned, working, offline)."""
    return {agent["agent_id"]: agent["state"] for agent in await operator.request("agents_list")}


async def test_a_database_locked_by_another_process_refuses_work_and_recovers_without_ghosts(
    tmp_path: Path, hubs: list[HubProcess], closing: list[Any]
) -> None:
    # given a hub with one acknowledged task, an agent working on another, and an idle one
    hub = start_hub(hubs, tmp_path, **STORE_ENV)
    admin = hub.make_token("ops", "admin")
    operator = OperatorClient(hub.http_url, admin)
    closing.append(operator)
    await operator.connect()
    agent = AgentClient(hub.ws_url, "worker", hub.make_token("worker"), capabilities=["work"],
                        heartbeat_s=None)  # fmt: skip
    closing.append(agent)
    await agent.connect()
    idler = AgentClient(hub.ws_url, "idler", hub.make_token("idler"), capabilities=["spare"],
                        heartbeat_s=None)  # fmt: skip
    closing.append(idler)
    await idler.connect()
    await operator.submit("acknowledged before the lock", needed_capabilities=["gpu"])
    working = await operator.submit("running while the lock is taken", needed_capabilities=["work"])
    assign = await agent.receive_type("task_assign")
    await agent.send({"type": "task_accepted", "task_id": working["task_id"]})
    assert (await agent.receive_type("task_ack"))["status"] == "accepted"
    assert (await http_json(hub, "/health"))["store"] == "ok"

    # when another process takes an exclusive lock on the database
    lock = sqlite3.connect(hub.db, timeout=10, isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")

        # then a submit (that would go to the idle agent) is refused once the busy timeout
        # has passed, with a clear error
        code, waited = await refused(
            operator, "refused while locked", needed_capabilities=["spare"]
        )
        assert code == "store_unavailable"
        assert waited < BUSY_TIMEOUT_S + 10
        health = await http_json(hub, "/health")
        assert health["store"] == "failing"
        assert health["status"] != "ok"
        # and so is the next one, and a completion is refused rather than acknowledged
        assert (await refused(operator, "refused again"))[0] == "store_unavailable"
        complete = {
            "type": "task_complete",
            "task_id": working["task_id"],
            "generation": assign["generation"],
            "result": {"status": "success"},
        }
        await agent.send(complete)
        reply = await agent.receive(timeout=30)
        assert (reply["type"], reply["error"]) == ("error", "store_unavailable"), reply
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    released = time.monotonic()

    # when the lock is released the next submit is acknowledged, and goes to the agent that
    # the refused one would have kept busy
    assert (await agent_states(operator))["idler"] == "idle"
    after = await asyncio.wait_for(
        operator.submit("acknowledged after the lock", needed_capabilities=["spare"]), timeout=30
    )
    recovered_s = time.monotonic() - released
    assert (await idler.receive_type("task_assign"))["task_id"] == after["task_id"]
    assert (await http_json(hub, "/health"))["store"] == "ok"

    # and nothing refused is visible: the refused tasks do not exist, the task whose
    # completion was refused is still working and can be completed now
    assert await descriptions(hub, admin) == {
        "acknowledged before the lock", "running while the lock is taken",
        "acknowledged after the lock",
    }  # fmt: skip
    assert (await operator.get_task(working["task_id"]))["status"] == "working"
    assert (await http_json(hub, "/health"))["queue_depth"] == 1
    await agent.send(complete)
    assert (await agent.receive_type("task_ack"))["status"] == "complete"
    print(f"lock: refused after {waited:.2f} s; recovered {recovered_s:.2f} s after release")


# --- 4. a full disk ---------------------------------------------------------------------------

FAST_STORE_RETRY = {**STORE_ENV, "AGENTCOM_STORE_RETRY_INTERVAL_S": "0.1"}


def limit_file_size(pid: int, limit: int) -> None:
    """Set the soft RLIMIT_FSIZE of a running process: a write past ``limit`` bytes into a
    file fails with EFBIG (the hub, a Python process, ignores SIGXFSZ), as on a full disk."""
    _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, hard))


async def test_a_full_disk_refuses_work_reports_it_and_recovers_with_only_acknowledged_state(
    tmp_path: Path, hubs: list[HubProcess], closing: list[Any]
) -> None:
    # given a hub holding a queued, a working and a completed task
    hub = HubProcess(tmp_path, env=FAST_STORE_RETRY, log_pipe=True)
    hubs.append(hub.start())
    admin = hub.make_token("ops", "admin")
    operator = OperatorClient(hub.http_url, admin)
    closing.append(operator)
    await operator.connect()
    agent = AgentClient(hub.ws_url, "worker", hub.make_token("worker"), capabilities=["work"],
                        heartbeat_s=None)  # fmt: skip
    closing.append(agent)
    await agent.connect()
    queued = await operator.submit("queued before the disk filled", needed_capabilities=["gpu"])
    done = await operator.submit("completed before the disk filled", needed_capabilities=["work"])
    assign = await agent.receive_type("task_assign")
    await agent.send({"type": "task_complete", "task_id": done["task_id"],
                      "generation": assign["generation"]})  # fmt: skip
    assert (await agent.receive_type("task_ack"))["status"] == "complete"
    working = await operator.submit("working while the disk is full", needed_capabilities=["work"])
    assign = await agent.receive_type("task_assign")
    await agent.send({"type": "task_accepted", "task_id": working["task_id"]})
    assert (await agent.receive_type("task_ack"))["status"] == "accepted"

    # when no file of the hub may grow any more
    limit_file_size(hub_pid(hub), 0)
    try:
        # then a submit is refused with a clear error, the log and /health say why
        code, waited = await refused(operator, "refused while the disk is full")
        assert code == "store_unavailable"
        failing_line = await hub.await_log(r"store failing", timeout=10)
        assert "database write failed" in failing_line
        health = await http_json(hub, "/health")
        assert (health["status"], health["store"]) == ("degraded", "failing")
        # and a completion is refused, not acknowledged
        complete = {
            "type": "task_complete",
            "task_id": working["task_id"],
            "generation": assign["generation"],
            "result": {"status": "success"},
        }
        await agent.send(complete)
        reply = await agent.receive(timeout=30)
        assert (reply["type"], reply["error"]) == ("error", "store_unavailable"), reply
        assert (await refused(operator, "refused again"))[0] == "store_unavailable"
        assert hub.process is not None and hub.process.poll() is None
    finally:
        # when the disk has room again
        limit_file_size(hub_pid(hub), resource.RLIM_INFINITY)
    cleared = time.monotonic()

    # then the hub notices by itself, and takes work again
    await hub.await_log(r"store recovered", timeout=30)
    noticed_s = time.monotonic() - cleared
    assert (await http_json(hub, "/health"))["store"] == "ok"
    after = await operator.submit("acknowledged after the disk recovered")
    await agent.send(complete)
    assert (await agent.receive_type("task_ack"))["status"] == "complete"

    # and a restarted hub holds exactly what was acknowledged
    await operator.close()
    await agent.close()
    assert hub.stop() == 0
    restarted = start_hub(hubs, tmp_path)
    stored = {t["description"]: t for t in await api_json(restarted, admin, "/api/tasks")}
    assert set(stored) == {
        "queued before the disk filled", "completed before the disk filled",
        "working while the disk is full", "acknowledged after the disk recovered",
    }  # fmt: skip
    assert stored["queued before the disk filled"]["status"] == "queued"
    assert stored["completed before the disk filled"]["status"] == "completed"
    assert stored["working while the disk is full"]["status"] == "completed"
    history = [entry["status"] for entry in stored["working while the disk is full"]["history"]]
    assert history.count("completed") == 1
    assert stored["acknowledged after the disk recovered"]["task_id"] == after["task_id"]
    assert {queued["task_id"], done["task_id"]} <= {t["task_id"] for t in stored.values()}
    print(
        f"disk full: refused after {waited:.2f} s; recovery noticed {noticed_s:.2f} s "
        "after the limit was lifted"
    )
