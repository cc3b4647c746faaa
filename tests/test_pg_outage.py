"""A hub whose PostgreSQL server goes away: the real ``agentcom serve`` process, its
``--db`` URL pointing at a TCP proxy in front of the machine's PostgreSQL server.

The proxy is either cut (every connection dropped, new ones closed at once: the server
is down) or goes dark (nothing forwarded, nothing closed: a dead network path). Either
way the hub refuses changes with ``store_unavailable``, answers reads with a clear
error or from what it holds, keeps answering pings, says on ``/health`` that the
database is unreachable, and takes work again by itself once the proxy relays again,
with every acknowledged change in the database. The hub's advisory lock travels the
same URL, so its session dies with the outage too: the hub keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from hubprocess import HubProcess, run_cli_async
from tcpproxy import BlackHoleProxy

from agentcom.client import AgentClient, OperatorClient, RequestFailed
from agentcom.hub.auth import hash_token, new_token
from agentcom.store.tokens import save_token

READ_TIMEOUT_S = 0.5
HUB_ENV = {
    "AGENTCOM_DB_TIMEOUT_S": str(READ_TIMEOUT_S),
    "AGENTCOM_DB_BUSY_TIMEOUT_S": "1",
    "AGENTCOM_STORE_RETRY_INTERVAL_S": "0.1",
}
PING_WITHIN_S = 1.0
ANSWER_WITHIN_S = 10.0


@pytest.fixture
async def proxy() -> AsyncIterator[BlackHoleProxy]:
    """A proxy in front of the PostgreSQL server of the test database, closed at the end."""
    started = await BlackHoleProxy(5432).start()
    yield started
    await started.close()


def through(url: str, proxy: BlackHoleProxy) -> str:
    """``url`` with its host and port replaced by the proxy's, giving up on a connection
    attempt after 2 s (libpq's shortest) rather than the hub's default 10 s."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(
        parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}", query="connect_timeout=2")
    )


def token(url: str, agent_id: str, role: str = "agent") -> str:
    """A token written straight to the database (not through the proxy)."""
    made = new_token()
    save_token(url, agent_id, hash_token(made), role)
    return made


class Setup:
    """A hub behind the proxy with an operator, a worker holding an accepted task, an
    idle agent for pings, and one more acknowledged task waiting in the queue."""

    def __init__(self, url: str, hub: HubProcess, admin: str) -> None:
        self.url = url
        self.hub = hub
        self.admin = admin
        self.operator = OperatorClient(hub.http_url, admin)
        self.worker = AgentClient(
            hub.ws_url, "worker", token(url, "worker"), capabilities=["work"], heartbeat_s=None
        )
        self.pinger = AgentClient(
            hub.ws_url, "pinger", token(url, "pinger"), capabilities=["ping"], heartbeat_s=None
        )
        self.acknowledged: set[str] = set()
        self.complete: dict[str, Any] = {}

    async def start(self, closing: list[Any]) -> Setup:
        for client in (self.operator, self.worker, self.pinger):
            closing.append(client)
            await client.connect()
        waiting = await self.operator.submit("waits in the queue", needed_capabilities=["gpu"])
        working = await self.operator.submit(
            "runs through the outage", needed_capabilities=["work"]
        )
        self.acknowledged |= {waiting["task_id"], working["task_id"]}
        assign = await self.worker.receive_type("task_assign")
        await self.worker.send({"type": "task_accepted", "task_id": working["task_id"]})
        assert (await self.worker.receive_type("task_ack"))["status"] == "accepted"
        self.complete = {
            "type": "task_complete",
            "task_id": working["task_id"],
            "generation": assign["generation"],
            "result": {"status": "success"},
        }
        return self

    async def ping(self) -> float:
        """Seconds the hub took to answer a ping of the idle agent."""
        began = time.monotonic()
        await self.pinger.send({"type": "ping"})
        await self.pinger.receive_type("pong", timeout=ANSWER_WITHIN_S)
        return time.monotonic() - began

    async def get(self, path: str, authorized: bool = True) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.admin}"} if authorized else {}
        async with httpx.AsyncClient(timeout=ANSWER_WITHIN_S) as client:
            return await client.get(f"{self.hub.http_url}{path}", headers=headers)

    def stored(self) -> dict[str, str]:
        """Each task's status as the database holds it (read straight, not through the proxy)."""
        with psycopg.connect(self.url) as connection:
            rows = connection.execute("SELECT task_id, status FROM tasks").fetchall()
        return {task_id: status for task_id, status in rows}


async def refused_submit(operator: OperatorClient) -> tuple[RequestFailed, float]:
    began = time.monotonic()
    with pytest.raises(RequestFailed) as failure:
        await asyncio.wait_for(
            operator.submit("refused in the outage", needed_capabilities=["ping"]), ANSWER_WITHIN_S
        )
    return failure.value, time.monotonic() - began


async def clear_or_answered(request: Any) -> None:
    """An operator read answers, or fails with a clear error; never hangs."""
    try:
        await asyncio.wait_for(request, ANSWER_WITHIN_S)
    except RequestFailed as failure:
        assert failure.code == "store_unavailable", failure
        assert "database" in str(failure), failure


async def assert_reads_are_clear(setup: Setup) -> None:
    """Every kind of read answers within the bound, cleanly, and a ping keeps being quick."""
    task_id = setup.complete["task_id"]
    pinged = asyncio.ensure_future(setup.ping())
    await clear_or_answered(setup.operator.list_tasks())
    await clear_or_answered(setup.operator.get_task(task_id))
    await clear_or_answered(setup.operator.request("stats"))
    assert await pinged < PING_WITHIN_S
    for path in ("/api/tasks", f"/api/tasks/{task_id}", "/api/tasks/stats"):
        response = await setup.get(path)
        assert response.status_code in (200, 503), (path, response.text)
        if response.status_code == 503:
            assert response.json()["error"] == "store_unavailable", response.text
    for command in (("task", "list"), ("task", "show", task_id)):
        done = await run_cli_async(*command, *setup.hub.operator_args(setup.admin))
        assert "Traceback" not in done.stderr, done
        assert done.returncode == 0 or "store_unavailable" in done.stderr, done
    health = (await setup.get("/health", authorized=False)).json()
    assert (health["status"], health["store"]) == ("degraded", "failing"), health
    assert "the database is unreachable" in health["store_error"], health
    assert await setup.ping() < PING_WITHIN_S


async def outage_and_recovery(
    pg_url: str, tmp_path: Path, hubs: list[HubProcess], closing: list[Any],
    proxy: BlackHoleProxy, go_away: str,
) -> None:  # fmt: skip
    # given a hub on PostgreSQL through the proxy, with acknowledged work
    hub = HubProcess(tmp_path, db=through(pg_url, proxy), env=HUB_ENV)
    hubs.append(hub)
    admin = token(pg_url, "ops", "admin")
    await asyncio.to_thread(hub.start)  # the proxy runs on this loop meanwhile
    setup = await Setup(pg_url, hub, admin).start(closing)

    # when the database goes away
    getattr(proxy, go_away)()
    went = time.monotonic()

    # then a submit is refused with a clear error, and so is the worker's completion
    failure, waited = await refused_submit(setup.operator)
    detected_s = time.monotonic() - went
    assert failure.code == "store_unavailable", failure
    assert "database" in str(failure)
    await setup.worker.send(setup.complete)
    reply = await setup.worker.receive(timeout=ANSWER_WITHIN_S)
    assert (reply["type"], reply["error"]) == ("error", "store_unavailable"), reply
    # and reads answer cleanly while pings stay quick, time and again
    await assert_reads_are_clear(setup)
    assert (await refused_submit(setup.operator))[0].code == "store_unavailable"
    await assert_reads_are_clear(setup)

    # when the database is back, the hub takes work again by itself
    proxy.restore()
    back = time.monotonic()
    # (a submit while the store is failing probes it first: no waiting for the next probe)
    after = await asyncio.wait_for(
        setup.operator.submit("accepted after the outage", needed_capabilities=["gpu"]),
        ANSWER_WITHIN_S,
    )
    recovered_s = time.monotonic() - back
    setup.acknowledged.add(after["task_id"])
    await setup.worker.send(setup.complete)
    while (reply := await setup.worker.receive(timeout=ANSWER_WITHIN_S))["type"] != "task_ack":
        print("worker got", reply)
    assert reply["status"] == "complete", reply
    health = (await setup.get("/health", authorized=False)).json()
    assert (health["status"], health["store"]) == ("ok", "ok"), health

    # and every acknowledged change is in the database, nothing refused is
    stored = await asyncio.to_thread(setup.stored)
    assert set(stored) == setup.acknowledged
    assert stored[setup.complete["task_id"]] == "completed"
    print(f"{go_away}: refused after {waited:.2f} s ({detected_s:.2f} s after the outage began); "
          f"took work again {recovered_s:.2f} s after the database came back")  # fmt: skip


async def test_postgresql_down_refuses_changes_answers_reads_and_recovers_by_itself(
    pg_url: str, tmp_path: Path, hubs: list[HubProcess], closing: list[Any],
    proxy: BlackHoleProxy,
) -> None:  # fmt: skip
    await outage_and_recovery(pg_url, tmp_path, hubs, closing, proxy, "cut")


async def test_a_silent_link_to_postgresql_never_holds_the_hub_and_recovers_by_itself(
    pg_url: str, tmp_path: Path, hubs: list[HubProcess], closing: list[Any],
    proxy: BlackHoleProxy,
) -> None:  # fmt: skip
    await outage_and_recovery(pg_url, tmp_path, hubs, closing, proxy, "go_dark")
