"""End-to-end lifecycle benchmark: a real hub, real sidecars, real sockets, SQLite (and
PostgreSQL with ``--pg``, on several hub nodes too with ``--nodes``).

Usage (from the repository root, with the project's virtualenv)::

    python bench/lifecycle.py --agents 50 --tasks 20000
    python bench/lifecycle.py --agents 5 --tasks 500 --json
    python bench/lifecycle.py --agents 50 --tasks 20000 --rate 400      # paced submits
    python bench/lifecycle.py --agents 50 --tasks 5000 --profile-hub /tmp/hub.prof
    python bench/lifecycle.py --agents 50 --tasks 20000 --relay-seconds 0   # no baseline
    python bench/lifecycle.py --agents 50 --tasks 5000 \
        --pg postgresql://postgres@127.0.0.1:5432/postgres     # SQLite, then PostgreSQL
    python bench/lifecycle.py --agents 50 --tasks 5000 --rate 500 --nodes 2 \
        --pg postgresql://postgres@127.0.0.1:5432/postgres     # ... then PostgreSQL x2

What it does:

1. creates a temporary directory; with ``--pg URL``, also a new PostgreSQL database
   named ``agentcom_bench_<random hex>`` (with ``--nodes N``, a second one for the run on
   N nodes), through a connection to the database ``URL`` names (a maintenance database
   such as ``postgres``; its user needs ``CREATEDB``); with ``--nodes N``, checks that
   the Redis of ``--redis`` (``redis://127.0.0.1:6379/0``) answers;
2. unless ``--relay-seconds 0``, measures a baseline: a bare relay, the ``websockets``
   asyncio echo server in a subprocess of this script (``--relay-server``), driven from
   another (``--relay-clients``) over one connection per sidecar plus one per operator
   connection (``--agents`` + ``--operators``: the sockets the tasks' round trips travel
   on). Each connection sends a JSON text frame of about 300 bytes (a sidecar's
   ``task_complete``) and reads its echo, back to back, for ``--relay-seconds`` (3);
   neither side parses the frames, and compression is off as in the hub by default.
   Both are stopped before the hub starts;
3. for each case in turn, SQLite (``hub.db`` in the directory) first, then PostgreSQL
   on one hub node, then with ``--nodes N`` PostgreSQL on N nodes, this step to step 5
   (the hubs and the sidecars stopped before the next case): writes one agent
   token per simulated sidecar and one admin token straight to the database, as
   ``agentcom token create`` does (``store/tokens.py``, for either database; it makes
   the PostgreSQL tables), starts the hub as a subprocess
   (``python -m agentcom.cli serve --port 0 --db ...``) and reads its
   ``agentcom <version> hub on ws://HOST:PORT/ws`` line; with ``--profile-hub`` the
   hub runs instead under cProfile in a subprocess of this script (``--serve-profiled``).
   On N nodes it starts N hubs, one after another, on the same database, each on a port
   of its own with ``--pubsub <--redis> --cluster bench-<random hex> --node-id node<i>``
   (a cluster name new for the run);
4. starts the sidecars in another subprocess of this script (``--sidecars``), agent
   ``i`` connected to node ``i % N`` on N nodes (round-robin): one
   :class:`~agentcom.client.AgentClient` per agent which answers every ``task_assign``
   with ``task_accepted``, one ``task_progress`` carrying an ``execution_event`` and a
   ``task_complete`` with the generation and full execution metadata;
5. subscribes to ``/ws/dashboard`` (topic ``tasks``) on the first node and submits the
   no-op tasks through the operator protocol, ``--window`` requests in flight on each of
   ``--operators`` connections to each node (the hub serves at most 32 at once per
   connection), all drawing from one sequence of tasks, optionally paced at ``--rate``
   tasks/s in all;
6. prints, for each case, throughput, submit->assign and submit->complete latency
   (p50/p99), events received and dropped, the hub's peak RSS (``VmHWM``), CPU time per
   process, store commits, and on N nodes each node's share; then with ``--pg`` a table
   of the main figures, one column per case, with PostgreSQL's over SQLite's and N
   nodes' over one node's; then the relay baseline. ``--json`` prints one JSON object
   instead (below).

The JSON object keeps at its top level the figures of the SQLite run, as before ``--pg``
existed, with the relay's. ``runs`` holds every run's figures by case (``sqlite``, and
``postgresql`` with ``--pg``, ``postgresql_<N>_nodes`` with ``--nodes N``), each with
its own ``hub_to_relay_ratio``, and ``comparison`` (None without ``--pg``) each compared
figure as ``{"sqlite": ..., "postgresql": ..., "postgresql_over_sqlite": ...}``, plus
``"postgresql_<N>_nodes"`` and ``"postgresql_<N>_nodes_over_postgresql"`` with
``--nodes``. ``case``, ``database``, ``nodes`` and ``database_location`` say what a set
of figures is for (a URL without its password). A case whose hub or sidecars did not
start holds only those and ``error`` (the other cases still run; the exit code is 2).

On N nodes the hub's figures are the nodes' totals: CPU (``hub``; each node's as
``hub_node<i>`` too), store commits, frames received, progress coalesced; peak RSS is
the largest node's; ``hub_nodes`` lists each node's sidecars, submits and own figures.
The dashboard is on the first node, so the latency of a task assigned on another one
includes the event's way through Redis.

The PostgreSQL server does in its own processes the work the SQLite store does in the
hub's writer thread. When the server runs on this machine, the CPU of the server
processes connected to the run's database (found in ``pg_stat_activity``) is reported
as ``postgres`` under ``cpu``, per task as ``database_cpu_ms_per_task``, and with the
hub's as ``hub_and_database_cpu_ms_per_task`` (for SQLite, the hub's alone): compare
that figure across databases, not ``hub_cpu_ms_per_task``. The server's shared processes
(WAL writer, checkpointer ...) count among the other processes. A server elsewhere
leaves these figures None.

The relay gives the hub's throughput a yardstick measured on the same machine in the
same run. A task costs four request/response round trips (submit, assign/accepted,
progress, complete), so the relay's ``relay_round_trips_per_s`` divided by four is
``relay_ceiling_tasks_per_s``, the task rate of a hub that did nothing but move frames
over as many connections, and ``hub_to_relay_ratio`` is ``tasks_per_s`` over that
ceiling. The relay's CPU per process is reported with it (under ``relay``).

Latencies are measured on this process's monotonic clock from the moment a submit
request is handed to the operator connection (before the hub has seen it) to the
moment the ``task_assigned`` / ``task_completed`` event is read from the dashboard
socket. Without ``--rate`` every task is submitted as fast as the hub accepts them, so
those latencies are dominated by queueing behind the backlog: they measure how long
the burst takes to drain, not the hub's per-task cost. Use ``--rate`` below the
saturated throughput for latency at a given load.

Besides those figures it reports the hub's CPU time per task and split between its
event-loop thread and its other threads (the store's writer), the source revision
measured, and how much CPU other processes used during the run: on a shared machine
that last figure says how far to trust the others. ``AGENTCOM_*`` variables in the
environment reach the hub (e.g. ``AGENTCOM_SUBSCRIBER_QUEUE=10000``).

With ``--profile-hub PATH`` the SQLite hub's profile goes to ``PATH``, the PostgreSQL
hub's to ``PATH.postgresql`` and that of node ``i`` of N to
``PATH.postgresql_<N>_nodes.node<i>``; all are printed (with ``--json``, written to
``.txt`` files beside them). Profiling slows the hub: compare profiled runs only with
each other.

Every process the benchmark starts is stopped when it ends, fails or is interrupted
(SIGINT/SIGTERM); on Linux the children also get SIGTERM if this process dies. The
PostgreSQL databases are then dropped, their sessions ended first; only a benchmark
killed outright (SIGKILL) leaves them behind, to drop by hand.

This file is long because it holds the benchmark's subprocess modes (sidecars, relay,
profiled hub) beside the driver, so that it runs as one script; the report (comparison
and printing) is in ``_lifecycle_report.py``, the cases and how their hubs start in
``_lifecycle_nodes.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    HUB_OPERATOR_CAP,
    Children,
    Hub,
    SidecarTally,
    cpu_used,
    hub_metrics,
    hubs_cpu_sample,
    latency_summary,
    make_tokens,
    memory_mib,
    run_sidecars,
    run_until_signalled,
    source_revision,
    spread,
    wait_for_idle_agents,
)
from _lifecycle_nodes import Case, check_redis, planned_cases, profile_path, start_nodes
from _lifecycle_report import (
    POSTGRESQL,
    SQLITE,
    case_label,
    compare_runs,
    print_profile,
    print_text,
)
from _postgres import ScratchDatabase, backend_cpu_used
from _relay import compare_with_relay, drive_echo, measure_relay, serve_echo

from agentcom import __version__
from agentcom.client import AgentClient, OperatorClient
from agentcom.hub.queue import new_task_id
from agentcom.store.location import is_postgres_url, shown

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"

NO_OP_TASK: dict[str, Any] = {"complexity_tier": "trivial", "metadata": {"shell_command": "true"}}


# --- sidecars (a subprocess: --sidecars) -----------------------------------------------


def no_op_completion(task_id: str, generation: int, execution_ms: float) -> dict[str, Any]:
    """The ``task_complete`` frame of a no-op task, with full execution metadata."""
    result = {
        "status": "success",
        "output": "ok",
        "model_used": "bench-no-op",
        "tokens_in": 12,
        "tokens_out": 3,
        "estimated_cost_usd": 0.0,
        "equivalent_claude_cost_usd": 0.000081,
        "execution_ms": execution_ms,
    }
    return {"type": "task_complete", "task_id": task_id, "generation": generation, "result": result}


async def run_no_op_task(client: AgentClient, frame: dict[str, Any]) -> None:
    """Answer a ``task_assign`` as a sidecar whose execution succeeds at once."""
    started = time.perf_counter()
    task_id = frame["task_id"]
    await client.send({"type": "task_accepted", "task_id": task_id})
    event = {"event_type": "stdout", "text": "ok", "timestamp": time.time_ns() // 1_000_000}
    await client.send({"type": "task_progress", "task_id": task_id, "execution_event": event})
    execution_ms = round((time.perf_counter() - started) * 1000, 3)
    await client.send(no_op_completion(task_id, frame["generation"], execution_ms))


async def answer_with_no_op(client: AgentClient, frame: dict[str, Any]) -> None:
    """The lifecycle sidecar: every ``task_assign`` succeeds at once."""
    if frame.get("type") == "task_assign":
        await run_no_op_task(client, frame)


# --- profiled hub (a subprocess: --serve-profiled) -------------------------------------


async def serve_until_stopped(
    db: Path | str, host: str, profile_out: Path, cluster: dict[str, str | None]
) -> None:
    """Run a hub under cProfile until SIGTERM/SIGINT, then write the profile; ``cluster``
    holds its ``pubsub``, ``cluster`` and ``node_id`` settings (None: the default)."""
    import cProfile

    from agentcom.config import load_settings
    from agentcom.server.app import HubServer

    settings = load_settings(host=host, port=0, db=db, log_level="WARNING", **cluster)
    server = HubServer(settings)
    await server.start()
    print(f"agentcom {__version__} hub on ws://{host}:{server.port}/ws", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        await stop.wait()
    finally:
        profiler.disable()
        profiler.dump_stats(str(profile_out))
    await server.stop()


# --- the driver ------------------------------------------------------------------------


@dataclass
class Observations:
    """Timestamps (``time.perf_counter``) of each task's milestones, by task id."""

    sent: dict[str, float] = field(default_factory=dict)
    replied: dict[str, float] = field(default_factory=dict)
    assigned: dict[str, float] = field(default_factory=dict)
    completed: dict[str, float] = field(default_factory=dict)
    events: Counter[str] = field(default_factory=Counter)
    dropped: int = 0
    submit_errors: Counter[str] = field(default_factory=Counter)
    submitted_via: Counter[str] = field(default_factory=Counter)  # by hub node
    first_sent: float | None = None
    last_replied: float | None = None
    expected: int = 0  # completions to wait for: M, then the submits that succeeded

    def all_completed(self) -> bool:
        """Every expected task was seen completed."""
        return len(self.completed) >= self.expected


async def watch_tasks(
    operator: OperatorClient, seen: Observations, subscribed: asyncio.Event, done: asyncio.Event
) -> None:
    """Record assignment and completion times from the dashboard stream."""
    async for frame in operator.watch(["tasks"]):
        now = time.perf_counter()
        kind = frame.get("type")
        if kind == "snapshot":
            subscribed.set()
        elif kind == "events_dropped":
            seen.dropped += int(frame["count"])
        elif kind == "task_event":
            name = frame["event"]
            seen.events[name] += 1
            if name == "task_assigned":
                seen.assigned.setdefault(frame["task_id"], now)
            elif name == "task_completed":
                seen.completed.setdefault(frame["task_id"], now)
                if seen.all_completed():
                    done.set()


async def submit_tasks(
    operator: OperatorClient,
    seen: Observations,
    indices: Any,
    total: int,
    window: int,
    rate: float | None,
    start: float,
    node: str,
) -> None:
    """Submit from the shared index iterator, ``window`` requests in flight, through an
    operator connection to the hub node ``node``."""

    async def worker() -> None:
        for index in indices:
            if rate:
                await asyncio.sleep(max(0.0, start + index / rate - time.perf_counter()))
            sent = time.perf_counter()
            if seen.first_sent is None:
                seen.first_sent = sent
            try:
                task = await operator.submit(f"bench no-op {index + 1}/{total}", **NO_OP_TASK)
            except Exception as exc:  # counted and reported; the run goes on
                seen.submit_errors[type(exc).__name__ + ": " + str(exc)[:80]] += 1
                continue
            replied = time.perf_counter()
            seen.sent[task["task_id"]] = sent
            seen.replied[task["task_id"]] = replied
            seen.last_replied = replied
            seen.submitted_via[node] += 1

    await asyncio.gather(*(worker() for _ in range(window)))


async def report_progress(seen: Observations, total: int, quiet: bool) -> None:
    """A status line on stderr every two seconds."""
    while not quiet:
        await asyncio.sleep(2)
        print(
            f"  submitted {len(seen.replied)}/{total}  assigned {len(seen.assigned)}  "
            f"completed {len(seen.completed)}  dropped events {seen.dropped}",
            file=sys.stderr,
            flush=True,
        )


async def watchdog(
    operator: OperatorClient,
    seen: Observations,
    total: int,
    done: asyncio.Event,
    confirmed: list[float],
) -> None:
    """When events were dropped, completions may never be seen: ask the hub instead."""
    while not done.is_set():
        await asyncio.sleep(1)
        if seen.dropped and len(seen.replied) + sum(seen.submit_errors.values()) >= total:
            stats = await operator.request("stats")
            if stats["by_status"].get("completed", 0) >= seen.expected:
                confirmed.append(time.perf_counter())
                done.set()


async def wait_until_done(
    seen: Observations, done: asyncio.Event, timeout_s: float, stall_s: float
) -> None:
    """Until every completion is seen; gives up after ``timeout_s``, or ``stall_s`` without news."""
    deadline = time.perf_counter() + timeout_s
    last_news, last_counts = time.perf_counter(), (-1, -1, -1)
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 1)
        now = time.perf_counter()
        counts = (len(seen.assigned), len(seen.completed), seen.dropped)
        if counts != last_counts:
            last_news, last_counts = now, counts
        if now >= deadline or now - last_news >= stall_s:
            reason = "timed out" if now >= deadline else f"no progress for {stall_s:.0f} s"
            print(
                f"{reason}: {len(seen.completed)} of {len(seen.replied)} tasks completed; "
                "giving up",
                file=sys.stderr,
            )
            return


@dataclass
class Node:
    """One hub node of a run: its name in the figures, its process and its sidecars."""

    name: str
    hub: Hub
    agent_ids: list[str]


@dataclass
class NodeReading:
    """What a node reported once the run was over."""

    node: Node
    stats: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)


async def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Set up, run each case, measure and tear down; returns the figures."""
    workdir = Path(tempfile.mkdtemp(prefix="agentcom-bench-", dir=args.workdir))
    children = Children()
    script = str(Path(__file__).resolve())
    scratches: dict[str, ScratchDatabase] = {}
    try:
        cases = planned_cases(args.pg is not None, args.nodes)
        # First, so that a URL that does not work fails before the runs. A database of its
        # own for each case: none starts on the tasks another left.
        for case in cases:
            if case.database == POSTGRESQL:
                scratches[case.name] = ScratchDatabase(args.pg)
        if args.pg and args.nodes > 1:
            check_redis(args.redis)
        relay = None
        if args.relay_seconds:
            connections = args.agents + args.operators
            frame = json.dumps(no_op_completion(new_task_id(), 1, 0.123))
            relay = await measure_relay(
                children, workdir, script, connections, frame, args.relay_seconds
            )
        runs = {}
        for case in cases:
            scratch = scratches.get(case.name)
            runs[case.name] = await run_case(args, children, workdir, script, case, scratch)
        for figures in runs.values():
            figures.update(compare_with_relay(figures.get("tasks_per_s"), relay))
        report = dict(runs[SQLITE])
        report["runs"] = runs
        report["comparison"] = compare_runs(runs) if len(runs) > 1 else None
        report["workdir"] = str(workdir)
        return report
    finally:
        await children.stop_all()
        for scratch in scratches.values():
            drop_scratch(scratch)
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def drop_scratch(scratch: ScratchDatabase) -> None:
    """Drop the PostgreSQL database of the run; says so on stderr when it cannot."""
    try:
        scratch.drop()
    except Exception as exc:  # the run's own outcome matters more: report and go on
        print(
            f"could not drop PostgreSQL database {scratch.name}: {exc}; drop it by hand",
            file=sys.stderr,
        )


async def run_case(
    args: argparse.Namespace,
    children: Children,
    workdir: Path,
    script: str,
    case: Case,
    scratch: ScratchDatabase | None,
) -> dict[str, Any]:
    """The workload on ``case`` (on ``scratch``'s database when given, else the SQLite
    file), every child stopped at the end: the run's figures, or only ``error`` when a hub
    node or the sidecars did not start (the other cases still run)."""
    db: Path | str = scratch.url if scratch is not None else workdir / "hub.db"
    if not args.quiet:
        print(f"running on {case_label(case.database, case.nodes)}", file=sys.stderr, flush=True)
    try:
        figures = await run_on(args, children, workdir, script, case, db, scratch)
    except RuntimeError as error:
        figures = {"error": str(error)}
    finally:
        await children.stop_all()
    figures.update(case=case.name, database=case.database, nodes=case.nodes)
    figures["database_location"] = shown(db)
    return figures


async def run_on(
    args: argparse.Namespace,
    children: Children,
    workdir: Path,
    script: str,
    case: Case,
    db: Path | str,
    scratch: ScratchDatabase | None,
) -> dict[str, Any]:
    """Start the case's hub nodes, the sidecars (spread over the nodes round-robin) and the
    workload; the run's figures, taken while every child still runs."""
    agents, admin = make_tokens(db, args.agents)
    hubs = await start_nodes(children, workdir, script, case, db, args.redis, args.profile_hub)
    spec = workdir / f"sidecars{case.suffix()}.json"
    spec.write_text(json.dumps({"urls": [hub.ws_url for hub in hubs], "agents": agents}))
    sidecars = await children.start_worker(
        "sidecars",
        [sys.executable, script, "--sidecars", "--spec", str(spec)],
        workdir / f"sidecars{case.suffix()}.log",
    )
    await sidecars.wait_ready(90)
    agent_ids = spread([agent_id for agent_id, _token in agents], len(hubs))
    nodes = [Node(f"node{index}", hub, agent_ids[index]) for index, hub in enumerate(hubs)]
    figures = await drive(args, nodes, admin, sidecars.process.pid, scratch)
    figures["sidecars"] = await sidecars.finish()
    if args.profile_hub:
        figures["profiles"] = [
            str(profile_path(args.profile_hub, case, node)) for node in range(case.nodes)
        ]
    return figures


async def drive(
    args: argparse.Namespace,
    nodes: list[Node],
    admin: str,
    sidecars_pid: int,
    scratch: ScratchDatabase | None,
) -> dict[str, Any]:
    """Submit and observe the tasks, ``--operators`` connections to each node submitting
    and the first node's dashboard watching; collect every figure while the hubs still
    run (with ``scratch``, the CPU of the PostgreSQL processes serving its database too)."""
    seen = Observations(expected=args.tasks)
    subscribed, done = asyncio.Event(), asyncio.Event()
    confirmed: list[float] = []
    operators = {
        node.name: [OperatorClient(node.hub.http_url, admin) for _ in range(args.operators)]
        for node in nodes
    }
    every_operator = [operator for own in operators.values() for operator in own]
    first = every_operator[0]  # the first node's: the dashboard and the watchdog
    hub_pids = {node.name: node.hub.process.pid for node in nodes}
    background: list[asyncio.Task[None]] = []
    try:
        for operator in every_operator:
            await operator.connect()
        for node in nodes:  # each node lists its own sidecars, whatever else it lists
            await wait_for_idle_agents(
                operators[node.name][0], len(node.agent_ids), among=node.agent_ids
            )
        background.append(asyncio.create_task(watch_tasks(first, seen, subscribed, done)))
        async with asyncio.timeout(30):
            await subscribed.wait()
        backends_before = scratch.backend_cpu() if scratch is not None else {}
        cpu_before = hubs_cpu_sample(hub_pids, {"sidecars": sidecars_pid})
        start = time.perf_counter()
        indices = iter(range(args.tasks))
        background.append(asyncio.create_task(report_progress(seen, args.tasks, args.quiet)))
        background.append(asyncio.create_task(watchdog(first, seen, args.tasks, done, confirmed)))
        submitters = [
            submit_tasks(operator, seen, indices, args.tasks, args.window, args.rate, start, name)
            for name, own in operators.items()
            for operator in own
        ]
        await asyncio.gather(*submitters)
        seen.expected = len(seen.replied)
        if seen.all_completed():
            done.set()
        await wait_until_done(seen, done, args.timeout, args.stall_timeout)
        finished = time.perf_counter()
        cpu_after = hubs_cpu_sample(hub_pids, {"sidecars": sidecars_pid})
        backends_after = scratch.backend_cpu() if scratch is not None else {}
        readings = [
            NodeReading(node, await operators[node.name][0].request("stats")) for node in nodes
        ]
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await asyncio.gather(
            *(operator.close() for operator in every_operator), return_exceptions=True
        )
    for reading in readings:
        reading.metrics = await asyncio.to_thread(hub_metrics, reading.node.hub.http_url)
    if scratch is not None:  # None: the server's processes are not on this machine
        cpu_before["postgres"] = 0.0
        cpu_after["postgres"] = backend_cpu_used(backends_before, backends_after)
    return summarize(args, seen, readings, cpu_before, cpu_after, start, finished, confirmed)


def total(values: list[float | None]) -> float | None:
    """The sum of figures read from each node (None unless every node gave one)."""
    found = [value for value in values if value is not None]
    return sum(found) if values and len(found) == len(values) else None


def node_figures(
    reading: NodeReading, seen: Observations, cpu: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """One node's share of a run: its sidecars, the submits sent to it, its own figures."""
    node = reading.node
    used = cpu.get(f"hub_{node.name}", cpu.get("hub"))  # a single node's is the total
    return {
        "node": node.name,
        "hub_pid": node.hub.process.pid,
        "hub_url": node.hub.http_url,
        "agents": len(node.agent_ids),
        "submits": seen.submitted_via[node.name],
        "hub_cpu_s": None if used is None else used["seconds"],
        "hub_peak_rss_mib": memory_mib(node.hub.process.pid, "VmHWM"),
        "store_commits": reading.metrics.get("agentcom_store_commits_total"),
        "frames_received_by_hub": reading.metrics.get("agentcom_frames_received_total"),
        "progress_coalesced_by_hub": reading.stats.get("progress_dropped"),
        # Nodes sharing a database: writes that lost to another node's, tasks re-read.
        "write_conflicts": reading.metrics.get("agentcom_task_write_conflicts_total"),
        "tasks_refreshed": reading.metrics.get("agentcom_tasks_refreshed_total"),
    }


def summarize(
    args: argparse.Namespace,
    seen: Observations,
    readings: list[NodeReading],
    cpu_before: dict[str, float | None],
    cpu_after: dict[str, float | None],
    start: float,
    finished: float,
    confirmed: list[float],
) -> dict[str, Any]:
    """Turn the observations into the reported figures; per-process figures of the hub
    are the nodes' totals (peak RSS: the largest node's), each node's in ``hub_nodes``."""
    first = seen.first_sent or start
    last_completion = max(seen.completed.values(), default=finished)
    end = confirmed[0] if confirmed and len(seen.completed) < len(seen.replied) else last_completion
    wall_s = max(end - first, 1e-9)
    # The store's counts: every node shares them, the first node's answer will do.
    completed = int(readings[0].stats["by_status"].get("completed", 0))
    to_assign = [seen.assigned[t] - sent for t, sent in seen.sent.items() if t in seen.assigned]
    to_complete = [seen.completed[t] - sent for t, sent in seen.sent.items() if t in seen.completed]
    round_trip = [seen.replied[t] - sent for t, sent in seen.sent.items()]
    cpu, other_load = cpu_used(
        cpu_before, cpu_after, wall_s, ("hub", "sidecars", "driver", "postgres")
    )
    nodes = [node_figures(reading, seen, cpu) for reading in readings]
    commits = total([node["store_commits"] for node in nodes])
    peaks = [node["hub_peak_rss_mib"] for node in nodes if node["hub_peak_rss_mib"] is not None]
    ends = [memory_mib(reading.node.hub.process.pid, "VmRSS") for reading in readings]
    # SQLite works inside the hub's process; PostgreSQL in the server's own processes.
    with_database = ("hub", "postgres") if "postgres" in cpu_before else ("hub",)
    return {
        "agentcom_version": __version__,
        "source_revision": source_revision(),
        "agents": args.agents,
        "tasks": args.tasks,
        "operators": args.operators * len(readings),
        "window_per_operator": args.window,
        "rate_limit_per_s": args.rate,
        "cpus": os.cpu_count(),
        "elapsed_s": round(wall_s, 3),
        "submit_phase_s": round((seen.last_replied or first) - first, 3),
        "completed": completed,
        "tasks_per_s": round(completed / wall_s, 1),
        "submits_per_s": round(
            len(seen.replied) / max((seen.last_replied or first) - first, 1e-9), 1
        ),
        "latency_basis": "from submit request sent (driver clock) to dashboard event received",
        "submit_to_assign": latency_summary(to_assign),
        "submit_to_complete": latency_summary(to_complete),
        "submit_round_trip": latency_summary(round_trip),
        "events_received": dict(seen.events),
        "events_dropped": seen.dropped,
        "completion_confirmed_by_stats": bool(confirmed)
        and len(seen.completed) < len(seen.replied),
        "submit_errors": dict(seen.submit_errors),
        "progress_coalesced_by_hub": total([node["progress_coalesced_by_hub"] for node in nodes]),
        "hub_pid": nodes[0]["hub_pid"],
        "hub_peak_rss_mib": max(peaks, default=None),
        "hub_rss_end_mib": max((end for end in ends if end is not None), default=None),
        "hub_nodes": nodes,
        "cpu": cpu,
        "other_processes_cpu_percent": other_load,
        "load_average_at_end": [round(value, 2) for value in os.getloadavg()],
        "store_commits": commits,
        "tasks_per_commit": round(completed / commits, 2) if commits else None,
        "hub_cpu_ms_per_task": per_task_ms(cpu, ("hub",), completed),
        "database_cpu_ms_per_task": per_task_ms(cpu, ("postgres",), completed),
        "hub_and_database_cpu_ms_per_task": per_task_ms(cpu, with_database, completed),
        "frames_received_by_hub": total([node["frames_received_by_hub"] for node in nodes]),
        "write_conflicts": total([node["write_conflicts"] for node in nodes]),
        "tasks_refreshed": total([node["tasks_refreshed"] for node in nodes]),
    }


def per_task_ms(
    cpu: dict[str, dict[str, float]], names: tuple[str, ...], tasks: int
) -> float | None:
    """Milliseconds of CPU the processes ``names`` used per task (None unless all measured)."""
    if not tasks or any(name not in cpu for name in names):
        return None
    return round(1000 * sum(cpu[name]["seconds"] for name in names) / tasks, 3)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; the hidden options select the subprocess modes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=50, help="simulated sidecars (N)")
    parser.add_argument("--tasks", type=int, default=20000, help="tasks to submit (M)")
    parser.add_argument("--operators", type=int, default=1, help="operator connections submitting")
    parser.add_argument(
        "--window",
        type=int,
        default=HUB_OPERATOR_CAP,
        help=f"submits in flight per connection (at most {HUB_OPERATOR_CAP})",
    )
    parser.add_argument("--rate", type=float, help="pace submits at this many tasks/s")
    parser.add_argument(
        "--timeout", type=float, default=900, help="seconds to wait for completions"
    )
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=60,
        help="give up after this many seconds without a new assignment or completion",
    )
    parser.add_argument("--workdir", help="parent of the temporary directory (default: system tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument(
        "--profile-hub",
        metavar="PATH",
        help="run the hub under cProfile and save the profile to PATH (tables: printed, or "
        "with --json written to PATH.txt)",
    )
    parser.add_argument(
        "--profile-top", type=int, default=30, help="functions shown per profile table"
    )
    parser.add_argument(
        "--pg",
        metavar="URL",
        help="also run on a new PostgreSQL database, created (and dropped at the end) through "
        "this postgresql:// URL, e.g. postgresql://postgres@127.0.0.1:5432/postgres",
    )
    parser.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="with --pg, also run PostgreSQL on this many hub nodes sharing a new database, "
        "sidecars and submits spread over them (default 1: no such run)",
    )
    parser.add_argument(
        "--redis",
        metavar="URL",
        default=DEFAULT_REDIS,
        help=f"the Redis the nodes of --nodes share events through (default {DEFAULT_REDIS})",
    )
    parser.add_argument(
        "--relay-seconds",
        type=float,
        default=3,
        help="seconds of the bare websockets relay baseline run first (0: none)",
    )
    parser.add_argument("--sidecars", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--relay-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--relay-clients", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--serve-profiled", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    parser.add_argument("--pubsub", help=argparse.SUPPRESS)
    parser.add_argument("--cluster", help=argparse.SUPPRESS)
    parser.add_argument("--node-id", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 1 <= args.window <= HUB_OPERATOR_CAP:
        parser.error(
            f"--window must be 1 to {HUB_OPERATOR_CAP}: the hub serves at most "
            f"{HUB_OPERATOR_CAP} requests at once per connection and refuses more"
        )
    if args.agents < 1 or args.tasks < 1 or args.operators < 1:
        parser.error("--agents, --tasks and --operators must be at least 1")
    if args.pg is not None and not is_postgres_url(args.pg):
        parser.error("--pg takes a postgresql:// (or postgres://) URL")
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    if args.nodes > 1 and args.pg is None:
        parser.error("--nodes runs hub nodes on a PostgreSQL database: it needs --pg")
    if args.relay_seconds < 0:
        parser.error("--relay-seconds must be 0 (no relay) or more")
    return args


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark, cancelled cleanly (children stopped) on SIGTERM as on SIGINT."""
    return await run_until_signalled(run_benchmark(args))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or one of its subprocess modes); 0 when every task completed."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.sidecars:
        return asyncio.run(run_sidecars(Path(args.spec), answer_with_no_op, SidecarTally()))
    if args.relay_server:
        return asyncio.run(serve_echo())
    if args.relay_clients:
        return asyncio.run(drive_echo(Path(args.spec)))
    if args.serve_profiled:
        db = args.db if is_postgres_url(args.db) else Path(args.db)
        cluster = {"pubsub": args.pubsub, "cluster": args.cluster, "node_id": args.node_id}
        asyncio.run(serve_until_stopped(db, "127.0.0.1", Path(args.profile_out), cluster))
        return 0
    try:
        figures = asyncio.run(main_async(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; every started process was stopped", file=sys.stderr)
        return 130
    except RuntimeError as error:  # no PostgreSQL, no Redis, a relay that did not start
        print(f"lifecycle bench: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print_text(figures)
    for path in (path for run in figures["runs"].values() for path in run.get("profiles", ())):
        if args.json:
            with open(f"{path}.txt", "w") as out, contextlib.redirect_stdout(out):
                print_profile(path, args.profile_top)
        else:
            print_profile(path, args.profile_top)
    runs = figures["runs"].values()
    if any("error" in run for run in runs):
        return 2
    return 0 if all(run["completed"] >= args.tasks for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
