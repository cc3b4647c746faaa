"""The ``agentcom`` command as an operator runs it: subprocesses against a live hub process.

Sidecars are simulated in the test process with :class:`AgentClient`; every CLI call is a
real ``python -m agentcom.cli`` process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import METADATA
from hubprocess import (
    CLI,
    CliProcess,
    CliResult,
    HubProcess,
    clean_env,
    closed_port,
    run_cli_async,
    running_hub,
)
from ollama_standin import OllamaStandin, make_ollama, ollama  # noqa: F401
from websockets.exceptions import ConnectionClosed

from agentcom.cli import _parser as cli_parser
from agentcom.client import AgentClient, AuthenticationError
from agentcom.hub.auth import hash_token
from agentcom.protocol.common import Priority, TaskStatus
from agentcom.protocol.task import Task
from agentcom.store.sqlite import SqliteStore

SidecarMaker = Callable[..., Awaitable[AgentClient]]
REPO = Path(__file__).resolve().parent.parent

TASK_ID = re.compile(r"^[A-Za-z0-9_-]{16,}$")  # random, unguessable; the format is not ours to pin
NEVER_QUEUED = "refused before it reaches the queue"


# --- fixtures and helpers -------------------------------------------------------------


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    """``agentcom serve`` on a free port with a database in tmp_path."""
    with running_hub(tmp_path) as process:
        yield process


@pytest.fixture
def admin(hub: HubProcess) -> list[str]:
    """``--hub URL --token T`` with an admin token."""
    return hub.operator_args(hub.make_token("ops", "admin"))


@pytest.fixture(scope="module")
def quiet_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    """One hub for the tests that no sidecar takes part in (refusals, reads): faster."""
    with running_hub(tmp_path_factory.mktemp("quiet-hub")) as process:
        yield process


@pytest.fixture
def quiet_admin(quiet_hub: HubProcess) -> list[str]:
    """An admin's ``--hub URL --token T`` for :func:`quiet_hub`."""
    return quiet_hub.operator_args(quiet_hub.make_token("ops", "admin"))


@pytest.fixture
async def sidecars(hub: HubProcess) -> AsyncIterator[SidecarMaker]:
    """Connect simulated sidecars to the hub; all are closed at the end of the test."""
    clients: list[AgentClient] = []

    async def connect(
        agent_id: str = "worker-1", capabilities: list[str] | None = None
    ) -> AgentClient:
        client = AgentClient(
            hub.ws_url,
            agent_id,
            hub.make_token(agent_id),
            capabilities=capabilities,
            heartbeat_s=None,
        )
        await client.connect()
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.close()


async def cli(
    *args: str, env: Mapping[str, str] | None = None, answer: str | None = None
) -> CliResult:
    """Run the command (``answer`` on its stdin); fail the test if it takes longer than a
    CLI call ever should."""
    return await run_cli_async(*args, env=env, timeout=20, input=answer)


def succeeded(result: CliResult) -> str:
    """The stdout of a successful run."""
    assert result.returncode == 0, result
    assert "Traceback" not in result.stderr
    return result.stdout


def one_line_error(result: CliResult) -> str:
    """The single stderr line of a failed run (nothing on stdout, no traceback)."""
    assert result.returncode != 0, result
    assert result.stdout == "", result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def table(output: str, *headers: str) -> list[str]:
    """The rows of a table printed by the command, after checking its header."""
    header, *rows = output.splitlines()
    assert header.split() == " ".join(headers).split(), header
    for name in headers:  # each column starts where its header does
        assert header.startswith(name) or f"  {name}" in header, header
    return rows


async def submit(admin: list[str], description: str, *options: str) -> str:
    """Submit with ``task submit``; the task id it printed."""
    task_id = succeeded(await cli("task", "submit", description, *options, *admin)).strip()
    assert TASK_ID.match(task_id), task_id
    return task_id


async def show(admin: list[str], task_id: str) -> dict[str, Any]:
    """The task, from ``task show --json``."""
    task: dict[str, Any] = json.loads(
        succeeded(await cli("task", "show", task_id, "--json", *admin))
    )
    return task


async def accept(agent: AgentClient) -> dict[str, Any]:
    """Take the next assignment and accept it; the ``task_assign`` frame."""
    assign = await agent.receive_type("task_assign")
    await agent.send({"type": "task_accepted", "task_id": assign["task_id"]})
    ack = await agent.receive_type("task_ack")
    assert ack["status"] == "accepted"
    return assign


async def complete(agent: AgentClient, assign: dict[str, Any]) -> None:
    """Complete an accepted task with execution metadata."""
    await agent.send(
        {
            "type": "task_complete",
            "task_id": assign["task_id"],
            "generation": assign["generation"],
            "result": METADATA,
        }
    )
    ack = await agent.receive_type("task_ack")
    assert ack["status"] == "complete"


async def fail(agent: AgentClient, expected: str = "dead_letter") -> dict[str, Any]:
    """Take the next assignment and fail it; the ``task_assign`` frame."""
    assign = await agent.receive_type("task_assign")
    await agent.send(
        {
            "type": "task_failed",
            "task_id": assign["task_id"],
            "generation": assign["generation"],
            "reason": "compiler exploded",
        }
    )
    ack = await agent.receive_type("task_ack")
    assert ack["status"] == expected
    return assign


# --- tokens ---------------------------------------------------------------------------


async def test_token_create_prints_only_the_token_and_the_running_hub_accepts_it(
    hub: HubProcess,
) -> None:
    # given a running hub, when a token is created for a new agent
    result = await cli("token", "create", "late-joiner", "--db", str(hub.db))

    # then stdout is the token alone
    token = succeeded(result)
    assert result.stderr == ""
    assert token.endswith("\n") and token.count("\n") == 1
    token = token.strip()
    assert token and not any(character.isspace() for character in token)

    # and the hub accepts it without a restart
    agent = AgentClient(hub.ws_url, "late-joiner", token, heartbeat_s=None)
    try:
        identified = await agent.connect()
        assert identified == {"type": "identified", "agent_id": "late-joiner"}
    finally:
        await agent.close()


async def test_token_list_shows_agents_and_roles_but_never_secrets(hub: HubProcess) -> None:
    db = ["--db", str(hub.db)]
    roles = {"worker-1": "agent", "watcher": "viewer", "ops": "admin"}
    results = await asyncio.gather(
        *(cli("token", "create", agent_id, "--role", role, *db) for agent_id, role in roles.items())
    )
    created = {
        agent_id: succeeded(result).strip() for agent_id, result in zip(roles, results, strict=True)
    }
    secrets = [*created.values(), *(hash_token(token) for token in created.values())]

    text = await cli("token", "list", *db)
    as_json = await cli("token", "list", "--json", *db)

    header, *lines = succeeded(text).splitlines()
    assert header.split() == ["AGENT", "ROLE", "CREATED"]
    assert [line.split()[:2] for line in lines] == [
        ["ops", "admin"], ["watcher", "viewer"], ["worker-1", "agent"],
    ]  # fmt: skip
    rows = json.loads(succeeded(as_json))
    assert {row["agent_id"]: row["role"] for row in rows} == {
        "worker-1": "agent", "watcher": "viewer", "ops": "admin",
    }  # fmt: skip
    for row in rows:
        assert not {key for key in row if "token" in key or "hash" in key}
    for output in (text.stdout, text.stderr, as_json.stdout, as_json.stderr):
        for secret in secrets:
            assert secret not in output


async def test_unusable_database_is_one_line(tmp_path: Path) -> None:
    db = ["--db", str(tmp_path / "no-such-directory" / "hub.db")]

    created, listed, revoked = await asyncio.gather(
        cli("token", "create", "worker-1", *db), cli("token", "list", *db),
        cli("token", "revoke", "worker-1", *db),
    )  # fmt: skip

    assert "cannot use the database" in one_line_error(created)
    for result in (listed, revoked):
        assert "does not exist" in one_line_error(result)


async def test_revoked_token_is_refused_at_identify(hub: HubProcess) -> None:
    db = ["--db", str(hub.db)]
    token = succeeded(await cli("token", "create", "leaver", *db)).strip()
    agent = AgentClient(hub.ws_url, "leaver", token, heartbeat_s=None)
    await agent.connect()
    await agent.close()

    succeeded(await cli("token", "revoke", "leaver", *db))

    again = AgentClient(hub.ws_url, "leaver", token, heartbeat_s=None)
    try:
        with pytest.raises(AuthenticationError, match="invalid_token"):
            await again.connect()
    finally:
        await again.close()
    assert "leaver" in one_line_error(await cli("token", "revoke", "leaver", *db))


# --- task submit ----------------------------------------------------------------------


async def test_task_submit_prints_the_task_id(hub: HubProcess, admin: list[str]) -> None:
    result = await cli("task", "submit", "summarise the changelog", *admin)

    output = succeeded(result)
    assert output.count("\n") == 1
    task_id = output.strip()
    assert TASK_ID.match(task_id)
    task = await show(admin, task_id)
    assert task["task_id"] == task_id
    assert task["status"] == "queued"
    assert task["description"] == "summarise the changelog"


async def test_submit_options_reach_the_task(hub: HubProcess, admin: list[str]) -> None:
    metadata = {"ticket": 42, "labels": ["ci", "flaky"], "owner": {"team": "infra"}}
    task_id = await submit(
        admin, "fix the flaky integration test",
        "--priority", "high", "--complexity", "complex",
        "--capability", "gpu", "--capability", "linux",
        "--metadata", json.dumps(metadata), "--max-retries", "5",
        "--repo", "https://example.com/acme/app.git",
    )  # fmt: skip

    task = await show(admin, task_id)
    assert task["priority"] == "high"
    assert task["complexity_tier"] == "complex"
    assert task["needed_capabilities"] == ["gpu", "linux"]
    assert task["metadata"] == metadata
    assert task["max_retries"] == 5
    assert task["repo"] == "https://example.com/acme/app.git"
    assert task["status"] == "queued"  # no agent has both capabilities


async def test_submit_wait_returns_once_a_sidecar_completes_the_task(
    hub: HubProcess, admin: list[str], sidecars: SidecarMaker
) -> None:
    # given a sidecar, when a task is submitted with --wait
    agent = await sidecars("worker-1")
    with CliProcess("task", "submit", "print the date", "--complexity", "complex", "--wait",
                    *admin) as waiting:  # fmt: skip
        # then the command is still waiting while the sidecar works
        assign = await accept(agent)
        assert waiting.process is not None and waiting.process.poll() is None
        await complete(agent, assign)

        result = await waiting.finish(timeout=20)

    # and it exits 0 printing the completed task
    assert result.returncode == 0, result
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == assign["task_id"]  # the id, for a later `task show`
    first = result.stdout.splitlines()[0]
    assert first.split() == ["task", assign["task_id"], "completed", "priority", "normal"]
    assert "tokens in 120 out 48" in result.stdout


async def test_submit_wait_exits_1_when_the_task_ends_in_dead_letter(
    hub: HubProcess, admin: list[str], sidecars: SidecarMaker
) -> None:
    agent = await sidecars("worker-1")
    with CliProcess("task", "submit", "doomed", "--max-retries", "0", "--wait", "--json",
                    *admin) as waiting:  # fmt: skip
        assign = await fail(agent, expected="dead_letter")
        result = await waiting.finish(timeout=20)

    assert result.returncode == 1, result
    assert result.stderr == ""
    task = json.loads(result.stdout)
    assert task["task_id"] == assign["task_id"]
    assert task["status"] == "dead_letter"
    assert task["last_error"] == "compiler exploded"


async def test_json_output_is_valid_json_and_only_json(
    hub: HubProcess, admin: list[str], sidecars: SidecarMaker
) -> None:
    agent = await sidecars("worker-1")
    submitted = await cli("task", "submit", "json please", "--json", *admin)
    task = json.loads(succeeded(submitted))
    assert task["description"] == "json please"
    await agent.receive_type("task_assign")
    queued = json.loads(succeeded(await cli("task", "submit", "second", "--json", *admin)))

    commands = [
        ("task", "show", task["task_id"], "--json", *admin),
        ("task", "list", "--json", *admin),
        ("task", "list", "--status", "assigned", "--json", *admin),
        ("agents", "--json", *admin),
        ("task", "cancel", queued["task_id"], "--json", *admin),
        ("token", "list", "--json", "--db", str(hub.db)),
    ]
    results = await asyncio.gather(*(cli(*command) for command in commands))
    for command, result in zip(commands, results, strict=True):
        assert result.stderr == "", command
        json.loads(succeeded(result))  # the whole of stdout is one JSON document
    shown, listed, assigned, agents, cancelled, tokens = (json.loads(r.stdout) for r in results)
    assert shown["status"] == "assigned"
    assert {entry["task_id"] for entry in listed} == {task["task_id"], queued["task_id"]}
    assert [entry["task_id"] for entry in assigned] == [task["task_id"]]
    assert agents[0]["agent_id"] == "worker-1"
    assert cancelled["status"] == "cancelled"
    assert {row["agent_id"] for row in tokens} == {"ops", "worker-1"}


# --- task list, show, retry, cancel ---------------------------------------------------


async def test_task_list_shows_tasks_and_filters_by_status(
    hub: HubProcess, admin: list[str]
) -> None:
    kept = await submit(admin, "keep me")
    dropped = await submit(admin, "drop me", "--priority", "low")
    succeeded(await cli("task", "cancel", dropped, *admin))

    everything, queued, cancelled = (
        table(succeeded(result), "ID", "STATUS", "PRIORITY", "AGENT", "UPDATED", "DESCRIPTION")
        for result in await asyncio.gather(
            cli("task", "list", *admin),
            cli("task", "list", "--status", "queued", *admin),
            cli("task", "list", "--status", "cancelled", *admin),
        )
    )

    assert sorted(line.split()[:3] for line in everything) == sorted(
        [[kept, "queued", "normal"], [dropped, "cancelled", "low"]]
    )
    assert [line.split()[0] for line in queued] == [kept]
    assert [line.split()[0] for line in cancelled] == [dropped]
    assert "drop me" in cancelled[0]


async def test_task_show_prints_history_routing_decision_and_execution(
    hub: HubProcess, admin: list[str], sidecars: SidecarMaker
) -> None:
    agent = await sidecars("worker-1")
    task_id = await submit(admin, "migrate the billing schema", "--complexity", "complex")
    await complete(agent, await accept(agent))

    lines = succeeded(await cli("task", "show", task_id, *admin)).splitlines()

    assert lines[0].split() == ["task", task_id, "completed", "priority", "normal"]
    text = "\n".join(lines)
    assert "assigned to: worker-1 (generation 1)" in text
    assert "routing: tier complex -> claude" in text
    assert "model claude-sonnet-4.5" in text
    assert "cost tier api" in text
    assert "execution: model qwen2.5-coder:7b  tokens in 120 out 48" in text
    assert "1534" in text
    history = lines[lines.index("  history:") + 1 :]
    assert [line.split()[2] for line in history] == ["queued", "assigned", "working", "completed"]


async def test_task_show_prints_the_output_and_money_as_money(
    hub: HubProcess, admin: list[str], sidecars: SidecarMaker
) -> None:
    # given a task completed with two lines of output and a fraction of a cent of cost
    agent = await sidecars("worker-1")
    task_id = await submit(admin, "say hello twice", "--complexity", "complex")
    assign = await accept(agent)
    result = {**METADATA, "output": "hello\nhello again", "estimated_cost_usd": 0.00042}
    await agent.send(
        {"type": "task_complete", "task_id": task_id, "generation": assign["generation"],
         "result": result}
    )  # fmt: skip
    assert (await agent.receive_type("task_ack"))["status"] == "complete"

    # when it is shown
    lines = succeeded(await cli("task", "show", task_id, *admin)).splitlines()

    # then the output is there, indented under its label, and costs are dollars
    at = lines.index("  output:")
    assert lines[at + 1 : at + 3] == ["    hello", "    hello again"]
    execution = next(line for line in lines if line.startswith("  execution: "))
    assert "cost $0.0004  claude-equivalent $0.0011  1534 ms" in execution


async def test_a_task_waiting_for_capabilities_names_them_without_python_syntax(
    hub: HubProcess, admin: list[str], sidecars: SidecarMaker
) -> None:
    await sidecars("worker-1", capabilities=["linux"])
    task_id = await submit(admin, "train it", "--capability", "gpu", "--capability", "cuda")

    text = succeeded(await cli("task", "show", task_id, *admin))

    assert "  waiting: no connected agent has the capabilities cuda, gpu\n" in text
    assert "[" not in text and "None" not in text


async def test_empty_listings_say_so(hub: HubProcess, admin: list[str]) -> None:
    results = await asyncio.gather(
        cli("task", "list", *admin), cli("agents", *admin), cli("endpoints", *admin),
        cli("channel", "list", *admin),
    )  # fmt: skip

    assert [succeeded(result) for result in results] == [
        "no tasks\n", "no agents\n", "no endpoints\n", "no channels\n",
    ]  # fmt: skip


async def test_task_show_says_why_a_queued_task_waits(quiet_admin: list[str]) -> None:
    # given a task queued on a hub with no agent connected
    task_id = await submit(quiet_admin, "wait for a sidecar")
    reason = (await show(quiet_admin, task_id))["waiting_reason"]
    assert reason

    # when it is shown without --json
    lines = succeeded(await cli("task", "show", task_id, *quiet_admin)).splitlines()

    # then the reason is there too
    assert f"  waiting: {reason}" in lines


async def test_task_show_prints_only_the_figures_it_knows(
    hub: HubProcess, admin: list[str], sidecars: SidecarMaker
) -> None:
    # given a task routed to claude (no endpoint) whose sidecar reported two figures only
    agent = await sidecars("worker-1")
    task_id = await submit(admin, "write the release notes", "--complexity", "complex")
    assign = await accept(agent)
    result = {"status": "success", "model_used": "mini", "tokens_in": 7}
    await agent.send(
        {"type": "task_complete", "task_id": task_id, "generation": assign["generation"],
         "result": result}
    )  # fmt: skip
    assert (await agent.receive_type("task_ack"))["status"] == "complete"

    # when it is shown
    text = succeeded(await cli("task", "show", task_id, *admin))

    # then unknown values are left out or shown as '-', never as None
    assert "None" not in text
    assert "endpoint -  model claude-sonnet-4.5" in text
    assert "  execution: model mini  tokens in 7 out -\n" in text
    assert "waiting:" not in text  # only a queued task waits


async def test_task_retry_moves_a_dead_letter_task_back_to_the_queue(
    hub: HubProcess, admin: list[str], sidecars: SidecarMaker
) -> None:
    # given a dead-letter task, and the only sidecar busy with another task
    agent = await sidecars("worker-1")
    dead = await submit(admin, "fails once", "--max-retries", "0")
    await fail(agent)
    await submit(admin, "keeps the sidecar busy")
    await agent.receive_type("task_assign")
    assert (await show(admin, dead))["status"] == "dead_letter"

    # when an operator retries it
    result = await cli("task", "retry", dead, *admin)

    # then it is queued again with its retry count reset
    assert succeeded(result).split() == [dead, "queued"]
    task = await show(admin, dead)
    assert task["status"] == "queued"
    assert task["retry_count"] == 0
    assert task["history"][-1]["status"] == "queued"
    # and retrying a task that is not dead letter is refused in one line
    assert "invalid_state" in one_line_error(await cli("task", "retry", dead, *admin))


async def test_task_cancel_cancels_an_unfinished_task(hub: HubProcess, admin: list[str]) -> None:
    task_id = await submit(admin, "never mind")

    assert succeeded(await cli("task", "cancel", task_id, *admin)).split() == [task_id, "cancelled"]

    assert (await show(admin, task_id))["status"] == "cancelled"
    assert "invalid_state" in one_line_error(await cli("task", "cancel", task_id, *admin))


# --- task list filters and stats ------------------------------------------------------


async def test_task_list_filters_by_statuses_agent_capability_and_age(tmp_path: Path) -> None:
    # given a task finished long ago, and on a live hub one completed by worker-1, one
    # cancelled, and one queued that needs a gpu
    ancient = _stored_task("0ld" + "0" * 29)
    db = await seed(tmp_path / "hub.db", ancient)
    with running_hub(tmp_path, db=db) as hub:
        admin = hub.operator_args(hub.make_token("ops", "admin"))
        agent = AgentClient(hub.ws_url, "worker-1", hub.make_token("worker-1"), heartbeat_s=None)
        await agent.connect()
        try:
            done = await submit(admin, "done", "--complexity", "complex")
            await complete(agent, await accept(agent))
        finally:
            await agent.close()
        dropped = await submit(admin, "dropped")
        succeeded(await cli("task", "cancel", dropped, *admin))
        waiting = await submit(admin, "needs a gpu", "--capability", "gpu")

        async def ids(*options: str) -> set[str]:
            listed = json.loads(succeeded(await cli("task", "list", *options, "--json", *admin)))
            return {task["task_id"] for task in listed}

        # when tasks are listed with filters, then each keeps only what it names
        assert await ids() == {ancient.task_id, done, dropped, waiting}
        assert await ids("--status", "queued,cancelled") == {waiting, dropped}
        assert await ids("--status", "completed") == {ancient.task_id, done}
        assert await ids("--agent", "worker-1") == {done}
        assert await ids("--capability", "gpu") == {waiting}
        assert await ids("--since", "1h") == {done, dropped, waiting}
        assert await ids("--since", "1h", "--status", "completed") == {done}
        bad_status, bad_since = await asyncio.gather(
            cli("task", "list", "--status", "queued,lost", *admin),
            cli("task", "list", "--since", "yesterday", *admin),
        )
    assert "unknown status 'lost'" in one_line_error(bad_status)
    assert "not a duration" in one_line_error(bad_since)
    assert bad_status.returncode == bad_since.returncode == 2


async def test_stats_shows_queue_throughput_agents_and_costs(
    hub: HubProcess, admin: list[str], sidecars: SidecarMaker
) -> None:
    # given one completed task, one dead letter, and two queued (high and low) that
    # need a capability nobody has, with one agent connected
    agent = await sidecars("worker-1")
    await submit(admin, "done", "--complexity", "complex")
    await complete(agent, await accept(agent))
    await submit(admin, "doomed", "--max-retries", "0", "--complexity", "complex")
    await fail(agent)
    for priority in ("high", "low"):
        await submit(admin, "stuck", "--priority", priority, "--capability", "gpu")

    as_json, text = await asyncio.gather(
        cli("stats", "--json", *admin), cli("stats", *admin)
    )  # fmt: skip

    # then the figures are the hub's
    stats = json.loads(succeeded(as_json))
    assert stats["queue_depth"] == 2
    assert stats["queued_by_priority"] == {"high": 1, "low": 1}
    assert stats["throughput"] == {"completed": 1, "dead_letter": 1, "cancelled": 0,
                                   "window_s": 3600}  # fmt: skip
    assert stats["agents_by_state"]["idle"] == 1
    # and the text says them with labels, money as money
    lines = succeeded(text).splitlines()
    assert lines[0].split() == ["tasks:", "queued", "2", "assigned", "0", "working", "0",
                                "completed", "1", "dead_letter", "1", "cancelled", "0"]  # fmt: skip
    assert "depth 2  by priority urgent 0  high 1  normal 0  low 1" in lines[1]
    assert lines[2] == "last 1 h:   1 completed (0.02/min)  1 dead letter  0 cancelled"
    assert {len(line) - len(line[12:].lstrip()) for line in lines[:5]} == {12}  # one column
    assert lines[3].startswith("agents:     1 connected  idle 1")
    assert "cost $0.0000  claude-equivalent $0.0011" in lines[4]
    models = table("\n".join(lines[6:8]), "MODEL", "TASKS", "TOKENS IN", "TOKENS OUT", "COST",
                   "CLAUDE-EQUIVALENT", "TIME")  # fmt: skip
    assert models[0].split() == ["qwen2.5-coder:7b", "1", "120", "48", "$0.0000", "$0.0011",
                                 "1.5", "s"]  # fmt: skip


# --- abbreviated task ids -------------------------------------------------------------


def _stored_task(task_id: str, status: str = "completed") -> Task:
    return Task(task_id=task_id, status=TaskStatus(status), priority=Priority.normal,
                description=f"stored {task_id[:8]}", created_at=1, updated_at=1)  # fmt: skip


async def seed(db: Path, *tasks: Task) -> Path:
    """Write finished tasks (of 1970) into a database before a hub opens it."""
    store = SqliteStore(db)
    for task in tasks:
        store.stage_task(task)
    await store.commit()
    store.close()
    return db


async def test_a_unique_prefix_of_six_or_more_characters_names_the_task(
    tmp_path: Path,
) -> None:
    # given a database holding tasks whose ids share their first six characters
    twins = ["abcdef" + "1" * 26, "abcdef" + "2" * 26]
    db = await seed(tmp_path / "hub.db", *(_stored_task(task_id) for task_id in twins))
    with running_hub(tmp_path, db=db) as hub:
        admin = hub.operator_args(hub.make_token("ops", "admin"))
        queued = await submit(admin, "abbreviate me")

        # when tasks are named by prefixes
        shown, cancelled, ambiguous, short, capital = await asyncio.gather(
            cli("task", "show", twins[0][:7], "--json", *admin),
            cli("task", "cancel", queued[:8], *admin),
            cli("task", "show", "abcdef", *admin),
            cli("task", "show", queued[:5], *admin),
            cli("task", "retry", twins[1][:10].upper(), *admin),
        )

    # then a unique prefix works like the full id, for reads and changes
    assert json.loads(succeeded(shown))["task_id"] == twins[0]
    assert succeeded(cancelled).split() == [queued, "cancelled"]
    # and an ambiguous one is refused, naming the candidates
    line = one_line_error(ambiguous)
    assert "ambiguous_task_id" in line
    assert twins[0] in line and twins[1] in line
    assert ambiguous.returncode == 2  # a bad value: more characters are needed
    # and one shorter than six characters is a usage error
    assert "at least 6 characters" in one_line_error(short)
    assert short.returncode == 2
    # and case does not matter (the task exists, but is not dead letter)
    assert "invalid_state: task is completed" in one_line_error(capital)


# --- agents and watch -----------------------------------------------------------------


async def test_agents_lists_the_connected_agent_with_state_and_current_task(
    hub: HubProcess, admin: list[str], sidecars: SidecarMaker
) -> None:
    agent = await sidecars("worker-1", capabilities=["gpu", "linux"])
    task_id = await submit(admin, "render the report")
    assign = await agent.receive_type("task_assign")

    lines = table(
        succeeded(await cli("agents", *admin)), "AGENT", "STATE", "DRAINING", "TASK",
        "CAPABILITIES", "LAST SEEN",
    )  # fmt: skip
    assert [line.split()[:5] for line in lines] == [
        ["worker-1", "assigned", "no", task_id, "gpu,linux"]
    ]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", " ".join(lines[0].split()[5:]))

    await agent.send({"type": "task_accepted", "task_id": assign["task_id"]})
    await agent.receive_type("task_ack")
    agents = json.loads(succeeded(await cli("agents", "--json", *admin)))
    assert [(a["agent_id"], a["state"], a["current_task"]) for a in agents] == [
        ("worker-1", "working", task_id)
    ]


async def test_task_requeue_takes_a_stuck_task_from_its_agent_at_once(
    hub: HubProcess, admin: list[str], sidecars: SidecarMaker
) -> None:
    # given a task worker-1 accepted and then sat on, and worker-2 connected later, idle
    stuck = await sidecars("worker-1")
    task_id = await submit(admin, "stuck with worker-1", "--complexity", "complex")
    held = await accept(stuck)
    helper = await sidecars("worker-2")

    # when an admin requeues it, by a prefix of its id
    result = await cli("task", "requeue", task_id[:8], *admin)

    # then it goes to worker-2 at once, with a new generation
    assert succeeded(result).split() == [task_id, "assigned"]
    assign = await helper.receive_type("task_assign")
    assert (assign["task_id"], assign["generation"]) == (task_id, held["generation"] + 1)
    # and worker-1 is told to drop it, and its late completion is refused
    assert (await stuck.receive_type("task_cancelled"))["task_id"] == task_id
    await stuck.send({"type": "task_complete", "task_id": task_id,
                      "generation": held["generation"], "result": METADATA})  # fmt: skip
    assert (await stuck.receive_type("error"))["error"].endswith("stale_generation")
    task = await show(admin, task_id)
    assert (task["status"], task["assigned_to"]) == ("assigned", "worker-2")
    assert "requeued by an operator from worker-1" in {e["detail"] for e in task["history"]}
    # and a task that no agent holds cannot be requeued
    queued = await submit(admin, "nobody has it", "--capability", "gpu")
    assert "invalid_state" in one_line_error(await cli("task", "requeue", queued, *admin))


async def test_a_drained_agent_finishes_its_task_and_takes_no_new_one_until_undrained(
    hub: HubProcess, admin: list[str], sidecars: SidecarMaker
) -> None:
    # given worker-1 working on a task
    agent = await sidecars("worker-1")
    await submit(admin, "the last one", "--complexity", "complex")
    current = await accept(agent)

    # when it is drained
    assert succeeded(await cli("agents", "drain", "worker-1", *admin)) == (
        "worker-1 draining (working)\n"
    )

    # then the listing says so, in text and JSON
    rows = table(succeeded(await cli("agents", *admin)), "AGENT", "STATE", "DRAINING", "TASK",
                 "CAPABILITIES", "LAST SEEN")  # fmt: skip
    assert rows[0].split()[:3] == ["worker-1", "working", "yes"]
    listed = json.loads(succeeded(await cli("agents", "--json", *admin)))
    assert [(a["agent_id"], a["draining"]) for a in listed] == [("worker-1", True)]
    # and it completes its task, but a new one waits
    await complete(agent, current)
    waiting = await submit(admin, "after the drain", "--complexity", "complex")
    assert (await show(admin, waiting))["status"] == "queued"
    idle = json.loads(succeeded(await cli("agents", "list", "--json", *admin)))
    assert [(a["state"], a["draining"], a["current_task"]) for a in idle] == [("idle", True, None)]

    # when it is undrained, then it gets the waiting task
    assert succeeded(await cli("agents", "undrain", "worker-1", *admin)).startswith(
        "worker-1 not draining"
    )
    assert (await agent.receive_type("task_assign"))["task_id"] == waiting
    # and an agent the hub has not seen cannot be drained
    assert "not_found" in one_line_error(await cli("agents", "drain", "nobody", *admin))


async def test_bulk_cancel_asks_first_and_cancels_only_what_the_filter_matches(
    hub: HubProcess, admin: list[str]
) -> None:
    # given three queued gpu tasks, one of them urgent, and one queued cpu task
    gpu = [await submit(admin, f"render {n}", "--capability", "gpu") for n in range(2)]
    urgent = await submit(admin, "render now", "--capability", "gpu", "--priority", "urgent")
    cpu = await submit(admin, "compile", "--capability", "cpu")
    bulk = ["task", "cancel", "--status", "queued", "--capability", "gpu", *admin]

    # when the answer to the confirmation is no (or there is none), nothing changes
    declined, unanswered = await asyncio.gather(cli(*bulk, answer="n\n"), cli(*bulk))
    for result in (declined, unanswered):
        assert result.returncode == 1 and result.stdout == ""
        assert "cancel these 3 tasks? [y/N]" in result.stderr
        assert "nothing done" in result.stderr
        for task_id in (*gpu, urgent):
            assert task_id in result.stderr  # the tasks were shown before the question
    listed = json.loads(succeeded(await cli("task", "list", "--status", "cancelled", "--json",
                                            *admin)))  # fmt: skip
    assert listed == []

    # when the filter is narrowed to urgent and the answer is yes
    confirmed = await cli(*bulk, "--priority", "urgent", answer="y\n")
    assert succeeded(confirmed).split() == [urgent, "cancelled"]
    assert "cancel done for 1 of 1 tasks" in confirmed.stderr

    # when --yes is given, no question is asked and the rest of the gpu tasks go
    forced = await cli(*bulk, "--yes", "--json")
    result = json.loads(succeeded(forced))
    assert sorted(task["task_id"] for task in result["changed"]) == sorted(gpu)
    assert result["refused"] == []
    assert "[y/N]" not in forced.stderr
    # then the cpu task is untouched, and a filter that matches nothing says so
    assert (await show(admin, cpu))["status"] == "queued"
    nothing = await cli(*bulk, "--yes")
    assert (nothing.returncode, nothing.stdout, nothing.stderr) == (0, "", "no tasks match\n")
    # and an ID with a filter is a usage error
    assert "not both" in one_line_error(await cli("task", "cancel", cpu, "--agent", "w", *admin))


async def test_task_list_pages_and_bulk_actions_read_every_page(tmp_path: Path) -> None:
    # given a hub whose pages hold 2 tasks, and 5 queued tasks
    with HubProcess(tmp_path, env={"AGENTCOM_LIST_LIMIT_MAX": "2"}) as small_pages:
        admin = small_pages.operator_args(small_pages.make_token("ops", "admin"))
        submitted = [await submit(admin, f"job {n}") for n in range(5)]

        # when the list asks for 10, it gets a page of 2 and is told how to go on
        first = await cli("task", "list", "--limit", "10", "--json", *admin)
        page = json.loads(succeeded(first))
        assert [task["task_id"] for task in page] == submitted[:-3:-1]
        cursor = re.search(r"add --cursor (\S+)", first.stderr)
        assert cursor is not None, first.stderr
        rest = await cli("task", "list", "--limit", "10", "--cursor", cursor[1], "--json", *admin)
        assert [task["task_id"] for task in json.loads(succeeded(rest))] == submitted[2:0:-1]

        # and a bulk cancel reaches all 5, page after page
        cancelled = json.loads(succeeded(await cli("task", "cancel", "--status", "queued",
                                                   "--yes", "--json", *admin)))  # fmt: skip
        assert sorted(task["task_id"] for task in cancelled["changed"]) == sorted(submitted)


async def test_ctrl_c_at_the_confirmation_exits_at_once_and_changes_nothing(
    hub: HubProcess, admin: list[str]
) -> None:
    # given a bulk cancel waiting for its answer on a terminal that stays open
    task_id = await submit(admin, "keep me", "--capability", "gpu")
    command = subprocess.Popen(
        [*CLI, "task", "cancel", "--capability", "gpu", *admin],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=clean_env(),
    )  # fmt: skip
    try:
        assert command.stderr is not None

        def prompted() -> str:
            seen = ""
            while not seen.endswith("[y/N] "):
                character = command.stderr.read(1) if command.stderr else ""
                assert character, seen  # the command ended before asking
                seen += character
            return seen

        assert task_id in await asyncio.wait_for(asyncio.to_thread(prompted), 20)

        # when the operator presses Ctrl-C
        command.send_signal(signal.SIGINT)

        # then it exits 130 at once, without waiting for a line that never comes
        assert await asyncio.to_thread(command.wait, 10) == 130
    finally:
        if command.poll() is None:
            command.kill()
            command.wait()
        for stream in (command.stdin, command.stdout, command.stderr):
            if stream is not None:
                stream.close()
    assert (await show(admin, task_id))["status"] == "queued"


async def test_retry_all_dead_requeues_every_dead_letter_task_after_confirmation(
    hub: HubProcess, admin: list[str], sidecars: SidecarMaker
) -> None:
    # given two dead-letter tasks, then the only sidecar busy with a third
    agent = await sidecars("worker-1")
    dead = []
    for n in range(2):
        dead.append(await submit(admin, f"doomed {n}", "--max-retries", "0"))
        await fail(agent)
    busy = await submit(admin, "keeps the sidecar busy")
    await agent.receive_type("task_assign")

    # when every dead-letter task is retried, answering yes
    result = await cli("task", "retry", "--all-dead", *admin, answer="yes\n")

    # then both are queued again, and nothing else changed
    lines = succeeded(result).splitlines()
    assert sorted(lines) == sorted(f"{task_id} queued" for task_id in dead)
    assert "retry these 2 tasks? [y/N]" in result.stderr
    for task_id in dead:
        assert (await show(admin, task_id))["retry_count"] == 0
    assert (await show(admin, busy))["status"] == "assigned"
    # and filters without --all-dead are refused
    assert "--all-dead" in one_line_error(await cli("task", "retry", "--since", "1h", *admin))


async def test_watch_json_prints_one_event_per_line(
    hub: HubProcess, admin: list[str], sidecars: SidecarMaker
) -> None:
    agent = await sidecars("worker-1")
    with CliProcess("watch", "--json", *admin) as watch:
        snapshot = json.loads(await watch.next_line())
        assert snapshot["type"] == "snapshot"
        assert [a["agent_id"] for a in snapshot["agents"]] == ["worker-1"]

        task_id = await submit(admin, "watch me")
        await complete(agent, await accept(agent))

        events: list[dict[str, Any]] = []
        while not events or events[-1].get("event") != "task_completed":
            event = json.loads(await watch.next_line())
            assert isinstance(event, dict) and "type" in event
            events.append(event)

    task_events = [e["event"] for e in events if e["type"] == "task_event"]
    assert task_events == ["task_submitted", "task_assigned", "task_accepted", "task_completed"]
    assert {e["task_id"] for e in events if e["type"] == "task_event"} == {task_id}
    assert events[-1]["execution"]["tokens_in"] == 120


async def test_watch_task_follows_one_task_until_it_is_finished(
    hub: HubProcess, admin: list[str], sidecars: SidecarMaker
) -> None:
    # given two tasks queued for one sidecar
    agent = await sidecars("worker-1")
    other = await submit(admin, "first in line", "--complexity", "complex")
    followed = await submit(admin, "the one we watch", "--complexity", "complex")

    # when the second is watched by a prefix of its id, while the sidecar runs both
    with CliProcess("watch", "--task", followed[:8], *admin) as watch:
        assert await watch.next_line() == f"task {followed} queued"
        await complete(agent, await accept(agent))
        await complete(agent, await accept(agent))
        # then it ends by itself once the task completed, having shown only its events
        result = await watch.finish(timeout=10)
    assert result.returncode == 0, result
    events = [line.split() for line in result.stdout.splitlines()]
    assert [event[2] for event in events] == ["task_assigned", "task_accepted", "task_completed"]
    assert {event[4] for event in events} == {followed}
    assert other not in result.stdout
    # and a finished task is reported at once
    finished = await cli("watch", "--task", followed, "--json", *admin)
    assert json.loads(succeeded(finished))["status"] == "completed"


# --- endpoints ------------------------------------------------------------------------


async def test_endpoints_shows_failed_checks_and_the_last_error(
    tmp_path: Path,
    ollama: OllamaStandin,  # noqa: F811
) -> None:
    # given an endpoint whose health checks fail, on a hub that needs 5 failures to call
    # it unhealthy
    ollama.fail(503)
    with running_hub(tmp_path, env={"AGENTCOM_ENDPOINT_UNHEALTHY_AFTER": "5"}) as hub:
        admin = hub.operator_args(hub.make_token("ops", "admin"))
        succeeded(await cli("endpoints", "add", ollama.url, "--name", "flaky", *admin))
        await ollama.wait_for_requests(1)

        async def endpoints() -> list[dict[str, Any]]:
            listed: list[dict[str, Any]] = json.loads(
                succeeded(await cli("endpoints", "--json", *admin))
            )
            return listed

        async with asyncio.timeout(10):  # the hub records the check just after the answer
            while not (listed := await endpoints())[0]["failures"]:
                pass
        assert listed[0]["healthy"] is None  # not yet marked unhealthy

        # when the endpoints are listed without --json
        output = succeeded(await cli("endpoints", *admin))
        assert succeeded(await cli("endpoints", "list", *admin)) == output

    # then the endpoint is failing, not "unchecked", and the line says why, on one line
    lines = table(output, "ID", "URL", "STATE", "MODELS", "LAST ERROR")
    assert len(lines) == 1
    assert lines[0].split()[:4] == ["flaky", ollama.url, "failing", "-"]
    error = " ".join(listed[0]["last_error"].split())
    assert "503" in error
    assert re.search(r"  \(\d+ failed checks?\) ", lines[0])
    assert lines[0].endswith(error)


# --- options typed before the subcommand ----------------------------------------------


async def test_options_before_the_subcommand_are_not_overwritten(
    hub: HubProcess, admin: list[str]
) -> None:
    # given $AGENTCOM_HUB naming a port nobody listens on, and no $AGENTCOM_TOKEN
    elsewhere = {"AGENTCOM_HUB": f"http://127.0.0.1:{closed_port()}"}
    url = f"http://127.0.0.1:{closed_port()}"

    # when --hub, --token and --json come before the subcommand
    added = await cli("endpoints", *admin, "--json", "add", url, "--name", "box", env=elsewhere)
    listed = await cli("task", *admin, "--json", "list", env=elsewhere)
    created = await cli("channel", *admin, "create", "builds", env=elsewhere)
    tokens = await cli("token", "--db", str(hub.db), "list", "--json", env=elsewhere)
    # or on both sides of it (the later one wins, as for any repeated option)
    removed = await cli("endpoints", "--hub", elsewhere["AGENTCOM_HUB"], "remove", "box",
                        *admin, env=elsewhere)  # fmt: skip

    # then they take effect
    assert json.loads(succeeded(added))["endpoint_id"] == "box"
    assert json.loads(succeeded(listed)) == []
    assert succeeded(created) == "builds\n"
    assert [row["agent_id"] for row in json.loads(succeeded(tokens))] == ["ops"]
    assert succeeded(removed) == "removed box\n"


# --- roles and errors -----------------------------------------------------------------


async def test_viewer_can_read_but_not_submit(
    quiet_hub: HubProcess, quiet_admin: list[str]
) -> None:
    admin = quiet_admin
    viewer = quiet_hub.operator_args(quiet_hub.make_token("auditor", "viewer"))
    task_id = await submit(admin, "look but do not touch")

    listed, shown, agents, submitted, cancelled = await asyncio.gather(
        cli("task", "list", *viewer),
        cli("task", "show", task_id, *viewer),
        cli("agents", "--json", *viewer),
        cli("task", "submit", "sneaky", *viewer),
        cli("task", "cancel", task_id, *viewer),
    )

    assert task_id in succeeded(listed)
    assert task_id in succeeded(shown)
    assert json.loads(succeeded(agents)) == []
    refused = one_line_error(submitted)
    assert refused.startswith("agentcom: ")
    assert "forbidden" in refused
    assert "forbidden" in one_line_error(cancelled)
    assert (await show(admin, task_id))["status"] == "queued"


async def test_unreachable_hub_is_one_line_without_traceback() -> None:
    result = await cli("task", "list", "--hub", f"http://127.0.0.1:{closed_port()}", "--token", "x")

    assert "cannot reach the hub" in one_line_error(result)
    assert result.returncode == 3


async def test_bad_token_is_one_line(quiet_hub: HubProcess) -> None:
    result = await cli("task", "list", *quiet_hub.operator_args("ac_not-a-real-token"))

    assert "refused the token" in one_line_error(result)
    assert result.returncode == 4


async def test_agent_token_is_not_an_operator_token(quiet_hub: HubProcess) -> None:
    result = await cli("agents", *quiet_hub.operator_args(quiet_hub.make_token("worker-1")))

    assert "refused the token" in one_line_error(result)
    assert result.returncode == 4


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (
            ["task", "submit", NEVER_QUEUED, "--metadata", "not json"],
            "--metadata must be a JSON object",
        ),
        (
            ["task", "submit", NEVER_QUEUED, "--metadata", "[1, 2]"],
            "--metadata must be a JSON object",
        ),
        (["task", "submit", NEVER_QUEUED, "--priority", "someday"], "invalid choice: 'someday'"),
        (["task", "submit", NEVER_QUEUED, "--max-retries", "many"], "invalid int value"),
        (["task", "submit", NEVER_QUEUED, "--max-retries", "-1"], "max_retries"),
        (["task", "list", "--status", "lost"], "unknown status 'lost'"),
        (["task", "show", "0123456789abcdef01234567"], "not_found"),
        (["task", "frobnicate"], "invalid choice: 'frobnicate'"),
    ],
    ids=[
        "metadata-not-json",
        "metadata-not-object",
        "unknown-priority",
        "retries-not-int",
        "retries-negative",
        "unknown-status",
        "unknown-task",
        "unknown-action",
    ],
)
async def test_bad_argument_is_one_line(
    quiet_admin: list[str], arguments: list[str], expected: str
) -> None:
    result = await cli(*arguments, *quiet_admin)

    assert expected in one_line_error(result)
    tasks = json.loads(succeeded(await cli("task", "list", "--json", *quiet_admin)))
    assert NEVER_QUEUED not in {task["description"] for task in tasks}


async def test_missing_token_is_one_line(quiet_hub: HubProcess) -> None:
    result = await cli("task", "list", "--hub", quiet_hub.http_url)

    assert "no token" in one_line_error(result)
    assert result.returncode == 2


@pytest.mark.parametrize(
    "hub_url",
    ["ftp://127.0.0.1:{port}", "http://", "http://127.0.0.1:99999", "http://[::1"],
    ids=["other-scheme", "no-host", "port-out-of-range", "broken-ipv6"],
)
async def test_a_hub_url_that_names_no_hub_is_a_usage_error(hub_url: str) -> None:
    hub = hub_url.format(port=closed_port())

    result = await cli("agents", "--hub", hub, "--token", "x")

    assert f"bad hub URL {hub!r}" in one_line_error(result)
    assert result.returncode == 2


@contextlib.asynccontextmanager
async def answering(reply: bytes) -> AsyncIterator[str]:
    """A loopback server that answers any request with ``reply`` and hangs up: a server
    that is not a hub, or one refusing the connection. Yields its ``http://`` URL."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            writer.write(reply)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError, TimeoutError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def _http(status: str, body: bytes = b"") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    return head.encode() + body


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (_http("429 Too Many Requests"), "HTTP 429 Too Many Requests (too many connections"),
        (_http("503 Service Unavailable"), "HTTP 503 Service Unavailable (the hub is stopping"),
        (_http("200 OK", b"<html>a web page</html>"), "HTTP 200 OK (is it an agentcom hub?)"),
        (b"SSH-2.0-OpenSSH_9.6\r\n", "(is it an agentcom hub?)"),
    ],
    ids=["429", "503", "web-page", "not-http"],
)
async def test_a_server_that_refuses_or_is_no_hub_is_one_line(reply: bytes, expected: str) -> None:
    async with answering(reply) as url:
        result = await cli("agents", "--hub", url, "--token", "x")

    line = one_line_error(result)
    assert line.startswith(f"agentcom: cannot reach the hub at {url}: ")
    assert expected in line
    assert result.returncode == 3


async def test_an_ollama_server_given_as_the_hub_is_one_line(
    ollama: OllamaStandin,  # noqa: F811
) -> None:
    result = await cli("task", "list", "--hub", ollama.url, "--token", "x")

    line = one_line_error(result)  # its HTTP/1.0 answer is no WebSocket handshake
    assert line.startswith(f"agentcom: cannot reach the hub at {ollama.url}: ")
    assert line.endswith("(is it an agentcom hub?)")
    assert result.returncode == 3


async def test_an_error_without_a_message_is_still_named(quiet_hub: HubProcess) -> None:
    # given https:// for a hub that serves plain ws:// (its answer is no TLS: a reset)
    hub = quiet_hub.http_url.replace("http://", "https://")

    result = await cli("agents", "--hub", hub, "--token", "x")

    # then the line names the error instead of ending after the colon
    line = one_line_error(result)
    prefix = f"agentcom: cannot reach the hub at {hub}: "
    assert line.startswith(prefix)
    assert re.match(r"\w", line.removeprefix(prefix)), line
    assert result.returncode == 3


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser and every subcommand's, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from _parsers(sub)


def test_every_option_and_argument_has_help_text() -> None:
    undocumented = [
        f"{sub.prog} {action.option_strings or action.dest}"
        for sub in _parsers(cli_parser())
        for action in sub._actions
        if not action.help and not isinstance(action, argparse._SubParsersAction)
    ]

    assert undocumented == []


async def test_help_explains_roles_and_environment_and_lists_working_commands() -> None:
    text = succeeded(await cli("--help"))

    for role in ("agent", "viewer", "admin"):
        assert re.search(rf"^  {role} +\w", text, re.MULTILINE), role
    for variable in ("AGENTCOM_HUB", "AGENTCOM_TOKEN", "AGENTCOM_CAFILE", "AGENTCOM_DB",
                     "AGENTCOM_CONFIG", "AGENTCOM_<NAME>"):  # fmt: skip
        assert re.search(rf"^  {re.escape(variable)} +\w", text, re.MULTILINE), variable
    listed = re.findall(r"^    (\w+)", text.split("options:")[0], re.MULTILINE)
    assert listed == list(cli_parser()._subparsers._group_actions[0].choices)
    for command in listed:  # each advertised command answers its own --help
        assert f"agentcom {command}" in succeeded(await cli(command, "--help"))
    endpoints_help = succeeded(await cli("endpoints", "--help"))
    for action in re.findall(r"^    (\w+) ", endpoints_help, re.MULTILINE):
        succeeded(await cli("endpoints", action, "--help"))


async def test_exit_status_table_is_in_the_help() -> None:
    text = succeeded(await cli("--help"))

    assert "exit status:" in text
    for code in ("0", "1", "2", "3", "4"):
        assert re.search(rf"^  {code} +\w", text, re.MULTILINE), code


# --- the hub's two addresses -----------------------------------------------------------


async def test_operator_commands_take_the_sidecars_address_and_say_which_was_meant(
    quiet_hub: HubProcess, quiet_admin: list[str]
) -> None:
    token = quiet_admin[quiet_admin.index("--token") + 1]
    ws_form, bare = await asyncio.gather(
        cli("agents", "--json", "--hub", quiet_hub.ws_url, "--token", token),
        cli("agents", "--json", "--hub", f"127.0.0.1:{quiet_hub.port}/ws", "--token", token),
    )

    for result in (ws_form, bare):
        assert json.loads(succeeded(result)) == []
        note = result.stderr.strip()
        assert note.startswith("agentcom: note: ") and "/ws is an endpoint of the hub" in note
        assert f"using the hub at {quiet_hub.http_url} " in note


async def test_the_demo_sidecar_takes_the_operators_address_and_says_which_was_meant(
    hub: HubProcess, admin: list[str]
) -> None:
    # given the demo sidecar started with the hub's http:// address
    sidecar = subprocess.Popen(
        [sys.executable, str(REPO / "examples" / "demo_sidecar.py"), "--hub", hub.http_url,
         "--agent-id", "demo-1", "--token", hub.make_token("demo-1")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env=clean_env(),
    )  # fmt: skip
    try:
        # then it connects and runs a task
        result = await cli("task", "submit", "say hi", "--complexity", "complex", "--wait", *admin)
        assert succeeded(result).splitlines()[0].split()[2] == "completed"
    finally:
        sidecar.terminate()
        try:
            _, log = await asyncio.to_thread(sidecar.communicate, timeout=10)
        except subprocess.TimeoutExpired:
            sidecar.kill()
            _, log = await asyncio.to_thread(sidecar.communicate)
    # and its log said which address it used
    assert f"{hub.http_url} is not the agent endpoint; connecting to {hub.ws_url}" in log


# --- config show ----------------------------------------------------------------------


async def test_config_show_gives_each_setting_its_value_and_source_with_secrets_masked(
    tmp_path: Path,
) -> None:
    # given a setting in each place: file, environment (beating the file), flag
    config = tmp_path / "hub.toml"
    config.write_text("port = 4100\nidle_timeout_s = 90\nfallback_wait_s = 2\n")
    token = "ac_" + "s3cret" * 7
    env = {"AGENTCOM_IDLE_TIMEOUT_S": "120", "AGENTCOM_TOKEN": token}

    # when the settings are shown
    as_json, text = await asyncio.gather(
        cli("config", "show", "--config", str(config), "--host", "0.0.0.0", "--json",
            "--hub", "http://ops:hunter2@hub.example:4000", env=env),
        cli("config", "show", "--config", str(config), env=env),
    )  # fmt: skip

    # then each has its effective value and where it came from
    rows = {row["name"]: (row["value"], row["source"]) for row in json.loads(succeeded(as_json))}
    assert rows["host"] == ("0.0.0.0", "flag --host")
    assert rows["port"] == (4100, f"file {config}")
    assert rows["idle_timeout_s"] == (120.0, "env AGENTCOM_IDLE_TIMEOUT_S")
    assert rows["fallback_wait_s"] == (2.0, f"file {config}")
    assert rows["reclaim_after_s"] == (300.0, "default")
    assert rows["hub"] == ("http://ops:****@hub.example:4000", "flag --hub")
    assert rows["token"][1] == "env AGENTCOM_TOKEN"
    # and secrets never appear
    for output in (as_json.stdout, text.stdout):
        assert token not in output and "hunter2" not in output
    lines = table(succeeded(text).split("\n\n")[0], "SETTING", "VALUE", "SOURCE")
    assert ["idle_timeout_s", "120.0", "env", "AGENTCOM_IDLE_TIMEOUT_S"] in [
        line.split() for line in lines
    ]
    # and a broken file is one line, as for serve
    config.write_text("port = [\n")
    assert "is not valid TOML" in one_line_error(await cli("config", "show", "--config",
                                                           str(config)))  # fmt: skip


# --- serve ----------------------------------------------------------------------------


async def test_serve_stops_cleanly_on_sigterm_and_sidecars_see_1012(
    hub: HubProcess, admin: list[str], sidecars: SidecarMaker
) -> None:
    # given a connected sidecar and a running `watch`
    agent = await sidecars("worker-1")
    with CliProcess("watch", "--json", *admin) as watch:
        assert json.loads(await watch.next_line())["type"] == "snapshot"

        # when the hub gets SIGTERM
        assert hub.process is not None
        hub.process.send_signal(signal.SIGTERM)

        # then the sidecar is told to reconnect (1012)
        with pytest.raises(ConnectionClosed) as closed:
            await agent.receive(timeout=10)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1012
        # and the hub exits 0 without a traceback
        assert await asyncio.to_thread(hub.process.wait, 10) == 0
        assert "Traceback" not in hub.log()
        assert "agentcom hub stopped" in hub.log()
        # and `watch` says in one line that it reconnects (tests/test_cli_restart.py)
        assert watch.stderr is not None
        reconnecting = await watch.stderr.next_line_async(10)
        assert reconnecting == "agentcom: the hub is restarting; reconnecting..."
        assert watch.process is not None and watch.process.poll() is None


@pytest.mark.parametrize(
    ("files", "arguments", "expected", "code"),
    [
        ({}, ["--db", "{tmp}/no-such-directory/hub.db"],
         "cannot use the database {tmp}/no-such-directory/hub.db: ", 1),
        ({"bad.toml": "port = [\n"}, ["--config", "{tmp}/bad.toml"],
         "the config file {tmp}/bad.toml is not valid TOML: ", 2),
        ({}, ["--config", "{tmp}"], "cannot read the config file {tmp}: Is a directory", 2),
        ({}, ["--config", "{tmp}/absent.toml"],
         "cannot read the config file {tmp}/absent.toml: No such file", 2),
        ({}, ["--certfile", "{tmp}/absent.pem", "--keyfile", "{tmp}/absent.pem"],
         "cannot read the TLS certificate {tmp}/absent.pem: No such file", 2),
        ({"cert.pem": "not a certificate\n"}, ["--certfile", "{tmp}/cert.pem"],
         "cannot use the TLS certificate {tmp}/cert.pem: ", 2),
        ({"key.pem": "not a key\n"}, ["--keyfile", "{tmp}/key.pem"],
         "a TLS key ({tmp}/key.pem) needs its certificate", 2),
    ],
    ids=["database", "invalid-toml", "config-is-a-directory", "missing-config",
         "missing-certificate", "not-a-certificate", "key-without-certificate"],
)  # fmt: skip
async def test_serve_that_cannot_start_says_why_in_one_line(
    tmp_path: Path, files: dict[str, str], arguments: list[str], expected: str, code: int
) -> None:
    # given a bad database path, config file, or certificate
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    db = ["--db", str(tmp_path / "hub.db")] if "--db" not in arguments else []
    serve_args = [argument.format(tmp=tmp_path) for argument in arguments]

    # when the hub is started with it
    result = await cli("serve", "--host", "127.0.0.1", "--port", "0", *db, *serve_args)

    # then it stops at once with one line naming the file, and no traceback
    line = one_line_error(result)
    assert expected.format(tmp=tmp_path) in line
    assert "cannot listen" not in line
    assert result.returncode == code
