"""Sidecars in a process of their own, for tests that kill them or their hub.

Not a test module. Tests use :class:`SidecarProcess`; the process it starts is this file
run as a script, with one JSON argument:

- ``url``: the hub's agent endpoint;
- ``agents``: a list of ``{"agent_id", "token", "capabilities"}``: one
  :class:`~agentcom.client.AgentClient` each, all in one event loop, each kept connected
  by ``AgentClient.run`` (reconnect with backoff);
- ``mode``: ``"hold"`` accepts every task and never finishes it (a sidecar to kill
  mid-task); ``"complete"`` accepts every task and completes it at once;
- ``backoff_initial_s``, ``backoff_max_s``: the reconnect delays.

Every event is one JSON line on stdout, flushed at once, so a test can await it:

- ``connected``: ``agent``, ``connection`` (1 for the first, 2 after one reconnect ...);
- ``accepted``: ``agent``, ``task_id``, ``generation`` (the hub acknowledged task_accepted);
- ``completed``: ``agent``, ``task_id``, ``generation``, ``connection`` (the hub
  acknowledged task_complete);
- ``refused``: ``agent``, ``task_id``, ``error`` (the hub refused a frame for the task).

Completions are delivered at least once: one whose acknowledgement had not arrived when
the connection dropped is sent again, with the generation it was assigned under, as soon
as the agent has identified on its next connection.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from hubprocess import LineReader, clean_env, stop_process

from agentcom.client import AgentClient

__all__ = ["Mode", "SidecarProcess"]

Frame = dict[str, Any]
Mode = Literal["hold", "complete"]


def emit(event: str, **fields: Any) -> None:
    """Write one event line and flush it."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


class Sidecar(AgentClient):
    """An agent that accepts every task and, in ``complete`` mode, completes it."""

    def __init__(self, url: str, agent: Mapping[str, Any], mode: Mode, **options: Any) -> None:
        super().__init__(
            url, agent["agent_id"], agent["token"], capabilities=agent["capabilities"],
            heartbeat_s=None, **options,
        )  # fmt: skip
        self.mode = mode
        self.connections = 0
        self.unacknowledged: dict[str, int] = {}  # task id -> generation of a sent completion

    async def connect(self, timeout: float = 10.0) -> Frame:
        """Identify, then send again every completion the last connection left unacknowledged."""
        reply = await super().connect(timeout)
        self.connections += 1
        emit("connected", agent=self.agent_id, connection=self.connections)
        for task_id, generation in list(self.unacknowledged.items()):
            await self.send(self.completion(task_id, generation))
        return reply

    def completion(self, task_id: str, generation: int) -> Frame:
        """The ``task_complete`` of one attempt."""
        result = {"status": "success", "output": f"done by {self.agent_id}"}
        return {"type": "task_complete", "task_id": task_id, "generation": generation,
                "result": result}  # fmt: skip

    async def on_frame(self, frame: Frame) -> None:
        """Run assigned tasks; report the hub's answers."""
        kind = frame.get("type")
        if kind == "task_assign":
            task_id, generation = frame["task_id"], frame["generation"]
            await self.send({"type": "task_accepted", "task_id": task_id})
            if self.mode == "complete":
                self.unacknowledged[task_id] = generation
                await self.send(self.completion(task_id, generation))
        elif kind == "task_ack":
            self.on_ack(frame)
        elif kind == "error" and frame.get("task_id"):
            self.unacknowledged.pop(frame["task_id"], None)
            emit("refused", agent=self.agent_id, task_id=frame["task_id"], error=frame["error"])

    def on_ack(self, ack: Frame) -> None:
        task_id, generation = ack["task_id"], ack.get("generation")
        if ack["status"] == "accepted":
            emit("accepted", agent=self.agent_id, task_id=task_id, generation=generation)
        elif ack["status"] == "complete":
            self.unacknowledged.pop(task_id, None)
            emit("completed", agent=self.agent_id, task_id=task_id, generation=generation,
                 connection=self.connections)  # fmt: skip


async def run_sidecars(config: Mapping[str, Any]) -> None:
    """Run every configured agent until the process is killed."""
    options = {key: config[key] for key in ("backoff_initial_s", "backoff_max_s") if key in config}
    sidecars = [
        Sidecar(config["url"], agent, config["mode"], **options) for agent in config["agents"]
    ]

    async def handle(client: AgentClient, frame: Frame) -> None:
        assert isinstance(client, Sidecar)
        await client.on_frame(frame)

    await asyncio.gather(*(sidecar.run(handle) for sidecar in sidecars))


class SidecarProcess:
    """This file run as a script: sidecars in their own process, with their events.

    Args:
        url: the hub's agent endpoint.
        agents: ``(agent_id, token)`` pairs.
        capabilities: what every agent can do.
        mode: ``"hold"`` or ``"complete"`` (module docstring).
        directory: where the process's stderr goes (a file: it can never fill a pipe).
        backoff_initial_s: first reconnect delay, doubled per failed attempt.
        backoff_max_s: the delay never exceeds this.
    """

    def __init__(
        self,
        url: str,
        agents: Sequence[tuple[str, str]],
        capabilities: Sequence[str],
        mode: Mode,
        directory: Path,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 0.5,
    ) -> None:
        self.config = {
            "url": url,
            "agents": [
                {"agent_id": agent_id, "token": token, "capabilities": list(capabilities)}
                for agent_id, token in agents
            ],
            "mode": mode,
            "backoff_initial_s": backoff_initial_s,
            "backoff_max_s": backoff_max_s,
        }
        self.directory = directory
        self.process: subprocess.Popen[str] | None = None
        self.events: LineReader | None = None

    def __enter__(self) -> SidecarProcess:
        with (self.directory / f"sidecars-{os.getpid()}-{id(self)}.log").open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, __file__, json.dumps(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=clean_env(),
            )
        assert self.process.stdout is not None
        self.events = LineReader(self.process.stdout)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def next_event(self, timeout: float = 10.0) -> Frame:
        """The next event (TimeoutError; EOFError once the process has exited)."""
        assert self.events is not None
        event: Frame = json.loads(await self.events.next_line_async(timeout))
        return event

    async def wait_for(self, event: str, timeout: float = 10.0, **fields: Any) -> Frame:
        """The next ``event`` whose fields include ``fields``; other events are skipped.

        Raises TimeoutError after ``timeout`` s. The deadline is left to the reading thread
        rather than imposed by cancelling the wait, so no line is ever lost.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = await self.next_event(max(0.0, deadline - time.monotonic()))
            if found["event"] == event and fields.items() <= found.items():
                return found

    def kill(self) -> None:
        """SIGKILL: the sidecars die mid-whatever, and the kernel closes their sockets."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if that is not enough; reap the process."""
        if self.process is None:
            return
        stop_process(self.process)
        if self.events is not None:
            self.events.join()


if __name__ == "__main__":
    asyncio.run(run_sidecars(json.loads(sys.argv[1])))
