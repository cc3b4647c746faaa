"""Tokens and roles: tokens are random, stored as SHA-256 hashes, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from enum import StrEnum

from agentcom.store.base import Store

__all__ = ["Authenticator", "Role", "hash_token", "new_token"]


class Role(StrEnum):
    """What a token may do."""

    agent = "agent"  # a sidecar: the agent protocol on /ws
    viewer = "viewer"  # read-only operator: dashboard, watch, lists
    admin = "admin"  # operator who may submit, cancel and retry tasks


def new_token() -> str:
    """A fresh token with 256 bits of randomness."""
    return "ac_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The stored form of a token (tokens are random, so a plain hash is enough)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class Authenticator:
    """Checks tokens against the store on every use, so new and revoked tokens apply at once."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def role_of(self, token: str) -> tuple[str, Role] | None:
        """``(agent_id, role)`` of a valid token, or None."""
        digest = hash_token(token)
        record = self._store.find_token(digest)
        if record is None or not hmac.compare_digest(record.token_hash, digest):
            return None
        return record.agent_id, Role(record.role)
