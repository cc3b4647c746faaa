"""The hub process: the websockets server, its connections, and the sweep loop.

This module is longer than the others because ``HubServer`` owns the process's
lifecycle (bind, lock, open, restore, serve, stop), ``settle()`` and the timers that call
the domain; each of those needs the others' state, and the per-connection work already
lives in ``agent.py``, ``viewer.py`` and ``http.py``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from agentcom.config import Settings
from agentcom.errors import ConfigurationError, DatabaseInUse, LockLost, StoreError
from agentcom.hub.auth import Authenticator
from agentcom.hub.clock import Clock, SystemClock
from agentcom.hub.endpoints import is_loopback
from agentcom.hub.hub import Effects, Hub
from agentcom.hub.limits import ViolationTracker
from agentcom.protocol.common import Outbound
from agentcom.protocol.outbound import ErrorReply
from agentcom.pubsub import PubSub, make_pubsub
from agentcom.server.agent import AgentSession
from agentcom.server.cluster import SharedNode, SharedStore
from agentcom.server.failover import LockWatch, wait_for_lock
from agentcom.server.guard import Guard
from agentcom.server.health import EndpointProber
from agentcom.server.http import HttpRoutes
from agentcom.server.inbound import peer
from agentcom.server.metrics import HubMetrics, LoopLagMonitor
from agentcom.server.output import ReplyBudget, ReplyQueue
from agentcom.server.revocation import RevocationWatch
from agentcom.server.sockets import AcceptFailureLog, listening_socket, raise_open_file_limit
from agentcom.server.storewatch import StoreWatch
from agentcom.server.viewer import DashboardSession, OperatorSession
from agentcom.server.waiters import TaskWaiters
from agentcom.server.writes import encode, send_frames, write_frames
from agentcom.store.base import ChangeKey, ObservedStore
from agentcom.store.location import shown
from agentcom.store.open import HubLock, lock_database, open_store
from agentcom.wirelog import library_logger

if TYPE_CHECKING:
    from agentcom.server.host import Answer
    from agentcom.server.sharedmessages import SharedMessages

__all__ = ["HubServer"]

logger = logging.getLogger(__name__)

_NO_EFFECTS = Effects()  # never extended: only effects that hold something are


class HubServer:
    """One hub: store, domain, pubsub and the WebSocket/HTTP server around them.

    Args:
        settings: configuration.
        clock: time source (a manual clock in tests).
        run_sweeps: run the periodic timeout sweep (tests drive :meth:`sweep` themselves).
    """

    def __init__(
        self, settings: Settings, clock: Clock | None = None, run_sweeps: bool = True
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        # The database is opened by start(), once the port and the database lock are held:
        # a hub that cannot have both must leave the database as it found it.
        self.store: ObservedStore
        self.hub: Hub
        self.waiters: TaskWaiters  # operators waiting for tasks to finish
        self.store_watch: StoreWatch
        self.auth: Authenticator
        self.revocations: RevocationWatch
        self._lock: HubLock | None = None
        self._lock_watch: LockWatch | None = None
        # While standing by: who serves the database (the last refusal names it).
        self.serving_elsewhere: DatabaseInUse | None = None
        self._standby: asyncio.Task[None] | None = None
        self._stop_requested = asyncio.Event()
        # Set when the hub ends by itself (a takeover that failed, a lock lost), with why.
        self.ended = asyncio.Event()
        self.failure: BaseException | None = None
        self._database_open = False
        self._ready = asyncio.Event()  # set once state is restored, or once start failed
        self._restored = False
        self.pubsub: PubSub = make_pubsub(settings, self.clock)
        self.violations = ViolationTracker(self.clock)
        self.guard = Guard(
            self.clock,
            settings.max_connections_per_address,
            settings.allowed_origins,
            max_connections=settings.max_connections,
            max_unauthenticated_connections=settings.max_unauthenticated_connections,
            max_frame_bytes=settings.max_frame_bytes,
            max_handshake_bytes=settings.max_handshake_bytes,
            auth_failures_before_delay=settings.auth_failures_before_delay,
            tls=settings.certfile is not None,
        )
        self.replies = ReplyBudget(
            settings.max_reply_buffer_bytes, settings.max_reply_bytes_in_flight
        )
        self.accept_failures = AcceptFailureLog(self.clock, settings.accept_error_log_interval_s)
        self.agent_connections: dict[str, ServerConnection] = {}
        self.metrics = HubMetrics(self, settings.metrics_label_cap)
        self.loop_lag = LoopLagMonitor(self.metrics, settings.loop_lag_interval_s)
        self._run_sweeps = run_sweeps
        self._server: Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.prober = EndpointProber(
            self, settings.endpoint_check_interval_s, settings.endpoint_check_timeout_s
        )
        self._wake_handle: asyncio.TimerHandle | None = None
        self._wake_at_ms: int | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.shared: SharedNode | None = None  # nodes sharing the database: this one's part
        self.shared_messages: SharedMessages | None = None  # ... in messages and channels
        self._stopping = False
        self._open_files = 0

    @property
    def port(self) -> int:
        """The bound TCP port."""
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def restored(self) -> bool:
        """Whether the database is open and its state restored (the hub serves)."""
        return self._restored

    @property
    def insecure(self) -> bool:
        """Whether the hub listens beyond loopback without TLS (tokens in clear)."""
        return not self.tls and not is_loopback(self.settings.host)

    async def start(self) -> None:
        """Listen, take the database, restore its state, then serve.

        In that order, so that a hub that cannot have its port or its database changes
        nothing: the port is bound first, then the database lock is taken (a lock file
        next to a SQLite database, an advisory lock in PostgreSQL: ``store/open.py``), and
        only then is the database opened (created when missing) and restored. Requests
        that arrive meanwhile wait until it is restored.

        Raises:
            OSError: the port cannot be bound (taken, not permitted ...).
            DatabaseInUse: another hub process serves the database.
            StoreError: the database's lock file cannot be opened, or it is a directory;
                the PostgreSQL server cannot be reached or its schema made.
            sqlite3.Error, psycopg.Error: the database cannot be opened or read.
            ConfigurationError: asked to listen beyond loopback without TLS and without
                ``insecure`` (checked before anything else).
        """
        if self.insecure:
            if not self.settings.insecure:
                raise ConfigurationError(
                    f"refusing to listen on {self.settings.host} without TLS: tokens would "
                    "cross the network in clear; set --certfile/--keyfile, or --insecure "
                    "(AGENTCOM_INSECURE=1) to accept that"
                )
            logger.warning(
                "listening on %s WITHOUT TLS: agent and operator tokens cross the network "
                "in clear (--insecure)",
                self.settings.host,
            )
        http = HttpRoutes(self)

        async def process_request(
            connection: ServerConnection, request: Request
        ) -> Response | None:
            refusal = self.guard.admit(connection, request)
            if refusal is not None:
                return refusal
            standby = self.serving_elsewhere
            if standby is not None and not self._restored:
                return http.standby_answer(request, standby)
            await self._ready.wait()
            if not self._restored:  # the start failed: the hub is going away
                return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "hub stopping\n")
            return await http.process_request(connection, request)

        self._open_files = self._limit_connections_to_descriptors()
        sock = listening_socket(
            self.settings.host, self.settings.port, self.guard.accept, self.guard.release
        )
        self.accept_failures.install(asyncio.get_running_loop())
        self._server = await serve(
            self._route_connection,
            sock=sock,
            process_request=process_request,
            create_connection=self.guard.connection_class(),
            ssl=self._tls_context(),
            open_timeout=self.settings.handshake_timeout_s,
            # Raised to max_frame_bytes once the connection authenticates (Guard).
            max_size=self.settings.max_unauthenticated_frame_bytes,
            compression="deflate" if self.settings.compression else None,
            ping_interval=self.settings.keepalive_interval_s or None,
            ping_timeout=self.settings.keepalive_timeout_s or None,
            close_timeout=self.settings.close_timeout_s,
            server_header="agentcom",  # no version: /health tells it to whoever needs it
            logger=library_logger("websockets.server"),  # its DEBUG lines print tokens
        )
        try:
            self._lock = lock_database(
                self.settings.db, self.url("/ws"), self.settings.shares_database
            )
        except DatabaseInUse as exc:
            if not self.settings.standby:
                await self._abandon_start()
                raise
            self.serving_elsewhere = exc
            logger.info("standby: %s; taking over when it ends", exc)
            self._standby = asyncio.create_task(self._stand_by())
            return
        except BaseException:
            await self._abandon_start()
            raise
        try:
            await self._serve_database()
        except BaseException:
            await self._abandon_start()
            raise

    @property
    def standing_by(self) -> bool:
        """Whether the hub waits as a standby for the database another hub serves."""
        return self.serving_elsewhere is not None and not self._restored

    async def _stand_by(self) -> None:
        """Wait for the database's lock, then serve it as a hub that just started would."""

        def refused(exc: DatabaseInUse) -> None:
            self.serving_elsewhere = exc

        lock = await wait_for_lock(
            self.settings.db, self.url("/ws"), self.settings.standby_retry_s,
            self._stop_requested, refused,
        )  # fmt: skip
        if lock is None:
            return
        self._lock = lock
        logger.info("standby taking over the database %s", shown(self.settings.db))
        try:
            await self._serve_database()
        except Exception as exc:
            logger.exception("the standby could not take over the database")
            if self._database_open:
                self.store.close()
                self._database_open = False
            lock.release()
            self._end(exc)

    def _end(self, failure: BaseException) -> None:
        """The hub ends by itself: whoever runs it stops it and reports ``failure``."""
        if self.failure is None:
            self.failure = failure
        self.ended.set()

    def _lock_lost(self, reason: str) -> None:
        """Another hub may serve the database now: stop serving it, write nothing more."""
        logger.error("stepping down: %s; this hub stops serving the database", reason)
        self._end(LockLost(reason))

    async def _serve_database(self) -> None:
        """With the lock held: open the database, restore, serve."""
        assert self._lock is not None
        self._open_database()
        restored = self.hub.recovery.restore()
        logger.info("restored %d unfinished tasks from %s", restored, shown(self.settings.db))
        logger.info(
            "open-file limit %d: at most %d connections (%d unauthenticated, %d per address)",
            self._open_files, self.guard.max_connections,
            self.settings.max_unauthenticated_connections,
            self.settings.max_connections_per_address,
        )  # fmt: skip
        await self.pubsub.start()  # connects in the background: a Redis outage delays nothing
        if self.shared is not None:
            self.shared.start()
        if self.shared_messages is not None:
            self.shared_messages.start()
        self._restored = True
        self._ready.set()
        if self._run_sweeps:
            self._sweeper = asyncio.create_task(self._sweep_forever())
            self.prober.start()
            self.revocations.start()
            self.loop_lag.start()
        if self._lock.can_be_lost:
            settings = self.settings
            self._lock_watch = LockWatch(
                self._lock, settings.lock_check_interval_s, settings.lock_check_timeout_s,
                self._lock_lost,
            )  # fmt: skip
            self._lock_watch.start()
        logger.info("agentcom hub listening on %s", self.url("/ws"))

    def _open_database(self) -> None:
        """Open the store (creating the database when missing) and the domain on it."""
        settings = self.settings
        assert self._lock is not None
        self.store = open_store(settings, self._lock.fence)
        self.hub = Hub(self.store, self.clock, settings)
        self.waiters = TaskWaiters(self.hub)
        self.store.on_refused = self._forget_refused
        self.store.on_written = self.metrics.observe_commit
        self.hub.task_observer = self.metrics.observe_task
        if settings.shares_database:
            self._join_nodes()
        self.store_watch = StoreWatch(
            self.store, settings.store_retry_interval_s, self._resume_after_store_recovery,
            self.hub.recovery.reload_pending,
        )  # fmt: skip
        self.auth = Authenticator(self.store)
        self.revocations = RevocationWatch(
            self.store, settings.token_check_interval_s, self.close_in_background,
            self.hub.token_revoked,
        )  # fmt: skip
        self._database_open = True

    def _join_nodes(self) -> None:
        """Serve the database with the other nodes that share it (server/cluster.py)."""
        from agentcom.server.sharedmessages import SharedMessages
        from agentcom.store.pgmessages import MessageTables
        from agentcom.store.pgnodes import NodeRegistry

        directory = NodeRegistry(
            str(self.settings.db), self.settings.node_id, self.url("/ws"),
            self.settings.db_timeout_s,
        )  # fmt: skip
        self.shared = SharedNode(self, cast(SharedStore, self.store), directory)
        self.store.on_conflict = self.shared.conflicted
        self.hub.presence_observer = self.shared.presence
        tables = MessageTables(str(self.settings.db), self.settings.db_timeout_s)
        self.shared_messages = SharedMessages(self, tables)
        self.pubsub.on_remote = self.shared_messages.follow(self.shared.remote_event)

    async def _abandon_start(self) -> None:
        """Undo a start that failed after binding: stop listening, let go of the database.

        Requests waiting for the state are answered 503, as while stopping.
        """
        self._stopping = True
        self._ready.set()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        self.accept_failures.uninstall()
        await self.prober.stop()
        if self._database_open:
            self.store.close()
        if self._lock is not None:
            self._lock.release()

    def _limit_connections_to_descriptors(self) -> int:
        """Raise the open-file limit where allowed, and keep the connection cap below it
        with ``reserved_descriptors`` to spare: a hub out of descriptors cannot accept
        anyone, nor open its database. Returns the open-file limit."""
        open_files = raise_open_file_limit()
        room = max(1, open_files - self.settings.reserved_descriptors)
        self.guard.max_connections = min(self.settings.max_connections, room)
        return open_files

    @property
    def tls(self) -> bool:
        """Whether the hub serves wss:// and https://."""
        return self.settings.certfile is not None

    def url(self, path: str, websocket: bool = True) -> str:
        """The URL of ``path`` on this hub."""
        scheme = ("wss" if websocket else "https") if self.tls else ("ws" if websocket else "http")
        host = self.settings.host
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}{path}"

    def _tls_context(self) -> ssl.SSLContext | None:
        if self.settings.certfile is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.settings.certfile, self.settings.keyfile)
        return context

    async def stop(self) -> None:
        """Stop accepting, ask sidecars to reconnect (1012), flush the store (once: later calls
        return at once)."""
        if self._stopping:
            return
        self._stopping = True
        self._stop_requested.set()
        if self._standby is not None:  # let an attempt at the lock under way end first
            await asyncio.gather(self._standby, return_exceptions=True)
        if self._lock_watch is not None:
            await self._lock_watch.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._wake_handle is not None:
            self._wake_handle.cancel()
        await self.prober.stop()
        await self.loop_lag.stop()
        if self._database_open:
            await self.revocations.stop()
            await self.store_watch.stop()
        if self._server is not None:
            self._server.close(close_connections=False)
            closing = [
                connection.close(CloseCode.SERVICE_RESTART, "hub restarting")
                for connection in list(self._server.connections)
            ]
            await asyncio.gather(*closing, return_exceptions=True)
            await self._server.wait_closed()
        self.accept_failures.uninstall()
        if self.shared is not None:
            await self.shared.stop()
        if self.shared_messages is not None:
            await self.shared_messages.stop()
        await self.pubsub.stop()  # after the sessions: their last events go out first
        if not self._database_open:  # never served (a standby): nothing to flush
            if self.serving_elsewhere is not None:
                logger.info("agentcom standby stopped")
            return
        if isinstance(self.failure, LockLost):  # another hub may write now: not this one
            logger.warning("stepped down: what was not yet written is left unwritten")
        else:
            self.hub.recovery.stage_recent_activity()
            try:
                await self.store.commit()
            except StoreError:
                logger.exception("final commit failed")
        self.store.close()
        if self._lock is not None:
            self._lock.release()
        logger.info("agentcom hub stopped")

    # --- settling: commit, then reply, then push and publish -------------------------

    async def settle(
        self,
        connection: ServerConnection | None = None,
        reply: Outbound | None = None,
        effects: Effects | None = None,
    ) -> bool:
        """Make staged changes durable, then send ``reply`` and everything they caused:
        what the hub's own work queued, then ``effects`` (what a command returned).

        Returns False (after telling ``connection``) when the store could not commit.
        """
        return await self.settle_all(connection, [(reply, effects or _NO_EFFECTS)])

    async def settle_all(
        self, connection: ServerConnection | None, answers: Sequence[Answer]
    ) -> bool:
        """:meth:`settle` for several frames of one connection at once: one commit, then
        each answer's reply in order (one write with the pushes for the same connection)
        and every effect, in order.

        An answer whose effects are None is a plain reply that depends on no change: it
        is sent even when the commit fails; every other answer gets ``store_unavailable``
        then. Returns False when the store could not commit.
        """
        outbox = self.hub.take_outbox()
        written = self.store.commits
        try:
            await self.store.commit()
        except StoreError as exc:
            # The store discarded the changes and the hub reloaded what they touched
            # (_forget_refused): the outbox announces what never happened, so it goes too.
            self.store_watch.failed(exc)
            if connection is not None:
                refused = _store_error(str(exc))
                for reply, effects in answers:
                    if effects is None and reply is not None:
                        await self.send(connection, reply)
                    elif effects is not None:
                        await self.send(connection, refused)
            return False
        if self.store.commits != written:  # a real write went through, not an empty commit
            self.store_watch.written()
        if self.shared is not None:  # another node's write may have won meanwhile
            answers = self._drop_lost(outbox, answers)
        for _, effects in answers:
            if not effects:
                continue
            if outbox:
                outbox.extend(effects)
            else:  # the usual case: nothing of the hub's own to send first
                outbox = effects
        # Everything for one connection goes out in one write: an agent's acknowledgement
        # and the next task it is assigned, typically.
        writes: dict[ServerConnection, tuple[str | None, list[bytes]]] = {}
        frames_sent = self.metrics.frames_sent
        if connection is not None:
            replies: list[bytes] = []
            for reply, _ in answers:
                if reply is not None:
                    replies.append(encode(reply))
                    frames_sent[type(reply)].inc()
            if replies:
                writes[connection] = (None, replies)
        if outbox:
            encoded: dict[int, bytes] = {}
            for agent_id, frame in outbox.pushes:
                target = self.agent_connections.get(agent_id)
                if target is None:
                    continue
                data = encoded.get(id(frame))
                if data is None:
                    data = encoded[id(frame)] = encode(frame)
                pending = writes.get(target)
                if pending is None:
                    writes[target] = (agent_id, [data])
                else:
                    pending[1].append(data)
                frames_sent[type(frame)].inc()
        for target, (holder, frames) in writes.items():
            if self._reading_pushes(target, holder):
                write_frames(target, frames)
        if outbox:
            for topic, event in outbox.events:
                self.pubsub.publish(topic, event)
            self.waiters.resolve(outbox.finished)
            for endpoint_id in outbox.check_endpoints:
                self.prober.check_soon(endpoint_id)
            if outbox.wake_at_ms is not None:
                self._wake_at(outbox.wake_at_ms)
        return True

    def _drop_lost(self, outbox: Effects, answers: Sequence[Answer]) -> list[Answer]:
        """Nodes sharing a database: what was decided from a task's state that another
        node changed first (its write lost) is not sent: pushes and events naming the
        task go, an agent's frame about it is answered ``not_assigned``, and the effects
        say which of their tasks were lost (an operator's request is then refused)."""
        kept: list[Answer] = []
        for part in (outbox, *(effects for _, effects in answers)):
            if part and part.mark != self.hub.conflicts.seq:
                part.drop_lost(self.hub.conflicts.since(part.mark))
        for reply, effects in answers:
            task_id = getattr(reply, "task_id", None)
            if effects is not None and task_id is not None and task_id in effects.lost:
                message = f"task {task_id} changed on another hub node first; not applied"
                reply = ErrorReply(error="not_assigned", task_id=task_id, message=message)
            kept.append((reply, effects))
        return kept

    def _reading_pushes(self, connection: ServerConnection, agent_id: str | None) -> bool:
        """Whether pushes may still be written to an agent's connection.

        Pushes and replies are written without waiting (no backpressure), so an
        agent that stops reading would make the hub buffer every push for it. Past
        ``max_push_buffer_bytes`` unsent, the connection is dropped: the agent reconnects
        like after any drop, and its task is held for the grace period meanwhile.
        """
        transport = connection.transport
        if transport.is_closing():
            return False
        unsent = transport.get_write_buffer_size()
        if unsent <= self.settings.max_push_buffer_bytes:
            return True
        logger.warning(
            "agent %s is not reading (%d bytes of pushes unsent); dropping its connection",
            agent_id or f"at {peer(connection)}", unsent,
        )  # fmt: skip
        transport.abort()
        return False

    def _wake_at(self, at_ms: int) -> None:
        """Release held tasks when their wait for a routing target ends."""
        if self._stopping or (self._wake_at_ms is not None and self._wake_at_ms <= at_ms):
            return
        if self._wake_handle is not None:
            self._wake_handle.cancel()
        self._wake_at_ms = at_ms
        delay = max(0.0, (at_ms - self.clock.now_ms()) / 1000)
        self._wake_handle = asyncio.get_running_loop().call_later(delay, self._on_wake)

    def _on_wake(self) -> None:
        self._wake_handle = None
        self._wake_at_ms = None
        task = asyncio.create_task(self._release_holds())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _release_holds(self) -> None:
        _, effects = self.hub.run(self.hub.scheduler.release_due_holds)
        deadline = self.hub.queue.next_hold_deadline()
        await self.settle(effects=effects)
        if deadline is not None:
            self._wake_at(deadline)

    async def commit(self) -> None:
        """Make what is staged durable, so that a read sees it (one group commit)."""
        await self.store.commit()

    async def send(self, connection: ServerConnection, frame: Outbound) -> None:
        """Send one frame; a connection that closed meanwhile is ignored."""
        with contextlib.suppress(ConnectionClosed):
            await send_frames(connection, (encode(frame),))
            self.metrics.frames_sent[type(frame)].inc()

    def send_replies(
        self, connection: ServerConnection, frames: Sequence[Outbound], who: str
    ) -> None:
        """Write replies to an operator or dashboard now, within :attr:`replies`: a client
        that leaves too much unread is cut off instead (``who`` names it in the log).

        The replies are written without waiting for the client to read them: a request
        that waited would keep its reply in memory on top of the copy in the write buffer,
        and the budget, not the wait, is what bounds a client that does not read.
        """
        queue = ReplyQueue(connection, self.replies, who, self.metrics.sent)
        for frame in frames:
            queue.add(frame)
        queue.flush()

    # --- sweep ----------------------------------------------------------------------

    @property
    def store_failing(self) -> bool:
        """The last write failed and no write has succeeded since: new work is refused."""
        return self.store_watch.failing

    @property
    def store_error(self) -> str | None:
        """While the store fails: what the database last said (e.g. that it is unreachable)."""
        return self.store_watch.error if self.store_watch.failing else None

    async def ensure_store_writable(self) -> None:
        """Before new work: while the store is failing, probe it; raise StoreError if the
        probe fails too."""
        try:
            await self.store_watch.ensure_writable()
        except StoreError:
            raise StoreError("the database cannot be written; try again later") from None

    def _forget_refused(self, refused: list[ChangeKey]) -> None:
        """The store discarded changes it could not write: reload what they touched."""
        self.metrics.store_failures.inc()
        try:
            self.hub.recovery.forget_refused(refused)
        except Exception:  # the database cannot even be read: nothing better to do here
            logger.exception("could not reload %d refused changes", len(refused))

    async def _resume_after_store_recovery(self) -> None:
        """Offer queued work again: tasks whose assignment was refused are queued."""
        _, effects = self.hub.run(self.hub.scheduler.schedule)
        await self.settle(effects=effects)

    async def sweep(self) -> None:
        """Apply every timeout now, and drop agents that went silent.

        A silent agent is offline from this sweep on (its grace period starts now); its
        connection is closed in the background, because a peer that went dark never
        answers the closing handshake and the sweep must not wait for it.
        """
        silent, effects = self.hub.run(self.hub.sweep)
        for agent_id in silent:
            connection = self.agent_connections.pop(agent_id, None)
            effects.extend(self.hub.run(self.hub.disconnect, agent_id)[1])
            if connection is not None:
                logger.info("agent %s silent for too long; closing", agent_id)
                self.close_in_background(connection, CloseCode.GOING_AWAY, "idle timeout")
        await self.settle(effects=effects)

    def close_in_background(self, connection: ServerConnection, code: int, reason: str) -> None:
        """Start closing ``connection`` without waiting for its peer.

        The closing handshake gets ``close_timeout_s``; then the TCP connection is dropped.
        """
        closing = asyncio.create_task(self._close(connection, code, reason))
        self._background.add(closing)
        closing.add_done_callback(self._background.discard)

    async def _close(self, connection: ServerConnection, code: int, reason: str) -> None:
        try:
            # websockets bounds the handshake itself, but not a write to a peer that
            # stopped reading: this bounds both.
            async with asyncio.timeout(self.settings.close_timeout_s):
                await connection.close(code, reason)
        except TimeoutError:
            connection.transport.abort()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            try:
                await self.sweep()
            except Exception:  # the sweep must survive anything one pass hits
                logger.exception("sweep failed")

    async def _route_connection(self, connection: ServerConnection) -> None:
        """Run the session for the connection's path; a closed socket ends it quietly."""
        path = urlsplit(connection.request.path if connection.request else "/ws").path
        session_types: dict[str, type[AgentSession | DashboardSession | OperatorSession]] = {
            "/ws": AgentSession,
            "/ws/dashboard": DashboardSession,
            "/ws/operator": OperatorSession,
        }
        path = path.rstrip("/") or "/"
        session_type = session_types.get(path)
        if session_type is None or self._stopping:
            await connection.close(
                CloseCode.POLICY_VIOLATION if session_type is None else CloseCode.SERVICE_RESTART
            )
            return
        with self.metrics.connection(path), contextlib.suppress(ConnectionClosed):
            await session_type(self, connection).run()


def _store_error(detail: str) -> Outbound:
    return ErrorReply(error="store_unavailable", message=detail)
