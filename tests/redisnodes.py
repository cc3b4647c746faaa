"""The real Redis of this machine for tests of hub nodes sharing events: its URL, a
cluster name of a test's own, and the check that Redis answers (a test FAILS when it does
not: it is never skipped). Not a test module; test modules import it."""

from __future__ import annotations

import secrets
import socket

import pytest

__all__ = ["REDIS_HOST", "REDIS_PORT", "REDIS_URL", "new_cluster", "require_redis"]

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"


def new_cluster() -> str:
    """A cluster name no other test run uses: its channel is this test's alone."""
    return f"test-{secrets.token_hex(6)}"


def require_redis() -> None:
    """Fail the test (never skip it) when Redis does not answer a PING on loopback."""
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=2) as connection:
            connection.sendall(b"PING\r\n")
            answer = connection.recv(64)
    except OSError as exc:
        pytest.fail(f"Redis is needed on {REDIS_HOST}:{REDIS_PORT} and is unreachable: {exc}")
    if not answer.startswith(b"+PONG"):
        pytest.fail(f"Redis on {REDIS_HOST}:{REDIS_PORT} answered PING with {answer!r}")
