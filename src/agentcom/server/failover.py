"""Active and standby: one hub serves a database, another may wait to take over.

A hub started with ``standby`` on a database another hub serves does not exit: it
listens, answers every request 503 (``/health`` says ``standby`` and names the serving
hub, so a load balancer sends it nothing), and tries the database's lock every
``standby_retry_s`` (:func:`wait_for_lock`). Once it has the lock it opens the database
and restores, like any hub at start.

The serving hub watches its lock where it can be lost (:class:`LockWatch`): a PostgreSQL
advisory lock lives in a session, which may end (the server restarted, the session
terminated, the network cut) while the hub lives, and another hub may then take the
lock. A hub that finds its lock taken, or cannot tell within ``lock_check_timeout_s``,
steps down: it must not serve a database another hub may be serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from agentcom.errors import DatabaseInUse, StoreError
from agentcom.hub.clock import Clock
from agentcom.store.open import HubLock, lock_database

__all__ = ["LockWatch", "wait_for_lock"]

logger = logging.getLogger(__name__)


async def wait_for_lock(
    db: Path | str,
    address: str,
    retry_s: float,
    stopping: asyncio.Event,
    on_refused: Callable[[DatabaseInUse], None],
) -> HubLock | None:
    """Try the lock of ``db`` every ``retry_s`` until it is taken (returned) or
    ``stopping`` is set (None: nothing is held).

    Each refusal goes to ``on_refused`` (it names the hub that serves the database now);
    a failure to even try (the PostgreSQL server unreachable) is logged when it changes,
    and tried again.
    """
    last_failure: str | None = None
    while not stopping.is_set():
        try:
            lock = await asyncio.to_thread(lock_database, db, address)
        except DatabaseInUse as exc:
            on_refused(exc)
            last_failure = None
        except StoreError as exc:
            if str(exc) != last_failure:
                logger.warning("standby: cannot try the database's lock: %s", exc)
            last_failure = str(exc)
        else:
            if stopping.is_set():  # stopped while the attempt ran: let go at once
                lock.release()
                return None
            return lock
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(retry_s):
                await stopping.wait()
    return None


class LockWatch:
    """Checks a lock that can be lost every ``interval_s``; calls ``on_lost`` once, with
    the reason, when another hub holds it or when it cannot be told for ``timeout_s``.

    Args:
        lock: the serving hub's lock.
        clock: time source for the timeout.
        interval_s: time between checks.
        timeout_s: how long the lock may go unconfirmed (the server unreachable, a check
            that hangs) before the hub gives it up.
        on_lost: told why; the watch ends after calling it.
    """

    def __init__(
        self,
        lock: HubLock,
        clock: Clock,
        interval_s: float,
        timeout_s: float,
        on_lost: Callable[[str], None],
    ) -> None:
        self._lock = lock
        self._clock = clock
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._on_lost = on_lost
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start checking."""
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        """Stop checking."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _watch(self) -> None:
        unknown_since: int | None = None
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                async with asyncio.timeout(self._timeout_s):
                    held = await asyncio.to_thread(self._lock.check)
            except TimeoutError:
                self._on_lost(f"checking the database's lock took over {self._timeout_s:g} s")
                return
            if held is True:
                if unknown_since is not None:
                    logger.warning("the database's lock is held again")
                unknown_since = None
            elif held is False:
                self._on_lost("another hub holds the database's lock")
                return
            else:
                now = self._clock.now_ms()
                if unknown_since is None:
                    unknown_since = now
                    logger.warning(
                        "cannot tell whether this hub still holds the database's lock; "
                        "stepping down unless it is confirmed within %g s", self._timeout_s,
                    )  # fmt: skip
                elif now - unknown_since >= self._timeout_s * 1000:
                    self._on_lost(
                        f"could not confirm the database's lock for {self._timeout_s:g} s"
                    )
                    return
