"""Hooks that scrub or rewrite a recording before it is written (VCR's before_record_request/_response)."""

from __future__ import annotations

import base64
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from codexbridge.recording.schema import (
    ClientFrame,
    Recording,
    ServerFrame,
    ToClient,
    UpstreamChunk,
    UpstreamEnd,
    UpstreamRequest,
    UpstreamResponse,
    chunk_bytes,
)

_EVENT_END = re.compile(r"\r\n\r\n|\n\n|\r\r")


class JsonBody:
    """A body of JSON text, read and replaced as a value."""

    body: str

    def json(self) -> Any:
        return json.loads(self.body)

    def set_json(self, value: Any) -> None:
        self.body = json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass
class RecordedRequest(JsonBody):
    """A request on its way into a recording: the session's opening request ("handshake": the WebSocket
    upgrade, or the POST of an HTTP session; empty body), a POST to the upstream ("post"), or a WebSocket
    frame from the client ("frame", with the upgrade's URL and headers). Secrets are already redacted."""

    kind: Literal["handshake", "post", "frame"]
    url: str
    headers: list[tuple[str, str]]
    body: str


@dataclass
class RecordedResponse(JsonBody):
    """An answer on its way into a recording: an upstream answer to a POST ("post": status, headers and the
    whole body, which the recording keeps cut at the reads it came in), or one frame to the client ("frame")."""

    kind: Literal["post", "frame"]
    status: int | None
    headers: list[tuple[str, str]]
    body: str


# A hook changes the object in place or returns a replacement; it cannot drop a request (the replay would
# then miss it), only rewrite it.
RequestHook = Callable[[RecordedRequest], "RecordedRequest | None"]
ResponseHook = Callable[[RecordedResponse], "RecordedResponse | None"]


def apply_hook[T](hook: Callable[[T], T | None] | None, value: T) -> T:
    """What the hook made of the value: its replacement, or the value itself (changed in place or not)."""
    if hook is None:
        return value
    result = hook(value)
    return value if result is None else result


def rechunk(old: list[str], body: str) -> list[str]:
    """The new body cut where the old one was, counted in whole events, so that a replay still streams it
    read by read; one piece when the hook changed the number of events."""
    old_body = "".join(old)
    old_ends = [m.end() for m in _EVENT_END.finditer(old_body)]
    new_ends = [m.end() for m in _EVENT_END.finditer(body)]
    if len(old_ends) != len(new_ends) or not old:
        return [body] + [""] * (len(old) - 1) if old else [body]
    pieces, start, offset, done = [], 0, 0, 0
    for i, chunk in enumerate(old):
        offset += len(chunk)
        while done < len(old_ends) and old_ends[done] <= offset:
            done += 1
        cut = len(body) if i == len(old) - 1 else (new_ends[done - 1] if done else 0)
        cut = max(cut, start)
        pieces.append(body[start:cut])
        start = cut
    return pieces


def scrub(recording: Recording, before_request: RequestHook | None,
          before_response: ResponseHook | None) -> Recording:
    """A copy of the recording with every request and answer passed through the hooks."""
    copy = recording.model_copy(deep=True)
    if before_request is None and before_response is None:
        return copy
    request = copy.header.request
    upgrade_url, upgrade_headers = request.url or "", list(request.headers)
    opening = apply_hook(before_request, RecordedRequest("handshake", upgrade_url, list(upgrade_headers), ""))
    request.url, request.headers = opening.url, list(opening.headers)

    def frame(text: str) -> str:
        return apply_hook(before_response, RecordedResponse("frame", None, [], text)).body

    answer: UpstreamResponse | None = None
    chunks: list[UpstreamChunk] = []

    def settle() -> None:
        nonlocal answer
        if answer is not None and before_response is not None:
            raw = [chunk_bytes(c).decode("utf-8", "surrogateescape") for c in chunks]
            out = apply_hook(before_response, RecordedResponse("post", answer.status, list(answer.headers),
                                                                        "".join(raw)))
            answer.status, answer.headers = out.status or answer.status, list(out.headers)
            if chunks and out.body != "".join(raw):
                for chunk, piece in zip(chunks, rechunk(raw, out.body), strict=True):
                    data = piece.encode("utf-8", "surrogateescape")
                    try:
                        chunk.text, chunk.b64 = data.decode("utf-8"), None
                    except UnicodeDecodeError:
                        chunk.text, chunk.b64 = None, base64.b64encode(data).decode()
        answer = None
        chunks.clear()

    for event in copy.events:
        if isinstance(event, UpstreamRequest):
            settle()
            out = apply_hook(before_request, RecordedRequest("post", event.url, list(event.headers), event.body))
            event.url, event.headers, event.body = out.url, list(out.headers), out.body
        elif isinstance(event, UpstreamResponse):
            settle()
            answer = event
        elif isinstance(event, UpstreamChunk) and answer is not None:
            chunks.append(event)
        elif isinstance(event, UpstreamEnd):
            settle()
        elif isinstance(event, ClientFrame) and event.text is not None:
            event.text = apply_hook(before_request, RecordedRequest("frame", upgrade_url, list(upgrade_headers),
                                                                            event.text)).body
        elif isinstance(event, ToClient):
            event.frames = [frame(f) for f in event.frames]
            event.relayed = None  # the frames are written out: they may no longer be the reads' events
        elif isinstance(event, ServerFrame) and event.text is not None:
            event.text = frame(event.text)
    settle()
    return copy


def dumps(recording: Recording) -> str:
    """A recording as JSON Lines, in the format the recorder writes (relayed batches written out in full)."""
    lines = [recording.header.model_dump_json()]
    lines += [event.model_dump_json(exclude_none=True) for event in recording.events]
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
