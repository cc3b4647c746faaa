"""The Python client (``agentcom.client``) against a real hub: behaviour of its own, beyond
the frames that the protocol tests exercise through it."""

from __future__ import annotations

import asyncio

import pytest
from conftest import AgentMaker

from agentcom.client import agent_url, hub_base_url
from agentcom.server.app import HubServer

# Well below the client's close timeout (10 s): a close that had to wait it out fails.
PROMPT_CLOSE_S = 5.0
UNREAD = 40  # more than the client's receive queue holds (16 frames) before it stops reading


async def test_closing_with_unread_frames_completes_the_closing_handshake_at_once(
    hub: HubServer, make_agent: AgentMaker
) -> None:
    # given an agent that has not read the messages pushed to it, more than its queue holds
    quiet = await make_agent("quiet")
    talker = await make_agent("talker")
    for number in range(UNREAD):
        await talker.send({"type": "message", "to": "quiet", "payload": {"n": number}})
        await talker.receive_type("message_sent", timeout=PROMPT_CLOSE_S)

    # when it closes
    async with asyncio.timeout(PROMPT_CLOSE_S):
        await quiet.close()

    # then the hub answered its closing frame: a clean close, not an abort after a timeout
    assert quiet.connection is not None
    assert quiet.connection.close_code == 1000  # 1006 when the client gave up and aborted


@pytest.mark.parametrize(
    ("given", "agent", "base"),
    [
        ("ws://10.0.0.5:4000/ws", "ws://10.0.0.5:4000/ws", "http://10.0.0.5:4000"),
        ("http://10.0.0.5:4000", "ws://10.0.0.5:4000/ws", "http://10.0.0.5:4000"),
        ("https://hub.example/", "wss://hub.example/ws", "https://hub.example"),
        ("wss://hub.example:4000/ws", "wss://hub.example:4000/ws", "https://hub.example:4000"),
        ("http://10.0.0.5:4000/ws/operator", "ws://10.0.0.5:4000/ws", "http://10.0.0.5:4000"),
        ("http://10.0.0.5:4000/dashboard", "ws://10.0.0.5:4000/ws", "http://10.0.0.5:4000"),
        ("10.0.0.5:4000", "ws://10.0.0.5:4000/ws", "http://10.0.0.5:4000"),
    ],
)
def test_either_form_of_the_hub_address_names_both_endpoints(
    given: str, agent: str, base: str
) -> None:
    assert agent_url(given) == agent
    assert hub_base_url(given) == base
