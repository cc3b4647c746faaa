"""``agentcom sidecar`` running shell tasks: a real hub, a real sidecar process, real commands."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from realsidecar import SidecarMaker, Streamed, make_sidecar, process_gone, watch_pid  # noqa: F401

from agentcom.client import OperatorClient
from agentcom.sidecar.config import SidecarConfig
from agentcom.sidecar.job import Assignment, ExecutorFailed, Job
from agentcom.sidecar.progress import ProgressStream
from agentcom.sidecar.shell import run_shell

pytestmark = pytest.mark.skipif(os.name != "posix", reason="process groups and pidfds")


async def submit_shell(operator: OperatorClient, command: str, **fields: Any) -> str:
    """Queue a trivial task that runs ``command``; returns its id."""
    task = await operator.submit(
        f"run {command[:40]}",
        complexity_tier="trivial",
        metadata={"shell_command": command},
        **fields,
    )
    task_id: str = task["task_id"]
    return task_id


async def test_a_command_that_exits_0_completes_with_its_output(
    make_sidecar: SidecarMaker,  # noqa: F811
    operator: OperatorClient,
) -> None:
    sidecar = make_sidecar()
    await sidecar.event("connected")

    task_id = await submit_shell(operator, "echo hello from $(pwd); echo warning >&2")
    task = await operator.wait_task(task_id, timeout_s=10)

    assert task["status"] == "completed"
    result = task["result"]
    assert result["status"] == "success"
    assert result["exit_code"] == 0
    assert f"hello from {sidecar.workdir}" in result["output"]
    assert "warning" in result["output"]
    assert task["routing_decision"]["target_type"] == "sidecar"
    finished = await sidecar.event("finished", task_id=task_id)
    assert finished["status"] == "success"
    await sidecar.event("acknowledged", task_id=task_id)  # then forgotten
    assert not (sidecar.state_dir / "task.json").exists()


async def test_a_command_that_exits_non_zero_fails_with_its_code_and_output_tail(
    make_sidecar: SidecarMaker,  # noqa: F811
    operator: OperatorClient,
) -> None:
    sidecar = make_sidecar()
    await sidecar.event("connected")

    task_id = await submit_shell(
        operator, "echo step one; echo it broke >&2; exit 3", max_retries=0
    )
    task = await operator.wait_task(task_id, timeout_s=10)

    assert task["status"] == "dead_letter"
    assert task["last_error"] == "exit code 3: it broke"
    finished = await sidecar.event("finished", task_id=task_id)
    assert finished["exit_code"] == 3
    assert finished["status"] == "failed"


async def test_a_sidecar_task_without_a_shell_command_fails_at_once_and_runs_nothing(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "ran"
    # A description that would leave a trace if it were run as a command.
    assign = {
        "task_id": "t1", "generation": 1, "description": f"touch {marker}", "metadata": {},
        "routing_decision": {"effective_tier": "trivial", "target_type": "sidecar"},
    }  # fmt: skip
    config = SidecarConfig(hub_url="ws://unused", agent_id="a", token="t", workdir=tmp_path)
    sent: list[dict[str, Any]] = []

    async def send(frame: dict[str, Any]) -> None:
        sent.append(frame)

    job = Job(Assignment.from_frame(assign), config, ProgressStream(send, "t1", 0, 100))

    with pytest.raises(ExecutorFailed, match="no shell command"):
        await run_shell(job)
    assert not marker.exists()
    assert sent == []


async def test_many_lines_are_streamed_coalesced_and_bounded(
    make_sidecar: SidecarMaker,  # noqa: F811
    operator: OperatorClient,
) -> None:
    sidecar = make_sidecar(settings={"max_event_chars": 1000, "progress_interval_s": 0.05})
    await sidecar.event("connected")

    async with Streamed(operator) as streamed:
        task_id = await submit_shell(operator, "seq 1 20000")
        streamed.task_id = task_id
        task = await operator.wait_task(task_id, timeout_s=20)
        await streamed.text_matching(r"^1\n2\n3\n")

    expected = "".join(f"{number}\n" for number in range(1, 20001))
    assert task["status"] == "completed"
    assert task["result"]["output"].endswith("19999\n20000\n")  # the tail is kept
    assert len(task["result"]["output"]) <= 8000
    events = streamed.events
    # Coalesced: far fewer frames than lines, each within the limit; what was not streamed
    # is counted, so streamed and dropped add up to the whole output.
    assert len(events) < 200
    assert all(len(event["text"]) <= 1000 for event in events)
    assert all(event["event_type"] == "stdout" for event in events)
    streamed_chars = sum(len(event["text"]) for event in events)
    dropped_chars = sum(event.get("dropped_chars", 0) for event in events)
    assert streamed_chars + dropped_chars == len(expected)


async def test_a_command_past_its_tier_timeout_is_killed_with_its_children(
    make_sidecar: SidecarMaker,  # noqa: F811
    operator: OperatorClient,
) -> None:
    sidecar = make_sidecar(settings={"timeout_trivial_s": 1.0})
    await sidecar.event("connected")

    async with Streamed(operator) as streamed:
        task_id = await submit_shell(operator, "sleep 300 & echo child $!; wait", max_retries=0)
        streamed.task_id = task_id
        match = await streamed.text_matching(r"child (\d+)")
        child = watch_pid(int(match[1]))
        try:
            task = await operator.wait_task(task_id, timeout_s=20)
            assert await process_gone(child)
        finally:
            os.close(child)

    assert task["status"] == "dead_letter"
    assert task["last_error"] == "timed out after 1 s (process group killed)"


async def test_a_cancelled_task_stops_at_once_and_its_processes_are_gone(
    make_sidecar: SidecarMaker,  # noqa: F811
    operator: OperatorClient,
) -> None:
    sidecar = make_sidecar()
    await sidecar.event("connected")

    async with Streamed(operator) as streamed:
        task_id = await submit_shell(operator, "sleep 300 & echo child $!; wait")
        streamed.task_id = task_id
        match = await streamed.text_matching(r"child (\d+)")
        child = watch_pid(int(match[1]))
        try:
            await operator.request("task_cancel", task_id=task_id)
            await sidecar.event("cancelled", task_id=task_id)
            assert await process_gone(child)
        finally:
            os.close(child)

    assert not (sidecar.state_dir / "task.json").exists()
    # The sidecar is free: the next task runs.
    next_id = await submit_shell(operator, "echo next")
    assert (await operator.wait_task(next_id, timeout_s=10))["status"] == "completed"


async def test_a_sidecar_killed_mid_task_kills_the_leftover_and_the_hub_runs_it_again(
    make_sidecar: SidecarMaker,  # noqa: F811
    operator: OperatorClient,
) -> None:
    sidecar = make_sidecar()
    await sidecar.event("connected")
    command = (
        "if [ -e first-run ]; then echo second run; "
        "else touch first-run; sleep 300 & echo child $!; wait; fi"
    )

    async with Streamed(operator) as streamed:
        task_id = await submit_shell(operator, command)
        streamed.task_id = task_id
        match = await streamed.text_matching(r"child (\d+)")
    assert (sidecar.state_dir / "task.json").exists()  # recorded before it was accepted
    child = watch_pid(int(match[1]))
    try:
        sidecar.kill()
        assert not await process_gone(child, timeout=0.2)  # a crash leaves it running

        restarted = make_sidecar()
        await restarted.event("leftover_killed", task_id=task_id)
        assert await process_gone(child)
        await restarted.event("recovering", task_id=task_id)
        await restarted.event("reassigned", task_id=task_id)
        task = await operator.wait_task(task_id, timeout_s=10)
    finally:
        os.close(child)

    assert task["status"] == "completed"
    assert task["result"]["output"] == "second run\n"
    assert task["generation"] == 2


async def test_sigterm_gives_a_running_task_back_and_exits_0(
    make_sidecar: SidecarMaker,  # noqa: F811
    operator: OperatorClient,
) -> None:
    sidecar = make_sidecar(args=["--stop-grace", "0"])
    await sidecar.event("connected")

    async with Streamed(operator) as streamed:
        task_id = await submit_shell(operator, "sleep 300 & echo child $!; wait")
        streamed.task_id = task_id
        match = await streamed.text_matching(r"child (\d+)")
    child = watch_pid(int(match[1]))
    try:
        sidecar.signal(signal.SIGTERM)
        await sidecar.event("given_back", task_id=task_id)
        assert await sidecar.wait() == 0
        assert await process_gone(child)
    finally:
        os.close(child)

    task = await operator.get_task(task_id)
    assert task["status"] == "queued"
    assert not (sidecar.state_dir / "task.json").exists()


async def test_sigterm_lets_a_running_task_finish_within_the_grace(
    make_sidecar: SidecarMaker,  # noqa: F811
    operator: OperatorClient,
    tmp_path: Path,
) -> None:
    sidecar = make_sidecar()
    await sidecar.event("connected")
    gate = tmp_path / "gate"
    os.mkfifo(gate)

    task_id = await submit_shell(operator, f"echo waiting; cat {gate}; echo finished")
    await sidecar.event("assigned", task_id=task_id)
    sidecar.signal(signal.SIGTERM)
    await sidecar.event("stopping", task_id=task_id)
    gate.write_text("go\n")  # opening the FIFO for writing lets the command end

    assert await sidecar.wait() == 0
    task = await operator.get_task(task_id)
    assert task["status"] == "completed"
    assert task["result"]["output"] == "waiting\ngo\nfinished\n"


async def test_a_silent_command_still_shows_progress_so_the_hub_does_not_reclaim_it(
    make_sidecar: SidecarMaker,  # noqa: F811
    operator: OperatorClient,
    tmp_path: Path,
) -> None:
    sidecar = make_sidecar(settings={"progress_keepalive_s": 0.1})
    await sidecar.event("connected")
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    watch = operator.watch(["tasks"])
    await anext(watch)  # the snapshot

    task_id = await submit_shell(operator, f"cat {gate} > /dev/null")
    bare = 0
    async with asyncio.timeout(10):
        async for event in watch:
            if event.get("event") == "task_progress" and event["task_id"] == task_id:
                bare += 1
                if bare == 3:
                    break
    await watch.aclose()
    await asyncio.to_thread(gate.write_text, "go\n")

    assert (await operator.wait_task(task_id, timeout_s=10))["status"] == "completed"


async def test_a_command_never_sees_the_agent_token_or_the_api_key(
    make_sidecar: SidecarMaker,  # noqa: F811
    operator: OperatorClient,
) -> None:
    secrets = {"AGENTCOM_AGENT_TOKEN": "secret-token", "ANTHROPIC_API_KEY": "sk-secret"}
    make_sidecar(env={**secrets, "SHARED_SETTING": "visible"})
    command = 'echo "[$AGENTCOM_AGENT_TOKEN][$ANTHROPIC_API_KEY][$SHARED_SETTING]"'

    task_id = await submit_shell(operator, command)
    task = await operator.wait_task(task_id, timeout_s=10)

    assert task["result"]["output"] == "[][][visible]\n"


async def test_a_second_signal_gives_the_task_back_without_waiting_out_the_grace(
    make_sidecar: SidecarMaker,  # noqa: F811
    operator: OperatorClient,
) -> None:
    sidecar = make_sidecar(args=["--stop-grace", "600"])
    await sidecar.event("connected")
    task_id = await submit_shell(operator, "sleep 300")
    await sidecar.event("assigned", task_id=task_id)

    sidecar.signal(signal.SIGINT)
    await sidecar.event("stopping", task_id=task_id)
    sidecar.signal(signal.SIGINT)

    await sidecar.event("given_back", task_id=task_id)
    assert await sidecar.wait() == 0
    assert (await operator.get_task(task_id))["status"] == "queued"
