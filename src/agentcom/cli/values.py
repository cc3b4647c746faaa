"""The values typed on the command line that the CLI checks before asking the hub: task
statuses, priorities, tiers, durations, task ids. Every choice comes from the enums of
:mod:`agentcom.protocol`."""

from __future__ import annotations

import argparse
import re

from agentcom.hub.hub import TASK_ID_PREFIX_MIN
from agentcom.protocol.common import TERMINAL, Priority, TaskStatus, Tier

__all__ = [
    "PRIORITIES",
    "STATUSES",
    "TIERS",
    "UNFINISHED",
    "duration_arg",
    "statuses_arg",
    "task_id_arg",
]

STATUSES = tuple(status.value for status in TaskStatus)
PRIORITIES = tuple(priority.value for priority in Priority)
TIERS = [*(tier.value for tier in Tier), "unknown"]  # as TaskSubmission.complexity_tier takes
UNFINISHED = [status for status in STATUSES if status not in TERMINAL]


def statuses_arg(text: str) -> list[str]:
    """``--status a,b``: one or more task statuses."""
    names = [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in STATUSES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown status {unknown[0]!r} (choose from {', '.join(STATUSES)})"
        )
    return list(dict.fromkeys(names))


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def duration_arg(text: str) -> float:
    """``--since 90s|30m|1h|2d``: seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if match is None or float(match[1]) == 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: a positive number and a unit, e.g. 90s, 30m, 1h, 2d"
        )
    return float(match[1]) * _UNITS[match[2]]


def task_id_arg(text: str) -> str:
    """A task id as typed: in full, or a prefix the hub resolves (as git abbreviates)."""
    if len(text) < TASK_ID_PREFIX_MIN:
        raise argparse.ArgumentTypeError(
            f"{text!r} is too short: give at least {TASK_ID_PREFIX_MIN} characters of a task id"
        )
    return text
