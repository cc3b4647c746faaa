"""The lifecycle benchmark on PostgreSQL (``bench/_postgres.py``, ``--pg``, ``--nodes``):
its scratch database made fresh, written to as the SQLite file is, and dropped even
while a session holds it; its runs on several hub nodes, sidecars and submits spread over
them, compared with one node's.

A full-size benchmark run is too slow for the suite; what a broken cleanup would cost
(databases left behind on a shared server) is checked here, and one tiny run on two
nodes shows the plumbing works end to end.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hubprocess import clean_env
from pg import SERVER_URL, server_connection
from redisnodes import REDIS_URL, require_redis

from agentcom.store.tokens import list_tokens

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # its modules' home

from _common import make_tokens, spread
from _lifecycle_report import compare_runs
from _postgres import ScratchDatabase, backend_cpu_used, database_url

LIFECYCLE_BENCH = Path(__file__).resolve().parents[1] / "bench" / "lifecycle.py"
CROSS_NODE_BENCH = LIFECYCLE_BENCH.with_name("cross_node.py")
BENCH_TIMEOUT_S = 180.0


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


def test_spread_deals_items_round_robin_as_the_sidecars_connect() -> None:
    assert spread(["a0", "a1", "a2", "a3", "a4"], 2) == [["a0", "a2", "a4"], ["a1", "a3"]]
    assert spread(["a0"], 1) == [["a0"]]


def test_comparison_puts_several_nodes_over_one_and_leaves_a_run_that_failed_empty() -> None:
    runs: dict[str, dict[str, Any]] = {
        "sqlite": {"database": "sqlite", "nodes": 1, "tasks_per_s": 1000.0},
        "postgresql": {"database": "postgresql", "nodes": 1, "tasks_per_s": 800.0},
        "postgresql_2_nodes": {"database": "postgresql", "nodes": 2, "tasks_per_s": 1200.0},
    }
    row = compare_runs(runs)["tasks_per_s"]
    assert row["postgresql_over_sqlite"] == 0.8
    assert row["postgresql_2_nodes_over_postgresql"] == 1.5
    runs["postgresql_2_nodes"] = {"database": "postgresql", "nodes": 2, "error": "refused"}
    row = compare_runs(runs)["tasks_per_s"]
    assert row["postgresql_2_nodes"] is None
    assert row["postgresql_2_nodes_over_postgresql"] is None


def _run_lifecycle_bench(
    arguments: list[str], script: Path = LIFECYCLE_BENCH
) -> tuple[int, str, str]:
    """``bench/lifecycle.py`` (or ``script``) with ``arguments``: exit code, stdout,
    stderr. SIGTERM (then SIGKILL) when it outlasts :data:`BENCH_TIMEOUT_S`: it stops its
    own children then."""
    bench = subprocess.Popen(
        [sys.executable, str(script), *arguments],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        out, err = bench.communicate(timeout=BENCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        bench.send_signal(signal.SIGTERM)
        try:
            out, err = bench.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            bench.kill()
            out, err = bench.communicate()
        pytest.fail(f"the bench ran past {BENCH_TIMEOUT_S} s; stderr:\n{err[-3000:]}")
    return bench.returncode, out, err


def test_bench_runs_postgresql_on_two_nodes_with_sidecars_and_submits_on_each(
    tmp_path: Path,
) -> None:
    # given PostgreSQL and Redis
    require_redis()
    with server_connection():
        pass
    # when the bench runs its three cases, tiny
    sizes = ["--agents", "4", "--tasks", "40", "--relay-seconds", "0"]
    cases = ["--pg", f"{SERVER_URL}/postgres", "--nodes", "2", "--redis", REDIS_URL]
    bounds = ["--timeout", "60", "--stall-timeout", "30", "--workdir", str(tmp_path)]
    code, out, err = _run_lifecycle_bench([*sizes, *cases, *bounds, "--json", "--quiet"])
    # then each case ran every task; the two nodes each had half the sidecars and submits
    assert out, f"no report (exit code {code}); stderr:\n{err[-3000:]}"
    runs = json.loads(out)["runs"]
    assert list(runs) == ["sqlite", "postgresql", "postgresql_2_nodes"]
    two = runs["postgresql_2_nodes"]
    assert "error" not in two, two["error"]
    assert code == 0, err[-3000:]
    assert [run["completed"] for run in runs.values()] == [40, 40, 40]
    assert two["nodes"] == 2 and two["operators"] == 2
    assert [node["agents"] for node in two["hub_nodes"]] == [2, 2]
    submits = [node["submits"] for node in two["hub_nodes"]]
    assert sum(submits) == 40 and min(submits) > 0
    assert all(node["frames_received_by_hub"] for node in two["hub_nodes"])
    assert two["hub_cpu_ms_per_task"] is not None
    assert set(two["cpu"]) >= {"hub", "hub_node0", "hub_node1"}
    assert two["submit_to_assign"]["n"] == 40
    # and the bench dropped the databases it made
    for run in runs.values():
        if run["database"] == "postgresql":
            assert not _exists(run["database_location"].rpartition("/")[2])


def test_the_cross_node_bench_times_each_case_and_drops_its_databases() -> None:
    # given PostgreSQL and Redis
    require_redis()
    with server_connection() as server:
        before = set(_bench_databases(server))
    # when the cross-node bench runs, tiny
    arguments = ["--pg", f"{SERVER_URL}/postgres", "--redis", REDIS_URL, "--tasks", "5",
                 "--rate", "50", "--json", "--quiet"]  # fmt: skip
    code, out, err = _run_lifecycle_bench(arguments, CROSS_NODE_BENCH)
    # then each case timed every task, and no database of its own is left
    assert code == 0, err[-3000:]
    cases = json.loads(out)["cases"]
    assert list(cases) == ["same node", "other node", "other node, no Redis"]
    assert [case["n"] for case in cases.values()] == [5, 5, 5]
    assert cases["same node"]["p99_over_same_node"] == 1.0
    with server_connection() as server:
        assert set(_bench_databases(server)) <= before


def _bench_databases(server: psycopg.Connection[tuple[Any, ...]]) -> list[str]:
    """The databases a bench made and has not dropped (yet)."""
    rows = server.execute("SELECT datname FROM pg_database WHERE datname LIKE 'agentcom_bench_%'")
    return [row[0] for row in rows]
