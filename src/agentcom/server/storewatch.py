"""Whether the database can be written, and getting back to work once it can again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from agentcom.errors import StoreError
from agentcom.store.base import Store

__all__ = ["StoreWatch"]

logger = logging.getLogger(__name__)


class StoreWatch:
    """Tracks write failures of the store.

    After a failed write the store counts as failing: new work is refused (the callers
    check :meth:`ensure_writable`), and a probe write every ``retry_interval_s`` finds
    out when the database accepts writes again, without waiting for a client to try.

    Args:
        store: the store written to and probed.
        retry_interval_s: time between probes while failing.
        on_recovered: awaited after a probe succeeded (to offer queued work again).
        catch_up: called after a probe succeeded, before the store counts as working
            (to reload what refused changes touched); a StoreError it raises keeps the
            store failing.
    """

    def __init__(
        self,
        store: Store,
        retry_interval_s: float,
        on_recovered: Callable[[], Awaitable[object]],
        catch_up: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._retry_interval_s = retry_interval_s
        self._on_recovered = on_recovered
        self._catch_up = catch_up
        self.error: str | None = None  # what the failing store last said
        self.failing = False
        self._prober: asyncio.Task[None] | None = None

    def failed(self, error: StoreError) -> None:
        """A write failed: refuse new work and start probing."""
        self.error = str(error)
        if self.failing:
            return
        logger.error("store failing; refusing new work until it recovers: %s", error)
        self.failing = True
        if self._prober is None or self._prober.done():
            self._prober = asyncio.create_task(self._probe_until_writable())

    def written(self) -> None:
        """A write succeeded: the store works."""
        if self.failing:
            logger.warning("store recovered")
            self.failing = False

    async def ensure_writable(self) -> None:
        """Return at once while the store works; while it fails, probe it now.

        Raises StoreError when the probe fails too.
        """
        if self.failing:
            await self._store.check_writable()
            self._caught_up()
            self.written()

    def _caught_up(self) -> None:
        if self._catch_up is not None:
            self._catch_up()

    async def stop(self) -> None:
        """Stop probing."""
        if self._prober is not None:
            self._prober.cancel()
            await asyncio.gather(self._prober, return_exceptions=True)

    async def _probe_until_writable(self) -> None:
        while self.failing:
            await asyncio.sleep(self._retry_interval_s)
            try:
                await self._store.check_writable()
                self._caught_up()
            except StoreError as exc:
                self.error = str(exc)
                continue
            if self.failing:
                self.written()
                await self._on_recovered()
