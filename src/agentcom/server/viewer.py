"""Operator connections: ``/ws/dashboard`` (snapshot then live events) and ``/ws/operator``
(requests and replies)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic_core import from_json
from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode

from agentcom.errors import HubError, StoreError
from agentcom.hub.auth import Role
from agentcom.hub.hub import Hub
from agentcom.protocol import operator as ops
from agentcom.protocol.errors import FrameDecoder, FrameRejected
from agentcom.protocol.outbound import ErrorReply, ValidationFailed
from agentcom.protocol.task import dumped_task
from agentcom.pubsub.link import Notice
from agentcom.server.inbound import peer, text_of
from agentcom.server.nodeagents import AgentList, listed_agents
from agentcom.server.output import ReplyQueue
from agentcom.server.writes import encode, events_frame, send_frames
from agentcom.store.base import TaskFilter, TaskPage, task_filter

if TYPE_CHECKING:
    from agentcom.pubsub.memory import Subscription
    from agentcom.server.host import SessionHost

__all__ = ["AGENT_TOKEN_REFUSED", "DashboardSession", "OperatorSession"]

logger = logging.getLogger(__name__)

DASHBOARD_DECODER = FrameDecoder(ops.DASHBOARD_FRAME, ops.DASHBOARD_FRAME_TYPES)
OPERATOR_DECODER = FrameDecoder(ops.OPERATOR_FRAME, ops.OPERATOR_FRAME_TYPES)

_OPERATOR_ROLES = (Role.admin, Role.viewer)
_MAX_REQUESTS_IN_FLIGHT = 32
AGENT_TOKEN_REFUSED = "an agent's token cannot be used here; a viewer or admin token is needed"


def _refusal_message(identity: tuple[str, Role] | None) -> str | None:
    """What an ``invalid_token`` refusal says: only a valid agent token is told why, so
    every other bad token gets the same answer."""
    if identity is not None and identity[1] is Role.agent:
        return AGENT_TOKEN_REFUSED
    return None


async def _first_frame(server: SessionHost, connection: ServerConnection) -> str | None:
    """The first message, or None once the connection is closed for not sending one in time
    or for sending a binary one."""
    try:
        async with asyncio.timeout(server.settings.identify_timeout_s):
            raw = await connection.recv()
    except TimeoutError:
        await connection.close(CloseCode.POLICY_VIOLATION, "no authentication in time")
        return None
    return await text_of(connection, raw)


class DashboardSession:
    """A viewer: one ``subscribe``, a snapshot, then events until it goes away."""

    def __init__(self, server: SessionHost, connection: ServerConnection) -> None:
        self.server = server
        self.connection = connection
        self.who = "dashboard ?"  # its token's agent id and role, once subscribed

    async def run(self) -> None:
        """Authenticate, send the snapshot, stream events; drops are reported."""
        server = self.server
        raw = await _first_frame(server, self.connection)
        if raw is None:
            return
        try:
            frame = DASHBOARD_DECODER.decode(raw)
        except FrameRejected as rejected:
            await server.send(self.connection, rejected.reply)
            await self.connection.close(CloseCode.POLICY_VIOLATION, "expected subscribe")
            return
        identity = server.auth.role_of(frame.token)
        if identity is None or identity[1] not in _OPERATOR_ROLES:
            logger.info("dashboard from %s refused: invalid token", peer(self.connection))
            await server.guard.slow_down_after_failure(self.connection)
            message = _refusal_message(identity)
            await server.send(self.connection, ErrorReply(error="invalid_token", message=message))
            await self.connection.close(CloseCode.POLICY_VIOLATION, "invalid token")
            return
        who = f"{identity[0]} ({identity[1].value})"
        logger.info("dashboard %s subscribed from %s", who, peer(self.connection))
        server.guard.authenticated(self.connection)
        subscription = server.pubsub.subscribe(frame.topics)
        token_key = server.revocations.track(frame.token, self.connection)
        self.who = f"dashboard {who}"
        try:
            await self._send_snapshot()
            reader = asyncio.create_task(self._drain_incoming())
            try:
                await self._stream(subscription, reader, frame.batch)
            finally:
                reader.cancel()
        finally:
            server.revocations.forget(token_key, self.connection)
            server.pubsub.unsubscribe(subscription)
            logger.info("dashboard %s disconnected", who)

    async def _send_snapshot(self) -> None:
        """The state as it stands, read after a commit so that it holds what was announced."""
        await self.server.commit()
        agents = await listed_agents(self.server)  # a partial list is logged
        snapshot = ops.Snapshot(**await self.server.hub.views.snapshot(agents=agents.agents))
        self.server.send_replies(self.connection, (snapshot,), self.who)

    async def _drain_incoming(self) -> None:
        async for _ in self.connection:
            pass  # viewers only listen; reading keeps the close handshake working

    async def _stream(
        self, subscription: Subscription, reader: asyncio.Task[None], batch: bool
    ) -> None:
        """Send each batch of events (as one ``events`` frame when the viewer asked for
        batches), after what the subscription says about its stream: a count of lost
        events, that other nodes' events may be missing (the link between hub nodes is
        down), or, when it is back, a fresh snapshot in place of the events queued so far
        (they are older than it)."""
        while not reader.done():
            getter = asyncio.ensure_future(subscription.next_batch())
            done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                return
            events, dropped = getter.result()
            if subscription.closed:
                return
            notice = subscription.take_notice()
            if notice is Notice.resync:
                await self._send_snapshot()
                continue
            frames: list[bytes] = []
            if notice is Notice.events_may_be_missing:
                frames.append(encode(ops.EventsDropped(count=0, reason="cluster_link_down")))
            if dropped:
                frames.append(encode(ops.EventsDropped(count=dropped)))
            if events:
                if batch:
                    frames.append(events_frame(events))
                else:
                    frames.extend(events)
            if frames:
                await send_frames(self.connection, frames)


def _request_id(raw: str | bytes) -> str | None:
    """The ``request_id`` of a raw request that could not be served, if it has a usable one.

    Error replies repeat it: without it the sender cannot match the reply and waits for ever.
    """
    try:
        # The decoder's own parser: what it refuses (nesting too deep, lone surrogates)
        # has no request_id the reply could repeat.
        request_id = from_json(raw).get("request_id")
    except (ValueError, AttributeError):
        return None
    if not isinstance(request_id, str) or not 1 <= len(request_id) <= 64:
        return None
    return request_id


def _rejection(raw: str | bytes, reply: ErrorReply | ValidationFailed) -> Any:
    """The reply to an invalid request, repeating its ``request_id`` when it has one."""
    request_id = _request_id(raw)
    if request_id is None:
        return reply
    message: str | None
    if isinstance(reply, ValidationFailed):
        message = "; ".join(f"{entry.field}: {entry.detail}" for entry in reply.errors)
    else:
        message = reply.message
    return ops.OperatorError(request_id=request_id, error=reply.error, message=message)


class OperatorSession:
    """An operator (CLI or page): ``auth``, then requests answered by ``request_id``."""

    def __init__(self, server: SessionHost, connection: ServerConnection) -> None:
        self.server = server
        self.hub = server.hub
        self.connection = connection
        self.role: Role | None = None
        self.who = "?"  # agent id and role of its token, once authenticated
        self._in_flight: set[asyncio.Task[None]] = set()
        self._answers: ReplyQueue | None = None  # once authenticated
        self._token_key: str | None = None  # for the revocation watch, once authenticated

    async def run(self) -> None:
        """Authenticate, then serve requests concurrently (bounded)."""
        raw = await _first_frame(self.server, self.connection)
        if raw is None or not await self._authenticate(raw):
            return
        try:
            async for message in self.connection:
                raw = await text_of(self.connection, message)
                if raw is None:
                    break
                if len(self._in_flight) >= _MAX_REQUESTS_IN_FLIGHT:
                    self._answer(
                        ops.OperatorError(request_id=_request_id(raw), error="too_many_requests")
                    )
                    continue
                request = asyncio.create_task(self._serve(raw))
                self._in_flight.add(request)
                request.add_done_callback(self._in_flight.discard)
        finally:
            if self._token_key is not None:
                self.server.revocations.forget(self._token_key, self.connection)
            for request in list(self._in_flight):
                request.cancel()
            logger.info("operator %s disconnected", self.who)

    async def _send(self, frame: Any) -> None:
        self.server.send_replies(self.connection, (frame,), f"operator {self.who}")

    def _answer(self, frame: Any) -> None:
        """Answer a request (answers ready in the same turn of the loop share a write)."""
        if self._answers is None:
            server = self.server
            who = f"operator {self.who}"
            self._answers = ReplyQueue(self.connection, server.replies, who, server.metrics.sent)
        self._answers.add(frame)

    async def _authenticate(self, raw: str | bytes) -> bool:
        try:
            frame = OPERATOR_DECODER.decode(raw)
        except FrameRejected as rejected:
            await self._send(rejected.reply)
            await self.connection.close(CloseCode.POLICY_VIOLATION, "expected auth")
            return False
        identity = None
        if isinstance(frame, ops.Auth):
            try:
                identity = self.server.auth.role_of(frame.token)
            except StoreError as exc:  # the token cannot be checked now (PostgreSQL down)
                await self._send(
                    ops.OperatorError(request_id=None, error="store_unavailable", message=str(exc))
                )
                await self.connection.close(CloseCode.TRY_AGAIN_LATER, "store unavailable")
                return False
        if identity is None or identity[1] not in _OPERATOR_ROLES:
            logger.info("operator from %s refused: invalid token", peer(self.connection))
            await self.server.guard.slow_down_after_failure(self.connection)
            message = _refusal_message(identity)
            await self._send(
                ops.OperatorError(request_id=None, error="invalid_token", message=message)
            )
            await self.connection.close(CloseCode.POLICY_VIOLATION, "invalid token")
            return False
        assert isinstance(frame, ops.Auth)
        self.role = identity[1]
        self._token_key = self.server.revocations.track(frame.token, self.connection)
        self.who = f"{identity[0]} ({identity[1].value})"
        self.server.guard.authenticated(self.connection)
        logger.info("operator %s connected from %s", self.who, peer(self.connection))
        await self._send(ops.AuthOk(agent_id=identity[0], role=identity[1].value))
        return True

    async def _serve(self, raw: str | bytes) -> None:
        try:
            request = OPERATOR_DECODER.decode(raw)
        except FrameRejected as rejected:
            self._answer(_rejection(raw, rejected.reply))
            return
        if isinstance(request, ops.Auth):
            self._answer(ops.OperatorError(request_id=None, error="already_authenticated"))
            return
        try:
            data = await self._perform(request)
        except HubError as error:  # a refused request's effects went with it (Hub.run)
            self._answer(
                ops.OperatorError(
                    request_id=request.request_id, error=error.code, message=error.message
                )
            )
            return
        except StoreError as error:  # a read the database could not answer (PostgreSQL down)
            self._answer(
                ops.OperatorError(
                    request_id=request.request_id, error="store_unavailable", message=str(error)
                )
            )
            return
        if isinstance(data, TaskPage):
            self._answer(
                ops.OperatorResult(
                    request_id=request.request_id, data=data.tasks, next_cursor=data.next_cursor
                )
            )
            return
        if isinstance(data, AgentList):
            self._answer(
                ops.OperatorResult(
                    request_id=request.request_id, data=data.agents, warning=data.warning
                )
            )
            return
        self._answer(ops.OperatorResult(request_id=request.request_id, data=data))

    async def _perform(self, request: Any) -> Any:
        """Carry out one request; mutations need the admin role and are durable first.

        A task id may be abbreviated to a unique prefix: it is resolved first.
        """
        if isinstance(request, _TAKES_TASK_ID):
            request = request.model_copy(
                update={"task_id": self.hub.task_ops.resolve_task_id(request.task_id)}
            )
        mutation = _MUTATIONS.get(request.type)
        if mutation is not None:
            if self.role is not Role.admin:
                raise HubError("forbidden", "this action needs an admin token")
            try:
                await self.server.ensure_store_writable()
                shared = self.server.shared
                if shared is not None:  # act on the tasks as stored, not as last heard
                    await shared.refresh(_task_ids_of(request))
            except StoreError as exc:
                raise HubError("store_unavailable", str(exc)) from None
            data, effects = self.hub.run(mutation, self.hub, request)
            if not await self.server.settle(effects=effects):
                raise HubError(
                    "store_unavailable", "the database could not store the change; try again later"
                )
            if effects.lost:  # nodes sharing a database: another node changed it first
                raise HubError(
                    "conflict",
                    f"another hub node changed {', '.join(sorted(effects.lost))} first; "
                    "nothing was changed: look again and retry",
                )
            return data
        read = _READS.get(request.type)
        if read is None:
            raise HubError("unsupported", f"unsupported request {request.type}")
        return await read(self, request)

    async def _task_get(self, request: ops.TaskGet) -> Any:
        return dumped_task(self.hub.find_task(request.task_id))

    async def _task_wait(self, request: ops.TaskWait) -> Any:
        waiters = self.server.waiters
        waiter = waiters.wait_until_finished(request.task_id)
        try:
            task = await asyncio.wait_for(asyncio.shield(waiter), request.timeout_s)
        except TimeoutError:
            raise HubError("timeout", "the task did not finish in time", request.task_id) from None
        finally:  # timed out, or cancelled because its connection went
            waiters.forget(request.task_id, waiter)
        return dumped_task(task)

    async def _task_route(self, request: ops.TaskRoute) -> Any:
        return self.hub.views.route_preview(request.task)

    async def _task_list(self, request: ops.TaskList) -> Any:
        await self.server.commit()
        return self.hub.views.list_tasks(_task_filter(request, self.hub.clock.now_ms()))

    async def _agents_list(self, request: ops.AgentsList) -> Any:
        return await listed_agents(self.server)

    async def _stats(self, request: ops.Stats) -> Any:
        await self.server.commit()
        agents = await listed_agents(self.server)  # a partial list is logged
        return await self.hub.views.stats(agents.agents)

    async def _endpoints_list(self, request: ops.EndpointsList) -> Any:
        return self.hub.views.endpoints_snapshot()

    async def _channels_list(self, request: ops.ChannelsList) -> Any:
        return self.hub.messaging.list_channels().channels


def _task_filter(request: ops.TaskList, now_ms: int) -> TaskFilter:
    """The store's filter for a ``task_list`` request (``since_s`` counts back from now)."""
    return task_filter(
        now_ms, status=request.status, priority=request.priority, agent=request.agent,
        capability=request.capability, since_s=request.since_s, limit=request.limit,
        cursor=request.cursor,
    )  # fmt: skip


_TAKES_TASK_ID = (ops.TaskGet, ops.TaskCancel, ops.TaskRetry, ops.TaskWait, ops.TaskRequeue)


Mutation = Callable[[Hub, Any], Any]
"""An operator request that changes the hub: run through ``Hub.run``, then settled."""


def _task_ids_of(request: Any) -> list[str]:
    """The existing tasks an operator's request names."""
    task_id = getattr(request, "task_id", None)
    task_ids: list[str] = list(getattr(request, "task_ids", None) or ())
    return [task_id, *task_ids] if isinstance(task_id, str) else task_ids


_MUTATIONS: dict[str, Mutation] = {
    "task_submit": lambda hub, request: dumped_task(hub.task_ops.submit(request.task)),
    "task_cancel": lambda hub, request: dumped_task(hub.task_ops.cancel(request.task_id)),
    "task_retry": lambda hub, request: dumped_task(hub.task_ops.retry(request.task_id)),
    "task_requeue": lambda hub, request: dumped_task(hub.task_ops.requeue(request.task_id)),
    "task_cancel_many": lambda hub, request: hub.task_ops.for_each_task(
        hub.task_ops.cancel, request.task_ids
    ),
    "task_retry_many": lambda hub, request: hub.task_ops.retry_many(request.task_ids),
    "agent_drain": lambda hub, request: hub.set_draining(request.agent_id, True),
    "agent_undrain": lambda hub, request: hub.set_draining(request.agent_id, False),
    "agent_restart": lambda hub, request: hub.restart_agent(request.agent_id, request.reason),
    "endpoint_add": lambda hub, request: hub.endpoint_ops.add_endpoint(request.url, request.name),
    "endpoint_remove": lambda hub, request: hub.endpoint_ops.remove_endpoint(request.endpoint_id),
    "endpoint_approve": lambda hub, request: hub.endpoint_ops.approve_endpoint(request.endpoint),
    "channel_create": lambda hub, request: hub.messaging.create_channel(
        request.name, request.description
    ),
}

Read = Callable[[OperatorSession, Any], Awaitable[Any]]
"""An operator request that changes nothing: answered by a method of the session."""

_READS: dict[str, Read] = {
    "task_get": OperatorSession._task_get,
    "task_wait": OperatorSession._task_wait,
    "task_route": OperatorSession._task_route,
    "task_list": OperatorSession._task_list,
    "agents_list": OperatorSession._agents_list,
    "stats": OperatorSession._stats,
    "endpoints_list": OperatorSession._endpoints_list,
    "channels_list": OperatorSession._channels_list,
}
