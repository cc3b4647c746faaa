"""``agentcom sidecar`` settings: flags over environment over the TOML file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import TokenMaker
from hubprocess import HubProcess, run_cli_async
from realsidecar import RealSidecar
from test_tls import Certificate, certificate, tls_hub  # noqa: F401

from agentcom.client import OperatorClient
from agentcom.protocol.common import Tier
from agentcom.sidecar.config import SidecarConfigError, default_state_dir, load

ENV = {"AGENTCOM_HUB_URL": "ws://env/ws", "AGENTCOM_AGENT_ID": "env-agent"}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_flags_win_over_the_environment_which_wins_over_the_file(tmp_path: Path) -> None:
    toml = write(
        tmp_path / "s.toml",
        'hub_url = "ws://file/ws"\nagent_id = "file-agent"\ntoken = "file-token"\n'
        "timeout_trivial_s = 5\n",
    )

    config = load({"agent_id": "flag-agent", "name": None}, toml, ENV)

    assert config.agent_id == "flag-agent"
    assert config.hub_url == "ws://env/ws"
    assert config.token == "file-token"
    assert config.timeout_for(Tier.trivial) == 5
    assert config.timeout_for(None) == config.timeout_standard_s


def test_an_unknown_key_in_the_file_is_an_error_naming_it(tmp_path: Path) -> None:
    toml = write(tmp_path / "s.toml", 'hub_url = "ws://h/ws"\ntimout_trivial_s = 5\n')

    with pytest.raises(SidecarConfigError, match="timout_trivial_s"):
        load({"agent_id": "a", "token": "t"}, toml, {})


def test_a_missing_token_is_an_error_naming_it() -> None:
    with pytest.raises(SidecarConfigError, match="token"):
        load({}, None, ENV)


def test_the_default_state_directory_is_under_the_state_home() -> None:
    assert default_state_dir("gpu-box", {"XDG_STATE_HOME": "/srv/state"}) == Path(
        "/srv/state/agentcom/sidecar/gpu-box"
    )


async def test_bad_settings_exit_2_with_one_line(tmp_path: Path) -> None:
    result = await run_cli_async(
        "sidecar", "--hub", "ws://127.0.0.1:1/ws", "--agent-id", "a",
        "--state-dir", str(tmp_path / "state"),
    )  # fmt: skip

    assert result.returncode == 2
    assert result.stderr.startswith("agentcom sidecar: token: ")
    assert len(result.stderr.splitlines()) == 1


async def test_a_second_sidecar_on_the_same_state_directory_exits_2(
    tmp_path: Path, ws_url: str, make_token: TokenMaker
) -> None:
    token = make_token("box-1")
    first = RealSidecar(tmp_path, ws_url, "box-1", token).start()
    try:
        await first.event("connected")

        result = await run_cli_async(
            "sidecar", "--hub", ws_url, "--agent-id", "box-1", "--token", token,
            "--state-dir", str(first.state_dir),
        )  # fmt: skip
    finally:
        await first.close()

    assert result.returncode == 2
    assert result.stderr == (
        f"agentcom sidecar: another sidecar is using the state directory {first.state_dir}\n"
    )


async def test_text_logs_are_one_human_line_per_connection_and_per_task_step(
    tmp_path: Path, ws_url: str, make_token: TokenMaker, operator: OperatorClient
) -> None:
    sidecar = RealSidecar(
        tmp_path, ws_url, "box-1", make_token("box-1"), args=["--log-format", "text"]
    ).start()
    try:
        task = await operator.submit(
            "say hi", complexity_tier="trivial", metadata={"shell_command": "echo hi"}
        )
        await operator.wait_task(task["task_id"], timeout_s=10)
    finally:
        await sidecar.close()

    task_id = task["task_id"]
    assert sidecar.stderr is not None
    lines = [line.split(" ", 3)[3] for line in sidecar.stderr.rest()]  # after date, time, level
    assert lines[1] == f"connected to {ws_url} and identified as box-1"
    assert lines[2].startswith(f"task {task_id} assigned (generation 1, sidecar, trivial): ")
    assert lines[3].startswith(f"task {task_id} succeeded in ")
    assert lines[4] == f"task {task_id} reported; the hub says complete"
    assert lines[-1] == "sidecar stopped"


@pytest.mark.parametrize("url", ["not a url", "ftp://hub/ws", "ws:///ws", "hub:4000"])
def test_a_hub_url_that_is_not_one_is_an_error(url: str) -> None:
    with pytest.raises(SidecarConfigError, match="hub_url: Value error, should"):
        load({"hub_url": url, "agent_id": "a", "token": "t"}, None, {})


async def test_a_refused_token_exits_4_with_the_reason(
    tmp_path: Path, ws_url: str, make_token: TokenMaker
) -> None:
    make_token("box-1")
    sidecar = RealSidecar(tmp_path, ws_url, "box-1", "ac_not-the-token").start()
    try:
        refused = await sidecar.event("refused")
        assert await sidecar.wait() == 4
    finally:
        await sidecar.close()

    assert refused["message"] == "the hub refused this agent: invalid_token"


async def test_a_work_directory_that_does_not_exist_exits_2(tmp_path: Path) -> None:
    result = await run_cli_async(
        "sidecar", "--hub", "ws://127.0.0.1:1/ws", "--agent-id", "a", "--token", "t",
        "--state-dir", str(tmp_path / "state"), "--workdir", str(tmp_path / "missing"),
    )  # fmt: skip

    assert result.returncode == 2
    assert result.stderr == (
        f"agentcom sidecar: workdir: {tmp_path / 'missing'} is not a directory "
        "(shell tasks run there)\n"
    )


async def test_over_tls_the_sidecar_trusts_the_ca_file_it_is_given(
    tmp_path: Path,
    tls_hub: HubProcess,  # noqa: F811
    certificate: Certificate,  # noqa: F811
    closing: list[Any],
) -> None:
    token = tls_hub.make_token("tls-box")
    untrusting = RealSidecar(tmp_path / "a", tls_hub.ws_url, "tls-box", token)
    closing.append(untrusting)
    untrusting.start()
    unreachable = await untrusting.event("unreachable")
    assert "CERTIFICATE_VERIFY_FAILED" in unreachable["message"]
    await untrusting.close()

    sidecar = RealSidecar(
        tmp_path / "b", tls_hub.ws_url, "tls-box", token,
        env={"AGENTCOM_CAFILE": str(certificate.certfile)},
    )  # fmt: skip
    closing.append(sidecar)
    sidecar.start()
    await sidecar.event("connected")
    context = certificate.trusting_context()
    async with OperatorClient(
        tls_hub.http_url, tls_hub.make_token("ops", "admin"), ssl=context
    ) as operator:
        task = await operator.submit(
            "say hi", complexity_tier="trivial", metadata={"shell_command": "echo hi"}
        )
        done = await operator.wait_task(task["task_id"], timeout_s=10)

    assert done["status"] == "completed"
    assert done["result"]["output"] == "hi\n"
