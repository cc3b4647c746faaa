"""Pieces the benchmarks share: child processes, the hub, tokens, simulated sidecars and
figures read from ``/proc``.

A benchmark runs the hub and its load generators as child processes. A load generator
("worker") follows one convention on stdout: ``ready`` once it is connected, ``tally
{json}`` with its cumulative counters as often as it likes, ``failed: ...`` when it
cannot start, and ``summary {json}`` last; the end of its stdin (or SIGTERM/SIGINT)
asks it to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agentcom.client import AgentClient, OperatorClient
from agentcom.hub.auth import hash_token, new_token
from agentcom.store.tokens import save_token

__all__ = [
    "HUB_OPERATOR_CAP",
    "LISTENING",
    "BenchSidecar",
    "Children",
    "Hub",
    "SidecarTally",
    "Worker",
    "cpu_sample",
    "cpu_seconds",
    "cpu_used",
    "die_with_parent",
    "hub_metrics",
    "hubs_cpu_sample",
    "latency_summary",
    "log_tail",
    "machine_busy_seconds",
    "make_token",
    "make_tokens",
    "memory_mib",
    "percentile",
    "print_tallies",
    "read_marker",
    "run_sidecars",
    "run_until_signalled",
    "source_revision",
    "spread",
    "stop_on_signal_or_eof",
    "stop_process",
    "thread_cpu_seconds",
    "wait_for_idle_agents",
]

LISTENING = re.compile(r"hub on ws://(?P<host>[^\s:]+):(?P<port>\d+)/ws")
HUB_OPERATOR_CAP = 32  # requests the hub serves at once per operator connection

Result = TypeVar("Result")
Item = TypeVar("Item")
OnFrame = Callable[[AgentClient, dict[str, Any]], Awaitable[None]]


# --- figures -----------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of ``values`` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_summary(values: list[float]) -> dict[str, float | int | None]:
    """Count, p50, p99 and max of latencies in seconds, reported in milliseconds."""

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 2)

    return {
        "n": len(values),
        "p50_ms": ms(percentile(values, 50)),
        "p99_ms": ms(percentile(values, 99)),
        "max_ms": ms(max(values, default=None)),
    }


def proc_status(pid: int) -> dict[str, str]:
    """``/proc/<pid>/status`` as a dict (empty when unreadable)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {
        key: value.strip() for key, _, value in (line.partition(":") for line in text.splitlines())
    }


def memory_mib(pid: int, key: str) -> float | None:
    """A ``VmHWM``/``VmRSS`` figure of a live process in MiB."""
    value = proc_status(pid).get(key)
    return round(int(value.split()[0]) / 1024, 1) if value else None


def cpu_seconds_of(stat_path: Path) -> float | None:
    """User plus system CPU time recorded in a ``/proc/.../stat`` file."""
    try:
        stat = stat_path.read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time a process has used so far."""
    return cpu_seconds_of(Path(f"/proc/{pid}/stat"))


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU time of a process's event-loop (main) thread and of all its other threads."""
    split = {"loop_thread": 0.0, "other_threads": 0.0}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            seconds = cpu_seconds_of(task / "stat")
            if seconds is not None:
                split["loop_thread" if task.name == str(pid) else "other_threads"] += seconds
    return split


def machine_busy_seconds() -> float | None:
    """CPU time every process on the machine has used (all cores, from ``/proc/stat``)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cpu_sample(pids: dict[str, int]) -> dict[str, float | None]:
    """CPU seconds so far of each named child, of this process (``driver``) and of the
    whole machine (``machine``)."""
    sample = {name: cpu_seconds(pid) for name, pid in pids.items()}
    sample["driver"] = time.process_time()
    sample["machine"] = machine_busy_seconds()
    return sample


def hubs_cpu_sample(hub_pids: dict[str, int], others: dict[str, int]) -> dict[str, float | None]:
    """:func:`cpu_sample` of ``others`` and of hub nodes (``hub_pids``, by node name):
    ``hub`` is the nodes' total (None unless each was read), ``hub_loop_thread`` and
    ``hub_other_threads`` their event-loop and other threads' totals, and with several
    nodes each node's own figure is under ``hub_<name>`` too."""
    own = {name: cpu_seconds(pid) for name, pid in hub_pids.items()}
    found = [seconds for seconds in own.values() if seconds is not None]
    sample: dict[str, float | None] = {"hub": sum(found) if len(found) == len(own) else None}
    threads = [thread_cpu_seconds(pid) for pid in hub_pids.values()]
    for part in ("loop_thread", "other_threads"):
        sample[f"hub_{part}"] = sum(split[part] for split in threads)
    if len(own) > 1:
        sample.update({f"hub_{name}": seconds for name, seconds in own.items()})
    return {**sample, **cpu_sample(others)}


def cpu_used(
    before: dict[str, float | None],
    after: dict[str, float | None],
    wall_s: float,
    processes: tuple[str, ...],
) -> tuple[dict[str, dict[str, float]], float | None]:
    """CPU each entry of two samples used over ``wall_s`` (seconds and percent of one core),
    and the percent of one core the machine spent beyond ``processes`` (None if unknown)."""
    cpu = {}
    for name, start in before.items():
        end = after.get(name)
        if start is not None and end is not None:
            cpu[name] = {
                "seconds": round(end - start, 2),
                "percent_of_one_core": round(100 * (end - start) / wall_s, 1),
            }
    machine = cpu.pop("machine", None)
    if machine is None:
        return cpu, None
    ours = sum(cpu[name]["seconds"] for name in processes if name in cpu)
    return cpu, round(100 * max(0.0, machine["seconds"] - ours) / wall_s, 1)


def source_revision() -> str | None:
    """The git revision of the agentcom sources being measured, ``+dirty`` when edited."""
    import agentcom

    package = Path(agentcom.__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(package), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(package), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def hub_metrics(base_url: str) -> dict[str, float]:
    """The hub's ``/metrics`` counters (empty on failure)."""
    try:
        with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    found: dict[str, float] = {}
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample and not sample.startswith("#"):
            name = sample.partition("{")[0]  # labelled samples add up under their name
            with contextlib.suppress(ValueError):
                found[name] = found.get(name, 0.0) + float(value)
    return found


def spread(items: Sequence[Item], parts: int) -> list[list[Item]]:
    """``items`` dealt round-robin into ``parts`` lists, item ``i`` into list ``i % parts``:
    how :func:`run_sidecars` spreads its agents over several hub nodes."""
    return [list(items[part::parts]) for part in range(parts)]


# --- tokens ------------------------------------------------------------------------------


def make_token(db: Path | str, agent_id: str, role: str) -> str:
    """A new token for ``agent_id`` with ``role``, written to ``db`` (a SQLite file or a
    PostgreSQL URL, whose tables it creates when missing) as the CLI does."""
    token = new_token()
    save_token(db, agent_id, hash_token(token), role)
    return token


def make_tokens(db: Path | str, agents: int) -> tuple[list[tuple[str, str]], str]:
    """One agent token per sidecar and one admin token, written to ``db``."""
    pairs = [
        (f"bench-agent-{number:03d}", make_token(db, f"bench-agent-{number:03d}", "agent"))
        for number in range(agents)
    ]
    return pairs, make_token(db, "bench-admin", "admin")


# --- child processes (the benchmark's side) ----------------------------------------------


def die_with_parent() -> None:
    """In a forked child before exec: get SIGTERM when the benchmark dies (Linux only)."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


async def stop_process(
    process: asyncio.subprocess.Process, grace_s: float, exit_wait_s: float = 0
) -> None:
    """Wait up to ``exit_wait_s`` for the child to exit by itself, then SIGTERM, wait up to
    ``grace_s``, then SIGKILL."""
    if process.returncode is None and exit_wait_s > 0:
        # Signalling a child that has just exited makes Popen reap it behind asyncio's
        # back (asyncio then reports exit code 255): give it the chance to finish first.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), exit_wait_s)
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


def log_tail(log: Path, chars: int = 2000) -> str:
    """The end of a child's stderr log."""
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


async def read_marker(
    process: asyncio.subprocess.Process,
    name: str,
    pattern: re.Pattern[str],
    timeout_s: float,
    log: Path,
) -> re.Match[str]:
    """The first stdout line of ``process`` matching ``pattern``; raises with the log's tail."""
    assert process.stdout is not None
    try:
        async with asyncio.timeout(timeout_s):
            async for raw in process.stdout:
                found = pattern.search(raw.decode(errors="replace"))
                if found:
                    return found
    except TimeoutError:
        raise RuntimeError(
            f"the {name} did not start within {timeout_s} s; stderr tail:\n{log_tail(log)}"
        ) from None
    # Its stdout ended first: the child is exiting (e.g. a hub refusing the database).
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(process.wait(), 5)
    raise RuntimeError(
        f"the {name} exited (code {process.returncode}) before it started; stderr tail:\n"
        f"{log_tail(log)}"
    )


@dataclass
class Hub:
    """A hub child process and where it listens."""

    process: asyncio.subprocess.Process
    http_url: str
    ws_url: str
    log: Path


class Worker:
    """A load-generating child process following the worker convention (module docstring).

    Args:
        name: how errors name it.
        process: the child, with stdin and stdout piped.
        log: its stderr file.
        on_line: receives every stdout line other than ``ready``/``failed:``/``summary``
            as (first word, rest of the line).
    """

    def __init__(
        self,
        name: str,
        process: asyncio.subprocess.Process,
        log: Path,
        on_line: Callable[[str, str], None] | None = None,
    ) -> None:
        self.name = name
        self.process = process
        self.log = log
        self.on_line = on_line
        self.ready = asyncio.Event()
        self.failure: str | None = None
        self.summary: dict[str, Any] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            word, _, rest = line.partition(" ")
            if word == "ready":
                self.ready.set()
            elif word == "failed:":
                self.failure = rest
            elif word == "summary":
                self.summary = json.loads(rest)
            elif self.on_line is not None:
                self.on_line(word, rest)

    async def wait_ready(self, timeout_s: float) -> None:
        """Until the worker says ``ready``; raises with its stderr tail otherwise."""
        ready = asyncio.create_task(self.ready.wait())
        try:
            await asyncio.wait(
                [ready, self._reader], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            ready.cancel()
        if not self.ready.is_set() or self.failure:
            reason = self.failure or f"not ready within {timeout_s} s"
            raise RuntimeError(f"the {self.name}: {reason}; stderr tail:\n{log_tail(self.log)}")

    async def send_line(self, line: str) -> None:
        """One line to the worker's stdin (ignored once the worker is gone)."""
        if self.process.stdin is None or self.process.stdin.is_closing():
            return
        self.process.stdin.write(line.encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await self.process.stdin.drain()

    async def finish(self, timeout_s: float = 15) -> dict[str, Any]:
        """Close stdin (the stop request), read the summary, make sure the child is gone."""
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._reader), timeout_s)
        await stop_process(self.process, grace_s=5, exit_wait_s=5)
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        return self.summary


class Children:
    """Every child a benchmark started; :meth:`stop_all` ends each one of them."""

    def __init__(self) -> None:
        self.hubs: list[Hub] = []
        self.workers: list[Worker] = []
        self._drains: list[asyncio.Task[None]] = []

    async def spawn(
        self, args: list[str], log: Path, stdin: bool = False, env: dict[str, str] | None = None
    ) -> asyncio.subprocess.Process:
        """Start a child with stdout piped and stderr in ``log``."""
        with log.open("wb") as stderr:
            return await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env=env,
                preexec_fn=die_with_parent,
            )

    def drain_stdout(self, process: asyncio.subprocess.Process) -> None:
        """Read and discard the rest of a child's stdout, so a full pipe never blocks it."""

        async def drain() -> None:
            assert process.stdout is not None
            while await process.stdout.read(65536):
                pass

        self._drains.append(asyncio.create_task(drain()))

    async def start_hub(
        self, command: list[str], log: Path, env: dict[str, str] | None = None, name: str = "hub"
    ) -> Hub:
        """Start a hub (one more, when some run already: the nodes of a cluster) and wait
        for its ``hub on ws://HOST:PORT/ws`` line (30 s at most); ``name`` is how errors
        call it. Raises RuntimeError, with its log's tail, when it exits or stays silent."""
        process = await self.spawn(command, log, env=env)
        hub = Hub(process, "", "", log)
        self.hubs.append(hub)  # stopped by stop_all even if it never says where it listens
        listening = await read_marker(process, name, LISTENING, 30, log)
        self.drain_stdout(process)
        address = f"{listening['host']}:{listening['port']}"
        hub.http_url, hub.ws_url = f"http://{address}", f"ws://{address}/ws"
        return hub

    async def start_worker(
        self,
        name: str,
        args: list[str],
        log: Path,
        on_line: Callable[[str, str], None] | None = None,
    ) -> Worker:
        """Start a worker; wait for it with :meth:`Worker.wait_ready`."""
        worker = Worker(name, await self.spawn(args, log, stdin=True), log, on_line)
        self.workers.append(worker)
        return worker

    async def stop_hubs(self, grace_s: float = 60) -> list[int | None]:
        """SIGTERM every hub at once (SIGKILL after ``grace_s``); their exit codes, in the
        order they were started."""
        hubs, self.hubs = self.hubs, []
        await asyncio.gather(*(stop_process(hub.process, grace_s) for hub in hubs))
        return [hub.process.returncode for hub in hubs]

    async def stop_all(self) -> None:
        """Stop the workers, then the hubs, and stop reading their output."""
        workers, self.workers = self.workers, []
        await asyncio.gather(*(worker.finish() for worker in workers), return_exceptions=True)
        await self.stop_hubs()
        for drain in self._drains:
            drain.cancel()
        await asyncio.gather(*self._drains, return_exceptions=True)


async def run_until_signalled(benchmark: Awaitable[Result]) -> Result:
    """Await ``benchmark`` in a task that SIGINT and SIGTERM cancel, so its cleanup (stopping
    every child) runs either way, even where the shell started it with SIGINT ignored."""
    current = asyncio.current_task()
    assert current is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, current.cancel)
    return await benchmark


async def wait_for_idle_agents(
    operator: OperatorClient,
    count: int,
    timeout_s: float = 30,
    among: Collection[str] | None = None,
) -> None:
    """Until the hub lists ``count`` idle agents (counting only the ids ``among``, when
    given: a node's own sidecars, whether or not it also lists the other nodes')."""
    async with asyncio.timeout(timeout_s):
        while True:
            agents = await operator.request("agents_list")
            idle = [agent for agent in agents if agent["state"] == "idle"]
            if among is not None:
                idle = [agent for agent in idle if agent["agent_id"] in among]
            if len(idle) >= count:
                return
            await asyncio.sleep(0.1)


# --- simulated sidecars (the worker's side) ----------------------------------------------


@dataclass
class SidecarTally:
    """What the simulated sidecars of one worker received, and what they chose to do."""

    frames: Counter[str] = field(default_factory=Counter)
    acks: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    connects: int = 0

    def report(self) -> dict[str, Any]:
        """The counters as JSON-ready data."""
        return {
            "frames": dict(self.frames),
            "acks": dict(self.acks),
            "errors": dict(self.errors),
            "actions": dict(self.actions),
            "connects": self.connects,
        }


class BenchSidecar(AgentClient):
    """An :class:`AgentClient` that counts its (re)connections and signals the first one."""

    def __init__(
        self, *args: Any, tally: SidecarTally, on_connected: asyncio.Event, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.tally = tally
        self.connected_once = on_connected

    async def connect(self, timeout: float = 10.0) -> dict[str, Any]:
        reply = await super().connect(timeout)
        self.tally.connects += 1
        self.connected_once.set()
        return reply


def stop_on_signal_or_eof(on_line: Callable[[bytes], None] | None = None) -> asyncio.Event:
    """An event set on SIGTERM/SIGINT or at the end of stdin; ``on_line`` gets stdin's lines.

    Call from the running event loop; ``on_line`` runs in that loop.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def read_stdin() -> None:
        for line in sys.stdin.buffer:
            if on_line is not None:
                loop.call_soon_threadsafe(on_line, line)
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=read_stdin, daemon=True).start()
    return stop


async def print_tallies(report: Callable[[], dict[str, Any]], interval_s: float) -> None:
    """A ``tally {json}`` line on stdout every ``interval_s``."""
    while True:
        await asyncio.sleep(interval_s)
        print("tally " + json.dumps(report()), flush=True)


async def run_sidecars(
    spec_path: Path,
    on_frame: OnFrame,
    tally: SidecarTally,
    client_class: type[BenchSidecar] = BenchSidecar,
    tally_interval_s: float | None = None,
) -> int:
    """The sidecar worker: connect every agent of the spec and answer frames until stopped.

    The spec (JSON) names the hub (``url``) and the agents (``agents``: [id, token]
    pairs); with ``urls``, a list of hub nodes' agent endpoints, the agents are spread
    over them round-robin instead (agent ``i`` on ``urls[i % len(urls)]``). Every frame is
    counted in ``tally`` before ``on_frame`` sees it.
    """
    spec = json.loads(spec_path.read_text())
    urls = spec.get("urls") or [spec["url"]]
    stop = stop_on_signal_or_eof()

    async def count_then_handle(client: AgentClient, frame: dict[str, Any]) -> None:
        kind = str(frame.get("type"))
        tally.frames[kind] += 1
        if kind == "task_ack":
            tally.acks[str(frame.get("status"))] += 1
        elif kind in ("error", "rate_limited"):
            tally.errors[str(frame.get("error", kind))] += 1
        await on_frame(client, frame)

    clients, connected = [], []
    for index, (agent_id, token) in enumerate(spec["agents"]):
        ready = asyncio.Event()
        clients.append(
            client_class(
                urls[index % len(urls)],
                agent_id,
                token,
                heartbeat_s=15.0,
                backoff_initial_s=0.2,
                backoff_max_s=2.0,
                tally=tally,
                on_connected=ready,
            )
        )
        connected.append(ready)

    def count_early_stop(runner: asyncio.Task[None]) -> None:
        # A client whose run() ends before the worker stops has given up reconnecting.
        if not stop.is_set():
            failure = None if runner.cancelled() else runner.exception()
            tally.errors[f"client stopped: {failure!r}"[:120]] += 1

    runners = [asyncio.create_task(client.run(count_then_handle)) for client in clients]
    for runner in runners:
        runner.add_done_callback(count_early_stop)
    try:
        async with asyncio.timeout(60):
            await asyncio.gather(*(ready.wait() for ready in connected))
    except TimeoutError:
        print("failed: not every sidecar connected within 60 s", flush=True)
        stop.set()
    else:
        print(f"ready {len(clients)}", flush=True)
    reporter = None
    if tally_interval_s:
        reporter = asyncio.create_task(print_tallies(tally.report, tally_interval_s))
    await stop.wait()
    if reporter is not None:
        reporter.cancel()
    await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)
    outcomes = await asyncio.gather(*runners, return_exceptions=True)
    failures = [repr(outcome) for outcome in outcomes if isinstance(outcome, BaseException)]
    print("summary " + json.dumps({**tally.report(), "failures": failures[:5]}), flush=True)
    return 0
