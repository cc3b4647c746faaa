"""Token rows, written straight to the database (the CLI uses this while the hub runs).

Only :func:`save_token` creates a database that does not exist; listing or revoking
in one raises ``sqlite3.OperationalError`` instead.
"""

from __future__ import annotations

import time
from pathlib import Path

from agentcom.store.base import TokenRecord
from agentcom.store.sqlite import open_database

__all__ = ["delete_token", "list_tokens", "save_token"]


def save_token(db: Path | str, agent_id: str, token_hash: str, role: str) -> None:
    """Store the hash of a new token for ``agent_id``, replacing any earlier one."""
    connection = open_database(db)
    try:
        connection.execute(
            "INSERT INTO tokens (agent_id, token_hash, role, created_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (agent_id) DO UPDATE SET token_hash = excluded.token_hash, "
            "role = excluded.role, created_at = excluded.created_at",
            (agent_id, token_hash, role, time.time_ns() // 1_000_000),
        )
    finally:
        connection.close()


def delete_token(db: Path | str, agent_id: str) -> bool:
    """Revoke ``agent_id``'s token; False when it had none."""
    connection = open_database(db, existing=True)
    try:
        cursor = connection.execute("DELETE FROM tokens WHERE agent_id = ?", (agent_id,))
        return cursor.rowcount > 0
    finally:
        connection.close()


def list_tokens(db: Path | str) -> list[TokenRecord]:
    """Every token (hashes only), by agent id."""
    connection = open_database(db, existing=True)
    try:
        rows = connection.execute(
            "SELECT agent_id, role, token_hash, created_at FROM tokens ORDER BY agent_id"
        ).fetchall()
        return [TokenRecord(*row) for row in rows]
    finally:
        connection.close()
