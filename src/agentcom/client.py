"""An asyncio client for sidecars and operators, on top of ``websockets``.

:class:`AgentClient` speaks the agent protocol (identify, heartbeat, reconnect with
exponential backoff, task frames delivered across reconnects); :class:`OperatorClient`
speaks the operator protocol (requests matched to replies by ``request_id``) and can
stream events from ``/ws/dashboard``, following the hub across restarts.

It is longer than other modules because both clients share the reconnect, backoff and
event-following machinery kept here, and the CLI, the sidecar, the tests and the
examples import one module for it.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from ssl import SSLContext
from typing import Any, Self, get_args
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.frames import CloseCode

from agentcom.errors import AgentcomError
from agentcom.protocol.agent import Identify, Ping
from agentcom.protocol.common import Inbound
from agentcom.protocol.operator import Auth, Subscribe
from agentcom.wirelog import library_logger

__all__ = [
    "AgentClient",
    "AuthenticationError",
    "Backoff",
    "ConnectionLost",
    "OperatorClient",
    "RequestFailed",
    "agent_url",
    "hub_base_url",
    "trusting",
    "websocket_url",
]

logger = logging.getLogger(__name__)

Frame = dict[str, Any]


class AuthenticationError(AgentcomError):
    """The hub refused the token."""


class RequestFailed(AgentcomError):
    """The hub answered an operator request with an error.

    Args:
        code: the wire error code.
        message: the hub's explanation, if any.
    """

    def __init__(self, code: str, message: str | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class ConnectionLost(AgentcomError, ConnectionError):
    """The connection to the hub ended while a request waited for its reply.

    Args:
        reason: what ended it, for people ("the hub is restarting" for close code 1012).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _is_restart(error: BaseException) -> bool:
    """Whether ``error`` is the hub closing the connection because it stops (1012)."""
    return (
        isinstance(error, ConnectionClosed)
        and error.rcvd is not None
        and error.rcvd.code == CloseCode.SERVICE_RESTART
    )


def _restart_or(error: BaseException) -> str:
    """The words for a failed or ended connection: a hub restart says so."""
    if _is_restart(error):
        return "the hub is restarting"
    return str(error).strip() or type(error).__name__


def _closed_reason(error: BaseException) -> str:
    """Why a connection to the hub ended or failed, as a phrase for people: "the hub is
    restarting" (close code 1012), else "connection to the hub lost (detail)"."""
    if isinstance(error, ConnectionLost):
        return error.reason
    if _is_restart(error):
        return _restart_or(error)
    return f"connection to the hub lost ({_restart_or(error)})"


class Backoff:
    """Delays between reconnect attempts: ``initial_s``, doubled after each failed attempt
    up to ``max_s``, each varied by ±20 % so clients dropped together do not all come back
    at the same instant.

    Args:
        initial_s: the first delay (also after :meth:`reset`).
        max_s: no delay is longer (before jitter).
    """

    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.delay = initial_s

    def reset(self) -> None:
        """A connection succeeded: the next outage starts from ``initial_s`` again."""
        self.delay = self.initial_s

    async def wait(self) -> None:
        """Sleep the current delay, then double it (up to ``max_s``)."""
        await asyncio.sleep(self.delay * random.uniform(0.8, 1.2))
        self.delay = min(self.delay * 2, self.max_s)


class _Unanswered(Exception):
    """The connection a task frame went out on ended before the hub answered it."""


# The acknowledgements that answer each task frame :meth:`AgentClient.deliver` sends (an
# error naming the task answers any of them).
_ANSWERS = {
    "task_accepted": frozenset({"accepted"}),
    "task_complete": frozenset({"complete", "retried", "dead_letter"}),
    "task_failed": frozenset({"retried", "dead_letter"}),
    "task_rejected": frozenset({"requeued"}),
}


def websocket_url(hub: str, path: str) -> str:
    """The WebSocket URL of ``path`` on ``hub`` (``http://``, ``https://``, ``ws://``, ``wss://``)."""
    parts = urlsplit(hub if "//" in hub else f"http://{hub}")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, path, "", ""))


_OTHER_ENDPOINTS = ("/ws/operator", "/ws/dashboard", "/dashboard")


def agent_url(hub: str) -> str:
    """The agent endpoint on ``hub``: a sidecar's ``ws://HOST:PORT/ws`` stays as it is,
    and the operators' ``http://HOST:PORT`` (or another of the hub's paths) becomes it."""
    parts = urlsplit(hub if "//" in hub else f"ws://{hub}")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/")
    for other in _OTHER_ENDPOINTS:
        path = path.removesuffix(other)
    if not path.endswith("/ws"):
        path += "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def hub_base_url(hub: str) -> str:
    """The base URL operators use for ``hub``: ``http://HOST:PORT`` for a sidecar's
    ``ws://HOST:PORT/ws`` (and ``https`` for ``wss``); other URLs keep their scheme."""
    parts = urlsplit(hub if "//" in hub else f"http://{hub}")
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def trusting(cafile: str | None) -> SSLContext | None:
    """A TLS context that trusts the certificates in ``cafile`` (None: the system's).

    Raises:
        AgentcomError: the file cannot be read or holds no certificate.
    """
    if not cafile:
        return None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise AgentcomError(f"cannot use the CA file {cafile}: {exc}") from None


def _options(url: str, context: SSLContext | None) -> dict[str, Any]:
    """More ``connect`` keywords: a logger that never prints frames or headers (the token
    is in them), and the TLS context for ``wss://`` URLs (websockets refuses one for
    ``ws://``)."""
    options: dict[str, Any] = {"logger": library_logger("websockets.client")}
    if context is not None and url.startswith("wss:"):
        options["ssl"] = context
    return options


async def _close(connection: ClientConnection) -> None:
    """Close ``connection`` without waiting out the close timeout.

    Once unread frames fill the receive queue, the connection stops reading from the
    socket, and the hub's answer to our closing frame waits behind them: the close would
    then last the whole close timeout (10 s). Reading on lets the closing handshake end at
    once; frames that arrive meanwhile go with the connection.
    """
    connection.transport.resume_reading()
    await connection.close()


def _frame(model: type[Inbound], **fields: Any) -> Frame:
    """The frame ``model`` describes, its ``type`` filled in, with ``fields`` as given.

    The values are not checked here: judging them is the hub's job, and its answer to a
    bad one (a token too long, an agent id it refuses) is what the caller sees.
    """
    (frame_type,) = get_args(model.model_fields["type"].annotation)
    built = model.model_construct(type=frame_type, **fields)
    frame: Frame = built.model_dump(mode="json", exclude_unset=True, warnings=False)
    return frame


_PING = Ping(type="ping")


def _encode(frame: Mapping[str, Any] | BaseModel) -> str:
    if isinstance(frame, BaseModel):
        return frame.model_dump_json(by_alias=True)
    return json.dumps(frame)


class AgentClient:
    """A sidecar's connection to the hub.

    Args:
        url: the hub's agent endpoint, e.g. ``ws://127.0.0.1:4000/ws``. The operators'
            form of the address (``http://127.0.0.1:4000``) is understood too: it is
            turned into the agent endpoint, with a warning that says so.
        agent_id: this agent's id.
        token: its token.
        capabilities: what it can do (tasks may require some).
        name: display name.
        ollama_url: its local Ollama endpoint, if any.
        heartbeat_s: interval of ``ping`` frames while connected (None: no heartbeat).
        backoff_initial_s: first reconnect delay, doubled after each failure.
        backoff_max_s: the delay never exceeds this.
        ssl: the TLS context for a ``wss://`` URL, e.g. one that trusts the hub's own CA
            (None: the system's trusted certificates).
    """

    def __init__(
        self,
        url: str,
        agent_id: str,
        token: str,
        *,
        capabilities: list[str] | None = None,
        name: str | None = None,
        ollama_url: str | None = None,
        heartbeat_s: float | None = 30.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        ssl: SSLContext | None = None,
    ) -> None:
        self.url = agent_url(url)
        if self.url != url:
            logger.warning(
                "%s is not the agent endpoint; connecting to %s (sidecars use "
                "ws://HOST:PORT/ws, operator commands http://HOST:PORT)",
                url,
                self.url,
            )
        self.agent_id = agent_id
        self.token = token
        self.capabilities = capabilities or []
        self.name = name
        self.ollama_url = ollama_url
        self.heartbeat_s = heartbeat_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.ssl = ssl
        self.connection: ClientConnection | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._closing = False
        self._identified = False  # run() holds an identified connection
        self._presence = asyncio.Condition()  # notified when that changes or on close
        # Task id -> the deliver() calls waiting for an answer about it, oldest first: (the
        # ack statuses that answer the frame sent, its waiter).
        self._answers: dict[str, list[tuple[frozenset[str], asyncio.Future[Frame]]]] = {}

    @property
    def identified(self) -> bool:
        """Whether :meth:`run` holds a connection on which the hub identified this agent."""
        return self._identified

    def identify_frame(self) -> Frame:
        """The ``identify`` this client sends."""
        optional = {"ollama_url": self.ollama_url} if self.ollama_url else {}
        frame = _frame(
            Identify,
            agent_id=self.agent_id,
            token=self.token,
            name=self.name or self.agent_id,
            status="idle",
            capabilities=self.capabilities,
            **optional,
        )
        # What every sidecar adds and the hub ignores (PROTOCOL.md): no model holds them.
        frame.update(client_type="sidecar", protocol_version=1)
        return frame

    async def connect(self, timeout: float = 10.0) -> Frame:
        """Open the socket and identify; returns ``identified`` or raises."""
        self.connection = await connect(
            self.url, open_timeout=timeout, max_size=2**24, **_options(self.url, self.ssl)
        )
        await self.send(self.identify_frame())
        reply = await self.receive(timeout)
        if reply.get("type") != "identified":
            await _close(self.connection)
            raise AuthenticationError(str(reply.get("error", reply)))
        logger.info(
            "connected to %s and identified as %s", self.url, self.agent_id,
            extra={"event": "connected", "url": self.url},
        )  # fmt: skip
        if self.heartbeat_s:
            self._heartbeat = asyncio.create_task(self._beat(self.heartbeat_s))
        return reply

    async def _beat(self, interval: float) -> None:
        try:
            while True:
                await asyncio.sleep(interval)
                await self.send(_PING)
        except (ConnectionClosed, RuntimeError):
            return

    async def send(self, frame: Mapping[str, Any] | BaseModel) -> None:
        """Send one frame."""
        if self.connection is None:
            raise RuntimeError("not connected")
        await self.connection.send(_encode(frame))

    async def receive(self, timeout: float | None = None) -> Frame:
        """The next frame from the hub (raises TimeoutError, ConnectionClosed)."""
        if self.connection is None:
            raise RuntimeError("not connected")
        raw = await asyncio.wait_for(self.connection.recv(), timeout)
        frame: Frame = json.loads(raw)
        return frame

    async def receive_type(self, frame_type: str, timeout: float = 10.0) -> Frame:
        """The next frame of ``frame_type``; frames of other types before it are discarded."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.receive()
                if frame.get("type") == frame_type:
                    return frame

    async def close(self) -> None:
        """Close for good (no reconnect); pending :meth:`deliver` calls raise."""
        self._closing = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self.connection is not None:
            await _close(self.connection)
        await self._presence_changed(identified=False)

    async def _presence_changed(self, identified: bool) -> None:
        self._identified = identified
        if not identified:
            for pending in self._answers.values():
                for _, waiter in pending:
                    if not waiter.done():
                        waiter.set_exception(_Unanswered())
        async with self._presence:
            self._presence.notify_all()

    async def run(self, on_frame: Callable[[AgentClient, Frame], Awaitable[None]]) -> None:
        """Stay connected until :meth:`close`, calling ``on_frame`` for every frame.

        Reconnects after any drop, waiting ``backoff_initial_s`` doubled per failed
        attempt up to ``backoff_max_s`` (with jitter); a refused token ends the loop.
        Tasks keep running across a reconnect: what :meth:`deliver` sends reaches the
        hub on the next connection.
        """
        backoff = Backoff(self.backoff_initial_s, self.backoff_max_s)
        while not self._closing:
            was_identified = False
            try:
                await self.connect()
                backoff.reset()
                assert self.connection is not None
                was_identified = True
                await self._presence_changed(identified=True)
                async for raw in self.connection:
                    frame = json.loads(raw)
                    self._answer(frame)
                    await on_frame(self, frame)
                reason = f"closed with code {self.connection.close_code}"  # 1000, 1001
            except AuthenticationError:
                raise
            except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError) as exc:
                # InvalidHandshake: the hub refused the upgrade (429 at its connection
                # limit, 503 while restarting ...): back off and try again.
                reason = _restart_or(exc)
            finally:
                if self._heartbeat is not None:
                    self._heartbeat.cancel()
                if self._identified:
                    await self._presence_changed(identified=False)
            if self._closing:
                break
            message, event = (
                ("connection to %s lost (%s); retrying in %.1f s", "disconnected")
                if was_identified
                else ("cannot connect to %s (%s); retrying in %.1f s", "unreachable")
            )
            logger.info(
                message, self.url, reason, backoff.delay, extra={"event": event, "url": self.url}
            )
            await backoff.wait()

    def _answer(self, frame: Frame) -> None:
        """Hand a ``task_ack`` or error to the :meth:`deliver` call waiting for it."""
        kind = frame.get("type")
        if kind != "task_ack" and kind != "error":
            return
        # The hub answers the frames of one connection in order: an ack goes to the oldest
        # call it answers, an error (which names no frame type) to the oldest call.
        task_id = frame.get("task_id")
        if not isinstance(task_id, str):
            return
        for statuses, waiter in self._answers.get(task_id, ()):
            if not waiter.done() and (kind == "error" or frame.get("status") in statuses):
                waiter.set_result(frame)
                return

    def _usable_after(self, last: ClientConnection | None) -> bool:
        """Closing, or identified on a connection other than ``last``."""
        return self._closing or (self._identified and self.connection is not last)

    async def deliver(self, frame: Mapping[str, Any]) -> Frame:
        """Send a task frame and return the hub's answer, across reconnects.

        ``frame`` is a ``task_accepted``, ``task_complete``, ``task_failed`` or
        ``task_rejected``; the answer is its ``task_ack``, or the error reply that names
        the task (``task_complete_failed: stale_generation`` for a completion the hub no
        longer expects...). While the client is disconnected the frame waits for the next
        connection, and a frame whose connection ended before the answer came is sent
        again on the next one (the hub answers a duplicate with an error and changes
        nothing). Needs :meth:`run`, which reads the answer: call it from a task of its
        own, never from ``on_frame``.

        Raises:
            ConnectionError: the client was closed before the hub answered.
        """
        statuses = _ANSWERS[frame["type"]]
        task_id: str = frame["task_id"]
        text = _encode(frame)
        loop = asyncio.get_running_loop()
        used: ClientConnection | None = None
        while True:
            async with self._presence:
                await self._presence.wait_for(functools.partial(self._usable_after, used))
            if self._closing:
                raise ConnectionError(f"the client closed before the hub answered {task_id}")
            used = self.connection
            assert used is not None
            waiter: asyncio.Future[Frame] = loop.create_future()
            entry = (statuses, waiter)
            self._answers.setdefault(task_id, []).append(entry)
            try:
                await used.send(text)
                return await waiter
            except (ConnectionClosed, _Unanswered):
                continue  # unanswered on this connection: again on the next one
            finally:
                pending = self._answers[task_id]
                pending.remove(entry)
                if not pending:
                    del self._answers[task_id]


class OperatorClient:
    """An operator's connection: typed requests, replies matched by ``request_id``.

    Args:
        hub: the hub's base URL, e.g. ``http://127.0.0.1:4000``.
        token: an admin or viewer token.
        ssl: the TLS context for an ``https://`` or ``wss://`` hub, e.g. one that trusts the
            hub's own CA (None: the system's trusted certificates).
        backoff_initial_s: first delay before reconnecting (:meth:`reconnect`,
            :meth:`follow`), doubled after each failed attempt.
        backoff_max_s: no reconnect delay is longer.
    """

    def __init__(
        self,
        hub: str,
        token: str,
        *,
        ssl: SSLContext | None = None,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 10.0,
    ) -> None:
        self.hub = hub
        self.token = token
        self.ssl = ssl
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.role: str | None = None
        self._connection: ClientConnection | None = None
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self, timeout: float = 10.0) -> None:
        """Open ``/ws/operator`` and authenticate."""
        url = websocket_url(self.hub, "/ws/operator")
        self._connection = await connect(
            url, open_timeout=timeout, max_size=2**26, **_options(url, self.ssl)
        )
        await self._connection.send(json.dumps(_frame(Auth, token=self.token)))
        try:
            reply = json.loads(await asyncio.wait_for(self._connection.recv(), timeout))
        except ConnectionClosed:
            raise AuthenticationError("invalid_token") from None
        if reply.get("type") == "error" and reply.get("error") == "store_unavailable":
            await _close(self._connection)  # the hub could not check the token now
            raise RequestFailed("store_unavailable", reply.get("message"))
        if reply.get("type") != "auth_ok":
            await _close(self._connection)
            raise AuthenticationError(str(reply.get("error", "invalid_token")))
        self.role = reply["role"]
        self._reader = asyncio.create_task(self._read_replies())

    async def _read_replies(self) -> None:
        assert self._connection is not None
        error: BaseException = ConnectionLost("the hub closed the connection")  # 1000, 1001
        try:
            async for raw in self._connection:
                reply = json.loads(raw)
                waiter = self._pending.pop(str(reply.get("request_id")), None)
                if waiter is None or waiter.done():
                    continue
                if reply.get("type") == "result":
                    waiter.set_result(reply)
                else:
                    waiter.set_exception(
                        RequestFailed(str(reply.get("error")), reply.get("message"))
                    )
        except ConnectionClosed as exc:
            error = ConnectionLost(_closed_reason(exc))
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(error)
        self._pending.clear()

    async def request(self, request_type: str, **fields: Any) -> Any:
        """Send one request and return its ``data``; raises :class:`RequestFailed`."""
        return (await self._result(request_type, **fields)).get("data")

    async def _result(self, request_type: str, **fields: Any) -> dict[str, Any]:
        """Send one request and return its whole ``result`` frame.

        The request goes as given, not through its model in :mod:`agentcom.protocol.operator`:
        callers may send what no model allows (an unknown type, a bad value, padding), and
        the hub's answer to it is what they want to see.
        """
        if self._connection is None:
            raise RuntimeError("not connected")
        request_id = str(next(self._ids))
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = waiter
        frame = {"type": request_type, "request_id": request_id, **fields}
        try:
            await self._connection.send(json.dumps(frame))
        except ConnectionClosed as exc:
            self._pending.pop(request_id, None)
            raise ConnectionLost(_closed_reason(exc)) from None
        result: dict[str, Any] = await waiter
        return result

    async def list_tasks(self, **filters: Any) -> tuple[list[dict[str, Any]], str | None]:
        """One page of ``task_list`` (filters: ``status``, ``priority``, ``agent``,
        ``limit``, ``cursor``): its tasks, and the cursor of the next page (None on the
        last)."""
        fields = {name: value for name, value in filters.items() if value is not None}
        result = await self._result("task_list", **fields)
        return result["data"], result.get("next_cursor")

    async def list_agents(self) -> tuple[list[dict[str, Any]], str | None]:
        """``agents_list``: every agent, and why the list is partial (None when it is
        not: a hub node that could not read the other nodes' agents says so)."""
        result = await self._result("agents_list")
        return result["data"], result.get("warning")

    async def submit(self, description: str, **fields: Any) -> dict[str, Any]:
        """Queue a task; returns it."""
        task = {"description": description, **{k: v for k, v in fields.items() if v is not None}}
        result: dict[str, Any] = await self.request("task_submit", task=task)
        return result

    async def get_task(self, task_id: str) -> dict[str, Any]:
        """One task."""
        result: dict[str, Any] = await self.request("task_get", task_id=task_id)
        return result

    async def wait_task(self, task_id: str, timeout_s: float | None = None) -> dict[str, Any]:
        """The task once it is completed, dead letter or cancelled."""
        fields: dict[str, Any] = {"task_id": task_id}
        if timeout_s is not None:
            fields["timeout_s"] = timeout_s
        result: dict[str, Any] = await self.request("task_wait", **fields)
        return result

    async def close(self) -> None:
        """Close the connection."""
        if self._connection is not None:
            await _close(self._connection)
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def reconnect(self) -> None:
        """Open the connection again after it was lost, retrying with backoff until the
        hub answers (for ever: cancel to stop). A refused token raises
        :class:`AuthenticationError`."""
        await self.close()
        backoff = Backoff(self.backoff_initial_s, self.backoff_max_s)
        while True:
            await backoff.wait()
            try:
                await self.connect()
                return
            except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError):
                continue

    async def watch(self, topics: list[str] | None = None) -> AsyncIterator[Frame]:
        """Frames from ``/ws/dashboard``: the snapshot first, then every event."""
        connection = await self._subscribe(topics)
        try:
            async for raw in connection:
                for frame in _watched(raw):
                    yield frame
        finally:
            await _close(connection)

    async def follow(
        self, topics: list[str] | None, on_lost: Callable[[str], None]
    ) -> AsyncIterator[Frame]:
        """Frames from ``/ws/dashboard`` like :meth:`watch`, across hub restarts, for ever.

        When the connection ends, ``on_lost`` is called once with the reason (``the hub
        is restarting`` for a restart) and the client reconnects with backoff; each new
        connection starts with a new ``snapshot``, which covers what happened meanwhile
        (events published while disconnected are not replayed). Cancel to stop. A refused
        token raises :class:`AuthenticationError`; the first connection is not retried
        (its error is raised as :meth:`watch` raises it).
        """
        backoff = Backoff(self.backoff_initial_s, self.backoff_max_s)
        connected_once = outage = False
        while True:
            connection: ClientConnection | None = None
            try:
                connection = await self._subscribe(topics)
                async for raw in connection:
                    watched = _watched(raw)
                    connected_once, outage = True, False
                    backoff.reset()
                    for frame in watched:
                        yield frame
                reason = "the hub closed the connection"
            except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError) as exc:
                if not connected_once:
                    raise
                reason = _closed_reason(exc)
            finally:
                if connection is not None:
                    await _close(connection)
            if not outage:
                outage = True
                on_lost(reason)
            await backoff.wait()

    async def _subscribe(self, topics: list[str] | None) -> ClientConnection:
        """A ``/ws/dashboard`` connection that has sent its ``subscribe``."""
        url = websocket_url(self.hub, "/ws/dashboard")
        connection = await connect(
            url, open_timeout=10.0, max_size=2**26, **_options(url, self.ssl)
        )
        chosen = {"topics": topics} if topics else {}
        subscribe = _frame(Subscribe, token=self.token, batch=True, **chosen)
        try:
            await connection.send(json.dumps(subscribe))
        except ConnectionClosed:
            await _close(connection)
            raise
        return connection


def _watched(raw: str | bytes) -> list[Frame]:
    """The frames in one message from ``/ws/dashboard`` (an ``events`` frame carries
    several); an error reply (a refused token) raises."""
    frame: Frame = json.loads(raw)
    kind = frame.get("type")
    if kind == "events":
        events: list[Frame] = frame["events"]
        return events
    if kind == "error":
        raise AuthenticationError(str(frame.get("error")))
    return [frame]
