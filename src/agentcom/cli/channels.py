"""The ``channel`` commands: channels agents publish to, created and listed."""

from __future__ import annotations

import argparse
import json

from agentcom.cli.errors import EXIT_OK
from agentcom.cli.output import table
from agentcom.client import OperatorClient

__all__ = ["channel_create", "channel_list"]


async def channel_create(client: OperatorClient, args: argparse.Namespace) -> int:
    """``channel create``: prints the new channel's name."""
    fields = {"name": args.name}
    if args.description:
        fields["description"] = args.description
    channel = await client.request("channel_create", **fields)
    print(json.dumps(channel) if args.json else channel["name"])
    return EXIT_OK


async def channel_list(client: OperatorClient, args: argparse.Namespace) -> int:
    """``channel list``: every channel with its subscribers and last sequence number."""
    channels = await client.request("channels_list")
    if args.json:
        print(json.dumps(channels))
        return EXIT_OK
    table(
        ["NAME", "SUBSCRIBERS", "LAST SEQ", "DESCRIPTION"],
        [
            [
                channel["name"],
                channel["subscribers"],
                channel["last_seq"],
                channel.get("description"),
            ]
            for channel in channels
        ],
        empty="no channels",
    )
    return EXIT_OK
