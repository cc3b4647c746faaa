"""Open the database a ``db`` setting names: a SQLite file, or PostgreSQL by URL.

The one place that chooses between the two: the hub (``server/app.py``) takes its lock
and opens its store here, the token commands (``store/tokens.py``) their connections.
The PostgreSQL modules (and psycopg) are imported only when a URL asks for them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Protocol

from agentcom.config import Settings
from agentcom.errors import StoreError
from agentcom.store.base import ObservedStore
from agentcom.store.location import is_postgres_url
from agentcom.store.lock import DatabaseLock
from agentcom.store.sqlite import SqliteStore

__all__ = ["HubLock", "database_errors", "lock_database", "open_store"]


class HubLock(Protocol):
    """What a hub holds while it serves a database (one hub per database)."""

    @property
    def can_be_lost(self) -> bool:
        """Whether the lock can go while the hub lives (a PostgreSQL session that ends),
        so the hub must :meth:`check` it now and then."""

    def check(self) -> bool | None:
        """Whether the hub still holds the lock (retaking it if it can): True, False
        (another hub holds it, or did since), None (cannot tell now). Blocks."""

    @property
    def fence(self) -> tuple[Any, ...] | None:
        """What every write of this hub checks it is still the hub of the database (None:
        nothing to check, the lock cannot be lost while the hub lives)."""

    def release(self) -> None:
        """Free the lock; later calls do nothing."""


def lock_database(db: Path | str, address: str, shared: bool = False) -> HubLock:
    """Take the lock of ``db`` for this hub, reachable at ``address`` (``shared``: as one
    of the nodes serving a PostgreSQL database together).

    Raises:
        DatabaseInUse: another hub serves the database.
        StoreError: the lock cannot be taken (a directory, an unreachable server ...).
    """
    if is_postgres_url(db):
        from agentcom.store.pglock import PostgresLock, SharedLock

        if shared:
            return SharedLock.acquire(str(db))
        return PostgresLock.acquire(str(db), address)
    return DatabaseLock.acquire(db, address)


def open_store(settings: Settings, fence: tuple[Any, ...] | None = None) -> ObservedStore:
    """The store of ``settings.db``, with its schema in place; with ``fence`` (the lock's
    :attr:`HubLock.fence`), a write that finds another hub serving the database is refused.

    Raises:
        StoreError: the PostgreSQL server cannot be reached, or the schema cannot be made.
        sqlite3.Error: the SQLite file cannot be opened or created.
    """
    if is_postgres_url(settings.db):
        from agentcom.store.postgres import PostgresStore

        return PostgresStore(
            str(settings.db),
            fence=fence,
            shared=settings.shares_database,
            batch_max=settings.commit_batch_max,
            busy_timeout_s=settings.db_busy_timeout_s,
            timeout_s=settings.db_timeout_s,
        )
    return SqliteStore(
        settings.db, batch_max=settings.commit_batch_max, busy_timeout_s=settings.db_busy_timeout_s
    )


def database_errors(db: Path | str) -> tuple[type[Exception], ...]:
    """The exceptions by which the database ``db`` names says it cannot be used: what a
    command reports as one line instead of a traceback."""
    if is_postgres_url(db):
        import psycopg

        return (psycopg.Error, StoreError)
    return (sqlite3.Error, StoreError)
