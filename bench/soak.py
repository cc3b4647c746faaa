"""Soak benchmark: a real hub under a steady, mixed load for a bounded time.

Usage (from the repository root, with the project's virtualenv)::

    python bench/soak.py                       # 10 minutes, 200 agents, 5 dashboards, 100 tasks/s
    python bench/soak.py --minutes 1           # a quick check
    python bench/soak.py --minutes 30 --rate 200 --json > soak.json

What runs, each part in its own process and on loopback only:

- the hub: ``agentcom serve`` configured through ``AGENTCOM_*`` variables, with its SQLite
  database in a temporary directory (other ``AGENTCOM_*`` variables in the environment
  reach it too, e.g. ``AGENTCOM_SUBSCRIBER_QUEUE=5000``);
- ``--agents`` simulated sidecars (:class:`~agentcom.client.AgentClient`) spread over
  ``--sidecar-workers`` processes; a task takes them about ``--exec-ms`` to "run";
- ``--dashboards`` subscribers of ``/ws/dashboard`` (every topic, like the dashboard
  page) in one process, which time each task's events;
- this process: one operator connection offering ``--rate`` tasks/s for ``--minutes``,
  then waiting (at most ``--drain-timeout``) for the tasks still open.

The mix of tasks (share of submits; how the simulated sidecar answers):

- ``ok`` 85%: accepted, 1 to 4 ``task_progress`` frames (half of the tasks carry an
  ``execution_event`` stdout chunk in each), completed;
- ``fail_once`` 4%: the first attempt fails, the retry completes;
- ``fail`` 3%, submitted with ``max_retries`` 1: both attempts fail, the task ends in
  dead letter; half report ``task_failed``, half a ``task_complete`` whose result failed;
- ``reject`` 5%: the first assignment is answered with ``task_rejected``, the next completes;
- ``drop`` 1.5%: the sidecar drops its connection after the first progress frame,
  reconnects and sends ``task_complete`` on the new connection;
- ``recover`` 1.5%: the same drop, then ``task_recovering`` on the new connection; the hub
  answers ``task_reassign`` and the next attempt completes.

Every minute one line: tasks submitted / completed / failed (failed attempts) /
dead-lettered in that minute and in total, errors (error replies, rate limiting, failed
submits and connections lost without being dropped on purpose), p50/p99 of submit ->
first assignment and submit -> completion over the minute, dashboard events received and
dropped, tasks still open, the hub's RSS (``VmRSS``) and its CPU use (100% = one core).
Latencies are taken by the dashboard subscribers: the time an event is read from the
socket minus the time this process handed the submit to its connection, both on the
machine's monotonic clock (shared by every process on Linux); every subscriber times
every task, so each task counts once per dashboard.

At the end: a summary (outcomes against the planned mix, errors, latencies per kind of
task, CPU of each process, the hub's exit code and the errors in its log) and the RSS
trend after warm-up (the first minute excluded): minimum, maximum and least-squares slope
in MiB per minute, with the verdict ``RSS flat after warm-up: yes/no (criterion ...)``.
With ``--json`` the minute lines go to stderr and one JSON object to stdout. The exit
status is 0 when everything that must hold held (see ``CHECKS`` in the summary).

Every process the benchmark starts is stopped when it ends, fails or is interrupted
(SIGINT/SIGTERM); on Linux the children also get SIGTERM if this process dies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from array import array
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    HUB_OPERATOR_CAP,
    BenchSidecar,
    Children,
    Hub,
    SidecarTally,
    Worker,
    cpu_seconds,
    hub_metrics,
    log_tail,
    machine_busy_seconds,
    make_token,
    make_tokens,
    memory_mib,
    percentile,
    print_tallies,
    run_sidecars,
    run_until_signalled,
    source_revision,
    stop_on_signal_or_eof,
    wait_for_idle_agents,
)
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from agentcom import __version__
from agentcom.client import AgentClient, AuthenticationError, OperatorClient

# Share of submits per kind of task (module docstring).
MIX: tuple[tuple[str, float], ...] = (
    ("ok", 0.85),
    ("fail_once", 0.04),
    ("fail", 0.03),
    ("reject", 0.05),
    ("drop", 0.015),
    ("recover", 0.015),
)
TALLY_INTERVAL_S = 0.5  # how often workers report their counters
RSS_SAMPLE_INTERVAL_S = 5.0
WARM_UP_S = 60.0  # the first minute: excluded from the RSS trend
FORGET_AFTER_S = 300.0  # a dashboard forgets a task it has not matched after this long
TERMINAL_EVENTS = ("task_completed", "task_dead_letter", "task_cancelled")


# --- the simulated sidecars (a subprocess: --sidecars) ----------------------------------


class SoakSidecar(BenchSidecar):
    """A sidecar that may drop its connection mid-task and settle the task after reconnecting."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.after_reconnect: dict[str, Any] | None = None

    async def connect(self, timeout: float = 10.0) -> dict[str, Any]:
        reply = await super().connect(timeout)
        frame, self.after_reconnect = self.after_reconnect, None
        if frame is not None:
            try:
                await self.send(frame)
            except ConnectionClosed:
                self.after_reconnect = frame
                raise
        return reply


def completion(frame: dict[str, Any], execution_ms: float) -> dict[str, Any]:
    """A successful ``task_complete`` for an assignment, with execution metadata."""
    result = {
        "status": "success",
        "output": "done",
        "model_used": "soak-simulated",
        "tokens_in": 40,
        "tokens_out": 12,
        "estimated_cost_usd": 0.0,
        "equivalent_claude_cost_usd": 0.0003,
        "execution_ms": execution_ms,
    }
    return {
        "type": "task_complete",
        "task_id": frame["task_id"],
        "generation": frame["generation"],
        "result": result,
    }


def progress(task_id: str, step: int, steps: int, chunk: bool) -> dict[str, Any]:
    """A ``task_progress`` frame, with a stdout chunk when ``chunk``."""
    frame: dict[str, Any] = {
        "type": "task_progress",
        "task_id": task_id,
        "progress": round(100 * step / (steps + 1)),
    }
    if chunk:
        frame["execution_event"] = {
            "event_type": "stdout",
            "text": f"step {step} of {steps}: simulated output line\n",
            "timestamp": time.time_ns() // 1_000_000,
        }
    return frame


class SimulatedWork:
    """Answers each ``task_assign`` as the task's plan (its ``metadata.soak``) says."""

    def __init__(self, tally: SidecarTally, execution_ms: float) -> None:
        self.tally = tally
        self.execution_ms = execution_ms
        self.running: set[asyncio.Task[None]] = set()

    async def on_frame(self, client: AgentClient, frame: dict[str, Any]) -> None:
        """Start the work of a ``task_assign`` without holding up the connection's reader."""
        if frame.get("type") == "task_assign":
            assert isinstance(client, SoakSidecar)
            work = asyncio.create_task(self.execute(client, frame))
            self.running.add(work)
            work.add_done_callback(self.running.discard)

    async def execute(self, client: SoakSidecar, frame: dict[str, Any]) -> None:
        """Run one assignment; a connection lost meanwhile is counted, not raised."""
        try:
            await self._execute(client, frame)
        except (ConnectionClosed, RuntimeError):
            self.tally.actions["lost_mid_task"] += 1

    async def _execute(self, client: SoakSidecar, frame: dict[str, Any]) -> None:
        plan = frame["metadata"].get("soak") or {}
        kind, first_attempt = plan.get("kind", "ok"), frame["generation"] == 1
        task_id = frame["task_id"]
        if kind == "reject" and first_attempt:
            self.tally.actions["rejected"] += 1
            await client.send({"type": "task_rejected", "task_id": task_id, "reason": "busy"})
            return
        await client.send({"type": "task_accepted", "task_id": task_id})
        steps = int(plan.get("steps", 1))
        pause_s = self.execution_ms / 1000 / (steps + 1)
        for step in range(1, steps + 1):
            await asyncio.sleep(pause_s)
            await client.send(progress(task_id, step, steps, bool(plan.get("chunks"))))
            if first_attempt and kind in ("drop", "recover"):
                self.drop_connection(client, frame, kind)
                return
        await asyncio.sleep(pause_s)
        if kind == "fail" or (kind == "fail_once" and first_attempt):
            await self.report_failure(client, frame, plan.get("via"))
        else:
            await client.send(completion(frame, self.execution_ms))

    def drop_connection(self, client: SoakSidecar, frame: dict[str, Any], kind: str) -> None:
        """Cut the connection like a network failure; the task is settled after reconnecting."""
        if kind == "drop":
            client.after_reconnect = completion(frame, self.execution_ms)
        else:
            client.after_reconnect = {
                "type": "task_recovering",
                "task_id": frame["task_id"],
                "last_status": "working",
            }
        self.tally.actions["dropped_connection"] += 1
        assert client.connection is not None
        client.connection.transport.abort()

    async def report_failure(self, client: SoakSidecar, frame: dict[str, Any], via: Any) -> None:
        """Fail the attempt with ``task_failed``, or as real sidecars do: a failed result."""
        self.tally.actions["failed_attempt"] += 1
        task_id, generation = frame["task_id"], frame["generation"]
        if via == "complete":
            event = {
                "event_type": "error",
                "text": "simulated failure",
                "timestamp": time.time_ns() // 1_000_000,
            }
            await client.send(
                {"type": "task_progress", "task_id": task_id, "execution_event": event}
            )
            result = {"status": "failed", "output": "", "execution_ms": self.execution_ms}
            await client.send(
                {
                    "type": "task_complete",
                    "task_id": task_id,
                    "generation": generation,
                    "result": result,
                }
            )
        else:
            await client.send(
                {
                    "type": "task_failed",
                    "task_id": task_id,
                    "generation": generation,
                    "reason": "simulated failure",
                }
            )


async def run_soak_sidecars(spec_path: Path) -> int:
    """The sidecar worker of the soak."""
    tally = SidecarTally()
    work = SimulatedWork(tally, float(json.loads(spec_path.read_text())["execution_ms"]))
    return await run_sidecars(spec_path, work.on_frame, tally, SoakSidecar, TALLY_INTERVAL_S)


# --- the dashboard subscribers (a subprocess: --dashboards-worker) -----------------------


@dataclass
class DashboardView:
    """One subscriber: its counts and the tasks it has seen but not yet timed."""

    received: int = 0
    dropped: int = 0
    snapshots: int = 0
    disconnects: int = 0
    first_assigned: dict[str, float] = field(default_factory=dict)
    # Tasks that finished before their submit time arrived: (assigned, completed, now).
    unmatched: dict[str, tuple[float | None, float | None, float]] = field(default_factory=dict)


class DashboardTimer:
    """Times every task's first assignment and completion as each subscriber saw them.

    The driver writes ``<task id> <submit time> <kind>`` to stdin for each submit it got
    a reply for; a task is timed when its terminal event and its submit time are both in.
    """

    def __init__(self, views: int) -> None:
        self.views = [DashboardView() for _ in range(views)]
        # Submit time, kind, and how many subscribers have yet to see the task finish.
        self.sent: dict[str, tuple[float, str, int]] = {}
        self.events: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.assign_ms: list[float] = []
        self.complete_ms: defaultdict[str, list[float]] = defaultdict(list)
        self.all_subscribed = asyncio.Event()

    def on_submit_line(self, line: bytes) -> None:
        """A submit time from the driver; times the tasks that were waiting for it."""
        task_id, sent, kind = line.decode().split()
        remaining = len(self.views)
        for view in self.views:
            parked = view.unmatched.pop(task_id, None)
            if parked is not None:
                self.record(parked[0], parked[1], float(sent), kind)
                remaining -= 1
        if remaining:
            self.sent[task_id] = (float(sent), kind, remaining)

    def record(
        self, assigned: float | None, completed: float | None, sent: float, kind: str
    ) -> None:
        """The latencies of one task as one subscriber saw it."""
        if assigned is not None:
            self.assign_ms.append(round((assigned - sent) * 1000, 2))
        if completed is not None:
            self.complete_ms[kind].append(round((completed - sent) * 1000, 2))

    def on_frame(self, view: DashboardView, frame: dict[str, Any], now: float) -> None:
        """Count a frame; time a task when this subscriber sees it finish."""
        kind = str(frame.get("type"))
        if kind == "snapshot":
            view.snapshots += 1
            if all(v.snapshots for v in self.views):
                self.all_subscribed.set()
            return
        if kind == "events_dropped":
            view.dropped += int(frame["count"])
            return
        view.received += 1
        name = str(frame.get("event", kind))
        self.events[name] += 1
        if kind != "task_event":
            return
        task_id = str(frame["task_id"])
        if name == "task_assigned":
            view.first_assigned.setdefault(task_id, now)
        elif name in TERMINAL_EVENTS:
            assigned = view.first_assigned.pop(task_id, None)
            completed = now if name == "task_completed" else None
            entry = self.sent.get(task_id)
            if entry is None:
                view.unmatched[task_id] = (assigned, completed, now)
                return
            self.record(assigned, completed, entry[0], entry[1])
            if entry[2] > 1:
                self.sent[task_id] = (entry[0], entry[1], entry[2] - 1)
            else:
                del self.sent[task_id]

    def forget_old(self, now: float) -> None:
        """Drop what can no longer be matched (its events were dropped): bounded memory."""
        cutoff = now - FORGET_AFTER_S
        self.sent = {task: entry for task, entry in self.sent.items() if entry[0] >= cutoff}
        for view in self.views:
            view.first_assigned = {t: at for t, at in view.first_assigned.items() if at >= cutoff}
            view.unmatched = {t: entry for t, entry in view.unmatched.items() if entry[2] >= cutoff}

    def report(self) -> dict[str, Any]:
        """Cumulative counts, and the latencies timed since the previous report."""
        figures = {
            "received": sum(view.received for view in self.views),
            "dropped": sum(view.dropped for view in self.views),
            "disconnects": sum(view.disconnects for view in self.views),
            "per_dashboard": [[view.received, view.dropped] for view in self.views],
            "events": dict(self.events),
            "errors": dict(self.errors),
            "assign_ms": self.assign_ms,
            "complete_ms": dict(self.complete_ms),
        }
        self.assign_ms, self.complete_ms = [], defaultdict(list)
        return figures

    async def watch(self, view: DashboardView, hub_url: str, token: str) -> None:
        """Subscribe to every topic and keep at it: a lost subscription is counted, then renewed."""
        client = OperatorClient(hub_url, token)
        while True:
            try:
                async for frame in client.watch():
                    self.on_frame(view, frame, time.monotonic())
            except (ConnectionClosed, InvalidHandshake, OSError, AuthenticationError) as exc:
                self.errors[type(exc).__name__] += 1
            view.disconnects += 1
            await asyncio.sleep(1)


async def run_dashboards(spec_path: Path) -> int:
    """The dashboard worker: subscribe, time tasks, report until stopped."""
    spec = json.loads(spec_path.read_text())
    timer = DashboardTimer(int(spec["dashboards"]))
    stop = stop_on_signal_or_eof(timer.on_submit_line)
    watchers = [
        asyncio.create_task(timer.watch(view, spec["url"], spec["token"])) for view in timer.views
    ]
    try:
        await asyncio.wait_for(timer.all_subscribed.wait(), 30)
    except TimeoutError:
        print("failed: not every dashboard got its snapshot within 30 s", flush=True)
        stop.set()
    else:
        print(f"ready {len(watchers)}", flush=True)
    reporter = asyncio.create_task(print_tallies(timer.report, TALLY_INTERVAL_S))
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 30)
        except TimeoutError:
            timer.forget_old(time.monotonic())
    reporter.cancel()
    for watcher in watchers:
        watcher.cancel()
    await asyncio.gather(reporter, *watchers, return_exceptions=True)
    print("tally " + json.dumps(timer.report()), flush=True)
    print("summary " + json.dumps({"unmatched_at_end": len(timer.sent)}), flush=True)
    return 0


# --- the driver --------------------------------------------------------------------------


def plan_task(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """The kind of the next task and the submit fields that carry its plan."""
    kind = rng.choices([name for name, _ in MIX], weights=[share for _, share in MIX])[0]
    plan = {
        "kind": kind,
        "steps": rng.randint(1, 4),
        "chunks": rng.random() < 0.5,
        "via": rng.choice(("failed", "complete")),
    }
    fields: dict[str, Any] = {
        "complexity_tier": "trivial",
        "metadata": {"shell_command": "true", "soak": plan},
    }
    if kind == "fail":
        fields["max_retries"] = 1
    return kind, fields


@dataclass
class Period:
    """Latencies timed during one reporting period (a minute, or the drain)."""

    assign_ms: list[float] = field(default_factory=list)
    complete_ms: list[float] = field(default_factory=list)


class Observer:
    """Everything the driver learns: its own submits and the workers' tallies."""

    def __init__(self, agents_per_worker: list[int]) -> None:
        self.agents_per_worker = agents_per_worker
        self.sidecars: list[dict[str, Any]] = [{} for _ in agents_per_worker]
        self.dashboards: dict[str, Any] = {}
        self.submitted: Counter[str] = Counter()
        self.submit_errors: Counter[str] = Counter()
        self.period = Period()
        self.assign_ms = array("d")
        self.complete_ms: defaultdict[str, array[float]] = defaultdict(lambda: array("d"))

    def sidecar_line(self, index: int) -> Any:
        """The ``on_line`` callback of sidecar worker ``index``."""

        def on_line(word: str, rest: str) -> None:
            if word == "tally":
                self.sidecars[index] = json.loads(rest)

        return on_line

    def dashboard_line(self, word: str, rest: str) -> None:
        """The ``on_line`` callback of the dashboard worker."""
        if word != "tally":
            return
        tally = json.loads(rest)
        self.dashboards = tally
        self.period.assign_ms.extend(tally["assign_ms"])
        self.assign_ms.extend(tally["assign_ms"])
        for kind, values in tally["complete_ms"].items():
            self.period.complete_ms.extend(values)
            self.complete_ms[kind].extend(values)

    def sidecar_counts(self, section: str) -> Counter[str]:
        """One section of the sidecar workers' tallies (``acks``, ``errors`` ...), summed."""
        counts: Counter[str] = Counter()
        for tally in self.sidecars:
            counts.update(tally.get(section, {}))
        return counts

    def sidecar_sum(self, section: str, key: str | None = None) -> int:
        """A counter summed over the sidecar workers (a whole section when ``key`` is None)."""
        counts = self.sidecar_counts(section)
        return sum(counts.values()) if key is None else counts[key]

    def unexpected_disconnects(self) -> int:
        """Sidecar reconnections not caused by a planned drop."""
        total = 0
        for agents, tally in zip(self.agents_per_worker, self.sidecars, strict=True):
            planned = tally.get("actions", {}).get("dropped_connection", 0)
            total += max(0, tally.get("connects", agents) - agents - planned)
        return total

    def totals(self) -> dict[str, int]:
        """Cumulative counters, as one flat dict."""
        dashboards = self.dashboards
        failed_submits = sum(self.submit_errors.values())
        dashboard_errors = dashboards.get("disconnects", 0)
        return {
            "submitted": sum(self.submitted.values()),
            "completed": self.sidecar_sum("acks", "complete"),
            "failed": self.sidecar_sum("acks", "retried") + self.sidecar_sum("acks", "dead_letter"),
            "dead_letter": self.sidecar_sum("acks", "dead_letter"),
            "rejected": self.sidecar_sum("acks", "requeued"),
            "errors": self.sidecar_sum("errors")
            + self.unexpected_disconnects()
            + failed_submits
            + dashboard_errors,
            "events_received": dashboards.get("received", 0),
            "events_dropped": dashboards.get("dropped", 0),
        }

    def open_tasks(self) -> int:
        """Submitted tasks not yet completed or dead-lettered, as the sidecars' acks tell."""
        totals = self.totals()
        return totals["submitted"] - totals["completed"] - totals["dead_letter"]


def ms_percentile(values: list[float], pct: float) -> float | None:
    """A percentile of millisecond values, rounded for display."""
    found = percentile(values, pct)
    return None if found is None else round(found, 1)


class Reporter:
    """Turns the observations into one row per period and prints it."""

    HEADER = (
        f"{'minute':>6} {'submitted':>14} {'completed':>14} {'failed':>11} {'dead-letter':>11} "
        f"{'errors':>8} {'assign p50/p99 ms':>18} {'complete p50/p99 ms':>20} "
        f"{'events rx/dropped':>18} {'open':>5} {'hub RSS':>10} {'hub CPU':>7}"
    )

    def __init__(self, observer: Observer, hub_pid: int, out: Any) -> None:
        self.observer = observer
        self.hub_pid = hub_pid
        self.out = out
        self.previous = observer.totals()
        self.previous_cpu = cpu_seconds(hub_pid) or 0.0
        self.previous_at = time.monotonic()
        self.rows: list[dict[str, Any]] = []
        print(self.HEADER, file=out, flush=True)

    def close_period(self, label: str) -> dict[str, Any]:
        """The row of the period ending now; printed and kept."""
        observer, now = self.observer, time.monotonic()
        totals, period = observer.totals(), observer.period
        observer.period = Period()
        cpu = cpu_seconds(self.hub_pid) or self.previous_cpu
        row: dict[str, Any] = {"minute": label}
        for key in ("submitted", "completed", "failed", "dead_letter", "errors"):
            row[key], row[f"{key}_total"] = totals[key] - self.previous[key], totals[key]
        row.update(
            assign_p50_ms=ms_percentile(period.assign_ms, 50),
            assign_p99_ms=ms_percentile(period.assign_ms, 99),
            complete_p50_ms=ms_percentile(period.complete_ms, 50),
            complete_p99_ms=ms_percentile(period.complete_ms, 99),
            events_received=totals["events_received"] - self.previous["events_received"],
            events_dropped=totals["events_dropped"] - self.previous["events_dropped"],
            open=observer.open_tasks(),
            hub_rss_mib=memory_mib(self.hub_pid, "VmRSS"),
            hub_cpu_percent=round(
                100 * (cpu - self.previous_cpu) / max(now - self.previous_at, 1e-9), 1
            ),
        )
        self.previous, self.previous_cpu, self.previous_at = totals, cpu, now
        self.rows.append(row)
        self.print_row(row)
        return row

    def print_row(self, row: dict[str, Any]) -> None:
        """One fixed-width line."""

        def pair(key: str) -> str:
            return f"{row[key]} ({row[f'{key}_total']})"

        def latency(prefix: str) -> str:
            return f"{row[f'{prefix}_p50_ms']}/{row[f'{prefix}_p99_ms']}"

        print(
            f"{row['minute']:>6} {pair('submitted'):>14} {pair('completed'):>14} "
            f"{pair('failed'):>11} {pair('dead_letter'):>11} {pair('errors'):>8} "
            f"{latency('assign'):>18} {latency('complete'):>20} "
            f"{str(row['events_received']) + '/' + str(row['events_dropped']):>18} "
            f"{row['open']:>5} {str(row['hub_rss_mib']) + ' MiB':>10} {row['hub_cpu_percent']:>6}%",
            file=self.out,
            flush=True,
        )


async def offer_tasks(
    operator: OperatorClient,
    dashboards: Worker,
    observer: Observer,
    rate: float,
    start: float,
    end: float,
    rng: random.Random,
) -> None:
    """Submit at ``rate`` tasks/s from ``start`` until ``end`` (monotonic), at most
    ``HUB_OPERATOR_CAP`` requests in flight; each submit time goes to the dashboards."""
    in_flight = asyncio.Semaphore(HUB_OPERATOR_CAP)
    submits: set[asyncio.Task[None]] = set()

    async def submit(index: int, kind: str, fields: dict[str, Any]) -> None:
        sent = time.monotonic()
        try:
            task = await operator.submit(f"soak task {index} ({kind})", **fields)
        except Exception as exc:  # counted and reported; the soak goes on
            observer.submit_errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
            return
        finally:
            in_flight.release()
        observer.submitted[kind] += 1
        await dashboards.send_line(f"{task['task_id']} {sent:.6f} {kind}")

    index = 0
    while (due := start + index / rate) < end:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        await in_flight.acquire()
        kind, fields = plan_task(rng)
        work = asyncio.create_task(submit(index, kind, fields))
        submits.add(work)
        work.add_done_callback(submits.discard)
        index += 1
    await asyncio.gather(*submits)


async def sample_rss(hub_pid: int, start: float, samples: list[tuple[float, float]]) -> None:
    """The hub's ``VmRSS`` every few seconds, as (seconds since start, MiB)."""
    while True:
        rss = memory_mib(hub_pid, "VmRSS")
        if rss is not None:
            samples.append((round(time.monotonic() - start, 1), rss))
        await asyncio.sleep(RSS_SAMPLE_INTERVAL_S)


def rss_trend(samples: list[tuple[float, float]], slope_limit: float) -> dict[str, Any]:
    """Minimum, maximum and least-squares slope (MiB/min) of RSS after warm-up, and the verdict."""
    after = [(seconds / 60, rss) for seconds, rss in samples if seconds >= WARM_UP_S]
    criterion = f"least-squares slope <= {slope_limit} MiB/min after the first minute"
    if len(after) < 3 or after[-1][0] - after[0][0] < 0.5:
        return {"samples": len(after), "flat": None, "criterion": criterion}
    mean_t = sum(t for t, _ in after) / len(after)
    mean_rss = sum(rss for _, rss in after) / len(after)
    spread = sum((t - mean_t) ** 2 for t, _ in after)
    slope = sum((t - mean_t) * (rss - mean_rss) for t, rss in after) / spread
    return {
        "samples": len(after),
        "min_mib": min(rss for _, rss in after),
        "max_mib": max(rss for _, rss in after),
        "slope_mib_per_min": round(slope, 3),
        "flat": slope <= slope_limit,
        "criterion": criterion,
    }


def log_lines(log: Path, markers: tuple[str, ...]) -> list[str]:
    """Lines of a log containing one of ``markers``."""
    if not log.exists():
        return []
    return [
        line
        for line in log.read_text(errors="replace").splitlines()
        if any(m in line for m in markers)
    ]


def split_agents(agents: list[tuple[str, str]], workers: int) -> list[list[tuple[str, str]]]:
    """The agents dealt round-robin over ``workers`` (none empty)."""
    groups = [agents[index::workers] for index in range(workers)]
    return [group for group in groups if group]


async def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    """Set up, soak, measure and tear down; returns the figures."""
    workdir = Path(tempfile.mkdtemp(prefix="agentcom-soak-", dir=args.workdir))
    db = workdir / "hub.db"
    children = Children()
    script = str(Path(__file__).resolve())
    out = sys.stderr if args.json else sys.stdout
    try:
        agents, admin = make_tokens(db, args.agents)
        viewer = make_token(db, "soak-dashboard", "viewer")
        env = {"AGENTCOM_LOG_LEVEL": "WARNING", **os.environ}
        env.update(AGENTCOM_DB=str(db), AGENTCOM_HOST="127.0.0.1", AGENTCOM_PORT="0")
        command = [sys.executable, "-m", "agentcom.cli", "serve"]
        hub = await children.start_hub(command, workdir / "hub.log", env)

        groups = split_agents(agents, args.sidecar_workers)
        observer = Observer([len(group) for group in groups])
        workers = []
        for index, group in enumerate(groups):
            spec = workdir / f"sidecars-{index}.json"
            spec.write_text(
                json.dumps({"url": hub.ws_url, "agents": group, "execution_ms": args.exec_ms})
            )
            workers.append(
                await children.start_worker(
                    f"sidecar worker {index}",
                    [sys.executable, script, "--sidecars", "--spec", str(spec)],
                    workdir / f"sidecars-{index}.log",
                    observer.sidecar_line(index),
                )
            )
        spec = workdir / "dashboards.json"
        spec.write_text(
            json.dumps({"url": hub.http_url, "token": viewer, "dashboards": args.dashboards})
        )
        dashboards = await children.start_worker(
            "dashboard worker",
            [sys.executable, script, "--dashboards-worker", "--spec", str(spec)],
            workdir / "dashboards.log",
            observer.dashboard_line,
        )
        for worker in [*workers, dashboards]:
            await worker.wait_ready(90)
        print(
            f"agentcom {__version__} ({source_revision()}) soak on {os.cpu_count()} CPUs: "
            f"{args.agents} agents in {len(workers)} workers, {args.dashboards} dashboards, "
            f"{args.rate} tasks/s for {args.minutes} min; hub pid {hub.process.pid}, "
            f"workdir {workdir}",
            file=out,
            flush=True,
        )
        figures = await soak(args, hub, admin, observer, dashboards, out)
        pids = {"sidecars": [w.process.pid for w in workers], "dashboards": dashboards.process.pid}
        figures["sidecar_workers"] = [await worker.finish() for worker in workers]
        figures["dashboard_worker"] = await dashboards.finish()
        (figures["hub_exit_code"],) = await children.stop_hubs()
        figures["hub_log_errors"] = log_lines(
            workdir / "hub.log", ("ERROR", "CRITICAL", "Traceback")
        )
        figures["hub_log_warnings"] = len(log_lines(workdir / "hub.log", ("WARNING",)))
        figures["pids"] = pids
        return summarize(args, observer, figures)
    finally:
        await children.stop_all()
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


async def soak(
    args: argparse.Namespace,
    hub: Hub,
    admin: str,
    observer: Observer,
    dashboards: Worker,
    out: Any,
) -> dict[str, Any]:
    """Offer the load, report each minute, drain; the figures read while the hub runs."""
    hub_pid = hub.process.pid
    rss: list[tuple[float, float]] = []
    operator = OperatorClient(hub.http_url, admin)
    hub_exit = asyncio.create_task(hub.process.wait())
    background: list[asyncio.Task[Any]] = [hub_exit]

    async def pause(seconds: float) -> None:
        # A soak against a hub that is gone measures nothing: stop at once.
        if (await asyncio.wait([hub_exit], timeout=max(0.0, seconds)))[0]:
            raise RuntimeError(
                f"the hub exited with code {hub_exit.result()} during the soak; stderr tail:\n"
                + log_tail(hub.log)
            )

    try:
        await operator.connect()
        await wait_for_idle_agents(operator, args.agents, timeout_s=60)
        reporter = Reporter(observer, hub_pid, out)
        duration = args.minutes * 60
        start = time.monotonic()
        cpu_before = {"hub": cpu_seconds(hub_pid), "machine": machine_busy_seconds()}
        background.append(asyncio.create_task(sample_rss(hub_pid, start, rss)))
        offering = asyncio.create_task(
            offer_tasks(
                operator, dashboards, observer, args.rate, start, start + duration,
                random.Random(args.seed),
            )
        )  # fmt: skip
        background.append(offering)
        minute = 0
        while minute * 60 < duration:
            minute += 1
            await pause(start + min(minute * 60, duration) - time.monotonic())
            reporter.close_period(str(minute))
        await offering
        load_s = time.monotonic() - start
        cpu_after = {"hub": cpu_seconds(hub_pid), "machine": machine_busy_seconds()}
        drain_deadline = time.monotonic() + args.drain_timeout
        while observer.open_tasks() > 0 and time.monotonic() < drain_deadline:
            await pause(0.25)
        reporter.close_period("drain")
        stats = await operator.request("stats")
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await operator.close()
    return {
        "rows": reporter.rows,
        "rss_samples": rss,
        "load_s": round(load_s, 1),
        "cpu_before": cpu_before,
        "cpu_after": cpu_after,
        "hub_stats": stats,
        "hub_metrics": await asyncio.to_thread(hub_metrics, hub.http_url),
        "hub_peak_rss_mib": memory_mib(hub_pid, "VmHWM"),
        "hub_rss_end_mib": memory_mib(hub_pid, "VmRSS"),
    }


def latency_figures(values: list[float] | array[float]) -> dict[str, Any]:
    """n, p50, p99 and max of millisecond values."""
    ordered = list(values)
    return {
        "n": len(ordered),
        "p50_ms": ms_percentile(ordered, 50),
        "p99_ms": ms_percentile(ordered, 99),
        "max_ms": max(ordered, default=None),
    }


def summarize(
    args: argparse.Namespace, observer: Observer, figures: dict[str, Any]
) -> dict[str, Any]:
    """The summary and the checks of what must hold."""
    totals = observer.totals()
    by_status = figures["hub_stats"]["by_status"]
    planned_dead = observer.submitted["fail"]
    submitted = totals["submitted"]
    open_at_end = sum(by_status.get(status, 0) for status in ("queued", "assigned", "working"))
    load_s = figures["load_s"]
    hub_cpu = figures["cpu_after"]["hub"] - figures["cpu_before"]["hub"]
    machine = figures["cpu_after"]["machine"] - figures["cpu_before"]["machine"]
    trend = rss_trend(figures["rss_samples"], args.rss_slope_limit)
    p99s = [row["complete_p99_ms"] for row in figures["rows"] if row["complete_p99_ms"] is not None]
    checks = {
        "every task completed or dead-lettered as planned": by_status.get("completed", 0)
        == submitted - planned_dead
        and by_status.get("dead_letter", 0) == planned_dead
        and open_at_end == 0,
        "no errors": totals["errors"] == 0,
        "no dashboard events dropped": totals["events_dropped"] == 0,
        f"submit->complete p99 <= {args.p99_limit_ms:g} ms every minute": bool(p99s)
        and max(p99s) <= args.p99_limit_ms,
        "hub exited 0 and logged no error": figures["hub_exit_code"] == 0
        and not figures["hub_log_errors"],
        "RSS flat after warm-up": trend["flat"] is not False,
    }
    return {
        "agentcom_version": __version__,
        "source_revision": source_revision(),
        "cpus": os.cpu_count(),
        "config": {
            "minutes": args.minutes,
            "agents": args.agents,
            "sidecar_workers": args.sidecar_workers,
            "dashboards": args.dashboards,
            "rate_per_s": args.rate,
            "execution_ms": args.exec_ms,
            "seed": args.seed,
        },
        "minutes": figures["rows"][:-1],
        "drain": figures["rows"][-1],
        "submitted": submitted,
        "submitted_by_kind": dict(observer.submitted),
        "achieved_rate_per_s": round(submitted / max(load_s, 1e-9), 1),
        "submit_errors": dict(observer.submit_errors),
        "hub_by_status": by_status,
        "expected": {"completed": submitted - planned_dead, "dead_letter": planned_dead},
        "totals": totals,
        "unexpected_sidecar_disconnects": observer.unexpected_disconnects(),
        "sidecar_errors": dict(observer.sidecar_counts("errors")),
        "sidecar_actions": dict(observer.sidecar_counts("actions")),
        "sidecar_frames_received": dict(observer.sidecar_counts("frames")),
        "sidecar_client_failures": [
            failure
            for worker in figures["sidecar_workers"]
            for failure in worker.get("failures", [])
        ],
        "dashboard_errors": observer.dashboards.get("errors", {}),
        "dashboard_per_subscriber": observer.dashboards.get("per_dashboard", []),
        "submit_to_assign": latency_figures(observer.assign_ms),
        "submit_to_complete": latency_figures(
            [value for values in observer.complete_ms.values() for value in values]
        ),
        "submit_to_complete_by_kind": {
            kind: latency_figures(values) for kind, values in sorted(observer.complete_ms.items())
        },
        "progress_coalesced_by_hub": figures["hub_stats"].get("progress_dropped"),
        "store_commits": figures["hub_metrics"].get("agentcom_store_commits_total"),
        "hub_cpu_percent": round(100 * hub_cpu / max(load_s, 1e-9), 1),
        "machine_cpu_percent": round(100 * machine / max(load_s, 1e-9), 1),
        "load_average_at_end": [round(value, 2) for value in os.getloadavg()],
        "hub_peak_rss_mib": figures["hub_peak_rss_mib"],
        "hub_rss_end_mib": figures["hub_rss_end_mib"],
        "rss_trend": trend,
        "rss_samples": figures["rss_samples"],
        "hub_exit_code": figures["hub_exit_code"],
        "hub_log_errors": figures["hub_log_errors"][:10],
        "hub_log_warnings": figures["hub_log_warnings"],
        "dashboard_unmatched_at_end": figures["dashboard_worker"].get("unmatched_at_end"),
        "checks": checks,
        "ok": all(checks.values()),
    }


def print_summary(summary: dict[str, Any]) -> None:
    """The human-readable end of the report."""

    def latency(data: dict[str, Any]) -> str:
        return (
            f"p50 {data['p50_ms']} ms  p99 {data['p99_ms']} ms  max {data['max_ms']} ms  "
            f"(n={data['n']})"
        )

    totals, expected, status = summary["totals"], summary["expected"], summary["hub_by_status"]
    other = {key: count for key, count in status.items() if key not in ("completed", "dead_letter")}
    print("summary")
    print(
        f"  submitted           {summary['submitted']} ({summary['achieved_rate_per_s']}/s): "
        + ", ".join(
            f"{kind} {count}" for kind, count in sorted(summary["submitted_by_kind"].items())
        )
    )
    print(
        f"  hub outcome         completed {status.get('completed', 0)} (expected "
        f"{expected['completed']}), dead letter {status.get('dead_letter', 0)} (expected "
        f"{expected['dead_letter']}), other {other}"
    )
    print(
        f"  attempts            failed {totals['failed']}, rejected {totals['rejected']}, "
        f"sidecar actions {summary['sidecar_actions']}"
    )
    print(
        f"  errors              {totals['errors']}: "
        f"sidecars {summary['sidecar_errors']}, "
        f"unexpected sidecar disconnects {summary['unexpected_sidecar_disconnects']}, "
        f"submit errors {summary['submit_errors']}, dashboard {summary['dashboard_errors']}"
    )
    print(f"  submit -> assign    {latency(summary['submit_to_assign'])}")
    print(f"  submit -> complete  {latency(summary['submit_to_complete'])}")
    for kind, data in summary["submit_to_complete_by_kind"].items():
        print(f"    {kind:<17} {latency(data)}")
    print(
        f"  dashboard events    {totals['events_received']} received, {totals['events_dropped']} "
        f"dropped; per subscriber [received, dropped] {summary['dashboard_per_subscriber']}"
    )
    print(
        f"  hub                 CPU {summary['hub_cpu_percent']}% of one core under load (machine "
        f"{summary['machine_cpu_percent']}% of one core); peak RSS {summary['hub_peak_rss_mib']} "
        f"MiB, at end {summary['hub_rss_end_mib']} MiB; store commits {summary['store_commits']}; "
        f"progress coalesced {summary['progress_coalesced_by_hub']}"
    )
    print(
        f"  hub stop            exit code {summary['hub_exit_code']}; log: "
        f"{len(summary['hub_log_errors'])} errors, {summary['hub_log_warnings']} warnings"
    )
    for line in summary["hub_log_errors"][:3]:
        print(f"    {line[:160]}")
    trend = summary["rss_trend"]
    if trend["flat"] is None:
        print(
            f"  RSS after warm-up   not enough samples ({trend['samples']}): run 2 minutes or more"
        )
        verdict = "n/a"
    else:
        print(
            f"  RSS after warm-up   min {trend['min_mib']} MiB, max {trend['max_mib']} MiB, slope "
            f"{trend['slope_mib_per_min']:+} MiB/min ({trend['samples']} samples)"
        )
        verdict = "yes" if trend["flat"] else "no"
    print(f"RSS flat after warm-up: {verdict} (criterion: {trend['criterion']})")
    for check, held in summary["checks"].items():
        print(f"  [{'ok' if held else 'FAILED'}] {check}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; the hidden options select the subprocess modes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=10, help="how long to offer load")
    parser.add_argument("--agents", type=int, default=200, help="simulated sidecars")
    parser.add_argument("--dashboards", type=int, default=5, help="/ws/dashboard subscribers")
    parser.add_argument("--rate", type=float, default=100, help="tasks offered per second")
    parser.add_argument(
        "--sidecar-workers", type=int, default=2, help="processes the sidecars are spread over"
    )
    parser.add_argument(
        "--exec-ms", type=float, default=100, help="simulated execution time of a task"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the task mix")
    parser.add_argument(
        "--drain-timeout", type=float, default=60, help="seconds to wait for open tasks at the end"
    )
    parser.add_argument(
        "--rss-slope-limit",
        type=float,
        default=1.0,
        help="largest RSS slope after warm-up (MiB/min) still called flat",
    )
    parser.add_argument(
        "--p99-limit-ms",
        type=float,
        default=2000,
        help="largest per-minute submit->complete p99 that passes",
    )
    parser.add_argument("--workdir", help="parent of the temporary directory (default: system tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--sidecars", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dashboards-worker", dest="dashboard_worker", action="store_true",
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0:
        parser.error("--minutes and --rate must be positive")
    if args.agents < 1 or args.dashboards < 1 or args.sidecar_workers < 1:
        parser.error("--agents, --dashboards and --sidecar-workers must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the soak (or one of its subprocess modes); 0 when every check held."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.sidecars:
        return asyncio.run(run_soak_sidecars(Path(args.spec)))
    if args.dashboard_worker:
        return asyncio.run(run_dashboards(Path(args.spec)))
    try:
        summary = asyncio.run(run_until_signalled(run_soak(args)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; every started process was stopped", file=sys.stderr)
        return 130
    except RuntimeError as error:  # a child that did not start: its stderr tail is in the message
        print(f"soak: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
