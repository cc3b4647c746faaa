"""Fixtures: a real hub on a free loopback port, a real SQLite file, a PostgreSQL database
of its own, a manual clock."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from hubprocess import HubProcess
from pg import fresh_database
from sharednodes import Nodes, running_nodes

from agentcom.client import AgentClient, OperatorClient
from agentcom.config import Settings
from agentcom.hub.auth import hash_token, new_token
from agentcom.hub.clock import ManualClock
from agentcom.server.app import HubServer
from agentcom.store.tokens import save_token

TokenMaker = Callable[..., str]

METADATA = {
    "status": "success",
    "output": "done",
    "model_used": "qwen2.5-coder:7b",
    "tokens_in": 120,
    "tokens_out": 48,
    "estimated_cost_usd": 0,
    "equivalent_claude_cost_usd": 0.00108,
    "execution_ms": 1534,
}
"""A ``task_complete`` result with every execution metadata field of a local-model run."""
AgentMaker = Callable[..., Awaitable[AgentClient]]


@asynccontextmanager
async def hub_with(settings: Settings, **changes: Any) -> AsyncIterator[HubServer]:
    """A hub on its own port with some settings changed (and a manual clock); stopped on
    exit."""
    server = HubServer(settings.model_copy(update=changes), clock=ManualClock(), run_sweeps=False)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for a test hub: loopback, a free port, a database in tmp_path."""
    return Settings(
        host="127.0.0.1",
        port=0,
        db=tmp_path / "hub.db",
        log_level="DEBUG",
        fallback_wait_s=0,  # no Ollama here: standard tasks fall back at once
        auth_failures_before_delay=1000,  # tests of the slow-down set their own
    )


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a new PostgreSQL database for this test (``tests/pg.py``), dropped at the
    end; the test fails when PostgreSQL cannot be reached."""
    with fresh_database() as url:
        yield url


@pytest.fixture
def nodes(pg_url: str, tmp_path: Path) -> Iterator[Nodes]:
    """Hub nodes sharing the test's own database (``sharednodes.Nodes``), all stopped at
    the end; the test fails when Redis does not answer."""
    with running_nodes(tmp_path, pg_url) as started:
        yield started


@pytest.fixture
def clock() -> ManualClock:
    """The hub's clock; tests move it with ``advance``."""
    return ManualClock()


@pytest.fixture
async def hub(settings: Settings, clock: ManualClock) -> AsyncIterator[HubServer]:
    """A running hub whose sweeps the test triggers itself."""
    server = HubServer(settings, clock=clock, run_sweeps=False)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def make_token(settings: Settings) -> TokenMaker:
    """Create a token straight in the database, as ``agentcom token create`` does."""

    def make(agent_id: str, role: str = "agent") -> str:
        token = new_token()
        save_token(settings.db, agent_id, hash_token(token), role)
        return token

    return make


@pytest.fixture
def ws_url(hub: HubServer) -> str:
    """The hub's agent endpoint."""
    return f"ws://127.0.0.1:{hub.port}/ws"


@pytest.fixture
def http_url(hub: HubServer) -> str:
    """The hub's base URL."""
    return f"http://127.0.0.1:{hub.port}"


@pytest.fixture
async def make_agent(ws_url: str, make_token: TokenMaker) -> AsyncIterator[AgentMaker]:
    """Connect and identify agents; all are closed at the end of the test."""
    clients: list[AgentClient] = []

    async def make(agent_id: str = "agent-1", **options: object) -> AgentClient:
        client = AgentClient(ws_url, agent_id, make_token(agent_id), heartbeat_s=None, **options)  # type: ignore[arg-type]
        await client.connect()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def operator(http_url: str, make_token: TokenMaker) -> AsyncIterator[OperatorClient]:
    """An admin operator connection."""
    client = OperatorClient(http_url, make_token("ops", "admin"))
    await client.connect()
    yield client
    await client.close()


@pytest.fixture
def hubs() -> Iterator[list[HubProcess]]:
    """Hub processes a test starts (``hubprocess.start_hub``); all are stopped at the end."""
    started: list[HubProcess] = []
    yield started
    for process in started:
        process.stop()


@pytest.fixture
async def closing() -> AsyncIterator[list[Any]]:
    """Clients and connections a test opens; all are closed at the end, newest first."""
    opened: list[Any] = []
    yield opened
    for client in reversed(opened):
        with contextlib.suppress(Exception):
            await client.close()
