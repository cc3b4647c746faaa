"""The ``task`` commands: submit (and wait across hub restarts), list, show, route, and
retry, cancel or requeue, one task by id or every task a filter matches after a
confirmation."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import threading
from typing import Any

from agentcom.cli.connect import OperatorAction
from agentcom.cli.errors import EXIT_FAILED, EXIT_OK, CliError
from agentcom.cli.output import cell, print_task, say, table, utc_time
from agentcom.cli.values import UNFINISHED
from agentcom.client import ConnectionLost, OperatorClient
from agentcom.protocol.common import TaskStatus

__all__ = [
    "list_filter",
    "task_across_restarts",
    "task_change",
    "task_list",
    "task_route",
    "task_show",
    "task_submit",
]


async def task_submit(client: OperatorClient, args: argparse.Namespace) -> int:
    """``task submit``: prints the id, or with ``--wait`` the finished task."""
    metadata = parse_metadata(args.metadata)
    task = await client.submit(
        args.description,
        priority=args.priority,
        complexity_tier=args.complexity,
        needed_capabilities=args.capability or None,
        metadata=metadata,
        max_retries=args.max_retries,
        repo=args.repo,
        depends_on=args.depends_on,
    )
    if not args.wait:
        print(json.dumps(task) if args.json else task["task_id"])
        return EXIT_OK
    task_id = task["task_id"]
    if not args.json:
        print(task_id, file=sys.stderr)
    try:
        final = await _wait_across_restarts(client, task_id)
    except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels us, then exits with 130
        say(
            f"interrupted; task {task_id} stays queued and runs without this command "
            f"(agentcom task show {task_id})"
        )
        raise
    if args.json:
        print(json.dumps(final))
    else:
        print_task(final)
    return EXIT_OK if final["status"] == TaskStatus.completed else EXIT_FAILED


async def _wait_across_restarts(client: OperatorClient, task_id: str) -> dict[str, Any]:
    """The finished task; a lost connection (a hub restart) is reopened with backoff, and
    the wait goes on for the same task: nothing is submitted again."""
    while True:
        try:
            return await client.wait_task(task_id)
        except ConnectionLost as lost:
            say(f"{lost.reason}; reconnecting to wait for task {task_id}...")
            await client.reconnect()
            say(f"reconnected; waiting for task {task_id}")


async def task_across_restarts(client: OperatorClient, task_id: str) -> dict[str, Any]:
    """The task, reopening the request connection if a hub restart closed it."""
    while True:
        try:
            return await client.get_task(task_id)
        except ConnectionLost:
            await client.reconnect()


async def task_list(client: OperatorClient, args: argparse.Namespace) -> int:
    """``task list``: one page of tasks; the next page's cursor goes to stderr."""
    found, next_cursor = await client.list_tasks(
        **list_filter(args), limit=args.limit, cursor=args.cursor
    )
    if next_cursor is not None:
        say(f"more tasks: add --cursor {next_cursor}")
    if args.json:
        print(json.dumps(found))
        return EXIT_OK
    table(
        ["ID", "STATUS", "PRIORITY", "AGENT", "UPDATED", "DESCRIPTION"],
        [
            [
                task["task_id"],
                task["status"],
                task["priority"],
                task.get("assigned_to"),
                utc_time(task["updated_at"]),
                cell(task["description"])[:60],
            ]
            for task in found
        ],
        empty="no tasks",
    )
    return EXIT_OK


async def task_show(client: OperatorClient, args: argparse.Namespace) -> int:
    """``task show``: one task, in full."""
    task = await client.get_task(args.task_id)
    if args.json:
        print(json.dumps(task))
    else:
        print_task(task)
    return EXIT_OK


def task_change(request_type: str, bulk: str | None = None) -> OperatorAction:
    """One task changed by id; with ``bulk``, every task a filter matches instead."""

    async def change(client: OperatorClient, args: argparse.Namespace) -> int:
        matching = _bulk_filter(args, request_type) if bulk is not None else None
        if matching is not None:
            return await _change_matching(client, args, bulk or "", matching)
        if args.task_id is None:
            raise CliError("give a task ID, or a filter (see --help)")
        task = await client.request(request_type, task_id=args.task_id)
        print(json.dumps(task) if args.json else f"{task['task_id']} {task['status']}")
        return EXIT_OK

    return change


_BULK_VERBS = {"task_retry_many": "retry", "task_cancel_many": "cancel"}
_BULK_LIMIT = 1000  # tasks one bulk action reaches; run it again for more


def _bulk_filter(args: argparse.Namespace, request_type: str) -> dict[str, Any] | None:
    """The ``task_list`` filter of a bulk action, or None when a single ID is meant."""
    fields = list_filter(args)
    if request_type == "task_retry":
        if not args.all_dead:
            if fields:
                raise CliError("the filters of `task retry` go with --all-dead")
            return None
        if args.status:
            raise CliError("--all-dead retries dead-letter tasks: leave out --status")
        fields["status"] = TaskStatus.dead_letter.value
    elif not fields:
        return None
    else:
        fields.setdefault("status", UNFINISHED)
    if args.task_id is not None:
        raise CliError("give a task ID or a filter, not both")
    return fields


async def _matching_tasks(
    client: OperatorClient, matching: dict[str, Any], most: int
) -> list[dict[str, Any]]:
    """Up to ``most`` tasks the filter matches, page after page."""
    tasks: list[dict[str, Any]] = []
    cursor = None
    while len(tasks) < most:
        page, cursor = await client.list_tasks(**matching, limit=most - len(tasks), cursor=cursor)
        tasks += page
        if cursor is None:
            break
    return tasks


async def _change_matching(
    client: OperatorClient, args: argparse.Namespace, bulk: str, matching: dict[str, Any]
) -> int:
    """List the tasks the filter matches, confirm, then change them in one request."""
    verb = _BULK_VERBS[bulk]
    tasks = await _matching_tasks(client, matching, _BULK_LIMIT)
    if not tasks:
        print("no tasks match", file=sys.stderr)
        if args.json:
            print(json.dumps({"changed": [], "refused": []}))
        return EXIT_OK
    if not args.yes and not await _confirmed(verb, tasks):
        raise CliError(f"nothing done: answer y to {verb} them, or pass --yes", EXIT_FAILED)
    result = await client.request(bulk, task_ids=[task["task_id"] for task in tasks])
    if args.json:
        print(json.dumps(result))
    for task in [] if args.json else result["changed"]:
        print(f"{task['task_id']} {task['status']}")
    for refusal in result["refused"]:
        print(f"agentcom: {refusal['task_id']}: {refusal['error']}: {refusal['message']}",
              file=sys.stderr)  # fmt: skip
    done = f"{verb} done for {len(result['changed'])} of {len(tasks)} tasks"
    more = f" (at most {_BULK_LIMIT} at a time: run it again)" if len(tasks) == _BULK_LIMIT else ""
    print(done + more, file=sys.stderr)
    return EXIT_FAILED if result["refused"] else EXIT_OK


def _read_line() -> asyncio.Future[str]:
    """A line of stdin, read by a daemon thread: the event loop keeps answering the hub's
    pings while a human thinks, and Ctrl-C does not wait for the line."""
    loop = asyncio.get_running_loop()
    line: asyncio.Future[str] = loop.create_future()

    def deliver(text: str) -> None:
        if not line.done():
            line.set_result(text)

    def read() -> None:
        text = sys.stdin.readline()
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(deliver, text)

    threading.Thread(target=read, name="stdin", daemon=True).start()
    return line


async def _confirmed(verb: str, tasks: list[dict[str, Any]]) -> bool:
    """Show the tasks on stderr and ask; anything but y or yes (or no answer) is no."""
    shown = 10
    for task in tasks[:shown]:
        description = cell(task["description"])[:50]
        print(f"  {task['task_id']}  {task['status']:<11} {description}", file=sys.stderr)
    if len(tasks) > shown:
        print(f"  ... and {len(tasks) - shown} more", file=sys.stderr)
    print(f"{verb} these {len(tasks)} tasks? [y/N] ", end="", file=sys.stderr, flush=True)
    answer = await _read_line()
    if not answer.endswith("\n"):
        print(file=sys.stderr)  # no answer (end of input): end the prompt's line
    return answer.strip().lower() in ("y", "yes")


def list_filter(args: argparse.Namespace) -> dict[str, Any]:
    """The ``task_list`` fields of the filter options given."""
    fields: dict[str, Any] = {
        "status": args.status,
        "agent": args.agent,
        "capability": args.capability,
        "since_s": args.since,
        "priority": args.priority,
    }
    return {name: value for name, value in fields.items() if value is not None}


def parse_metadata(text: str | None) -> dict[str, Any] | None:
    """``--metadata``: a JSON object, or None when not given."""
    if text is None:
        return None
    try:
        metadata = json.loads(text)
    except ValueError:
        raise CliError("--metadata must be a JSON object") from None
    if not isinstance(metadata, dict):
        raise CliError("--metadata must be a JSON object")
    return metadata


async def task_route(client: OperatorClient, args: argparse.Namespace) -> int:
    """``task route``: the routing decision for a task, queueing nothing."""
    task = {"description": args.description, "complexity_tier": args.complexity,
            "file_hints": args.file_hint, "verification_steps": args.verification_step,
            "metadata": parse_metadata(args.metadata), "repo": args.repo}  # fmt: skip
    preview = await client.request(
        "task_route", task={key: value for key, value in task.items() if value is not None}
    )
    if args.json:
        print(json.dumps(preview))
        return EXIT_OK
    decision = preview["routing_decision"]
    print(f"tier {decision['effective_tier']} -> {decision['target_type']}"
          f"  endpoint {cell(decision['selected_endpoint'])}"
          f"  model {cell(decision['selected_model'])}"
          f"  cost tier {cell(decision['estimated_cost_tier'])}")  # fmt: skip
    if decision["fallback_used"]:
        print(f"fallback: {decision['fallback_reason']}")
    print(f"reason: {decision['classification_reason']}")
    print(f"viable endpoints: {preview['viable_endpoints']}")
    if preview["would_wait"]:
        print(f"note: {preview['would_wait']}")
    return EXIT_OK
