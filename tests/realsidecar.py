"""``agentcom sidecar`` in a process of its own, and helpers to watch what it does.

Not a test module; test modules import it. :class:`RealSidecar` starts the real command
(JSON log lines on stderr, read by a thread) and is stopped by the test that started it
(SIGTERM, then SIGKILL). :func:`process_gone` waits for another process to end through a
pidfd, without polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from conftest import TokenMaker
from hubprocess import CLI, STOP_TIMEOUT_S, LineReader, clean_env

from agentcom.client import OperatorClient

__all__ = [
    "RealSidecar", "SidecarMaker", "Streamed", "make_sidecar", "process_gone", "watch_pid",
]  # fmt: skip


class RealSidecar:
    """``agentcom sidecar`` against ``hub_url`` with a state directory and work directory
    under ``directory``.

    Args:
        directory: holds ``state/`` and ``work/`` (created), and the config file.
        hub_url: the hub's agent endpoint.
        agent_id: the agent.
        token: its token.
        settings: more settings, written to a TOML file passed with ``--config``.
        args: more command-line arguments.
        env: more environment variables.
    """

    def __init__(
        self,
        directory: Path,
        hub_url: str,
        agent_id: str,
        token: str,
        settings: dict[str, Any] | None = None,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.state_dir = directory / "state"
        self.workdir = directory / "work"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_file = directory / "sidecar.toml"
        lines = [f"{key} = {json.dumps(value)}" for key, value in (settings or {}).items()]
        self.config_file.write_text("\n".join(lines) + "\n")
        self.command = [
            *CLI, "sidecar", "--hub", hub_url, "--agent-id", agent_id, "--token", token,
            "--state-dir", str(self.state_dir), "--workdir", str(self.workdir),
            "--config", str(self.config_file), "--log-format", "json", *args,
        ]  # fmt: skip
        self.env = clean_env(env)
        self.process: subprocess.Popen[str] | None = None
        self.stderr: LineReader | None = None
        self.events: list[dict[str, Any]] = []

    def start(self) -> RealSidecar:
        """Start the process (events are read from its stderr)."""
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        assert self.process.stderr is not None
        self.stderr = LineReader(self.process.stderr)
        return self

    def __enter__(self) -> RealSidecar:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def event(self, name: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        """The next log line whose ``event`` is ``name`` (and whose fields match ``fields``).

        Raises TimeoutError when none comes within ``timeout`` s, EOFError when the
        process ends first.
        """
        assert self.stderr is not None
        deadline = time.monotonic() + timeout
        while True:
            line = await self.stderr.next_line_async(max(0.0, deadline - time.monotonic()))
            try:
                record = json.loads(line)
            except ValueError:
                continue
            self.events.append(record)
            if record.get("event") == name and all(record.get(k) == v for k, v in fields.items()):
                return record

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the sidecar."""
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """Its exit status, once it has exited by itself."""
        assert self.process is not None
        return await asyncio.to_thread(self.process.wait, timeout)

    def kill(self) -> None:
        """SIGKILL (a crash) and reap."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self._join()

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL; returns the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._join()
        return self.process.returncode

    async def close(self) -> None:
        """:meth:`stop` in a thread (for the ``closing`` fixture: the hub may run in the
        test's event loop and must answer the sidecar's close)."""
        await asyncio.to_thread(self.stop)

    def _join(self) -> None:
        if self.stderr is not None:
            self.stderr.join()

    def log(self) -> list[str]:
        """The stderr lines read so far."""
        return self.stderr.seen if self.stderr is not None else []


def watch_pid(pid: int) -> int:
    """A pidfd for ``pid`` (it becomes readable when the process ends); close it after."""
    return os.pidfd_open(pid)


async def process_gone(pidfd: int, timeout: float = 10.0) -> bool:
    """True once the process behind ``pidfd`` has ended; False after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    ended = loop.create_future()
    loop.add_reader(pidfd, lambda: ended.done() or ended.set_result(True))
    try:
        return await asyncio.wait_for(ended, timeout)
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(pidfd)


SidecarMaker = Callable[..., RealSidecar]


@pytest.fixture
async def make_sidecar(
    tmp_path: Path, ws_url: str, make_token: TokenMaker
) -> AsyncIterator[SidecarMaker]:
    """Start sidecars (agent ``box-1`` unless told); all are stopped at the end."""
    started: list[RealSidecar] = []
    tokens: dict[str, str] = {}

    def make(agent_id: str = "box-1", **options: Any) -> RealSidecar:
        if agent_id not in tokens:
            tokens[agent_id] = make_token(agent_id)
        token = tokens[agent_id]
        sidecar = RealSidecar(tmp_path, ws_url, agent_id, token, **options).start()
        started.append(sidecar)
        return sidecar

    yield make
    for sidecar in started:  # in a thread: the hub runs in this event loop
        await asyncio.to_thread(sidecar.stop)
        # Shown by pytest when the test failed: what the sidecar did.
        print("\n".join(sidecar.log() + (sidecar.stderr.rest() if sidecar.stderr else [])))


class Streamed:
    """The execution events the hub publishes for one task, collected in the background."""

    def __init__(self, operator: OperatorClient, task_id: str | None = None) -> None:
        self.task_id = task_id
        self.events: list[dict[str, Any]] = []
        self._arrived = asyncio.Condition()
        self._watch = operator.watch(["tasks"])
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Streamed:
        await anext(self._watch)  # the snapshot: from here on, every event is seen
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._reader is not None
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._watch.aclose()

    async def _read(self) -> None:
        async for frame in self._watch:
            if frame.get("event") == "execution_progress" and frame["task_id"] == self.task_id:
                async with self._arrived:
                    self.events.append(frame["execution_event"])
                    self._arrived.notify_all()

    async def text_matching(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """The first match of ``pattern`` in the streamed text, once it has arrived."""
        async with asyncio.timeout(timeout), self._arrived:
            while True:
                text = "".join(event["text"] for event in self.events)
                match = re.search(pattern, text)
                if match:
                    return match
                await self._arrived.wait()

    def accounted_chars(self) -> int:
        """Characters streamed plus those the sidecar said it left out."""
        return sum(len(event["text"]) + event.get("dropped_chars", 0) for event in self.events)

    async def all_accounted(self, total: int, timeout: float = 10.0) -> None:
        """Wait until the events account for ``total`` characters of output."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: self.accounted_chars() >= total)
