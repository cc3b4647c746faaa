"""A fresh PostgreSQL database per test, on the machine's server (127.0.0.1:5432, user
postgres, trust authentication), dropped afterwards.

Not a test module; ``conftest.py`` makes :func:`fresh_database` the ``pg_url`` fixture.
A test that needs PostgreSQL fails, never skips, when the server cannot be reached: a
suite that passes without it would say nothing about the PostgreSQL store.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql

__all__ = ["SERVER_URL", "fresh_database", "server_connection"]

SERVER_URL = os.environ.get("AGENTCOM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
"""The server the tests create their databases on (a maintenance database is appended)."""


@contextmanager
def server_connection() -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection to the server's ``postgres`` database; fails the test
    with a clear message when the server cannot be reached."""
    try:
        connection = psycopg.connect(f"{SERVER_URL}/postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        reason = " ".join(str(exc).split())
        pytest.fail(
            f"PostgreSQL is not reachable at {SERVER_URL} ({reason}): the PostgreSQL tests "
            "need it running, with trust authentication for the user postgres",
            pytrace=False,
        )
    try:
        yield connection
    finally:
        connection.close()


@contextmanager
def fresh_database() -> Iterator[str]:
    """The URL of a new, empty database named ``agentcom_t_<random hex>``; dropped at the
    end, its sessions ended first (``WITH (FORCE)``: a hub killed by the test may not
    have let go yet)."""
    name = f"agentcom_t_{secrets.token_hex(6)}"
    with server_connection() as server:
        server.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{SERVER_URL}/{name}"
    finally:
        with server_connection() as server:
            server.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
