"""A scratch PostgreSQL database for a benchmark run: made fresh, measured, dropped.

:class:`ScratchDatabase` creates ``agentcom_bench_<random hex>`` through a connection to
the maintenance database a URL names (``postgresql://postgres@127.0.0.1:5432/postgres``),
gives the URL of the new database to hand the hub, and drops it at the end, its sessions
ended first (a hub killed by the benchmark may not have let go yet). It also reads the
CPU time of the server processes serving the database (``pg_stat_activity``, then
``/proc``): on the same machine, work the hub hands the database shows there, not in the
hub's own figure.
"""

from __future__ import annotations

import secrets
import urllib.parse
from typing import Any

import psycopg
from _common import cpu_seconds
from psycopg import sql

from agentcom.store.pgconnection import one_line

__all__ = ["ScratchDatabase", "backend_cpu_used", "database_url"]

CONNECT_TIMEOUT_S = 10


def database_url(server_url: str, name: str) -> str:
    """``server_url`` naming database ``name`` instead: the same user, password, host,
    port and parameters (a ``dbname`` parameter, which would win over the path, dropped)."""
    parts = urllib.parse.urlsplit(server_url)
    query = [
        (key, value)
        for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if key != "dbname"
    ]
    # Not urlunsplit: it would drop the empty host of postgresql:///db?host=/socket/dir.
    url = f"{parts.scheme}://{parts.netloc}/{name}"
    return f"{url}?{urllib.parse.urlencode(query)}" if query else url


class ScratchDatabase:
    """A new, empty database on the server of ``server_url``, dropped by :meth:`drop`.

    Args:
        server_url: a ``postgresql://`` URL of a database to connect to while creating and
            dropping (not the one created); its user needs the ``CREATEDB`` privilege.

    Raises:
        RuntimeError: the server cannot be reached or refuses to create the database.
    """

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.name = f"agentcom_bench_{secrets.token_hex(6)}"
        self.url = database_url(server_url, self.name)
        with self._server() as server:
            try:
                server.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
            except psycopg.Error as exc:
                raise RuntimeError(f"cannot create database {self.name}: {one_line(exc)}") from None
        self._created = True

    def _server(self) -> psycopg.Connection[tuple[Any, ...]]:
        try:
            return psycopg.connect(
                self.server_url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name="agentcom-bench",
            )
        except psycopg.Error as exc:
            raise RuntimeError(f"cannot reach PostgreSQL for --pg: {one_line(exc)}") from None

    def backend_pids(self) -> list[int]:
        """The server processes now connected to the database."""
        with self._server() as server:
            rows = server.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.name,)
            ).fetchall()
        return [int(row[0]) for row in rows]

    def backend_cpu(self) -> dict[int, float]:
        """CPU seconds so far of each process serving the database, by pid; empty when the
        server runs elsewhere (its processes are not in this machine's ``/proc``)."""
        found = {pid: cpu_seconds(pid) for pid in self.backend_pids()}
        return {pid: seconds for pid, seconds in found.items() if seconds is not None}

    def drop(self) -> None:
        """End the database's sessions and drop it; later calls do nothing."""
        if not self._created:
            return
        with self._server() as server:
            server.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.name,),
            )
            forced = server.info.server_version >= 130000  # FORCE: PostgreSQL 13 and later
            force = sql.SQL(" WITH (FORCE)" if forced else "")
            server.execute(
                sql.SQL("DROP DATABASE IF EXISTS {}{}").format(sql.Identifier(self.name), force)
            )
        self._created = False


def backend_cpu_used(before: dict[int, float], after: dict[int, float]) -> float | None:
    """CPU seconds the database's server processes used between two samples: each process
    alive at the end, from the first sample (or from its start if it connected since)."""
    if not after:
        return None
    return round(sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items()), 2)
