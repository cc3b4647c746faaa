"""The wire models of PROTOCOL.md section 1, tested without a server.

Inbound frames go through :class:`FrameDecoder` exactly as the server decodes them, and
the replies are checked in their wire form (``model_dump_json(by_alias=True)``).
"""

from __future__ import annotations

import json
import typing
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from agentcom.protocol.agent import AGENT_FRAME, AGENT_FRAME_TYPES, AgentFrame, Identify
from agentcom.protocol.common import CostTier, TargetType, Tier
from agentcom.protocol.errors import FrameDecoder, FrameRejected
from agentcom.protocol.operator import (
    DASHBOARD_FRAME,
    DASHBOARD_FRAME_TYPES,
    OPERATOR_FRAME,
    OPERATOR_FRAME_TYPES,
)
from agentcom.protocol.outbound import (
    ErrorReply,
    FieldError,
    MessagePush,
    RoutingDecision,
    TaskAssign,
)
from agentcom.protocol.schemas import all_schemas

Frame = dict[str, Any]

AGENT_DECODER = FrameDecoder(AGENT_FRAME, AGENT_FRAME_TYPES)
OPERATOR_DECODER = FrameDecoder(OPERATOR_FRAME, OPERATOR_FRAME_TYPES)
DASHBOARD_DECODER = FrameDecoder(DASHBOARD_FRAME, DASHBOARD_FRAME_TYPES)

SECRET = "ac_sup3r-s3cret-t0ken-value"

# A smallest valid example of every agent frame type.
VALID: dict[str, Frame] = {
    "identify": {"type": "identify", "agent_id": "agent-1", "token": SECRET},
    "ping": {"type": "ping"},
    "status": {"type": "status", "status": "idle"},
    "list_agents": {"type": "list_agents"},
    "message": {"type": "message", "payload": {"text": "hi"}},
    "channel_subscribe": {"type": "channel_subscribe", "channel": "general"},
    "channel_unsubscribe": {"type": "channel_unsubscribe", "channel": "general"},
    "channel_publish": {"type": "channel_publish", "channel": "general", "payload": {}},
    "channel_history": {"type": "channel_history", "channel": "general"},
    "list_channels": {"type": "list_channels"},
    "task_accepted": {"type": "task_accepted", "task_id": "t1"},
    "task_progress": {"type": "task_progress", "task_id": "t1"},
    "task_complete": {"type": "task_complete", "task_id": "t1", "generation": 1},
    "task_failed": {"type": "task_failed", "task_id": "t1", "generation": 1},
    "task_rejected": {"type": "task_rejected", "task_id": "t1"},
    "task_recovering": {"type": "task_recovering", "task_id": "t1"},
    "state_report": {"type": "state_report", "task_id": "t1", "generation": 1},
    "resource_report": {"type": "resource_report"},
    "ollama_report": {"type": "ollama_report", "ollama_url": "http://127.0.0.1:11434"},
    "wake_result": {"type": "wake_result", "task_id": "t1", "status": "woken"},
    "agent_restarting": {"type": "agent_restarting"},
}


def frame_of(frame_type: str, **fields: Any) -> Frame:
    """The valid example of ``frame_type`` with ``fields`` set (a value of ... removes it)."""
    frame = {**VALID[frame_type], **fields}
    return {key: value for key, value in frame.items() if value is not ...}


def decode(frame: Frame | str | bytes, decoder: FrameDecoder[Any] = AGENT_DECODER) -> Any:
    """Decode a frame that must be accepted."""
    raw = frame if isinstance(frame, str | bytes) else json.dumps(frame)
    return decoder.decode(raw)


def reject(frame: Frame | str | bytes, decoder: FrameDecoder[Any] = AGENT_DECODER) -> Frame:
    """Decode a frame that must be refused; returns the error reply as sent on the wire."""
    raw = frame if isinstance(frame, str | bytes) else json.dumps(frame, allow_nan=True)
    with pytest.raises(FrameRejected) as rejected:
        decoder.decode(raw)
    wire: Frame = json.loads(rejected.value.reply.model_dump_json(by_alias=True))
    return wire


def only_error(reply: Frame) -> Frame:
    """The single field error of a ``validation_failed`` reply."""
    assert reply["type"] == "error"
    assert reply["error"] == "validation_failed"
    assert len(reply["errors"]) == 1, reply
    entry: Frame = reply["errors"][0]
    return entry


def union_members() -> dict[str, type[BaseModel]]:
    """The models of the inbound agent union, by their ``type`` literal."""
    union = typing.get_args(AgentFrame)[0]
    members: dict[str, type[BaseModel]] = {}
    for model in typing.get_args(union):
        (literal,) = typing.get_args(model.model_fields["type"].annotation)
        members[literal] = model
    return members


# --- every type is known and has a valid form --------------------------------------


def test_known_types_are_exactly_the_members_of_the_frame_union() -> None:
    assert set(AGENT_FRAME_TYPES) == set(union_members())
    assert len(AGENT_FRAME_TYPES) == len(set(AGENT_FRAME_TYPES))
    assert set(VALID) == set(AGENT_FRAME_TYPES)


@pytest.mark.parametrize("frame_type", sorted(VALID))
def test_smallest_valid_frame_of_each_type_is_accepted(frame_type: str) -> None:
    model: Any = decode(VALID[frame_type])
    assert isinstance(model, union_members()[frame_type])
    assert model.model_dump()["type"] == frame_type


# --- not JSON, not an object, no usable type ---------------------------------------


@pytest.mark.parametrize(
    "raw", ["nope", "", "{", '{"type": "ping"', "{'type': 'ping'}", b"\xff\xfe"]
)
def test_text_that_is_not_json_is_invalid_json(raw: str | bytes) -> None:
    reply = reject(raw)
    assert reply["type"] == "error"
    assert reply["error"] == "invalid_json"
    assert "errors" not in reply


@pytest.mark.parametrize("raw", ["[]", '[{"type": "ping"}]', "1", '"ping"', "null", "true"])
def test_json_that_is_not_an_object_is_refused(raw: str) -> None:
    reply = reject(raw)
    entry = only_error(reply)
    assert reply["message_type"] is None
    assert entry["field"] == "$"
    assert entry["error"] == "wrong_type"


def test_missing_type_is_required() -> None:
    reply = reject({"agent_id": "agent-1", "token": SECRET})
    entry = only_error(reply)
    assert reply["message_type"] is None
    assert (entry["field"], entry["error"]) == ("type", "required")


@pytest.mark.parametrize("bad_type", [5, None, True, ["ping"], {"name": "ping"}])
def test_type_that_is_not_a_string_is_wrong_type(bad_type: Any) -> None:
    reply = reject({"type": bad_type})
    entry = only_error(reply)
    assert reply["message_type"] is None
    assert (entry["field"], entry["error"]) == ("type", "wrong_type")


@pytest.mark.parametrize("bad_type", ["bogus", "PING", "task_assign", "auth", ""])
def test_unknown_type_is_refused_and_lists_the_known_types(bad_type: str) -> None:
    reply = reject({"type": bad_type, "task_id": "t1"})
    entry = only_error(reply)
    assert reply["message_type"] == bad_type
    assert entry["field"] == "type"
    assert entry["error"] == "unknown_message_type"
    assert entry["known_types"] == list(AGENT_FRAME_TYPES)


def test_long_unknown_type_is_not_echoed_in_full() -> None:
    # the reply is also published to every dashboard: it must not grow with the input
    reply = reject({"type": "x" * 100_000})
    entry = only_error(reply)
    assert entry["error"] == "unknown_message_type"
    assert reply["message_type"] == "x" * len(reply["message_type"])
    assert len(json.dumps(reply)) < 2_000


# --- missing fields and wrong types ---------------------------------------------------

REQUIRED_FIELDS = [
    ("identify", "agent_id"),
    ("identify", "token"),
    ("status", "status"),
    ("message", "payload"),
    ("channel_subscribe", "channel"),
    ("channel_unsubscribe", "channel"),
    ("channel_publish", "channel"),
    ("channel_publish", "payload"),
    ("channel_history", "channel"),
    ("task_accepted", "task_id"),
    ("task_progress", "task_id"),
    ("task_complete", "task_id"),
    ("task_complete", "generation"),
    ("task_failed", "task_id"),
    ("task_failed", "generation"),
    ("task_rejected", "task_id"),
    ("task_recovering", "task_id"),
    ("ollama_report", "ollama_url"),
]


@pytest.mark.parametrize(("frame_type", "field"), REQUIRED_FIELDS)
def test_missing_required_field_is_required(frame_type: str, field: str) -> None:
    reply = reject(frame_of(frame_type, **{field: ...}))
    entry = only_error(reply)
    assert reply["message_type"] == frame_type
    assert (entry["field"], entry["error"]) == (field, "required")
    assert "value" not in entry


WRONG_TYPES = [
    # a string where an integer is expected is never coerced
    ("task_complete", "generation", "1"),
    ("task_failed", "generation", "2"),
    ("task_progress", "progress", "50"),
    ("channel_history", "limit", "10"),
    ("task_complete", "tokens_used", "12"),
    # a bool is not an integer
    ("task_complete", "generation", True),
    ("task_failed", "generation", False),
    ("task_progress", "progress", True),
    # nor is a float, even a whole one
    ("task_complete", "generation", 1.0),
    ("task_progress", "progress", 2.5),
    # a number where a string is expected is not stringified
    ("status", "status", 5),
    ("task_accepted", "task_id", 17),
    ("identify", "agent_id", 42),
    ("identify", "name", False),
    # numbers are not strings or bools
    ("resource_report", "cpu_percent", "12.5"),
    ("resource_report", "ram_used_bytes", True),
    # containers are what they say
    ("message", "payload", "hello"),
    ("message", "payload", ["hello"]),
    ("identify", "capabilities", "python"),
    ("task_complete", "result", "done"),
    ("task_progress", "execution_event", [1, 2]),
    # null is only allowed where a field is optional
    ("status", "status", None),
    ("task_complete", "generation", None),
]


@pytest.mark.parametrize(("frame_type", "field", "value"), WRONG_TYPES)
def test_value_of_the_wrong_type_is_wrong_type(frame_type: str, field: str, value: Any) -> None:
    reply = reject(frame_of(frame_type, **{field: value}))
    entry = only_error(reply)
    assert reply["message_type"] == frame_type
    assert (entry["field"], entry["error"]) == (field, "wrong_type")


def test_scalar_value_of_the_wrong_type_is_echoed() -> None:
    entry = only_error(reject(frame_of("task_complete", generation="7")))
    assert entry["value"] == "7"


def test_nested_field_error_names_its_path() -> None:
    reply = reject(frame_of("task_complete", result={"tokens_in": "120", "output": "ok"}))
    entry = only_error(reply)
    assert (entry["field"], entry["error"]) == ("result.tokens_in", "wrong_type")

    reply = reject(frame_of("identify", capabilities=["python", 3]))
    entry = only_error(reply)
    assert (entry["field"], entry["error"]) == ("capabilities.1", "wrong_type")


def test_every_problem_of_a_frame_is_listed() -> None:
    reply = reject({"type": "task_complete", "task_id": 5, "generation": "1"})
    assert reply["message_type"] == "task_complete"
    found = {(entry["field"], entry["error"]) for entry in reply["errors"]}
    assert found == {("task_id", "wrong_type"), ("generation", "wrong_type")}


# --- string limits ----------------------------------------------------------------------

STRING_LIMITS = [
    ("identify", "agent_id", 128),
    ("identify", "token", 256),
    ("identify", "name", 256),
    ("identify", "status", 256),
    ("identify", "ollama_url", 512),
    ("status", "status", 256),
    ("message", "to", 128),
    ("channel_subscribe", "channel", 64),
    ("channel_unsubscribe", "channel", 64),
    ("channel_publish", "channel", 64),
    ("channel_history", "channel", 64),
    ("task_failed", "error", 2_000),
    ("task_failed", "reason", 2_000),
    ("task_rejected", "reason", 2_000),
    ("wake_result", "error", 2_000),
    ("wake_result", "reason", 2_000),
    ("wake_result", "status", 256),
    ("task_recovering", "description", 10_000),
    ("task_recovering", "last_status", 256),
    ("ollama_report", "ollama_url", 512),
]


@pytest.mark.parametrize(("frame_type", "field", "limit"), STRING_LIMITS)
def test_string_at_its_limit_is_accepted(frame_type: str, field: str, limit: int) -> None:
    model = decode(frame_of(frame_type, **{field: "x" * limit}))
    assert getattr(model, field) == "x" * limit


@pytest.mark.parametrize(("frame_type", "field", "limit"), STRING_LIMITS)
def test_string_over_its_limit_is_too_long(frame_type: str, field: str, limit: int) -> None:
    reply = reject(frame_of(frame_type, **{field: "x" * (limit + 1)}))
    entry = only_error(reply)
    assert reply["message_type"] == frame_type
    assert (entry["field"], entry["error"]) == (field, "too_long")


def test_limits_count_characters_not_bytes() -> None:
    model = decode(frame_of("identify", agent_id="é" * 128))
    assert model.agent_id == "é" * 128


def test_too_many_capabilities_is_too_long() -> None:
    entry = only_error(reject(frame_of("identify", capabilities=["c"] * 65)))
    assert (entry["field"], entry["error"]) == ("capabilities", "too_long")


# --- numbers ------------------------------------------------------------------------------

OUT_OF_RANGE = [
    ("task_complete", "generation", -1),
    ("task_complete", "generation", 2**53 + 1),
    ("task_complete", "generation", 10**30),
    ("task_failed", "generation", -1),
    ("task_complete", "tokens_used", -5),
    ("task_progress", "progress", -1),
    ("task_progress", "progress", 10**9),
    ("channel_history", "limit", 0),
    ("channel_history", "since", -1),
    ("resource_report", "cpu_percent", -0.5),
    ("resource_report", "ram_used_bytes", -1),
    ("resource_report", "vram_total_bytes", 2**64),
    ("resource_report", "timestamp", -1),
    ("wake_result", "attempt", -1),
]


@pytest.mark.parametrize(("frame_type", "field", "value"), OUT_OF_RANGE)
def test_negative_or_huge_number_is_out_of_range(frame_type: str, field: str, value: int) -> None:
    reply = reject(frame_of(frame_type, **{field: value}))
    entry = only_error(reply)
    assert reply["message_type"] == frame_type
    assert (entry["field"], entry["error"]) == (field, "out_of_range")


def test_execution_metadata_numbers_are_range_checked() -> None:
    for key, value in (("tokens_in", -1), ("estimated_cost_usd", -0.01), ("execution_ms", 2**64)):
        reply = reject(frame_of("task_complete", result={key: value}))
        entry = only_error(reply)
        assert (entry["field"], entry["error"]) == (f"result.{key}", "out_of_range")


def test_integer_is_accepted_where_a_number_is_expected() -> None:
    model = decode(frame_of("resource_report", cpu_percent=12, ram_used_bytes=1024))
    assert model.cpu_percent == 12.0
    assert model.ram_used_bytes == 1024.0


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_number_in_a_typed_field_is_out_of_range(literal: str) -> None:
    reply = reject('{"type": "resource_report", "cpu_percent": NUMBER}'.replace("NUMBER", literal))
    entry = only_error(reply)
    assert (entry["field"], entry["error"]) == ("cpu_percent", "out_of_range")

    reply = reject(
        '{"type": "task_complete", "task_id": "t1", "generation": 1,'
        ' "result": {"execution_ms": NUMBER}}'.replace("NUMBER", literal)
    )
    entry = only_error(reply)
    assert (entry["field"], entry["error"]) == ("result.execution_ms", "out_of_range")


FREE_FORM = [
    ('{"type": "message", "payload": {"score": NUMBER}}', "payload"),
    ('{"type": "message", "payload": {"deep": [{"list": [1, NUMBER]}]}}', "payload"),
    ('{"type": "channel_publish", "channel": "c", "payload": {"x": NUMBER}}', "payload"),
    (
        '{"type": "task_progress", "task_id": "t1", "execution_event": {"value": NUMBER}}',
        "execution_event",
    ),
    (
        '{"type": "task_complete", "task_id": "t1", "generation": 1, "result": {"extra": NUMBER}}',
        "result",
    ),
    (
        '{"type": "task_complete", "task_id": "t1", "generation": 1, "result": {"output": NUMBER}}',
        "result",
    ),
    (
        '{"type": "task_complete", "task_id": "t1", "generation": 1,'
        ' "verification_report": {"score": NUMBER}}',
        "verification_report",
    ),
    ('{"type": "task_recovering", "task_id": "t1", "metadata": {"x": NUMBER}}', "metadata"),
]


@pytest.mark.parametrize(
    "literal", ["NaN", "Infinity", "-Infinity", "1e400", str(2**64), str(-(2**63) - 1), "9" * 400]
)
@pytest.mark.parametrize(("template", "field"), FREE_FORM)
def test_non_finite_number_in_a_free_form_object_is_refused(
    template: str, field: str, literal: str
) -> None:
    # JSON has no NaN or Infinity; accepting them here would re-publish text that is not
    # JSON. Integers beyond 64 bits are JSON, but a JavaScript reader makes them Infinity.
    reply = reject(template.replace("NUMBER", literal))
    entry = only_error(reply)
    assert (entry["field"], entry["error"]) == (field, "out_of_range")
    assert reply["message_type"] == json.loads(template.replace("NUMBER", "0"))["type"]


def test_finite_numbers_in_free_form_objects_are_kept_as_sent() -> None:
    payload = {"n": 1.5, "big": 1e300, "list": [0, -2, {"x": None}], "s": "NaN",
               "u64": 2**64 - 1, "i64": -(2**63), "flag": True}  # fmt: skip
    model = decode(frame_of("message", payload=payload))
    assert model.payload == payload


# --- tolerance: extra fields, nulls ---------------------------------------------------


def test_extra_unknown_fields_are_ignored() -> None:
    model = decode(
        frame_of("identify", protocol_version=1, client_type="sidecar", whatever={"a": [1]})
    )
    assert isinstance(model, Identify)
    assert not hasattr(model, "client_type")

    report = decode(frame_of("resource_report", agent_id="agent-1", cpu_percent=3))
    assert report.cpu_percent == 3.0
    assert "agent_id" not in report.model_dump()


def test_extra_keys_of_a_result_are_kept() -> None:
    model = decode(frame_of("task_complete", result={"status": "success", "custom": [1, 2]}))
    assert model.result.model_dump(exclude_unset=True) == {"status": "success", "custom": [1, 2]}


NULLABLE_OPTIONALS = [
    ("identify", "name"),
    ("identify", "status"),
    ("identify", "capabilities"),
    ("identify", "ollama_url"),
    ("message", "to"),
    ("message", "message_type"),
    ("message", "reply_to"),
    ("channel_history", "limit"),
    ("channel_history", "since"),
    ("task_progress", "progress"),
    ("task_progress", "execution_event"),
    ("task_complete", "result"),
    ("task_complete", "tokens_used"),
    ("task_complete", "verification_report"),
    ("task_complete", "verification_history"),
    ("task_failed", "error"),
    ("task_failed", "reason"),
    ("task_rejected", "reason"),
    ("task_recovering", "last_status"),
    ("resource_report", "vram_used_bytes"),
    ("resource_report", "cpu_percent"),
]


@pytest.mark.parametrize(("frame_type", "field"), NULLABLE_OPTIONALS)
def test_null_optional_field_means_absent(frame_type: str, field: str) -> None:
    with_null = decode(frame_of(frame_type, **{field: None}))
    without = decode(frame_of(frame_type))
    assert with_null.model_dump() == without.model_dump()


def test_null_metadata_inside_a_result_is_accepted() -> None:
    model = decode(
        frame_of("task_complete", result={"tokens_in": None, "estimated_cost_usd": None})
    )
    assert model.result.tokens_in is None
    assert model.result.estimated_cost_usd is None


# --- the token is a secret --------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "identify", "agent_id": "agent-1", "token": SECRET * 10},  # too long
        {"type": "identify", "agent_id": "a" * 129, "token": SECRET},  # another field fails
        {"type": "identify", "token": SECRET},  # agent_id missing
        {"type": "identify", "agent_id": 5, "token": SECRET, "name": 3},
        {"type": "identify", "agent_id": "agent-1", "token": [SECRET]},
        {"type": "identify", "agent_id": "agent-1", "token": {"value": SECRET}},
        {"type": "identfy", "agent_id": "agent-1", "token": SECRET},  # unknown type
        {"agent_id": "agent-1", "token": SECRET},  # no type
    ],
)
def test_token_is_never_echoed_in_an_error(frame: Frame) -> None:
    reply = reject(frame)
    assert SECRET not in json.dumps(reply)
    assert "errors" in reply


def test_token_of_wrong_type_is_reported_without_its_value() -> None:
    entry = only_error(reject({"type": "identify", "agent_id": "agent-1", "token": 123456789}))
    assert (entry["field"], entry["error"]) == ("token", "wrong_type")
    assert "value" not in entry


def test_operator_and_dashboard_tokens_are_never_echoed() -> None:
    reply = reject({"type": "auth", "token": SECRET * 10}, OPERATOR_DECODER)
    assert only_error(reply)["error"] == "too_long"
    assert SECRET not in json.dumps(reply)
    reply = reject({"type": "subscribe", "token": SECRET, "topics": ["nope"]}, DASHBOARD_DECODER)
    assert only_error(reply)["field"] == "topics.0"
    assert SECRET not in json.dumps(reply)


def test_long_values_are_not_echoed() -> None:
    entry = only_error(reject(frame_of("status", status="s" * 300)))
    assert "value" not in entry


# --- operator and dashboard frames ------------------------------------------------------


def test_task_submission_limits_apply_to_operators() -> None:
    submit = {"type": "task_submit", "request_id": "1"}
    reply = reject({**submit, "task": {"description": "d" * 10_001}}, OPERATOR_DECODER)
    assert (only_error(reply)["field"], only_error(reply)["error"]) == (
        "task.description",
        "too_long",
    )
    reply = reject({**submit, "task": {"description": "d", "repo": "r" * 513}}, OPERATOR_DECODER)
    assert (only_error(reply)["field"], only_error(reply)["error"]) == ("task.repo", "too_long")
    reply = reject({**submit, "task": {"description": "d", "max_retries": "3"}}, OPERATOR_DECODER)
    assert only_error(reply)["error"] == "wrong_type"
    accepted = decode(
        {**submit, "task": {"description": "d" * 10_000, "repo": "r" * 512}}, OPERATOR_DECODER
    )
    assert len(accepted.task.description) == 10_000


def test_unknown_operator_type_lists_operator_types() -> None:
    entry = only_error(reject({"type": "identify", "request_id": "1"}, OPERATOR_DECODER))
    assert entry["error"] == "unknown_message_type"
    assert entry["known_types"] == list(OPERATOR_FRAME_TYPES)


# --- outbound frames -------------------------------------------------------------------

TASK_ASSIGN_KEYS = {
    "type",
    "task_id",
    "description",
    "metadata",
    "generation",
    "assigned_at",
    "repo",
    "branch",
    "file_hints",
    "success_criteria",
    "verification_steps",
    "complexity",
    "routing_decision",
    "skip_verification",
    "verification_timeout_ms",
    "max_verification_retries",
}

ROUTING_KEYS = {
    "effective_tier",
    "target_type",
    "selected_endpoint",
    "selected_model",
    "fallback_used",
    "fallback_reason",
    "classification_reason",
    "estimated_cost_tier",
}


def bare_assignment(**fields: Any) -> TaskAssign:
    """A ``task_assign`` with every optional value empty."""
    values: dict[str, Any] = {
        "task_id": "t1",
        "description": "do it",
        "metadata": {},
        "generation": 1,
        "assigned_at": 1_700_000_000_000,
        "repo": None,
        "branch": None,
        "file_hints": [],
        "success_criteria": [],
        "verification_steps": [],
        "complexity": None,
        "routing_decision": None,
        "skip_verification": False,
        "verification_timeout_ms": None,
        "max_verification_retries": 0,
    }
    values.update(fields)
    return TaskAssign(**values)


def test_task_assign_always_carries_every_key_with_nulls_present() -> None:
    wire = json.loads(bare_assignment().model_dump_json(by_alias=True))
    assert set(wire) == TASK_ASSIGN_KEYS
    assert wire["type"] == "task_assign"
    for key in ("repo", "branch", "complexity", "routing_decision", "verification_timeout_ms"):
        assert key in wire and wire[key] is None
    assert wire["file_hints"] == wire["success_criteria"] == wire["verification_steps"] == []
    assert wire["skip_verification"] is False
    assert wire["max_verification_retries"] == 0


@pytest.mark.parametrize("missing", sorted(TASK_ASSIGN_KEYS - {"type"}))
def test_task_assign_cannot_be_built_without_a_key(missing: str) -> None:
    values = bare_assignment().model_dump()
    del values[missing]
    with pytest.raises(ValidationError):
        TaskAssign(**values)


def test_routing_decision_has_exactly_the_eight_keys_as_strings_or_null() -> None:
    minimal = RoutingDecision(effective_tier=Tier.complex, target_type=TargetType.claude)
    full = RoutingDecision(
        effective_tier=Tier.standard,
        target_type=TargetType.ollama,
        selected_endpoint="10.0.0.5:11434",
        selected_model="qwen2.5-coder:7b",
        fallback_used=True,
        fallback_reason="no_healthy_ollama_endpoints",
        classification_reason="explicit: standard",
        estimated_cost_tier=CostTier.local,
    )
    for decision in (minimal, full):
        wire = json.loads(decision.model_dump_json(by_alias=True))
        assert set(wire) == ROUTING_KEYS
        assert isinstance(wire["fallback_used"], bool)
        for key in ROUTING_KEYS - {"fallback_used"}:
            assert wire[key] is None or isinstance(wire[key], str), key
    assert json.loads(full.model_dump_json())["estimated_cost_tier"] == "local"


def test_routing_decision_inside_task_assign_keeps_its_shape() -> None:
    decision = RoutingDecision(
        effective_tier=Tier.complex,
        target_type=TargetType.claude,
        selected_model="claude-sonnet-4.5",
        estimated_cost_tier=CostTier.api,
    )
    wire = json.loads(bare_assignment(routing_decision=decision).model_dump_json(by_alias=True))
    assert set(wire["routing_decision"]) == ROUTING_KEYS
    assert wire["routing_decision"]["target_type"] == "claude"


@pytest.mark.parametrize(
    ("field", "value"),
    [("effective_tier", "huge"), ("target_type", "gpt"), ("estimated_cost_tier", "cheap")],
)
def test_routing_decision_refuses_values_outside_the_contract(field: str, value: str) -> None:
    values: dict[str, Any] = {"effective_tier": "standard", "target_type": "ollama", field: value}
    with pytest.raises(ValidationError):
        RoutingDecision(**values)


def test_message_push_names_the_sender_from() -> None:
    push = MessagePush(
        id="m1",
        sender="agent-1",
        to=None,
        payload={"a": 1},
        message_type=None,
        reply_to=None,
        timestamp=1,
    )
    wire = json.loads(push.model_dump_json(by_alias=True))
    assert wire["from"] == "agent-1"
    assert "sender" not in wire


def test_field_error_omits_value_and_known_types_when_absent() -> None:
    wire = json.loads(FieldError(field="x", error="required", detail="d").model_dump_json())
    assert wire == {"field": "x", "error": "required", "detail": "d"}
    wire = json.loads(ErrorReply(error="not_assigned", task_id="t1").model_dump_json())
    assert (wire["type"], wire["error"], wire["task_id"]) == ("error", "not_assigned", "t1")


# --- /api/schemas ---------------------------------------------------------------------------


def test_schemas_cover_every_inbound_agent_type() -> None:
    schemas = all_schemas()
    agent_to_hub = schemas["agent_to_hub"]
    assert set(agent_to_hub["discriminator"]["mapping"]) == set(AGENT_FRAME_TYPES)
    definitions = agent_to_hub["$defs"]
    for frame_type, model in union_members().items():
        schema = definitions[model.__name__]
        assert schema["properties"]["type"]["const"] == frame_type
        assert "type" in schema["required"]


def test_schemas_state_required_fields_and_limits() -> None:
    definitions = all_schemas()["agent_to_hub"]["$defs"]
    identify = definitions["Identify"]
    assert set(identify["required"]) == {"type", "agent_id", "token"}
    assert identify["properties"]["agent_id"]["maxLength"] == 128
    assert identify["properties"]["token"]["maxLength"] == 256
    assert set(definitions["TaskComplete"]["required"]) == {"type", "task_id", "generation"}


def test_schemas_cover_the_other_directions_and_are_json() -> None:
    schemas = all_schemas()
    assert set(schemas["operator_to_hub"]["discriminator"]["mapping"]) == set(OPERATOR_FRAME_TYPES)
    assert set(schemas["dashboard_to_hub"]["discriminator"]["mapping"]) == set(
        DASHBOARD_FRAME_TYPES
    )
    for name in (
        "TaskAssign",
        "ErrorReply",
        "ValidationFailed",
        "RateLimited",
        "RateLimitWarning",
        "Pong",
        "MessagePush",
    ):
        assert name in schemas["hub_to_agent"], name
    for name in ("MessagePush", "ChannelMessagePush"):
        assert "from" in schemas["hub_to_agent"][name]["properties"], name
    assert "task_id" in schemas["task"]["properties"]
    assert json.loads(json.dumps(schemas)) == schemas
