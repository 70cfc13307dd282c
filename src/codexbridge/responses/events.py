"""Responses API events: their JSON form, the terminal set, and the event type read cheaply (sans-IO)."""

from __future__ import annotations

import json
import re
from typing import Any

TERMINAL_EVENTS = frozenset(
    {"response.completed", "response.failed", "response.incomplete", "response.cancelled", "error"}
)


def type_marker(kind: str) -> bytes:
    """How an event's type appears in compact JSON: a byte pattern to look for without parsing."""
    return f'"type":"{kind}"'.encode()


def dumps(obj: Any) -> bytes:
    """Compact JSON as UTF-8, the way OpenAI's events look on the wire."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


_LEADING_TYPE = re.compile(rb'\s*\{\s*"type"\s*:\s*"([A-Za-z0-9_.]+)"')


def event_type(content: bytes) -> str | None:
    """The event's type; without parsing the event when "type" is its first key (as OpenAI sends them)."""
    match = _LEADING_TYPE.match(content)
    if match is not None:
        return match.group(1).decode()
    if b'"type"' not in content:
        return None
    try:
        obj = json.loads(content)
    except ValueError:
        return None
    return obj.get("type") if isinstance(obj, dict) else None


def user_message(text: str) -> dict[str, Any]:
    """The input item a bare string stands for: one user message."""
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
