"""The lifecycle benchmark's report: its runs' figures compared and printed for people.

``lifecycle.py`` measures; this module only reads the figures it made (one dict per run,
by case: a database on one hub node or several, as its ``--json`` output describes) and
names the cases.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from _relay import ROUND_TRIPS_PER_TASK

__all__ = [
    "COMPARED",
    "POSTGRESQL",
    "SQLITE",
    "case_label",
    "case_name",
    "compare_runs",
    "cpu_text",
    "print_profile",
    "print_text",
]

SQLITE, POSTGRESQL = "sqlite", "postgresql"  # the databases a run can be on


def case_name(database: str, nodes: int) -> str:
    """A run's key in ``runs``: its database, with ``_<N>_nodes`` on several hub nodes."""
    return database if nodes == 1 else f"{database}_{nodes}_nodes"


def case_label(database: str, nodes: int) -> str:
    """A run's name for people: ``postgresql``, ``postgresql on 2 nodes``."""
    return database if nodes == 1 else f"{database} on {nodes} nodes"


def _heading(figures: dict[str, Any]) -> str:
    """A run's column heading in the comparison: ``sqlite``, ``postgresql``, ``pg 2 nodes``."""
    nodes = figures.get("nodes", 1)
    return figures["database"] if nodes == 1 else f"pg {nodes} nodes"


def _figure(*keys: str) -> Callable[[dict[str, Any]], Any]:
    """Reads a run's figure by its path of keys (None where missing)."""

    def read(figures: dict[str, Any]) -> Any:
        value: Any = figures
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    return read


# The figures compared between the databases: key in "comparison", label, where in a run.
COMPARED: tuple[tuple[str, str, Callable[[dict[str, Any]], Any]], ...] = (
    ("tasks_per_s", "tasks/s", _figure("tasks_per_s")),
    ("hub_cpu_ms_per_task", "hub CPU ms/task", _figure("hub_cpu_ms_per_task")),
    ("database_cpu_ms_per_task", "PG server CPU ms/task", _figure("database_cpu_ms_per_task")),
    (
        "hub_and_database_cpu_ms_per_task",
        "hub + database CPU ms/task",
        _figure("hub_and_database_cpu_ms_per_task"),
    ),
    ("submit_to_assign_p50_ms", "submit->assign p50 ms", _figure("submit_to_assign", "p50_ms")),
    ("submit_to_assign_p99_ms", "submit->assign p99 ms", _figure("submit_to_assign", "p99_ms")),
    (
        "submit_to_complete_p50_ms",
        "submit->complete p50 ms",
        _figure("submit_to_complete", "p50_ms"),
    ),
    (
        "submit_to_complete_p99_ms",
        "submit->complete p99 ms",
        _figure("submit_to_complete", "p99_ms"),
    ),
    ("store_commits", "store commits", _figure("store_commits")),
    ("tasks_per_commit", "tasks per commit", _figure("tasks_per_commit")),
    ("hub_peak_rss_mib", "hub peak RSS MiB", _figure("hub_peak_rss_mib")),
    ("events_dropped", "dashboard events dropped", _figure("events_dropped")),
    (
        "other_processes_cpu_percent",
        "other processes % of a core",
        _figure("other_processes_cpu_percent"),
    ),
)


def _ratio(numerator: Any, denominator: Any) -> float | None:
    """``numerator / denominator`` to three decimals (None when either is missing or 0)."""
    return round(numerator / denominator, 3) if denominator and numerator is not None else None


def _ratios(runs: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """The ratios compared: (key, heading, numerator's run, denominator's run). PostgreSQL
    on one node over SQLite, and PostgreSQL on several nodes over one."""
    found = [(f"{POSTGRESQL}_over_{SQLITE}", "pg/sqlite", POSTGRESQL, SQLITE)]
    for name, figures in runs.items():
        nodes = figures.get("nodes", 1)
        if nodes > 1:
            found.append((f"{name}_over_{POSTGRESQL}", f"{nodes} nodes/1", name, POSTGRESQL))
    return found


def compare_runs(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The main figures of each run side by side (None for a run that did not run), with
    PostgreSQL's over SQLite's and, for several nodes, theirs over one node's."""
    compared = {}
    for key, _label, read in COMPARED:
        values = {name: read(figures) for name, figures in runs.items()}
        compared[key] = values | {
            ratio: _ratio(values.get(numerator), values.get(denominator))
            for ratio, _heading, numerator, denominator in _ratios(runs)
        }
    return compared


def cpu_text(cpu: dict[str, dict[str, float]]) -> str:
    """CPU figures as ``name seconds s (percent%)``, two spaces apart."""
    return "  ".join(
        f"{name} {used['seconds']} s ({used['percent_of_one_core']}%)" for name, used in cpu.items()
    )


def print_text(report: dict[str, Any]) -> None:
    """The human-readable report: each run, the comparison, the relay baseline."""
    runs = report["runs"]
    for figures in runs.values():
        if "error" in figures:
            label = case_label(figures["database"], figures["nodes"])
            print(f"{label} ({figures['database_location']}): did not run: {figures['error']}")
        else:
            print_run(figures)
    if report["comparison"] is not None:
        print_comparison(report["comparison"], runs)
    print_relay(report)


def print_run(figures: dict[str, Any]) -> None:
    """One run's figures."""

    def latency(name: str) -> str:
        data = figures[name]
        return (
            f"p50 {data['p50_ms']} ms  p99 {data['p99_ms']} ms  max {data['max_ms']} ms  "
            f"(n={data['n']})"
        )

    rate = figures["rate_limit_per_s"] or "unlimited"
    nodes = figures.get("nodes", 1)
    where = "" if nodes == 1 else f" on {nodes} hub nodes"
    print(
        f"agentcom {figures['agentcom_version']} ({figures['source_revision']}) lifecycle bench "
        f"on {figures['cpus']} CPUs, {figures['database']} ({figures['database_location']})"
        f"{where}: "
        f"N={figures['agents']} agents, M={figures['tasks']} tasks, "
        f"{figures['operators']}x{figures['window_per_operator']} submits in flight, rate {rate}"
    )
    print(
        f"  elapsed (first submit -> last completion) {figures['elapsed_s']} s; "
        f"submit phase {figures['submit_phase_s']} s ({figures['submits_per_s']} submits/s)"
    )
    print(
        f"  throughput          {figures['tasks_per_s']} tasks/s ({figures['completed']} completed)"
    )
    print(f"  submit -> assign    {latency('submit_to_assign')}")
    print(f"  submit -> complete  {latency('submit_to_complete')}")
    print(f"  submit round trip   {latency('submit_round_trip')}")
    print(f"  latency basis: {figures['latency_basis']}")
    events = sum(figures["events_received"].values())
    print(
        f"  dashboard events    {events} received, {figures['events_dropped']} dropped"
        + ("; completion confirmed by stats" if figures["completion_confirmed_by_stats"] else "")
    )
    largest = " of the largest node" if nodes > 1 else ""
    print(
        f"  hub peak RSS        {figures['hub_peak_rss_mib']} MiB{largest} (VmHWM; VmRSS at "
        f"end {figures['hub_rss_end_mib']} MiB)"
    )
    print(f"  CPU during run      {cpu_text(figures['cpu'])}")
    if nodes > 1:
        print_nodes(figures["hub_nodes"])
    every = f" (all {nodes} nodes)" if nodes > 1 else ""
    per_task = f"  hub CPU per task    {figures['hub_cpu_ms_per_task']} ms{every}"
    if figures["database"] == POSTGRESQL:
        per_task += (
            f"; PostgreSQL server {figures['database_cpu_ms_per_task']} ms; together "
            f"{figures['hub_and_database_cpu_ms_per_task']} ms"
        )
    print(per_task)
    other = figures["other_processes_cpu_percent"]
    print(
        f"  other processes     {other}% of one core during the run; load average at end "
        f"{figures['load_average_at_end']}"
    )
    if other is not None and other > 20:
        print("  WARNING: the machine was busy with other work; these figures are noisy")
    print(
        f"  store commits       {figures['store_commits']} "
        f"({figures['tasks_per_commit']} tasks per commit); hub frames received "
        f"{figures['frames_received_by_hub']}; progress coalesced "
        f"{figures['progress_coalesced_by_hub']}"
    )
    sidecars = figures.get("sidecars") or {}
    print(
        f"  sidecars            acks {sidecars.get('acks')}  errors {sidecars.get('errors')}  "
        f"connects {sidecars.get('connects')}"
    )
    if figures["submit_errors"]:
        print(f"  submit errors       {figures['submit_errors']}")
    if figures["hub_to_relay_ratio"] is not None:
        print(f"  hub to relay ratio  {figures['hub_to_relay_ratio']} (relay baseline below)")


def print_nodes(nodes: list[dict[str, Any]]) -> None:
    """Each hub node's share of a run on several."""
    for node in nodes:
        print(
            f"  {node['node']:<20}{node['agents']} sidecars, {node['submits']} submits; "
            f"CPU {node['hub_cpu_s']} s; frames received {node['frames_received_by_hub']}; "
            f"store commits {node['store_commits']}; peak RSS {node['hub_peak_rss_mib']} MiB"
            + (
                f"; write conflicts {node['write_conflicts']}, tasks re-read "
                f"{node['tasks_refreshed']}"
                if node.get("write_conflicts") is not None
                else ""
            )
        )


def print_comparison(
    comparison: dict[str, dict[str, Any]], runs: dict[str, dict[str, Any]]
) -> None:
    """The runs' main figures side by side, with the ratios of :func:`compare_runs`."""

    def cell(value: Any) -> str:
        return "-" if value is None else str(value)

    headings = {name: _heading(figures) for name, figures in runs.items()}
    ratios = [(key, heading) for key, heading, _top, _bottom in _ratios(runs)]
    print(" vs ".join(case_label(run["database"], run["nodes"]) for run in runs.values()))
    columns = [*headings.values(), *(heading for _key, heading in ratios)]
    print(f"  {'':28}" + "".join(f"{heading:>12}" for heading in columns))
    for key, label, _read in COMPARED:
        row = comparison[key]
        cells = [*(row[name] for name in headings), *(row[ratio] for ratio, _heading in ratios)]
        print(f"  {label:28}" + "".join(f"{cell(value):>12}" for value in cells))


def print_relay(figures: dict[str, Any]) -> None:
    """The bare relay baseline, when it ran."""
    relay = figures.get("relay")
    if relay is None:
        return
    print(
        f"bare relay            {figures['relay_round_trips_per_s']} round trips/s "
        f"({relay['frame_bytes']}-byte frames, {relay['connections']} connections, "
        f"{relay['seconds']} s)"
    )
    print(
        f"  relay CPU           {cpu_text(relay['cpu'])}; other processes "
        f"{relay['other_processes_cpu_percent']}%"
    )
    print(
        f"  relay ceiling       {figures['relay_ceiling_tasks_per_s']} tasks/s "
        f"({ROUND_TRIPS_PER_TASK} round trips a task)"
    )


def print_profile(path: str, limit: int) -> None:
    """The profiled hub's top functions by own time and by cumulative time."""
    import pstats

    for order in ("tottime", "cumulative"):
        print(f"\n--- hub profile ({path}), top {limit} by {order} ---")
        pstats.Stats(path, stream=sys.stdout).strip_dirs().sort_stats(order).print_stats(limit)
