"""The state directory: the one task the sidecar holds, written before the hub hears of it.

One file, ``task.json``, replaced atomically (written beside, flushed to disk, renamed,
the directory flushed) at each step of a task's life:

- ``accepting``: written before ``task_accepted`` is sent; a crash from here on leaves the
  task to be recovered after the restart (``task_recovering``);
- ``running``: a shell command runs; the record names its process group, which a restart
  kills (its output went with the crashed sidecar, and the hub will run it again);
- ``finished``: the completion frame is recorded before it is sent, so a restart delivers
  it (with the generation it was assigned with) instead of running the task again.

The file is removed once the hub has acknowledged the outcome, or has taken the task back.
A lock file (``lock``, held with ``flock`` while the sidecar runs) keeps a second sidecar
off the same directory: two would run and report one task twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from agentcom.errors import AgentcomError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "HeldTask", "Phase", "StateDir", "StateDirInUse", "kill_leftover_group", "kill_process_group",
    "process_identity",
]  # fmt: skip

Phase = Literal["accepting", "running", "finished"]

_FILE = "task.json"


@dataclass(slots=True)
class HeldTask:
    """The task this sidecar holds, as recorded."""

    assign: dict[str, Any]  #: the task_assign frame, as the hub sent it
    phase: Phase = "accepting"  #: how far it got
    process_group: int | None = None  #: the shell command's process group while running
    process_identity: str | None = None  #: boot and start time of its leader (see below)
    completion: dict[str, Any] | None = field(default=None)  #: the outcome frame, once finished

    @property
    def task_id(self) -> str:
        """The task's id."""
        task_id: str = self.assign["task_id"]
        return task_id

    @property
    def generation(self) -> int:
        """The generation it is held under (the assignment's, or the one ``task_continue``
        gave)."""
        return int(self.assign["generation"])


class StateDirInUse(AgentcomError):
    """Another sidecar runs on this state directory."""


class StateDir:
    """The sidecar's state directory (created with mode 0700 when missing).

    Args:
        path: the directory.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock: IO[str] | None = None

    def lock(self) -> None:
        """Hold the directory's lock until the process ends.

        Raises:
            StateDirInUse: another process holds it.
        """
        if fcntl is None:  # pragma: no cover
            return
        handle = (self.path / "lock").open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise StateDirInUse(
                f"another sidecar is using the state directory {self.path}"
            ) from None
        self._lock = handle

    @property
    def task_file(self) -> Path:
        """Where the held task is recorded."""
        return self.path / _FILE

    def load(self) -> HeldTask | None:
        """The task recorded by an earlier run, or None (an unreadable record is set aside
        as ``task.json.bad`` and treated as none: the hub's timeouts recover that task)."""
        try:
            data = json.loads(self.task_file.read_text())
            return HeldTask(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):
            with contextlib.suppress(OSError):
                self.task_file.replace(self.path / f"{_FILE}.bad")
            return None

    def save(self, held: HeldTask) -> None:
        """Record ``held`` durably: once this returns, a crash cannot lose it."""
        temporary = self.path / f"{_FILE}.tmp"
        with temporary.open("w") as file:
            json.dump(asdict(held), file)
            file.flush()
            os.fsync(file.fileno())
        temporary.replace(self.task_file)
        self._sync_directory()

    def clear(self) -> None:
        """Forget the held task."""
        with contextlib.suppress(FileNotFoundError):
            self.task_file.unlink()
            self._sync_directory()

    def _sync_directory(self) -> None:
        if os.name != "posix":
            return
        descriptor = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def kill_process_group(group: int) -> bool:
    """SIGKILL every process of ``group``; False when there is none (or it is not ours)."""
    if os.name != "posix" or group <= 1:
        return False
    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def process_identity(pid: int) -> str | None:
    """``<boot id>:<start time>`` of ``pid``: tells it from a later process given the same
    number (None off Linux)."""
    boot, start = _boot_id(), _start_time(pid)
    return f"{boot}:{start}" if boot and start else None


def kill_leftover_group(group: int, identity: str | None) -> bool:
    """Kill the process group a crashed run left, only when it is surely that group.

    Recorded without an identity (off Linux), or on another boot: nothing is killed. A
    leader still alive must be the recorded process (same start time). A leader gone while
    the group lives is safe: a number is not given to a new process while a group uses it.
    """
    if identity is None:
        return False
    boot, _, start = identity.partition(":")
    if boot != _boot_id():
        return False
    current = _start_time(group)
    if current is not None and current != start:
        return False
    return kill_process_group(group)
