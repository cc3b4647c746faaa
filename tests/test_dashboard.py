"""The dashboard page in a real browser (Debian's chromium driven by Playwright) against a
live hub with simulated sidecars."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sqlite3
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import METADATA, AgentMaker, TokenMaker, hub_with
from ollama_standin import OllamaStandin, make_ollama, ollama  # noqa: F401
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Locator,
    Page,
    WebSocketRoute,
    async_playwright,
    expect,
)
from redisnodes import REDIS_PORT, new_cluster, require_redis
from tcpproxy import BlackHoleProxy

from agentcom import __version__
from agentcom.client import AgentClient, OperatorClient
from agentcom.config import Settings
from agentcom.hub.auth import hash_token, new_token
from agentcom.hub.clock import ManualClock
from agentcom.hub.history import QueueHistory
from agentcom.hub.tails import ExecutionTails
from agentcom.server.app import HubServer
from agentcom.server.http import DASHBOARD_FILES
from agentcom.server.viewer import AGENT_TOKEN_REFUSED
from agentcom.store.tokens import delete_token, save_token

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
GIB = 1024**3
UNKNOWN = "\N{EN DASH}"  # what the page shows for a value it does not have

PageOpener = Callable[..., Awaitable[Page]]  # (token, hub_url=None)


@dataclass
class PageProblems:
    """Script errors and security-policy refusals seen by any page of a test."""

    messages: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            self.messages.append(message.text)


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """The hub's settings, with what a test changes through indirect parametrization."""
    changes: dict[str, object] = getattr(request, "param", {})
    return settings.model_copy(update=changes)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Debian chromium (Playwright's own browser download cannot work here)."""
    if not CHROMIUM.exists():
        missing = "Debian's chromium is not installed at /usr/bin/chromium (.ci/run installs it)"
        if os.environ.get("AGENTCOM_REQUIRE_BROWSER"):  # set by .ci/run: CI must not skip
            pytest.fail(missing)
        pytest.skip(missing)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def open_dashboard(browser: Browser, http_url: str) -> AsyncIterator[PageOpener]:
    """Open the page with a token in the URL fragment and wait until it is live.

    At the end, no page may have hit a script error or a Content-Security-Policy refusal.
    """
    contexts: list[BrowserContext] = []
    problems = PageProblems()

    async def open_page(token: str, hub_url: str | None = None) -> Page:
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        contexts.append(context)
        page = await context.new_page()
        page.on("pageerror", lambda error: problems.messages.append(str(error)))
        page.on("console", problems.on_console)
        await page.goto(f"{hub_url or http_url}/dashboard#token={token}")
        await expect(page.locator("#connection")).to_have_text("Live")
        return page

    yield open_page
    for context in contexts:
        await context.close()
    assert problems.messages == []


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


async def _dead_letter_task(operator: OperatorClient, agent_maker: AgentMaker, text: str) -> str:
    """A task that failed with no retries left; its agent has gone away."""
    agent = await agent_maker("flaky-worker")
    task = await operator.submit(text, max_retries=0, complexity_tier="complex")
    assign = await agent.receive_type("task_assign")
    failure = {
        "type": "task_failed",
        "task_id": task["task_id"],
        "generation": assign["generation"],
        "reason": "verification failed: 3 tests red",
    }
    await agent.send(failure)
    ack = await agent.receive_type("task_ack")
    assert ack["status"] == "dead_letter"
    await agent.close()  # with no idle agent, a retried task stays queued
    task_id: str = task["task_id"]
    return task_id


async def _working_task(
    operator: OperatorClient, agent_maker: AgentMaker, agent_id: str, text: str
) -> tuple[AgentClient, str, int]:
    """A new sidecar that has accepted a new task; returns it, the task id and generation."""
    agent = await agent_maker(agent_id)
    task = await operator.submit(text, complexity_tier="complex")
    assign = await agent.receive_type("task_assign")
    await agent.send({"type": "task_accepted", "task_id": task["task_id"]})
    await agent.receive_type("task_ack")
    return agent, task["task_id"], assign["generation"]


def _task_row(page: Page, task_id: str) -> Locator:
    return page.locator(f'#task-rows tr[data-task-id="{task_id}"]')


def _status_in_table(page: Page, task_id: str) -> Locator:
    return _task_row(page, task_id).locator(".badge").first


def _detail_section(dialog: Locator, title: str) -> Locator:
    heading = dialog.page.get_by_role("heading", name=title, exact=True)
    return dialog.locator(".detail-section").filter(has=heading)


async def _expect_rows(page: Page, task_ids: list[str]) -> None:
    """The task table shows exactly these tasks."""
    await expect(page.locator("#task-rows tr[data-task-id]")).to_have_count(len(task_ids))
    for task_id in task_ids:
        await expect(_task_row(page, task_id)).to_be_visible()


async def test_page_files_are_served_with_a_strict_policy(hub: HubServer, http_url: str) -> None:
    # when every allow-listed file is fetched
    for name, content_type in DASHBOARD_FILES.items():
        status, headers, body = await asyncio.to_thread(_get, f"{http_url}/dashboard/{name}")

        # then it comes with its type and a policy allowing only the hub itself
        assert status == 200, name
        assert headers["Content-Type"] == content_type
        assert body
        policy = headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy
        assert "script-src 'self'" in policy
        host = f"127.0.0.1:{hub.port}"
        assert f"connect-src 'self' ws://{host} wss://{host}" in policy
    # and nothing outside the allow-list is served, however it is spelled
    for name in (
        "__init__.py",
        "../server/http.py",
        "%2e%2e/config.py",
        "app.js.map",
        "missing.js",
    ):
        status, _, _ = await asyncio.to_thread(_get, f"{http_url}/dashboard/{name}")
        assert status == 404, name


async def test_a_pasted_token_is_checked_then_kept_for_the_tab(
    hub: HubServer,
    make_agent: AgentMaker,
    make_token: TokenMaker,
    browser: Browser,
    http_url: str,
) -> None:
    # given a sidecar, and the page opened without a token
    await make_agent("worker-1")
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(f"{http_url}/dashboard")
        token_field = page.get_by_label("Hub token")

        # when a wrong token is pasted, the page says so and asks again
        await token_field.fill("ac_not_a_token")
        await page.get_by_role("button", name="Connect").click()
        await expect(page.locator("#token-error")).to_contain_text("refused")
        await expect(token_field).to_be_visible()

        # when the right one is pasted, the board goes live
        await token_field.fill(make_token("ops", "admin"))
        await page.get_by_role("button", name="Connect").click()
        await expect(page.locator("#connection")).to_have_text("Live")
        await expect(page.get_by_role("article", name="Agent worker-1")).to_be_visible()

        # and a reload of the tab does not ask again
        await page.reload()
        await expect(page.locator("#connection")).to_have_text("Live")
        await expect(token_field).to_be_hidden()
    finally:
        await context.close()


async def test_snapshot_renders_the_connected_agents(
    hub: HubServer,
    make_agent: AgentMaker,
    make_token: TokenMaker,
    open_dashboard: PageOpener,
    tmp_path: Path,
) -> None:
    # given two sidecars, one with a local Ollama that reports its host's load
    gpu_box = await make_agent(
        "gpu-box", capabilities=["python", "gpu"], ollama_url="http://127.0.0.1:11434"
    )
    await make_agent("laptop", capabilities=["python"])
    report = {
        "type": "resource_report",
        "cpu_percent": 42.0,
        "ram_used_bytes": 2 * GIB,
        "ram_total_bytes": 8 * GIB,
        "vram_used_bytes": None,
    }
    await gpu_box.send(report)

    # when an operator opens the page
    page = await open_dashboard(make_token("ops", "admin"))

    # then each agent has a card with its state, capabilities, load and endpoint
    card = page.get_by_role("article", name="Agent gpu-box")
    await expect(card).to_contain_text("idle")
    await expect(card.locator(".chip")).to_have_text(["gpu", "python"])
    await expect(card).to_contain_text("42%")
    await expect(card).to_contain_text("2.0 GiB / 8.0 GiB (25%)")
    await expect(card).to_contain_text("http://127.0.0.1:11434")
    await expect(page.get_by_role("article", name="Agent laptop")).to_contain_text("idle")
    await expect(page.locator("#agents-summary")).to_have_text("2 online, 2 known")
    # the token left the address bar once read
    assert "token" not in page.url

    screenshot = tmp_path / "dashboard.png"
    await page.screenshot(path=screenshot, full_page=True)
    image = screenshot.read_bytes()
    assert image.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(image) > 10_000


async def test_execution_output_appears_in_the_live_log_within_a_second(
    hub: HubServer,
    make_agent: AgentMaker,
    operator: OperatorClient,
    make_token: TokenMaker,
    open_dashboard: PageOpener,
) -> None:
    # given a task a sidecar is working on, and the page open
    agent = await make_agent("worker-1")
    task = await operator.submit("run the test suite", complexity_tier="complex")
    await agent.receive_type("task_assign")
    await agent.send({"type": "task_accepted", "task_id": task["task_id"]})
    await agent.receive_type("task_ack")
    page = await open_dashboard(make_token("ops", "admin"))
    card = page.get_by_role("article", name="Agent worker-1")
    await expect(card).to_contain_text("working")

    def progress(execution_event: dict[str, object]) -> dict[str, object]:
        return {
            "type": "task_progress",
            "task_id": task["task_id"],
            "execution_event": execution_event,
        }

    # when the sidecar streams execution events
    await agent.send(progress({"event_type": "stdout", "text": "collected 42 items"}))

    # then the text is in the live output within one second
    log = page.get_by_role("log", name="Execution output", exact=True)
    await expect(log).to_contain_text("collected 42 items", timeout=1_000)

    # and error output and token counts stand out
    await agent.send(progress({"event_type": "stderr", "text": "1 warning"}))
    await agent.send(progress({"event_type": "token", "tokens_so_far": 128, "model": "qwen2.5"}))
    await expect(log.locator(".kind-stderr")).to_contain_text("1 warning", timeout=1_000)
    await expect(log.locator(".kind-token")).to_contain_text("128 so far", timeout=1_000)

    # and so do an agentic run's tool calls, as the latest sidecar sends them (empty text)
    call = {"event_type": "tool_call", "text": "", "tool_name": "read_file", "iteration": 2}
    await agent.send(progress({**call, "args_summary": '{"path":"app.py"}'}))
    await agent.send(progress({**call, "result_summary": "OK: 12 lines"}))
    await expect(log.locator(".kind-tool_call")).to_have_text(
        [
            re.compile(r'#2 read_file \{"path":"app.py"\}$'),
            re.compile("#2 read_file → OK: 12 lines$"),
        ],
        timeout=1_000,
    )


async def test_cost_totals_change_after_a_completion_with_metadata(
    hub: HubServer,
    make_agent: AgentMaker,
    operator: OperatorClient,
    make_token: TokenMaker,
    open_dashboard: PageOpener,
) -> None:
    # given a task in progress and the page showing no cost yet
    agent = await make_agent("worker-1")
    task = await operator.submit("summarise the changelog", complexity_tier="complex")
    assign = await agent.receive_type("task_assign")
    page = await open_dashboard(make_token("ops", "admin"))
    await expect(page.locator("#cost-tasks")).to_have_text("0")

    # when the sidecar completes it with execution metadata
    completion = {
        "type": "task_complete",
        "task_id": task["task_id"],
        "generation": assign["generation"],
        "result": METADATA,
    }
    await agent.send(completion)
    await agent.receive_type("task_ack")

    # then totals and both breakdowns show it, with what local execution saved
    await expect(page.locator("#cost-tasks")).to_have_text("1")
    await expect(page.locator("#cost-tokens")).to_have_text("120 in / 48 out")
    await expect(page.locator("#cost-claude")).to_have_text("$0.00108")
    await expect(page.locator("#cost-saved")).to_have_text("$0.00108")
    await expect(page.locator("#cost-by-model tbody tr")).to_contain_text("qwen2.5-coder:7b")
    await expect(page.locator("#cost-by-agent tbody tr")).to_contain_text("worker-1")
    await expect(page.locator("#status-completed")).to_have_text("1")


async def test_retry_moves_a_dead_letter_task_back_to_the_queue(
    hub: HubServer,
    make_agent: AgentMaker,
    operator: OperatorClient,
    make_token: TokenMaker,
    open_dashboard: PageOpener,
) -> None:
    # given a dead-letter task on the page of an admin
    task_id = await _dead_letter_task(operator, make_agent, "migrate the billing schema")
    page = await open_dashboard(make_token("ops", "admin"))
    dead_letters = page.locator("#dead-letters")
    await expect(dead_letters).to_contain_text("migrate the billing schema")
    await expect(dead_letters).to_contain_text("verification failed: 3 tests red")
    await expect(page.get_by_role("article", name="Agent flaky-worker")).to_contain_text("offline")

    # when the operator presses Retry
    await page.get_by_role("button", name=f"Retry task {task_id}").click()

    # then the task leaves the dead letter and is queued again, on the page and in the hub
    await expect(dead_letters).to_contain_text("Nothing in the dead letter.")
    row = page.locator(f'#task-rows tr[data-task-id="{task_id}"]')
    await expect(row.locator(".badge").first).to_have_text("queued")
    await expect(page.locator("#status-queued")).to_have_text("1")
    stored = await operator.get_task(task_id)
    assert stored["status"] == "queued"
    assert stored["retry_count"] == 0


async def test_a_viewer_token_sees_everything_but_no_action_buttons(
    hub: HubServer,
    make_agent: AgentMaker,
    operator: OperatorClient,
    make_token: TokenMaker,
    open_dashboard: PageOpener,
) -> None:
    # given a dead-letter task and a queued one
    dead_id = await _dead_letter_task(operator, make_agent, "rotate the signing keys")
    queued = await operator.submit("build the GPU image", needed_capabilities=["gpu"])

    # when a viewer opens the page
    page = await open_dashboard(make_token("watcher", "viewer"))

    # then it shows the tasks but offers no action
    await expect(page.locator("#role")).to_have_text("viewer (read only)")
    await expect(page.locator("#dead-letters")).to_contain_text("rotate the signing keys")
    queued_row = page.locator(f'#task-rows tr[data-task-id="{queued["task_id"]}"]')
    await expect(queued_row).to_contain_text("build the GPU image")
    actions = page.get_by_role("button", name=re.compile(r"^(Retry|Cancel|Confirm|Submit)"))
    await expect(actions).to_have_count(0)
    await expect(page.locator("#submit-form")).to_be_hidden()

    # and neither does a task's detail
    await page.get_by_role("button", name=f"Open task {dead_id}").first.click()
    detail = page.get_by_role("dialog")
    await expect(detail).to_contain_text("verification failed: 3 tests red")
    await expect(detail.get_by_role("button", name=re.compile(r"^(Retry|Cancel)"))).to_have_count(0)


async def test_page_recovers_after_the_hub_restarts(
    hub: HubServer,
    settings: Settings,
    clock: ManualClock,
    make_agent: AgentMaker,
    make_token: TokenMaker,
    open_dashboard: PageOpener,
) -> None:
    # given the page live with one agent
    await make_agent("before-restart")
    page = await open_dashboard(make_token("ops", "admin"))
    await expect(page.get_by_role("article", name="Agent before-restart")).to_be_visible()
    port = hub.port

    # when the hub stops, the page says it is reconnecting
    await hub.stop()
    await expect(page.locator("#connection")).to_contain_text("reconnecting")

    # and when a new hub comes up on the same database and port
    restarted = HubServer(settings.model_copy(update={"port": port}), clock=clock, run_sweeps=False)
    await restarted.start()
    try:
        await make_agent("after-restart")

        # then the page re-syncs from a fresh snapshot by itself
        await expect(page.locator("#connection")).to_have_text("Live")
        after = page.get_by_role("article", name="Agent after-restart")
        await expect(after).to_contain_text("idle")
        await expect(page.get_by_role("article", name="Agent before-restart")).to_have_count(0)

        # and its actions work again
        await page.get_by_label("Description").fill("rebuild the search index")
        await page.get_by_role("button", name="Submit task").click()
        await expect(page.locator("#submit-result")).to_contain_text("Queued task")
        await expect(page.locator("#task-rows")).to_contain_text("rebuild the search index")
    finally:
        await restarted.stop()


async def test_output_sent_before_the_page_opened_comes_with_the_snapshot(
    hub: HubServer,
    make_agent: AgentMaker,
    operator: OperatorClient,
    make_token: TokenMaker,
    open_dashboard: PageOpener,
) -> None:
    # given a task that already printed something
    agent = await make_agent("worker-1")
    task = await operator.submit("compile the docs", complexity_tier="complex")
    await agent.receive_type("task_assign")
    await agent.send({"type": "task_accepted", "task_id": task["task_id"]})
    await agent.receive_type("task_ack")
    event = {"event_type": "stdout", "text": "building 12 pages"}
    await agent.send(
        {"type": "task_progress", "task_id": task["task_id"], "execution_event": event}
    )
    await agent.send({"type": "ping"})
    await agent.receive_type("pong")  # the hub has handled the progress frame

    # when the page opens afterwards
    page = await open_dashboard(make_token("ops", "admin"))

    # then the earlier output is there, in the page log and in the task's detail
    log = page.get_by_role("log", name="Execution output", exact=True)
    await expect(log).to_contain_text("building 12 pages")
    await page.get_by_role("button", name=f"Open task {task['task_id']}").first.click()
    detail = page.get_by_role("dialog")
    await expect(detail.get_by_role("log")).to_contain_text("building 12 pages")
    await expect(detail).to_contain_text("claude-sonnet-4.5")  # the routing decision


async def test_alerts_flag_no_agents_and_a_sidecar_dropped_for_violations(
    hub: HubServer, make_agent: AgentMaker, make_token: TokenMaker, open_dashboard: PageOpener
) -> None:
    # given the page open with no agent online
    page = await open_dashboard(make_token("ops", "admin"))
    alerts = page.locator("#alerts")
    await expect(alerts).to_contain_text("No agents online")

    # when a sidecar connects, that alert clears
    agent = await make_agent("noisy")
    await expect(alerts).not_to_contain_text("No agents online")

    # and when it keeps sending invalid frames until the hub closes it
    for _ in range(10):
        await agent.send({"type": "no_such_frame"})

    # then the banner says which sidecar was dropped and why
    dropped = alerts.get_by_role("alert").filter(has_text="noisy")
    await expect(dropped).to_contain_text("repeated protocol violations")
    await expect(alerts).to_contain_text("No agents online")
    await dropped.get_by_role("button", name="Dismiss this alert").click()
    await expect(dropped).to_have_count(0)


def test_execution_tails_stay_bounded() -> None:
    # given tails for at most two tasks of three events, texts cut at ten characters
    tails = ExecutionTails(max_tasks=2, max_events=3, max_text=10)

    # when four events arrive for one task and then one each for two others
    for number in range(4):
        tails.add("a", {"task_id": "a", "execution_event": {"text": f"line {number}"}})
    huge = {"text": "x" * 100, "nested": {"dropped": True}, "tokens_so_far": 7}
    tails.add("b", {"task_id": "b", "execution_event": huge})
    tails.add("c", {"task_id": "c", "execution_event": {"text": "last"}})

    # then the least recently active task went, and what is kept is bounded
    kept = tails.snapshot()
    assert list(kept) == ["b", "c"]
    assert kept["b"][0]["execution_event"] == {"text": "x" * 10, "tokens_so_far": 7}
    tails.add("b", {"task_id": "b", "execution_event": {"text": "again"}})
    tails.add("d", {"task_id": "d", "execution_event": {"text": "new"}})
    assert list(tails.snapshot()) == ["b", "d"]


async def test_a_page_opened_late_sees_from_the_hubs_record_that_the_queue_is_growing(
    hub: HubServer,
    clock: ManualClock,
    operator: OperatorClient,
    make_token: TokenMaker,
    open_dashboard: PageOpener,
) -> None:
    # given a queue, with no agent to take its tasks, that grew in each of five minutes
    for _ in range(6):
        await operator.submit("waits for an agent")
        clock.advance(60_000)

    # when an operator opens the page only now
    page = await open_dashboard(make_token("ops", "admin"))

    # then the page knows the last minutes from the snapshot and flags the growth at once
    await expect(page.locator("#alerts")).to_contain_text("Queue growing for 5 min: 1 → 6 waiting")


def test_queue_history_keeps_depth_and_completions_per_minute_for_its_window() -> None:
    # given a history of three minutes
    history = QueueHistory(minutes=3)

    # when the queue changes twice in minute 0 and twice in minute 1, with completions
    history.observe(0, 1)
    history.observe(30_000, 2, completed=True)
    history.observe(60_000, 3, completed=True)
    history.observe(60_001, 2, completed=True)

    # then each minute keeps its last depth and counts its completions
    assert history.snapshot(60_001) == [
        {"minute": 0, "depth": 2, "completions": 1},
        {"minute": 1, "depth": 2, "completions": 2},
    ]

    # and minutes that fell out of the window are gone, also from memory
    history.observe(5 * 60_000, 7)
    assert history.snapshot(5 * 60_000) == [{"minute": 5, "depth": 7, "completions": 0}]
    assert history.snapshot(7 * 60_000) == [{"minute": 5, "depth": 7, "completions": 0}]
    assert history.snapshot(8 * 60_000) == []


async def test_alerts_flag_a_growing_queue_a_stuck_task_and_a_high_failure_rate(
    hub: HubServer, make_token: TokenMaker, open_dashboard: PageOpener
) -> None:
    # given the page's own alert rules, evaluated in the browser at a chosen time
    page = await open_dashboard(make_token("ops", "admin"))
    evaluate = """async (state) => {
        const { currentAlerts } = await import("/dashboard/alerts.js");
        const { MinuteSeries } = await import("/dashboard/state.js");
        const now = state.now;
        const history = new MinuteSeries();
        for (const [timestamp, depth] of state.depths) history.recordDepth(timestamp, depth);
        const alerts = currentAlerts({
            ...state, now: () => now, agents: new Map(state.agents), history,
            tasks: new Map(state.tasks.map((task) => [task.task_id, task])),
        }, new Set());
        return alerts.map((alert) => alert.key);
    }"""
    minute = 60_000
    now = 100 * minute
    calm = {
        "now": now,
        "snapshots": 1,
        "agents": [["a1", {"agent_id": "a1", "state": "working"}]],
        "queue": {"depth": 6},
        # the depth at the end of each minute: it grew in the last four whole minutes only
        "depths": [[now - (6 - n) * minute, depth] for n, depth in enumerate([2, 2, 3, 4, 5, 6])],
        "timeouts": {"reclaim_after_ms": 10 * minute},
        "tasks": [
            {
                "task_id": "t1",
                "status": "working",
                "assigned_to": "a1",
                "last_progress_at": now - 4 * minute,
            },
        ],
        "outcomes": [True, False, True, False],
        "validationDrops": [],
    }

    # when the queue grew for four minutes only, and half (not more) of the tasks failed
    # then nothing is flagged
    assert await page.evaluate(evaluate, calm) == []

    # when the queue has grown for five minutes, the task has been silent for half the
    # reclaim time, and three of the last four tasks failed
    alarming = {
        **calm,
        "depths": [[now - (6 - n) * minute, depth] for n, depth in enumerate([1, 2, 3, 4, 5, 6])],
        "tasks": [{**calm["tasks"][0], "last_progress_at": now - 5 * minute}],
        "outcomes": [True, False, False, False],
    }

    # then each of them is flagged
    assert await page.evaluate(evaluate, alarming) == [
        "queue-growing", "stuck-t1", "failure-rate",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "settings", [{"subscriber_queue": 1}], indirect=True, ids=["one-event-subscriber-queue"]
)
async def test_dropped_events_are_counted_and_the_task_table_resyncs(
    hub: HubServer,
    settings: Settings,
    clock: ManualClock,
    make_agent: AgentMaker,
    operator: OperatorClient,
    make_token: TokenMaker,
    open_dashboard: PageOpener,
) -> None:
    # given three sidecars each working on a task, and the page open on a hub that buffers
    # a single event for each dashboard
    agents, task_ids = [], []
    for number in (1, 2, 3):
        agent, task_id, _ = await _working_task(operator, make_agent, f"worker-{number}", "lint")
        agents.append(agent)
        task_ids.append(task_id)
    page = await open_dashboard(make_token("ops", "admin"))
    for task_id in task_ids:
        await expect(_status_in_table(page, task_id)).to_have_text("working")
    await expect(page.locator("#dropped")).to_be_hidden()

    # and the sidecars gone, one at a time, each seen going by the page
    for number, agent in enumerate(agents, start=1):
        await agent.close()
        card = page.get_by_role("article", name=f"Agent worker-{number}")
        await expect(card).to_contain_text("offline")

    # when their grace period ends, the hub requeues the three tasks in one sweep: it
    # publishes the three events at once, and the page's queue keeps only the newest
    clock.advance(int(settings.disconnect_grace_s * 1000) + 1)
    await hub.sweep()

    # then the page says it missed two events
    dropped = page.locator("#dropped")
    await expect(dropped).to_be_visible()
    await expect(dropped).to_have_text("2 events dropped")

    # and it re-reads the tasks: the table shows all three queued again, as the hub has them
    for task_id in task_ids:
        await expect(_status_in_table(page, task_id)).to_have_text("queued")
        assert (await operator.get_task(task_id))["status"] == "queued"
    await expect(page.locator("#status-queued")).to_have_text("3")
    await expect(page.locator("#status-working")).to_have_text("0")


async def test_the_page_says_other_nodes_events_may_be_missing_until_it_resyncs(
    settings: Settings, open_dashboard: PageOpener
) -> None:
    # given a hub node whose path to Redis runs through a proxy, and the page open on it
    require_redis()
    proxy = await BlackHoleProxy(REDIS_PORT).start()
    linked = settings.model_copy(
        update={
            "db": settings.db.with_name("linked.db"),
            "pubsub": f"redis://127.0.0.1:{proxy.port}/0",
            "cluster": new_cluster(),
            "pubsub_ping_interval_s": 0.2,
            "pubsub_timeout_s": 0.5,
            "pubsub_reconnect_max_s": 0.2,
        }
    )
    token = new_token()
    try:
        async with hub_with(linked) as hub:
            save_token(linked.db, "ops", hash_token(token), "admin")
            page = await open_dashboard(token, hub.url("", websocket=False))
            notes = page.locator("#dropped")

            # when the path to Redis goes dark
            proxy.go_dark()

            # then the page says that other nodes' events may be missing
            await expect(notes).to_have_text("events from other hub nodes may be missing")

            # and once the path is back, the hub sends a snapshot and the note goes
            proxy.go_light()
            await expect(notes).to_be_hidden()
    finally:
        await proxy.close()


async def test_cancel_on_a_queued_task_needs_a_second_click(
    hub: HubServer,
    operator: OperatorClient,
    make_token: TokenMaker,
    open_dashboard: PageOpener,
) -> None:
    # given a queued task no agent can take, on the page of an admin
    task = await operator.submit("build the GPU image", needed_capabilities=["gpu"])
    task_id = task["task_id"]
    page = await open_dashboard(make_token("ops", "admin"))
    row = _task_row(page, task_id)
    await expect(_status_in_table(page, task_id)).to_have_text("queued")

    # when the operator presses Cancel once, the button asks for confirmation only
    await row.get_by_role("button", name=f"Cancel task {task_id}").click()
    confirm = row.get_by_role("button", name=f"Confirm: Cancel task {task_id}")
    await expect(confirm).to_have_text("Confirm")
    assert (await operator.get_task(task_id))["status"] == "queued"

    # and when they confirm
    await confirm.click()

    # then the task is cancelled, in the hub and on the page, and nothing is left to cancel
    await expect(page.locator("#action-status")).to_have_text(f"Task {task_id[:8]} cancelled.")
    await expect(_status_in_table(page, task_id)).to_have_text("cancelled")
    await expect(row.get_by_role("button", name=re.compile("Cancel|Confirm"))).to_have_count(0)
    assert (await operator.get_task(task_id))["status"] == "cancelled"
    await expect(page.locator("#status-cancelled")).to_have_text("1")
    await expect(page.locator("#status-queued")).to_have_text("0")


async def test_task_detail_shows_routing_execution_result_and_history(
    hub: HubServer,
    make_agent: AgentMaker,
    operator: OperatorClient,
    make_token: TokenMaker,
    open_dashboard: PageOpener,
) -> None:
    # given a task a sidecar completed with execution metadata, and the page open
    agent, task_id, generation = await _working_task(
        operator, make_agent, "worker-1", "summarise the changelog for 2.4"
    )
    page = await open_dashboard(make_token("ops", "admin"))
    completion = {
        "type": "task_complete",
        "task_id": task_id,
        "generation": generation,
        "result": METADATA,
    }
    await agent.send(completion)
    await agent.receive_type("task_ack")
    row = _task_row(page, task_id)
    await expect(_status_in_table(page, task_id)).to_have_text("completed")

    # when the operator clicks the task's row
    await row.get_by_text("summarise the changelog for 2.4").click()

    # then its detail shows what it was asked, how it was routed, how it ran and its result
    detail = page.get_by_role("dialog")
    await expect(detail.get_by_role("heading", name=f"Task {task_id}")).to_be_visible()
    await expect(_detail_section(detail, "Description")).to_contain_text(
        "summarise the changelog for 2.4"
    )
    decision = (await operator.get_task(task_id))["routing_decision"]
    routing = _detail_section(detail, "Routing decision")
    await expect(routing.locator("dt")).to_contain_text(["Tier", "Target", "Endpoint", "Model"])
    await expect(routing.locator("dd")).to_have_text(
        [
            "complex",
            "claude",
            UNKNOWN,  # no Ollama endpoint for a Claude run
            "claude-sonnet-4.5",
            "no",
            "api",
            decision["classification_reason"],
            re.compile(r"^explicit"),
        ]
    )
    execution = _detail_section(detail, "Execution")
    await expect(execution.locator("dt")).to_have_text(
        [
            "Model",
            "Tokens in",
            "Tokens out",
            "Estimated cost",
            "Claude equivalent",
            "Saved",
            "Execution time",
            "Tokens used",
        ]
    )
    await expect(execution.locator("dd")).to_have_text(
        ["qwen2.5-coder:7b", "120", "48", "$0.00", "$0.00108", "$0.00108", "1.5 s", UNKNOWN]
    )
    await expect(detail.get_by_label("Result output")).to_have_text("done")
    timeline = _detail_section(detail, "History").get_by_role("listitem")
    await expect(timeline.locator(".badge")).to_have_text(
        ["queued", "assigned", "working", "completed"]
    )
    await expect(timeline.nth(1).locator(".detail-text")).to_contain_text("to worker-1")
    # and its times read as the command line prints them: UTC, to the second
    history = (await operator.get_task(task_id))["history"]
    await expect(timeline.locator("time")).to_have_text(
        [datetime.fromtimestamp(e["at"] / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S") for e in history]
    )


async def test_status_and_text_filters_narrow_the_task_table(
    hub: HubServer,
    make_agent: AgentMaker,
    operator: OperatorClient,
    make_token: TokenMaker,
    open_dashboard: PageOpener,
) -> None:
    # given a dead-letter task, a completed one, a queued one and a cancelled one
    dead_id = await _dead_letter_task(operator, make_agent, "migrate the billing schema")
    agent, done_id, generation = await _working_task(
        operator, make_agent, "worker-1", "summarise the changelog"
    )
    completion = {"type": "task_complete", "task_id": done_id, "generation": generation}
    await agent.send(completion)
    await agent.receive_type("task_ack")
    queued = await operator.submit("build the GPU image", needed_capabilities=["gpu"])
    cancelled = await operator.submit("train the GPU ranking model", needed_capabilities=["gpu"])
    await operator.request("task_cancel", task_id=cancelled["task_id"])
    queued_id, cancelled_id = queued["task_id"], cancelled["task_id"]
    page = await open_dashboard(make_token("ops", "admin"))
    await _expect_rows(page, [dead_id, done_id, queued_id, cancelled_id])
    status = page.get_by_role("combobox", name="Status")
    text = page.get_by_role("searchbox", name="Text")

    # when the operator picks a status, only tasks in it are listed
    await status.select_option(label="completed")
    await _expect_rows(page, [done_id])
    await expect(page.locator("#tasks-summary")).to_have_text("1 shown")
    await status.select_option(label="dead letter")
    await _expect_rows(page, [dead_id])

    # when they type text instead, it matches descriptions whatever the case, last errors
    # and task ids
    await status.select_option(label="All statuses")
    await text.fill("gpu")
    await _expect_rows(page, [queued_id, cancelled_id])
    await text.fill("3 tests red")
    await _expect_rows(page, [dead_id])
    await text.fill(done_id[:8])
    await _expect_rows(page, [done_id])

    # and both together narrow to the tasks matching both
    await text.fill("GPU")
    await status.select_option(label="queued")
    await _expect_rows(page, [queued_id])
    await text.fill("billing")
    await _expect_rows(page, [])
    await expect(page.locator("#task-rows")).to_have_text("No matching tasks.")

    # and cleared, they list every task again
    await text.fill("")
    await status.select_option(label="All statuses")
    await _expect_rows(page, [dead_id, done_id, queued_id, cancelled_id])


async def test_live_output_follows_its_tail_until_the_reader_scrolls_up(
    hub: HubServer,
    make_agent: AgentMaker,
    operator: OperatorClient,
    make_token: TokenMaker,
    open_dashboard: PageOpener,
) -> None:
    # given a task a sidecar is working on, and the page open at its live output
    agent, task_id, _ = await _working_task(operator, make_agent, "worker-1", "run the tests")
    page = await open_dashboard(make_token("ops", "admin"))
    log = page.get_by_role("log", name="Execution output", exact=True)
    await log.scroll_into_view_if_needed()
    jump = page.locator("#log-jump")

    async def print_lines(first: int, last: int) -> None:
        for number in range(first, last + 1):
            event = {"event_type": "stdout", "text": f"test {number} passed"}
            progress = {"type": "task_progress", "task_id": task_id, "execution_event": event}
            await agent.send(progress)

    def line(number: int) -> Locator:
        return log.locator(".line").filter(has_text=re.compile(rf"test {number} passed$"))

    # when the sidecar prints far more lines than the log shows at once
    await print_lines(1, 60)

    # then the last line is in sight without the reader scrolling, and the first is not
    await expect(line(60)).to_be_in_viewport()
    await expect(line(1)).not_to_be_in_viewport()
    await expect(jump).to_be_hidden()

    # when the reader scrolls up to read, new lines do not pull the log away from them
    await log.hover()
    await page.mouse.wheel(0, -10_000)
    await expect(line(1)).to_be_in_viewport()
    await expect(jump).to_be_visible()
    await print_lines(61, 70)
    await expect(line(70)).to_have_count(1)
    await expect(line(1)).to_be_in_viewport()
    await expect(line(70)).not_to_be_in_viewport()

    # and Jump to latest brings the tail back, which the log follows again
    await jump.click()
    await expect(line(70)).to_be_in_viewport()
    await expect(jump).to_be_hidden()
    await print_lines(71, 80)
    await expect(line(80)).to_be_in_viewport()


async def test_an_agent_card_says_its_task_is_held_until_it_reports_on_it(
    hub: HubServer,
    make_agent: AgentMaker,
    operator: OperatorClient,
    make_token: TokenMaker,
    open_dashboard: PageOpener,
) -> None:
    # given a sidecar running a task, and the page open
    agent, task_id, _ = await _working_task(operator, make_agent, "worker-1", "a long job")
    page = await open_dashboard(make_token("ops", "admin"))
    card = page.get_by_role("article", name="Agent worker-1")
    held = card.locator(".agent-held")
    await expect(card).to_contain_text("working")
    await expect(held).to_be_hidden()

    # when its connection ends
    await agent.close()

    # then its card says the task is kept for it, since when, and until when
    await expect(held).to_contain_text(f"Task {task_id} kept for worker-1 (disconnected) since ")
    await expect(held).to_contain_text("(grace period) unless the agent comes back")

    # when it identifies again, silent on the task, as real sidecars do
    again = await make_agent("worker-1")

    # then the card says it is back and names the no-progress reclaim
    await expect(held).to_contain_text("(back, but silent on the task)")
    await expect(held).to_contain_text("(no progress) unless the agent reports on it")
    # and so does the task's detail
    await card.get_by_role("button", name=f"Open task {task_id} held by worker-1").click()
    detail = page.get_by_role("dialog")
    await expect(detail.locator(".held")).to_contain_text(f"Held: Task {task_id} kept for worker-1")

    # when the sidecar reports progress on the task
    await again.send({"type": "task_progress", "task_id": task_id, "progress": 70})

    # then nothing is held any more
    await expect(held).to_be_hidden()


async def test_a_page_whose_token_is_revoked_is_closed_and_asks_for_another(
    hub: HubServer, settings: Settings, make_token: TokenMaker, open_dashboard: PageOpener
) -> None:
    # given a live page
    page = await open_dashboard(make_token("ops", "admin"))

    # when its token is revoked and the hub looks for revocations
    delete_token(settings.db, "ops")
    assert hub.revocations.check() >= 1  # the event feed (and the operator socket, if open)

    # then the page stops and asks for a token, rather than showing stale data as live
    await expect(page.locator("#token-error")).to_contain_text("refused")
    await expect(page.get_by_label("Hub token")).to_be_visible()


# --- Ollama endpoints panel ------------------------------------------------------------

MODELS = ["qwen2.5-coder:7b", "llama3.2:3b"]


async def test_endpoints_panel_shows_health_models_load_and_last_error_as_they_change(
    hub: HubServer,
    make_agent: AgentMaker,
    make_token: TokenMaker,
    open_dashboard: PageOpener,
    ollama: OllamaStandin,  # noqa: F811
) -> None:
    # given a sidecar whose local Ollama serves two models, one of them loaded, and that
    # reports its host's load
    ollama.serve(models=MODELS, loaded=MODELS[:1])
    gpu_box = await make_agent("gpu-box", ollama_url=ollama.url)
    report = {"type": "resource_report", "cpu_percent": 42.0,
              "ram_used_bytes": 2 * GIB, "ram_total_bytes": 8 * GIB}  # fmt: skip
    await gpu_box.send(report)
    await hub.prober.check_all()

    # when an operator opens the page
    page = await open_dashboard(make_token("ops", "admin"))

    # then the endpoint has a card with its health, models, host load and no error
    card = page.get_by_role("article", name="Endpoint gpu-box-local")
    await expect(card.locator(".badge")).to_have_text("healthy")
    await expect(card.locator(".chip")).to_have_text(["qwen2.5-coder:7b (loaded)", "llama3.2:3b"])
    await expect(card).to_contain_text("CPU 42% · RAM 2.0 GiB / 8.0 GiB (25%)")
    await expect(card).to_contain_text("sidecar gpu-box")
    await expect(card).to_contain_text(ollama.url)
    await expect(page.locator("#endpoints-summary")).to_have_text("1 healthy, 1 known")

    # when its Ollama starts failing, the card follows the hub's checks without a reload:
    # failing with the error at the first failure, unhealthy at the third
    ollama.fail()
    await hub.prober.check_all()
    await expect(card).to_contain_text("HTTPStatusError")
    await expect(card.locator(".badge")).to_have_text("failing")
    await hub.prober.check_all()
    await hub.prober.check_all()
    await expect(card.locator(".badge")).to_have_text("unhealthy")
    await expect(card).to_contain_text("(3 failed checks in a row)")
    await expect(page.locator("#endpoints-summary")).to_have_text("0 healthy, 1 known")


async def test_an_admin_adds_and_removes_endpoints_and_a_viewer_only_watches(
    hub: HubServer,
    operator: OperatorClient,
    make_token: TokenMaker,
    open_dashboard: PageOpener,
    ollama: OllamaStandin,  # noqa: F811
) -> None:
    # given an Ollama nobody registered, and an admin's page
    ollama.serve(models=MODELS[1:])
    page = await open_dashboard(make_token("ops", "admin"))
    form = page.get_by_role("form", name="Add an Ollama endpoint")

    # when the admin adds it under a name
    await form.get_by_label("URL").fill(ollama.url)
    await form.get_by_label("Name").fill("gpu-box")
    await form.get_by_role("button", name="Add endpoint").click()

    # then the hub has it, and the page shows its card and, soon, its first check
    await expect(page.locator("#endpoint-result")).to_contain_text("Added endpoint gpu-box")
    card = page.get_by_role("article", name="Endpoint gpu-box")
    await expect(card.locator(".badge")).to_have_text("healthy")
    await expect(card).to_contain_text("added by an operator")
    assert [e["endpoint_id"] for e in await operator.request("endpoints_list")] == ["gpu-box"]

    # and a URL the hub refuses is not added, with its reason
    await form.get_by_label("URL").fill("ftp://nowhere")
    await form.get_by_label("Name").fill("")
    await form.get_by_role("button", name="Add endpoint").click()
    await expect(page.locator("#endpoint-result")).to_contain_text("Not added: invalid_url")

    # given a viewer's page too: it sees the endpoint, but neither the form nor Remove
    viewer = await open_dashboard(make_token("watcher", "viewer"))
    watched = viewer.get_by_role("article", name="Endpoint gpu-box")
    await expect(watched.locator(".badge")).to_have_text("healthy")
    await expect(viewer.get_by_role("form", name="Add an Ollama endpoint")).to_be_hidden()
    await expect(viewer.get_by_role("button", name=re.compile("^Remove"))).to_have_count(0)

    # when the admin presses Remove, it only asks for confirmation
    await card.get_by_role("button", name="Remove endpoint gpu-box").click()
    confirm = card.get_by_role("button", name="Confirm: Remove endpoint gpu-box")
    await expect(confirm).to_be_visible()
    assert len(await operator.request("endpoints_list")) == 1

    # and when they confirm, the endpoint is gone from the hub and from both pages
    await confirm.click()
    await expect(page.locator("#action-status")).to_have_text("Endpoint gpu-box removed.")
    await expect(page.get_by_role("article", name="Endpoint gpu-box")).to_have_count(0)
    await expect(watched).to_have_count(0)
    assert await operator.request("endpoints_list") == []


async def test_endpoint_actions_appear_once_the_hub_says_the_token_is_an_admins(
    hub: HubServer,
    operator: OperatorClient,
    make_token: TokenMaker,
    browser: Browser,
    http_url: str,
) -> None:
    # given an endpoint, and a page whose operator connection hears its role only after
    # the snapshot has drawn the cards
    await operator.request("endpoint_add", url="http://127.0.0.1:9", name="spare")
    role_known = asyncio.Event()
    releases: list[asyncio.Task[None]] = []

    def hold_the_role(route: WebSocketRoute) -> None:
        server = route.connect_to_server()
        held: list[str | bytes] = []

        def from_hub(message: str | bytes) -> None:
            if role_known.is_set():
                route.send(message)
            else:
                held.append(message)

        async def release() -> None:
            await role_known.wait()
            for message in held:
                route.send(message)

        server.on_message(from_hub)
        releases.append(asyncio.create_task(release()))

    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.route_web_socket(re.compile(r"/ws/operator$"), hold_the_role)
        await page.goto(f"{http_url}/dashboard#token={make_token('ops', 'admin')}")
        card = page.get_by_role("article", name="Endpoint spare")
        await expect(card).to_be_visible()
        await expect(card.get_by_role("button")).to_have_count(0)

        # when the role arrives
        role_known.set()

        # then the card gets its action at once (the page redraws the cards every 5 s
        # anyway: the button must come well before)
        remove = card.get_by_role("button", name="Remove endpoint spare")
        await expect(remove).to_be_visible(timeout=2000)
    finally:
        for release in releases:
            release.cancel()
        await context.close()


# --- after a hub restart ----------------------------------------------------------------


async def test_a_restarted_hub_gives_back_running_output_and_the_queue_chart(
    hub: HubServer,
    settings: Settings,
    clock: ManualClock,
    make_agent: AgentMaker,
    operator: OperatorClient,
    make_token: TokenMaker,
    open_dashboard: PageOpener,
) -> None:
    # given a running task that printed a line, and a task completed a minute earlier
    done_agent, done_id, generation = await _working_task(operator, make_agent, "w-1", "lint")
    complete = {"type": "task_complete", "task_id": done_id, "generation": generation}
    await done_agent.send(complete)
    await done_agent.receive_type("task_ack")
    await done_agent.close()  # so that the next task goes to the next sidecar
    clock.advance(60_000)
    agent, task_id, _ = await _working_task(operator, make_agent, "w-2", "compile the docs")
    event = {"event_type": "stdout", "text": "building 12 pages"}
    await agent.send({"type": "task_progress", "task_id": task_id, "execution_event": event})
    await agent.send({"type": "ping"})
    await agent.receive_type("pong")  # the hub has handled the progress frame

    # when the hub stops and a new one starts on the same database
    port = hub.port
    await hub.stop()
    restarted = HubServer(settings.model_copy(update={"port": port}), clock=clock, run_sweeps=False)
    await restarted.start()
    try:
        # then its snapshot has the task's output and the minutes before the restart
        frames = operator.watch()
        snapshot = await anext(frames)
        await frames.aclose()
        assert [e["execution_event"] for e in snapshot["execution_tails"][task_id]] == [event]
        history = snapshot["queue_history"]
        assert sum(minute["completions"] for minute in history) == 1
        assert len(history) == 2

        # and a page opened now shows both
        page = await open_dashboard(make_token("ops", "admin"))
        log = page.get_by_role("log", name="Execution output", exact=True)
        await expect(log).to_contain_text("building 12 pages")
        chart = page.locator("#queue-chart")
        await expect(chart).to_have_attribute("aria-label", re.compile("1 tasks completed"))
    finally:
        await restarted.stop()


async def test_every_sweep_saves_the_output_and_the_hour_so_far(
    hub: HubServer,
    settings: Settings,
    make_agent: AgentMaker,
    operator: OperatorClient,
) -> None:
    # given a running task that printed a line
    agent, task_id, _ = await _working_task(operator, make_agent, "w-1", "compile the docs")
    event = {"event_type": "stderr", "text": "warning: 3 broken links"}
    await agent.send({"type": "task_progress", "task_id": task_id, "execution_event": event})
    await agent.send({"type": "ping"})
    await agent.receive_type("pong")

    def saved_tails() -> list[tuple[str, list[dict[str, object]]]]:
        """What a hub killed outright would find in its database on restart."""
        with contextlib.closing(sqlite3.connect(settings.db)) as database:
            rows = database.execute("SELECT task_id, events FROM execution_tails").fetchall()
        return [(tid, [e["execution_event"] for e in json.loads(events)]) for tid, events in rows]

    def saved_minutes() -> list[tuple[int, int, int]]:
        with contextlib.closing(sqlite3.connect(settings.db)) as database:
            query = "SELECT minute, depth, completions FROM queue_history ORDER BY minute"
            return [tuple(row) for row in database.execute(query).fetchall()]

    assert saved_tails() == []

    # when the hub sweeps, while it keeps running
    await hub.sweep()

    # then the output and the queue's minutes are in the database
    assert saved_tails() == [(task_id, [event])]
    history = hub.hub.queue_history.snapshot(hub.clock.now_ms())
    minutes = [(m["minute"], m["depth"], m["completions"]) for m in history]
    assert minutes
    assert saved_minutes() == minutes


def test_execution_tails_saved_under_larger_bounds_are_trimmed_when_taken_back() -> None:
    # given tails saved for three tasks, and a hub that now keeps two
    tails = ExecutionTails(max_tasks=2, max_events=3)
    saved = [(task_id, [{"task_id": task_id, "execution_event": {"text": task_id}}])
             for task_id in ("a", "b", "c")]  # fmt: skip

    # when they are taken back
    tails.restore(saved)

    # then the two most recently active are kept, and the other is deleted at the next save
    assert list(tails.snapshot()) == ["b", "c"]
    assert tails.take_changes() == {"a": None}
    assert tails.take_changes() == {}


# --- queue panel, top bar, token gate, task table --------------------------------------


async def test_the_queue_chart_spreads_over_the_minutes_that_have_data(
    hub: HubServer, make_token: TokenMaker, open_dashboard: PageOpener
) -> None:
    # given the page's own chart, drawn in the browser from a chosen history
    page = await open_dashboard(make_token("ops", "admin"))
    draw = """async ({now, minutes}) => {
        const { MinuteSeries } = await import("/dashboard/state.js");
        const { drawQueueChart } = await import("/dashboard/chart.js");
        const history = new MinuteSeries();
        for (const ago of minutes) history.recordDepth(now - ago * 60000, 3);
        const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
        drawQueueChart(svg, history.chartWindow(now));
        return {
            bars: svg.querySelectorAll("rect.bar").length,
            labels: [...svg.querySelectorAll("text")].map((text) => text.textContent).slice(-3),
        };
    }"""
    now = 1000 * 60_000

    # when the queue has data for the last 7 minutes only, the chart spans those 7
    assert await page.evaluate(draw, {"now": now, "minutes": [6, 3, 0]}) == {
        "bars": 7, "labels": ["-7 min", "-4 min", "now"],
    }  # fmt: skip
    # and never fewer than 5, nor more than the hour
    assert (await page.evaluate(draw, {"now": now, "minutes": [0]}))["bars"] == 5
    assert (await page.evaluate(draw, {"now": now, "minutes": [90, 2]}))["bars"] == 60

    # and the live chart's caption says what it spans
    await expect(page.locator("#chart-span")).to_have_text("last 5 min")


async def test_the_dead_letter_count_is_red_only_when_there_are_some(
    hub: HubServer,
    operator: OperatorClient,
    make_agent: AgentMaker,
    make_token: TokenMaker,
    open_dashboard: PageOpener,
) -> None:
    # given the page with no dead letter
    page = await open_dashboard(make_token("ops", "admin"))
    red = await page.evaluate("""() => {
        const probe = document.createElement("span");
        probe.style.color = "var(--danger)";
        document.body.append(probe);
        const color = getComputedStyle(probe).color;
        probe.remove();
        return color;
    }""")
    tile, summary = page.locator("#status-dead_letter"), page.locator("#dead-summary")
    await expect(tile).to_have_text("0")
    color = "el => getComputedStyle(el).color"

    # then neither count is red
    assert await tile.evaluate(color) != red
    assert await summary.evaluate(color) != red

    # when a task ends in the dead letter, both are
    await _dead_letter_task(operator, make_agent, "flaky job")
    await expect(tile).to_have_text("1")
    await expect(tile).to_have_css("color", red)
    await expect(summary).to_have_css("color", red)


async def test_the_top_bar_shows_the_hubs_version_and_uptime(
    hub: HubServer,
    settings: Settings,
    clock: ManualClock,
    make_token: TokenMaker,
    open_dashboard: PageOpener,
) -> None:
    # given a hub up for two hours and five minutes
    clock.advance((2 * 60 + 5) * 60_000)

    # when the page opens, the top bar says which hub it is and how long it has run
    page = await open_dashboard(make_token("ops", "admin"))
    info = page.locator("#hub-info")
    await expect(info).to_have_text(f"hub {__version__} · up 2 h 05 min")

    # when the hub stops, the page claims no uptime while it reconnects
    port = hub.port
    await hub.stop()
    await expect(page.locator("#connection")).to_contain_text("reconnecting")
    await expect(info).to_be_hidden()

    # and once a new hub is up, it counts from that hub's start
    restarted = HubServer(settings.model_copy(update={"port": port}), clock=clock, run_sweeps=False)
    await restarted.start()
    try:
        await expect(info).to_have_text(re.compile(rf"^hub {re.escape(__version__)} · up \d+ s$"))
    finally:
        await restarted.stop()


async def test_an_agent_token_in_the_gate_is_told_which_token_is_needed(
    hub: HubServer, make_token: TokenMaker, browser: Browser, http_url: str
) -> None:
    # given the page opened without a token
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(f"{http_url}/dashboard")
        token_field = page.get_by_label("Hub token")

        # when a sidecar's token is pasted, the page says which token would do
        await token_field.fill(make_token("worker-1"))
        await page.get_by_role("button", name="Connect").click()
        await expect(page.locator("#token-error")).to_have_text(
            f"The hub refused this token: {AGENT_TOKEN_REFUSED}."
        )
        await expect(token_field).to_be_visible()

        # and a token the hub does not know gets no such hint
        await token_field.fill("ac_not_a_token")
        await page.get_by_role("button", name="Connect").click()
        await expect(page.locator("#token-error")).to_have_text(
            "The hub refused this token. Paste another one."
        )
    finally:
        await context.close()


async def test_the_task_table_shows_no_stand_in_rows_and_agrees_with_the_counters(
    hub: HubServer,
    operator: OperatorClient,
    make_agent: AgentMaker,
    make_token: TokenMaker,
    open_dashboard: PageOpener,
) -> None:
    # given the page open, recording any task row drawn without its description
    page = await open_dashboard(make_token("ops", "admin"))
    await page.evaluate("""() => {
        window.standIns = [];
        const rows = document.getElementById("task-rows");
        new MutationObserver(() => {
            for (const cell of rows.querySelectorAll("td.description")) {
                const text = cell.textContent.trim();
                if (!text || text === "\N{HORIZONTAL ELLIPSIS}") window.standIns.push(text);
            }
        }).observe(rows, { childList: true, subtree: true, characterData: true });
    }""")

    # when 30 tasks arrive while a sidecar works through 10 of them, printing as it goes
    agent = await make_agent("worker-1")
    for number in range(30):
        await operator.submit(f"task number {number}", complexity_tier="complex")
    for _ in range(10):
        assign = await agent.receive_type("task_assign")
        task_id = assign["task_id"]
        await agent.send({"type": "task_accepted", "task_id": task_id})
        await agent.receive_type("task_ack")
        progress = {"event_type": "stdout", "text": f"working on {task_id}"}
        await agent.send({"type": "task_progress", "task_id": task_id, "execution_event": progress})
        await agent.send({"type": "task_complete", "task_id": task_id,
                          "generation": assign["generation"], "result": METADATA})  # fmt: skip
        await agent.receive_type("task_ack")

    # then the counters settle on the hub's figures
    expected = {"completed": 10, "assigned": 1, "queued": 19}
    for status, number in expected.items():
        await expect(page.locator(f"#status-{status}")).to_have_text(str(number))

    # and the table filtered by each status has as many rows as its counter
    for status, number in expected.items():
        await page.get_by_label("Status").select_option(status)
        await expect(page.locator("#task-rows tr[data-task-id]")).to_have_count(number)
        await expect(page.locator("#tasks-summary")).to_have_text(f"{number} shown")

    # and no row was ever drawn without its description
    assert await page.evaluate("window.standIns") == []


async def test_a_status_filter_says_how_many_of_the_hubs_tasks_it_shows(
    hub: HubServer, operator: OperatorClient, make_token: TokenMaker, open_dashboard: PageOpener
) -> None:
    # given more cancelled tasks than the page reads when it connects (the latest 200)
    for number in range(210):
        task = await operator.submit(f"never mind {number}")
        await operator.request("task_cancel", task_id=task["task_id"])

    # when the operator filters the table by that status
    page = await open_dashboard(make_token("ops", "admin"))
    await expect(page.locator("#status-cancelled")).to_have_text("210")
    await page.get_by_label("Status").select_option("cancelled")

    # then the table says it shows part of what the counter counts
    await expect(page.locator("#task-rows tr[data-task-id]")).to_have_count(200)
    await expect(page.locator("#tasks-summary")).to_have_text("showing 200 of 210")


async def test_an_admin_approves_a_sidecars_endpoint_for_every_agent(
    hub: HubServer,
    operator: OperatorClient,
    make_agent: AgentMaker,
    make_token: TokenMaker,
    open_dashboard: PageOpener,
    ollama: OllamaStandin,  # noqa: F811
) -> None:
    # given a sidecar that reported its own Ollama, and an admin's and a viewer's pages
    ollama.serve(models=MODELS)
    await make_agent("gpu-box", ollama_url=ollama.url)
    page = await open_dashboard(make_token("ops", "admin"))
    viewer = await open_dashboard(make_token("watcher", "viewer"))
    card = page.get_by_role("article", name="Endpoint gpu-box-local")
    watched = viewer.get_by_role("article", name="Endpoint gpu-box-local")

    # then both say it serves its own agent only, and only the admin may approve it
    await expect(card).to_contain_text("sidecar gpu-box (its own tasks only)")
    await expect(watched).to_contain_text("sidecar gpu-box (its own tasks only)")
    await expect(viewer.get_by_role("button", name=re.compile("^Approve"))).to_have_count(0)

    # when the admin presses Approve, it only asks for confirmation
    await card.get_by_role("button", name="Approve endpoint gpu-box-local").click()
    confirm = card.get_by_role("button", name="Confirm: Approve endpoint gpu-box-local")
    await expect(confirm).to_be_visible()
    assert [e["approved"] for e in await operator.request("endpoints_list")] == [False]

    # and when they confirm, the hub has approved it, and both pages say so
    await confirm.click()
    await expect(page.locator("#action-status")).to_have_text(
        "Endpoint gpu-box-local approved: it serves every agent."
    )
    await expect(card).to_contain_text("sidecar gpu-box (approved for every agent)")
    await expect(watched).to_contain_text("sidecar gpu-box (approved for every agent)")
    await expect(card.get_by_role("button", name=re.compile("^Approve"))).to_have_count(0)
    assert [e["approved"] for e in await operator.request("endpoints_list")] == [True]


async def test_the_submit_form_takes_prerequisites_and_names_unknown_ones(
    operator: OperatorClient, make_token: TokenMaker, open_dashboard: PageOpener
) -> None:
    # given a queued task and an admin's page
    first = (await operator.submit("build it", needed_capabilities=["builder"]))["task_id"]
    page = await open_dashboard(make_token("ops", "admin"))

    # when a task is submitted that depends on it and on a task that does not exist
    await page.get_by_label("Description").fill("test it")
    await page.get_by_label("Depends on").fill(f"{first}, {'f' * 32}")
    await page.get_by_role("button", name="Submit task").click()

    # then it is refused, naming the unknown one
    await expect(page.locator("#submit-result")).to_contain_text(f"no such tasks: {'f' * 32}")

    # and with the known one alone it is queued, waiting for it
    await page.get_by_label("Depends on").fill(first)
    await page.get_by_role("button", name="Submit task").click()
    await expect(page.locator("#submit-result")).to_contain_text("Queued task")
    (dependant,) = [task for task in await operator.request("task_list")
                    if task["description"] == "test it"]  # fmt: skip
    assert dependant["depends_on"] == [first]


async def test_task_detail_links_prerequisites_and_dependants_and_shows_tool_calls(
    make_agent: AgentMaker,
    operator: OperatorClient,
    make_token: TokenMaker,
    open_dashboard: PageOpener,
) -> None:
    # given a prerequisite an agentic run completed after one tool call, and its dependant
    agent, first, generation = await _working_task(operator, make_agent, "worker-1", "build it")
    second = (await operator.submit("test it", depends_on=[first],
                                    needed_capabilities=["tester"]))["task_id"]  # fmt: skip
    for summary in ({"args_summary": '{"cmd":"make"}'}, {"result_summary": "OK: built"}):
        event = {"event_type": "tool_call", "tool_name": "run", "iteration": 1, **summary}
        await agent.send({"type": "task_progress", "task_id": first, "execution_event": event})
    result = {**METADATA, "termination_reason": "final_answer", "iterations_used": 2}
    await agent.send({"type": "task_complete", "task_id": first, "generation": generation,
                      "result": result})  # fmt: skip
    await agent.receive_type("task_ack")
    page = await open_dashboard(make_token("ops", "admin"))

    # when the operator opens the dependant's detail
    await _task_row(page, second).get_by_text("test it").click()
    detail = page.get_by_role("dialog")

    # then it links to its prerequisite, which opens in its place
    dependencies = _detail_section(detail, "Dependencies")
    await expect(dependencies.locator("dt")).to_have_text(["Prerequisites"])
    await dependencies.get_by_role("button", name=first).click()
    await expect(detail.get_by_role("heading", name=f"Task {first}")).to_be_visible()

    # and the prerequisite links back to it and shows its tool call with its result
    await expect(_detail_section(detail, "Dependencies").locator("dd")).to_have_text(second)
    run = _detail_section(detail, "Agentic run")
    await expect(run).to_contain_text("stopped: final_answer after 2 iterations · 1 tool calls")
    await expect(run.get_by_role("listitem")).to_contain_text(['#1 run {"cmd":"make"} → OK: built'])


class _Pm2Sidecar(AgentClient):
    """A sidecar run under pm2: its identify says so, as the latest AgentCom sidecar's does."""

    def identify_frame(self) -> dict[str, object]:
        frame: dict[str, object] = super().identify_frame()
        frame["pm2_info"] = {"name": "agentcom-sc1", "status": "online", "uptime_ms": 60_000,
                             "restart_count": 3, "memory_bytes": 52_428_800}  # fmt: skip
        return frame


async def test_an_admin_restarts_a_sidecar_from_its_card_after_a_confirmation(
    ws_url: str, make_token: TokenMaker, open_dashboard: PageOpener
) -> None:
    # given a sidecar under pm2, and an admin's page
    sidecar = _Pm2Sidecar(ws_url, "sc1", make_token("sc1"), heartbeat_s=None)
    await sidecar.connect()
    page = await open_dashboard(make_token("ops", "admin"))
    card = page.get_by_role("article", name="Agent sc1")
    await expect(card.locator(".agent-pm2")).to_have_text(
        "pm2 agentcom-sc1 online, 3 restarts, 50 MiB"
    )

    # when the admin clicks Restart, then confirms
    await card.get_by_role("button", name="Restart agent sc1").click()
    await card.get_by_role("button", name="Confirm restart: Restart agent sc1").click()

    # then the sidecar is asked, and once it says it restarts, its card says so
    pushed = await sidecar.receive_type("restart_sidecar")
    assert pushed == {"type": "restart_sidecar", "reason": "asked from the dashboard"}
    await sidecar.send({"type": "agent_restarting", "reason": "asked from the dashboard"})
    await expect(card.locator(".agent-restarting")).to_contain_text(": asked from the dashboard")
    await sidecar.close()
