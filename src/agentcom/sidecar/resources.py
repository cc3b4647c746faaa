"""Host load figures for ``resource_report``: CPU, RAM, and VRAM where ``nvidia-smi`` exists.

The hub routes Ollama work by these figures. CPU is the busy share of all cores since the
previous report (from ``/proc/stat``; the first report has none); RAM is total minus
available (``/proc/meminfo``); VRAM is summed over the GPUs ``nvidia-smi`` lists. A figure
that cannot be read on this host is left out (the hub treats it as unknown).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

__all__ = ["ResourceMeter"]

_NVIDIA_SMI_TIMEOUT_S = 5.0
_MIB = 1024 * 1024


def _cpu_times(stat: Path) -> tuple[int, int] | None:
    """(idle, total) jiffies of all cores, or None off Linux."""
    try:
        fields = stat.read_text().split("\n", 1)[0].split()[1:]
        values = [int(value) for value in fields]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return idle, sum(values[:8])


def _memory(meminfo: Path) -> tuple[int, int] | None:
    """(used, total) bytes of RAM, or None off Linux."""
    try:
        lines = meminfo.read_text().splitlines()
    except OSError:
        return None
    kib = {}
    for line in lines:
        name, _, rest = line.partition(":")
        number = rest.split()[:1]
        if number and number[0].isdigit():
            kib[name] = int(number[0])
    if "MemTotal" not in kib or "MemAvailable" not in kib:
        return None
    return (kib["MemTotal"] - kib["MemAvailable"]) * 1024, kib["MemTotal"] * 1024


async def _vram() -> tuple[int, int] | None:
    """(used, total) bytes of VRAM over every GPU, or None without ``nvidia-smi``."""
    program = shutil.which("nvidia-smi")
    if program is None:
        return None
    query = ("--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits")
    try:
        process = await asyncio.create_subprocess_exec(
            program, *query,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        async with asyncio.timeout(_NVIDIA_SMI_TIMEOUT_S):
            output, _ = await process.communicate()
    except (OSError, TimeoutError):
        return None
    used = total = 0
    try:
        for line in output.decode().splitlines():
            if line.strip():
                gpu_used, gpu_total = (int(float(part)) for part in line.split(","))
                used, total = used + gpu_used * _MIB, total + gpu_total * _MIB
    except ValueError:
        return None
    return (used, total) if total else None


class ResourceMeter:
    """Samples the host's load; CPU is measured between two samples.

    Args:
        proc: where ``/proc`` is (a test may point elsewhere).
    """

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self.proc = proc
        self._last_cpu = _cpu_times(proc / "stat")

    async def report(self) -> dict[str, Any]:
        """One ``resource_report`` frame with the figures this host has."""
        frame: dict[str, Any] = {"type": "resource_report", "timestamp": int(time.time() * 1000)}
        cpu = _cpu_times(self.proc / "stat")
        if cpu is not None and self._last_cpu is not None and cpu[1] > self._last_cpu[1]:
            idle, total = cpu[0] - self._last_cpu[0], cpu[1] - self._last_cpu[1]
            frame["cpu_percent"] = round(100.0 * (1 - idle / total), 1)
        self._last_cpu = cpu
        memory = _memory(self.proc / "meminfo")
        if memory is not None:
            frame["ram_used_bytes"], frame["ram_total_bytes"] = memory
        vram = await _vram()
        if vram is not None:
            frame["vram_used_bytes"], frame["vram_total_bytes"] = vram
        return frame
