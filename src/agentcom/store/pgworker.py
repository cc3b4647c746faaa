"""A PostgreSQL connection of its own, used on a thread of its own, every call bounded:
what the node registry (``pgnodes.py``) and the message tables (``pgmessages.py``) of
nodes sharing a database are built on.

Nothing is opened until the first call; a connection the server ended is replaced at the
next one; a call that does not answer within ``timeout_s`` fails (its connection is
dropped by :class:`agentcom.store.pgconnection.Deadlines`), so the event loop never
waits on the network.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from agentcom.errors import StoreError
from agentcom.store.pgconnection import Deadlines, PgConnection, connect, one_line
from agentcom.store.sqlwrites import ConnectionThread

__all__ = ["PgWorker"]

_T = TypeVar("_T")


def _open(connection: PgConnection) -> bool:
    return not connection.closed


class PgWorker:
    """A connection and a thread of its own; see the module docstring.

    Args:
        url: the database (``postgresql://user@host:port/name``).
        timeout_s: how long a call may take (opening a connection included) before it
            fails with :class:`StoreError`; a call that gave up may still take effect.
        thread_name: the thread's name prefix.
        what: how its errors start (``"node registry "``), before the call's name.
    """

    def __init__(self, url: str, timeout_s: float, thread_name: str, what: str = "") -> None:
        self._timeout_s = timeout_s
        parameters = conninfo_to_dict(url)
        parameters.setdefault("connect_timeout", max(2, math.ceil(timeout_s)))  # libpq's least
        self._url = make_conninfo("", **parameters)
        self._deadlines = Deadlines(tick_s=min(timeout_s / 4, 0.5))
        self._thread = ConnectionThread(self._connect, thread_name, alive=_open)
        self._what = what
        self._closed = False

    def _connect(self) -> PgConnection:
        return connect(self._url)

    async def _call(self, name: str, function: Callable[..., _T], *args: Any) -> _T:
        """``function(*args)`` on the thread, bounded by ``timeout_s``; every failure as
        a one-line StoreError naming the call."""
        where = f"{self._what}{name}"
        if self._closed:
            raise StoreError(f"{where}: closed")
        try:
            return await asyncio.wait_for(self._thread.run(function, *args), self._timeout_s)
        except TimeoutError:
            raise StoreError(
                f"{where}: no answer from the database within {self._timeout_s} s"
            ) from None
        except psycopg.Error as exc:
            raise StoreError(f"{where}: {one_line(exc)}") from None
        except StoreError as exc:
            raise StoreError(f"{where}: {exc}") from None

    def _shut_down(self) -> None:
        """Stop the thread (closing its connection) and the deadlines' watchdog."""
        self._thread.close()
        self._deadlines.stop()
