"""The logger handed to ``websockets`` by the hub and the clients: everything but the
library's wire-level DEBUG lines.

At DEBUG the library writes every HTTP header and every frame verbatim, and tokens travel
in both (``Authorization: Bearer ...`` on ``/api/*``, the first frame of every WebSocket
connection). Those lines are never emitted, whatever level logging is set to; the
library's INFO and higher lines (refused handshakes, errors) still are.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

__all__ = ["library_logger"]

if TYPE_CHECKING:
    _Adapter = logging.LoggerAdapter[logging.Logger]
else:
    _Adapter = logging.LoggerAdapter


class _WithoutWireDebug(_Adapter):
    """A logger adapter that reports DEBUG as disabled, so the library skips those lines."""

    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


def library_logger(name: str) -> logging.LoggerAdapter[logging.Logger]:
    """The logger to pass as ``logger=`` to ``serve`` (``websockets.server``) or ``connect``
    (``websockets.client``)."""
    return _WithoutWireDebug(logging.getLogger(name), {})
