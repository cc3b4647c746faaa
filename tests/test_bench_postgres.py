"""The lifecycle benchmark's scratch PostgreSQL database (``bench/_postgres.py``): made
fresh, written to as the SQLite file is, and dropped even while a session holds it.

A benchmark run is too slow for the suite; what a broken cleanup would cost (databases
left behind on a shared server) is checked here instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

import psycopg
import pytest
from pg import SERVER_URL, server_connection

from agentcom.store.tokens import list_tokens

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # its modules' home

from _common import make_tokens
from _postgres import ScratchDatabase, backend_cpu_used, database_url


def _exists(name: str) -> bool:
    with server_connection() as server:
        query = "SELECT count(*) FROM pg_database WHERE datname = %s"
        row = server.execute(query, (name,)).fetchone()
    assert row is not None
    return bool(row[0])


def test_database_url_names_the_new_database_and_keeps_the_rest() -> None:
    assert (
        database_url("postgresql://u:secret@db:5433/postgres?sslmode=require&dbname=x", "b")
        == "postgresql://u:secret@db:5433/b?sslmode=require"
    )
    assert database_url("postgresql://u@db", "b") == "postgresql://u@db/b"
    assert (
        database_url("postgresql:///postgres?host=/run/postgresql", "b")
        == "postgresql:///b?host=%2Frun%2Fpostgresql"
    )


def test_scratch_database_takes_tokens_and_is_dropped_with_a_session_open() -> None:
    scratch = ScratchDatabase(f"{SERVER_URL}/postgres")
    try:
        assert scratch.name.startswith("agentcom_bench_")
        assert _exists(scratch.name)
        agents, _admin = make_tokens(scratch.url, 2)
        assert [record.agent_id for record in list_tokens(scratch.url)] == [
            "bench-admin",
            *(agent_id for agent_id, _token in agents),
        ]
        holder = psycopg.connect(scratch.url, autocommit=True)  # as a hub killed mid-run
        assert holder.info.backend_pid in scratch.backend_pids()
    finally:
        scratch.drop()
    assert not _exists(scratch.name)
    with pytest.raises(psycopg.OperationalError):  # its session was ended by the drop
        holder.execute("SELECT 1")
    holder.close()
    scratch.drop()  # a second drop does nothing


def test_backend_cpu_counts_sessions_that_connected_since_the_first_sample() -> None:
    assert backend_cpu_used({1: 2.0, 2: 1.0}, {1: 2.5, 3: 0.25}) == 0.75
    assert backend_cpu_used({1: 2.0}, {}) is None
