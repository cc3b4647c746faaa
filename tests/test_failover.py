"""Active and standby: a second ``agentcom serve --standby`` on a database another hub
serves waits, answering 503, and takes over when that hub ends; a PostgreSQL hub whose
lock session ends steps down when another hub holds the lock, and none of its writes
lands once another hub took the database over.

Real processes throughout (the lock is a lock between processes), real PostgreSQL, and
Debian's HAProxy in front of two hubs, checking their ``/health``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import websockets
from conftest import METADATA
from gated import Frame, GatedSidecar
from haproxy import HaProxy
from hubprocess import HubProcess

from agentcom.client import OperatorClient, RequestFailed
from agentcom.store.pgschema import HUB_LOCK

EXIT_LOCK_LOST = 6
FAST = {
    "AGENTCOM_STANDBY_RETRY_S": "0.1",
    "AGENTCOM_LOCK_CHECK_INTERVAL_S": "0.2",
    "AGENTCOM_SWEEP_INTERVAL_S": "0.2",
}
"""A standby that tries the lock every 100 ms, a serving hub that checks it every 200 ms."""

# The session holding the hub's lock in the current database.
_LOCK_HOLDER = """
SELECT pid FROM pg_locks
WHERE locktype = 'advisory' AND granted AND objsubid = 2
  AND classid::bigint = %s AND objid::bigint = %s
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


@pytest.fixture
def pair() -> Iterator[list[HubProcess]]:
    """The hubs of a test; every one still running is stopped at the end."""
    hubs: list[HubProcess] = []
    yield hubs
    for hub in hubs:
        hub.stop()


@pytest.fixture
async def opened() -> AsyncIterator[list[Any]]:
    """Sidecars and clients a test opens; closed at the end, newest first."""
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        with contextlib.suppress(Exception):
            await thing.close()


def start_pair(
    hubs: list[HubProcess], directory: Path, db: Path | str
) -> tuple[HubProcess, HubProcess]:
    """Two hubs started with ``--standby`` on ``db``: the first serves, the second waits."""
    for _ in range(2):
        hub = HubProcess(directory, db=db, env=FAST, serve_args=["--standby"], log_pipe=True)
        hubs.append(hub)
        hub.start()
    return hubs[0], hubs[1]


async def health(base_url: str) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(f"{base_url}/health")
    return response.status_code, response.json()


async def exited(hub: HubProcess, timeout: float = 20.0) -> int:
    """The exit status of ``hub``, once it has ended by itself."""
    assert hub.process is not None
    return await asyncio.to_thread(hub.process.wait, timeout)


def whole_log(hub: HubProcess) -> str:
    """Everything a hub that has exited wrote to its log (a pipe)."""
    assert hub.stderr is not None
    hub.stderr.rest()
    return hub.log()


async def check_completed_once(operator: OperatorClient, task_id: str) -> None:
    """The task completed, once, with the execution metadata the agent reported."""
    task = await operator.get_task(task_id)
    assert task["status"] == "completed"
    assert [entry["status"] for entry in task["history"]].count("completed") == 1
    assert task["execution"]["model_used"] == METADATA["model_used"]
    assert task["execution"]["tokens_in"] == METADATA["tokens_in"]
    assert task["execution"]["tokens_out"] == METADATA["tokens_out"]
    assert task["result"]["output"] == METADATA["output"]


async def run_one(agent: GatedSidecar, operator: OperatorClient, description: str) -> Frame:
    """Submit a task, let the agent run it, and return its completion's answer."""
    await operator.submit(description, complexity_tier="complex")
    assign = await agent.next_assign()
    agent.finish(assign["task_id"])
    return await agent.answer(assign["task_id"], assign["generation"])


# --- the standby itself ------------------------------------------------------------------


async def test_a_standby_refuses_everything_with_503_naming_the_serving_hub_and_stops_cleanly(
    tmp_path: Path, pair: list[HubProcess]
) -> None:
    # given a hub serving a database and a standby on it
    active, standby = start_pair(pair, tmp_path, tmp_path / "hub.db")
    assert active.process is not None

    # when asked for its health, anything else, or a WebSocket
    status, body = await health(standby.http_url)
    async with httpx.AsyncClient(timeout=5) as http:
        metrics = await http.get(f"{standby.http_url}/metrics")
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(standby.ws_url, open_timeout=5):
            pass

    # then each is refused with 503, and /health names the hub that serves the database
    assert status == 503
    assert body["status"] == "standby"
    assert body["serving_hub"] == {
        "pid": active.process.pid, "host": body["serving_hub"]["host"],
        "address": active.ws_url,
    }  # fmt: skip
    assert metrics.status_code == 503
    assert refused.value.response.status_code == 503
    # and the serving hub is untouched
    assert (await health(active.http_url))[0] == 200

    # when the standby is stopped, it exits 0 without having touched the database
    assert standby.stop() == 0
    log = whole_log(standby)
    assert "standby stopped" in log
    assert "restored" not in log
    assert (await health(active.http_url))[0] == 200


# --- takeover -------------------------------------------------------------------------------


async def test_on_sqlite_a_standby_takes_over_a_killed_hub_and_its_running_task_completes_once(
    tmp_path: Path, pair: list[HubProcess], opened: list[Any]
) -> None:
    # given two hubs on one SQLite file, and an agent running a task on the serving one
    active, standby = start_pair(pair, tmp_path, tmp_path / "hub.db")
    admin = active.make_token("ops", "admin")
    agent = GatedSidecar(active.ws_url, "worker", active.make_token("worker"),
                         backoff_initial_s=0.05, backoff_max_s=0.2)  # fmt: skip
    opened.append(agent)
    async with OperatorClient(active.http_url, admin) as operator:
        submitted = await operator.submit("survive the failover", complexity_tier="complex")
    assign = await agent.next_assign()

    # when the serving hub is killed outright, and the agent connects to the standby
    active.kill()
    agent.client.url = standby.ws_url
    await standby.await_log("standby taking over")
    await standby.await_log("agentcom hub listening")
    agent.finish(assign["task_id"])

    # then its completion is accepted, and the task completed once, with its metadata
    answer = await agent.answer(assign["task_id"], assign["generation"])
    assert answer["status"] == "complete"
    assert (await health(standby.http_url))[0] == 200
    operator = OperatorClient(standby.http_url, admin)
    opened.append(operator)
    await operator.connect()
    await check_completed_once(operator, submitted["task_id"])
    # and new work runs on the hub that took over
    assert (await run_one(agent, operator, "after the failover"))["status"] == "complete"


async def test_behind_haproxy_a_standby_takes_over_a_killed_hub_on_postgresql(
    tmp_path: Path, pg_url: str, pair: list[HubProcess], opened: list[Any]
) -> None:
    # given two hubs on one PostgreSQL database behind HAProxy, which sends everything
    # to the serving one (the standby fails its health check)
    active, standby = start_pair(pair, tmp_path, pg_url)
    assert active.port is not None and standby.port is not None
    with HaProxy(tmp_path, [active.port, standby.port]) as proxy:
        await proxy.await_server("b", "DOWN")
        admin = active.make_token("ops", "admin")
        # and an agent, connected through HAProxy, running a task
        agent = GatedSidecar(proxy.ws_url, "worker", active.make_token("worker"),
                             backoff_initial_s=0.05, backoff_max_s=0.2)  # fmt: skip
        opened.append(agent)
        async with OperatorClient(proxy.http_url, admin) as operator:
            submitted = await operator.submit("survive the failover", complexity_tier="complex")
        assign = await agent.next_assign()

        # when the serving hub is killed outright
        killed_at = time.monotonic()
        active.kill()

        # then the standby takes over, HAProxy turns to it, the agent reconnects through
        # HAProxy, and its completion is accepted
        await standby.await_log("agentcom hub listening")
        serving_after = time.monotonic() - killed_at
        await proxy.await_server("b", "UP")
        agent.finish(assign["task_id"])
        answer = await agent.answer(assign["task_id"], assign["generation"])
        completed_after = time.monotonic() - killed_at
        assert answer["status"] == "complete"
        print(
            f"\nfailover on PostgreSQL behind HAProxy: standby serving {serving_after:.3f} s "
            f"after SIGKILL, the running task completed {completed_after:.3f} s after it"
        )
        # and the task completed once, by that agent, with its metadata (asked through
        # HAProxy)
        operator = OperatorClient(proxy.http_url, admin)
        opened.append(operator)
        await operator.connect()
        await check_completed_once(operator, submitted["task_id"])
        task = await operator.get_task(submitted["task_id"])
        assert task["assigned_to"] == "worker"
        # and a task submitted after the failover runs too
        assert (await run_one(agent, operator, "after the failover"))["status"] == "complete"
        await operator.close()
        await agent.close()


# --- fencing: a lost PostgreSQL lock -----------------------------------------------------


def lock_holder(connection: psycopg.Connection[tuple[Any, ...]]) -> int:
    """The server process id of the session that holds the hub's lock."""
    row = connection.execute(_LOCK_HOLDER, HUB_LOCK).fetchone()
    assert row is not None, "nobody holds the hub's lock"
    pid: int = row[0]
    return pid


def contend(url: str, connections: list[psycopg.Connection[tuple[Any, ...]]]) -> bool:
    """Wait (at most 5 s) for the hub's lock on a new session, kept in ``connections``;
    False when another session took it first."""
    connection = psycopg.connect(url, autocommit=True)
    connections.append(connection)
    connection.execute("SET lock_timeout = '5s'")
    try:
        connection.execute("SELECT pg_advisory_lock(%s, %s)", HUB_LOCK)
    except psycopg.errors.LockNotAvailable:
        return False
    return True


async def test_a_hub_whose_lock_session_ends_steps_down_when_another_holds_the_lock(
    tmp_path: Path, pg_url: str, pair: list[HubProcess]
) -> None:
    # given two hubs on one PostgreSQL database, and a connection open on the serving one
    active, standby = start_pair(pair, tmp_path, pg_url)
    connection = await websockets.connect(active.ws_url, open_timeout=5)
    contenders: list[psycopg.Connection[tuple[Any, ...]]] = []
    try:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            # when the session holding its lock is terminated, and another session waits
            # for the lock (the test's, or the standby's if it tries first), so that the
            # serving hub cannot retake it
            admin.execute("SELECT pg_terminate_backend(%s)", (lock_holder(admin),))
        await asyncio.to_thread(contend, pg_url, contenders)

        # then the serving hub steps down: its connections closed 1012, exit status 6
        await asyncio.wait_for(connection.wait_closed(), 20)
        assert connection.close_code == 1012
        assert await exited(active) == EXIT_LOCK_LOST
        log = whole_log(active)
        assert "stepping down: another hub holds the database's lock" in log
        assert "stepped down:" in log
        assert standby.process is not None and standby.process.poll() is None
    finally:
        for contender in contenders:  # the lock is free again
            contender.close()

    # and the standby takes over (at once if it took the lock before the test did)
    await standby.await_log("standby taking over")
    await standby.await_log("agentcom hub listening")
    assert (await health(standby.http_url))[0] == 200


async def test_a_hub_whose_lock_session_ends_retakes_the_lock_when_nobody_took_it(
    tmp_path: Path, pg_url: str, pair: list[HubProcess]
) -> None:
    # given one hub on a PostgreSQL database
    hub = HubProcess(tmp_path, db=pg_url, env=FAST, log_pipe=True)
    pair.append(hub)
    hub.start()

    # when the session holding its lock is terminated, and nobody else takes the lock
    with psycopg.connect(pg_url, autocommit=True) as admin:
        terminated = lock_holder(admin)
        admin.execute("SELECT pg_terminate_backend(%s)", (terminated,))

        # then the hub takes it again on a new session, and keeps serving
        await hub.await_log("the lock is retaken")
        assert lock_holder(admin) != terminated
    assert (await health(hub.http_url))[0] == 200
    # and another hub on the database is still refused
    second = HubProcess(tmp_path, db=pg_url, env=FAST)
    with pytest.raises(RuntimeError, match="already served by another hub"):
        second.start()
    assert second.process is not None and second.process.returncode == 5


async def test_once_another_hub_took_the_database_the_old_hub_writes_nothing_more(
    tmp_path: Path, pg_url: str, pair: list[HubProcess]
) -> None:
    # given a hub on PostgreSQL that checks its lock rarely, with an operator connected
    hub = HubProcess(
        tmp_path, db=pg_url, env={"AGENTCOM_LOCK_CHECK_INTERVAL_S": "600"}, log_pipe=True
    )
    pair.append(hub)
    hub.start()
    admin = hub.make_token("ops", "admin")
    async with OperatorClient(hub.http_url, admin) as operator:
        await operator.submit("written while this hub serves")

        # when its lock's session ends and another hub takes the database over, as a
        # standby does: the lock, then the hub_owner row, before anything else
        with psycopg.connect(pg_url, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", (lock_holder(other),))
            other.execute("SELECT pg_advisory_lock(%s, %s)", HUB_LOCK)
            other.execute(
                "UPDATE hub_owner SET backend_pid = pg_backend_pid(), pid = 1, host = 'other',"
                " since = since + 1 WHERE id = 1"
            )

            # then the old hub's next write is refused, long before its next lock check
            with pytest.raises(RequestFailed) as refused:
                await operator.submit("written after another hub took over")
            assert refused.value.code == "store_unavailable"
            descriptions = [
                row[0] for row in other.execute("SELECT body::json->>'description' FROM tasks")
            ]
    assert descriptions == ["written while this hub serves"]
    await hub.await_log("another hub serves this database now")
