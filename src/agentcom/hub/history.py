"""Queue depth and completions per minute over the last hour, so a dashboard that opens
mid-run draws the whole hour and can tell at once whether the queue has been growing.

Kept in memory only: a restarted hub starts a new hour.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["QueueHistory"]

MINUTE_MS = 60_000


class QueueHistory:
    """Per-minute buckets: the last queue depth seen in the minute and its completions.

    Args:
        minutes: how many minutes are kept; older buckets are dropped.
    """

    def __init__(self, minutes: int = 60) -> None:
        self._minutes = minutes
        self._buckets: OrderedDict[int, list[int]] = OrderedDict()  # minute -> [depth, done]

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

    def snapshot(self, now_ms: int) -> list[dict[str, int]]:
        """The buckets of the last ``minutes`` minutes up to ``now_ms``, oldest first;
        minutes in which nothing happened are absent."""
        first = now_ms // MINUTE_MS - self._minutes + 1
        return [
            {"minute": minute, "depth": depth, "completions": completions}
            for minute, (depth, completions) in self._buckets.items()
            if minute >= first
        ]
