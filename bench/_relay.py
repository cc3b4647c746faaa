"""The bare-relay baseline of the lifecycle benchmark: how fast plain ``websockets`` moves
task-sized frames between processes on this machine, to measure the hub against.

The relay is the ``websockets`` asyncio echo server (:func:`serve_echo`) in one child
process, driven by :func:`drive_echo` in another: each client connection sends one text
frame, reads its echo, and again, until stopped; neither side parses the frames and
compression is off (the hub's default). Both follow the worker convention of
``_common``. A task costs :data:`ROUND_TRIPS_PER_TASK` request/response round trips, so
the relay's round trips per second divided by that is the task rate of a hub that did
nothing but move frames (:func:`compare_with_relay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from _common import Children, cpu_sample, cpu_used, log_tail, stop_on_signal_or_eof
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake

__all__ = [
    "ROUND_TRIPS_PER_TASK",
    "compare_with_relay",
    "drive_echo",
    "measure_relay",
    "serve_echo",
]

# Request/response round trips a task costs: submit, assign/accepted, progress, complete.
ROUND_TRIPS_PER_TASK = 4


# --- the children ------------------------------------------------------------------------


async def serve_echo() -> int:
    """The bare relay: a ``websockets`` server that sends every message back, until stopped.

    Prints ``listening ws://HOST:PORT`` then ``ready`` (the worker convention).
    """
    stop = stop_on_signal_or_eof()

    async def echo(connection: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in connection:
                await connection.send(message)

    async with serve(echo, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"listening ws://127.0.0.1:{port}", flush=True)
        print("ready", flush=True)
        await stop.wait()
    return 0


async def echo_round_trips(connection: ClientConnection, frame: str, stop: asyncio.Event) -> int:
    """Send ``frame`` and read its echo, back to back, until ``stop``; the round trips made."""
    made = 0
    while not stop.is_set():
        await connection.send(frame)
        await connection.recv()
        made += 1
    return made


async def drive_echo(spec_path: Path) -> int:
    """The relay's clients: open every connection of the spec, say ``ready``, then make round
    trips with a task frame until stopped; the summary has their count and duration."""
    spec = json.loads(spec_path.read_text())
    stop = stop_on_signal_or_eof()
    frame = spec["frame"]
    try:
        connections = await asyncio.gather(
            *(connect(spec["url"], compression=None) for _ in range(spec["connections"]))
        )
    except (OSError, InvalidHandshake) as error:
        print(f"failed: cannot connect to the relay: {error!r}", flush=True)
        return 1
    print(f"ready {len(connections)}", flush=True)
    started = time.perf_counter()
    made = await asyncio.gather(*(echo_round_trips(each, frame, stop) for each in connections))
    seconds = time.perf_counter() - started
    await asyncio.gather(*(each.close() for each in connections))
    summary = {"round_trips": sum(made), "seconds": seconds, "frame_bytes": len(frame)}
    print("summary " + json.dumps(summary), flush=True)
    return 0


# --- the benchmark's side ---------------------------------------------------------------


async def measure_relay(
    children: Children, workdir: Path, script: str, connections: int, frame: str, seconds: float
) -> dict[str, Any]:
    """Run the bare relay for ``seconds``: ``frame`` sent back and forth over ``connections``
    sockets. Both children are stopped before it returns (and by ``children`` if it raises).

    Args:
        children: where the two workers are recorded.
        workdir: where their logs and the clients' spec go.
        script: a script that runs :func:`serve_echo` when given ``--relay-server`` and
            :func:`drive_echo` when given ``--relay-clients --spec PATH``.
        connections: client connections, each with one round trip in flight.
        frame: the text message each round trip carries.
        seconds: how long the clients keep going once all are connected.

    Returns:
        The connections, the clients' duration, round trips, frame size, CPU per process
        and what other processes used meanwhile (percent of one core).

    Raises:
        RuntimeError: a child did not start or gave no summary (with its stderr's tail).
    """
    said: dict[str, str] = {}
    server = await children.start_worker(
        "relay server",
        [sys.executable, script, "--relay-server"],
        workdir / "relay-server.log",
        on_line=said.__setitem__,
    )
    await server.wait_ready(30)
    spec = workdir / "relay.json"
    spec.write_text(
        json.dumps({"url": said["listening"], "connections": connections, "frame": frame})
    )
    clients = await children.start_worker(
        "relay clients",
        [sys.executable, script, "--relay-clients", "--spec", str(spec)],
        workdir / "relay-clients.log",
    )
    await clients.wait_ready(60)
    pids = {"server": server.process.pid, "clients": clients.process.pid}
    cpu_before, window_start = cpu_sample(pids), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu_after, window_end = cpu_sample(pids), time.perf_counter()
    summary = await clients.finish()
    await server.finish()
    if "round_trips" not in summary:
        raise RuntimeError(
            f"the relay clients gave no summary; stderr tail:\n{log_tail(clients.log)}"
        )
    cpu, other_load = cpu_used(
        cpu_before, cpu_after, window_end - window_start, ("server", "clients", "driver")
    )
    return {
        "connections": connections,
        "seconds": round(summary["seconds"], 3),
        "round_trips": summary["round_trips"],
        "frame_bytes": summary["frame_bytes"],
        "cpu": cpu,
        "other_processes_cpu_percent": other_load,
    }


def compare_with_relay(tasks_per_s: float | None, relay: dict[str, Any] | None) -> dict[str, Any]:
    """The relay's details and rate, the task rate it could carry and the hub's share of
    that (None without a relay run, the share None without a task rate)."""
    if relay is None:
        rate = ceiling = ratio = None
    else:
        rate = relay["round_trips"] / max(relay["seconds"], 1e-9)
        ceiling = rate / ROUND_TRIPS_PER_TASK
        ratio = round(tasks_per_s / ceiling, 3) if ceiling and tasks_per_s is not None else None
    return {
        "relay": relay,
        "relay_round_trips_per_s": None if rate is None else round(rate, 1),
        "relay_ceiling_tasks_per_s": None if ceiling is None else round(ceiling, 1),
        "hub_to_relay_ratio": ratio,
    }
