"""A demo sidecar: it takes every task the hub assigns and pretends to run it.

For each ``task_assign`` it sends ``task_accepted``, two ``task_progress`` frames that
stream a line of output each, then ``task_complete`` with execution metadata (model
``demo``, word counts as tokens, zero cost). It never executes anything, whatever the
task says. A ``task_cancelled`` push makes it drop the task.

Like real sidecars it keeps running a task when the connection drops (a hub restart, a
network cut): it reconnects, and the acceptance and the completion, with the generation
the task was assigned with, go to the hub on the new connection (progress lines produced
while disconnected are dropped). When it stops (SIGINT, SIGTERM) with a task unfinished,
it gives the task back with ``task_rejected``, which requeues it at once without counting
a failure against the task's retries.

Usage (the hub must know the token: ``agentcom token create worker-1``)::

    python examples/demo_sidecar.py --hub ws://127.0.0.1:4000/ws --agent-id worker-1 --token ac_...

``--hub``, ``--agent-id`` and ``--token`` default to the environment variables
``AGENTCOM_HUB_URL``, ``AGENTCOM_AGENT_ID`` and ``AGENTCOM_AGENT_TOKEN``; ``--step-delay``
sets the pause before each line of output (default 0.5 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from typing import Any

from websockets.exceptions import ConnectionClosed

from agentcom.client import AgentClient, AuthenticationError

logger = logging.getLogger("demo_sidecar")

GIVE_BACK_TIMEOUT_S = 5.0  # how long stopping waits for the hub to take a task back


class DemoSidecar:
    """Answers the hub's pushes; each assigned task runs as its own asyncio task.

    Args:
        step_delay_s: pause before each line of output, so progress is visible.
    """

    def __init__(self, step_delay_s: float = 0.5) -> None:
        self.step_delay_s = step_delay_s
        self.running: dict[str, tuple[int, asyncio.Task[None]]] = {}  # id -> generation, job
        self.stopping = False
        self.declined: list[str] = []  # assigned while stopping: to give back unstarted

    async def on_frame(self, client: AgentClient, frame: dict[str, Any]) -> None:
        """Called by :meth:`AgentClient.run` for every frame the hub sends."""
        kind = frame.get("type")
        if kind == "task_assign":
            self.start(client, frame)
        elif kind == "task_cancelled":
            running = self.running.pop(frame["task_id"], None)
            if running is not None:
                running[1].cancel()
            logger.info("task %s cancelled by an operator; forgotten", frame["task_id"])
        elif kind == "error":
            logger.warning("hub error: %s", frame)
        else:
            logger.debug("hub says: %s", frame)

    def start(self, client: AgentClient, assign: dict[str, Any]) -> None:
        """Run an assigned task, unless this very assignment already runs.

        A new generation of a task that still runs here means the hub took the old
        attempt back and gave the task out again: the old attempt stops (its completion
        would be refused) and the new one starts.
        """
        task_id, generation = assign["task_id"], assign["generation"]
        if self.stopping:
            self.declined.append(task_id)
            return
        running = self.running.get(task_id)
        if running is not None:
            if running[0] == generation:
                return
            running[1].cancel()
        job = asyncio.create_task(self.run_task(client, assign))
        self.running[task_id] = (generation, job)
        job.add_done_callback(lambda _: self.forget(task_id, job))

    def forget(self, task_id: str, job: asyncio.Task[None]) -> None:
        """Drop a finished or cancelled job (not a newer one for the same task)."""
        if task_id in self.running and self.running[task_id][1] is job:
            del self.running[task_id]

    async def run_task(self, client: AgentClient, assign: dict[str, Any]) -> None:
        """Accept, stream two lines of output, complete. Nothing is executed.

        A dropped connection does not stop the task: :meth:`AgentClient.deliver` hands
        the acceptance and the completion to the hub once the client has reconnected.
        """
        task_id, generation = assign["task_id"], assign["generation"]
        decision = assign.get("routing_decision") or {}
        logger.info(
            "task %s assigned (generation %d, routed to %s): %s",
            task_id, generation, decision.get("target_type"), assign["description"][:60],
        )  # fmt: skip
        started = time.monotonic()
        lines = [f"pretending to work on: {assign['description'][:200]}", "done, nothing was run"]
        answer = await client.deliver({"type": "task_accepted", "task_id": task_id})
        if answer["type"] == "error":
            logger.warning("the hub took task %s back: %s", task_id, answer["error"])
            return
        for number, line in enumerate(lines, start=1):
            await asyncio.sleep(self.step_delay_s)
            event = {"event_type": "stdout", "text": line, "timestamp": int(time.time() * 1000)}
            await progress(
                client,
                {"type": "task_progress", "task_id": task_id,
                 "progress": 50 * number, "execution_event": event},
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
        answer = await client.deliver(
            {"type": "task_complete", "task_id": task_id, "generation": generation,
             "result": result, "tokens_used": tokens_in + tokens_out}
        )  # fmt: skip
        if answer["type"] == "error":  # e.g. the hub requeued it while we were away
            logger.warning("the hub refused the completion of %s: %s", task_id, answer["error"])
        else:
            logger.info("task %s complete", task_id)

    async def give_back(self, client: AgentClient) -> None:
        """Stop every running task and hand it back to the hub (``task_rejected``).

        ``task_rejected`` requeues the task at once, and, unlike ``task_failed``, does
        not count the stop against the task's retries: stopping a sidecar is no fault of
        the task. Without a connection the hub keeps the task for its grace period, then
        requeues it. A task assigned meanwhile is given back too, unstarted.
        """
        self.stopping = True
        jobs = dict(self.running)
        for _, job in jobs.values():
            job.cancel()
        await asyncio.gather(*(job for _, job in jobs.values()), return_exceptions=True)
        self.declined.extend(jobs)
        while self.declined:
            task_id = self.declined.pop(0)
            if not client.identified:
                logger.warning(
                    "stopping while disconnected: the hub requeues %s after its grace period",
                    task_id,
                )
                continue
            rejection = {"type": "task_rejected", "task_id": task_id, "reason": "sidecar stopping"}
            try:
                async with asyncio.timeout(GIVE_BACK_TIMEOUT_S):
                    answer = await client.deliver(rejection)
            except (TimeoutError, ConnectionError):
                logger.warning("could not give %s back; the hub requeues it later", task_id)
                continue
            outcome = answer.get("status") or answer.get("error")
            logger.info("stopping: gave task %s back to the hub (%s)", task_id, outcome)


async def progress(client: AgentClient, frame: dict[str, Any]) -> None:
    """Send a ``task_progress``; while disconnected it is dropped, as real sidecars do."""
    if not client.identified:
        return
    with contextlib.suppress(ConnectionClosed, RuntimeError):  # it just dropped
        await client.send(frame)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A demo agentcom sidecar that runs nothing.")
    parser.add_argument(
        "--hub", default=os.environ.get("AGENTCOM_HUB_URL", "ws://127.0.0.1:4000/ws"),
        help="the hub's agent endpoint (default $AGENTCOM_HUB_URL or ws://127.0.0.1:4000/ws);"
        " the operators' http://HOST:PORT is understood too",
    )  # fmt: skip
    parser.add_argument("--agent-id", default=os.environ.get("AGENTCOM_AGENT_ID"),
                        help="this agent's id (default $AGENTCOM_AGENT_ID)")  # fmt: skip
    parser.add_argument("--token", default=os.environ.get("AGENTCOM_AGENT_TOKEN"),
                        help="its agent token (default $AGENTCOM_AGENT_TOKEN)")  # fmt: skip
    parser.add_argument("--capability", action="append", default=[], metavar="CAP",
                        help="a capability to advertise (repeatable)")  # fmt: skip
    parser.add_argument("--step-delay", type=float, default=0.5, metavar="SECONDS",
                        help="pause before each line of output (default 0.5)")  # fmt: skip
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
    sidecar = DemoSidecar(arguments.step_delay)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    logger.info("connecting to %s as %s", client.url, arguments.agent_id)
    # run() reconnects for ever; a signal must also interrupt a reconnect delay.
    runner = asyncio.create_task(client.run(sidecar.on_frame))
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    await sidecar.give_back(client)  # needs the runner, which reads the hub's answers
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
