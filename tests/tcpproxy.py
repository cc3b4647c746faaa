"""A TCP proxy on loopback that can go dark, for tests of connections whose network path
dies without a word. Not a test module; test modules import it."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["BlackHoleProxy"]


class BlackHoleProxy:
    """A TCP proxy on loopback that can go dark: from :meth:`go_dark` on it swallows every
    byte in both directions and closes nothing, as a dead network path does. It can also
    be cut (:meth:`cut`): every relayed connection is dropped and new ones are closed as
    soon as they arrive, as when the target's host is down, until :meth:`restore`.

    Args:
        target_port: the port on 127.0.0.1 it relays to (a hub's, Redis's...).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.dark = False
        self.refusing = False
        self.swallowed = 0  # bytes dropped since going dark
        self.target_hung_up = asyncio.Event()  # the target ended a connection (FIN or RST)
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._pumps: set[asyncio.Task[None]] = set()

    async def start(self) -> BlackHoleProxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        """The proxy's own port on 127.0.0.1."""
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def go_dark(self) -> None:
        """Stop forwarding; both sockets of every relayed connection stay open."""
        self.dark = True

    def go_light(self) -> None:
        """Forward again (what was swallowed meanwhile stays lost)."""
        self.dark = False

    def cut(self) -> None:
        """Drop every relayed connection (both ends closed at once) and close each new one
        as soon as it is accepted, until :meth:`restore`."""
        self.refusing = True
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        """Relay new connections again, after :meth:`cut` or :meth:`go_dark`."""
        self.refusing = False
        self.dark = False

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        target_reader, target_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, target_writer]
        pairs = ((reader, target_writer, False), (target_reader, writer, True))
        for source, sink, from_target in pairs:
            pump = asyncio.create_task(self._pump(source, sink, from_target))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, from_target: bool
    ) -> None:
        with contextlib.suppress(OSError):
            try:
                while data := await source.read(65536):
                    if self.dark:
                        self.swallowed += len(data)
                        continue
                    sink.write(data)
                    await sink.drain()
            finally:
                if from_target:
                    self.target_hung_up.set()
            if not self.dark:  # an end that closed while the path was still up
                sink.close()

    async def close(self) -> None:
        """Close every socket (the dark connections end now) and stop listening."""
        for writer in self._writers:
            writer.close()
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
