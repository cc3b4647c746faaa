"""The hubs a lifecycle benchmark run starts: its cases (a database on one hub node or
several) and, for each, the hub processes' command lines, log and profile files.

Several nodes share one PostgreSQL database and a cluster of the run's own: each is
``agentcom serve --db URL --pubsub REDIS --cluster bench-<random hex> --node-id
node<i>`` on a free port of its own. ``lifecycle.py`` drives the workload on them.
"""

from __future__ import annotations

import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from _common import Children, Hub
from _lifecycle_report import POSTGRESQL, SQLITE, case_name

__all__ = ["Case", "check_redis", "hub_command", "planned_cases", "profile_path", "start_nodes"]


@dataclass(frozen=True)
class Case:
    """A configuration the workload runs on: a database, served by one hub node or more."""

    database: str  # SQLITE or POSTGRESQL
    nodes: int = 1

    @property
    def name(self) -> str:
        """Its key in the report's ``runs``: ``sqlite``, ``postgresql_2_nodes`` ..."""
        return case_name(self.database, self.nodes)

    def suffix(self, node: int | None = None) -> str:
        """What its files' names carry: ``-postgresql``, ``-postgresql_2_nodes-node1``."""
        suffix = "" if self.name == SQLITE else f"-{self.name}"
        return suffix if node is None or self.nodes == 1 else f"{suffix}-node{node}"


def planned_cases(postgresql: bool, nodes: int) -> list[Case]:
    """SQLite; with ``postgresql``, PostgreSQL on one node, and on ``nodes`` when more."""
    cases = [Case(SQLITE)]
    if postgresql:
        cases.append(Case(POSTGRESQL))
        if nodes > 1:
            cases.append(Case(POSTGRESQL, nodes))
    return cases


def check_redis(url: str) -> None:
    """Raise RuntimeError unless the Redis at ``url`` answers a PING (within 5 s)."""
    import redis

    try:
        with redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5) as client:
            client.ping()
    except (redis.RedisError, ValueError) as exc:
        raise RuntimeError(f"cannot reach Redis for --nodes at {url}: {exc}") from None


def hub_command(
    script: str, db: Path | str, profile_out: Path | None, cluster_args: list[str]
) -> list[str]:
    """How to start a hub on ``db``: ``agentcom serve``, or the profiled hub of
    ``script`` (``--serve-profiled``); ``cluster_args`` (``--pubsub``, ``--cluster``,
    ``--node-id``) go to either."""
    if profile_out is not None:
        profiled = ["--serve-profiled", "--db", str(db), "--profile-out", str(profile_out)]
        return [sys.executable, script, *profiled, *cluster_args]
    serve = ["serve", "--host", "127.0.0.1", "--port", "0", "--db", str(db)]
    return [sys.executable, "-m", "agentcom.cli", *serve, "--log-level", "WARNING", *cluster_args]


def profile_path(profile_hub: str | None, case: Case, node: int) -> Path | None:
    """Where a profiled hub saves its profile: ``--profile-hub`` for SQLite, with
    ``.postgresql`` appended for PostgreSQL, ``.postgresql_2_nodes.node1`` for a node
    of several (None without ``profile_hub``)."""
    if profile_hub is None:
        return None
    path = Path(profile_hub).resolve()
    if case.name == SQLITE:
        return path
    node_part = f".node{node}" if case.nodes > 1 else ""
    return path.with_name(f"{path.name}.{case.name}{node_part}")


async def start_nodes(
    children: Children,
    workdir: Path,
    script: str,
    case: Case,
    db: Path | str,
    redis_url: str,
    profile_hub: str | None,
) -> list[Hub]:
    """Start the case's hub nodes on ``db``, one after another, their logs in
    ``workdir``; several share it in a cluster of this run's own, their events going
    through the Redis at ``redis_url``. Raises RuntimeError when one does not start."""
    cluster = f"bench-{secrets.token_hex(6)}"
    hubs = []
    for node in range(case.nodes):
        cluster_args = []
        if case.nodes > 1:
            cluster_args = ["--pubsub", redis_url, "--cluster", cluster]
            cluster_args += ["--node-id", f"node{node}"]
        command = hub_command(script, db, profile_path(profile_hub, case, node), cluster_args)
        log = workdir / f"hub{case.suffix(node)}.log"
        name = "hub" if case.nodes == 1 else f"hub node{node}"
        hubs.append(await children.start_hub(command, log, name=name))
    return hubs
