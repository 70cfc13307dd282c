"""Events the proxy makes itself: error events and synthetic responses (sans-IO)."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from codexbridge.responses.events import dumps

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_frame(
    status: int,
    code: str,
    message: str,
    *,
    error_type: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
    error: dict[str, Any] | None = None,
) -> bytes:
    """The error event Codex understands: {"type":"error","status":N,"error":{...},"headers":{...}}."""
    if error is None:
        error = {
            "type": error_type or ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "code": code,
            "message": message,
            "param": param,
        }
    return dumps({"type": "error", "status": status, "error": error, "headers": headers or {}})


def synthetic_response_id(body: bytes) -> str:
    """A content-derived id, so that replaying a recording reproduces it byte for byte."""
    return "resp_cb_" + hashlib.sha256(body).hexdigest()[:32]


def synthetic_prewarm(body: dict[str, Any], response_id: str) -> list[bytes]:
    """response.created + response.completed with empty output, for `generate: false`."""
    base: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "model": body.get("model"),
        "output": [],
    }
    created = {"type": "response.created", "sequence_number": 0, "response": {**base, "status": "in_progress"}}
    usage = {
        "input_tokens": 0,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 0,
    }
    completed = {
        "type": "response.completed",
        "sequence_number": 1,
        "response": {**base, "status": "completed", "usage": usage},
    }
    return [dumps(created), dumps(completed)]
