"""The ``endpoints`` commands: Ollama endpoints listed with their health, added, approved
and removed."""

from __future__ import annotations

import argparse
import json
from typing import Any

from agentcom.cli.errors import EXIT_OK
from agentcom.cli.output import cell, table
from agentcom.client import OperatorClient

__all__ = ["endpoint_add", "endpoint_approve", "endpoint_remove", "endpoints_list"]


async def endpoints_list(client: OperatorClient, args: argparse.Namespace) -> int:
    """``endpoints`` / ``endpoints list``: every endpoint with its health and models."""
    endpoints = await client.request("endpoints_list")
    if args.json:
        print(json.dumps(endpoints))
        return EXIT_OK
    table(
        ["ID", "URL", "STATE", "MODELS", "LAST ERROR"],
        [
            [
                endpoint["endpoint_id"],
                endpoint["url"],
                _health(endpoint),
                endpoint["models"],
                _last_error(endpoint),
            ]
            for endpoint in endpoints
        ],
        empty="no endpoints",
    )
    return EXIT_OK


def _last_error(endpoint: dict[str, Any]) -> str | None:
    """``(N failed checks) error`` once a check failed, else None."""
    if not endpoint.get("last_error"):
        return None
    failures = endpoint.get("failures") or 0
    checks = "check" if failures == 1 else "checks"
    return f"({failures} failed {checks}) {cell(endpoint['last_error'])}"


def _health(endpoint: dict[str, Any]) -> str:
    """unchecked, healthy, failing (its latest checks failed, not yet enough to mark it
    unhealthy) or unhealthy."""
    if endpoint["healthy"] is False:
        return "unhealthy"
    if endpoint.get("failures"):
        return "failing"
    return "healthy" if endpoint["healthy"] else "unchecked"


async def endpoint_add(client: OperatorClient, args: argparse.Namespace) -> int:
    """``endpoints add``: prints the new endpoint's id."""
    fields = {"url": args.url}
    if args.name:
        fields["name"] = args.name
    endpoint = await client.request("endpoint_add", **fields)
    print(json.dumps(endpoint) if args.json else endpoint["endpoint_id"])
    return EXIT_OK


async def endpoint_approve(client: OperatorClient, args: argparse.Namespace) -> int:
    """``endpoints approve``: an agent's endpoint may serve every agent."""
    endpoint = await client.request("endpoint_approve", endpoint=args.endpoint)
    print(json.dumps(endpoint) if args.json else f"approved {endpoint['endpoint_id']}")
    return EXIT_OK


async def endpoint_remove(client: OperatorClient, args: argparse.Namespace) -> int:
    """``endpoints remove``: the hub forgets the endpoint."""
    endpoint = await client.request("endpoint_remove", endpoint_id=args.endpoint_id)
    print(json.dumps(endpoint) if args.json else f"removed {endpoint['endpoint_id']}")
    return EXIT_OK
