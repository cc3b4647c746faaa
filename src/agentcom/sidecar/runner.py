"""The sidecar's loop: stay connected, take one task at a time, run it, report it.

Life of a task (each step recorded in the state directory before the hub hears of it):

1. ``task_assign`` → the task is written to the state directory, then ``task_accepted``
   is sent and the executor chosen by the routing decision starts. A second task while
   one is held is answered with ``task_rejected`` (the hub requeues it at once).
2. The executor streams ``task_progress`` and returns an outcome; the ``task_complete``
   frame (``result.status`` ``success`` or ``failed``) is recorded, then delivered with
   :meth:`AgentClient.deliver`, which sends it again on every new connection until the
   hub acknowledges it (``task_ack``) or refuses it (stale generation, not assigned):
   only then is the task forgotten.
3. ``task_cancelled`` stops the executor at once (process group killed, HTTP request
   aborted) and forgets the task.

After every reconnect the held task is reconciled (:mod:`agentcom.sidecar.reconcile`):
``state_report`` names the attempt, and a ``state_report_ack`` saying ``abort`` stops and
forgets it as ``task_cancelled`` does; ``continue``, or a hub that does not know the
frame, changes nothing.

After a crash, the restarted sidecar finds the task in the state directory: a finished
one's completion is delivered as in step 2; an unfinished one's leftover process group is
killed and ``task_recovering`` is sent after every identify until the hub answers
``task_reassign`` (forget it) or ``task_continue`` (run it again under the new generation).

This module is longer than most because these steps share one piece of state, the task
held and its record, and each must see what the others did to it; the executors, the
state directory and the reconciliation already live in modules of their own.

The module is a little over the usual size because the loop's steps share the state
directory and the connection; each executor, the reconcile step and the logs live
elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from ssl import SSLContext
from typing import Any

from websockets.exceptions import ConnectionClosed

from agentcom.client import AgentClient
from agentcom.protocol.common import TargetType
from agentcom.sidecar.config import SidecarConfig
from agentcom.sidecar.connection import SidecarClient
from agentcom.sidecar.execution import EXECUTORS, completion_frame, execute
from agentcom.sidecar.job import Assignment, Executor, Job, Outcome
from agentcom.sidecar.logs import log_event
from agentcom.sidecar.progress import ProgressStream
from agentcom.sidecar.reconcile import read_ack, refuses_state_report, state_report
from agentcom.sidecar.resources import ResourceMeter
from agentcom.sidecar.state import HeldTask, StateDir, kill_leftover_group, process_identity

__all__ = ["SidecarRunner"]

logger = logging.getLogger(__name__)

Frame = dict[str, Any]

_SETTLED_REFUSALS = ("task_complete_failed", "task_fail_failed", "not_assigned")


class SidecarRunner:
    """Holds at most one task; answers the hub's frames; runs executors.

    Args:
        config: the sidecar's settings.
        state: the state directory.
        executors: the executor of each routing target (default :data:`EXECUTORS`).
        tls: the TLS context for a ``wss://`` hub (None: the system's certificates).
    """

    def __init__(
        self,
        config: SidecarConfig,
        state: StateDir,
        executors: Mapping[TargetType, Executor] | None = None,
        tls: SSLContext | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.executors = dict(EXECUTORS if executors is None else executors)
        self.client = SidecarClient(config, self._identified, tls)
        self.held: HeldTask | None = state.load()
        self.recovering = self.held is not None and self.held.phase != "finished"
        self.stopping = False
        self._job: asyncio.Task[None] | None = None
        self._delivery: asyncio.Task[None] | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._free = asyncio.Event()
        self._report_now = asyncio.Event()
        self._hurry = asyncio.Event()
        self._reported: tuple[str, int] | None = None  # the attempt the last report named
        if self.held is None:
            self._free.set()
        self._handlers: dict[str, Callable[[Frame], Awaitable[None]]] = {
            "task_assign": self._assigned,
            "task_cancelled": self._cancelled,
            "task_continue": self._continue,
            "task_reassign": self._reassigned,
            "state_report_ack": self._reconciled,
            "error": self._refused,
        }
        if self.recovering:
            self._kill_leftover()

    def _kill_leftover(self) -> None:
        """Kill the process group a crashed run left behind: the hub runs the task again."""
        held = self.held
        if (
            held is not None
            and held.process_group
            and kill_leftover_group(held.process_group, held.process_identity)
        ):
            log_event(
                logger, "leftover_killed",
                "killed process group %d, left running by task %s before the restart",
                held.process_group, held.task_id, task_id=held.task_id,
            )  # fmt: skip

    # --- connection -----------------------------------------------------------------

    async def _identified(self) -> None:
        """After each identify (the client logs it): what the hub must hear at once."""
        self._report_now.set()
        if self.config.ollama_url:
            await self._send({"type": "ollama_report", "ollama_url": self.config.ollama_url})
        held = self.held
        if held is not None and self.recovering:
            log_event(
                logger, "recovering", "asking the hub about task %s, held before a restart",
                held.task_id, task_id=held.task_id,
            )  # fmt: skip
            await self._send(
                {"type": "task_recovering", "task_id": held.task_id, "last_status": held.phase,
                 "description": held.assign.get("description"),
                 "metadata": held.assign.get("metadata")}
            )  # fmt: skip
        elif held is not None:
            await self._report_state(held)

    async def _report_state(self, held: HeldTask) -> None:
        """Tell the hub which attempt this sidecar holds; it answers continue or abort."""
        report = state_report(held)
        self._reported = (held.task_id, held.generation)
        log_event(
            logger, "state_reported", "telling the hub task %s (generation %d) is %s",
            held.task_id, held.generation, report["status"],
            task_id=held.task_id, generation=held.generation, status=report["status"],
        )  # fmt: skip
        await self._send(report)

    async def _send(self, frame: Frame) -> bool:
        """Send one frame; False when the connection is down (a reconnect resends)."""
        try:
            await self.client.send(frame)
        except (ConnectionClosed, RuntimeError, OSError):
            return False
        return True

    async def on_frame(self, client: AgentClient, frame: Frame) -> None:
        """Called for every frame the hub sends."""
        handler = self._handlers.get(str(frame.get("type")))
        if handler is not None:
            await handler(frame)

    # --- hub frames -----------------------------------------------------------------

    async def _assigned(self, frame: Frame) -> None:
        try:
            assignment = Assignment.from_frame(frame)
        except (KeyError, TypeError, ValueError):
            logger.warning("ignored a task_assign without a task id or generation: %.200s", frame)
            return
        held = self.held
        if held is not None and held.task_id == assignment.task_id:
            if held.assign.get("generation") == assignment.generation:
                return  # the same assignment again (a resend): one job
            # The hub took the task back (recovery, timeout) and gave it to us again:
            # the new generation replaces the old attempt.
            await self._stop_job()
            self._forget()
        if self.held is not None or self.stopping:
            busy = f"busy with task {self.held.task_id}" if self.held is not None else ""
            reason = "stopping" if self.stopping else busy
            await self._send(
                {"type": "task_rejected", "task_id": assignment.task_id, "reason": reason}
            )
            return
        self._hold(HeldTask(assign=frame))
        log_event(
            logger, "assigned", "task %s assigned (generation %d, %s, %s): %.80s",
            assignment.task_id, assignment.generation,
            assignment.target.value if assignment.target else "no routing decision",
            assignment.tier.value if assignment.tier else "no tier", assignment.description,
            task_id=assignment.task_id, generation=assignment.generation,
            target=assignment.target.value if assignment.target else None,
        )  # fmt: skip
        accepted = {"type": "task_accepted", "task_id": assignment.task_id}
        # Delivered across a reconnect: a task never accepted would go back to the queue.
        self._accepting = asyncio.create_task(self._deliver_quietly(accepted))
        self._start(assignment)

    def _hold(self, held: HeldTask) -> None:
        self.state.save(held)
        self.held = held
        self._free.clear()

    def _forget(self) -> None:
        for pending in (self._delivery, self._accepting):
            if pending is not None and pending is not asyncio.current_task():
                pending.cancel()
        self._delivery = self._accepting = None
        self.state.clear()
        self.held = None
        self.recovering = False
        self._free.set()

    async def _cancelled(self, frame: Frame) -> None:
        held = self.held
        if held is None or held.task_id != frame.get("task_id"):
            return
        await self._stop_job()
        self._forget()
        log_event(
            logger, "cancelled", "task %s cancelled by an operator; stopped",
            held.task_id, task_id=held.task_id,
        )  # fmt: skip

    async def _continue(self, frame: Frame) -> None:
        held = self.held
        if not self.recovering or held is None or held.task_id != frame.get("task_id"):
            return
        generation = frame.get("generation")
        held.assign["generation"] = generation
        held.phase = "accepting"
        held.process_group = held.process_identity = None
        self._hold(held)
        self.recovering = False
        log_event(
            logger, "continue", "the hub says continue task %s (generation %s); running it again",
            held.task_id, generation, task_id=held.task_id, generation=generation,
        )  # fmt: skip
        self._start(Assignment.from_frame(held.assign))

    async def _reassigned(self, frame: Frame) -> None:
        held = self.held
        if not self.recovering or held is None or held.task_id != frame.get("task_id"):
            return  # an answer to an earlier question, about an attempt since replaced
        await self._stop_job()
        self._forget()
        log_event(
            logger, "reassigned", "the hub took task %s back (it runs it again)",
            held.task_id, task_id=held.task_id,
        )  # fmt: skip

    async def _reconciled(self, frame: Frame) -> None:
        """The answer to ``state_report``: ``abort`` stops and forgets the task."""
        ack, held = read_ack(frame), self.held
        if (
            ack is None
            or held is None
            or ack.task_id != held.task_id
            or self._reported != (held.task_id, held.generation)
        ):
            return  # about an attempt since replaced (a new assignment of the same task)
        fields: dict[str, Any] = {"task_id": held.task_id, "generation": held.generation}
        if ack.action == "continue":
            log_event(
                logger, "state_continue", "the hub says continue task %s (generation %d)",
                held.task_id, held.generation, **fields,
            )  # fmt: skip
            return
        await self._stop_job()
        self._forget()
        log_event(
            logger, "state_abort",
            "the hub no longer gives task %s (generation %d) to this agent; stopped and dropped it",
            held.task_id, held.generation, level=logging.WARNING, **fields,
        )  # fmt: skip

    async def _refused(self, frame: Frame) -> None:
        held = self.held
        error = str(frame.get("error"))
        if refuses_state_report(frame):
            log_event(
                logger, "state_report_unknown",
                "the hub does not know state_report (an older protocol); carrying on",
            )  # fmt: skip
            return
        if held is None or held.task_id != frame.get("task_id"):
            logger.warning("hub error: %s", error)
            return
        if held.phase == "finished":
            return  # an answer to the completion: its delivery handles it
        if not error.startswith(_SETTLED_REFUSALS):
            logger.warning("hub error about task %s: %s", held.task_id, error)
            return
        # The task is no longer ours (fenced off, cancelled, reassigned): drop it.
        await self._stop_job()
        self._forget()
        log_event(
            logger, "refused", "the hub refused task %s (%s); dropped it",
            held.task_id, error, level=logging.WARNING, task_id=held.task_id, error=error,
        )  # fmt: skip

    # --- execution ------------------------------------------------------------------

    def _start(self, assignment: Assignment) -> None:
        self._job = asyncio.create_task(self._execute(assignment))

    async def _stop_job(self) -> None:
        job, self._job = self._job, None
        if job is not None and not job.done():
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job

    def _record_process(self, group: int) -> None:
        if self.held is not None:
            self.held.phase = "running"
            self.held.process_group = group
            self.held.process_identity = process_identity(group)
            self.state.save(self.held)

    async def _execute(self, assignment: Assignment) -> None:
        progress = ProgressStream(
            self._send_progress, assignment.task_id, self.config.progress_interval_s,
            self.config.max_event_chars, self.config.progress_keepalive_s,
        )  # fmt: skip
        job = Job(assignment, self.config, progress, self._record_process, self._send_progress)
        outcome, execution_ms = await execute(job, self.executors)
        await self._finish(assignment, outcome, execution_ms)

    async def _send_progress(self, frame: Frame) -> None:
        """Send a frame that may be lost (progress, wake_result): raises when disconnected."""
        await self.client.send(frame)

    async def _finish(self, assignment: Assignment, outcome: Outcome, execution_ms: int) -> None:
        completion = completion_frame(assignment, outcome, execution_ms)
        held = self.held
        if held is None or held.task_id != assignment.task_id:
            return  # cancelled meanwhile
        held.phase, held.completion = "finished", completion
        self.state.save(held)
        self._job = None
        fields: dict[str, Any] = {"task_id": assignment.task_id, "status": outcome.status}
        if outcome.status == "success":
            log_event(
                logger, "finished", "task %s succeeded in %d ms",
                assignment.task_id, execution_ms, **fields,
            )  # fmt: skip
        else:
            log_event(
                logger, "finished", "task %s failed in %d ms: %s",
                assignment.task_id, execution_ms, outcome.error, error=outcome.error,
                **fields, **({"exit_code": outcome.extra["exit_code"]}
                             if "exit_code" in outcome.extra else {}),
            )  # fmt: skip
        self._start_delivery(completion)

    def _start_delivery(self, completion: Frame) -> None:
        self._delivery = asyncio.create_task(self._deliver(completion))

    async def _deliver_quietly(self, frame: Frame) -> None:
        """Deliver ``frame``; a refusal is handled where every error is (``_refused``)."""
        with contextlib.suppress(ConnectionError):
            await self.client.deliver(frame)

    async def _deliver(self, completion: Frame) -> None:
        """Deliver the recorded completion; forget the task once the hub has answered."""
        task_id = completion["task_id"]
        try:
            answer = await self.client.deliver(completion)
        except ConnectionError:
            return  # closing: the record stays, and the next start delivers it
        if self.held is None or self.held.task_id != task_id:
            return
        self._forget()
        if answer.get("type") == "task_ack":
            log_event(
                logger, "acknowledged", "task %s reported; the hub says %s",
                task_id, answer.get("status"), task_id=task_id, status=answer.get("status"),
            )  # fmt: skip
        else:
            error = str(answer.get("error"))
            log_event(
                logger, "refused", "the hub refused the outcome of task %s (%s); dropped it",
                task_id, error, level=logging.WARNING, task_id=task_id, error=error,
            )  # fmt: skip

    async def _report_periodically(self) -> None:
        """A resource_report after each identify and every report interval."""
        meter = ResourceMeter()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.report_interval_s):
                    await self._report_now.wait()
            self._report_now.clear()
            await self._send(await meter.report())

    # --- stopping -------------------------------------------------------------------

    def request_stop(self, stop: asyncio.Event) -> None:
        """A stop signal: the first sets ``stop`` (finish within the grace), a second one
        ends the grace at once (give the task back now)."""
        if stop.is_set():
            self._hurry.set()
        stop.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until ``stop`` is set, then finish or give back the task.

        Raises:
            AuthenticationError: the hub refused the token.
        """
        connection = asyncio.create_task(self.client.run(self.on_frame))
        if self.held is not None and self.held.completion is not None:
            self._start_delivery(self.held.completion)  # recorded before a crash
        reports = asyncio.create_task(self._report_periodically())
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({connection, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if connection.done():
                connection.result()  # run() only returns by raising
                return
            await self._wind_down()
        finally:
            stopper.cancel()
            reports.cancel()
            await self.client.close()
            for pending in (self._delivery, self._accepting):
                if pending is not None:
                    with contextlib.suppress(asyncio.CancelledError):
                        await pending
            connection.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await connection

    async def _wind_down(self) -> None:
        self.stopping = True
        held = self.held
        if held is None:
            log_event(logger, "stopping", "stopping (no task held)")
            return
        log_event(
            logger, "stopping", "stopping: task %s has %g s to finish",
            held.task_id, self.config.stop_grace_s, task_id=held.task_id,
        )  # fmt: skip
        if self._job is not None or held.phase == "finished":  # something to wait for
            free, hurry = (asyncio.create_task(event.wait()) for event in (self._free, self._hurry))
            await asyncio.wait({free, hurry}, timeout=self.config.stop_grace_s,
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            free.cancel()
            hurry.cancel()
        held = self.held
        if held is None or held.phase == "finished":
            return  # reported (or to be delivered by the next start)
        await self._stop_job()
        if await self._send(
            {"type": "task_rejected", "task_id": held.task_id, "reason": "sidecar stopping"}
        ):
            self._forget()
            log_event(
                logger, "given_back", "gave task %s back to the hub",
                held.task_id, task_id=held.task_id,
            )  # fmt: skip
        else:
            self.recovering = True
            log_event(
                logger, "kept", "task %s stopped; the next start asks the hub about it",
                held.task_id, task_id=held.task_id,
            )  # fmt: skip
