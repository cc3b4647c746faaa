"""Token rows, written straight to the database (the CLI uses this while hubs run).

``db`` is a SQLite file or a PostgreSQL URL (:mod:`agentcom.store.location`). Only
:func:`save_token` creates what is missing (a SQLite file, PostgreSQL tables); listing
or revoking in a SQLite database that does not exist raises
``sqlite3.OperationalError``, in a PostgreSQL database without agentcom's tables
:class:`StoreError`. The database's triggers record every revocation, whoever writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from agentcom.errors import StoreError
from agentcom.store.base import TokenRecord
from agentcom.store.location import is_postgres_url
from agentcom.store.sqlite import open_database

__all__ = ["delete_token", "list_tokens", "save_token"]

_SAVE = (
    "INSERT INTO tokens (agent_id, token_hash, role, created_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (agent_id) DO UPDATE SET token_hash = excluded.token_hash, "
    "role = excluded.role, created_at = excluded.created_at"
)
_DELETE = "DELETE FROM tokens WHERE agent_id = ?"
_LIST = "SELECT agent_id, role, token_hash, created_at FROM tokens ORDER BY agent_id"


class _Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchall(self) -> list[Any]: ...


_Execute = Callable[[str, Sequence[Any]], _Cursor]


def save_token(db: Path | str, agent_id: str, token_hash: str, role: str) -> None:
    """Store the hash of a new token for ``agent_id``, replacing any earlier one."""
    with _database(db, existing=False) as execute:
        execute(_SAVE, (agent_id, token_hash, role, time.time_ns() // 1_000_000))


def delete_token(db: Path | str, agent_id: str) -> bool:
    """Revoke ``agent_id``'s token; False when it had none."""
    with _database(db, existing=True) as execute:
        return execute(_DELETE, (agent_id,)).rowcount > 0


def list_tokens(db: Path | str) -> list[TokenRecord]:
    """Every token (hashes only), by agent id."""
    with _database(db, existing=True) as execute:
        return [TokenRecord(*row) for row in execute(_LIST, ()).fetchall()]


@contextmanager
def _database(db: Path | str, existing: bool) -> Iterator[_Execute]:
    """Run statements (``?`` placeholders) on ``db``, each committed as it runs; with
    ``existing``, a database without agentcom's schema is refused instead of made."""
    if not is_postgres_url(db):
        connection = open_database(db, existing=existing)
        try:
            yield connection.execute
        finally:
            connection.close()
        return
    from agentcom.store.pgconnection import connect, native, scrubbed
    from agentcom.store.pgschema import ensure_schema, has_schema

    url = str(db)
    postgres = connect(url)
    try:
        if existing and not has_schema(postgres):
            raise StoreError("it has no agentcom tables (token create and serve make them)")
        ensure_schema(postgres)
        yield lambda sql, params: postgres.execute(native(sql), scrubbed(params))
    finally:
        postgres.close()
