"""A hub on PostgreSQL: the real ``agentcom`` command against a database of its own.

Tokens made with ``agentcom token create --db postgresql://...``, a hub started with
``agentcom serve --db postgresql://...`` as a real process, a real agent and operator;
acknowledged work survives ``kill -9``, and one database has one hub, as with SQLite.
The store's own behaviour is in ``test_store_contract.py`` (run against PostgreSQL too).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import METADATA
from hubprocess import CliResult, HubProcess, closed_port, run_cli, run_cli_async
from pydantic import ValidationError

from agentcom.client import AgentClient, OperatorClient
from agentcom.config import Settings
from agentcom.errors import StoreError
from agentcom.protocol.common import Priority, TaskStatus
from agentcom.protocol.task import Task
from agentcom.store.base import TaskFilter
from agentcom.store.pgschema import MIGRATIONS
from agentcom.store.postgres import PostgresStore

EXIT_DATABASE_IN_USE = 5
EXECUTION = {
    "model_used": "qwen2.5-coder:7b", "tokens_in": 120, "tokens_out": 48,
    "estimated_cost_usd": 0.0, "equivalent_claude_cost_usd": 0.00108, "execution_ms": 1534.0,
}  # fmt: skip


async def token_create(url: str, agent_id: str, role: str = "agent") -> str:
    """``agentcom token create`` on the database; the token it printed."""
    created = await run_cli_async("token", "create", agent_id, "--role", role, "--db", url)
    assert created.returncode == 0, created
    return created.stdout.strip()


def start(hubs: list[HubProcess], directory: Path, url: str) -> HubProcess:
    """``agentcom serve --db URL`` on a free port, stopped by the ``hubs`` fixture."""
    hub = HubProcess(directory, db=url)
    hubs.append(hub)
    return hub.start()


def serve(url: str) -> CliResult:
    """Run ``agentcom serve`` to completion: only for a start that is expected to fail."""
    return run_cli("serve", "--host", "127.0.0.1", "--port", "0", "--db", url)


async def test_a_hub_on_postgresql_runs_a_task_and_keeps_its_work_through_sigkill(
    pg_url: str, tmp_path: Path, hubs: list[HubProcess], closing: list[Any]
) -> None:
    # given tokens made by the CLI and a hub serving the database
    worker_token = await token_create(pg_url, "worker")
    ops_token = await token_create(pg_url, "ops", "admin")
    hub = start(hubs, tmp_path, pg_url)
    worker = AgentClient(hub.ws_url, "worker", worker_token, capabilities=["x"], heartbeat_s=None)
    closing.append(worker)
    await worker.connect()
    operator = OperatorClient(hub.http_url, ops_token)
    closing.append(operator)
    await operator.connect()

    # when a task is submitted, assigned to the agent and completed by it
    done = await operator.submit("run me", needed_capabilities=["x"])
    assign = await worker.receive_type("task_assign")
    assert assign["task_id"] == done["task_id"]
    await worker.send({"type": "task_accepted", "task_id": done["task_id"]})
    assert (await worker.receive_type("task_ack"))["status"] == "accepted"
    await worker.send({"type": "task_complete", "task_id": done["task_id"],
                       "generation": assign["generation"], "result": METADATA})  # fmt: skip
    assert (await worker.receive_type("task_ack"))["status"] == "complete"
    waiting = await operator.submit("nobody can run this", needed_capabilities=["none-has"])

    # and the hub is killed outright, then started again on the same database
    await worker.close()
    await operator.close()
    assert hub.kill() == -9
    restarted = start(hubs, tmp_path, pg_url)

    # then the completed task and the queued one are there as acknowledged
    assert "restored 1 unfinished tasks" in restarted.log()
    async with OperatorClient(restarted.http_url, ops_token) as again:
        completed = await again.get_task(done["task_id"])
        queued = await again.get_task(waiting["task_id"])
        listed, _ = await again.list_tasks(status="completed")
    assert (completed["status"], completed["assigned_to"]) == ("completed", "worker")
    assert completed["execution"] == EXECUTION
    assert completed["result"] == METADATA
    assert [entry["status"] for entry in completed["history"]] == [
        "queued", "assigned", "working", "completed"]  # fmt: skip
    assert (queued["status"], queued["generation"]) == ("queued", 0)
    assert [task["task_id"] for task in listed] == [done["task_id"]]


async def test_a_second_hub_on_the_same_postgresql_database_exits_5_naming_the_first(
    pg_url: str, tmp_path: Path, hubs: list[HubProcess]
) -> None:
    # given a hub serving the database
    first = start(hubs, tmp_path, pg_url)
    assert first.process is not None

    # when a second hub is started on it
    refused = await asyncio.to_thread(serve, pg_url)

    # then it refuses in one line naming the database, the first hub's pid and address
    assert refused.returncode == EXIT_DATABASE_IN_USE, refused
    assert refused.stdout == ""
    [line] = refused.stderr.splitlines()
    assert line.startswith(f"agentcom: the database {pg_url} is already served by another hub")
    assert f"pid {first.process.pid}" in line
    assert f"ws://127.0.0.1:{first.port}/ws" in line

    # and once the first is killed, PostgreSQL has dropped its lock: a new hub starts
    first.kill()
    assert start(hubs, tmp_path, pg_url).port is not None


async def test_a_password_in_the_url_is_never_shown(tmp_path: Path) -> None:
    url = f"postgresql://agentcom:s3cret@127.0.0.1:{closed_port()}/agentcom"

    refused = await asyncio.to_thread(serve, url)
    shown = await run_cli_async("config", "show", "--db", url)

    assert refused.returncode == 1
    [line] = refused.stderr.splitlines()
    assert line.startswith(
        f"agentcom: cannot use the database {url.replace('s3cret', '****')}: connection failed"
    )
    assert "s3cret" not in refused.stderr + shown.stdout + shown.stderr
    assert url.replace("s3cret", "****") in shown.stdout


async def test_token_list_refuses_a_database_without_agentcom_tables(pg_url: str) -> None:
    listed = await run_cli_async("token", "list", "--db", pg_url)

    assert listed.returncode == 1
    assert listed.stderr == (
        f"agentcom: cannot use the database {pg_url}: it has no agentcom tables "
        "(token create and serve make them)\n"
    )


async def test_a_writer_connection_the_server_ended_is_replaced(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    try:
        store.stage_task(_task(1))
        await store.commit()

        # when the server ends every session of the store (a restart, an administrator)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )

        # then the commit that finds its connection gone is refused, and the next one
        # writes on a new connection
        store.stage_task(_task(2))
        with pytest.raises(StoreError):
            await store.commit()
        store.stage_task(_task(3))
        await store.commit()
        await store.check_writable()
        with pytest.raises(
            StoreError, match="unreachable"
        ):  # the reader finds out at its next read
            store.list_task_page(TaskFilter())
        assert [task["task_id"] for task in store.list_task_page(TaskFilter()).tasks] == [
            _task(3).task_id, _task(1).task_id]  # fmt: skip
    finally:
        store.close()


async def test_stores_opened_at_once_on_an_empty_database_make_the_schema_once(
    pg_url: str,
) -> None:
    # when four processes' worth of stores open an empty database at the same instant
    stores = await asyncio.gather(*(asyncio.to_thread(PostgresStore, pg_url) for _ in range(4)))
    for store in stores:
        store.close()

    # then each found the schema made, once, at the version this agentcom knows
    with psycopg.connect(pg_url) as connection:
        versions = connection.execute("SELECT version FROM schema_version").fetchall()
    assert versions == [(len(MIGRATIONS),)]


def test_a_database_made_by_a_newer_agentcom_is_refused(pg_url: str) -> None:
    PostgresStore(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as connection:
        connection.execute("UPDATE schema_version SET version = version + 1")

    with pytest.raises(StoreError, match="made by a newer agentcom"):
        PostgresStore(pg_url)


@pytest.mark.parametrize(
    ("given", "expected"),
    [("postgresql://u@h/d", "postgresql://u@h/d"), ("POSTGRES://u@h/d", "POSTGRES://u@h/d"),
     ("hub.db", Path("hub.db")), ("./odd://name.db", Path("./odd://name.db"))],
)  # fmt: skip
def test_the_db_setting_is_a_path_or_a_postgresql_url(given: str, expected: Path | str) -> None:
    assert Settings(db=given).db == expected


def test_the_db_setting_refuses_another_kind_of_url() -> None:
    with pytest.raises(ValidationError, match="not a mysql:// URL"):
        Settings(db="mysql://u@h/d")


def _task(n: int) -> Task:
    return Task(task_id=f"{n:032x}", status=TaskStatus.queued, priority=Priority.normal,
                description=f"task {n}", created_at=n, updated_at=n)  # fmt: skip


def test_the_server_is_asked_to_notice_a_lost_hub_within_seconds(pg_url: str) -> None:
    # given a connection the hub opens (the one holding its lock among them)
    from agentcom.store.pgconnection import connect

    connection = connect(pg_url, lock_timeout_s=1.5)
    try:
        # then the server probes an idle peer after 10 s, gives up after 3 unanswered
        # probes 5 s apart, or after 30 s of unacknowledged data, and ends the session
        shown = {
            name: connection.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in ("tcp_keepalives_idle", "tcp_keepalives_interval",
                         "tcp_keepalives_count", "tcp_user_timeout", "lock_timeout")
        }  # fmt: skip
    finally:
        connection.close()
    assert shown == {"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5",
                     "tcp_keepalives_count": "3", "tcp_user_timeout": "30000",
                     "lock_timeout": "1500ms"}  # fmt: skip

    # and options the URL gives win
    separator = "&" if "?" in pg_url else "?"
    connection = connect(f"{pg_url}{separator}options=-c%20tcp_keepalives_idle%3D77")
    try:
        assert connection.execute("SHOW tcp_keepalives_idle").fetchone() == ("77",)
    finally:
        connection.close()
