"""One agent connection on ``/ws``: identify gate, rate limits, violations, dispatch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode

from agentcom.errors import HubError, StoreError
from agentcom.hub.auth import Role
from agentcom.hub.limits import BucketSpec, RateLimiter
from agentcom.protocol import agent as frames
from agentcom.protocol.errors import FrameDecoder, FrameRejected, summary_for_viewers
from agentcom.protocol.events import validation_event
from agentcom.protocol.outbound import (
    AgentList,
    ErrorReply,
    Identified,
    OllamaReportAck,
    Pong,
    RateLimited,
    RateLimitWarning,
    StatusUpdated,
    ValidationFailed,
)
from agentcom.server.closecodes import CLOSE_REPLACED
from agentcom.server.inbound import message_waiting, peer, peer_host, received_frames, text_of

if TYPE_CHECKING:
    from agentcom.hub.hub import Effects
    from agentcom.protocol.common import Outbound
    from agentcom.server.host import Answer, SessionHost

__all__ = ["AgentSession"]

logger = logging.getLogger(__name__)

DECODER = FrameDecoder(frames.AGENT_FRAME, frames.AGENT_FRAME_TYPES)
_KNOWN_TYPES = frozenset(frames.AGENT_FRAME_TYPES)

_MAX_UNSETTLED = 32
"""Answers that may wait for the frames received after them (one commit for all)."""

# Frames that settle a task are never rate limited: real sidecars ignore rate_limited.
_UNLIMITED = frozenset(
    {"identify", "task_accepted", "task_complete", "task_failed", "task_rejected",
     "task_recovering", "state_report"}
)  # fmt: skip


class AgentSession:
    """Handles the frames of one agent connection until it closes."""

    def __init__(self, server: SessionHost, connection: ServerConnection) -> None:
        self.server = server
        self.hub = server.hub
        self.connection = connection
        self.agent_id: str | None = None
        self._token_key: str | None = None  # for the revocation watch, once identified
        # Answers to this agent's frames waiting for the commit of what they changed.
        self._unsettled: list[Answer] = []
        self._received = received_frames(connection)  # looked up once, read per frame
        settings = server.settings
        self.limiter = RateLimiter(
            {
                "progress": BucketSpec(settings.progress_burst, settings.progress_rate),
                "request": BucketSpec(settings.request_burst, settings.request_rate),
            },
            server.clock,
        )
        self.failures = server.violations.new_window()
        self.closed_for_violations = False
        self._handlers: dict[str, Callable[[Any], Any]] = {
            "ping": self.on_ping,
            "status": self.on_status,
            "list_agents": self.on_list_agents,
            "message": self.on_message,
            "task_accepted": self.on_task_accepted,
            "task_progress": self.on_task_progress,
            "task_complete": self.on_task_complete,
            "task_failed": self.on_task_failed,
            "task_rejected": self.on_task_rejected,
            "task_recovering": self.on_task_recovering,
            "state_report": self.on_state_report,
            "resource_report": self.on_resource_report,
            "ollama_report": self.on_ollama_report,
            "wake_result": self.on_wake_result,
            "agent_restarting": self.on_agent_restarting,
            "channel_subscribe": self.on_channel_subscribe,
            "channel_unsubscribe": self.on_channel_unsubscribe,
            "channel_publish": self.on_channel_publish,
            "channel_history": self.on_channel_history,
            "list_channels": self.on_list_channels,
        }

    async def run(self) -> None:
        """Read frames until the connection closes; then mark the agent gone."""
        try:
            if not await self._identify_in_time():
                return
            async for raw in self.connection:
                await self.handle(raw)
                # While more frames of this agent are already received, the answers wait
                # for them: a sidecar that sends task_accepted, task_progress and
                # task_complete together has them made durable by one commit and answered
                # in one write. A peer that never stops sending is answered every
                # _MAX_UNSETTLED frames all the same.
                if self._unsettled and (
                    len(self._unsettled) >= _MAX_UNSETTLED or not message_waiting(self._received)
                ):
                    await self.settle_waiting()
        finally:
            if self._unsettled:  # answered if the connection is still open; committed anyway
                await self.settle_waiting()
            if self._token_key is not None:
                self.server.revocations.forget(self._token_key, self.connection)
            if (
                self.agent_id is not None
                and self.server.agent_connections.get(self.agent_id) is self.connection
            ):
                del self.server.agent_connections[self.agent_id]
                _, effects = self.hub.run(self.hub.disconnect, self.agent_id)
                logger.info("agent %s disconnected", self.agent_id)
                await self.server.settle(effects=effects)

    async def _identify_in_time(self) -> bool:
        """Handle frames until the agent identifies; close (1008) a connection that does not."""
        try:
            async with asyncio.timeout(self.server.settings.identify_timeout_s):
                while self.agent_id is None:
                    raw = await self.connection.recv()
                    await self.handle(raw)
        except TimeoutError:
            await self.connection.close(CloseCode.POLICY_VIOLATION, "identify timeout")
            return False
        return True

    async def handle(self, raw: str | bytes) -> None:
        """Decode, gate, rate-limit and dispatch one frame."""
        if self.closed_for_violations:
            return  # frames already buffered when the connection was condemned are ignored
        frames_received = self.server.metrics.frames_received
        text = await text_of(self.connection, raw)
        if text is None:
            frames_received["invalid"].inc()
            return
        try:
            frame = DECODER.decode(text)
        except FrameRejected as rejected:
            frames_received["invalid"].inc()
            await self.reject(rejected.reply)
            return
        frames_received[frame.type].inc()
        if self.agent_id is None:
            if isinstance(frame, frames.Identify):
                try:
                    await self.on_identify(frame)
                except StoreError as exc:  # the token cannot be checked now (PostgreSQL down)
                    await self.reply(ErrorReply(error="store_unavailable", message=str(exc)))
            else:
                await self.reply(ErrorReply(error="not_identified"))
            return
        if isinstance(frame, frames.Identify):
            await self.on_repeated_identify(frame)
            return
        self.hub.seen(self.agent_id)
        if frame.type not in _UNLIMITED and not await self.within_rate(frame.type):
            return
        try:
            await self._handlers[frame.type](frame)
        except StoreError as exc:  # a read the database could not answer (PostgreSQL down)
            task_id = getattr(frame, "task_id", None)
            await self.reply(
                ErrorReply(error="store_unavailable", task_id=task_id, message=str(exc))
            )
        except HubError as error:
            # A refused frame changes nothing and announces nothing: its effects were
            # dropped with the exception (Hub.run).
            await self.reply(
                ErrorReply(error=error.code, task_id=error.task_id, message=error.message)
            )
            return
        if self.hub.has_outbox() and not self._unsettled:  # left by a handler that answers
            await self.server.settle()  # without settling (ping...): now and then agent_seen

    async def within_rate(self, frame_type: str) -> bool:
        """Spend a rate-limit token; False (after telling the agent) when none is left."""
        tier = "progress" if frame_type == "task_progress" else "request"
        verdict = self.limiter.check(tier)
        if verdict == "ok":
            return True
        bucket = self.limiter.bucket(tier)
        if verdict == "warn":
            await self.reply(
                RateLimitWarning(tier=tier, remaining=bucket.remaining, capacity=bucket.capacity)
            )
            return True
        self.server.metrics.rate_limited[tier].inc()
        if tier == "progress":
            self.hub.progress_dropped += 1  # coalesced: the next progress frame supersedes it
            return False
        await self.reply(RateLimited(tier=tier, retry_after_ms=bucket.retry_after_ms()))
        return False

    async def reply(self, frame: Outbound) -> None:
        """Send a frame to this agent (after the answers still waiting for a commit)."""
        if self._unsettled:
            self._unsettled.append((frame, None))
        else:
            await self.server.send(self.connection, frame)

    async def settle(self, reply: Outbound | None, effects: Effects) -> None:
        """Answer a frame once what it changed is durable (after the frame is handled:
        see :meth:`run`)."""
        self._unsettled.append((reply, effects))

    async def settle_waiting(self) -> None:
        """Commit, then send every answer waiting, in order."""
        while self._unsettled:
            answers, self._unsettled = self._unsettled, []
            await self.server.settle_all(self.connection, answers)

    async def reject(self, reply: ErrorReply | ValidationFailed) -> None:
        """Answer a bad frame, count the violation, and close after too many."""
        await self.reply(reply)
        await self.count_violation(reply)

    async def count_violation(self, reply: ErrorReply | ValidationFailed) -> None:
        """Record a violation; publish it; close with 1008 past the limit."""
        server = self.server
        server.metrics.violation(reply)
        closing = server.violations.record_failure(self.failures)
        event = validation_event(
            self.agent_id,
            peer(self.connection),
            server.clock.now_ms(),
            summary_for_viewers(reply, _KNOWN_TYPES),  # names and kinds, no values
            closing,  # this violation closes the connection (1008)
        )
        server.pubsub.publish("validation", event)
        if closing:
            await self.settle_waiting()  # what came before is answered before the close
            self.closed_for_violations = True
            if self.agent_id is not None:
                cooldown = server.violations.punish(self.agent_id)
                logger.warning(
                    "agent %s closed for violations; cooldown %d s", self.agent_id, cooldown // 1000
                )
            await self.connection.close(CloseCode.POLICY_VIOLATION, "too many validation errors")

    # --- identify -------------------------------------------------------------------

    async def on_identify(self, frame: frames.Identify) -> None:
        """Check the token, the cooldown, replace an older connection, become present."""
        server = self.server
        identity = server.auth.role_of(frame.token)
        if identity is None:
            await server.guard.slow_down_after_failure(self.connection)
            await self.reply(ErrorReply(error="invalid_token"))
            await self.count_violation(ErrorReply(error="invalid_token"))
            return
        token_agent, role = identity
        if token_agent != frame.agent_id or role is not Role.agent:
            await self.reply(ErrorReply(error="token_agent_mismatch"))
            await self.count_violation(ErrorReply(error="token_agent_mismatch"))
            return
        remaining_ms = server.violations.cooldown_remaining_ms(frame.agent_id)
        if remaining_ms > 0:
            seconds = -(-remaining_ms // 1000)
            await self.connection.close(
                CloseCode.POLICY_VIOLATION, f"cooldown: retry in {seconds} s"
            )
            return
        held: list[str] = []
        if server.shared is not None:  # its tasks as stored, whichever node it came from
            held = await server.shared.refresh_agent(frame.agent_id)
        self.agent_id = frame.agent_id
        self._token_key = server.revocations.track(frame.token, self.connection)
        server.guard.authenticated(self.connection)
        # ``identified`` goes first: once the agent is present, any other connection's
        # settle may push to it (agent_joined, task_assign) while this one still waits
        # for its commit, and a client takes any other first reply for a refusal.
        await self.reply(Identified(agent_id=frame.agent_id))
        previous = server.agent_connections.get(frame.agent_id)
        server.agent_connections[frame.agent_id] = self.connection
        if previous is not None and previous is not self.connection:
            # Not awaited: an old connection that went dark never answers its closing
            # handshake, and nothing may keep this one waiting for that.
            server.close_in_background(previous, CLOSE_REPLACED, "replaced")
        _, effects = self.hub.run(self.hub.identify, frame, peer_host(self.connection), held)
        logger.info("agent %s identified from %s", frame.agent_id, peer(self.connection))
        await server.settle(effects=effects)

    async def on_repeated_identify(self, frame: frames.Identify) -> None:
        """An identify on an identified connection: checked like the first, changes nothing."""
        identity = self.server.auth.role_of(frame.token)
        if identity is None:
            await self.server.guard.slow_down_after_failure(self.connection)
            await self.reject(ErrorReply(error="invalid_token"))
        elif identity != (self.agent_id, Role.agent) or frame.agent_id != self.agent_id:
            await self.reject(ErrorReply(error="token_agent_mismatch"))
        else:
            await self.reply(Identified(agent_id=frame.agent_id))

    # --- handlers -------------------------------------------------------------------

    async def on_ping(self, frame: frames.Ping) -> None:
        await self.reply(Pong(timestamp=self.server.clock.now_ms()))

    async def on_status(self, frame: frames.StatusUpdate) -> None:
        assert self.agent_id is not None
        _, effects = self.hub.run(self.hub.set_status, self.agent_id, frame.status)
        await self.settle(StatusUpdated(), effects)

    async def on_list_agents(self, frame: frames.ListAgents) -> None:
        agents = [agent.info() for agent in self.hub.presence.connected()]
        await self.reply(AgentList(agents=agents))

    async def on_message(self, frame: frames.Message) -> None:
        assert self.agent_id is not None
        reply, effects = self.hub.run(self.hub.messaging.send, self.agent_id, frame)
        await self.settle(reply, effects)

    async def on_task_accepted(self, frame: frames.TaskAccepted) -> None:
        assert self.agent_id is not None
        ack, effects = self.hub.run(
            self.hub.task_frames.task_accepted, self.agent_id, frame.task_id
        )
        await self.settle(ack, effects)

    async def on_task_progress(self, frame: frames.TaskProgress) -> None:
        assert self.agent_id is not None
        _, effects = self.hub.run(self.hub.task_frames.task_progress, self.agent_id, frame)
        await self.settle(None, effects)

    async def on_task_complete(self, frame: frames.TaskComplete) -> None:
        assert self.agent_id is not None
        ack, effects = self.hub.run(self.hub.task_frames.task_complete, self.agent_id, frame)
        await self.settle(ack, effects)

    async def on_task_failed(self, frame: frames.TaskFailed) -> None:
        assert self.agent_id is not None
        ack, effects = self.hub.run(self.hub.task_frames.task_failed, self.agent_id, frame)
        await self.settle(ack, effects)

    async def on_task_rejected(self, frame: frames.TaskRejected) -> None:
        assert self.agent_id is not None
        ack, effects = self.hub.run(self.hub.task_frames.task_rejected, self.agent_id, frame)
        await self.settle(ack, effects)

    async def on_task_recovering(self, frame: frames.TaskRecovering) -> None:
        assert self.agent_id is not None
        answer, effects = self.hub.run(
            self.hub.task_frames.task_recovering, self.agent_id, frame.task_id
        )
        await self.settle(answer, effects)

    async def on_state_report(self, frame: frames.StateReport) -> None:
        assert self.agent_id is not None
        ack, effects = self.hub.run(self.hub.task_frames.state_report, self.agent_id, frame)
        await self.settle(ack, effects)

    async def on_resource_report(self, frame: frames.ResourceReport) -> None:
        assert self.agent_id is not None
        _, effects = self.hub.run(self.hub.report_resources, self.agent_id, frame)
        await self.settle(None, effects)  # publishes the new figures to dashboards

    async def on_ollama_report(self, frame: frames.OllamaReport) -> None:
        assert self.agent_id is not None
        _, effects = self.hub.run(
            self.hub.report_ollama, self.agent_id, frame.ollama_url, peer_host(self.connection)
        )
        await self.settle(OllamaReportAck(), effects)

    async def on_wake_result(self, frame: frames.WakeResult) -> None:
        logger.info("agent %s wake result for %s: %s", self.agent_id, frame.task_id, frame.status)

    async def on_agent_restarting(self, frame: frames.AgentRestarting) -> None:
        assert self.agent_id is not None
        _, effects = self.hub.run(self.hub.agent_restarting, self.agent_id, frame.reason)
        await self.settle(None, effects)  # publishes it to dashboards

    async def on_channel_subscribe(self, frame: frames.ChannelSubscribe) -> None:
        assert self.agent_id is not None
        reply, effects = self.hub.run(self.hub.messaging.subscribe, self.agent_id, frame.channel)
        await self.settle(reply, effects)

    async def on_channel_unsubscribe(self, frame: frames.ChannelUnsubscribe) -> None:
        assert self.agent_id is not None
        reply, effects = self.hub.run(self.hub.messaging.unsubscribe, self.agent_id, frame.channel)
        await self.settle(reply, effects)

    async def on_channel_publish(self, frame: frames.ChannelPublish) -> None:
        assert self.agent_id is not None
        shared = self.server.shared_messages
        if shared is not None:  # numbered by the database the nodes share
            reply, effects = await shared.publish(self.agent_id, frame)
        else:
            reply, effects = self.hub.run(self.hub.messaging.publish, self.agent_id, frame)
        await self.settle(reply, effects)

    async def on_channel_history(self, frame: frames.ChannelHistory) -> None:
        await self.reply(self.hub.messaging.history(frame))

    async def on_list_channels(self, frame: frames.ListChannels) -> None:
        await self.reply(self.hub.messaging.list_channels())
