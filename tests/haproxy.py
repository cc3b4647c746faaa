"""Debian's HAProxy in front of hub processes, on loopback, with a generated config.

Not a test module. :class:`HaProxy` checks each hub's ``GET /health`` every 200 ms and
sends connections only to the hubs that answer 200 (``fall 1 rise 1``), with timeouts
fit for long-lived WebSocket connections. Its state changes ("Server hubs/a is DOWN")
come on stderr, read line by line, so a test awaits them instead of sleeping. A test
that needs HAProxy fails, never skips, when it is not installed.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import pytest
from hubprocess import LineReader, closed_port, stop_process

__all__ = ["HAPROXY", "HaProxy"]

HAPROXY = "/usr/sbin/haproxy"

_CONFIG = """\
global
    maxconn 1000

defaults
    mode http
    # A refused connection is retried after min(timeout connect, 1 s), on another
    # server when one is up: a dead hub costs a fifth of a second, not three.
    timeout connect 200ms
    retries 2
    option redispatch 1
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    timeout check 1s

frontend agentcom
    bind 127.0.0.1:{port}
    default_backend hubs

backend hubs
    option httpchk
    http-check send meth GET uri /health ver HTTP/1.1 hdr Host localhost
    http-check expect status 200
    default-server inter 200ms fall 1 rise 1
{servers}
"""


class HaProxy:
    """HAProxy balancing over ``hub_ports`` (servers named a, b, c ... in that order).

    Args:
        directory: where its config is written.
        hub_ports: the hubs' ports on 127.0.0.1.
    """

    def __init__(self, directory: Path, hub_ports: Sequence[int]) -> None:
        if not os.access(HAPROXY, os.X_OK):
            pytest.fail(
                f"HAProxy is not installed at {HAPROXY}: the failover tests need it "
                "(apt-get install haproxy; .ci/run installs it)",
                pytrace=False,
            )
        self.port = closed_port()
        servers = "\n".join(
            f"    server {chr(ord('a') + n)} 127.0.0.1:{port} check"
            for n, port in enumerate(hub_ports)
        )
        self.config = directory / "haproxy.cfg"
        self.config.write_text(_CONFIG.format(port=self.port, servers=servers))
        self.process: subprocess.Popen[str] | None = None
        self.stderr: LineReader | None = None

    def __enter__(self) -> HaProxy:
        # -db: in the foreground, its alerts and warnings on stderr.
        self.process = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stderr is not None
        self.stderr = LineReader(self.process.stderr)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.process is None:
            return
        stop_process(self.process, 10)
        if self.stderr is not None:
            self.stderr.join()

    @property
    def ws_url(self) -> str:
        """The agent endpoint, through HAProxy."""
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        """The operators' URL, through HAProxy."""
        return f"http://127.0.0.1:{self.port}"

    async def await_server(self, server: str, state: str, timeout: float = 20.0) -> str:
        """The next line saying that ``server`` (a, b ...) is ``state`` (UP or DOWN)."""
        assert self.stderr is not None
        pattern = re.compile(rf"Server hubs/{server} is {state}\b")
        deadline = time.monotonic() + timeout
        while True:
            line = await self.stderr.next_line_async(max(0.0, deadline - time.monotonic()))
            if pattern.search(line):
                return line
