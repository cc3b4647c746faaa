"""PostgreSQL connections as agentcom uses them (psycopg 3, synchronous).

A connection is in autocommit mode: every write transaction is explicit
(``connection.transaction()``), and a read never leaves a transaction open. The SQL the
stores share is written with ``?`` placeholders (:mod:`agentcom.store.sqlbase`);
:func:`native` turns it into psycopg's ``%s``.

PostgreSQL refuses the NUL character in text, where SQLite stores it: a model name or a
channel name sent with one would make a whole group commit fail, and every change in it
refused. :func:`scrubbed` replaces it with U+FFFD in every text parameter, of writes and
reads alike, so a value is found under the name it was stored with. Bodies are JSON, in
which a NUL is already written ``\\u0000`` and kept as it is.

libpq waits for an answer as long as the network lets it: a server behind a path that
went silent (no FIN, no RST) holds the caller forever, and a read holds the event loop.
:class:`Deadlines` bounds each use of a connection: one that outlasts its bound has its
socket shut down, so the driver raises at once and the connection counts as closed.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from agentcom.errors import StoreError

__all__ = [
    "CONNECT_TIMEOUT_S",
    "DEAD_PEER_OPTIONS",
    "Deadlines",
    "PgConnection",
    "connect",
    "native",
    "one_line",
    "scrubbed",
]

PgConnection = psycopg.Connection[tuple[Any, ...]]

CONNECT_TIMEOUT_S = 10
"""How long opening a connection may take unless the URL says (``connect_timeout``);
libpq would otherwise wait as long as the network lets it."""

DEAD_PEER_OPTIONS = (
    "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"
    " -c tcp_user_timeout=30000"
)
"""Asked of the server for each of the hub's sessions (unless the URL's ``options`` set
them): notice within about 30 s that the hub's machine is gone (keepalives unanswered,
or data unacknowledged), and end the session, rather than after the system's two hours.
It matters most for the session holding the hub's lock: until it ends, a standby cannot
take over."""

_CLIENT_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                      "keepalives_count": 3}  # fmt: skip
"""The same on the hub's side of each connection: a server that went away is noticed."""


def connect(url: str, lock_timeout_s: float | None = None) -> PgConnection:
    """A new connection to the database of ``url``, in autocommit mode.

    Args:
        url: a ``postgresql://`` URL (libpq's syntax: user, password, host, port, database,
            and parameters such as ``sslmode``).
        lock_timeout_s: how long a statement waits for a lock held by another session
            before it fails (the SQLite store's busy timeout); None: as the server says.

    Raises:
        StoreError: the server cannot be reached, or refuses the connection (one line).
    """
    try:
        parameters = conninfo_to_dict(url)
        parameters.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
        parameters.setdefault("application_name", "agentcom")
        for name, value in _CLIENT_KEEPALIVES.items():
            parameters.setdefault(name, value)
        # Set by the startup packet, no round trip of their own; the URL's own options
        # come last, so they win.
        options = DEAD_PEER_OPTIONS
        if lock_timeout_s is not None:
            options += f" -c lock_timeout={max(1, int(lock_timeout_s * 1000))}ms"
        parameters["options"] = f"{options} {parameters.get('options') or ''}".strip()
        conninfo = make_conninfo("", **parameters)
        connection: PgConnection = psycopg.connect(conninfo, autocommit=True)
    except psycopg.Error as exc:
        raise StoreError(one_line(exc)) from None
    return connection


class Deadlines:
    """Bounds on the uses of connections (see the module docstring).

    A use is bounded by :meth:`bound`; a thread of its own, woken every ``tick_s``,
    shuts down the socket of every use past its bound. A use is found out at most
    ``tick_s`` after its bound.

    Args:
        tick_s: how often the bounds are checked.
    """

    def __init__(self, tick_s: float) -> None:
        self._tick_s = tick_s
        self._lock = threading.Lock()
        self._armed: dict[int, tuple[float, int]] = {}  # a use: (its deadline, its socket)
        self._next = 0
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.expired = 0  # uses whose socket was shut down, for tests and logs

    @contextmanager
    def bound(self, connection: PgConnection, seconds: float) -> Iterator[None]:
        """What runs inside may use ``connection`` for ``seconds``; past them its socket
        is shut down (what runs then fails with ``psycopg.OperationalError``)."""
        try:
            fd = connection.pgconn.socket
        except psycopg.Error:  # no socket: the connection is closed, the use fails anyway
            yield
            return
        with self._lock:
            self._next += 1
            key = self._next
            self._armed[key] = (time.monotonic() + seconds, fd)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="pg-deadlines", daemon=True
                )
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:  # once out, the socket is never touched again (it may be reused)
                self._armed.pop(key, None)

    def stop(self) -> None:
        """Stop checking (later uses are not bounded)."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        while not self._stopped.wait(self._tick_s):
            now = time.monotonic()
            with self._lock:
                for key, (deadline, fd) in list(self._armed.items()):
                    if deadline <= now:
                        del self._armed[key]
                        self.expired += 1
                        _shut_down(fd)


def _shut_down(fd: int) -> None:
    """End the connection of socket ``fd`` both ways; the descriptor stays its owner's."""
    try:
        with socket.socket(fileno=os.dup(fd)) as duplicate:
            duplicate.shutdown(socket.SHUT_RDWR)
    except OSError:  # already gone
        pass


def one_line(exc: BaseException) -> str:
    """What a driver error says, on one line (libpq's messages span several)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


@functools.lru_cache(maxsize=512)
def native(sql: str) -> str:
    """``sql`` written with ``?`` placeholders, as psycopg takes it (``%s``; a literal
    ``%`` doubled). The SQL given never holds a ``?`` that is not a placeholder."""
    return sql.replace("%", "%%").replace("?", "%s")


def scrubbed(params: Sequence[Any]) -> Sequence[Any]:
    """``params`` with every NUL in a text (or a list of texts) replaced by U+FFFD; the
    same sequence when there is none, which is nearly always."""
    for value in params:
        if isinstance(value, list) or (isinstance(value, str) and "\x00" in value):
            return tuple(_scrubbed(value) for value in params)
    return params


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_scrubbed(item) for item in value]
    return value
