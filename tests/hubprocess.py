"""The real ``agentcom`` command in subprocesses: a hub on a free port, and CLI calls.

Not a test module; test modules import it. Every process started here is stopped by
whoever started it: :class:`HubProcess` and :class:`CliProcess` are context managers
that send SIGTERM on exit and SIGKILL when that is not enough.

Waiting is done by reading pipes with a timeout (a reader thread per pipe feeds a
queue), never by sleeping.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, NamedTuple

from agentcom.hub.auth import hash_token, new_token
from agentcom.store.tokens import save_token

__all__ = [
    "CLI",
    "HUB_TEST_ENV",
    "CliProcess",
    "CliResult",
    "HubProcess",
    "LineReader",
    "clean_env",
    "closed_port",
    "run_cli",
    "run_cli_async",
    "running_hub",
    "start_hub",
    "stop_process",
]

CLI = [sys.executable, "-m", "agentcom.cli"]
"""How to run the command in whatever virtualenv runs the tests."""

LISTENING = re.compile(r"^agentcom \S+ hub on (?P<scheme>wss?)://(?P<host>\S+):(?P<port>\d+)/ws$")
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
CLI_TIMEOUT_S = 30.0

HUB_TEST_ENV = {"AGENTCOM_FALLBACK_WAIT_S": "0"}
"""Set for every hub started here: no Ollama runs in tests, so standard tasks fall back at once."""


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment without ``AGENTCOM_*`` variables, plus ``extra``.

    The developer's own ``AGENTCOM_HUB`` / ``AGENTCOM_TOKEN`` / ``AGENTCOM_DB`` must never
    leak into a test.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("AGENTCOM_")}
    env.update(extra or {})
    return env


class LineReader:
    """The lines of a text pipe, read by a daemon thread so callers can wait with a timeout.

    Args:
        stream: the pipe; the thread ends when it reaches end of file.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._seen: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        try:
            with stream:
                for line in stream:
                    self._lines.put(line.rstrip("\n"))
        except (OSError, ValueError):  # the pipe broke under us: treat it as the end
            pass
        finally:
            self._lines.put(None)

    def join(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Wait for the thread (it ends, closing the pipe, once the writer has exited)."""
        self._thread.join(timeout)

    def next_line(self, timeout: float) -> str:
        """The next line; raises TimeoutError after ``timeout`` s, EOFError at end of stream."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no line within {timeout} s (so far: {self._seen!r})") from None
        if line is None:
            self._lines.put(None)  # every later call sees the end too
            raise EOFError(f"stream ended (lines: {self._seen!r})")
        self._seen.append(line)
        return line

    @property
    def seen(self) -> list[str]:
        """The lines returned so far."""
        return list(self._seen)

    async def next_line_async(self, timeout: float) -> str:
        """:meth:`next_line` without blocking the event loop."""
        return await asyncio.to_thread(self.next_line, timeout)

    def rest(self, timeout: float = STOP_TIMEOUT_S) -> list[str]:
        """Every remaining line up to end of file (call once the process has exited)."""
        lines = []
        while True:
            try:
                lines.append(self.next_line(timeout))
            except EOFError:
                return lines


def stop_process(process: subprocess.Popen[str], timeout: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM, then SIGKILL if the process is still there after ``timeout`` s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


class HubProcess:
    """``agentcom serve`` on a free loopback port, with its database in ``directory``.

    Args:
        directory: a temporary directory for the database and the hub's log.
        db: the SQLite file (default ``directory / "hub.db"``) or a PostgreSQL URL; pass
            the same one to a second instance to restart a hub on the same state.
        env: extra environment variables (``AGENTCOM_DISCONNECT_GRACE_S`` ...), on top of
            :data:`HUB_TEST_ENV`.
        port: the port to listen on; 0 (the default) picks a free one. Pass the port of a
            hub that was killed to restart it where its clients reconnect.
        serve_args: more ``agentcom serve`` flags (``--certfile C --keyfile K`` serves TLS:
            the URLs below then say ``wss://`` and ``https://``).
        log_pipe: send the log to a pipe read line by line (:meth:`await_log`) instead of a
            file, for a test that makes the hub's file writes fail.
        open_files: the hub's ``(soft, hard)`` open-file limit (``ulimit -n``), set in the
            child before it starts; None keeps the test's own.
    """

    def __init__(
        self,
        directory: Path,
        db: Path | str | None = None,
        env: Mapping[str, str] | None = None,
        port: int = 0,
        serve_args: Sequence[str] = (),
        log_pipe: bool = False,
        open_files: tuple[int, int] | None = None,
    ) -> None:
        self.directory = directory
        self.log_pipe = log_pipe
        self.open_files = open_files
        self.db: Path | str = db or directory / "hub.db"
        self.requested_port = port
        self.serve_args = list(serve_args)
        self.scheme = "ws"  # what the hub announced: "wss" when it serves TLS
        # Tasks without a reachable Ollama endpoint fall back at once unless a test says so.
        self.env = clean_env({**HUB_TEST_ENV, **(env or {})})
        self.process: subprocess.Popen[str] | None = None
        self.port: int | None = None
        self.log_path: Path | None = None
        self.stdout: LineReader | None = None
        self.stderr: LineReader | None = None

    def __enter__(self) -> HubProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def http_url(self) -> str:
        """Base URL for operator commands (``--hub``)."""
        return f"{'https' if self.scheme == 'wss' else 'http'}://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """The agent endpoint."""
        return f"{self.scheme}://127.0.0.1:{self.port}/ws"

    def start(self, timeout: float = START_TIMEOUT_S) -> HubProcess:
        """Start the hub and return once it printed its listening line.

        Raises RuntimeError (with the hub's log) when it exits or stays silent.
        """
        if self.log_pipe:
            handle = subprocess.PIPE
        else:
            handle, log_name = tempfile.mkstemp(prefix="hub-", suffix=".log", dir=self.directory)
            self.log_path = Path(log_name)
        port = str(self.requested_port)
        command = [*CLI, "serve", "--host", "127.0.0.1", "--port", port, "--db", str(self.db)]
        command += self.serve_args
        try:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                # A file, or a pipe drained by a thread: a chatty log never stalls the hub.
                stderr=handle,
                text=True,
                env=self.env,
                cwd=self.directory,
                preexec_fn=self._limit_open_files if self.open_files else None,
            )
        finally:
            if not self.log_pipe:
                os.close(handle)
        assert self.process.stdout is not None
        self.stdout = LineReader(self.process.stdout)
        if self.process.stderr is not None:
            self.stderr = LineReader(self.process.stderr)
        try:
            self.port = self._await_port(timeout)
        except (TimeoutError, EOFError) as exc:
            self.kill()
            raise RuntimeError(f"the hub did not start: {exc}\n{self.log()}") from None
        return self

    def _limit_open_files(self) -> None:
        """In the child, before the hub runs: its open-file limit."""
        assert self.open_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, self.open_files)

    @property
    def pid(self) -> int:
        """The hub's process id."""
        assert self.process is not None
        return self.process.pid

    def memory(self) -> tuple[int, int]:
        """The hub's resident memory now and at its peak (``VmRSS``, ``VmHWM``), in bytes."""
        fields = {}
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                fields[name] = value
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024

    def _await_port(self, timeout: float) -> int:
        assert self.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            line = self.stdout.next_line(max(0.0, deadline - time.monotonic()))
            match = LISTENING.match(line)
            if match:
                self.scheme = match["scheme"]
                return int(match["port"])

    def log(self) -> str:
        """What the hub wrote to stderr so far (with ``log_pipe``: the lines read so far)."""
        if self.stderr is not None:
            return "\n".join(self.stderr.seen)
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    async def await_log(self, pattern: str, timeout: float = 10.0) -> str:
        """The next log line matching the regular expression ``pattern`` (needs ``log_pipe``).

        Raises TimeoutError when none arrives within ``timeout`` s.
        """
        assert self.stderr is not None, "start the hub with log_pipe=True"
        deadline = time.monotonic() + timeout
        while True:
            line = await self.stderr.next_line_async(max(0.0, deadline - time.monotonic()))
            if re.search(pattern, line):
                return line

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM and wait; SIGKILL after ``timeout`` s. Returns the exit code."""
        if self.process is None:
            return None
        code = stop_process(self.process, timeout)
        self._join_readers()
        return code

    def kill(self) -> int | None:
        """SIGKILL (a crash: no cleanup at all) and reap. Returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._join_readers()
        return self.process.returncode

    def _join_readers(self) -> None:
        for reader in (self.stdout, self.stderr):
            if reader is not None:
                reader.join()

    def make_token(self, agent_id: str, role: str = "agent") -> str:
        """A token written straight to the database, as ``agentcom token create`` does."""
        token = new_token()
        save_token(self.db, agent_id, hash_token(token), role)
        return token

    def operator_args(self, token: str) -> list[str]:
        """``--hub URL --token T`` for an operator command against this hub."""
        return ["--hub", self.http_url, "--token", token]


@contextmanager
def running_hub(
    directory: Path, db: Path | None = None, env: Mapping[str, str] | None = None
) -> Iterator[HubProcess]:
    """A started :class:`HubProcess`, always stopped at the end (the pytest fixture body)."""
    hub = HubProcess(directory, db=db, env=env)
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()


class CliResult(NamedTuple):
    """What one run of the command produced."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = CLI_TIMEOUT_S,
    input: str | None = None,
) -> CliResult:
    """Run ``agentcom ARGS`` to completion, ``input`` on its stdin (default: none); the
    process is killed if it outlives ``timeout``."""
    completed = subprocess.run(
        [*CLI, *args],
        stdin=subprocess.DEVNULL if input is None else None,
        input=input,
        capture_output=True,
        text=True,
        env=clean_env(env),
        timeout=timeout,
        check=False,
    )
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


async def run_cli_async(
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = CLI_TIMEOUT_S,
    input: str | None = None,
) -> CliResult:
    """:func:`run_cli` in a thread, so the test's own clients keep running meanwhile."""
    return await asyncio.to_thread(run_cli, *args, env=env, timeout=timeout, input=input)


class CliProcess:
    """A long-running command (``agentcom watch``) whose stdout is read line by line.

    Args:
        args: the command's arguments.
        env: extra environment variables.
    """

    def __init__(self, *args: str, env: Mapping[str, str] | None = None) -> None:
        self.args = args
        # Tasks without a reachable Ollama endpoint fall back at once unless a test says so.
        self.env = clean_env(env)
        self.process: subprocess.Popen[str] | None = None
        self.stdout: LineReader | None = None
        self.stderr: LineReader | None = None

    def __enter__(self) -> CliProcess:
        self.process = subprocess.Popen(
            [*CLI, *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self.stdout = LineReader(self.process.stdout)
        self.stderr = LineReader(self.process.stderr)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def next_line(self, timeout: float = 10.0) -> str:
        """The next line on stdout (TimeoutError, EOFError)."""
        assert self.stdout is not None
        return await self.stdout.next_line_async(timeout)

    async def finish(self, timeout: float = CLI_TIMEOUT_S) -> CliResult:
        """Wait for the command to exit by itself; its exit code and the output not yet read.

        Raises subprocess.TimeoutExpired when it is still running after ``timeout`` s.
        """
        process, stdout, stderr = self.process, self.stdout, self.stderr
        assert process is not None and stdout is not None and stderr is not None

        def collect() -> CliResult:
            code = process.wait(timeout)
            out = "".join(f"{line}\n" for line in stdout.rest())
            err = "".join(f"{line}\n" for line in stderr.rest())
            return CliResult(code, out, err)

        return await asyncio.to_thread(collect)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL; returns the exit code."""
        if self.process is None:
            return None
        code = stop_process(self.process, timeout)
        for reader in (self.stdout, self.stderr):
            if reader is not None:
                reader.join()
        return code


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def start_hub(hubs: list[HubProcess], directory: Path, port: int = 0, **env: str) -> HubProcess:
    """A new hub process on ``directory / "hub.db"``, added to ``hubs`` for teardown."""
    hub = HubProcess(directory, env=env, port=port)
    hubs.append(hub)
    return hub.start()
