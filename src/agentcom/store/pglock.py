"""One hub per PostgreSQL database: a session-level advisory lock.

The hub that serves a database holds ``pg_try_advisory_lock`` (the key
:data:`agentcom.store.pgschema.HUB_LOCK`) on a connection of its own for as long as it
runs, and writes its pid, host and address in the ``hub_owner`` row for whoever finds
the lock taken. PostgreSQL drops the lock when that session ends, however the hub ends
(``kill -9`` closes its socket), so a dead hub never leaves a lock to clean by hand. The
row says which server session wrote it: a refused hub names the holder only when that
session is the one holding the lock, never a dead hub whose row was not yet replaced.

Advisory locks belong to one database: hubs on two databases of one server do not meet.
The token commands take no lock, as with SQLite; PostgreSQL's own locking protects
every transaction.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

import psycopg

from agentcom.errors import DatabaseInUse, StoreError
from agentcom.store.location import shown
from agentcom.store.lock import HubOwner
from agentcom.store.pgconnection import PgConnection, connect, one_line
from agentcom.store.pgschema import HUB_LOCK, ensure_schema, has_schema

__all__ = ["PostgresLock"]

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


class PostgresLock:
    """Held while one hub serves a PostgreSQL database; see the module docstring.

    Use :meth:`acquire`; :meth:`release` (or the end of the process) frees it.
    """

    def __init__(self, url: str, connection: PgConnection) -> None:
        self.url = url
        self._connection: PgConnection | None = connection

    @classmethod
    def acquire(cls, url: str, address: str) -> PostgresLock:
        """Take the lock of the database at ``url`` without waiting, recording this
        process as its hub, reachable at ``address``; the schema is created or migrated
        if needed, once the lock is held.

        Raises:
            DatabaseInUse: another hub holds it (naming that hub where its row says).
            StoreError: the server cannot be reached, or the schema cannot be made.
        """
        connection = connect(url)
        try:
            row = connection.execute("SELECT pg_try_advisory_lock(%s, %s)", HUB_LOCK).fetchone()
            if not (row and row[0]):
                owner = _holder(connection)
                raise DatabaseInUse(shown(url), owner.pid, owner.host, owner.address)
            ensure_schema(connection)
            since = time.time_ns() // 1_000_000
            connection.execute(_RECORD_OWNER, (os.getpid(), socket.gethostname(), address, since))
        except psycopg.Error as exc:
            connection.close()
            raise StoreError(one_line(exc)) from None
        except BaseException:
            connection.close()
            raise
        return cls(url, connection)

    def release(self) -> None:
        """Free the lock (later calls do nothing), naming nobody as the hub any more."""
        if self._connection is None:
            return
        connection, self._connection = self._connection, None
        with contextlib.suppress(psycopg.Error):  # the session is gone: so is the lock
            connection.execute("DELETE FROM hub_owner WHERE backend_pid = pg_backend_pid()")
        connection.close()  # ending the session drops the lock


def _holder(connection: PgConnection) -> HubOwner:
    """The hub holding the lock, as far as its row says (nothing known: no row yet)."""
    if not has_schema(connection):
        return HubOwner()
    row = connection.execute(_HOLDER, HUB_LOCK).fetchone()
    if row is None:
        return HubOwner()
    pid, host, address = row
    return HubOwner(pid=pid, host=host, address=address)
