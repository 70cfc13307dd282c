"""Conversation rules: rebuild the full input Codex sends only as deltas (sans-IO)."""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from codexbridge.responses.events import TERMINAL_EVENTS, user_message
from codexbridge.responses.turn_headers import split_client_metadata

# Keys of a response.create frame that belong to the WebSocket protocol, never to the POST body.
WS_ONLY_KEYS = frozenset({"type", "previous_response_id", "generate"})

# How deep a client frame may nest JSON arrays and objects (Codex nests a few levels, tool schemas a few dozen).
MAX_JSON_DEPTH = 256
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # may start a lone UTF-16 surrogate: checked exactly


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
    history_bytes: int = 0  # approximate size of full_input, for the store's byte bound
    # this request's own headers, from its client_metadata (responses.turn_headers), and whether it had one
    own_headers: list[tuple[str, str]] = field(default_factory=list)
    has_client_metadata: bool = False


@dataclass(slots=True)
class ResponseTracker:
    """Collects, from one response's events, what the history rules need."""

    full_input: list[Any]
    response_id: str | None = None
    output_items: list[Any] = field(default_factory=list)
    terminal: str | None = None  # type of the terminal event, once seen
    output_bytes: int = 0
    last_sequence: int = 0

    def observe(self, event: dict[str, Any], size: int = 0) -> None:
        """Feeds one parsed server event (`size`: its length on the wire)."""
        kind = event.get("type")
        seq = event.get("sequence_number")
        if isinstance(seq, int):
            self.last_sequence = seq
        if kind == "response.output_item.done":
            item = event.get("item")
            if item is not None:
                self.output_items.append(item)
                self.output_bytes += size
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


def as_input_list(value: Any) -> list[Any]:
    """The API accepts a bare string as input: it means one user message."""
    if isinstance(value, str):
        return [user_message(value)]
    if isinstance(value, list):
        return value
    raise ClientFrameError("invalid_type", "'input' must be a string or an array of items.", param="input")


@dataclass(slots=True)
class Stored:
    history: list[Any]
    nbytes: int
    lane: str | None


class Conversation:
    """Per-connection continuation state: response id -> the full history after that response.

    Only completed responses can be continued, from any lane (a fork). The store is bounded by
    count and by (approximate) bytes; the least recently used entry goes first, and continuing
    an evicted id yields `previous_response_not_found`.
    """

    def __init__(self, max_responses: int = 8, max_bytes: int = 0) -> None:
        self.max_responses = max(1, max_responses)
        self.max_bytes = max_bytes
        self._histories: OrderedDict[str, Stored] = OrderedDict()
        self._bytes = 0

    def __contains__(self, response_id: str) -> bool:
        return response_id in self._histories

    def lane_of(self, response_id: str) -> str | None:
        stored = self._histories.get(response_id)
        return stored.lane if stored else None

    def forget(self, response_id: str) -> None:
        stored = self._histories.pop(response_id, None)
        if stored is not None:
            self._bytes -= stored.nbytes

    def prepare(self, frame: dict[str, Any]) -> PreparedRequest:
        """Turns a validated response.create frame into the upstream request it stands for."""
        previous = frame.get("previous_response_id")
        if previous is not None and not isinstance(previous, str):
            raise ClientFrameError(
                "invalid_type", "'previous_response_id' must be a string.", param="previous_response_id"
            )
        raw_input = frame.get("input", [])
        parent_bytes = 0
        if previous:
            stored = self._histories.get(previous)
            if stored is None:
                raise ClientFrameError(
                    "previous_response_not_found",
                    f"Previous response with id '{previous}' not found.",
                    param="previous_response_id",
                )
            self._histories.move_to_end(previous)
            parent_bytes = stored.nbytes
            full_input: Any = stored.history + as_input_list(raw_input)
        else:
            full_input = raw_input
            as_input_list(raw_input)  # validates the type
        body: dict[str, Any] = {}
        own_headers: list[tuple[str, str]] = []
        for key, value in frame.items():
            if key in WS_ONLY_KEYS:
                continue
            if key == "client_metadata":  # what HTTP mode sends as headers leaves the body
                value, own_headers = split_client_metadata(value)
                if value is None:
                    continue
            body[key] = full_input if key == "input" else value
        if "input" not in body:
            body["input"] = full_input
        body["stream"] = True
        generate = frame.get("generate", True) is not False
        return PreparedRequest(body, as_input_list(full_input), generate, previous or None, parent_bytes, own_headers,
                               isinstance(frame.get("client_metadata"), dict))

    def clear(self) -> None:
        """Forgets every stored history (the connection is over)."""
        self._histories.clear()
        self._bytes = 0

    def remember(self, response_id: str, history: list[Any], nbytes: int = 0, lane: str | None = None) -> None:
        """Stores the history after a completed response."""
        self.forget(response_id)
        self._histories[response_id] = Stored(history, nbytes, lane)
        self._bytes += nbytes
        while len(self._histories) > self.max_responses or (
            self.max_bytes and self._bytes > self.max_bytes and len(self._histories) > 1
        ):
            _, old = self._histories.popitem(last=False)
            self._bytes -= old.nbytes


def parse_client_frame(raw: str | bytes) -> Any:
    """The JSON of a client text frame; ClientFrameError when it is not JSON, nests deeper than MAX_JSON_DEPTH,
    or holds a lone surrogate escape (such as "\\ud800": not Unicode, so it could not be sent on as UTF-8)."""
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
        frame = json.loads(text)
    except RecursionError:
        raise ClientFrameError("invalid_json", f"Client frame nests JSON deeper than {MAX_JSON_DEPTH} levels.") from None
    except ValueError as e:
        raise ClientFrameError("invalid_json", f"Client frame is not valid JSON: {e}") from None
    if isinstance(frame, (dict, list)) and text.count("[") + text.count("{") > MAX_JSON_DEPTH \
            and _nested_deeper(frame, MAX_JSON_DEPTH):
        raise ClientFrameError("invalid_json", f"Client frame nests JSON deeper than {MAX_JSON_DEPTH} levels.")
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(frame, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise ClientFrameError("invalid_json", "Client frame holds a lone UTF-16 surrogate escape (\\ud800-\\udfff "
                                   "without its pair), which is not Unicode text.") from None
    return frame


def _nested_deeper(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        for child in (item.values() if isinstance(item, dict) else item):
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


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
