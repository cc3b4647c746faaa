"""The ``agents`` commands: every agent with its state, held task, restart and pm2
process; drain, undrain and restart."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from agentcom.cli.connect import OperatorAction
from agentcom.cli.errors import EXIT_OK
from agentcom.cli.output import describe_hold, table, utc_time
from agentcom.client import OperatorClient

__all__ = ["agent_drain", "agent_restart", "agents_list"]


async def agents_list(client: OperatorClient, args: argparse.Namespace) -> int:
    """``agents`` / ``agents list``: every known agent, with notes under it; with hub
    nodes sharing a database, the node of each. A partial list is said so on stderr."""
    agents, warning = await client.list_agents()
    if warning is not None:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(agents))
        return EXIT_OK
    node_column = ["NODE"] if any("node" in agent for agent in agents) else []
    table(
        ["AGENT", *node_column, "STATE", "DRAINING", "TASK", "CAPABILITIES", "LAST SEEN"],
        [
            [
                agent["agent_id"],
                *([agent.get("node")] if node_column else []),
                agent["state"],
                agent.get("draining", False),
                agent.get("current_task"),
                agent["capabilities"],
                utc_time(agent.get("last_seen") or None),
            ]
            for agent in agents
        ],
        empty="no agents",
        notes=[_agent_notes(agent) for agent in agents],
    )
    return EXIT_OK


def _agent_notes(agent: dict[str, Any]) -> str | None:
    """The lines under an agent: its held task, its restart, its pm2 process."""
    notes = []
    if agent.get("held_task"):
        notes.append(f"held: {describe_hold(agent['held_task'])}")
    if agent.get("restarting"):
        restarting = agent["restarting"]
        notes.append(
            f"restarting since {utc_time(restarting['since'])}: "
            f"{restarting.get('reason') or 'no reason given'}"
        )
    if agent.get("pm2_info"):
        notes.append(f"pm2: {_pm2(agent['pm2_info'])}")
    return "\n  ".join(notes) or None


def _pm2(info: dict[str, Any]) -> str:
    """The sidecar's process as pm2 reported it, leaving out what it did not say."""
    parts = [f"{info.get('name') or '-'} {info.get('status') or '-'}"]
    if info.get("uptime_ms") is not None:
        parts.append(f"up {info['uptime_ms'] / 1000:.0f} s")
    if info.get("restart_count") is not None:
        parts.append(f"{info['restart_count']} restarts")
    if info.get("memory_bytes") is not None:
        parts.append(f"{info['memory_bytes'] / 2**20:.0f} MiB")
    return ", ".join(parts)


async def agent_restart(client: OperatorClient, args: argparse.Namespace) -> int:
    """``agents restart``: ask the agent's sidecar to restart after its running task."""
    agent = await client.request("agent_restart", agent_id=args.agent_id, reason=args.reason)
    print(json.dumps(agent) if args.json else f"asked {agent['agent_id']} to restart")
    return EXIT_OK


def agent_drain(
    request_type: str,
) -> OperatorAction:
    """``agents drain`` or ``undrain`` (``request_type`` says which)."""

    async def change(client: OperatorClient, args: argparse.Namespace) -> int:
        agent = await client.request(request_type, agent_id=args.agent_id)
        if args.json:
            print(json.dumps(agent))
        else:
            drain = "draining" if agent["draining"] else "not draining"
            print(f"{agent['agent_id']} {drain} ({agent['state']})")
        return EXIT_OK

    return change
