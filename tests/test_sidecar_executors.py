"""Executors the hub's router does not reach on its own (wake), ``--dry-run``, and prices."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from realsidecar import SidecarMaker, make_sidecar  # noqa: F401

from agentcom.client import OperatorClient
from agentcom.sidecar.config import SidecarConfig
from agentcom.sidecar.job import Assignment, ExecutorFailed, Job
from agentcom.sidecar.prices import claude_cost_usd, price_of
from agentcom.sidecar.progress import ProgressStream
from agentcom.sidecar.resources import ResourceMeter
from agentcom.sidecar.wake import NO_WAKE_COMMAND, run_wake


def wake_job(tmp_path: Path, sent: list[dict[str, Any]], **settings: Any) -> Job:
    """A wake task for ``t1`` whose frames are appended to ``sent``."""

    async def send(frame: dict[str, Any]) -> None:
        sent.append(frame)

    assign = {
        "task_id": "t1", "generation": 4, "description": "review the open pull requests",
        "metadata": {}, "routing_decision": {"effective_tier": "standard", "target_type": "wake"},
    }  # fmt: skip
    config = SidecarConfig(
        hub_url="ws://unused", agent_id="a", token="t", workdir=tmp_path, **settings
    )
    progress = ProgressStream(send, "t1", 0, 1000)
    return Job(Assignment.from_frame(assign), config, progress, send=send)


async def test_a_wake_task_runs_the_wake_command_with_the_task_and_reports_wake_result(
    tmp_path: Path,
) -> None:
    sent: list[dict[str, Any]] = []
    command = (
        'echo "woke for $AGENTCOM_TASK_ID/$AGENTCOM_TASK_GENERATION: $AGENTCOM_TASK_DESCRIPTION"'
    )
    job = wake_job(tmp_path, sent, wake_command=command)

    outcome = await run_wake(job)

    assert outcome.status == "success"
    assert outcome.output == "woke for t1/4: review the open pull requests\n"
    assert {"type": "wake_result", "task_id": "t1", "status": "success", "attempt": 1} in sent


async def test_a_failing_wake_command_fails_the_task_and_says_so_in_wake_result(
    tmp_path: Path,
) -> None:
    sent: list[dict[str, Any]] = []
    job = wake_job(tmp_path, sent, wake_command="echo no session >&2; exit 7")

    outcome = await run_wake(job)

    assert outcome.status == "failed"
    assert outcome.error == "exit code 7: no session"
    [report] = [frame for frame in sent if frame["type"] == "wake_result"]
    assert report["status"] == "failed"
    assert report["error"] == "exit code 7: no session"


async def test_a_wake_task_without_a_wake_command_fails_at_once(tmp_path: Path) -> None:
    with pytest.raises(ExecutorFailed, match="no wake command"):
        await run_wake(wake_job(tmp_path, []))
    assert NO_WAKE_COMMAND.startswith("no wake command")


async def test_dry_run_completes_a_task_without_running_it(
    make_sidecar: SidecarMaker,  # noqa: F811
    operator: OperatorClient,
) -> None:
    sidecar = make_sidecar(args=["--dry-run"])
    marker = sidecar.workdir / "ran"
    task = await operator.submit(
        "touch a file", complexity_tier="trivial", metadata={"shell_command": f"touch {marker}"}
    )

    task = await operator.wait_task(task["task_id"], timeout_s=10)

    assert task["status"] == "completed"
    assert task["result"]["output"] == (
        f"dry run: would have run shell command 'touch {marker}'; nothing was run\n"
    )
    assert not marker.exists()


def test_prices_come_from_one_table_and_unknown_models_have_none() -> None:
    assert claude_cost_usd("claude-sonnet-4.5", 120, 48) == pytest.approx(0.00108)
    assert claude_cost_usd("claude-sonnet-4-5-20250929", 1_000_000, 0) == 3.0
    assert price_of("claude-opus-4-1") == price_of("claude-opus-4")
    assert claude_cost_usd("gpt-4o", 100, 100) is None


async def test_resource_figures_come_from_proc_and_nvidia_smi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "meminfo").write_text("MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 250 kB\n")
    (proc / "stat").write_text("cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 1 1 1\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf '1024, 8192\\n512, 8192\\n'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    meter = ResourceMeter(proc)
    # Between the two samples: 150 of 200 jiffies busy.
    (proc / "stat").write_text("cpu  200 0 150 850 0 0 0 0 0 0\n")

    report = await meter.report()

    assert report["cpu_percent"] == 75.0
    assert (report["ram_used_bytes"], report["ram_total_bytes"]) == (750 * 1024, 1000 * 1024)
    mib = 1024 * 1024
    assert (report["vram_used_bytes"], report["vram_total_bytes"]) == (1536 * mib, 16384 * mib)


async def test_the_sidecar_reports_its_resources_and_its_ollama_endpoint(
    make_sidecar: SidecarMaker,  # noqa: F811
    operator: OperatorClient,
) -> None:
    ollama_url = "http://127.0.0.1:11434"
    watch = operator.watch(["agents"])
    await anext(watch)  # the snapshot

    make_sidecar(args=["--ollama-url", ollama_url])
    async with asyncio.timeout(10):
        async for event in watch:
            if event.get("event") == "agent_resources" and event["agent_id"] == "box-1":
                break
    await watch.aclose()

    assert event["agent"]["resources"]["ram_total_bytes"] > 0
    assert event["agent"]["ollama_url"] == ollama_url
    endpoints = {entry["endpoint_id"]: entry for entry in await operator.request("endpoints_list")}
    assert endpoints["box-1-local"]["url"] == ollama_url
