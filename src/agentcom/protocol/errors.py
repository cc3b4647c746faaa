"""Turning a rejected inbound frame into the error reply of PROTOCOL.md section 1."""

from __future__ import annotations

import json
from typing import Any, Generic, Literal, TypeVar

from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from agentcom.protocol.outbound import ErrorReply, FieldError, ValidationFailed

__all__ = ["FrameDecoder", "FrameRejected", "summary_for_viewers"]

T = TypeVar("T")

_SECRET_FIELDS = frozenset({"token"})
_MAX_ECHOED_VALUE = 200
# An unknown ``type`` is echoed cut to this length: the reply (and the validation event
# sent to every dashboard) must not grow with whatever a peer sends.
_MAX_ECHOED_TYPE = 64


_TOKEN_PREFIX = "ac_"  # every token the hub issues starts so (agentcom.hub.auth.new_token)


def summary_for_viewers(
    reply: ErrorReply | ValidationFailed, known_types: frozenset[str]
) -> dict[str, Any]:
    """What viewers may learn of an error reply: its code, the frame type when it is a
    known one, and for each field in error its top-level name and the kind of error.

    Never a value, a detail or a nested path: any of those can repeat what the peer
    sent (a token put in the wrong field, a dict key), and viewers are not the sender.
    """
    if isinstance(reply, ErrorReply):
        return {"type": "error", "error": reply.error}
    message_type = reply.message_type if reply.message_type in known_types else None
    return {
        "type": "error",
        "error": reply.error,
        "message_type": message_type,
        "errors": [
            {"field": entry.field.split(".")[0], "error": entry.error} for entry in reply.errors
        ],
    }


class FrameRejected(Exception):
    """An inbound frame that cannot be handled; ``reply`` is the error to send back."""

    def __init__(self, reply: ErrorReply | ValidationFailed) -> None:
        super().__init__(reply.model_dump_json())
        self.reply = reply


ErrorCode = Literal["required", "wrong_type", "too_long", "unknown_message_type", "out_of_range"]


def _error_code(pydantic_type: str) -> ErrorCode:
    if pydantic_type == "missing":
        return "required"
    if pydantic_type in ("string_too_long", "too_long"):
        return "too_long"
    if pydantic_type in ("union_tag_invalid",):
        return "unknown_message_type"
    if pydantic_type.startswith(
        ("greater_than", "less_than", "finite_number", "string_too_short", "string_blank")
    ):
        return "out_of_range"
    return "wrong_type"


def _echoable(field: str, value: Any) -> bool:
    if field.split(".")[-1] in _SECRET_FIELDS:
        return False
    if isinstance(value, str) and value.startswith(_TOKEN_PREFIX):
        return False  # a token sent in the wrong field is still a secret
    if isinstance(value, bool | int | float) or value is None:
        return True
    return isinstance(value, str) and len(value) <= _MAX_ECHOED_VALUE


class FrameDecoder(Generic[T]):
    """Parses and validates raw frames against a discriminated union in one pass.

    Args:
        adapter: a ``TypeAdapter`` over a union discriminated by ``type``.
        known_types: the accepted ``type`` values, listed in unknown-type errors.
    """

    def __init__(self, adapter: TypeAdapter[T], known_types: tuple[str, ...]) -> None:
        self._adapter = adapter
        self._known_types = list(known_types)

    def decode(self, raw: str | bytes) -> T:
        """Return the typed frame, or raise :class:`FrameRejected` with the reply to send."""
        try:
            return self._adapter.validate_json(raw)
        except ValidationError as exc:
            raise FrameRejected(self._describe(raw, exc.errors(include_url=False))) from None

    def _describe(
        self, raw: str | bytes, errors: list[ErrorDetails]
    ) -> ErrorReply | ValidationFailed:
        if errors and errors[0]["type"] == "json_invalid":
            return ErrorReply(error="invalid_json")
        try:
            parsed = json.loads(raw)
        except ValueError:
            return ErrorReply(error="invalid_json")
        if not isinstance(parsed, dict):
            return ValidationFailed(
                message_type=None,
                errors=[
                    FieldError(field="$", error="wrong_type", detail="frame must be a JSON object")
                ],
            )
        message_type = parsed.get("type")
        if "type" not in parsed:
            entry = FieldError(field="type", error="required", detail="field 'type' is required")
            return ValidationFailed(message_type=None, errors=[entry])
        if not isinstance(message_type, str):
            entry = FieldError(field="type", error="wrong_type", detail="'type' must be a string")
            return ValidationFailed(message_type=None, errors=[entry])
        field_errors = [self._field_error(error, message_type) for error in errors[:20]]
        return ValidationFailed(message_type=message_type[:_MAX_ECHOED_TYPE], errors=field_errors)

    def _field_error(self, error: ErrorDetails, message_type: str) -> FieldError:
        code = _error_code(error["type"])
        if code == "unknown_message_type":
            return FieldError(
                field="type",
                error=code,
                detail=f"unknown message type {message_type[:_MAX_ECHOED_TYPE]!r}",
                known_types=self._known_types,
            )
        location = [str(part) for part in error["loc"][1:]]
        field = ".".join(location) or "$"
        entry = FieldError(field=field, error=code, detail=error["msg"])
        value = error.get("input")
        if code != "required" and _echoable(field, value):
            entry.value = value
        return entry
