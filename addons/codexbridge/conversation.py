"""Conversation rules: rebuild the full input Codex sends only as deltas (sans-IO)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

# Keys of a response.create frame that belong to the WebSocket protocol, never to the POST body.
WS_ONLY_KEYS = frozenset({"type", "previous_response_id", "generate"})


class ClientFrameError(Exception):
    """A client frame the bridge cannot serve; becomes a 400-class error frame."""

    def __init__(self, code: str, message: str, status: int = 400, param: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.param = param


@dataclass(slots=True)
class PreparedRequest:
    """What one response.create turns into."""

    body: dict[str, Any]  # the POST body for the upstream (for generate=false: what it would be)
    full_input: list[Any]
    generate: bool
    previous_response_id: str | None


@dataclass(slots=True)
class ResponseTracker:
    """Collects, from one response's events, what the history rules need."""

    full_input: list[Any]
    response_id: str | None = None
    output_items: list[Any] = field(default_factory=list)
    terminal: str | None = None  # type of the terminal event, once seen

    def observe(self, event: dict[str, Any]) -> None:
        """Feeds one parsed server event."""
        kind = event.get("type")
        if kind == "response.output_item.done":
            item = event.get("item")
            if item is not None:
                self.output_items.append(item)
        elif kind in TERMINAL_EVENTS:
            self.terminal = kind
            response = event.get("response")
            if isinstance(response, dict) and isinstance(response.get("id"), str):
                self.response_id = response["id"]
        elif kind in ("response.created", "response.in_progress") and self.response_id is None:
            response = event.get("response")
            if isinstance(response, dict) and isinstance(response.get("id"), str):
                self.response_id = response["id"]

    @property
    def history(self) -> list[Any]:
        return self.full_input + self.output_items


TERMINAL_EVENTS = frozenset(
    {"response.completed", "response.failed", "response.incomplete", "response.cancelled", "error"}
)


def as_input_list(value: Any) -> list[Any]:
    """The API accepts a bare string as input: it means one user message."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}]
    if isinstance(value, list):
        return value
    raise ClientFrameError("invalid_type", "'input' must be a string or an array of items.", param="input")


class Conversation:
    """Per-connection continuation state: response id -> the full history after that response.

    Only completed responses can be continued. The store is bounded; the oldest entry is
    evicted first, and continuing an evicted id yields `previous_response_not_found`.
    """

    def __init__(self, max_responses: int = 8) -> None:
        self.max_responses = max(1, max_responses)
        self._histories: OrderedDict[str, list[Any]] = OrderedDict()

    def __contains__(self, response_id: str) -> bool:
        return response_id in self._histories

    def prepare(self, frame: dict[str, Any]) -> PreparedRequest:
        """Turns a validated response.create frame into the upstream request it stands for."""
        previous = frame.get("previous_response_id")
        if previous is not None and not isinstance(previous, str):
            raise ClientFrameError(
                "invalid_type", "'previous_response_id' must be a string.", param="previous_response_id"
            )
        raw_input = frame.get("input", [])
        if previous:
            history = self._histories.get(previous)
            if history is None:
                raise ClientFrameError(
                    "previous_response_not_found",
                    f"Previous response with id '{previous}' not found.",
                    param="previous_response_id",
                )
            self._histories.move_to_end(previous)
            full_input: Any = history + as_input_list(raw_input)
        else:
            full_input = raw_input
            as_input_list(raw_input)  # validates the type
        body: dict[str, Any] = {}
        for key, value in frame.items():
            if key in WS_ONLY_KEYS:
                continue
            body[key] = full_input if key == "input" else value
        if "input" not in body:
            body["input"] = full_input
        body["stream"] = True
        generate = frame.get("generate", True) is not False
        return PreparedRequest(body, as_input_list(full_input), generate, previous or None)

    def remember(self, response_id: str, history: list[Any]) -> None:
        """Stores the history after a completed response."""
        self._histories[response_id] = history
        self._histories.move_to_end(response_id)
        while len(self._histories) > self.max_responses:
            self._histories.popitem(last=False)


def validate_client_frame(frame: Any) -> dict[str, Any]:
    """Checks the shape of a parsed client frame; returns it, or raises ClientFrameError."""
    if not isinstance(frame, dict):
        raise ClientFrameError("invalid_request", "A client frame must be a JSON object.")
    kind = frame.get("type")
    if not isinstance(kind, str):
        raise ClientFrameError("invalid_request", "A client frame must have a string 'type'.", param="type")
    if kind == "response.create":
        model = frame.get("model")
        if not isinstance(model, str) or not model:
            raise ClientFrameError("missing_required_parameter", "Missing required parameter: 'model'.", param="model")
    return frame
