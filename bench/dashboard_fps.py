"""Dashboard frame-rate benchmark: the page in headless Chromium while the hub streams events.

Usage (from the repository root, with the project's virtualenv)::

    python bench/dashboard_fps.py                  # 1,000 events/s for 20 s, then the figures
    python bench/dashboard_fps.py --rate 2000
    python bench/dashboard_fps.py --seconds 60 --json > fps.json
    python bench/dashboard_fps.py --screenshot /tmp/dashboard.png

What runs, on loopback only:

- the hub: ``agentcom serve`` with its SQLite database in a temporary directory, and the
  per-agent progress limit (``AGENTCOM_PROGRESS_RATE`` / ``AGENTCOM_PROGRESS_BURST``)
  raised to at least twice what each simulated sidecar sends, so the hub coalesces
  nothing (values set in the environment win; other ``AGENTCOM_*`` variables reach the
  hub too);
- ``--agents`` simulated sidecars (:class:`~agentcom.client.AgentClient`) in one
  subprocess: each takes a task, accepts it, sends ``task_progress`` frames that carry an
  ``execution_event`` stdout line at an even pace for ``--task-seconds``, completes it and
  takes the next one. Each such frame becomes two dashboard events (``task_progress`` and
  ``execution_progress``), so the sidecars send ``--rate`` / 2 frames a second in all;
  the task transitions add a few events more;
- Debian's Chromium (``/usr/bin/chromium``, headless, driven by Playwright for Python)
  showing ``/dashboard`` with an admin token, scrolled to the live output, which follows
  its tail.

The page gets a small probe before its own scripts run (``add_init_script``): a
``requestAnimationFrame`` loop that counts frames and records the gaps between them, a
count of the messages its ``/ws/dashboard`` socket receives (and of the counts in the
``events_dropped`` frames among them), the main thread's long tasks, four times a second
the age of the newest output line on screen (each line ends with the time its sidecar sent
it), and once a second whether the live output is in the viewport. The probe measures two
windows in the same page and the same process: ``--idle-seconds`` with the sidecars
connected and nothing running (the baseline), then, after ``--warmup`` seconds of load,
``--seconds`` under load.

It prints, for each window: dashboard events received by the page per second, frames per
second (mean), the gaps between frames (p50, p99, longest) and how many exceeded 50 ms,
long tasks, the age of the newest line on screen (p50, max), events the hub dropped for
the page (``events_dropped``) and the page's own ``N events dropped`` text, progress
frames the hub's rate limit coalesced (should be 0); the load/idle frame-rate ratio; the
rate the sidecars offered; and the CPU used by the hub, the sidecars, Chromium (all its
processes, and the renderer's main thread, where the page's scripts, layout and paint
run), Playwright's driver, this process, the whole machine and other processes, so a
reader knows whether the machine was busy (100% = one core).

``--profile-page PATH`` records the page's JavaScript CPU profile over the window under
load (a ``.cpuprofile`` DevTools opens) and prints the functions with the most self time;
``--trace PATH`` records a Chromium performance trace of that window (style, layout, paint
and scripts; DevTools' Performance panel loads it). Both slow the page: the frame rates of
such a run are not the page's.

Every process the benchmark starts is stopped when it ends, fails or is interrupted
(SIGINT/SIGTERM); on Linux the children also get SIGTERM if this process dies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import logging
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    BenchSidecar,
    Children,
    SidecarTally,
    Worker,
    cpu_seconds,
    hub_metrics,
    machine_busy_seconds,
    make_tokens,
    percentile,
    run_sidecars,
    run_until_signalled,
    source_revision,
    thread_cpu_seconds,
    wait_for_idle_agents,
)
from websockets.exceptions import ConnectionClosed

from agentcom import __version__
from agentcom.client import AgentClient, OperatorClient

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
VIEWPORT = {"width": 1280, "height": 900}
TASK: dict[str, Any] = {"complexity_tier": "trivial", "metadata": {"shell_command": "true"}}
TALLY_INTERVAL_S = 0.5
SLOW_FRAME_MS = 50.0
DEFAULT_PROGRESS_RATE = 50.0  # the hub's defaults (docs/configuration.md)
DEFAULT_PROGRESS_BURST = 200

# Installed before the page's own scripts. Counts animation frames and the gaps between
# them, /ws/dashboard messages and dropped-event counts, long tasks, and samples the age of
# the newest output line (its text ends with "t=<ms since the epoch>" set by the sidecar).
PAGE_PROBE = """
(() => {
  const probe = {
    measuring: false, began: 0, frames: 0, last: null, gaps: [],
    messages: 0, lines: 0, dropped: 0, longTasks: 0, longTaskMs: 0, ages: [],
    ticks: 0, samples: 0, logVisible: 0,
  };
  const tick = (now) => {
    if (probe.measuring) {
      if (probe.last !== null) probe.gaps.push(now - probe.last);
      probe.last = now;
      probe.frames += 1;
    }
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);

  const onMessage = (message) => {
    if (!probe.measuring || typeof message.data !== "string") return;
    if (message.data.includes('"events_dropped"')) {
      try { probe.dropped += JSON.parse(message.data).count || 0; } catch { /* not ours */ }
      return;
    }
    probe.messages += 1;
    if (message.data.includes('"execution_progress"')) probe.lines += 1;
  };
  const NativeSocket = window.WebSocket;
  window.WebSocket = class extends NativeSocket {
    constructor(url, protocols) {
      super(url, protocols);
      if (String(url).endsWith("/ws/dashboard")) this.addEventListener("message", onMessage);
    }
  };

  if (PerformanceObserver.supportedEntryTypes.includes("longtask")) {
    new PerformanceObserver((list) => {
      if (!probe.measuring) return;
      for (const entry of list.getEntries()) {
        probe.longTasks += 1;
        probe.longTaskMs += entry.duration;
      }
    }).observe({ type: "longtask" });
  }

  setInterval(() => {
    if (!probe.measuring) return;
    probe.ticks += 1;
    if (probe.ticks % 4 === 1) {
      // Once a second: reading the box forces a layout.
      const box = document.getElementById("log").getBoundingClientRect();
      probe.samples += 1;
      if (box.bottom > 0 && box.top < innerHeight && box.height > 0) probe.logVisible += 1;
    }
    const line = document.querySelector("#log > .line:last-child > .text");
    const sent = line && /t=(\\d+)$/.exec(line.textContent);
    if (sent) probe.ages.push(Date.now() - Number(sent[1]));
  }, 250);

  window.__dashboardProbe = {
    begin() {
      document.getElementById("output-panel").scrollIntoView({ block: "start" });
      Object.assign(probe, {
        measuring: true, began: performance.now(), frames: 0, last: null, gaps: [],
        messages: 0, lines: 0, dropped: 0, longTasks: 0, longTaskMs: 0, ages: [],
        ticks: 0, samples: 0, logVisible: 0,
      });
    },
    end() {
      probe.measuring = false;
      const shown = document.getElementById("dropped");
      return {
        elapsed_ms: performance.now() - probe.began,
        frames: probe.frames, gaps: probe.gaps, messages: probe.messages,
        lines: probe.lines, dropped: probe.dropped, long_tasks: probe.longTasks,
        long_task_ms: probe.longTaskMs, ages: probe.ages,
        dropped_shown: shown && !shown.hidden ? shown.textContent : null,
        log_lines_drawn: document.querySelectorAll("#log > .line:not(.empty)").length,
        log_visible_share: probe.samples ? probe.logVisible / probe.samples : null,
      };
    },
  };
})();
"""


# --- sidecars (a subprocess: --sidecars) -----------------------------------------------


class StreamTally(SidecarTally):
    """The sidecars' counters, stamped with the monotonic clock (shared by the processes)."""

    def report(self) -> dict[str, Any]:
        return {**super().report(), "at": time.monotonic()}


class Streamer:
    """Answers each ``task_assign`` by streaming output lines for a while, then completing."""

    def __init__(self, tally: SidecarTally, frames_per_s: float, task_s: float) -> None:
        self.tally = tally
        self.interval_s = 1 / frames_per_s
        self.task_s = task_s
        self.running: set[asyncio.Task[None]] = set()

    async def on_frame(self, client: AgentClient, frame: dict[str, Any]) -> None:
        """Start the task without holding up the connection's reader."""
        if frame.get("type") == "task_assign":
            work = asyncio.create_task(self.execute(client, frame))
            self.running.add(work)
            work.add_done_callback(self.running.discard)

    async def execute(self, client: AgentClient, frame: dict[str, Any]) -> None:
        """Run one task; a connection lost meanwhile is counted, not raised."""
        try:
            await self._execute(client, frame)
        except (ConnectionClosed, RuntimeError):
            self.tally.actions["lost_mid_task"] += 1

    async def _execute(self, client: AgentClient, frame: dict[str, Any]) -> None:
        task_id = frame["task_id"]
        await client.send({"type": "task_accepted", "task_id": task_id})
        started = time.monotonic()
        # A random phase, so that the agents' frames do not leave in step.
        due = started + random.uniform(0, self.interval_s)
        line = 0
        while due < started + self.task_s:
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > 0.5:
                due = now  # far behind (the machine is saturated): do not send a burst
            line += 1
            sent_ms = time.time_ns() // 1_000_000
            event = {
                "event_type": "stdout",
                "text": f"[{client.agent_id}] step {line}: compiled module {line % 97} in "
                f"{line % 13 + 1} ms t={sent_ms}\n",
                "timestamp": sent_ms,
            }
            await client.send(
                {
                    "type": "task_progress",
                    "task_id": task_id,
                    "progress": min(99, round(100 * (now - started) / self.task_s)),
                    "execution_event": event,
                }
            )
            self.tally.actions["progress_sent"] += 1
            due += self.interval_s
        result = {
            "status": "success",
            "output": f"{line} lines",
            "model_used": "bench-stream",
            "tokens_in": 40,
            "tokens_out": line,
            "estimated_cost_usd": 0.0,
            "equivalent_claude_cost_usd": 0.0002,
            "execution_ms": round((time.monotonic() - started) * 1000, 1),
        }
        await client.send(
            {
                "type": "task_complete",
                "task_id": task_id,
                "generation": frame["generation"],
                "result": result,
            }
        )
        self.tally.actions["completed"] += 1


async def stream_until_stopped(spec_path: Path) -> int:
    """The sidecar worker."""
    spec = json.loads(spec_path.read_text())
    tally = StreamTally()
    streamer = Streamer(tally, spec["frames_per_s_per_agent"], spec["task_s"])
    code = await run_sidecars(
        spec_path, streamer.on_frame, tally, BenchSidecar, tally_interval_s=TALLY_INTERVAL_S
    )
    for work in list(streamer.running):
        work.cancel()
    await asyncio.gather(*streamer.running, return_exceptions=True)
    return code


# --- CPU of the processes involved -----------------------------------------------------


def parent_pids() -> dict[int, int]:
    """Every live process's parent, from ``/proc``."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    return parents


def descendants(root: int) -> set[int]:
    """The processes below ``root`` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for pid, parent in parent_pids().items():
        children.setdefault(parent, []).append(pid)
    found, stack = set(), [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def command_line(pid: int) -> str:
    """A process's command line, arguments separated by spaces ("" when gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@dataclass
class CpuSample:
    """CPU seconds used so far by each process of interest, and the whole machine."""

    at: float
    machine: float | None
    processes: dict[int, float]
    renderer_main: dict[int, float]


def sample_cpu() -> CpuSample:
    """CPU so far of this process and everything below it, and of the whole machine."""
    processes = {}
    renderer_main = {}
    for pid in {os.getpid(), *descendants(os.getpid())}:
        seconds = cpu_seconds(pid)
        if seconds is None:
            continue
        processes[pid] = seconds
        if "--type=renderer" in command_line(pid):
            renderer_main[pid] = thread_cpu_seconds(pid)["loop_thread"]
    return CpuSample(time.monotonic(), machine_busy_seconds(), processes, renderer_main)


def cpu_use(before: CpuSample, after: CpuSample, hub_pid: int, sidecars_pid: int) -> dict[str, Any]:
    """CPU used between two samples, by group of processes, in % of one core."""
    wall = max(after.at - before.at, 1e-9)

    def used(pids: set[int], samples: tuple[dict[int, float], dict[int, float]]) -> float:
        start, end = samples
        return sum(end[pid] - start.get(pid, 0.0) for pid in pids if pid in end)

    everything = set(after.processes)
    chromium = {pid for pid in everything if "chromium" in command_line(pid)}
    groups = {
        "hub": {hub_pid},
        "sidecars": {sidecars_pid},
        "chromium": chromium,
        "bench": {os.getpid()},
        "playwright": everything - chromium - {hub_pid, sidecars_pid, os.getpid()},
    }
    seconds = {
        name: used(pids, (before.processes, after.processes)) for name, pids in groups.items()
    }
    # Chromium keeps spare renderers; the page's is the busy one.
    seconds["renderer_main_thread"] = max(
        (used({pid}, (before.renderer_main, after.renderer_main)) for pid in after.renderer_main),
        default=0.0,
    )
    percent = {name: round(100 * value / wall, 1) for name, value in seconds.items()}
    ours = sum(seconds[name] for name in groups)
    if before.machine is not None and after.machine is not None:
        machine = after.machine - before.machine
        percent["machine"] = round(100 * machine / wall, 1)
        percent["other_processes"] = round(100 * max(0.0, machine - ours) / wall, 1)
    percent["renderers"] = len(after.renderer_main)
    return percent


# --- the driver ------------------------------------------------------------------------


@dataclass
class Offered:
    """The sidecars' ``tally`` lines: (monotonic time, progress frames sent so far)."""

    points: list[tuple[float, int]] = field(default_factory=list)

    def on_line(self, word: str, rest: str) -> None:
        if word == "tally":
            report = json.loads(rest)
            self.points.append((report["at"], int(report["actions"].get("progress_sent", 0))))

    def frames_per_s(self, start: float, end: float) -> float | None:
        """Progress frames per second between the first and last tally inside the window."""
        inside = [point for point in self.points if start <= point[0] <= end]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def window_figures(probe: dict[str, Any], dropped_by_hub: float | None) -> dict[str, Any]:
    """What the page's probe saw in one window, as reported figures."""
    seconds = max(probe["elapsed_ms"] / 1000, 1e-9)
    gaps = probe["gaps"]
    ages = probe["ages"]

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    return {
        "seconds": round(seconds, 2),
        "events_per_s": round(probe["messages"] / seconds, 1),
        "events": probe["messages"],
        "output_lines": probe["lines"],
        "fps": round(probe["frames"] / seconds, 1),
        "frames": probe["frames"],
        "frame_gap_p50_ms": ms(percentile(gaps, 50)),
        "frame_gap_p99_ms": ms(percentile(gaps, 99)),
        "frame_gap_max_ms": ms(max(gaps, default=None)),
        "frames_over_50_ms": sum(1 for gap in gaps if gap > SLOW_FRAME_MS),
        "long_tasks": probe["long_tasks"],
        "long_task_ms": round(probe["long_task_ms"]),
        "newest_line_age_p50_ms": ms(percentile(ages, 50)),
        "newest_line_age_max_ms": ms(max(ages, default=None)),
        "log_lines_drawn": probe["log_lines_drawn"],
        "log_visible_share": probe["log_visible_share"],
        "events_dropped": probe["dropped"],
        "events_dropped_shown": probe["dropped_shown"],
        "progress_coalesced_by_hub": dropped_by_hub,
    }


def top_functions(profile: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """The functions of a V8 CPU profile with the most self time, in ms."""
    nodes = {node["id"]: node for node in profile["nodes"]}
    self_us: dict[tuple[str, str], float] = {}
    for node_id, delta in zip(profile["samples"], profile["timeDeltas"], strict=True):
        frame = nodes[node_id]["callFrame"]
        where = ""
        if frame["url"]:
            where = f"{frame['url'].rpartition('/')[2]}:{frame['lineNumber'] + 1}"
        key = (frame["functionName"] or "(anonymous)", where)
        self_us[key] = self_us.get(key, 0.0) + delta
    ranked = sorted(self_us.items(), key=lambda item: item[1], reverse=True)[:limit]
    return [{"function": f, "where": w, "self_ms": round(us / 1000, 1)} for (f, w), us in ranked]


async def profiled(page: Any, path: str | None, window: Any) -> Any:
    """Run ``window`` with the page's JavaScript profiled into ``path`` (when given)."""
    if path is None:
        return await window, None
    session = await page.context.new_cdp_session(page)
    await session.send("Profiler.enable")
    await session.send("Profiler.setSamplingInterval", {"interval": 1000})
    await session.send("Profiler.start")
    try:
        result = await window
    finally:
        profile = (await session.send("Profiler.stop"))["profile"]
        await session.detach()
    Path(path).write_text(json.dumps(profile))
    return result, top_functions(profile, 15)


async def measure(
    page: Any, seconds: float, hub: Any, sidecars: Worker, hub_url: str
) -> tuple[dict[str, Any], tuple[float, float]]:
    """One measuring window in the page; returns its figures and its monotonic bounds."""
    coalesced_before = (await asyncio.to_thread(hub_metrics, hub_url)).get(
        "agentcom_progress_dropped_total"
    )
    cpu_before = sample_cpu()
    await page.evaluate("window.__dashboardProbe.begin()")
    start = time.monotonic()
    await asyncio.sleep(seconds)
    probe = await page.evaluate("window.__dashboardProbe.end()")
    end = time.monotonic()
    cpu_after = sample_cpu()
    coalesced_after = (await asyncio.to_thread(hub_metrics, hub_url)).get(
        "agentcom_progress_dropped_total"
    )
    coalesced = None
    if coalesced_before is not None and coalesced_after is not None:
        coalesced = coalesced_after - coalesced_before
    figures = window_figures(probe, coalesced)
    figures["cpu_percent"] = cpu_use(cpu_before, cpu_after, hub.process.pid, sidecars.process.pid)
    return figures, (start, end)


async def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Set up, run, measure and tear down; returns the figures."""
    from playwright.async_api import async_playwright

    workdir = Path(tempfile.mkdtemp(prefix="agentcom-bench-", dir=args.workdir))
    db = workdir / "hub.db"
    children = Children()
    script = str(Path(__file__).resolve())
    frames_per_s = args.rate / 2
    per_agent = frames_per_s / args.agents
    env = dict(os.environ)
    env.setdefault("AGENTCOM_PROGRESS_RATE", str(max(DEFAULT_PROGRESS_RATE, 2 * per_agent)))
    env.setdefault(
        "AGENTCOM_PROGRESS_BURST", str(max(DEFAULT_PROGRESS_BURST, math.ceil(4 * per_agent)))
    )
    try:
        agents, admin = make_tokens(db, args.agents)
        command = [sys.executable, "-m", "agentcom.cli", "serve", "--host", "127.0.0.1"]
        command += ["--port", "0", "--db", str(db), "--log-level", "WARNING"]
        hub = await children.start_hub(command, workdir / "hub.log", env=env)
        spec = workdir / "sidecars.json"
        spec.write_text(
            json.dumps(
                {
                    "url": hub.ws_url,
                    "agents": agents,
                    "frames_per_s_per_agent": per_agent,
                    "task_s": args.task_seconds,
                }
            )
        )
        offered = Offered()
        sidecars = await children.start_worker(
            "sidecars",
            [sys.executable, script, "--sidecars", "--spec", str(spec)],
            workdir / "sidecars.log",
            on_line=offered.on_line,
        )
        await sidecars.wait_ready(90)
        operator = OperatorClient(hub.http_url, admin)
        await operator.connect()
        try:
            await wait_for_idle_agents(operator, args.agents)
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path=str(CHROMIUM), args=LAUNCH_ARGS
                )
                try:
                    figures = await drive(args, browser, operator, hub, sidecars, offered, admin)
                finally:
                    await browser.close()
            stats = await operator.request("stats")
        finally:
            await operator.close()
        figures["tasks_completed"] = stats["by_status"].get("completed", 0)
        figures["sidecars"] = await sidecars.finish()
        figures["progress_rate_setting"] = env["AGENTCOM_PROGRESS_RATE"]
        figures["progress_burst_setting"] = env["AGENTCOM_PROGRESS_BURST"]
        return figures
    finally:
        await children.stop_all()
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


async def drive(
    args: argparse.Namespace,
    browser: Any,
    operator: OperatorClient,
    hub: Any,
    sidecars: Worker,
    offered: Offered,
    token: str,
) -> dict[str, Any]:
    """Open the page, measure it idle, start the load, measure it under load."""
    from playwright.async_api import expect

    context = await browser.new_context(viewport=VIEWPORT)
    page_errors: list[str] = []
    try:
        await context.add_init_script(PAGE_PROBE)
        page = await context.new_page()
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        await page.goto(f"{hub.http_url}/dashboard#token={token}")
        await expect(page.locator("#connection")).to_have_text("Live", timeout=30_000)
        await asyncio.sleep(1)  # the first stats and task lookups
        say(args, f"idle: measuring for {args.idle_seconds:g} s")
        idle, _ = await measure(page, args.idle_seconds, hub, sidecars, hub.http_url)

        # Enough tasks that no agent runs dry before the window ends; the rest stay queued.
        rounds = math.ceil((args.warmup + args.seconds + 5) / args.task_seconds) + 1
        total = args.agents * rounds
        say(args, f"load: submitting {total} tasks, warming up for {args.warmup:g} s")
        for start in range(0, total, 32):
            batch = range(start, min(total, start + 32))
            await asyncio.gather(
                *(operator.submit(f"bench stream {n + 1}/{total}", **TASK) for n in batch)
            )
        await asyncio.sleep(args.warmup)
        say(args, f"load: measuring for {args.seconds:g} s")
        if args.trace:
            await browser.start_tracing(page=page, path=args.trace)
        try:
            (loaded, (start_s, end_s)), hot = await profiled(
                page, args.profile_page, measure(page, args.seconds, hub, sidecars, hub.http_url)
            )
        finally:
            if args.trace:
                await browser.stop_tracing()
        sent = offered.frames_per_s(start_s, end_s)
        loaded["offered_progress_frames_per_s"] = None if sent is None else round(sent, 1)
        loaded["offered_events_per_s"] = None if sent is None else round(2 * sent, 1)
        if args.screenshot:
            await page.screenshot(path=args.screenshot)
    finally:
        await context.close()
    return {
        "agentcom_version": __version__,
        "source_revision": source_revision(),
        "cpus": os.cpu_count(),
        "chromium": browser.version,
        "target_events_per_s": args.rate,
        "agents": args.agents,
        "task_seconds": args.task_seconds,
        "idle": idle,
        "load": loaded,
        "fps_ratio_load_to_idle": round(loaded["fps"] / idle["fps"], 3) if idle["fps"] else None,
        "page_errors": page_errors[:5],
        "page_profile": {"path": args.profile_page, "top_self_time": hot} if hot else None,
        "load_average_at_end": [round(value, 2) for value in os.getloadavg()],
    }


def say(args: argparse.Namespace, text: str) -> None:
    """A progress line on stderr (unless --quiet)."""
    if not args.quiet:
        print(f"  {text}", file=sys.stderr, flush=True)


def share(value: float | None) -> str:
    """A fraction as a percentage ("-" when unknown)."""
    return "-" if value is None else f"{100 * value:.0f}% of samples"


def print_text(figures: dict[str, Any]) -> None:
    """The human-readable report."""
    idle, load = figures["idle"], figures["load"]
    print(
        f"agentcom {figures['agentcom_version']} ({figures['source_revision']}) dashboard "
        f"frame-rate bench on {figures['cpus']} CPUs, headless Chromium {figures['chromium']}: "
        f"target {figures['target_events_per_s']:g} events/s from {figures['agents']} agents "
        f"(tasks of {figures['task_seconds']:g} s; hub progress limit "
        f"{figures['progress_rate_setting']}/s, burst {figures['progress_burst_setting']})"
    )
    print(
        f"  offered by sidecars {load['offered_events_per_s']} events/s "
        f"({load['offered_progress_frames_per_s']} progress frames/s)"
    )
    rows = [
        ("window", lambda w: f"{w['seconds']} s"),
        ("events/s to page", lambda w: f"{w['events_per_s']}"),
        ("output lines", lambda w: f"{w['output_lines']}"),
        ("frames/s (mean)", lambda w: f"{w['fps']}"),
        (
            "frame gap p50/p99/max",
            lambda w: f"{w['frame_gap_p50_ms']}/{w['frame_gap_p99_ms']}/{w['frame_gap_max_ms']} ms",
        ),
        ("frames > 50 ms", lambda w: f"{w['frames_over_50_ms']}"),
        ("long tasks", lambda w: f"{w['long_tasks']} ({w['long_task_ms']} ms)"),
        (
            "newest line age p50/max",
            lambda w: f"{w['newest_line_age_p50_ms']}/{w['newest_line_age_max_ms']} ms",
        ),
        (
            "events dropped",
            lambda w: f"{w['events_dropped']} (page shows: {w['events_dropped_shown'] or 'none'})",
        ),
        ("progress coalesced", lambda w: f"{w['progress_coalesced_by_hub']}"),
        ("output on screen", lambda w: share(w["log_visible_share"])),
    ]
    cells = [(name, show(idle), show(load)) for name, show in rows]
    idle_width = max(len(cell[1]) for cell in cells) + 4
    load_width = max(len(cell[2]) for cell in cells) + 4
    print(f"  {'':24}{'idle':>{idle_width}}{'load':>{load_width}}")
    for name, at_idle, under_load in cells:
        print(f"  {name:24}{at_idle:>{idle_width}}{under_load:>{load_width}}")
    print(f"  frame-rate ratio load/idle {figures['fps_ratio_load_to_idle']}")
    print("  CPU, % of one core:")
    for window in ("idle", "load"):
        cpu = figures[window]["cpu_percent"]
        print(
            f"    {window:5} hub {cpu['hub']}  sidecars {cpu['sidecars']}  chromium "
            f"{cpu['chromium']} (renderer main thread {cpu['renderer_main_thread']})  "
            f"Playwright's driver {cpu['playwright']}  this process {cpu['bench']}  "
            f"machine {cpu.get('machine')}  "
            f"other processes {cpu.get('other_processes')}"
        )
    other = figures["load"]["cpu_percent"].get("other_processes")
    if other is not None and other > 20:
        print("  WARNING: the machine was busy with other work; these figures are noisy")
    print(
        f"  tasks completed {figures['tasks_completed']}; load average at end "
        f"{figures['load_average_at_end']}"
    )
    sidecars = figures.get("sidecars") or {}
    print(
        f"  sidecars: errors {sidecars.get('errors')}, connections {sidecars.get('connects')} "
        f"for {figures['agents']} agents (more: some were lost and made again)"
    )
    if figures["page_errors"]:
        print(f"  page errors         {figures['page_errors']}")
    if figures["page_profile"]:
        profile = figures["page_profile"]
        print(f"  page profile (load window) in {profile['path']}; top self time:")
        for row in profile["top_self_time"]:
            print(f"    {row['self_ms']:>9} ms  {row['function']}  {row['where']}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; the hidden options select the sidecar subprocess."""
    parser = argparse.ArgumentParser(
        description="Frame rate of the dashboard page in headless Chromium (/usr/bin/chromium) "
        "while the hub streams execution output to it, against the same page idle.",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=1000,
        help="dashboard events/s to offer (default 1000); each progress frame a sidecar "
        "sends is two events, so the sidecars send half as many frames",
    )
    parser.add_argument(
        "--seconds", type=float, default=20, help="length of the window under load (default 20)"
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=10,
        help="length of the idle baseline window, measured first (default 10)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        help="seconds of load before the window under load starts (default: --task-seconds "
        "+ 2, so every agent has finished a task and the panels above the output have their "
        "final size)",
    )
    parser.add_argument(
        "--agents",
        type=int,
        default=20,
        help="simulated sidecars sharing the load, one task each at a time (default 20)",
    )
    parser.add_argument(
        "--task-seconds",
        type=float,
        default=5,
        help="how long each task streams before it completes (default 5)",
    )
    parser.add_argument("--screenshot", metavar="PATH", help="save the page at the end as PNG")
    parser.add_argument(
        "--profile-page",
        metavar="PATH",
        help="record the page's JavaScript CPU profile during the window under load into PATH "
        "(a .cpuprofile DevTools opens) and print the functions with the most self time; "
        "the profiler slows the page, so that run's frame rates are not comparable",
    )
    parser.add_argument(
        "--trace",
        metavar="PATH",
        help="record a Chromium performance trace of the window under load into PATH (JSON "
        "the Performance panel of DevTools loads); it too slows the page",
    )
    parser.add_argument("--workdir", help="parent of the temporary directory (default: system tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--sidecars", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or args.idle_seconds <= 0 or args.task_seconds <= 0:
        parser.error("--rate, --seconds, --idle-seconds and --task-seconds must be positive")
    if args.warmup is None:
        args.warmup = args.task_seconds + 2
    if args.agents < 1 or args.warmup < 0:
        parser.error("--agents must be at least 1 and --warmup not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or its sidecar subprocess); 0 when it ran to the end."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.sidecars:
        return asyncio.run(stream_until_stopped(Path(args.spec)))
    if not CHROMIUM.exists():
        print(
            f"dashboard_fps bench: Debian's chromium is not installed at {CHROMIUM} "
            "(apt-get install -y chromium)",
            file=sys.stderr,
        )
        return 2
    if importlib.util.find_spec("playwright") is None:
        print("dashboard_fps bench: Playwright for Python is not installed", file=sys.stderr)
        return 2
    try:
        figures = asyncio.run(run_until_signalled(run_benchmark(args)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; every started process was stopped", file=sys.stderr)
        return 130
    except RuntimeError as error:  # a child that did not start: its stderr tail is in the message
        print(f"dashboard_fps bench: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print_text(figures)
    return 1 if figures["page_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
