"""``/metrics`` of a live hub after a scripted workload, read with prometheus_client's parser."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml
from conftest import METADATA, AgentMaker
from prometheus_client.parser import text_string_to_metric_families

from agentcom.client import AgentClient, OperatorClient, RequestFailed
from agentcom.config import Settings
from agentcom.hub.clock import ManualClock
from agentcom.server.app import HubServer
from agentcom.server.metrics import OTHER, LoopLagMonitor, requeue_cause

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "agentcom-alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "agentcom-dashboard.json"
METRIC_NAME = re.compile(r"\b(?:agentcom|process)_[a-z0-9_]+")
SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


async def scrape(http_url: str) -> Samples:
    """Every sample of ``/metrics``, keyed by sample name and labels."""

    def fetch() -> str:
        with urllib.request.urlopen(f"{http_url}/metrics", timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text: str = response.read().decode()
            return text

    text = await asyncio.to_thread(fetch)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; a labelled series never touched reads as 0."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (sample, keys), v in samples.items() if sample == name and wanted <= keys)


async def settle_task(
    agent: AgentClient, clock: ManualClock, frame: Mapping[str, object], after_ms: int
) -> dict[str, object]:
    """Move the clock, send a task frame, and return the hub's ack."""
    clock.advance(after_ms)
    await agent.send(dict(frame))
    return await agent.receive_type("task_ack")


async def test_workload_counts_and_histograms_match_what_happened(
    hub: HubServer,
    make_agent: AgentMaker,
    operator: OperatorClient,
    http_url: str,
    clock: ManualClock,
) -> None:
    # given two tasks queued while no agent is connected
    first = await operator.submit("first", priority="high", complexity_tier="complex")
    second = await operator.submit("second", complexity_tier="complex", max_retries=1)

    clock.advance(3_000)
    waiting = await scrape(http_url)
    assert value(waiting, "agentcom_queue_depth") == 2
    assert value(waiting, "agentcom_queued_tasks", capability="none") == 2
    assert value(waiting, "agentcom_queue_oldest_age_seconds") == 3.0
    assert value(waiting, "agentcom_agents_connected") == 0

    # when an agent comes 3 s later: it runs the first (accepted after 1 s, 10 s of work),
    agent = await make_agent("worker-1")
    assign = await agent.receive_type("task_assign")
    assert assign["task_id"] == first["task_id"]
    accepted = {"type": "task_accepted", "task_id": first["task_id"]}
    await settle_task(agent, clock, accepted, 1_000)
    complete = {"type": "task_complete", "task_id": first["task_id"], "generation": 1,
                "result": METADATA}  # fmt: skip
    assert (await settle_task(agent, clock, complete, 10_000))["status"] == "complete"
    # then the second: accepted after 0.5 s, failed after 2 s, retried at once,
    assign = await agent.receive_type("task_assign")
    assert assign["task_id"] == second["task_id"]
    accepted = {"type": "task_accepted", "task_id": second["task_id"]}
    await settle_task(agent, clock, accepted, 500)
    failed = {"type": "task_failed", "task_id": second["task_id"], "generation": 1,
              "error": "boom"}  # fmt: skip
    assert (await settle_task(agent, clock, failed, 2_000))["status"] == "retried"
    # accepted again after 0.5 s and completed 3 s later;
    assign = await agent.receive_type("task_assign")
    assert assign["generation"] == 2
    await settle_task(agent, clock, accepted, 500)
    complete = {**complete, "task_id": second["task_id"], "generation": 2}
    assert (await settle_task(agent, clock, complete, 3_000))["status"] == "complete"
    # and a frame with a bad field is refused.
    await agent.send({"type": "task_accepted", "task_id": 42})
    assert (await agent.receive_type("error"))["error"] == "validation_failed"

    samples = await scrape(http_url)

    # then the task histograms hold exactly those durations
    assert value(samples, "agentcom_task_queue_wait_seconds_count", priority="high") == 1
    assert value(samples, "agentcom_task_queue_wait_seconds_sum", priority="high") == 3.0
    assert value(samples, "agentcom_task_queue_wait_seconds_count", priority="normal") == 2
    assert value(samples, "agentcom_task_queue_wait_seconds_sum", priority="normal") == 14.0
    assert value(samples, "agentcom_task_accept_delay_seconds_count") == 3
    assert value(samples, "agentcom_task_accept_delay_seconds_sum") == 2.0
    assert value(samples, "agentcom_task_run_seconds_count", outcome="completed") == 2
    assert value(samples, "agentcom_task_run_seconds_sum", outcome="completed") == 13.0
    assert value(samples, "agentcom_task_run_seconds_count", outcome="failed") == 1
    assert value(samples, "agentcom_task_run_seconds_sum", outcome="failed") == 2.0
    assert value(samples, "agentcom_task_end_to_end_seconds_count", status="completed") == 2
    assert value(samples, "agentcom_task_end_to_end_seconds_sum", status="completed") == 34.0
    # a bucket counts what is at most its bound: 3 s fits 5 s, 14 s does not fit 10 s
    assert value(samples, "agentcom_task_queue_wait_seconds_bucket",
                 priority="normal", le="10.0") == 1  # fmt: skip
    # and the counters match the transitions, the retry and the agent's attempts
    transitions = "agentcom_task_transitions_total"
    assert total(samples, transitions, status="queued") == 3
    assert total(samples, transitions, status="assigned") == 3
    assert total(samples, transitions, status="working") == 3
    assert total(samples, transitions, status="completed") == 2
    assert value(samples, transitions, status="completed", priority="high", tier="complex",
                 target="claude") == 1  # fmt: skip
    assert value(samples, transitions, status="queued", priority="high", tier="none",
                 target="none") == 1  # fmt: skip
    assert value(samples, "agentcom_task_retries_total") == 1
    assert total(samples, "agentcom_task_dead_letters_total") == 0
    assert value(samples, "agentcom_agent_tasks_total", agent="worker-1",
                 outcome="completed") == 2  # fmt: skip
    assert value(samples, "agentcom_agent_tasks_total", agent="worker-1", outcome="failed") == 1
    model = "qwen2.5-coder:7b"
    assert value(samples, "agentcom_task_tokens_total", model=model, direction="in") == 240
    assert value(samples, "agentcom_task_tokens_total", model=model, direction="out") == 96
    cost = value(samples, "agentcom_task_cost_usd_total", model=model, kind="claude_equivalent")
    assert cost == pytest.approx(0.00216)
    # frames in and out by type, and the refused field
    received = "agentcom_frames_received_total"
    assert value(samples, received, type="identify") == 1
    assert value(samples, received, type="task_accepted") == 3
    assert value(samples, received, type="task_complete") == 2
    assert value(samples, received, type="task_failed") == 1
    assert value(samples, received, type="invalid") == 1
    assert value(samples, "agentcom_frames_sent_total", type="task_assign") == 3
    assert value(samples, "agentcom_frames_sent_total", type="task_ack") == 6
    assert value(samples, "agentcom_validation_errors_total", field="task_id") == 1
    assert value(samples, "agentcom_violations_total", error="validation_failed") == 1
    # state read at scrape time
    assert value(samples, "agentcom_agents_connected") == 1
    assert value(samples, "agentcom_agents_by_state", state="idle") == 1
    assert value(samples, "agentcom_agents", state="idle", capability="none") == 1
    assert value(samples, "agentcom_queue_depth") == 0
    assert value(samples, "agentcom_tasks_active") == 0
    assert value(samples, "agentcom_websocket_connections_open", path="/ws") == 1
    assert value(samples, "agentcom_websocket_connections_total", path="/ws/operator") == 1
    # every written transaction is timed, and the process is described
    commits = value(samples, "agentcom_store_commits_total")
    assert commits > 0
    assert value(samples, "agentcom_store_commit_seconds_count") == commits
    assert value(samples, "agentcom_store_commit_batch_size_count") == commits
    assert value(samples, "agentcom_store_failures_total") == 0
    assert value(samples, "process_resident_memory_bytes") > 0


async def test_rejections_reclaims_and_dead_letters_are_counted_by_cause(
    hub: HubServer,
    make_agent: AgentMaker,
    operator: OperatorClient,
    http_url: str,
    clock: ManualClock,
) -> None:
    # given an agent that rejects a task, then lets it time out unaccepted
    agent = await make_agent("worker-1")
    task = await operator.submit("declined", max_retries=0, complexity_tier="complex")
    await agent.receive_type("task_assign")
    await agent.send({"type": "task_rejected", "task_id": task["task_id"], "reason": "busy"})
    await agent.receive_type("task_ack")
    await agent.send({"type": "ping"})  # its next frame: it may be offered work again
    assign = await agent.receive_type("task_assign")
    clock.advance(int(hub.settings.accept_timeout_s * 1000))
    await agent.send({"type": "ping"})  # alive, so the sweep keeps its connection
    await agent.receive_type("pong")
    await hub.sweep()
    assign = await agent.receive_type("task_assign")
    # when the third attempt fails with no retries left
    await agent.send({"type": "task_failed", "task_id": task["task_id"],
                      "generation": assign["generation"], "error": "no"})  # fmt: skip
    assert (await agent.receive_type("task_ack"))["status"] == "dead_letter"

    samples = await scrape(http_url)

    # then each cause has its own count
    assert value(samples, "agentcom_task_rejections_total") == 1
    assert value(samples, "agentcom_task_reclaims_total", reason="acceptance_timeout") == 1
    assert value(samples, "agentcom_task_dead_letters_total", reason="no_retries") == 1
    assert value(samples, "agentcom_task_end_to_end_seconds_count", status="dead_letter") == 1
    assert value(samples, "agentcom_task_retries_total") == 0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Every hub here keeps one value per bounded label (agents, models, fields), and
    gives up a locked database after 0.2 s."""
    return settings.model_copy(update={"metrics_label_cap": 1, "db_busy_timeout_s": 0.2})


async def test_agent_labels_past_the_cap_are_counted_as_other(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient, http_url: str
) -> None:
    # given a cap of one agent label and two agents that each complete a task
    for agent_id in ("worker-1", "worker-2"):
        agent = await make_agent(agent_id, capabilities=[agent_id])
        task = await operator.submit(
            f"for {agent_id}", complexity_tier="complex", needed_capabilities=[agent_id]
        )
        await agent.receive_type("task_assign")
        await agent.send({"type": "task_complete", "task_id": task["task_id"],
                          "generation": 1, "result": METADATA})  # fmt: skip
        await agent.receive_type("task_ack")

    samples = await scrape(http_url)

    # then the first keeps its label and the second is under other
    completed = "agentcom_agent_tasks_total"
    assert value(samples, completed, agent="worker-1", outcome="completed") == 1
    assert value(samples, completed, agent=OTHER, outcome="completed") == 1
    assert value(samples, completed, agent="worker-2", outcome="completed") == 0
    assert value(samples, "agentcom_agents", state="idle", capability="worker-2") == 1


@pytest.mark.parametrize(
    ("reason", "cause"),
    [
        ("acceptance_timeout", "acceptance_timeout"),
        ("no_progress", "no_progress"),
        ("operator_retry", "operator_retry"),
        ("rejected by worker-1: busy", "rejected"),
        ("requeued by an operator from worker-1", "operator"),
        ("worker-1 did not come back in time", "disconnect_grace"),
        ("worker-1 restarted while running it", "agent_restarted"),
        ("something new", OTHER),
    ],
)
def test_requeue_reasons_map_to_bounded_causes(reason: str, cause: str) -> None:
    assert requeue_cause(reason) == cause


async def exported_names(http_url: str) -> set[str]:
    """Every sample name ``/metrics`` can carry, for series with and without samples yet."""

    def fetch() -> str:
        with urllib.request.urlopen(f"{http_url}/metrics", timeout=10) as response:
            text: str = response.read().decode()
            return text

    names = set()
    for family in text_string_to_metric_families(await asyncio.to_thread(fetch)):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SAMPLE_SUFFIXES.get(family.type, ()))
    return names


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def alert_rules() -> list[dict[str, object]]:
    rules_file = yaml.safe_load(RULES.read_text())
    return [rule for group in rules_file["groups"] for rule in group["rules"]]


async def test_every_dashboard_and_alert_query_names_a_metric_the_hub_exports(
    hub: HubServer, http_url: str
) -> None:
    # given what a fresh hub exports
    exported = await exported_names(http_url)

    # when the metric names of every dashboard query and alert expression are read
    queries = dashboard_queries() + [str(rule["expr"]) for rule in alert_rules()]
    named = {name for query in queries for name in METRIC_NAME.findall(query)}

    # then each is exported, and the dashboard shows every part of the hub
    assert len(queries) >= 30
    assert named - exported == set()
    assert {"agentcom_queue_depth", "agentcom_task_queue_wait_seconds_bucket",
            "agentcom_task_run_seconds_bucket", "agentcom_task_cost_usd_total",
            "agentcom_agents_by_state", "agentcom_store_failing",
            "agentcom_event_loop_lag_seconds_bucket"} <= named  # fmt: skip


def test_alert_rules_file_has_the_five_alerts_in_prometheus_form() -> None:
    # when the rules file is read as Prometheus reads it (YAML)
    rules = alert_rules()

    # then it holds the five alerts, each complete
    assert [rule["alert"] for rule in rules] == [
        "AgentcomQueueGrowing", "AgentcomOldestTaskWaiting", "AgentcomTaskFailureRate",
        "AgentcomNoAgentForCapability", "AgentcomStoreFailing",
    ]  # fmt: skip
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}
        assert re.fullmatch(r"[0-9]+[smh]", str(rule["for"]))
        assert rule["labels"]["severity"] in {"warning", "critical"}  # type: ignore[index]
        assert {"summary", "description"} <= set(rule["annotations"])  # type: ignore[arg-type]
        expr = str(rule["expr"])
        assert expr.count("(") == expr.count(")")


async def test_a_refused_transaction_is_counted_and_the_store_reported_failing(
    hub: HubServer, operator: OperatorClient, http_url: str
) -> None:
    # given another process holding the database's write lock
    lock = sqlite3.connect(hub.settings.db, timeout=10, isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        # when a submit cannot be written
        with pytest.raises(RequestFailed) as refusal:
            await operator.submit("refused")
        assert refusal.value.code == "store_unavailable"
        samples = await scrape(http_url)
    finally:
        lock.execute("ROLLBACK")
        lock.close()

    # then the failure is counted and the store reported failing
    assert value(samples, "agentcom_store_failures_total") == 1
    assert value(samples, "agentcom_store_failing") == 1


async def test_refused_and_dropped_frames_are_counted_by_rate_limit_bucket(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient, http_url: str
) -> None:
    # given an agent working on a task
    agent = await make_agent("worker-1")
    task = await operator.submit("chatty", complexity_tier="complex")
    await agent.receive_type("task_assign")
    # when it sends more progress frames than its bucket holds, then a final ping
    burst = hub.settings.progress_burst
    for _ in range(burst + 5):
        await agent.send({"type": "task_progress", "task_id": task["task_id"], "progress": 1})
    await agent.send({"type": "ping"})
    await agent.receive_type("pong")

    samples = await scrape(http_url)

    # then the five beyond the bucket are counted as dropped, and every frame by type
    assert value(samples, "agentcom_rate_limited_total", tier="progress") == 5
    assert value(samples, "agentcom_progress_dropped_total") == 5
    assert value(samples, "agentcom_frames_received_total", type="task_progress") == burst + 5


async def test_event_loop_lag_is_how_late_the_timer_fired(hub: HubServer) -> None:
    # given a lag monitor waiting on a 10 ms timer
    monitor = LoopLagMonitor(hub.metrics, 0.01)
    measuring = asyncio.create_task(monitor.measure_once())
    await asyncio.sleep(0)  # let it arm its timer

    # when the loop is blocked for 50 ms
    time.sleep(0.05)
    lag = await measuring

    # then the timer fired at least 40 ms late, and the histogram says so
    assert lag >= 0.04
    registry = hub.metrics.registry
    assert registry.get_sample_value("agentcom_event_loop_lag_seconds_count") == 1
    assert registry.get_sample_value("agentcom_event_loop_lag_seconds_sum") == lag


async def test_the_slowest_subscribers_backlog_is_exported(
    hub: HubServer, operator: OperatorClient, http_url: str
) -> None:
    # given a subscriber of the tasks topic that reads nothing
    subscription = hub.pubsub.subscribe(["tasks"])
    try:
        # when two tasks are submitted (one task_submitted event each)
        await operator.submit("one")
        await operator.submit("two")
        samples = await scrape(http_url)
    finally:
        hub.pubsub.unsubscribe(subscription)

    # then its two unread events are the backlog
    assert value(samples, "agentcom_subscriber_queue_max") == 2
    assert value(samples, "agentcom_subscribers") == 1


async def test_events_dropped_from_a_slow_subscriber_are_exported_by_topic(
    hub: HubServer, http_url: str
) -> None:
    # given a subscriber of every topic that reads nothing
    subscription = hub.pubsub.subscribe()
    try:
        # when two more agent events are published than its queue holds
        for n in range(hub.settings.subscriber_queue + 2):
            hub.pubsub.publish("agents", {"type": "agent_event", "n": n})
        samples = await scrape(http_url)
    finally:
        hub.pubsub.unsubscribe(subscription)

    # then the two oldest are counted as dropped, under their topic
    assert value(samples, "agentcom_events_dropped_total", topic="agents") == 2
    assert value(samples, "agentcom_events_dropped_total", topic="tasks") == 0


def test_each_hub_in_a_process_counts_in_its_own_registry(settings: Settings) -> None:
    # given two hubs in one process
    first, second = HubServer(settings), HubServer(settings)

    # when one counts a frame
    first.metrics.frames_received["ping"].inc()

    # then only its registry has it
    labels = {"type": "ping"}
    assert first.metrics.registry.get_sample_value("agentcom_frames_received_total", labels) == 1
    assert (
        second.metrics.registry.get_sample_value("agentcom_frames_received_total", labels) is None
    )
