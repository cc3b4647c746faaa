"""A demo sidecar: it takes every task the hub assigns and pretends to run it.

For each ``task_assign`` it sends ``task_accepted``, two ``task_progress`` frames that
stream a line of output each, then ``task_complete`` with execution metadata (model
``demo``, word counts as tokens, zero cost). It never executes anything, whatever the
task says. A ``task_cancelled`` push makes it drop the task.

Usage (the hub must know the token: ``agentcom token create worker-1``)::

    python examples/demo_sidecar.py --hub ws://127.0.0.1:4000/ws --agent-id worker-1 --token ac_...

``--hub``, ``--agent-id`` and ``--token`` default to the environment variables
``AGENTCOM_HUB_URL``, ``AGENTCOM_AGENT_ID`` and ``AGENTCOM_AGENT_TOKEN``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from typing import Any

from websockets.exceptions import ConnectionClosed

from agentcom.client import AgentClient, AuthenticationError

logger = logging.getLogger("demo_sidecar")

STEP_DELAY_S = 0.5  # pause between the simulated steps, so progress is visible


class DemoSidecar:
    """Answers the hub's pushes; each assigned task runs as its own asyncio task."""

    def __init__(self) -> None:
        self.running: dict[str, asyncio.Task[None]] = {}

    async def on_frame(self, client: AgentClient, frame: dict[str, Any]) -> None:
        """Called by :meth:`AgentClient.run` for every frame the hub sends."""
        kind = frame.get("type")
        if kind == "task_assign":
            task_id = frame["task_id"]
            if task_id not in self.running:  # the same assignment twice is one job
                job = asyncio.create_task(self.run_task(client, frame))
                self.running[task_id] = job
                job.add_done_callback(lambda _: self.forget(task_id))
        elif kind == "task_cancelled":
            running = self.running.get(frame["task_id"])
            if running is not None:
                running.cancel()
                self.forget(frame["task_id"])
            logger.info("task %s cancelled by an operator; forgotten", frame["task_id"])
        elif kind == "error":
            logger.warning("hub error: %s", frame)
        else:
            logger.debug("hub says: %s", frame)

    def forget(self, task_id: str) -> None:
        """Drop a task from the running ones (it finished or was cancelled)."""
        self.running.pop(task_id, None)

    async def run_task(self, client: AgentClient, assign: dict[str, Any]) -> None:
        """Accept, stream two lines of output, complete. Nothing is executed."""
        task_id, generation = assign["task_id"], assign["generation"]
        decision = assign.get("routing_decision") or {}
        logger.info(
            "task %s assigned (generation %d, routed to %s): %s",
            task_id, generation, decision.get("target_type"), assign["description"][:60],
        )  # fmt: skip
        started = time.monotonic()
        lines = [f"pretending to work on: {assign['description'][:200]}", "done, nothing was run"]
        try:
            await client.send({"type": "task_accepted", "task_id": task_id})
            for number, line in enumerate(lines, start=1):
                await asyncio.sleep(STEP_DELAY_S)
                event = {"event_type": "stdout", "text": line, "timestamp": int(time.time() * 1000)}
                await client.send(
                    {"type": "task_progress", "task_id": task_id,
                     "progress": 50 * number, "execution_event": event}
                )  # fmt: skip
            tokens_in = len(assign["description"].split())
            tokens_out = sum(len(line.split()) for line in lines)
            result = {
                "status": "success",
                "output": "\n".join(lines),
                "model_used": "demo",
                "tokens_in": tokens_in,
                "tokens_out": tokens_out,
                "estimated_cost_usd": 0,
                "equivalent_claude_cost_usd": 0,
                "execution_ms": round((time.monotonic() - started) * 1000),
            }
            await client.send(
                {"type": "task_complete", "task_id": task_id, "generation": generation,
                 "result": result, "tokens_used": tokens_in + tokens_out}
            )  # fmt: skip
            logger.info("task %s complete", task_id)
        except (ConnectionClosed, RuntimeError):
            # The hub keeps the task for this agent for a grace period, then requeues it.
            logger.warning("connection lost while running %s; giving it up", task_id)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A demo agentcom sidecar that runs nothing.")
    parser.add_argument(
        "--hub", default=os.environ.get("AGENTCOM_HUB_URL", "ws://127.0.0.1:4000/ws"),
        help="the hub's agent endpoint (default $AGENTCOM_HUB_URL or ws://127.0.0.1:4000/ws)",
    )  # fmt: skip
    parser.add_argument("--agent-id", default=os.environ.get("AGENTCOM_AGENT_ID"),
                        help="this agent's id (default $AGENTCOM_AGENT_ID)")  # fmt: skip
    parser.add_argument("--token", default=os.environ.get("AGENTCOM_AGENT_TOKEN"),
                        help="its agent token (default $AGENTCOM_AGENT_TOKEN)")  # fmt: skip
    parser.add_argument("--capability", action="append", default=[], metavar="CAP",
                        help="a capability to advertise (repeatable)")  # fmt: skip
    arguments = parser.parse_args()
    if not arguments.agent_id or not arguments.token:
        parser.error("--agent-id and --token are required (or AGENTCOM_AGENT_ID/_TOKEN)")
    return arguments


async def main() -> int:
    """Run until SIGINT or SIGTERM (exit status 0); 1 when the client gives up."""
    arguments = _arguments()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    client = AgentClient(
        arguments.hub, arguments.agent_id, arguments.token, capabilities=arguments.capability
    )
    sidecar = DemoSidecar()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    logger.info("connecting to %s as %s", arguments.hub, arguments.agent_id)
    # run() reconnects for ever; a signal must also interrupt a reconnect delay.
    runner = asyncio.create_task(client.run(sidecar.on_frame))
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    for job in list(sidecar.running.values()):
        job.cancel()
    if runner in done:  # run() only returns by raising: a refused token, a bad URL ...
        try:
            runner.result()
        except AuthenticationError as error:
            logger.error("the hub refused this agent: %s", error)
        except Exception as error:
            logger.error("stopped: %s", error)
        return 1
    await client.close()
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
