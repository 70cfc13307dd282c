"""Lanes and steering of the Responses WebSocket mode, as pure rules and event builders (sans-IO)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from codexbridge.responses.conversation import ClientFrameError
from codexbridge.responses.events import dumps, user_message

STREAM_ID = re.compile(r"[A-Za-z0-9_.\-]{1,256}")

# Output items that wait for the client, and the input item that answers each.
_CLIENT_OWNED = {
    "function_call": "function_call_output",
    "custom_tool_call": "custom_tool_call_output",
    "computer_call": "computer_call_output",
    "shell_call": "shell_call_output",
    "local_shell_call": "local_shell_call_output",
    "apply_patch_call": "apply_patch_call_output",
    "tool_search_call": "tool_search_output",
}


def check_stream_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not STREAM_ID.fullmatch(value):
        raise ClientFrameError("invalid_stream_id", "stream_id must be 1-256 ASCII letters, digits, '_', '-' or '.'.",
                               param="stream_id")
    return value


def stream_prefix(stream_id: str) -> bytes:
    """What goes in front of an event's other keys to tag it with its lane."""
    return b'{"stream_id":' + json.dumps(stream_id).encode() + b","


def tag(data: bytes, prefix: bytes) -> bytes:
    """Adds `stream_id` to a JSON object event without re-serialising it."""
    if data[:1] != b"{":
        return data
    rest = data[1:].lstrip()
    return prefix[:-1] + b"}" if rest[:1] == b"}" else prefix + data[1:]


class SteerError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def steer_input(frame: dict[str, Any]) -> tuple[str, list[Any]]:
    """The target id and the input items of a response.steer frame, or SteerError(invalid_input)."""
    extra = set(frame) - {"type", "previous_response_id", "input"}
    if extra:
        raise SteerError("invalid_input", f"response.steer accepts only type, previous_response_id and input; got {sorted(extra)}.")
    target = frame.get("previous_response_id")
    if not isinstance(target, str) or not target:
        raise SteerError("invalid_input", "response.steer needs the previous_response_id of the response to steer.")
    value = frame.get("input")
    if isinstance(value, str) and value:
        return target, [user_message(value)]
    if not isinstance(value, list) or not value:
        raise SteerError("invalid_input", "response.steer input must be a non-empty string or array.")
    for item in value:
        if not isinstance(item, dict):
            raise SteerError("invalid_input", "response.steer input items must be objects.")
        kind = item.get("type", "message")
        if kind == "message" and item.get("role") != "user":
            raise SteerError("invalid_input", "Steering accepts only messages with the user role.")
        if kind not in ("message", "function_call_output"):
            raise SteerError("invalid_input", f"Steering does not accept {kind!r} items.")
    return target, value


def client_owned(item: Any) -> bool:
    """An output item the response waits on the client for (a tool call, an approval request)."""
    return isinstance(item, dict) and (item.get("type") in _CLIENT_OWNED or item.get("type") == "mcp_approval_request")


def required_input(output_items: list[Any]) -> list[dict[str, Any]]:
    """Stubs for the client-owned results a finished response waits for."""
    stubs: list[dict[str, Any]] = []
    for item in output_items:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind in _CLIENT_OWNED:
            stub: dict[str, Any] = {"type": _CLIENT_OWNED[kind], "call_id": item.get("call_id")}
            if kind == "function_call":
                stub["name"] = item.get("name")
            if kind == "tool_search_call":
                stub["execution"] = "client"
            stubs.append(stub)
        elif kind == "mcp_approval_request":
            stubs.append({"type": "mcp_approval_response", "approval_request_id": item.get("id")})
    return stubs


@dataclass(slots=True)
class Steer:
    id: str
    target: str
    input: list[Any]
    lane: str | None
    raw_input: Any = None


@dataclass(slots=True)
class PendingSteers:
    """Accepted steering input waiting for a client's explicit continuation of `parent`."""

    parent: str
    lane: str | None
    steers: list[Steer] = field(default_factory=list)


def _with_lane(event: dict[str, Any], lane: str | None) -> bytes:
    if lane is not None:
        event["stream_id"] = lane
    return dumps(event)


def accepted(steer: Steer, sequence: int) -> bytes:
    return _with_lane({"type": "response.steer.accepted", "sequence_number": sequence,
                       "steer": {"id": steer.id, "previous_response_id": steer.target}}, steer.lane)


def failed(code: str, message: str, target: str, raw_input: Any, sequence: int, steer_id: str | None = None,
           lane: str | None = None) -> bytes:
    steer: dict[str, Any] = {"previous_response_id": target, "input": raw_input}
    if steer_id is not None:
        steer["id"] = steer_id
    return _with_lane({"type": "response.steer.failed", "sequence_number": sequence,
                       "error": {"type": "invalid_request_error", "code": code, "message": message},
                       "steer": steer}, lane)


def pending(steer: Steer, stubs: list[dict[str, Any]], sequence: int) -> bytes:
    return _with_lane({"type": "response.steer.pending", "sequence_number": sequence,
                       "reason": "waiting_for_required_input", "required_input": stubs,
                       "steer": {"id": steer.id, "previous_response_id": steer.target}}, steer.lane)
