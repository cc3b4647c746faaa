"""``--log-format json``: one JSON object per line, each task transition once, never a token."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from conftest import METADATA
from hubprocess import HubProcess

from agentcom.client import AgentClient, OperatorClient
from agentcom.logs import JsonFormatter
from agentcom.sidecar.config import load as load_sidecar_settings


async def test_json_log_tells_each_transition_once_with_its_ids_and_no_token(
    tmp_path: Path,
) -> None:
    # given a hub logging JSON at DEBUG, an agent and an operator
    hub = HubProcess(tmp_path, env={"AGENTCOM_LOG_LEVEL": "DEBUG"},
                     serve_args=["--log-format", "json"])  # fmt: skip
    hub.start()
    try:
        agent_token, admin_token = hub.make_token("worker-1"), hub.make_token("ops", "admin")
        agent = AgentClient(hub.ws_url, "worker-1", agent_token, heartbeat_s=None)
        await agent.connect()
        async with OperatorClient(hub.http_url, admin_token) as operator:
            # when a task fails once, is retried and completes
            task = await operator.submit("log me", complexity_tier="complex", max_retries=1)
            task_id = task["task_id"]
            await agent.receive_type("task_assign")
            await agent.send({"type": "task_failed", "task_id": task_id, "generation": 1,
                              "error": "boom"})  # fmt: skip
            assert (await agent.receive_type("task_ack"))["status"] == "retried"
            await agent.receive_type("task_assign")
            await agent.send({"type": "task_accepted", "task_id": task_id})
            await agent.receive_type("task_ack")
            await agent.send({"type": "task_complete", "task_id": task_id, "generation": 2,
                              "result": METADATA})  # fmt: skip
            assert (await agent.receive_type("task_ack"))["status"] == "complete"
        await agent.close()
    finally:
        hub.stop()

    # then every line is one JSON object with the four fields
    lines = [json.loads(line) for line in hub.log().splitlines()]
    assert lines
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line)
        assert line["time"].endswith("+00:00")
    # each transition of the task once, at INFO, with the agent and the generation
    story = [(line["event"], line.get("agent_id"), line["generation"])
             for line in lines if line.get("task_id") == task_id]  # fmt: skip
    assert story == [
        ("task_submitted", None, 0),
        ("task_assigned", "worker-1", 1),
        ("task_failed", "worker-1", 1),
        ("task_retried", "worker-1", 1),
        ("task_assigned", "worker-1", 2),
        ("task_accepted", "worker-1", 2),
        ("task_completed", "worker-1", 2),
    ]
    assert {line["level"] for line in lines if line.get("task_id") == task_id} == {"INFO"}
    # and no token, not even at DEBUG
    text = hub.log()
    assert agent_token not in text
    assert admin_token not in text


def test_json_lines_escape_tracebacks_and_keep_only_known_fields() -> None:
    # given a record with an exception, context ids and an attribute that is not one
    try:
        raise ValueError("bad\nthing")
    except ValueError as error:
        record = logging.LogRecord("agentcom.x", logging.ERROR, __file__, 1, "failed %s", ("it",),
                                   (type(error), error, error.__traceback__))  # fmt: skip
    record.task_id = "abc"
    record.secret = "s3cret"

    # when it is formatted
    line = JsonFormatter().format(record)

    # then it is one line of JSON with the message, the id and the traceback, nothing else
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "failed it"
    assert parsed["task_id"] == "abc"
    assert "ValueError: bad" in parsed["exception"]
    assert "s3cret" not in line


def test_the_sidecar_takes_its_log_level_in_any_case(tmp_path: Path) -> None:
    # given a level in small letters, as a flag and in the settings file
    required = {"hub_url": "ws://hub/ws", "agent_id": "a", "token": "t"}
    toml = tmp_path / "sidecar.toml"
    toml.write_text('log_level = "warning"\n')

    # then each is the level logging names in capitals
    assert load_sidecar_settings({**required, "log_level": "info"}, None, {}).log_level == "INFO"
    assert load_sidecar_settings(required, toml, {}).log_level == "WARNING"
