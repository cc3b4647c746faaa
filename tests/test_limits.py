"""Rate limits and violations (PROTOCOL.md section 1, "Errors and abuse").

The first half drives the plain objects of ``hub/limits.py`` with a manual clock; the
second half checks the same rules end to end over real sockets.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from conftest import AgentMaker, TokenMaker
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from agentcom.client import AgentClient, OperatorClient
from agentcom.config import Settings
from agentcom.hub.clock import ManualClock
from agentcom.hub.limits import BucketSpec, RateLimiter, TokenBucket, ViolationTracker
from agentcom.server.app import HubServer

Frame = dict[str, Any]
RawIdentify = Callable[..., Awaitable[AgentClient]]

BAD_FRAME = {"type": "status"}  # valid JSON, missing its required field


# --- TokenBucket ----------------------------------------------------------------------------


def test_bucket_starts_full_and_serves_exactly_its_capacity() -> None:
    clock = ManualClock()
    bucket = TokenBucket(BucketSpec(capacity=5, per_second=1), clock)
    assert bucket.capacity == 5
    assert bucket.remaining == 5
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]
    assert bucket.remaining == 0


def test_bucket_refills_in_proportion_to_elapsed_time() -> None:
    clock = ManualClock()
    bucket = TokenBucket(BucketSpec(capacity=3, per_second=10), clock)
    for _ in range(3):
        bucket.take()

    clock.advance(50)  # half a token
    assert bucket.remaining == 0
    assert bucket.take() is False

    clock.advance(50)  # the whole token
    assert bucket.take() is True
    assert bucket.take() is False

    clock.advance(200)
    assert bucket.remaining == 2


def test_bucket_never_holds_more_than_its_capacity() -> None:
    clock = ManualClock()
    bucket = TokenBucket(BucketSpec(capacity=4, per_second=100), clock)
    clock.advance(3_600_000)
    assert bucket.remaining == 4
    assert [bucket.take() for _ in range(5)] == [True] * 4 + [False]


def test_retry_after_is_when_the_next_token_is_available() -> None:
    clock = ManualClock()
    bucket = TokenBucket(BucketSpec(capacity=1, per_second=20), clock)
    bucket.take()

    wait = bucket.retry_after_ms()
    assert 0 < wait <= 1000 / 20 + 1

    clock.advance(wait - 2)
    assert bucket.take() is False
    clock.advance(2)
    assert bucket.take() is True


def test_full_bucket_needs_no_wait_beyond_a_millisecond() -> None:
    bucket = TokenBucket(BucketSpec(capacity=2, per_second=1), ManualClock())
    assert bucket.retry_after_ms() <= 1


# --- RateLimiter ----------------------------------------------------------------------------


def test_limiter_warns_from_80_percent_used_then_limits() -> None:
    clock = ManualClock()
    limiter = RateLimiter({"request": BucketSpec(10, 1)}, clock)
    verdicts = [limiter.check("request") for _ in range(11)]
    assert verdicts == ["ok"] * 7 + ["warn"] * 3 + ["limited"]


def test_limiter_tiers_are_independent() -> None:
    clock = ManualClock()
    limiter = RateLimiter({"request": BucketSpec(2, 1), "progress": BucketSpec(50, 10)}, clock)
    while limiter.check("request") != "limited":
        pass
    assert limiter.check("progress") == "ok"
    assert limiter.bucket("progress").remaining == 49
    assert limiter.bucket("request").remaining == 0


def test_limited_frames_do_not_dig_the_bucket_deeper() -> None:
    clock = ManualClock()
    limiter = RateLimiter({"request": BucketSpec(1, 10)}, clock)
    limiter.check("request")
    for _ in range(100):
        assert limiter.check("request") == "limited"
    clock.advance(100)  # one token's worth
    assert limiter.check("request") != "limited"


# --- ViolationTracker -----------------------------------------------------------------------


def test_tenth_failure_within_the_window_closes() -> None:
    clock = ManualClock()
    tracker = ViolationTracker(clock)
    window = tracker.new_window()
    closes = []
    for _ in range(10):
        clock.advance(1_000)
        closes.append(tracker.record_failure(window))
    assert closes == [False] * 9 + [True]


def test_failures_spread_over_more_than_the_window_do_not_close() -> None:
    clock = ManualClock()
    tracker = ViolationTracker(clock)
    window = tracker.new_window()
    for _ in range(9):
        assert tracker.record_failure(window) is False
    clock.advance(60_001)
    # the nine old failures have aged out: it takes ten new ones
    assert [tracker.record_failure(window) for _ in range(10)] == [False] * 9 + [True]


def test_windows_are_per_connection() -> None:
    clock = ManualClock()
    tracker = ViolationTracker(clock)
    first, second = tracker.new_window(), tracker.new_window()
    for _ in range(9):
        tracker.record_failure(first)
    assert tracker.record_failure(second) is False
    assert tracker.record_failure(first) is True


def test_cooldowns_escalate_30_60_then_300_seconds() -> None:
    clock = ManualClock()
    tracker = ViolationTracker(clock)
    lengths = []
    for _ in range(4):
        lengths.append(tracker.punish("agent-1"))
        assert tracker.cooldown_remaining_ms("agent-1") == lengths[-1]
        clock.advance(lengths[-1])
        assert tracker.cooldown_remaining_ms("agent-1") == 0
    assert lengths == [30_000, 60_000, 300_000, 300_000]


def test_cooldown_counts_down_and_expires() -> None:
    clock = ManualClock()
    tracker = ViolationTracker(clock)
    assert tracker.cooldown_remaining_ms("agent-1") == 0
    tracker.punish("agent-1")
    clock.advance(12_500)
    assert tracker.cooldown_remaining_ms("agent-1") == 17_500
    clock.advance(17_499)
    assert tracker.cooldown_remaining_ms("agent-1") == 1
    clock.advance(1)
    assert tracker.cooldown_remaining_ms("agent-1") == 0


def test_cooldowns_are_per_agent() -> None:
    clock = ManualClock()
    tracker = ViolationTracker(clock)
    tracker.punish("rowdy")
    tracker.punish("rowdy")
    assert tracker.cooldown_remaining_ms("calm") == 0
    assert tracker.punish("calm") == 30_000


def test_offences_are_forgotten_after_a_quiet_hour() -> None:
    clock = ManualClock()
    tracker = ViolationTracker(clock)
    tracker.punish("agent-1")
    clock.advance(30_000 + 3_600_001)
    assert tracker.punish("agent-1") == 30_000
    clock.advance(30_000 + 60_000)  # not quiet for long: the next step applies
    assert tracker.punish("agent-1") == 60_000


# --- end to end: helpers --------------------------------------------------------------------


@pytest.fixture
async def raw_identify(ws_url: str) -> AsyncIterator[RawIdentify]:
    """Open a socket and send ``identify`` without waiting for the answer."""
    clients: list[AgentClient] = []

    async def identify(agent_id: str, token: str) -> AgentClient:
        client = AgentClient(ws_url, agent_id, token, heartbeat_s=None)
        client.connection = await connect(ws_url)
        clients.append(client)
        await client.send(client.identify_frame())
        return client

    yield identify
    for client in clients:
        await client.close()


async def send_text(client: AgentClient, text: str) -> None:
    """Send raw text as one frame (for frames that are not JSON)."""
    assert client.connection is not None
    await client.connection.send(text)


async def close_of(client: AgentClient, timeout: float = 5.0) -> tuple[int | None, str]:
    """Read until the hub closes the connection; its close code and reason."""
    assert client.connection is not None
    async with asyncio.timeout(timeout):
        try:
            while True:
                await client.connection.recv()
        except ConnectionClosed as closed:
            frame = closed.rcvd
            return (frame.code, frame.reason) if frame is not None else (None, "")


async def assert_nothing_pending(client: AgentClient) -> None:
    """The next frame after a ping is its pong: nothing else was sent to ``client`` before."""
    await client.send({"type": "ping"})
    frame = await client.receive(5)
    assert frame["type"] == "pong", f"unexpected frame {frame}"


async def frames_until(client: AgentClient, frame_type: str) -> list[Frame]:
    """Every frame up to and including the next one of ``frame_type``."""
    frames: list[Frame] = []
    async with asyncio.timeout(10):
        while not frames or frames[-1]["type"] != frame_type:
            frames.append(await client.receive())
    return frames


async def next_event(events: AsyncIterator[Frame], event_name: str) -> Frame:
    """The next pubsub event named ``event_name``."""
    async with asyncio.timeout(5):
        async for event in events:
            if event.get("event") == event_name:
                return event
    raise AssertionError("the event stream ended")


async def accepted_task(agent: AgentClient, operator: OperatorClient) -> Frame:
    """Submit a task, let ``agent`` receive and accept it; returns its ``task_assign``."""
    await operator.submit("stream some output", complexity_tier="complex")
    assign = await agent.receive_type("task_assign")
    await agent.send({"type": "task_accepted", "task_id": assign["task_id"]})
    await agent.receive_type("task_ack")
    return assign


async def offend(agent: AgentClient) -> tuple[int | None, str]:
    """Send ten invalid frames; returns how the hub closed the connection."""
    for _ in range(10):
        await agent.send(BAD_FRAME)
    return await close_of(agent)


def metric(text: str, name: str) -> float:
    """One sample of a Prometheus text exposition."""
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name} not exposed"
    return float(match.group(1))


async def get_text(url: str) -> str:
    """GET ``url`` (in a thread: the hub runs on this loop)."""

    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            body: bytes = response.read()
            return body.decode()

    return await asyncio.to_thread(fetch)


# --- rate limits over sockets ---------------------------------------------------------------


async def test_sidecar_streaming_progress_every_100ms_is_never_throttled(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient, clock: ManualClock
) -> None:
    # given a sidecar working on a task, and a subscriber to task events
    agent = await make_agent()
    assign = await accepted_task(agent, operator)
    events = operator.watch(["tasks"])
    await anext(events)  # snapshot

    # when it streams progress every 100 ms for a minute, with a heartbeat every 30 s
    for step in range(600):
        await agent.send(
            {
                "type": "task_progress",
                "task_id": assign["task_id"],
                "progress": step,
                "execution_event": {"event_type": "stdout", "text": f"line {step}"},
            }
        )
        event = await next_event(events, "task_progress")
        assert event["progress"] == step  # handled, in order, none coalesced
        clock.advance(100)
        if step % 300 == 299:
            await agent.send({"type": "ping"})
            await agent.receive_type("pong")
    await events.aclose()

    # then nothing was dropped and the sidecar was never warned or limited
    assert hub.hub.progress_dropped == 0
    await assert_nothing_pending(agent)
    stored = await operator.get_task(assign["task_id"])
    assert stored["progress"] == 599
    await agent.send(
        {"type": "task_complete", "task_id": assign["task_id"], "generation": assign["generation"]}
    )
    assert (await agent.receive_type("task_ack"))["status"] == "complete"


@pytest.mark.parametrize(
    ("frame", "reply_type"),
    [
        ({"type": "ping"}, "pong"),
        ({"type": "status", "status": "busy"}, "status_updated"),
        ({"type": "list_agents"}, "agents"),
    ],
)
async def test_request_flood_is_warned_then_limited(
    hub: HubServer,
    make_agent: AgentMaker,
    settings: Settings,
    clock: ManualClock,
    frame: Frame,
    reply_type: str,
) -> None:
    # given an agent whose clock stands still
    agent = await make_agent()
    capacity = settings.request_burst
    extra = 5

    # when it sends more request frames than its bucket holds
    for _ in range(capacity + extra):
        await agent.send(frame)
    received: list[Frame] = []
    async with asyncio.timeout(10):
        while len(received) < capacity + extra + (capacity - math.ceil(capacity * 0.8) + 1):
            received.append(await agent.receive())

    # then every frame within the bucket is answered, a warning precedes each reply once
    # 80% of the bucket is used, and the rest are refused with rate_limited
    warn_from = math.ceil(capacity * 0.8)
    expected = (
        [reply_type] * (warn_from - 1)
        + ["rate_limit_warning", reply_type] * (capacity - warn_from + 1)
        + ["rate_limited"] * extra
    )
    assert [frame["type"] for frame in received] == expected
    warning = next(frame for frame in received if frame["type"] == "rate_limit_warning")
    assert warning == {
        "type": "rate_limit_warning",
        "tier": "request",
        "remaining": capacity - warn_from,
        "capacity": capacity,
    }
    limited = received[-1]
    assert limited["tier"] == "request"
    assert 0 < limited["retry_after_ms"] <= 1000 / settings.request_rate + 1

    # and once the advised wait has passed, the agent is served again
    clock.advance(limited["retry_after_ms"])
    await agent.send(frame)
    after = await frames_until(agent, reply_type)
    assert "rate_limited" not in [frame["type"] for frame in after]


async def test_rate_limited_agent_does_not_affect_others(
    hub: HubServer, make_agent: AgentMaker, settings: Settings
) -> None:
    flooder = await make_agent("flooder")
    calm = await make_agent("calm")
    for _ in range(settings.request_burst + 1):
        await flooder.send({"type": "ping"})
    await flooder.receive_type("rate_limited")
    await assert_nothing_pending(calm)


async def test_settle_frames_are_never_rate_limited(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient, settings: Settings
) -> None:
    # given an agent with a task, whose request bucket is empty
    agent = await make_agent()
    await operator.submit("first", complexity_tier="complex")
    assign = await agent.receive_type("task_assign")
    for _ in range(settings.request_burst + 1):
        await agent.send({"type": "ping"})
    await agent.receive_type("rate_limited")

    # when it accepts and completes its task
    await agent.send({"type": "task_accepted", "task_id": assign["task_id"]})
    accepted = await frames_until(agent, "task_ack")
    await agent.send(
        {"type": "task_complete", "task_id": assign["task_id"], "generation": assign["generation"]}
    )
    completed = await frames_until(agent, "task_ack")

    # then both are handled, without a word about rate limits
    assert [frame["type"] for frame in accepted] == ["task_ack"]
    assert accepted[0]["status"] == "accepted"
    assert [frame["type"] for frame in completed] == ["task_ack"]
    assert completed[0]["status"] == "complete"
    assert (await operator.get_task(assign["task_id"]))["status"] == "completed"

    # and the request bucket is still empty: settling spent none of it
    await agent.send({"type": "ping"})
    assert (await agent.receive(5))["type"] == "rate_limited"


async def test_failure_rejection_and_recovery_are_never_rate_limited(
    hub: HubServer, make_agent: AgentMaker, operator: OperatorClient, settings: Settings
) -> None:
    # given an agent with a task, whose request bucket is empty
    agent = await make_agent()
    task = await operator.submit("flaky", complexity_tier="complex", max_retries=1)
    first = await agent.receive_type("task_assign")
    for _ in range(settings.request_burst + 1):
        await agent.send({"type": "ping"})
    await agent.receive_type("rate_limited")

    # when it fails the task, rejects the retry, and asks to recover it
    await agent.send(
        {
            "type": "task_failed",
            "task_id": task["task_id"],
            "generation": first["generation"],
            "reason": "boom",
        }
    )
    failed = await agent.receive_type("task_ack")
    retry = await agent.receive_type("task_assign")
    await agent.send({"type": "task_rejected", "task_id": task["task_id"], "reason": "busy"})
    rejected = await agent.receive_type("task_ack")
    await agent.send({"type": "task_recovering", "task_id": task["task_id"]})
    recovered = await agent.receive(5)
    # (a frame after the rejection: the agent may be offered the task again)
    again = await agent.receive_type("task_assign")

    # then each one is answered
    assert failed["status"] == "retried"
    assert retry["generation"] == first["generation"] + 1
    assert rejected["status"] == "requeued"
    assert recovered == {"type": "task_reassign", "task_id": task["task_id"]}
    assert again["generation"] == first["generation"] + 2
    stored = await operator.get_task(task["task_id"])
    assert (stored["status"], stored["retry_count"]) == ("assigned", 1)


async def test_progress_flood_is_coalesced_silently_and_counted(
    hub: HubServer,
    make_agent: AgentMaker,
    operator: OperatorClient,
    settings: Settings,
    clock: ManualClock,
    http_url: str,
) -> None:
    # given an agent working on a task, and a subscriber to task events
    agent = await make_agent()
    assign = await accepted_task(agent, operator)
    events = operator.watch(["tasks"])
    await anext(events)  # snapshot
    before = metric(await get_text(f"{http_url}/metrics"), "agentcom_progress_dropped_total")

    # when it sends more progress frames than the progress bucket holds, all at once
    excess = 50
    for step in range(settings.progress_burst + excess):
        await agent.send({"type": "task_progress", "task_id": assign["task_id"], "progress": step})
    await agent.send({"type": "ping"})  # answered once every frame before it was handled
    received = await frames_until(agent, "pong")

    # then the excess is dropped without an error or rate_limited reply, and counted
    assert [frame for frame in received if frame["type"] in ("rate_limited", "error")] == []
    assert hub.hub.progress_dropped == excess
    after = metric(await get_text(f"{http_url}/metrics"), "agentcom_progress_dropped_total")
    assert after - before == excess

    # and exactly the progress within the bucket was handled and published
    clock.advance(1_000)
    await agent.send({"type": "task_progress", "task_id": assign["task_id"], "progress": 99_999})
    published = []
    async with asyncio.timeout(5):
        async for event in events:
            if event.get("event") == "task_progress":
                published.append(event["progress"])
                if event["progress"] == 99_999:
                    break
    await events.aclose()
    assert published == [*range(settings.progress_burst), 99_999]

    # and the task still settles normally
    await agent.send(
        {"type": "task_complete", "task_id": assign["task_id"], "generation": assign["generation"]}
    )
    assert (await agent.receive_type("task_ack"))["status"] == "complete"


# --- violations over sockets ---------------------------------------------------------------


async def test_ten_validation_failures_within_a_minute_close_with_1008(
    hub: HubServer, make_agent: AgentMaker, clock: ManualClock
) -> None:
    # given two agents
    rowdy = await make_agent("rowdy")
    calm = await make_agent("calm")

    # when one sends nine invalid frames, it is told each time and stays connected
    for _ in range(9):
        clock.advance(1_000)
        await rowdy.send(BAD_FRAME)
        assert (await rowdy.receive_type("error"))["error"] == "validation_failed"
    await assert_nothing_pending(rowdy)

    # when it sends a tenth
    await send_text(rowdy, "not json")

    # then it is answered and closed with 1008, and the other agent carries on
    assert (await rowdy.receive_type("error"))["error"] == "invalid_json"
    assert await close_of(rowdy) == (1008, "too many validation errors")
    assert (await calm.receive_type("agent_left"))["agent_id"] == "rowdy"
    await assert_nothing_pending(calm)


async def test_failures_spread_over_more_than_a_minute_do_not_close(
    hub: HubServer, make_agent: AgentMaker, clock: ManualClock
) -> None:
    agent = await make_agent()
    for _ in range(9):
        await agent.send(BAD_FRAME)
    errors = [await agent.receive_type("error") for _ in range(9)]  # all handled by now
    clock.advance(60_001)
    for _ in range(9):
        await agent.send(BAD_FRAME)
    errors += [await agent.receive_type("error") for _ in range(9)]
    assert {error["error"] for error in errors} == {"validation_failed"}
    await assert_nothing_pending(agent)

    await agent.send(BAD_FRAME)  # the tenth within a minute
    assert (await close_of(agent))[0] == 1008


async def test_unidentified_connection_is_closed_after_ten_failures(
    hub: HubServer, raw_identify: RawIdentify, make_agent: AgentMaker
) -> None:
    # given a socket that keeps sending garbage before identifying
    client = await raw_identify("nobody", "ac_wrong")
    for _ in range(9):
        await send_text(client, "{{{")

    # then the tenth failure closes it, and nobody is in cooldown
    assert await close_of(client) == (1008, "too many validation errors")
    await make_agent("nobody")


async def test_identify_during_cooldown_is_closed_with_the_remaining_seconds(
    hub: HubServer,
    make_agent: AgentMaker,
    make_token: TokenMaker,
    raw_identify: RawIdentify,
    clock: ManualClock,
) -> None:
    # given an agent closed for too many validation errors
    rowdy = await make_agent("rowdy")
    assert await offend(rowdy) == (1008, "too many validation errors")

    # when it identifies again at once, then 12.5 s later
    first = await raw_identify("rowdy", make_token("rowdy"))
    first_close = await close_of(first)
    clock.advance(12_500)
    second = await raw_identify("rowdy", make_token("rowdy"))
    second_close = await close_of(second)

    # then both are closed with 1008 and the seconds left to wait
    assert first_close[0] == second_close[0] == 1008
    assert re.search(r"\b30\b", first_close[1]), first_close
    assert re.search(r"\b18\b", second_close[1]), second_close

    # and once the cooldown has passed, it may identify
    clock.advance(17_500)
    back = await make_agent("rowdy")
    await assert_nothing_pending(back)


async def test_repeat_offences_escalate_the_cooldown(
    hub: HubServer,
    make_agent: AgentMaker,
    make_token: TokenMaker,
    raw_identify: RawIdentify,
    clock: ManualClock,
) -> None:
    for expected_s in (30, 60, 300, 300):
        # given the agent identified (any earlier cooldown is over)
        rowdy = await make_agent("rowdy")

        # when it is closed for violations
        assert (await offend(rowdy))[0] == 1008

        # then it must wait the next step of the escalation, to the millisecond
        retry = await raw_identify("rowdy", make_token("rowdy"))
        code, reason = await close_of(retry)
        assert code == 1008
        assert re.search(rf"\b{expected_s}\b", reason), reason
        clock.advance(expected_s * 1000 - 1)
        retry = await raw_identify("rowdy", make_token("rowdy"))
        code, reason = await close_of(retry)
        assert (code, re.search(r"\b1\b", reason) is not None) == (1008, True), reason
        clock.advance(1)


async def test_wrong_token_cannot_put_another_agent_into_cooldown(
    hub: HubServer,
    make_agent: AgentMaker,
    make_token: TokenMaker,
    raw_identify: RawIdentify,
) -> None:
    # given an attacker presenting bad tokens for the victim's id
    forged = await raw_identify("victim", "ac_forged")
    for _ in range(9):
        await forged.send(forged.identify_frame())
    replies = [await forged.receive_type("error") for _ in range(10)]
    assert {reply["error"] for reply in replies} == {"invalid_token"}
    assert (await close_of(forged))[0] == 1008

    # and presenting its own valid token with the victim's id
    borrowed = await raw_identify("victim", make_token("attacker"))
    for _ in range(9):
        await borrowed.send(borrowed.identify_frame())
    replies = [await borrowed.receive_type("error") for _ in range(10)]
    assert {reply["error"] for reply in replies} == {"token_agent_mismatch"}
    assert (await close_of(borrowed))[0] == 1008

    # then the victim identifies normally
    victim = await make_agent("victim")
    await assert_nothing_pending(victim)


async def test_validation_failures_are_published(
    hub: HubServer,
    make_agent: AgentMaker,
    operator: OperatorClient,
    raw_identify: RawIdentify,
    clock: ManualClock,
) -> None:
    # given a subscriber to the validation topic
    events = operator.watch(["validation"])
    assert (await anext(events))["type"] == "snapshot"

    # when an identified agent sends an invalid frame
    agent = await make_agent("sloppy")
    await agent.send({"type": "task_complete", "task_id": "t1", "generation": "1"})
    await agent.receive_type("error")

    # then the failure is published with the agent and the reply it got
    async with asyncio.timeout(5):
        event = await anext(events)
    assert event["type"] == "validation_event"
    assert event["agent_id"] == "sloppy"
    assert event["timestamp"] == clock.now_ms()
    assert event["reply"]["error"] == "validation_failed"
    assert event["reply"]["message_type"] == "task_complete"
    assert event["reply"]["errors"][0]["field"] == "generation"

    # and a bad token is published too, without the token
    stranger = await raw_identify("sloppy", "ac_guessed-secret")
    await stranger.receive_type("error")
    async with asyncio.timeout(5):
        event = await anext(events)
    await events.aclose()
    assert event["agent_id"] is None
    assert event["reply"]["error"] == "invalid_token"
    assert "ac_guessed-secret" not in json.dumps(event)
