"""A queue bounded both in items and in total size, for what peers make the hub keep."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["SizedQueue"]

T = TypeVar("T")


class SizedQueue(Generic[T]):
    """Items in arrival order, each with a size; appending beyond ``max_items`` items or
    ``max_size`` in total drops the oldest first. The newest item always stays, so one
    item larger than ``max_size`` is kept alone.

    Args:
        max_items: most items kept.
        max_size: most total size kept (in whatever unit the sizes are given).
    """

    __slots__ = ("_items", "_max_items", "_max_size", "size")

    def __init__(self, max_items: int, max_size: int) -> None:
        self._items: deque[tuple[T, int]] = deque()
        self._max_items = max_items
        self._max_size = max_size
        self.size = 0  # the sum of the kept items' sizes

    def append(self, item: T, size: int) -> None:
        """Keep ``item``, of ``size``, dropping the oldest items beyond the bounds."""
        self._items.append((item, size))
        self.size += size
        while len(self._items) > self._max_items or (
            self.size > self._max_size and len(self._items) > 1
        ):
            self.size -= self._items.popleft()[1]

    def __iter__(self) -> Iterator[T]:
        return (item for item, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)
