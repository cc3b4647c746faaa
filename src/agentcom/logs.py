"""The hub's log output: one human line per record, or one JSON object per line.

JSON lines are for log stores (Loki, Elasticsearch): every line carries ``time`` (UTC,
ISO 8601 with milliseconds), ``level``, ``logger`` and ``message``, plus the ids a record
was given with ``extra=`` (:data:`CONTEXT_FIELDS`): so ``task_id`` finds a task's whole
story. Nothing else of a record is copied, so a value that was not meant for the log
never reaches it; no module logs a token (see ``wirelog.py`` for the library's lines).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = ["CONTEXT_FIELDS", "TEXT_FORMAT", "JsonFormatter", "configure_logging"]

#: Record attributes (set with ``extra=``) copied into a JSON line when present.
CONTEXT_FIELDS = ("task_id", "agent_id", "generation", "event")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (no newline inside: tracebacks are escaped).

    Args:
        fields: the record attributes copied when present (default :data:`CONTEXT_FIELDS`).
    """

    def __init__(self, fields: tuple[str, ...] = CONTEXT_FIELDS) -> None:
        super().__init__()
        self.fields = fields

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in self.fields:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: str, log_format: Literal["text", "json"]) -> None:
    """Send the process's log to stderr at ``level``, as text lines or JSON lines."""
    handler = logging.StreamHandler()
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # Our own modules log connections; the library's per-request lines are noise.
    logging.getLogger("websockets").setLevel(logging.WARNING)
