"""Many sidecars in one process, all identifying at the same moment (a reconnect storm).

Not a test module: tests/test_resilience.py runs it with ``sys.executable``::

    python sidecar_storm.py WS_URL TOKENS_JSON

``TOKENS_JSON`` is a file mapping agent ids to tokens. The script connects every agent
at once, prints ``identified N SECONDS`` (and ``failed AGENT ERROR`` lines before it for
any that could not identify), then reads and discards pushes on every connection, as
sidecars do, until its standard input closes; then it closes every connection and
prints ``closed``.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

__all__ = ["identify"]


async def identify(url: str, agent_id: str, token: str) -> ClientConnection:
    """Connect and identify; return once ``identified`` arrived (raises otherwise)."""
    connection = await connect(url, open_timeout=60, ping_interval=None, compression=None)
    frame = {"type": "identify", "agent_id": agent_id, "token": token, "status": "idle",
             "client_type": "sidecar", "protocol_version": 1}  # fmt: skip
    await connection.send(json.dumps(frame))
    async with asyncio.timeout(60):
        while True:
            reply = json.loads(await connection.recv())
            if reply["type"] == "identified":
                return connection
            if reply["type"] == "error":
                await connection.close()
                raise RuntimeError(reply["error"])


async def drain(connection: ClientConnection) -> None:
    """Read and discard pushes until the connection closes."""
    async for _ in connection:
        pass


async def stdin_closed() -> None:
    """Return when standard input reaches end of file."""
    await asyncio.to_thread(sys.stdin.read)


async def main(url: str, tokens: dict[str, str]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = len(tokens) + 64
    if soft < wanted <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    began = time.monotonic()
    results = await asyncio.gather(
        *(identify(url, agent_id, token) for agent_id, token in tokens.items()),
        return_exceptions=True,
    )
    elapsed = time.monotonic() - began
    connections = []
    for agent_id, result in zip(tokens, results, strict=True):
        if isinstance(result, ClientConnection):
            connections.append(result)
        else:
            print(f"failed {agent_id} {type(result).__name__}: {result}", flush=True)
    print(f"identified {len(connections)} {elapsed:.3f}", flush=True)
    readers = [asyncio.create_task(drain(connection)) for connection in connections]
    await stdin_closed()
    # Keep reading while closing: the close frame arrives behind pending pushes.
    await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)
    await asyncio.gather(*readers, return_exceptions=True)
    print("closed", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], json.loads(Path(sys.argv[2]).read_text())))
