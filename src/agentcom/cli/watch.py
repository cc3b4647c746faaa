"""``watch``: the hub's events streamed live, or one task's until it is finished,
following the hub across restarts."""

from __future__ import annotations

import argparse
import json
from typing import Any

from agentcom.cli.errors import EXIT_OK
from agentcom.cli.output import say, utc_time
from agentcom.cli.tasks import task_across_restarts
from agentcom.client import OperatorClient
from agentcom.protocol.common import TERMINAL

__all__ = ["watch_events"]


async def watch_events(client: OperatorClient, args: argparse.Namespace) -> int:
    """Stream events until interrupted, following the hub across restarts."""
    if args.task is not None:
        return await _watch_task(client, args)
    snapshots = 0
    reconnecting = False

    def lost(reason: str) -> None:
        nonlocal reconnecting
        reconnecting = True
        say(f"{reason}; reconnecting...")

    async for frame in client.follow(args.topic or None, lost):
        if args.json:
            print(json.dumps(frame), flush=True)
        elif frame.get("type") == "snapshot":
            snapshots += 1
            # A snapshot without a reconnect: the hub's link to the other nodes came back.
            state = (
                "connected" if snapshots == 1 else "reconnected" if reconnecting else "re-synced"
            )
            reconnecting = False
            agents, depth = len(frame["agents"]), frame["queue"]["depth"]
            print(f"{state}: {agents} agents, queue depth {depth}", flush=True)
        elif frame.get("event") != "agent_seen":  # a heartbeat: noise in a human's stream
            print(_describe_event(frame), flush=True)
    return EXIT_OK


async def _watch_task(client: OperatorClient, args: argparse.Namespace) -> int:
    """Follow one task's events until it is finished (at once if it already is), across
    hub restarts."""
    task = await client.get_task(args.task)  # the hub resolves an abbreviated id
    task_id = task["task_id"]
    as_json = args.json

    def lost(reason: str) -> None:
        say(f"{reason}; reconnecting to follow task {task_id}...")

    async for frame in client.follow(["tasks"], lost):
        if frame.get("type") == "snapshot":
            # Read again once subscribed (again): it may have moved on before, or while
            # the hub was away.
            task = await task_across_restarts(client, task_id)
            print(json.dumps(task) if as_json else f"task {task_id} {task['status']}", flush=True)
            if task["status"] in TERMINAL:
                break
            continue
        if frame.get("task_id") != task_id:
            continue
        print(json.dumps(frame) if as_json else _describe_event(frame), flush=True)
        if frame.get("status") in TERMINAL and frame.get("event") != "task_failed":
            break
    return EXIT_OK


def _describe_event(frame: dict[str, Any]) -> str:
    """One line for a human: the time, the event and what it concerns."""
    kind = frame.get("type")
    stamp = utc_time(frame.get("timestamp"))
    if kind == "task_event":
        extra = ""
        if frame.get("event") == "execution_progress":
            event = frame.get("execution_event") or {}
            extra = f" {event.get('event_type', '')} {str(event.get('text', ''))[:80]}"
        agent = frame.get("agent_id") or "-"
        return f"{stamp} {frame['event']:<18} task {frame['task_id']} agent {agent}{extra}"
    if kind == "agent_event":
        return f"{stamp} {frame['event']:<18} agent {frame['agent_id']}"
    if kind == "events_dropped" and frame.get("reason") == "cluster_link_down":
        return f"{stamp} events from other hub nodes may be missing (their link is down)"
    if kind == "events_dropped":
        return f"{stamp} events dropped: {frame['count']}"
    return f"{stamp} {kind} {json.dumps(frame)[:120]}"
