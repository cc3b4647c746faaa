"""Property-based fuzzing of the live hub (PROTOCOL.md section 1, "Errors and abuse").

Random JSON values, mutations of every valid frame of ``protocol/agent.py`` and
``protocol/operator.py``, binary messages, text that is not UTF-8 and messages over
``max_frame_bytes`` go to every entrance: ``/ws`` before and after ``identify``,
``/ws/operator`` before and after ``auth``, ``/ws/dashboard`` before and after
``subscribe``. The properties, for every frame:

- it gets one well-formed answer (an ``error`` with a known code, naming the field when
  validation failed, or the frame's normal reply), or the connection is closed with the
  documented code: 1003 for a binary message, 1007 for text that is not UTF-8, 1008 at
  the tenth violation (or for a bad first frame on the operator and dashboard sockets),
  1009 for a message over the limit; a subscribed dashboard ignores what it is sent;
- the hub logs no error and no traceback (``agentcom``, ``websockets``, ``asyncio``);
- bystanders keep being served: between batches of examples and at the end a
  well-behaved agent answers a ping and runs to completion a task an operator submits,
  and a dashboard receives every event as strict JSON, one ``validation_event`` per
  violation the fuzzer caused;
- garbage stores nothing: the tasks in the database are exactly the bystander's and
  those whose submission was answered with a result.

Besides the random examples, a deterministic sweep takes every field of every frame in
turn: dropped when required, of the wrong kind, and ``NaN`` / ``1e999`` at every place
inside it.

How hypothesis meets the live hub: the ``hub`` fixture runs the real server on the test's
event loop, and hypothesis cannot drive an async test body that uses function-scoped async
fixtures. So each test starts its hub and bystanders on the loop as usual, then runs the
hypothesis properties in a worker thread (``asyncio.to_thread``). There they speak to the
hub over real sockets with the synchronous ``websockets`` client while the loop keeps
serving; bystander checks are scheduled back onto the loop with
``asyncio.run_coroutine_threadsafe``. Text that is not UTF-8 goes out as a text message
through ``send(data, text=True)``, which writes the bytes unchecked. Runs are reproducible:
derandomized, no example database, no deadline.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import gc
import ipaddress
import itertools
import json
import logging
import re
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

import hypothesis
import pytest
from conftest import AgentMaker, TokenMaker
from hubprocess import closed_port
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st
from pydantic import BaseModel
from websockets.asyncio.client import ClientConnection as AsyncConnection
from websockets.asyncio.client import connect as connect_async
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from agentcom.client import AgentClient, OperatorClient
from agentcom.config import Settings
from agentcom.hub.endpoints import normalize_url
from agentcom.protocol import agent as agent_protocol
from agentcom.protocol import operator as operator_protocol
from agentcom.server.app import HubServer

Frame = dict[str, Any]

MAX_FRAME_BYTES = 256 * 1024
REPLY_TIMEOUT_S = 20.0  # generous: the machine may be busy with other test runs
CHECK_TIMEOUT_S = 60.0
CHECK_EVERY = 40  # examples between two bystander checks
MAX_VIOLATIONS = 10  # hub/limits.py: the tenth violation closes the connection

FUZZ = hypothesis.settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    # The hub keeps state between examples (connections, violation counts), so a shrunk
    # replay would not reproduce a failure faithfully: report the example as found.
    phases=[Phase.explicit, Phase.generate],
)

BYSTANDER_SKILL = "served-while-fuzzed"  # only the bystander has it
UNSERVED_SKILL = "needed-by-no-agent"  # keeps fuzzed submissions in the queue

VIOLATIONS = frozenset(
    {"invalid_json", "validation_failed", "invalid_token", "token_agent_mismatch"}
)
FIELD_ERRORS = frozenset(
    {"required", "wrong_type", "too_long", "unknown_message_type", "out_of_range"}
)
AGENT_ERRORS = VIOLATIONS | {
    "not_identified", "not_assigned", "channel_not_found", "unknown_recipient", "invalid_url",
}  # fmt: skip
FENCING_PREFIXES = ("task_complete_failed", "task_fail_failed")
FENCING_REASONS = frozenset({"not_found", "stale_generation", "invalid_state"})
OPERATOR_ERRORS = VIOLATIONS | {
    "not_found", "invalid_state", "forbidden", "invalid_url", "invalid_name", "already_exists",
    "already_authenticated", "too_many_requests", "timeout", "channel_not_found",
    "invalid_task_id", "ambiguous_task_id",
}  # fmt: skip
AGENT_REPLIES: dict[str, frozenset[str]] = {
    "identify": frozenset({"identified"}),
    "ping": frozenset({"pong"}),
    "status": frozenset({"status_updated"}),
    "list_agents": frozenset({"agents"}),
    "message": frozenset({"message_sent"}),
    "channel_subscribe": frozenset({"channel_subscribed"}),
    "channel_unsubscribe": frozenset({"channel_unsubscribed"}),
    "channel_publish": frozenset({"channel_published"}),
    "channel_history": frozenset({"channel_history"}),
    "list_channels": frozenset({"channels"}),
    "task_accepted": frozenset({"task_ack"}),
    "task_complete": frozenset({"task_ack"}),
    "task_failed": frozenset({"task_ack"}),
    "task_rejected": frozenset({"task_ack"}),
    "task_recovering": frozenset({"task_continue", "task_reassign"}),
    "state_report": frozenset({"state_report_ack"}),
    "ollama_report": frozenset({"ollama_report_ack"}),
}
SILENT_FRAMES = frozenset({"task_progress", "resource_report", "wake_result",
                           "agent_restarting"})  # no reply  # fmt: skip
PUSHES = frozenset({
    "agent_joined", "agent_left", "status_changed", "message", "channel_message",
    "channel_agent_joined", "task_cancelled", "rate_limit_warning", "restart_sidecar",
})  # fmt: skip
TOO_MANY_VIOLATIONS = (1008, "too many validation errors")

TASK_ID = "0f" * 16  # well-formed, never issued


def models_of(union: Any) -> dict[str, type[BaseModel]]:
    """``type`` value to model, for a discriminated union of frames."""
    members = get_args(get_args(union)[0]) or (get_args(union)[0],)
    return {get_args(model.model_fields["type"].annotation)[0]: model for model in members}


AGENT_MODELS = models_of(agent_protocol.AgentFrame)
OPERATOR_MODELS = models_of(operator_protocol.OperatorFrame)
DASHBOARD_MODELS = models_of(operator_protocol.DashboardFrame)


@functools.cache
def unused_url() -> str:
    """A loopback URL nobody listens on: the only kind of endpoint the fuzzer registers."""
    return f"http://127.0.0.1:{closed_port()}"


def agent_frames(agent_id: str, token: str) -> dict[str, Frame]:
    """A valid frame of every agent type, every optional field filled in."""
    task = {"task_id": TASK_ID}
    return {
        "identify": {
            "type": "identify", "agent_id": agent_id, "token": token, "name": "Fuzz",
            "status": "idle", "capabilities": ["python"], "ollama_url": unused_url(),
            "pm2_info": {"name": "fuzz", "status": "online", "uptime_ms": 1000,
                         "restart_count": 0, "memory_bytes": 1.0e6},
        },
        "ping": {"type": "ping"},
        "status": {"type": "status", "status": "thinking"},
        "list_agents": {"type": "list_agents"},
        "message": {
            "type": "message", "payload": {"text": "hi", "n": 1}, "to": "bystander",
            "message_type": "note", "reply_to": "m-1",
        },
        "channel_subscribe": {"type": "channel_subscribe", "channel": "general"},
        "channel_unsubscribe": {"type": "channel_unsubscribe", "channel": "general"},
        "channel_publish": {
            "type": "channel_publish", "channel": "general", "payload": {"text": "hi"},
            "message_type": "note", "reply_to": "m-1",
        },
        "channel_history": {
            "type": "channel_history", "channel": "general", "limit": 10, "since": 0,
        },
        "list_channels": {"type": "list_channels"},
        "task_accepted": {"type": "task_accepted", **task},
        "task_progress": {
            "type": "task_progress", **task, "progress": 50,
            "execution_event": {"type": "stdout", "text": "working", "event_type": "tool_call",
                                "tool_name": "read_file", "args_summary": "{}",
                                "result_summary": "OK", "iteration": 1},
        },
        "task_complete": {
            "type": "task_complete", **task, "generation": 1,
            "result": {
                "status": "success", "output": "done", "error": "none", "model_used": "m",
                "tokens_in": 1, "tokens_out": 2, "tokens_used": 3, "estimated_cost_usd": 0.5,
                "equivalent_claude_cost_usd": 1.5, "execution_ms": 12.5,
                "verification_status": "passed", "verification_attempts": 1,
                "termination_reason": "final_answer", "iterations_used": 2,
            },
            "tokens_used": 3, "verification_report": {"ok": True},
            "verification_history": [{"ok": True}],
        },
        "task_failed": {
            "type": "task_failed", **task, "generation": 1, "error": "boom", "reason": "why",
        },
        "task_rejected": {"type": "task_rejected", **task, "reason": "busy"},
        "task_recovering": {
            "type": "task_recovering", **task, "last_status": "working", "description": "d",
            "metadata": {"k": "v"},
        },
        "state_report": {
            "type": "state_report", **task, "generation": 1, "status": "working",
            "assigned_at": 1.7e12,
        },
        "agent_restarting": {"type": "agent_restarting", "reason": "asked to"},
        "resource_report": {
            "type": "resource_report", "cpu_percent": 12.5, "ram_used_bytes": 1.0e9,
            "ram_total_bytes": 2.0e9, "vram_used_bytes": 0.0, "vram_total_bytes": 8.0e9,
            "timestamp": 1.7e12,
        },
        "ollama_report": {"type": "ollama_report", "ollama_url": unused_url()},
        "wake_result": {
            "type": "wake_result", **task, "status": "woken", "attempt": 1, "error": "e",
            "reason": "r",
        },
    }  # fmt: skip


def operator_frames(token: str) -> dict[str, Frame]:
    """A valid frame of every operator type, every optional field filled in."""
    submission = {
        "description": "fuzzed task", "priority": "low", "complexity_tier": "standard",
        "needed_capabilities": [UNSERVED_SKILL], "metadata": {"k": "v", "n": [1, 2.5]},
        "max_retries": 1, "repo": "repo", "branch": "main", "file_hints": ["a.py"],
        "success_criteria": ["works"], "verification_steps": ["pytest"],
        "skip_verification": False, "verification_timeout_ms": 1000, "depends_on": [],
    }  # fmt: skip
    request = {"request_id": "fuzz-1"}
    task = {**request, "task_id": TASK_ID}
    return {
        "auth": {"type": "auth", "token": token},
        "task_submit": {"type": "task_submit", **request, "task": submission},
        "task_get": {"type": "task_get", **task},
        "task_list": {
            "type": "task_list", **request, "status": ["queued", "working"], "priority": "low",
            "agent": "a", "capability": UNSERVED_SKILL, "since_s": 60.0, "limit": 5,
            "cursor": "1795602657784.12",
        },
        "task_requeue": {"type": "task_requeue", **task},
        "task_cancel_many": {"type": "task_cancel_many", **request, "task_ids": [TASK_ID]},
        "task_retry_many": {"type": "task_retry_many", **request, "task_ids": [TASK_ID]},
        "agent_drain": {"type": "agent_drain", **request, "agent_id": "never-connected"},
        "agent_undrain": {"type": "agent_undrain", **request, "agent_id": "never-connected"},
        "task_cancel": {"type": "task_cancel", **task},
        "task_retry": {"type": "task_retry", **task},
        "task_wait": {"type": "task_wait", **task, "timeout_s": 1.0},
        "task_route": {"type": "task_route", **request, "task": submission},
        "agents_list": {"type": "agents_list", **request},
        "agent_restart": {"type": "agent_restart", **request, "agent_id": "nobody",
                          "reason": "r"},
        "stats": {"type": "stats", **request},
        "endpoints_list": {"type": "endpoints_list", **request},
        "endpoint_add": {"type": "endpoint_add", **request, "url": unused_url(), "name": "fuzz-ep"},
        "endpoint_remove": {"type": "endpoint_remove", **request, "endpoint_id": "nope"},
        "endpoint_approve": {"type": "endpoint_approve", **request, "endpoint": "nope"},
        "channel_create": {
            "type": "channel_create", **request, "name": "fuzz-channel", "description": "d",
        },
        "channels_list": {"type": "channels_list", **request},
    }  # fmt: skip


def dashboard_frames(token: str) -> dict[str, Frame]:
    """The one dashboard frame, every optional field filled in."""
    return {
        "subscribe": {"type": "subscribe", "token": token, "topics": ["tasks", "agents"],
                      "batch": True}
    }  # fmt: skip


# --- payloads ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """JSON text written as is: ``NaN``, ``Infinity``, ``1e999``, deep nesting."""

    text: str


def to_json(value: Any, ascii_only: bool) -> str:
    """``value`` as JSON text, with :class:`Raw` parts written verbatim."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        items = (
            f"{json.dumps(k, ensure_ascii=ascii_only)}:{to_json(v, ascii_only)}"
            for k, v in value.items()
        )
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(item, ascii_only) for item in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


@dataclass(frozen=True)
class Payload:
    """One message to send, and what the answer to it must show."""

    data: bytes
    binary: bool = False
    frame_type: str | None = None  # the frame's ``type``, when it has a string one
    names_field: str | None = None  # a validation error must name this field
    must_fail: bool = False  # only an error is an acceptable answer
    request_id: str | None = None  # the ``request_id`` sent, when it is usable
    keeps_request_id: bool = False  # the error must repeat ``request_id``

    def expected_close(self, binary_refused: bool = True) -> int | None:
        """The close code the message must cause, None when it must be answered."""
        if len(self.data) > MAX_FRAME_BYTES:
            return 1009
        if self.binary:
            return 1003 if binary_refused else None
        try:
            self.data.decode("utf-8")
        except UnicodeDecodeError:
            return 1007
        return None


def _is_local(url: str) -> bool:
    try:
        host = urlsplit(normalize_url(url)).hostname
    except ValueError:
        return True  # the hub refuses it and never calls it
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def keep_urls_local(value: Any) -> Any:
    """Point any URL the hub would call at a closed loopback port: no fuzzed frame may make
    the hub send traffic anywhere else."""
    if not isinstance(value, dict):
        return value
    for key in ("url", "ollama_url"):
        candidate = value.get(key)
        if isinstance(candidate, str) and not _is_local(candidate):
            value = {**value, key: unused_url()}
    return value


def payload_of(value: Any, ascii_only: bool, **expectations: Any) -> Payload:
    """The message for a JSON value (lone surrogates are sent as they are: not UTF-8)."""
    value = keep_urls_local(value)
    text = to_json(value, ascii_only)
    frame_type = request_id = None
    if isinstance(value, dict):
        if isinstance(value.get("type"), str):
            frame_type = value["type"]
        candidate = value.get("request_id")
        if isinstance(candidate, str) and 1 <= len(candidate) <= 64:
            request_id = candidate
    return Payload(
        text.encode("utf-8", "surrogatepass"),
        frame_type=frame_type,
        request_id=request_id,
        **expectations,
    )


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _not_json(text: str) -> Payload:
    try:
        json.loads(text)
    except ValueError:
        return Payload(text.encode(), must_fail=True)
    return Payload(text.encode())  # random text that happens to be JSON: "1", "[]" ...


NOT_JSON = st.builds(
    _not_json,
    st.text(max_size=40)
    | st.sampled_from(["", " ", "{", "}", "{'type': 'ping'}", '{"type":"ping",}', "[1,]",
                       '{"type":"ping"} x', '{"type":"ping"}{}', "// {}", "undefined", "0x10",
                       '{"type":"ping" "x":1}', "\ufeff{}", '{"type":\'ping\'}'])
    | st.builds(lambda text, cut: text[:cut], st.just('{"type":"status","status":"idle"}'),
                st.integers(1, 31)),
)  # fmt: skip


def random_payloads(models: dict[str, type[BaseModel]]) -> st.SearchStrategy[Payload]:
    """Any JSON value, objects with a known or made-up ``type`` and known field names, and
    text that is not JSON."""
    names = sorted({name for model in models.values() for name in model.model_fields})
    typed = st.builds(
        lambda frame_type, fields: {**fields, "type": frame_type},
        st.sampled_from(sorted(models)) | st.text(max_size=16),
        st.dictionaries(st.sampled_from(names) | st.text(max_size=8), JSON_VALUES, max_size=6),
    )
    return st.builds(payload_of, JSON_VALUES | typed, st.booleans()) | NOT_JSON


NON_FINITE = ["NaN", "-NaN", "Infinity", "-Infinity", "1e999", "-1e999"]
EDGE_NUMBERS: list[Any] = [
    0, -1, -(2**31), 2**31, 2**53, 2**53 + 1, 2**63, 2**64, -(2**63) - 1, 10**30, 10**400,
    1e308, -1e308, 5e-324, 0.5, -0.0, Raw("9" * 5000), Raw("-" + "9" * 5000), Raw("1" * 400 + ".5"),
]  # fmt: skip
DEPTHS = [1, 64, 127, 128, 129, 255, 256, 257, 1000, 10_000]
LENGTHS = [0, 1, 63, 64, 65, 127, 128, 129, 255, 256, 257, 511, 512, 513, 1999, 2000, 2001,
           9999, 10_000, 10_001, 100_000]  # fmt: skip
UNICODE_EDGES = [
    "\ud800", "\udfff", "a\ud800b", "\udc00\ud800", "\x00", "a\x00b", "\u202eevil", "\u200f",
    "\u200b", "\ufeff", "\uffff", "\U0001f916", "\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "\U00010000", "\U0010ffff", "e\u0301", "\x7f", "\u2028\u2029", "\\", '"', "</script>",
]  # fmt: skip
MUTATIONS = [
    "drop",
    "wrong_type",
    "non_finite",
    "number",
    "deep",
    "long",
    "unicode",
    "extra",
    "retype",
]


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "list", dict: "object"}[type(value)]


KINDS: dict[str, st.SearchStrategy[Any]] = {
    "bool": st.booleans(),
    "number": st.integers() | st.floats(allow_nan=False, allow_infinity=False),
    "string": st.text(max_size=8),
    "list": st.lists(SCALARS, max_size=3),
    "object": st.dictionaries(st.text(max_size=5), SCALARS, max_size=3),
}


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place inside a frame: keys of objects and indexes of lists, at any depth."""
    if isinstance(value, dict):
        items: list[tuple[Any, Any]] = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    else:
        return []
    paths = []
    for key, item in items:
        paths.append((*prefix, key))
        paths.extend(_paths(item, (*prefix, key)))
    return paths


def _set(frame: Frame, path: tuple[Any, ...], value: Any) -> None:
    target: Any = frame
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


@st.composite
def mutated_payloads(
    draw: st.DrawFn, bases: dict[str, Frame], models: dict[str, type[BaseModel]]
) -> Payload:
    """One valid frame with one thing wrong (or merely odd, for ``extra`` and ``number``)."""
    frame_type = draw(st.sampled_from(sorted(bases)))
    frame = copy.deepcopy(bases[frame_type])
    model = models[frame_type]
    mutation = draw(st.sampled_from(MUTATIONS))
    expectations: dict[str, Any] = {}
    if mutation == "drop":
        required = [name for name, info in model.model_fields.items() if info.is_required()]
        name = draw(st.sampled_from(sorted(required)))
        del frame[name]
        expectations = {"names_field": name, "keeps_request_id": name != "request_id"}
    elif mutation == "wrong_type":
        name = draw(st.sampled_from(sorted(frame)))
        own = _kind(frame[name])
        other = draw(st.sampled_from(sorted(set(KINDS) - {own})))
        frame[name] = draw(KINDS[other])
        expectations = {"names_field": name, "keeps_request_id": name != "request_id"}
    elif mutation == "extra":
        keys = st.text(max_size=12) | st.sampled_from(UNICODE_EDGES)
        extra = draw(st.dictionaries(keys, JSON_VALUES, min_size=1, max_size=3))
        frame.update({key: value for key, value in extra.items() if key not in model.model_fields})
    elif mutation == "retype":
        frame["type"] = draw(
            st.sampled_from(sorted({*AGENT_MODELS, *OPERATOR_MODELS})) | st.text(max_size=20)
        )
    else:
        path = draw(st.sampled_from(_paths(frame)))
        if mutation == "non_finite":
            _set(frame, path, Raw(draw(st.sampled_from(NON_FINITE))))
            expectations = {"must_fail": True}
        elif mutation == "number":
            number = st.sampled_from(EDGE_NUMBERS) | st.integers() | KINDS["number"]
            _set(frame, path, draw(number))
        elif mutation == "deep":
            depth = draw(st.sampled_from(DEPTHS))
            nested = draw(
                st.sampled_from(["[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth])
            )
            _set(frame, path, Raw(nested))
        elif mutation == "long":
            character = draw(st.sampled_from(["x", "\u00e9", "\U0001f916", "\x00", "\ud800"]))
            _set(frame, path, character * draw(st.sampled_from(LENGTHS)))
        else:
            _set(
                frame, path, draw(st.sampled_from(UNICODE_EDGES) | st.text(min_size=1, max_size=12))
            )
    return payload_of(frame, draw(st.booleans()), **expectations)


WRONG_KIND_VALUES: dict[str, Any] = {
    "null": 1, "bool": "yes", "number": "12", "string": 12345, "list": {"a": 1}, "object": ["a"],
}  # fmt: skip


def systematic_payloads(
    bases: dict[str, Frame], models: dict[str, type[BaseModel]]
) -> list[Payload]:
    """Every field of every frame, one at a time: dropped when required, given a value of
    the wrong kind, and ``NaN`` / ``1e999`` at every place inside it."""
    payloads = []
    for frame_type, base in sorted(bases.items()):
        model = models[frame_type]
        for name, info in model.model_fields.items():
            if info.is_required():
                frame = {key: value for key, value in base.items() if key != name}
                expectations = {"names_field": name, "keeps_request_id": name != "request_id"}
                payloads.append(payload_of(frame, True, **expectations))
        for name, value in base.items():
            frame = {**base, name: WRONG_KIND_VALUES[_kind(value)]}
            expectations = {"names_field": name, "keeps_request_id": name != "request_id"}
            payloads.append(payload_of(frame, True, **expectations))
        for path in _paths(base):
            for token in ("NaN", "1e999"):
                frame = copy.deepcopy(base)
                _set(frame, path, Raw(token))
                payloads.append(payload_of(frame, True, must_fail=True))
    return payloads


INVALID_UTF8 = [
    b"\xff",
    b"\xfe",
    b"\x80",
    b"\xc0\x80",
    b"\xed\xa0\x80",
    b"\xe2\x82",
    b"\xf4\x90\x80\x80",
]


@st.composite
def malformed_messages(draw: st.DrawFn, valid: list[Frame]) -> Payload:
    """A binary message, text that is not UTF-8, or a message over ``max_frame_bytes``."""
    kind = draw(st.sampled_from(["binary", "not_utf8", "too_large"]))
    if kind == "binary":
        frame = draw(st.sampled_from(valid))
        data = draw(st.binary(max_size=64) | st.just(json.dumps(frame).encode()))
        return Payload(data, binary=True)
    if kind == "not_utf8":
        text = json.dumps(draw(st.sampled_from(valid))).encode()
        cut = draw(st.integers(0, len(text)))
        return Payload(text[:cut] + draw(st.sampled_from(INVALID_UTF8)) + text[cut:])
    size = MAX_FRAME_BYTES + draw(st.integers(1, 4096))
    filler = draw(st.sampled_from([b"x", "\u00e9".encode(), b"["]))
    prefix = b'{"type":"ping","pad":"'
    return Payload((prefix + filler * size)[:size], binary=draw(st.booleans()))


# --- checking answers -------------------------------------------------------------------------


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")


def strict_json(text: str | bytes) -> Frame:
    """Parse what the hub sent; NaN and Infinity are not JSON and fail the test."""
    assert isinstance(text, str), "the hub sends text messages only"
    frame = json.loads(text, parse_constant=_refuse_constant)
    assert isinstance(frame, dict) and isinstance(frame.get("type"), str), frame
    return frame


def close_of(closed: ConnectionClosed) -> tuple[int, str]:
    """The close code and reason the hub sent (1006: none, the TCP connection just ended)."""
    return (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd is not None else (1006, "")


def names(reply: Frame, name: str) -> bool:
    """Whether a validation error names the field ``name`` (or a field inside it)."""
    if "errors" in reply:
        return any(e["field"] == name or e["field"].startswith(name + ".") for e in reply["errors"])
    message = reply.get("message") or ""
    return re.search(rf"(^|; ){re.escape(name)}[.:]", message) is not None


def check_error(reply: Frame, known: frozenset[str], known_types: tuple[str, ...]) -> None:
    """A well-formed error: a known code; for a validation error, an entry per problem."""
    code = reply["error"]
    prefix, _, reason = code.partition(": ")
    assert code in known or (prefix in FENCING_PREFIXES and reason in FENCING_REASONS), reply
    if code != "validation_failed" or "errors" not in reply:
        return
    assert "message_type" in reply and reply["errors"], reply
    for entry in reply["errors"]:
        assert isinstance(entry["field"], str) and entry["field"], reply
        assert entry["error"] in FIELD_ERRORS and isinstance(entry["detail"], str), reply
        if entry["error"] == "unknown_message_type":
            assert entry["known_types"] == list(known_types), reply


def check_refusal_expectations(payload: Payload, reply: Frame) -> None:
    """What the mutation guarantees: an error, naming the field it broke."""
    if payload.must_fail or payload.names_field:
        assert reply["type"] == "error", f"{payload.data[:300]!r} was accepted: {reply}"
    if payload.names_field:
        assert reply["error"] == "validation_failed", reply
        assert names(reply, payload.names_field), f"{payload.names_field} not named in {reply}"


# --- the fuzzer's side: lines to each entrance, run in a worker thread --------------------------


@dataclass
class Bystanders:
    """A well-behaved agent, an operator and a dashboard, served by the hub meanwhile."""

    agent: AgentClient
    operator: OperatorClient
    viewer: AsyncConnection
    task_ids: list[str] = field(default_factory=list)
    held: list[Frame] = field(default_factory=list)  # task_assign seen while awaiting another frame
    events: Counter[str] = field(default_factory=Counter)

    async def check(self) -> str:
        """Ping, then run a fresh task to completion; returns its id."""
        await self.agent.send({"type": "ping"})
        await self._next("pong")
        task = await self.operator.submit(
            "confirm the bystander is served", needed_capabilities=[BYSTANDER_SKILL]
        )
        self.task_ids.append(task["task_id"])
        while True:
            assign = self.held.pop(0) if self.held else await self._next("task_assign")
            await self._run(assign)
            if assign["task_id"] == task["task_id"]:
                await self._viewer_saw(task["task_id"])
                return str(task["task_id"])

    async def _next(self, frame_type: str) -> Frame:
        async with asyncio.timeout(REPLY_TIMEOUT_S):
            while True:
                frame = await self.agent.receive()
                if frame["type"] == frame_type:
                    return frame
                if frame["type"] == "task_assign":
                    self.held.append(frame)

    async def _run(self, assign: Frame) -> None:
        """Accept and complete one assignment (a fuzzed submission may have come here too)."""
        await self.agent.send({"type": "task_accepted", "task_id": assign["task_id"]})
        assert (await self._next("task_ack"))["status"] == "accepted"
        await self.agent.send({
            "type": "task_complete", "task_id": assign["task_id"],
            "generation": assign["generation"], "result": {"status": "success", "output": "ok"},
        })  # fmt: skip
        assert (await self._next("task_ack"))["status"] == "complete"

    async def _viewer_saw(self, task_id: str) -> None:
        """Read the dashboard up to the task's completion; every event must be strict JSON."""
        async with asyncio.timeout(REPLY_TIMEOUT_S):
            while True:
                event = strict_json(await self.viewer.recv())
                self.events[event["type"]] += 1
                assert event["type"] != "events_dropped", event
                if event.get("event") == "task_completed" and event.get("task_id") == task_id:
                    return


@dataclass
class World:
    """What the fuzzing thread knows of the hub, and its way back to the hub's loop."""

    port: int
    loop: asyncio.AbstractEventLoop
    bystanders: Bystanders
    make_token: TokenMaker
    admin_token: str
    tally: Counter[str] = field(default_factory=Counter)
    submitted: set[str] = field(default_factory=set)  # tasks a fuzzed request did create
    after_check: list[Callable[[str], None]] = field(default_factory=list)
    _identities: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def connect(self, path: str) -> ClientConnection:
        """A new connection to ``path``; the line that asked for it closes it."""
        self.tally["connections"] += 1
        connection = connect(
            f"ws://127.0.0.1:{self.port}{path}",
            open_timeout=REPLY_TIMEOUT_S,
            max_size=None,
            max_queue=None,
        )
        return connection.__enter__()  # what ``with`` does; the line's close() is the exit

    def new_agent(self) -> tuple[str, str]:
        """A fresh agent identity: one closed for violations would be in a cooldown."""
        agent_id = f"fuzz-{next(self._identities)}"
        return agent_id, self.make_token(agent_id)

    def check_bystanders(self) -> None:
        """Run a bystander check on the hub's loop and wait for it."""
        future = asyncio.run_coroutine_threadsafe(self.bystanders.check(), self.loop)
        task_id = future.result(CHECK_TIMEOUT_S)
        self.tally["bystander checks"] += 1
        for callback in self.after_check:
            callback(task_id)

    def run(
        self,
        strategy: st.SearchStrategy[Payload],
        exchange: Callable[[Payload], None],
        examples: int,
    ) -> None:
        """Run one property: every generated payload goes through ``exchange``."""

        @hypothesis.settings(FUZZ, max_examples=examples)
        @given(strategy)
        def property_(payload: Payload) -> None:
            self.tally["frames"] += 1
            exchange(payload)
            if self.tally["frames"] % CHECK_EVERY == 0:
                self.check_bystanders()

        property_()

    def record(self, replies: list[Frame], close: tuple[int, str] | None) -> None:
        for reply in replies:
            key = reply["error"] if reply["type"] == "error" else reply["type"]
            self.tally[f"reply {key}"] += 1
        if close is not None:
            self.tally[f"close {close[0]}"] += 1


def _send(connection: ClientConnection, payload: Payload) -> None:
    connection.send(payload.data, text=not payload.binary)


def _read(connection: ClientConnection) -> Frame:
    return strict_json(connection.recv(REPLY_TIMEOUT_S))


def unread(connection: ClientConnection) -> list[Frame]:
    """What arrived before the close and was not read yet (sending the next frame may
    already have failed on the close)."""
    frames = []
    try:
        while True:
            frames.append(_read(connection))
    except ConnectionClosed:
        return frames


class Line:
    """One fuzzed entrance: the connection in use, reopened whenever the hub closes it."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.connection: ClientConnection | None = None

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


class AgentLine(Line):
    """The fuzzer on ``/ws``, identified or not; reopened whenever the hub closes it."""

    def __init__(self, world: World, identified: bool) -> None:
        super().__init__(world)
        self.identified = identified
        self.violations = 0
        self.violations_total = 0
        self._sentinels = itertools.count(1)

    def _open(self) -> ClientConnection:
        connection = self.world.connect("/ws")
        self.violations = 0
        if self.identified:
            agent_id, token = self.world.new_agent()
            connection.send(json.dumps({"type": "identify", "agent_id": agent_id, "token": token}))
            reply = _read(connection)
            while reply["type"] in PUSHES:  # a message kept for an agent of that name
                reply = _read(connection)
            assert reply == {"type": "identified", "agent_id": agent_id}
        self.connection = connection
        return connection

    def exchange(self, payload: Payload) -> None:
        connection = self.connection or self._open()
        replies: list[Frame] = []
        close = None
        try:
            _send(connection, payload)
            if self.identified:
                self._read_up_to_sentinel(connection, replies)
            else:
                replies.append(_read(connection))
        except ConnectionClosed as closed:
            close = close_of(closed)
            replies.extend(f for f in unread(connection) if f["type"] not in PUSHES)
        self._count(replies)
        if close is None and self.violations >= MAX_VIOLATIONS:
            try:
                self._read_until_closed(connection)
            except ConnectionClosed as closed:
                close = close_of(closed)
        self.world.record(replies, close)
        self._check(payload, replies, close)
        if close is not None or any(r["type"] == "identified" for r in replies):
            self.close()  # a line that is not identified stays so

    def _read_up_to_sentinel(self, connection: ClientConnection, replies: list[Frame]) -> None:
        """A channel nobody created: its ``channel_not_found`` marks the end of the answer."""
        sentinel = f"sentinel-{next(self._sentinels)}"
        connection.send(json.dumps({"type": "channel_history", "channel": sentinel}))
        while True:
            frame = _read(connection)
            if frame.get("error") == "channel_not_found" and sentinel in str(frame.get("message")):
                return
            if frame["type"] not in PUSHES:
                replies.append(frame)

    def _read_until_closed(self, connection: ClientConnection) -> None:
        while True:
            frame = _read(connection)
            assert frame["type"] in PUSHES, f"{frame} after the tenth violation"

    def _count(self, replies: list[Frame]) -> None:
        counted = sum(1 for r in replies if r["type"] == "error" and r["error"] in VIOLATIONS)
        self.violations += counted
        self.violations_total += counted

    def _check(self, payload: Payload, replies: list[Frame], close: tuple[int, str] | None) -> None:
        expected = payload.expected_close()
        if expected is not None:
            assert close is not None and close[0] == expected, (payload.data[:200], close)
            assert not replies, replies
            return
        if close is not None:
            assert close == TOO_MANY_VIOLATIONS, (payload.data[:200], close, replies)
            assert self.violations == MAX_VIOLATIONS, self.violations
        assert len(replies) <= 1, replies
        if not replies:
            assert self.identified and payload.frame_type in SILENT_FRAMES, payload.data[:300]
            assert not payload.must_fail and not payload.names_field, payload.data[:300]
            return
        reply = replies[0]
        check_refusal_expectations(payload, reply)
        if reply["type"] == "error":
            check_error(reply, AGENT_ERRORS, agent_protocol.AGENT_FRAME_TYPES)
        elif self.identified:
            assert reply["type"] in AGENT_REPLIES.get(payload.frame_type or "", ()), reply
        else:
            assert reply["type"] == "identified" and payload.frame_type == "identify", reply


class OperatorLine(Line):
    """The fuzzer on ``/ws/operator``: a new connection per frame before ``auth``, one
    authenticated connection after it."""

    def __init__(self, world: World, authenticated: bool) -> None:
        super().__init__(world)
        self.authenticated = authenticated

    def _open(self) -> ClientConnection:
        connection = self.world.connect("/ws/operator")
        if self.authenticated:
            connection.send(json.dumps({"type": "auth", "token": self.world.admin_token}))
            assert _read(connection)["type"] == "auth_ok"
        self.connection = connection
        return connection

    def exchange(self, payload: Payload) -> None:
        connection = self.connection or self._open()
        replies: list[Frame] = []
        close = None
        try:
            _send(connection, payload)
            replies.append(_read(connection))
            if not self.authenticated and replies[0]["type"] != "auth_ok":
                replies.append(_read(connection))  # nothing more may come: the hub closes
        except ConnectionClosed as closed:
            close = close_of(closed)
            replies.extend(unread(connection))
        self.world.record(replies, close)
        if not self.authenticated or close is not None:
            self.close()
        self._check(payload, replies, close)

    def _check(self, payload: Payload, replies: list[Frame], close: tuple[int, str] | None) -> None:
        expected = payload.expected_close()
        if expected is not None:
            assert close is not None and close[0] == expected and not replies, (close, replies)
            return
        assert len(replies) == 1, (payload.data[:300], replies)
        reply = replies[0]
        check_refusal_expectations(payload, reply)
        if not self.authenticated:
            if reply["type"] == "auth_ok":
                assert payload.frame_type == "auth" and close is None, reply
                return
            assert reply["type"] == "error", reply
            check_error(reply, VIOLATIONS, operator_protocol.OPERATOR_FRAME_TYPES)
            reason = "invalid token" if reply["error"] == "invalid_token" else "expected auth"
            assert close == (1008, reason), (reply, close)
            return
        assert close is None, close
        assert reply["type"] in ("result", "error"), reply
        if "request_id" not in reply:  # documented: the plain error of an unusable request
            assert reply["error"] in ("invalid_json", "validation_failed"), reply
        assert reply.get("request_id") in (None, payload.request_id), (payload.request_id, reply)
        if payload.keeps_request_id and payload.request_id is not None:
            assert reply.get("request_id") == payload.request_id, reply
        if reply["type"] == "error":
            check_error(reply, OPERATOR_ERRORS, operator_protocol.OPERATOR_FRAME_TYPES)
            return
        assert payload.frame_type in OPERATOR_MODELS and payload.frame_type != "auth", reply
        if payload.frame_type == "task_submit":
            self.world.submitted.add(reply["data"]["task_id"])


class DashboardLine(Line):
    """The fuzzer on ``/ws/dashboard``: a new connection per frame before ``subscribe``;
    one subscribed connection after it, which must keep receiving events."""

    def __init__(self, world: World, subscribed: bool) -> None:
        super().__init__(world)
        self.subscribed = subscribed
        if subscribed:
            world.after_check.append(self.saw_task)

    def _open(self) -> ClientConnection:
        connection = self.world.connect("/ws/dashboard")
        if self.subscribed:
            connection.send(json.dumps({"type": "subscribe", "token": self.world.admin_token}))
            assert _read(connection)["type"] == "snapshot"
        self.connection = connection
        return connection

    def saw_task(self, task_id: str) -> None:
        """The subscribed connection still streams: an event of ``task_id`` arrives."""
        if self.connection is None:
            return  # not fuzzing at the moment
        while _read(self.connection).get("task_id") != task_id:
            pass

    def exchange(self, payload: Payload) -> None:
        connection = self.connection or self._open()
        expected = payload.expected_close(binary_refused=not self.subscribed)
        replies: list[Frame] = []
        close = None
        try:
            _send(connection, payload)
            if not self.subscribed:
                replies.append(_read(connection))
                if replies[0]["type"] != "snapshot":
                    replies.append(_read(connection))  # nothing more may come: the hub closes
            elif expected is not None:
                while True:
                    _read(connection)  # events, until the close
        except ConnectionClosed as closed:
            close = close_of(closed)
            if not self.subscribed:
                replies.extend(unread(connection))
        self.world.record(replies, close)
        if not self.subscribed or close is not None:
            self.close()
        if self.subscribed:
            assert (close[0] if close else None) == expected, (payload.data[:200], close)
            if self.connection is None:
                self._open()  # keep one subscribed connection open for the next check
            return
        if expected is not None:
            assert close is not None and close[0] == expected and not replies, (close, replies)
            return
        assert len(replies) == 1, (payload.data[:300], replies)
        reply = replies[0]
        check_refusal_expectations(payload, reply)
        if reply["type"] == "snapshot":
            assert payload.frame_type == "subscribe" and close is None, reply
            return
        check_error(reply, VIOLATIONS, operator_protocol.DASHBOARD_FRAME_TYPES)
        reason = "invalid token" if reply["error"] == "invalid_token" else "expected subscribe"
        assert close == (1008, reason), (reply, close)


# --- fixtures -----------------------------------------------------------------------------------


class ProblemLog(logging.Handler):
    """Keeps every record of level ERROR or above, and every record with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.problems: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.problems.append(record)

    def report(self) -> list[str]:
        return [f"{r.name} {r.levelname}: {r.getMessage()} {r.exc_info!r}" for r in self.problems]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The test hub, with a small frame limit and no rate limit in the fuzzer's way (rate
    limits and the smaller frame limit before authentication have their own tests; here
    they would only hide answers)."""
    return Settings(
        host="127.0.0.1",
        port=0,
        db=tmp_path / "hub.db",
        fallback_wait_s=0,
        max_frame_bytes=MAX_FRAME_BYTES,
        max_unauthenticated_frame_bytes=MAX_FRAME_BYTES,
        request_burst=10**9,
        progress_burst=10**9,
        auth_failures_before_delay=10**9,
    )


@pytest.fixture
def problem_log() -> Iterator[ProblemLog]:
    """Records what the hub and its WebSocket library log as errors during the test."""
    handler = ProblemLog()
    loggers = [logging.getLogger(name) for name in ("agentcom", "websockets", "asyncio")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


@pytest.fixture
async def world(
    hub: HubServer,
    make_agent: AgentMaker,
    operator: OperatorClient,
    make_token: TokenMaker,
    problem_log: ProblemLog,
) -> AsyncIterator[World]:
    """Bystanders on a running hub, and the fuzzer's view of it. At the end: one last
    check, then no logged problem and nothing stored beyond what was acknowledged."""
    agent = await make_agent("bystander", capabilities=[BYSTANDER_SKILL])
    admin_token = make_token("fuzz-admin", "admin")
    viewer = await connect_async(f"ws://127.0.0.1:{hub.port}/ws/dashboard", max_queue=None)
    await viewer.send(json.dumps({"type": "subscribe", "token": admin_token}))
    assert strict_json(await viewer.recv())["type"] == "snapshot"
    bystanders = Bystanders(agent, operator, viewer)
    world = World(hub.port, asyncio.get_running_loop(), bystanders, make_token, admin_token)
    try:
        await bystanders.check()
        yield world
        await bystanders.check()
        gc.collect()  # an exception nobody retrieved is logged when its task is collected
        assert problem_log.report() == []
        await hub.store.commit()
        with closing(sqlite3.connect(f"file:{hub.settings.db}?mode=ro", uri=True)) as database:
            stored = {row[0] for row in database.execute("SELECT task_id FROM tasks")}
        assert stored == set(bystanders.task_ids) | world.submitted
        print(f"\n{dict(world.tally)} events seen by the dashboard: {dict(bystanders.events)}")
    finally:
        await viewer.close()


async def sweep(
    world: World, line: AgentLine | OperatorLine | DashboardLine, payloads: list[Payload]
) -> None:
    """Send every payload over ``line`` in a worker thread, then close it."""

    def work() -> None:
        try:
            for number, payload in enumerate(payloads, 1):
                world.tally["frames"] += 1
                line.exchange(payload)
                if number % CHECK_EVERY == 0:
                    world.check_bystanders()
            world.check_bystanders()
        finally:
            line.close()

    await asyncio.to_thread(work)


async def fuzz(world: World, *runs: tuple[Any, st.SearchStrategy[Payload], int]) -> None:
    """Run properties in a worker thread, each over its line, then close the lines."""

    def work() -> None:
        try:
            for line, strategy, examples in runs:
                world.run(strategy, line.exchange, examples)
                world.check_bystanders()  # after the run, its line still open
        finally:
            for line, _, _ in runs:
                line.close()

    await asyncio.to_thread(work)


# --- tests ----------------------------------------------------------------------------------------


def test_the_fuzzer_has_a_valid_frame_of_every_type() -> None:
    agent = agent_frames("fuzz-1", "token")
    operator = operator_frames("token")
    dashboard = dashboard_frames("token")
    assert set(agent) == set(agent_protocol.AGENT_FRAME_TYPES) == set(AGENT_MODELS)
    assert set(operator) == set(operator_protocol.OPERATOR_FRAME_TYPES) == set(OPERATOR_MODELS)
    assert set(dashboard) == set(operator_protocol.DASHBOARD_FRAME_TYPES)
    for frames, adapter in (
        (agent, agent_protocol.AGENT_FRAME),
        (operator, operator_protocol.OPERATOR_FRAME),
        (dashboard, operator_protocol.DASHBOARD_FRAME),
    ):
        for frame in frames.values():
            parsed = adapter.validate_json(json.dumps(frame))
            # every field is filled in, so every field gets mutated
            assert set(frame) == set(type(parsed).model_fields), frame["type"]


async def test_random_json_on_the_agent_socket_is_refused_or_closed_as_documented(
    world: World,
) -> None:
    before, after = AgentLine(world, identified=False), AgentLine(world, identified=True)
    await fuzz(
        world,
        (before, random_payloads(AGENT_MODELS), 150),
        (after, random_payloads(AGENT_MODELS), 150),
    )
    await world.bystanders.check()
    assert (
        world.bystanders.events["validation_event"]
        == before.violations_total + after.violations_total
    )


async def test_random_json_on_the_operator_socket_is_refused_or_closed_as_documented(
    world: World,
) -> None:
    before, after = OperatorLine(world, False), OperatorLine(world, True)
    strategy = random_payloads(OPERATOR_MODELS)
    await fuzz(world, (before, strategy, 100), (after, strategy, 150))


async def test_random_and_mutated_frames_on_the_dashboard_socket_are_refused_or_ignored(
    world: World,
) -> None:
    bases = dashboard_frames(world.admin_token)
    random, mutated = random_payloads(DASHBOARD_MODELS), mutated_payloads(bases, DASHBOARD_MODELS)
    before, after = DashboardLine(world, False), DashboardLine(world, True)
    await fuzz(world, (before, random | mutated, 150), (after, random | mutated, 150))


async def test_mutated_agent_frames_are_refused_naming_the_field_or_closed_as_documented(
    world: World, make_token: TokenMaker
) -> None:
    bases = agent_frames("fuzz-identify", make_token("fuzz-identify"))
    strategy = mutated_payloads(bases, AGENT_MODELS)
    before, after = AgentLine(world, identified=False), AgentLine(world, identified=True)
    await fuzz(world, (before, strategy, 200), (after, strategy, 300))
    await world.bystanders.check()
    assert (
        world.bystanders.events["validation_event"]
        == before.violations_total + after.violations_total
    )


async def test_mutated_operator_requests_are_refused_naming_the_field_or_closed_as_documented(
    world: World,
) -> None:
    strategy = mutated_payloads(operator_frames(world.admin_token), OPERATOR_MODELS)
    before, after = OperatorLine(world, False), OperatorLine(world, True)
    await fuzz(world, (before, strategy, 100), (after, strategy, 300))


async def test_binary_non_utf8_and_oversized_messages_close_with_the_documented_codes(
    world: World, make_token: TokenMaker
) -> None:
    valid = [
        *agent_frames("fuzz-identify", make_token("fuzz-identify")).values(),
        *operator_frames(world.admin_token).values(),
        *dashboard_frames(world.admin_token).values(),
    ]
    strategy = malformed_messages(valid)
    lines = [
        AgentLine(world, identified=False),
        AgentLine(world, identified=True),
        OperatorLine(world, False),
        OperatorLine(world, True),
        DashboardLine(world, False),
        DashboardLine(world, True),
    ]
    await fuzz(world, *((line, strategy, 40) for line in lines))


async def test_every_field_of_every_frame_is_checked_for_presence_kind_and_finite_numbers(
    world: World, make_token: TokenMaker
) -> None:
    agent = systematic_payloads(
        agent_frames("fuzz-identify", make_token("fuzz-identify")), AGENT_MODELS
    )
    operator = systematic_payloads(operator_frames(world.admin_token), OPERATOR_MODELS)
    dashboard = systematic_payloads(dashboard_frames(world.admin_token), DASHBOARD_MODELS)
    identified = AgentLine(world, identified=True)
    await sweep(world, identified, agent)
    await sweep(world, OperatorLine(world, True), operator)
    await sweep(world, DashboardLine(world, False), dashboard)
    await world.bystanders.check()
    assert world.bystanders.events["validation_event"] == identified.violations_total
