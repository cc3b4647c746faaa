"""The ``sidecar`` executor: ``metadata.shell_command`` in the platform shell.

The command runs in the configured work directory, in a process group of its own (a new
session), so that a timeout, a cancel or a restart after a crash kills it and everything
it started. Standard output and error are streamed line by line (coalesced by the
:class:`~agentcom.sidecar.progress.ProgressStream`); the end of the output is kept for the
result. Exit status 0 is success; anything else, or a timeout, is a failed run carrying
the exit code and the output's tail. The command inherits the sidecar's environment but
for its secrets (:data:`SECRETS`). A task without a shell command fails at once: its
description is prose and is never run.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import signal
import subprocess
from collections import deque
from collections.abc import Mapping

from agentcom.sidecar.job import ExecutorFailed, Job, Outcome
from agentcom.sidecar.state import kill_process_group

__all__ = ["NO_COMMAND", "SECRETS", "OutputTail", "run_command", "run_shell"]

NO_COMMAND = (
    "no shell command: a task routed to the sidecar runs metadata.shell_command, "
    "and its description is never run as a command"
)
SECRETS = frozenset({"AGENTCOM_AGENT_TOKEN", "ANTHROPIC_API_KEY"})
"""Variables of the sidecar's environment a command never sees: whoever may submit a task
must not be able to read the agent's token or the API key."""
_CHUNK = 65536
_DRAIN_AFTER_KILL_S = 2.0  # a grandchild that left the group may hold the pipes open


class OutputTail:
    """The last ``limit`` characters of a stream of text."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parts: deque[str] = deque()
        self._size = 0

    def add(self, text: str) -> None:
        """Append ``text``, dropping the oldest text beyond the limit."""
        self._parts.append(text)
        self._size += len(text)
        while self._size - len(self._parts[0]) >= self.limit:
            self._size -= len(self._parts.popleft())

    def text(self) -> str:
        """The tail."""
        return "".join(self._parts)[-self.limit :]


async def _pump(stream: asyncio.StreamReader, event_type: str, job: Job, tail: OutputTail) -> None:
    """Forward ``stream`` line by line (a line longer than the event limit is split)."""
    partial = ""
    limit = job.config.max_event_chars
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # chunks split characters
    while chunk := await stream.read(_CHUNK):
        partial += decoder.decode(chunk)
        *lines, partial = partial.split("\n")
        for line in lines:
            job.progress.emit(event_type, line + "\n")
            tail.add(line + "\n")
        while len(partial) >= limit:
            job.progress.emit(event_type, partial[:limit])
            tail.add(partial[:limit])
            partial = partial[limit:]
    partial += decoder.decode(b"", final=True)
    if partial:
        job.progress.emit(event_type, partial)
        tail.add(partial)


async def _start(
    command: str, job: Job, env: Mapping[str, str] | None
) -> asyncio.subprocess.Process:
    inherited = {name: value for name, value in os.environ.items() if name not in SECRETS}
    options: dict[str, object] = {"env": {**inherited, **(env or {})}}
    if os.name == "posix":
        options["start_new_session"] = True
    else:  # pragma: no cover - Windows: a process group that CTRL_BREAK can reach
        options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
    try:
        return await asyncio.create_subprocess_shell(
            command,
            cwd=job.config.workdir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            **options,  # type: ignore[arg-type]
        )
    except OSError as exc:
        raise ExecutorFailed(f"cannot start the shell in {job.config.workdir}: {exc}") from None


def _kill(process: asyncio.subprocess.Process) -> None:
    if os.name == "posix":
        kill_process_group(process.pid)
    else:  # pragma: no cover
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)


async def run_shell(job: Job) -> Outcome:
    """Run the job's shell command to its outcome (see the module docstring)."""
    command = job.assignment.shell_command
    if command is None:
        raise ExecutorFailed(NO_COMMAND)
    return await run_command(job, command)


async def run_command(job: Job, command: str, env: Mapping[str, str] | None = None) -> Outcome:
    """Run ``command`` for ``job`` (with ``env`` added to the environment) to its outcome."""
    process = await _start(command, job, env)
    job.record_process(process.pid)
    assert process.stdout is not None and process.stderr is not None
    tail = OutputTail(job.config.output_tail_chars)
    pumps = asyncio.gather(
        _pump(process.stdout, "stdout", job, tail), _pump(process.stderr, "stderr", job, tail)
    )
    timed_out = False
    try:
        async with asyncio.timeout(job.timeout_s):
            await pumps
            code = await process.wait()
    except TimeoutError:
        timed_out = True
    finally:
        if process.returncode is None:
            _kill(process)
            code = await process.wait()
        if not pumps.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_DRAIN_AFTER_KILL_S):
                    await pumps
    output = tail.text()
    if timed_out:
        error = f"timed out after {job.timeout_s:g} s (process group killed)"
        return Outcome("failed", output, error, extra={"exit_code": code, "timed_out": True})
    if code != 0:
        last = output.strip().splitlines()[-1:] or ["no output"]
        error = f"exit code {code}: {last[0][:500]}"
        return Outcome("failed", output, error, extra={"exit_code": code})
    return Outcome("success", output, extra={"exit_code": 0})
