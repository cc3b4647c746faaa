"""Durability behind one small interface (see :class:`agentcom.store.base.Store`)."""

from agentcom.store.base import Store, TaskFilter, TokenRecord
from agentcom.store.memory import MemoryStore
from agentcom.store.sqlite import SqliteStore

__all__ = ["MemoryStore", "SqliteStore", "Store", "TaskFilter", "TokenRecord"]
