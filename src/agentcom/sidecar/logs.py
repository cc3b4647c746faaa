"""The sidecar's log: one line per connection change and per task step, on stderr.

Connection changes are logged by :class:`~agentcom.client.AgentClient` (``agentcom.client``);
a filter names them (``connected``, ``disconnected``, ``unreachable``) so JSON lines
carry an ``event`` for them too.

``text`` lines are for people (``2026-12-06 12:00:00 INFO task 3f2a... completed``);
``json`` lines carry the same message plus the fields passed as ``extra`` (``event``,
``task_id``, ``generation``, ``exit_code`` ...) for log collectors and tests.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

from agentcom.logs import CONTEXT_FIELDS, JsonFormatter

__all__ = ["FIELDS", "configure", "log_event"]

FIELDS = (*CONTEXT_FIELDS, "target", "status", "error", "exit_code", "url")
"""The ``extra`` keys a JSON line carries when a record has them: the hub's, and the
sidecar's own."""

_LOGGERS = ("agentcom.sidecar", "agentcom.client")


def configure(log_format: Literal["text", "json"], level: str) -> None:
    """Send the sidecar's and the client's records to stderr, one line each."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(FIELDS))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
        )
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def log_event(
    logger: logging.Logger, event: str, message: str, *args: Any, level: int = logging.INFO,
    **fields: Any,
) -> None:  # fmt: skip
    """Log ``message % args`` with ``event`` and ``fields`` attached for JSON lines."""
    logger.log(level, message, *args, extra={"event": event, **fields})
