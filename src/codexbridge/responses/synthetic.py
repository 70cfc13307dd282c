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


def usage(input_tokens: int = 0, output_tokens: int = 0) -> dict[str, Any]:
    """A usage object with every field the API's own has."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def response_object(body: dict[str, Any], response_id: str, status: str, *, created_at: int | None = None,
                    output: list[Any] | None = None, previous_response_id: str | None = None,
                    usage: dict[str, Any] | None = None, incomplete_reason: str | None = None) -> dict[str, Any]:
    """A Response as the API returns it: every field present, the request's settings echoed as sent, the
    API's defaults for those it left out."""
    reasoning: dict[str, Any] = body["reasoning"] if isinstance(body.get("reasoning"), dict) else {}
    text: dict[str, Any] = body["text"] if isinstance(body.get("text"), dict) else {}
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()) if created_at is None else created_at,
        "status": status,
        "background": bool(body.get("background", False)),
        "error": None,
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason is not None else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "metadata": body.get("metadata") or {},
        "model": body.get("model"),
        "output": list(output or []),
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": previous_response_id,
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": body.get("service_tier", "auto"),
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, "verbosity": "medium", **text},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_logprobs": body.get("top_logprobs", 0),
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": usage,
        "user": body.get("user"),
    }


def synthetic_prewarm(body: dict[str, Any], response_id: str, previous_response_id: str | None = None) -> list[bytes]:
    """response.created + response.completed with empty output, for `generate: false`."""
    created_at = int(time.time())
    created = {"type": "response.created", "sequence_number": 0,
               "response": response_object(body, response_id, "in_progress", created_at=created_at,
                                           previous_response_id=previous_response_id)}
    completed = {"type": "response.completed", "sequence_number": 1,
                 "response": response_object(body, response_id, "completed", created_at=created_at,
                                             previous_response_id=previous_response_id, usage=usage())}
    return [dumps(created), dumps(completed)]


# What a response's end says for itself; everything else it says as its response.created did.
_END_FIELDS = frozenset({"id", "status", "error", "incomplete_details", "output", "usage", "previous_response_id",
                         "completed_at", "output_text"})


def incomplete(body: dict[str, Any], response_id: str, output: list[Any], sequence: int, reason: str, *,
               created_at: int | None = None, previous_response_id: str | None = None,
               base: dict[str, Any] | None = None) -> bytes:
    """response.incomplete for a response the proxy ends itself (a steered one: reason "steered"), with the
    output it produced so far; `base`, the upstream's response object from its response.created, wins over
    the request's settings for every field it has (its model, created_at, the settings it applied)."""
    response = response_object(body, response_id, "incomplete", created_at=created_at, output=output,
                               previous_response_id=previous_response_id, usage=usage(),
                               incomplete_reason=reason)
    if base:
        response.update({k: v for k, v in base.items() if k not in _END_FIELDS})
    return dumps({"type": "response.incomplete", "sequence_number": sequence, "response": response})
