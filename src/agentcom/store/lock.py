"""One hub per database: an advisory lock on a file next to the database.

The hub that serves ``agentcom.db`` holds an exclusive ``flock`` on ``agentcom.db.lock``
for as long as it runs, and writes its pid, host and address in it for whoever finds it
taken. The kernel drops the lock when the process ends, however it ends (``kill -9``
included), so a dead hub never leaves a lock to clean by hand; the file itself stays and
is reused. The lock is advisory: the token commands open the database without it, and
SQLite's own locking still protects every transaction.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentcom.errors import DatabaseInUse, StoreError

__all__ = ["DatabaseLock", "HubOwner", "lock_path"]


def lock_path(database: Path | str) -> Path:
    """The lock file of ``database``: next to the file it names once symlinks are followed,
    so two names of one database share one lock."""
    real = Path(os.path.realpath(database))
    return real.with_name(real.name + ".lock")


@dataclass(frozen=True)
class HubOwner:
    """Who holds a database, as written in its lock file (None: not known)."""

    pid: int | None = None
    host: str | None = None
    address: str | None = None

    @classmethod
    def from_text(cls, text: str) -> HubOwner:
        """Read what :meth:`to_text` wrote; anything unreadable is left unknown."""
        try:
            fields: Any = json.loads(text)
        except ValueError:
            return cls()
        if not isinstance(fields, dict):
            return cls()
        pid, host, address = fields.get("pid"), fields.get("host"), fields.get("address")
        return cls(
            pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
            host=host if isinstance(host, str) else None,
            address=address if isinstance(address, str) else None,
        )

    def to_text(self) -> str:
        """One JSON line."""
        return json.dumps({"pid": self.pid, "host": self.host, "address": self.address}) + "\n"


class DatabaseLock:
    """Held while one hub serves a database; see the module docstring.

    Use :meth:`acquire`; :meth:`release` (or the end of the process) frees it.
    """

    can_be_lost = False
    fence = None  # an flock is the process's until it ends: writes need no check
    """The kernel holds a ``flock`` for as long as its process lives: nothing to watch."""

    def __init__(self, path: Path, descriptor: int) -> None:
        self.path = path
        self._descriptor: int | None = descriptor

    def check(self) -> bool | None:
        """Whether the lock is held: until :meth:`release`, always."""
        return self._descriptor is not None

    @classmethod
    def acquire(cls, database: Path | str, address: str) -> DatabaseLock:
        """Take the lock of ``database`` without waiting, recording this process as its
        hub, reachable at ``address``.

        Raises:
            DatabaseInUse: another process holds it (naming that hub where the file says).
            StoreError: ``database`` is a directory, or the lock file cannot be opened.
        """
        if Path(database).is_dir():
            raise StoreError("it is a directory")
        path = lock_path(database)
        descriptor = _open(path)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = HubOwner.from_text(_read(descriptor))
            os.close(descriptor)
            raise DatabaseInUse(str(database), owner.pid, owner.host, owner.address) from None
        except OSError as exc:
            os.close(descriptor)
            raise StoreError(f"cannot lock {path}: {exc.strerror or exc}") from None
        lock = cls(path, descriptor)
        lock._record(HubOwner(os.getpid(), socket.gethostname(), address))
        return lock

    def _record(self, owner: HubOwner) -> None:
        """Write ``owner`` in the file; a file this process may not write stays as it is."""
        assert self._descriptor is not None
        text = owner.to_text().encode()
        with contextlib.suppress(OSError):  # opened read-only: the owner goes unnamed
            os.ftruncate(self._descriptor, 0)
            os.pwrite(self._descriptor, text, 0)

    def release(self) -> None:
        """Free the lock (later calls do nothing); the file stays for the next hub."""
        if self._descriptor is None:
            return
        descriptor, self._descriptor = self._descriptor, None
        with contextlib.suppress(OSError):  # nobody holds it: nobody is to be named
            os.ftruncate(descriptor, 0)
        os.close(descriptor)  # closing the only descriptor drops the flock


def _open(path: Path) -> int:
    """The lock file, created when missing; opened read-only when it exists but may not be
    written (another user's file, a read-only file system): a lock works on either."""
    flags = os.O_CLOEXEC | os.O_NOFOLLOW
    if not path.parent.is_dir():
        raise StoreError(f"the directory {path.parent} does not exist")
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o644)
    except OSError as exc:
        unwritable = isinstance(exc, PermissionError) or exc.errno == errno.EROFS
        if not (unwritable and path.exists()):
            verb = "open" if path.exists() else "create"
            raise StoreError(f"cannot {verb} the lock file {path}: {exc.strerror or exc}") from None
    try:
        return os.open(path, os.O_RDONLY | flags)
    except OSError as exc:
        raise StoreError(f"cannot open the lock file {path}: {exc.strerror or exc}") from None


def _read(descriptor: int, limit: int = 4096) -> str:
    """What the lock file says (at most ``limit`` bytes), empty when it cannot be read."""
    try:
        return os.pread(descriptor, limit, 0).decode(errors="replace")
    except OSError:
        return ""
