"""``stats``: tasks by status, the queue by priority, throughput, agents and costs."""

from __future__ import annotations

import argparse
import json

from agentcom.cli.errors import EXIT_OK
from agentcom.cli.output import count_line, table, usd
from agentcom.cli.values import PRIORITIES, STATUSES
from agentcom.client import OperatorClient

__all__ = ["show_stats"]


async def show_stats(client: OperatorClient, args: argparse.Namespace) -> int:
    """``stats``: tasks by status, the queue by priority, throughput, agents and costs."""
    stats = await client.request("stats")
    if args.json:
        print(json.dumps(stats))
        return EXIT_OK
    by_status = stats["by_status"]
    print("tasks:      " + count_line({name: by_status.get(name, 0) for name in STATUSES}))
    print(
        f"queue:      depth {stats['queue_depth']}  by priority "
        + count_line({name: stats["queued_by_priority"].get(name, 0) for name in PRIORITIES})
    )
    throughput = stats["throughput"]
    hours = throughput["window_s"] / 3600
    print(
        f"{f'last {hours:g} h:':<12}{throughput['completed']} completed"
        f" ({throughput['completed'] / (hours * 60):.2f}/min)"
        f"  {throughput['dead_letter']} dead letter  {throughput['cancelled']} cancelled"
    )
    print(
        f"agents:     {stats['agents_connected']} connected  "
        + count_line(stats["agents_by_state"])
    )
    totals = stats["totals"]
    print(
        f"costs:      {totals['tasks']} completed tasks  tokens in {totals['tokens_in']}"
        f" out {totals['tokens_out']}  cost {usd(totals['estimated_cost_usd'])}"
        f"  claude-equivalent {usd(totals['equivalent_claude_cost_usd'])}"
    )
    for title, key in (("MODEL", "by_model"), ("AGENT", "by_agent")):
        print()
        table(
            [title, "TASKS", "TOKENS IN", "TOKENS OUT", "COST", "CLAUDE-EQUIVALENT", "TIME"],
            [
                [
                    name,
                    row["tasks"],
                    row["tokens_in"],
                    row["tokens_out"],
                    usd(row["estimated_cost_usd"]),
                    usd(row["equivalent_claude_cost_usd"]),
                    f"{row['execution_ms'] / 1000:.1f} s",
                ]
                for name, row in sorted(stats[key].items())
            ],
            empty=f"no completed tasks {key.replace('_', ' ')}",
        )
    return EXIT_OK
