"""Queue depth and completions per minute over the last hour, so a dashboard that opens
mid-run draws the whole hour and can tell at once whether the queue has been growing.

Kept in memory and saved with the rest of the hub's recent activity at every sweep and
when the hub stops, so a restarted hub carries on with the same hour.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["MINUTE_MS", "QueueHistory"]

MINUTE_MS = 60_000


class QueueHistory:
    """Per-minute buckets: the last queue depth seen in the minute and its completions.

    Args:
        minutes: how many minutes are kept; older buckets are dropped.
    """

    def __init__(self, minutes: int = 60) -> None:
        self._minutes = minutes
        self._buckets: OrderedDict[int, list[int]] = OrderedDict()  # minute -> [depth, done]
        self._changed: set[int] = set()  # minutes changed since take_changes()

    @property
    def minutes(self) -> int:
        """How many minutes are kept."""
        return self._minutes

    def observe(self, now_ms: int, depth: int, completed: bool = False) -> None:
        """Record the queue depth at ``now_ms``, and one completion if ``completed``."""
        minute = now_ms // MINUTE_MS
        bucket = self._buckets.get(minute)
        if bucket is None:
            bucket = self._buckets[minute] = [depth, 0]
            while next(iter(self._buckets)) <= minute - self._minutes:
                self._buckets.popitem(last=False)
        bucket[0] = depth
        if completed:
            bucket[1] += 1
        self._changed.add(minute)

    def snapshot(self, now_ms: int) -> list[dict[str, int]]:
        """The buckets of the last ``minutes`` minutes up to ``now_ms``, oldest first;
        minutes in which nothing happened are absent."""
        first = now_ms // MINUTE_MS - self._minutes + 1
        return [
            {"minute": minute, "depth": depth, "completions": completions}
            for minute, (depth, completions) in self._buckets.items()
            if minute >= first
        ]

    def take_changes(self) -> list[tuple[int, int, int]]:
        """Minutes changed since the last call, still kept, as ``(minute, depth,
        completions)``."""
        changes = []
        for minute in sorted(self._changed):
            bucket = self._buckets.get(minute)
            if bucket is not None:
                changes.append((minute, bucket[0], bucket[1]))
        self._changed.clear()
        return changes

    def mark_changed(self, minutes: list[int]) -> None:
        """Report these minutes again at the next :meth:`take_changes` (their save failed)."""
        self._changed.update(minutes)

    def restore(self, rows: list[tuple[int, int, int]], now_ms: int) -> None:
        """Take saved minutes back, keeping those of the last ``minutes`` up to ``now_ms``."""
        first = now_ms // MINUTE_MS - self._minutes + 1
        for minute, depth, completions in sorted(rows):
            if minute >= first:
                self._buckets[minute] = [depth, completions]
