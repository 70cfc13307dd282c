"""Replay rules (sans-IO): what a recording promises, and how live traffic is compared with it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from codexbridge.recording.schema import (
    ClientFrame,
    Recording,
    Redactor,
    ServerFrame,
    ToClient,
    UpstreamChunk,
    UpstreamRequest,
    UpstreamResponse,
    chunk_bytes,
    elide_text,
)

# Fields a client fills anew on every run; ignored when requests are compared.
VOLATILE_KEYS = frozenset({"client_metadata", "prompt_cache_key"})
_VOLATILE_TEXT = re.compile(r"(Chunk ID: |Wall time: )[\w.]+|(<elided )\d+ chars ")
_CREATED_AT = re.compile(r'"created_at":\d+')


@dataclass(slots=True)
class Exchange:
    """One upstream POST of a recording and what the upstream answered."""

    request: UpstreamRequest
    response: UpstreamResponse | None = None
    chunks: list[tuple[float, bytes]] = field(default_factory=list)  # (t, raw bytes)


@dataclass(slots=True)
class Turn:
    """A client frame and the frames the client received after it, before its next frame."""

    client: ClientFrame | None
    frames: list[tuple[float, str, bool]] = field(default_factory=list)  # (t, text, synthetic)


def exchanges(recording: Recording) -> list[Exchange]:
    out: list[Exchange] = []
    for e in recording.events:
        if isinstance(e, UpstreamRequest):
            out.append(Exchange(e))
        elif isinstance(e, UpstreamResponse) and out:
            out[-1].response = e
        elif isinstance(e, UpstreamChunk) and out:
            out[-1].chunks.append((e.t, chunk_bytes(e)))
    return out


def turns(recording: Recording) -> list[Turn]:
    """The WebSocket conversation: client frames, each with the frames that answered it."""
    out: list[Turn] = [Turn(None)]
    for e in recording.events:
        if isinstance(e, ClientFrame):
            out.append(Turn(e))
        elif isinstance(e, ToClient):
            out[-1].frames.extend((e.t, f, e.synthetic) for f in e.frames)
        elif isinstance(e, ServerFrame) and e.text is not None:
            out[-1].frames.append((e.t, e.text, False))
    return out if out[0].frames else out[1:]


def output_frames(recording: Recording) -> list[str]:
    return [f for turn in turns(recording) for _, f, _ in turn.frames]


class Normalizer:
    """Applies a recording's redaction and elision to live data, so both compare exactly."""

    def __init__(self, recording: Recording) -> None:
        self.redactor = Redactor(recording.header.redaction)
        self.elide_over = recording.header.elide_over

    def text(self, value: str) -> str:
        return self.redactor.text(elide_text(value, self.elide_over))


def mask_synthetic(frame: str) -> str:
    """Synthetic frames carry the proxy's clock; everything else in them must match."""
    return _CREATED_AT.sub('"created_at":0', frame)


def canonical(value: Any, names: dict[str, str] | None = None) -> Any:
    """A request body with per-run values (client ids, metadata, timings) replaced by stable ones."""
    names = {} if names is None else names
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k in VOLATILE_KEYS:
                continue
            if k in ("id", "call_id", "previous_response_id") and isinstance(v, str):
                out[k] = names.setdefault(v, f"<{k}:{len(names)}>")
            else:
                out[k] = canonical(v, names)
        return out
    if isinstance(value, list):
        return [canonical(v, names) for v in value]
    if isinstance(value, str):
        return _VOLATILE_TEXT.sub(lambda m: m.group(1) + "<volatile>" if m.group(1) else m.group(2), value)
    return value


def canonical_json(text: str) -> Any:
    try:
        return canonical(json.loads(text))
    except ValueError:
        return text


MISSING = object()  # the side of a difference where a key or list item is not there


def first_difference(expected: Any, actual: Any, path: str = "$",
                     whole_lists: bool = False) -> tuple[str, Any, Any] | None:
    """Where two JSON values first differ (in the expected value's key order) and the two values there, MISSING
    on the side that lacks a key or item. Lists of different lengths whose common items are equal differ at
    their first unmatched item, or with `whole_lists` at the lists themselves."""
    if type(expected) is not type(actual):
        return path, expected, actual
    if isinstance(expected, dict):
        for key in [*expected, *(k for k in actual if k not in expected)]:
            if key not in actual:
                return f"{path}.{key}", expected[key], MISSING
            if key not in expected:
                return f"{path}.{key}", MISSING, actual[key]
            found = first_difference(expected[key], actual[key], f"{path}.{key}", whole_lists)
            if found:
                return found
        return None
    if isinstance(expected, list):
        for i, (a, b) in enumerate(zip(expected, actual, strict=False)):
            found = first_difference(a, b, f"{path}[{i}]", whole_lists)
            if found:
                return found
        if len(expected) == len(actual):
            return None
        if whole_lists:
            return path, expected, actual
        n = min(len(expected), len(actual))
        return (f"{path}[{n}]", expected[n] if n < len(expected) else MISSING,
                actual[n] if n < len(actual) else MISSING)
    return None if expected == actual else (path, expected, actual)


def describe_difference(expected: Any, actual: Any, path: str = "$") -> str | None:
    """The first place two JSON values differ, as a short readable line; None when equal."""
    found = first_difference(expected, actual, path, whole_lists=True)
    if found is None:
        return None
    where, wanted, got = found
    if wanted is MISSING:
        return f"{where}: unexpected {_short(got)}"
    if got is MISSING:
        return f"{where}: missing (expected {_short(wanted)})"
    if isinstance(wanted, list) and isinstance(got, list):  # equal items, but not as many
        return f"{where}: expected {len(wanted)} items, got {len(got)}"
    return f"{where}: expected {_short(wanted)}, got {_short(got)}"


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
