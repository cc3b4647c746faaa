"""Active and standby: one hub serves a database, another may wait to take over.

A hub started with ``standby`` on a database another hub serves does not exit: it
listens, answers every request 503 (``/health`` says ``standby`` and names the serving
hub, so a load balancer sends it nothing), and tries the database's lock every
``standby_retry_s`` (:func:`wait_for_lock`). Once it has the lock it opens the database
and restores, like any hub at start.

The serving hub watches its lock where it can be lost (:class:`LockWatch`): a PostgreSQL
advisory lock lives in a session, which may end (the server restarted, the session
terminated, the network cut) while the hub lives, and another hub may then take the
lock. A hub that finds its lock taken steps down: it must not serve a database another
hub serves. Until it finds out, its writes are fenced by the store itself (see
:mod:`agentcom.store.postgres`): none lands after another hub took over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from agentcom.errors import DatabaseInUse, StoreError
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
    the reason, when another hub holds it (or held it since).

    While the lock cannot be confirmed (the server unreachable, a check that takes longer
    than ``timeout_s``), the hub keeps serving: every write it makes checks in its own
    transaction that it is still the database's hub (``fence`` of the lock), so nothing
    it writes can land after another hub took over, and it cannot write anything at all
    while the server is unreachable. The next check that gets an answer decides.

    Args:
        lock: the serving hub's lock.
        interval_s: time between checks.
        timeout_s: how long one check may take before it counts as "cannot tell" (it goes
            on in the background and its answer is read at the next round).
        on_lost: told why; the watch ends after calling it.
    """

    def __init__(
        self,
        lock: HubLock,
        interval_s: float,
        timeout_s: float,
        on_lost: Callable[[str], None],
    ) -> None:
        self._lock = lock
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
        unknown = False
        check: asyncio.Future[bool | None] | None = None
        while True:
            await asyncio.sleep(self._interval_s)
            if check is None:  # never two checks at once: a slow one is waited for
                check = asyncio.ensure_future(asyncio.to_thread(self._lock.check))
            try:
                async with asyncio.timeout(self._timeout_s):
                    held = await asyncio.shield(check)
                check = None
            except TimeoutError:
                held = None
            if held is False:
                self._on_lost("another hub holds the database's lock")
                return
            if held is None and not unknown:
                logger.warning(
                    "cannot tell whether this hub still holds the database's lock; it keeps "
                    "serving (its writes check they are still the database's hub's)"
                )
            elif held is True and unknown:
                logger.warning("the database's lock is held again")
            unknown = held is None
