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
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from agentcom.errors import StoreError

__all__ = ["CONNECT_TIMEOUT_S", "PgConnection", "connect", "native", "one_line", "scrubbed"]

PgConnection = psycopg.Connection[tuple[Any, ...]]

CONNECT_TIMEOUT_S = 10
"""How long opening a connection may take unless the URL says (``connect_timeout``);
libpq would otherwise wait as long as the network lets it."""


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
        conninfo = make_conninfo("", **parameters)
        connection: PgConnection = psycopg.connect(conninfo, autocommit=True)
    except psycopg.Error as exc:
        raise StoreError(one_line(exc)) from None
    if lock_timeout_s is not None:
        milliseconds = max(1, int(lock_timeout_s * 1000))
        connection.execute("SELECT set_config('lock_timeout', %s, false)", (f"{milliseconds}ms",))
    return connection


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
