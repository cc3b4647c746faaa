"""One hub per PostgreSQL database: a session-level advisory lock.

The hub that serves a database holds ``pg_try_advisory_lock`` (the key
:data:`agentcom.store.pgschema.HUB_LOCK`) on a connection of its own for as long as it
runs, and writes its pid, host and address in the ``hub_owner`` row for whoever finds
the lock taken. PostgreSQL drops the lock when that session ends, however the hub ends
(``kill -9`` closes its socket), so a dead hub never leaves a lock to clean by hand. The
row says which server session wrote it: a refused hub names the holder only when that
session is the one holding the lock, never a dead hub whose row was not yet replaced.

The session can end while the hub lives (the server restarted, the session terminated,
the network cut): the lock is then free for another hub. :meth:`PostgresLock.check`,
called by the serving hub every ``lock_check_interval_s``, says whether it still holds
it, and retakes it on a new session when nobody else took it meanwhile: the
``hub_owner`` row still being the one this hub wrote proves that, since every hub writes
its own row before it opens the database.

Advisory locks belong to one database: hubs on two databases of one server do not meet.
The token commands take no lock, as with SQLite; PostgreSQL's own locking protects
every transaction.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from typing import Any

import psycopg

from agentcom.errors import DatabaseInUse, StoreError
from agentcom.store.location import shown
from agentcom.store.lock import HubOwner
from agentcom.store.pgconnection import PgConnection, connect, one_line
from agentcom.store.pgschema import HUB_LOCK, ensure_schema, has_schema

__all__ = ["PostgresLock", "SharedLock"]

logger = logging.getLogger(__name__)

_RECORD_OWNER = """
INSERT INTO hub_owner (id, backend_pid, pid, host, address, since)
VALUES (1, pg_backend_pid(), %s, %s, %s, %s)
ON CONFLICT (id) DO UPDATE SET backend_pid = excluded.backend_pid, pid = excluded.pid,
    host = excluded.host, address = excluded.address, since = excluded.since
"""

# The row of the session that holds the lock now, if it wrote one.
_HOLDER = """
SELECT owner.pid, owner.host, owner.address
FROM hub_owner owner JOIN pg_locks held ON held.pid = owner.backend_pid
WHERE held.locktype = 'advisory' AND held.granted AND held.objsubid = 2
  AND held.classid::bigint = %s AND held.objid::bigint = %s
  AND held.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


# Whether this session holds the hub's lock.
_HELD = """
SELECT count(*) FROM pg_locks
WHERE pid = pg_backend_pid() AND locktype = 'advisory' AND granted AND objsubid = 2
  AND classid::bigint = %s AND objid::bigint = %s
"""

_OWNER_ROW = "SELECT backend_pid, pid, host, since FROM hub_owner WHERE id = 1"

_MOVE_OWNER = (
    "UPDATE hub_owner SET backend_pid = pg_backend_pid() WHERE id = 1 AND backend_pid = %s"
)


class PostgresLock:
    """Held while one hub serves a PostgreSQL database; see the module docstring.

    Use :meth:`acquire`; :meth:`release` (or the end of the process) frees it.
    """

    can_be_lost = True
    """The lock lives in a session, which can end while the hub lives."""

    def __init__(self, url: str, connection: PgConnection, owner: tuple[Any, ...]) -> None:
        self.url = url
        self._connection: PgConnection | None = connection
        self._owner = owner  # the hub_owner row as this hub wrote it (without address)
        self._released = False

    @classmethod
    def acquire(cls, url: str, address: str) -> PostgresLock:
        """Take the lock of the database at ``url`` without waiting, recording this
        process as its hub, reachable at ``address``; the schema is created or migrated
        if needed, once the lock is held.

        Raises:
            DatabaseInUse: another hub holds it (naming that hub where its row says).
            StoreError: the server cannot be reached, or the schema cannot be made.
        """
        connection = _take(url, "SELECT pg_try_advisory_lock(%s, %s)")
        try:
            since = time.time_ns() // 1_000_000
            pid, host = os.getpid(), socket.gethostname()
            connection.execute(_RECORD_OWNER, (pid, host, address, since))
            written = (connection.info.backend_pid, pid, host, since)
        except psycopg.Error as exc:
            connection.close()
            raise StoreError(one_line(exc)) from None
        except BaseException:
            connection.close()
            raise
        return cls(url, connection, written)

    @property
    def fence(self) -> tuple[Any, ...]:
        """``(pid, host, since)`` of the ``hub_owner`` row this hub wrote: the store checks
        the row is still this in every write transaction (see :mod:`agentcom.store.postgres`)."""
        return self._owner[1:]

    def check(self) -> bool | None:
        """Whether this hub still holds the lock: True (held, or retaken on a new session
        because its session had ended and nobody took the lock meanwhile), False
        (another hub holds it, or held it since), None (cannot tell now: the server
        cannot be reached). Blocks; call it on a thread.
        """
        if self._released:
            return False
        connection = self._connection
        if connection is not None:
            try:
                row = connection.execute(_HELD, HUB_LOCK).fetchone()
            except psycopg.Error:
                row = None
            if row and row[0]:
                return True
            self._connection = None
            with contextlib.suppress(psycopg.Error):
                connection.close()
        return self._retake()

    def _retake(self) -> bool | None:
        """Take the lock again on a new session, if nobody held it since this hub did."""
        try:
            connection = connect(self.url)
        except StoreError:
            return None
        try:
            row = connection.execute("SELECT pg_try_advisory_lock(%s, %s)", HUB_LOCK).fetchone()
            if not (row and row[0]):
                connection.close()
                return False
            owner = connection.execute(_OWNER_ROW).fetchone()
            if owner is None or tuple(owner) != self._owner:
                connection.close()  # another hub served meanwhile: this one's state is stale
                return False
            connection.execute(_MOVE_OWNER, (self._owner[0],))
        except psycopg.Error:
            connection.close()
            return None
        self._owner = (connection.info.backend_pid, *self._owner[1:])
        if self._released:  # released while retaking: let go at once
            connection.close()
            return False
        self._connection = connection
        logger.warning("the session holding the database's lock ended; the lock is retaken")
        return True

    def release(self) -> None:
        """Free the lock (later calls do nothing), naming nobody as the hub any more."""
        self._released = True
        if self._connection is None:
            return
        connection, self._connection = self._connection, None
        with contextlib.suppress(psycopg.Error):  # the session is gone: so is the lock
            connection.execute("DELETE FROM hub_owner WHERE backend_pid = pg_backend_pid()")
        connection.close()  # ending the session drops the lock


def _take(url: str, try_lock: str) -> PgConnection:
    """A new session holding the hub's lock, taken by ``try_lock`` without waiting, with
    the schema created or migrated once it is held.

    Raises:
        DatabaseInUse: the lock is held in a mode that excludes this one.
        StoreError: the server cannot be reached, or the schema cannot be made.
    """
    connection = connect(url)
    try:
        row = connection.execute(try_lock, HUB_LOCK).fetchone()
        if not (row and row[0]):
            owner = _holder(connection)
            raise DatabaseInUse(shown(url), owner.pid, owner.host, owner.address)
        ensure_schema(connection)
    except psycopg.Error as exc:
        connection.close()
        raise StoreError(one_line(exc)) from None
    except BaseException:
        connection.close()
        raise
    return connection


def _holder(connection: PgConnection) -> HubOwner:
    """The hub holding the lock, as far as its row says (nothing known: no row yet)."""
    if not has_schema(connection):
        return HubOwner()
    row = connection.execute(_HOLDER, HUB_LOCK).fetchone()
    if row is None:
        return HubOwner()
    pid, host, address = row
    return HubOwner(pid=pid, host=host, address=address)


class SharedLock:
    """Held by each of the hub nodes that serve one database together: the hub's lock
    taken in shared mode (``pg_try_advisory_lock_shared``), so nodes do not exclude each
    other but a hub serving the database alone (which takes it exclusively) and these
    nodes do. The nodes' writes are fenced row by row instead (store/sqlwrites.py).

    Use :meth:`acquire`; :meth:`release` (or the end of the process) frees it.
    """

    can_be_lost = False
    """Losing the session only lets a lone hub start beside the nodes: its writes and
    theirs are both fenced by the rows they change, so nothing is written twice."""

    fence = None
    """No hub_owner row: each write checks the rows it changes."""

    def __init__(self, connection: PgConnection) -> None:
        self._connection: PgConnection | None = connection

    @classmethod
    def acquire(cls, url: str) -> SharedLock:
        """Take the lock in shared mode without waiting; the schema is created or migrated
        if needed, once it is held.

        Raises:
            DatabaseInUse: a hub serves the database alone (naming it where its row says).
            StoreError: the server cannot be reached, or the schema cannot be made.
        """
        return cls(_take(url, "SELECT pg_try_advisory_lock_shared(%s, %s)"))

    def check(self) -> bool | None:
        """Always True: see :attr:`can_be_lost`."""
        return True

    def release(self) -> None:
        """Free the lock; later calls do nothing."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
