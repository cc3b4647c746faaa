"""The hub's Prometheus metrics: one registry per hub, rendered at ``/metrics``.

Every metric lives in the hub's own :class:`CollectorRegistry` (never the library's
global one), so several hubs in one process each export their own figures.

Three kinds of figures:

- **Counted as things happen**: frames, task transitions and their histograms, store
  writes. The hot path pays one dict lookup and one increment: label children are bound
  once and cached by their label values (:class:`_TallyFamily` for counters and
  :class:`_HistogramFamily` for histograms: plain numbers, read when scraped).
- **Read at scrape time** by :class:`_StateCollector`: agents by state and capability,
  queue depth and age, store and subscriber figures. Nothing is maintained per frame for
  them; a scrape walks the agents once.
- **The process**: CPU, memory, file descriptors (``process_*``, from
  ``prometheus_client``'s process collector, registered on the hub's registry).

Labels whose values operators or sidecars choose (agent ids, model names, field names)
keep at most ``label_cap`` distinct values each; later ones are counted under
``other`` (:class:`BoundedLabel`).

The module is longer than the others because every metric is declared here, in one
registry, so that a reader finds each figure and its help text in one place.

The module is long because it is the one place that names every metric: its name, help,
labels and buckets, and the hooks that count it; splitting it by subsystem would scatter
the catalogue that dashboards and alert rules are written against.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from agentcom.protocol.common import Outbound, TaskStatus
from agentcom.protocol.outbound import ValidationFailed
from agentcom.protocol.task import Task

if TYPE_CHECKING:
    from agentcom.hub.clock import Clock
    from agentcom.hub.hub import Hub
    from agentcom.protocol.outbound import ErrorReply
    from agentcom.pubsub.base import PubSub
    from agentcom.server.cluster import SharedNode
    from agentcom.server.guard import Guard
    from agentcom.server.output import ReplyBudget
    from agentcom.server.sockets import AcceptFailureLog
    from agentcom.server.waiters import TaskWaiters
    from agentcom.store.base import ObservedStore

__all__ = [
    "CONTENT_TYPE",
    "DURATION_BUCKETS_S",
    "OTHER",
    "BoundedLabel",
    "HubMetrics",
    "LoopLagMonitor",
    "MetricsSource",
    "requeue_cause",
]

# The classic text format: every Prometheus version reads it, and our names need no escaping.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER = "other"  # the value of a bounded label past its cap
NONE = "none"  # a label with no value yet (no tier before routing, no capability)

#: Task durations: agent work takes from milliseconds (a no-op) to hours.
DURATION_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0,
)  # fmt: skip
_COMMIT_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
_LAG_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# task_requeued / task_reclaimed reasons (docs/protocol.md) -> a bounded cause.
_FIXED_CAUSES = frozenset({"acceptance_timeout", "no_progress", "operator_retry"})
_RECLAIM_CAUSES = frozenset(
    {"acceptance_timeout", "no_progress", "disconnect_grace", "agent_restarted"}
)


def requeue_cause(reason: str) -> str:
    """The bounded cause of a ``task_requeued`` or ``task_reclaimed`` event's ``reason``:
    ``rejected``, ``operator``, ``operator_retry``, ``acceptance_timeout``,
    ``no_progress``, ``disconnect_grace``, ``agent_restarted`` or ``other``."""
    if reason in _FIXED_CAUSES:
        return reason
    if reason.startswith("rejected by "):
        return "rejected"
    if reason.startswith("requeued by an operator"):
        return "operator"
    if reason.endswith(" did not come back in time"):
        return "disconnect_grace"
    if reason.endswith(" restarted while running it"):
        return "agent_restarted"
    return OTHER


class BoundedLabel:
    """The values of one label that others choose, at most ``cap`` distinct.

    The first ``cap`` values seen are kept as they are; any later one becomes
    ``other``, so a hub that meets ten thousand agent ids still exports ``cap + 1``
    series per metric.
    """

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._kept: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._kept:
            return value
        if len(self._kept) >= self._cap:
            return OTHER
        self._kept.add(value)
        return value


_Child = TypeVar("_Child")


class _Tally:
    """One labelled count: a float the hot path adds to (no lock: the hub's counting all
    happens on its event loop's thread), read by :class:`_TallyFamily` at scrape time."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (1 by default)."""
        self.value += amount


class _Family(dict[Any, _Child], Collector):
    """A labelled metric whose children are plain Python objects, found by one dict lookup
    (keys: a label value, a tuple of them, or ``()`` without labels), bound on first use,
    and exported when scraped.

    ``prometheus_client``'s own metric objects take a lock and check their state on every
    increment, about a microsecond each; the frames of one task make some twenty of them.
    """

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...]) -> None:
        super().__init__()
        self._name = name
        self._documentation = documentation
        self._labels = labels

    def _new_child(self) -> _Child:
        raise NotImplementedError

    def __missing__(self, key: Any) -> _Child:
        child = self[key] = self._new_child()
        return child

    # The registry keys its collectors by identity; a dict's equality must not apply.
    __hash__ = object.__hash__  # type: ignore[assignment]
    __eq__ = object.__eq__

    def _labelled(self) -> list[tuple[list[str], _Child]]:
        """Each child with its label values, as text."""
        return [
            ([str(value) for value in (key if isinstance(key, tuple) else (key,))], child)
            for key, child in list(self.items())
        ]


class _TallyFamily(_Family[_Tally]):
    """A labelled counter of :class:`_Tally` children."""

    def _new_child(self) -> _Tally:
        return _Tally()

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labels)
        for values, child in self._labelled():
            family.add_metric(values, child.value)
        yield family


class _Observations:
    """One labelled histogram: a count per bucket and a sum, added to without a lock (all
    on the event loop's thread) and read by :class:`_HistogramFamily` at scrape time.

    Args:
        bounds: the buckets' upper bounds, ascending, ending with infinity; a value equal
            to a bound counts in that bucket, as Prometheus's ``le`` says.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        """Count one observation of ``amount``."""
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


class _HistogramFamily(_Family[_Observations]):
    """A labelled histogram of :class:`_Observations` children."""

    def __init__(
        self, name: str, documentation: str, buckets: tuple[float, ...], labels: tuple[str, ...]
    ) -> None:
        super().__init__(name, documentation, labels)
        self._bounds = buckets if buckets[-1] == math.inf else (*buckets, math.inf)

    def _new_child(self) -> _Observations:
        return _Observations(self._bounds)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labels)
        for values, child in self._labelled():
            buckets = [
                (floatToGoString(bound), float(count))  # type: ignore[no-untyped-call]
                for bound, count in zip(self._bounds, accumulate(child.counts), strict=True)
            ]
            family.add_metric(values, buckets, child.sum)
        yield family


def _frame_type(frame_class: type[Outbound]) -> str:
    field = frame_class.model_fields.get("type")
    default = field.default if field is not None else None
    return default if isinstance(default, str) else frame_class.__name__


class _SentByClass(dict[type[Outbound], Any]):
    """Children of ``agentcom_frames_sent_total`` by frame class (no per-frame lookup of
    the ``type`` field)."""

    def __init__(self, children: _TallyFamily) -> None:
        super().__init__()
        self._children = children

    def __missing__(self, frame_class: type[Outbound]) -> Any:
        child = self[frame_class] = self._children[_frame_type(frame_class)]
        return child


def _seconds(start_ms: int | None, end_ms: int) -> float | None:
    return None if start_ms is None else max(0, end_ms - start_ms) / 1000


def _queued_since(task: Task) -> int:
    """When an assigned task last entered the queue: the entry before its assignment."""
    history = task.history
    if len(history) >= 2 and history[-2].status == TaskStatus.queued.value:
        return history[-2].at
    return task.created_at


def _started_at(task: Task) -> int | None:
    """When the current attempt started running: accepted, else assigned."""
    for entry in reversed(task.history):
        if entry.status in (TaskStatus.working.value, TaskStatus.assigned.value):
            return entry.at
    return task.assigned_at


class MetricsSource(Protocol):
    """What the scrape reads of the hub (``HubServer`` is the one implementation): named
    here so that this module needs nothing of ``app``."""

    @property
    def restored(self) -> bool:
        """Whether the hub's state is there to read."""

    @property
    def clock(self) -> Clock:
        """The hub's time source."""

    @property
    def hub(self) -> Hub:
        """The domain, for the agent and queue gauges."""

    @property
    def store(self) -> ObservedStore:
        """The store, for its count of transactions."""

    @property
    def store_failing(self) -> bool:
        """Whether the last write failed."""

    @property
    def pubsub(self) -> PubSub:
        """Subscriptions and their drops."""

    @property
    def waiters(self) -> TaskWaiters:
        """``task_wait`` requests waiting."""

    @property
    def shared(self) -> SharedNode | None:
        """This node's part among nodes sharing the database, if it shares it."""

    @property
    def guard(self) -> Guard:
        """Connections admitted and refused."""

    @property
    def replies(self) -> ReplyBudget:
        """Reply bytes unread."""

    @property
    def accept_failures(self) -> AcceptFailureLog:
        """Failed ``accept()`` calls."""


class HubMetrics:
    """Every metric of one hub, in its own registry.

    Args:
        server: the hub whose state the scrape-time collector reads.
        label_cap: distinct values kept per bounded label (agent ids, models, fields).
    """

    def __init__(self, server: MetricsSource, label_cap: int) -> None:
        # ``*_created`` series double a scrape and no query here uses them. The switch is
        # the library's, for the whole process: the hub process exports nothing else.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        self._server = server
        registry = self.registry

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, registry=registry)

        def counters(name: str, doc: str, *labels: str) -> _TallyFamily:
            family = _TallyFamily(name, doc, labels)
            registry.register(family)
            return family

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> _Observations:
            return histograms(name, doc, buckets)[()]

        def histograms(
            name: str, doc: str, buckets: tuple[float, ...], *labels: str
        ) -> _HistogramFamily:
            family = _HistogramFamily(name, doc, buckets, labels)
            registry.register(family)
            return family

        # --- tasks ----------------------------------------------------------------
        self.transitions = counters("agentcom_task_transitions",
            "Task transitions, by the status entered.",
            "status", "priority", "tier", "target")  # fmt: skip
        self.queue_wait = histograms("agentcom_task_queue_wait_seconds",
            "From entering the queue (submitted or requeued) to assignment.",
            DURATION_BUCKETS_S, "priority")  # fmt: skip
        self.accept_delay = histogram("agentcom_task_accept_delay_seconds",
            "From assignment to the agent's task_accepted.", DURATION_BUCKETS_S)  # fmt: skip
        self.run_time = histograms("agentcom_task_run_seconds",
            "From acceptance (or assignment, if never accepted) to completion or failure.",
            DURATION_BUCKETS_S, "outcome")  # fmt: skip
        self.end_to_end = histograms("agentcom_task_end_to_end_seconds",
            "From submission to the final status.", DURATION_BUCKETS_S, "status")  # fmt: skip
        self.retries = counter("agentcom_task_retries", "Failed attempts queued again.")
        self.rejections = counter("agentcom_task_rejections", "Assignments agents declined.")
        self.reclaims = counters("agentcom_task_reclaims",
            "Tasks taken back from their agent, by cause.", "reason")  # fmt: skip
        self.dead_letters = counters("agentcom_task_dead_letters",
            "Tasks moved to dead letter, by cause.", "reason")  # fmt: skip
        self.tokens = counters("agentcom_task_tokens",
            "Tokens of completed tasks, by model and direction.", "model", "direction")  # fmt: skip
        self.cost = counters("agentcom_task_cost_usd", "Cost of completed tasks in USD, by "
            "model and kind (estimated: what it cost; claude_equivalent: what Claude would "
            "have cost).", "model", "kind")  # fmt: skip
        self.agent_tasks = counters("agentcom_agent_tasks",
            "Attempts finished per agent, by outcome.", "agent", "outcome")  # fmt: skip
        self._agent_label = BoundedLabel(label_cap)
        self._model_label = BoundedLabel(label_cap)
        # --- frames ---------------------------------------------------------------
        self.frames_received = counters("agentcom_frames_received",
            "Frames received on /ws, by type (invalid: not decoded).", "type")  # fmt: skip
        self.frames_sent = _SentByClass(counters("agentcom_frames_sent",
            "Frames sent to agents and operators, by type.", "type"))  # fmt: skip
        self.violations = counters("agentcom_violations",
            "Frames refused as violations on /ws, by error code.", "error")  # fmt: skip
        self.validation_errors = counters("agentcom_validation_errors",
            "Fields in error in refused frames, by top-level field.", "field")  # fmt: skip
        self._field_label = BoundedLabel(label_cap)
        self.rate_limited = counters("agentcom_rate_limited",
            "Frames refused (request) or dropped (progress) by rate limiting, by bucket.",
            "tier")  # fmt: skip
        # --- connections, store, loop ---------------------------------------------
        self.websocket_connections = counters("agentcom_websocket_connections",
            "WebSocket connections accepted, by path.", "path")  # fmt: skip
        self.websocket_connections_open = Gauge("agentcom_websocket_connections_open",
            "Open WebSocket connections, by path.", ("path",), registry=registry)  # fmt: skip
        self.commit_seconds = histogram("agentcom_store_commit_seconds",
            "Duration of a written transaction.", _COMMIT_BUCKETS_S)  # fmt: skip
        self.commit_batch = histogram("agentcom_store_commit_batch_size",
            "Changes written per transaction.", _BATCH_BUCKETS)  # fmt: skip
        self.store_failures = counter("agentcom_store_failures",
            "Transactions the database refused (changes discarded).")  # fmt: skip
        self.loop_lag = histogram("agentcom_event_loop_lag_seconds",
            "How late a periodic timer fires.", _LAG_BUCKETS_S)  # fmt: skip
        registry.register(_StateCollector(server))
        ProcessCollector(registry=registry)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    # --- hooks --------------------------------------------------------------------

    def sent(self, kind: type[Outbound]) -> None:
        """One frame of class ``kind`` written to a client."""
        self.frames_sent[kind].inc()

    def observe_task(self, name: str, task: Task, extra: dict[str, Any]) -> None:
        """One task event of the hub (``Hub.task_observer``)."""
        now = self._server.clock.now_ms()
        if name == "task_failed":  # not a transition: task_retried or task_dead_letter is
            self.run_time["failed"].observe(_seconds(_started_at(task), now) or 0.0)
            self.agent_tasks[self._agent_label(task.assigned_to or NONE), "failed"].inc()
            return
        # Statuses, priorities, tiers and targets are StrEnums: each is its own label value
        # (equal to it, with the same hash), without the cost of reading ``.value``.
        decision = task.routing_decision
        tier = decision.effective_tier if decision is not None else NONE
        target = decision.target_type if decision is not None else NONE
        self.transitions[task.status, task.priority, tier, target].inc()
        if name == "task_assigned":
            wait = _seconds(_queued_since(task), task.assigned_at or now)
            self.queue_wait[task.priority].observe(wait or 0.0)
        elif name == "task_accepted":
            self.accept_delay.observe(_seconds(task.assigned_at, now) or 0.0)
        elif name == "task_completed":
            self._completed(task, now)
        elif name == "task_retried":
            self.retries.inc()
        elif name == "task_dead_letter":
            reason = "retries_exhausted" if task.max_retries else "no_retries"
            self.dead_letters[reason].inc()
            self.end_to_end[task.status].observe(_seconds(task.created_at, now) or 0.0)
        elif name == "task_cancelled":
            self.end_to_end[task.status].observe(_seconds(task.created_at, now) or 0.0)
        elif name in ("task_requeued", "task_reclaimed"):
            cause = requeue_cause(str(extra.get("reason", "")))
            if cause == "rejected":
                self.rejections.inc()
            elif cause in _RECLAIM_CAUSES:
                self.reclaims[cause].inc()

    def _completed(self, task: Task, now: int) -> None:
        self.run_time["completed"].observe(_seconds(_started_at(task), now) or 0.0)
        self.end_to_end[task.status].observe(_seconds(task.created_at, now) or 0.0)
        self.agent_tasks[self._agent_label(task.assigned_to or NONE), "completed"].inc()
        execution = task.execution
        if execution is None:
            return
        model = self._model_label(execution.model_used or "unknown")
        for direction, tokens in (("in", execution.tokens_in), ("out", execution.tokens_out)):
            if tokens:
                self.tokens[model, direction].inc(tokens)
        for kind, cost in (
            ("estimated", execution.estimated_cost_usd),
            ("claude_equivalent", execution.equivalent_claude_cost_usd),
        ):
            if cost:
                self.cost[model, kind].inc(cost)

    def observe_commit(self, seconds: float, changes: int) -> None:
        """One transaction written (``ObservedStore.on_written``)."""
        self.commit_seconds.observe(seconds)
        self.commit_batch.observe(changes)

    def violation(self, reply: ErrorReply | ValidationFailed) -> None:
        """A frame refused as a violation, with its fields in error."""
        self.violations[reply.error].inc()
        if isinstance(reply, ValidationFailed):
            for entry in reply.errors:
                self.validation_errors[self._field_label(entry.field.split(".")[0])].inc()

    @contextlib.contextmanager
    def connection(self, path: str) -> Iterator[None]:
        """Count a WebSocket connection on ``path`` while it is open."""
        self.websocket_connections[path].inc()
        gauge = self.websocket_connections_open.labels(path)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()


class _StateCollector(Collector):
    """Figures read from the hub's state when scraped, never maintained per frame."""

    def __init__(self, server: MetricsSource) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        server = self._server
        if not server.restored:  # no state to read before the start or after the stop
            return
        hub = server.hub
        connected = 0
        by_state = {"idle": 0, "busy": 0, "draining": 0}
        by_capability: dict[tuple[str, str], int] = {}
        for agent in hub.presence.agents.values():
            if not agent.connected:
                continue
            connected += 1
            state = "draining" if agent.draining else "busy" if agent.current_task else "idle"
            by_state[state] += 1
            for capability in agent.capabilities or (NONE,):
                key = (state, capability)
                by_capability[key] = by_capability.get(key, 0) + 1
        yield _gauge(
            "agentcom_agents_connected", "Agents with an identified connection.", connected
        )
        states = GaugeMetricFamily(
            "agentcom_agents_by_state",
            "Connected agents: idle, busy or draining.",
            labels=("state",),
        )
        for state, count in by_state.items():
            states.add_metric((state,), count)
        yield states
        agents = GaugeMetricFamily(
            "agentcom_agents",
            "Connected agents by state and capability (an agent counts "
            "under each of its capabilities; none: it declared no capability).",
            labels=("state", "capability"),
        )
        for (state, capability), count in sorted(by_capability.items()):
            agents.add_metric((state, capability), count)
        yield agents
        queue = hub.queue
        depth = queue.queued_count()
        yield _gauge(
            "agentcom_queue_depth", "Tasks waiting for an agent (held ones included).", depth
        )
        yield _gauge(
            "agentcom_tasks_active", "Tasks assigned or working.", len(queue.tasks) - depth
        )
        needed = GaugeMetricFamily(
            "agentcom_queued_tasks",
            "Queued tasks by needed capability (none: needs none).",
            labels=("capability",),
        )
        for capability, count in sorted(queue.queued_by_capability().items()):
            needed.add_metric((capability or NONE,), count)
        yield needed
        oldest = queue.oldest_queued_since()
        age = 0.0 if oldest is None else max(0, server.clock.now_ms() - oldest) / 1000
        yield _gauge(
            "agentcom_queue_oldest_age_seconds",
            "How long the longest-waiting queued task has waited (0: none).",
            age,
        )
        yield _counter(
            "agentcom_progress_dropped",
            "task_progress frames dropped by rate limiting.",
            hub.progress_dropped,
        )
        yield _counter(
            "agentcom_store_commits", "Database transactions written.", server.store.commits
        )
        yield _gauge(
            "agentcom_store_failing",
            "1 while the database cannot be written.",
            int(server.store_failing),
        )
        subscriptions = server.pubsub.subscriptions()
        yield _gauge("agentcom_subscribers", "Live event subscriptions.", len(subscriptions))
        yield _gauge(
            "agentcom_subscriber_queue_max",
            "Events waiting for the slowest subscriber to read them (0: none).",
            max((subscription.queued for subscription in subscriptions), default=0),
        )
        dropped = CounterMetricFamily(
            "agentcom_events_dropped",
            "Events dropped from slow subscribers' queues, by topic.",
            labels=("topic",),
        )
        for topic, count in sorted(server.pubsub.dropped_by_topic.items()):
            dropped.add_metric((topic,), count)
        yield dropped
        yield from _cluster_figures(server)
        yield from _shared_figures(server)
        yield from _connection_figures(server)
        yield _gauge("agentcom_task_waiters", "task_wait requests waiting.", server.waiters.count())


def _cluster_figures(server: MetricsSource) -> Iterator[Metric]:
    """The link to the other hub nodes, when events go through Redis."""
    link = server.pubsub.cluster_link
    if link is None:
        return
    yield _gauge(
        "agentcom_cluster_link_up",
        "1 while the link to the other hub nodes (Redis) is up, 0 while it is down.",
        int(link.connected),
    )
    yield _counter(
        "agentcom_cluster_events_sent", "Events of this node sent to the other nodes.", link.sent
    )
    yield _counter(
        "agentcom_cluster_events_received",
        "Events of other nodes delivered to this node's subscribers.",
        link.received,
    )
    yield _counter(
        "agentcom_cluster_events_dropped",
        "Events of this node not sent to the other nodes (link down, or Redis too slow).",
        link.dropped,
    )
    yield _counter(
        "agentcom_cluster_link_losses", "Times the link to the other nodes went down.", link.losses
    )


def _shared_figures(server: MetricsSource) -> Iterator[Metric]:
    """This node's part among nodes sharing the database (server/cluster.py)."""
    shared = server.shared
    if shared is None:
        return
    yield _gauge("agentcom_node_leader", "1 while this node leads the cluster's sweeps.",
                 int(shared.leading))  # fmt: skip
    yield _counter(
        "agentcom_task_write_conflicts",
        "Task writes of this node that lost to another node's (re-read, not applied).",
        server.hub.conflicts.seq,
    )
    yield _counter(
        "agentcom_tasks_refreshed", "Tasks re-read because another node changed them.",
        shared.refreshed,
    )  # fmt: skip
    yield _counter(
        "agentcom_tasks_missed_wakeups",
        "Tasks another node changed that the slow poll found (their wake-up was lost).",
        shared.missed,
    )
    yield _counter(
        "agentcom_tasks_reclaimed_from_gone_agents",
        "Tasks given back to the queue, while leading, after their agent stayed away from "
        "every live node for the reconnect grace.",
        shared.reclaimed,
    )
    yield _gauge("agentcom_node_heartbeat_failing", "1 while this node's heartbeats fail.",
                 int(shared.heartbeat_error is not None))  # fmt: skip


def _connection_figures(server: MetricsSource) -> Iterator[Metric]:
    """What the guard and the reply budget hold (docs/operations.md explains the limits)."""
    guard, replies = server.guard, server.replies
    yield _gauge(
        "agentcom_connections_open",
        "TCP connections held, handshakes in progress included.",
        guard.open_connections(),
    )
    yield _gauge(
        "agentcom_connections_unauthenticated",
        "Connections not yet identified, subscribed or authenticated.",
        guard.unauthenticated_connections(),
    )
    yield _counter(
        "agentcom_connections_refused",
        "Connections closed at accept (beyond a connection limit).",
        guard.refused_at_accept,
    )
    yield _counter(
        "agentcom_accept_failures",
        "Accepts that failed (out of file descriptors).",
        server.accept_failures.failures,
    )
    yield _gauge(
        "agentcom_reply_bytes_unread",
        "Replies written to operators, dashboards and HTTP clients, not read yet.",
        replies.in_flight(),
    )
    yield _counter(
        "agentcom_clients_cut_off",
        "Clients cut off for leaving too many replies unread.",
        replies.cut_off,
    )


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class LoopLagMonitor:
    """Measures how late a timer of ``interval_s`` fires on the event loop.

    A late timer means the loop was busy (a long callback, a blocking call): every frame
    waited that long too.
    """

    def __init__(self, metrics: HubMetrics, interval_s: float) -> None:
        self._histogram = metrics.loop_lag
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start measuring in the background."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop measuring."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def measure_once(self) -> float:
        """Wait one interval and record (and return) how late the wake-up came."""
        loop = asyncio.get_running_loop()
        due = loop.time() + self._interval_s
        await asyncio.sleep(self._interval_s)
        lag = max(0.0, loop.time() - due)
        self._histogram.observe(lag)
        return lag

    async def _run(self) -> None:
        while True:
            await self.measure_once()
