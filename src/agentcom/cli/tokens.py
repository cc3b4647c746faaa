"""``token create|list|revoke``: tokens written and read on the database directly (a
SQLite file or a PostgreSQL URL), whether hubs run or not."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from agentcom.cli.errors import EXIT_FAILED, EXIT_OK, CliError, reason_of
from agentcom.cli.output import table, utc_time
from agentcom.hub.auth import hash_token, new_token
from agentcom.store import tokens
from agentcom.store.location import is_postgres_url, shown
from agentcom.store.open import database_errors

__all__ = ["on_database", "token_create", "token_list", "token_revoke"]


def _db_path(args: argparse.Namespace) -> str:
    """The database of the token commands: ``--db``, else ``$AGENTCOM_DB``, else ./agentcom.db."""
    return str(args.db or os.environ.get("AGENTCOM_DB") or "agentcom.db")


Handler = Callable[[argparse.Namespace], int]


def on_database(handler: Handler) -> Handler:
    """Report a database that cannot be opened or written as one line, not a traceback
    (a URL's password left out)."""

    def run(args: argparse.Namespace) -> int:
        db = _db_path(args)
        if not is_postgres_url(db) and os.path.isdir(db):
            message = f"cannot use the database {db}: it is a directory"
            raise CliError(message, EXIT_FAILED)
        try:
            return handler(args)
        except database_errors(db) as exc:
            message = f"cannot use the database {shown(db)}: {reason_of(exc)}"
            raise CliError(message, EXIT_FAILED) from None

    return run


def _existing_db_path(args: argparse.Namespace) -> str:
    """The database of a command that must not create one: a missing file is an error
    (a PostgreSQL database without agentcom's tables is refused when opened)."""
    path = _db_path(args)
    if not is_postgres_url(path) and not os.path.lexists(path):
        raise CliError(
            f"the database {path} does not exist (the token commands use --db, "
            "else $AGENTCOM_DB, else ./agentcom.db)",
            EXIT_FAILED,
        )
    return path


def token_create(args: argparse.Namespace) -> int:
    """``token create``: prints the new token alone (it is stored hashed)."""
    if not 1 <= len(args.agent_id) <= 128:
        raise CliError("AGENT_ID must be 1 to 128 characters")
    path = _db_path(args)
    creating = not is_postgres_url(path) and not os.path.lexists(path)
    token = new_token()
    tokens.save_token(path, args.agent_id, hash_token(token), args.role)
    if creating:
        print(f"created the database {path}", file=sys.stderr)
    print(token)
    return EXIT_OK


def token_list(args: argparse.Namespace) -> int:
    """``token list``: who has a token, with role and date, never the secret."""
    records = tokens.list_tokens(_existing_db_path(args))
    rows = [{"agent_id": r.agent_id, "role": r.role, "created_at": r.created_at} for r in records]
    if args.json:
        print(json.dumps(rows))
        return EXIT_OK
    table(
        ["AGENT", "ROLE", "CREATED"],
        [[row["agent_id"], row["role"], utc_time(row["created_at"])] for row in rows],
        empty="no tokens",
    )
    return EXIT_OK


def token_revoke(args: argparse.Namespace) -> int:
    """``token revoke``: the agent's token stops working at once."""
    if not tokens.delete_token(_existing_db_path(args), args.agent_id):
        raise CliError(f"no token for {args.agent_id}", EXIT_FAILED)
    print(f"revoked {args.agent_id}", file=sys.stderr)
    return EXIT_OK
