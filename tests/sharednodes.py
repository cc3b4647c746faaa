"""Real hub processes serving one PostgreSQL database together, with Redis between them
(``--db postgresql://... --pubsub redis://... --cluster C``), for the tests of nodes
sharing a database. Not a test module; test modules import it.

A cluster name of its own per test; a Redis that does not answer fails the test, never
skips it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hubprocess import HubProcess, run_cli_async
from redisnodes import REDIS_URL, new_cluster, require_redis

__all__ = ["NODE_ENV", "Nodes", "running_nodes"]

NODE_ENV = {
    "AGENTCOM_NODE_HEARTBEAT_S": "0.2",
    "AGENTCOM_NODE_TIMEOUT_S": "1",
    "AGENTCOM_PUBSUB_PING_INTERVAL_S": "0.2",
    "AGENTCOM_PUBSUB_TIMEOUT_S": "0.5",
    "AGENTCOM_PUBSUB_RECONNECT_MAX_S": "0.2",
}
"""Settings of every node: heartbeats and the Redis link's checks fast enough for tests."""


class Nodes:
    """Hub processes of one cluster, all on the test's database."""

    def __init__(self, directory: Path, url: str) -> None:
        self.directory = directory
        self.url = url
        self.cluster = new_cluster()
        self.hubs: list[HubProcess] = []

    async def start(self, node_id: str, redis_url: str = REDIS_URL, **env: str) -> HubProcess:
        """A node, returned once it serves and its link to Redis is up (if Redis answers
        at ``redis_url``)."""
        directory = self.directory / node_id
        directory.mkdir(exist_ok=True)
        flags = ["--pubsub", redis_url, "--cluster", self.cluster, "--node-id", node_id]
        hub = HubProcess(directory, db=self.url, env={**NODE_ENV, **env}, serve_args=flags,
                         log_pipe=True)  # fmt: skip
        self.hubs.append(hub)
        hub.start()
        if redis_url == REDIS_URL:
            await hub.await_log("connected to Redis")
        return hub

    async def token(self, agent_id: str, role: str = "agent") -> str:
        """A new token for ``agent_id`` of ``role``, made by ``agentcom token create``."""
        created = await run_cli_async("token", "create", agent_id, "--role", role, "--db", self.url)
        assert created.returncode == 0, created
        return created.stdout.strip()

    def stop(self) -> None:
        """Stop every node started."""
        for hub in self.hubs:
            hub.stop()


@contextmanager
def running_nodes(directory: Path, url: str) -> Iterator[Nodes]:
    """Nodes on the database at ``url`` (each under ``directory``), all stopped on exit;
    fails the test when Redis does not answer."""
    require_redis()
    started = Nodes(directory, url)
    try:
        yield started
    finally:
        started.stop()
