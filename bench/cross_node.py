"""How long a task submitted on one hub node takes to reach an idle agent of another.

Usage (from the repository root, with the project's virtualenv; PostgreSQL and Redis on
this machine)::

    python bench/cross_node.py --pg postgresql://postgres@127.0.0.1:5432/postgres
    python bench/cross_node.py --pg URL --tasks 500 --rate 50 --json

Two hub nodes share a fresh PostgreSQL database (dropped at the end) and a Redis cluster
of the run's own. One agent, in this process, runs every task it is given at once (the
tasks are ``trivial`` shell commands: they run on the sidecar, with no routing target
to wait for). An
operator submits ``--tasks`` tasks at ``--rate`` a second (low load: the agent is idle
when each arrives), and each task's latency is the time from its submit to its
``task_assign`` reaching the agent, on this process's clock. Three cases, in the same run:

- ``same node``: the agent on the node the tasks are submitted to (the baseline);
- ``other node``: the agent on the other node; the task reaches it by a wake-up (the
  submitting node's event, through Redis, makes the other node re-read it);
- ``other node, no Redis``: as above with Redis unreachable: only the slow poll
  (``queue_poll_s``, 2 s by default) carries the task over.

Figures are printed (p50, p99, max; the ratio of each case's p99 to the baseline's), not
asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import Children, latency_summary, make_token
from _lifecycle_nodes import check_redis, hub_command
from _postgres import ScratchDatabase

from agentcom.client import AgentClient, OperatorClient

CASES = ("same node", "other node", "other node, no Redis")


def unreachable_redis() -> str:
    """A Redis URL on a loopback port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


async def run_case(args: argparse.Namespace, case: str, workdir: Path) -> dict[str, Any]:
    """One case on a database and cluster of its own: the latencies of its tasks."""
    database = ScratchDatabase(args.pg)
    children = Children()
    try:
        agent_token = make_token(database.url, "cross-agent", "agent")
        admin_token = make_token(database.url, "cross-admin", "admin")
        redis_url = unreachable_redis() if case.endswith("no Redis") else args.redis
        cluster = f"bench-{secrets.token_hex(6)}"
        hubs = []
        for node in range(2):
            flags = ["--pubsub", redis_url, "--cluster", cluster, "--node-id", f"node{node}"]
            command = hub_command(__file__, database.url, None, flags)
            log = workdir / f"hub-{case.replace(' ', '_').replace(',', '')}-node{node}.log"
            hubs.append(await children.start_hub(command, log, name=f"hub node{node}"))
        agent_hub = hubs[0] if case == "same node" else hubs[1]
        return await measure(args, agent_hub.ws_url, hubs[0].http_url, agent_token, admin_token)
    finally:
        await children.stop_all()
        database.drop()


async def measure(
    args: argparse.Namespace, agent_url: str, operator_url: str, agent_token: str, admin: str
) -> dict[str, Any]:
    """Submit paced tasks through ``operator_url``; time each until the agent has it."""
    submitted: dict[str, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()
    agent = AgentClient(agent_url, "cross-agent", agent_token, heartbeat_s=None)
    await agent.connect()

    async def work() -> None:
        while True:
            frame = await agent.receive()
            if frame.get("type") != "task_assign":
                continue
            received = time.perf_counter()
            task_id = frame["task_id"]
            await agent.send({"type": "task_accepted", "task_id": task_id})
            await agent.send({"type": "task_complete", "task_id": task_id,
                              "generation": frame["generation"],
                              "result": {"status": "success", "output": "done"}})  # fmt: skip
            while task_id not in submitted:  # the submit's reply may come after the push
                await asyncio.sleep(0)
            latencies.append(received - submitted[task_id])
            if len(latencies) == args.tasks:
                done.set()

    worker = asyncio.create_task(work())
    try:
        async with OperatorClient(operator_url, admin) as operator:
            interval = 1 / args.rate
            started = time.perf_counter()
            for number in range(args.tasks):
                await asyncio.sleep(max(0.0, started + number * interval - time.perf_counter()))
                sent = time.perf_counter()
                task = await operator.submit(
                    f"cross-node {number}",
                    complexity_tier="trivial",
                    metadata={"shell_command": "true"},
                )
                submitted[task["task_id"]] = sent
            await asyncio.wait_for(done.wait(), timeout=60)
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        await agent.close()
    return latency_summary(latencies)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    check_redis(args.redis)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="agentcom-cross-node-") as workdir:
        for case in CASES:
            if not args.quiet:
                print(f"running: {case}", file=sys.stderr)
            results[case] = await run_case(args, case, Path(workdir))
    baseline = results["same node"]["p99_ms"]
    for summary in results.values():
        summary["p99_over_same_node"] = (
            round(summary["p99_ms"] / baseline, 2) if baseline and summary["p99_ms"] else None
        )
    return {"tasks": args.tasks, "rate_per_s": args.rate, "cases": results}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--pg", required=True, help="PostgreSQL server URL (CREATEDB needed)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis URL")
    parser.add_argument("--tasks", type=int, default=200, help="tasks per case")
    parser.add_argument("--rate", type=float, default=20.0, help="submits per second")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"submit on node0 -> task_assign at the agent, {args.tasks} tasks at {args.rate}/s")
    for case, summary in report["cases"].items():
        print(
            f"  {case:22} p50 {summary['p50_ms']:8.2f} ms  p99 {summary['p99_ms']:8.2f} ms  "
            f"max {summary['max_ms']:8.2f} ms  (p99 x{summary['p99_over_same_node']} of same node)"
        )


if __name__ == "__main__":
    main()
