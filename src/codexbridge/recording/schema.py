"""The recording format: a versioned header line, then one event per line (pydantic schema, sans-IO).

A recording is JSON Lines. Line 1 is a `Header`; every other line is one `Event`, discriminated by
`kind`, with `t` = seconds since the session started (monotonic clock). Secrets are redacted and,
optionally, long strings elided before a line is formed; `redact_text` and `elide_text` are
idempotent, so replay applies them to live traffic and compares exactly.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from codexbridge.wire.sse import SseDecoder

FORMAT: Literal["codexbridge-recording"] = "codexbridge-recording"
FORMAT_VERSION = 1
REDACTED = "<redacted>"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HttpMessage(_Model):
    method: str | None = None
    url: str | None = None
    status: int | None = None
    headers: list[tuple[str, str]]


class Header(_Model):
    """Line 1 of every recording."""

    format: Literal["codexbridge-recording"] = FORMAT
    version: int = FORMAT_VERSION
    tool_version: str
    mode: Literal["bridge", "passthrough", "http"]
    upstream: str
    started_at: str  # ISO 8601, UTC
    request: HttpMessage  # the client's upgrade request (or its POST, in http mode)
    elide_over: int = 0  # strings longer than this were elided; 0 = none
    redaction: list[str] = Field(default_factory=list)  # extra patterns applied besides the built-in ones


class ClientFrame(_Model):
    """A frame from the client: text, or base64 for binary."""

    kind: Literal["client_frame"] = "client_frame"
    t: float
    text: str | None = None
    b64: str | None = None


class ToClient(_Model):
    """Text frames sent to the client in one write; `synthetic` when the proxy made them itself.

    In the file, a relayed batch whose frames are, byte for byte, the events of the upstream reads
    recorded since the previous batch may be written as their count (`relayed`) instead of a copy;
    parse_lines fills `frames` back in from those reads."""

    kind: Literal["to_client"] = "to_client"
    t: float
    frames: list[str] = Field(default_factory=list)
    synthetic: bool = False
    relayed: int | None = None


class UpstreamRequest(_Model):
    kind: Literal["upstream_request"] = "upstream_request"
    t: float
    method: str
    url: str
    headers: list[tuple[str, str]]
    body: str


class UpstreamResponse(_Model):
    kind: Literal["upstream_response"] = "upstream_response"
    t: float
    status: int
    headers: list[tuple[str, str]]


class UpstreamChunk(_Model):
    """Raw bytes of the upstream body as one network read delivered them (text, or base64)."""

    kind: Literal["upstream_chunk"] = "upstream_chunk"
    t: float
    text: str | None = None
    b64: str | None = None


class UpstreamEnd(_Model):
    kind: Literal["upstream_end"] = "upstream_end"
    t: float
    error: str | None = None


class ServerFrame(_Model):
    """A frame from a passthrough upstream to the client (text, or base64 for binary)."""

    kind: Literal["server_frame"] = "server_frame"
    t: float
    text: str | None = None
    b64: str | None = None


class Ping(_Model):
    kind: Literal["ping"] = "ping"
    t: float
    payload: str


class Pong(_Model):
    kind: Literal["pong"] = "pong"
    t: float
    payload: str
    rtt_ms: float | None = None


class TextKeepalive(_Model):
    kind: Literal["text_keepalive"] = "text_keepalive"
    t: float


class Close(_Model):
    kind: Literal["close"] = "close"
    t: float
    code: int
    reason: str = ""
    by: Literal["client", "proxy", "upstream"]


class Error(_Model):
    kind: Literal["error"] = "error"
    t: float
    where: str
    message: str


class Complete(_Model):
    """The last line of a session that ended normally, or was open when the proxy stopped (`reason` "shutdown");
    its absence means the proxy died. Recordings written before `reason` existed read as "ended"."""

    kind: Literal["complete"] = "complete"
    t: float
    reason: Literal["ended", "shutdown"] = "ended"


Event = Annotated[
    ClientFrame | ToClient | UpstreamRequest | UpstreamResponse | UpstreamChunk | UpstreamEnd | ServerFrame
    | Ping | Pong | TextKeepalive | Close | Error | Complete,
    Field(discriminator="kind"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


# -- redaction and elision -------------------------------------------------------------------

SECRET_HEADERS = re.compile(
    r"^(authorization|proxy-authorization|cookie|set-cookie|x-api-key|api-key|openai-api-key|.*-api-key"
    r"|.*token.*|.*secret.*|.*password.*|chatgpt-account-id)$",
    re.IGNORECASE,
)
TOKEN_PATTERNS = (
    r"\bsk-[A-Za-z0-9_\-]{6,}",  # OpenAI-style keys
    r"\b(?i:bearer)\s+[A-Za-z0-9._~+/\-]{6,}=*",
    r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",  # JWTs
    r"\b(?:ghp|gho|ghu|ghs|github_pat|xox[abp]|AKIA)[A-Za-z0-9_\-]{10,}",
)


class Redactor:
    """Removes secrets from header values (by name) and from any text (by pattern)."""

    def __init__(self, extra_patterns: Iterable[str] = ()) -> None:
        self.extra = [p for p in extra_patterns if p]
        self.pattern = re.compile("|".join(f"(?:{p})" for p in (*TOKEN_PATTERNS, *self.extra)))

    def text(self, value: str) -> str:
        return self.pattern.sub(REDACTED, value)

    def headers(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        return [(n, REDACTED if SECRET_HEADERS.match(n) else self.text(v)) for n, v in headers]


_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_MARKER = re.compile(r"<elided \d+ chars sha256:[0-9a-f]{16}>")
# Per-run noise inside tool output; left out of an elided string's hash so that reruns hash alike.
VOLATILE_TEXT = re.compile(r"(Chunk ID: |Wall time: )[\w.]+")


def elide_text(text: str, over: int) -> str:
    """Replaces every JSON string literal longer than `over` characters by a marker with its length and hash."""
    if over <= 0 or len(text) <= over:
        return text

    def marker(m: re.Match[str]) -> str:
        body = m.group(1)
        if len(body) <= over or _MARKER.fullmatch(body):
            return m.group(0)  # already elided: elision is idempotent
        digest = hashlib.sha256(VOLATILE_TEXT.sub(r"\1", body).encode()).hexdigest()[:16]
        return f'"<elided {len(body)} chars sha256:{digest}>"'

    # Every string literal is matched, short ones too, so that a closing quote is never taken for an
    # opening one (the text between two strings, or between two events of one chunk, is not a string).
    return _STRING.sub(marker, text)


# -- reading ---------------------------------------------------------------------------------


class Recording(BaseModel):
    header: Header
    events: list[Event]

    @property
    def complete(self) -> bool:
        return bool(self.events) and self.events[-1].kind == "complete"

    @property
    def ended_by_shutdown(self) -> bool:
        last = self.events[-1] if self.events else None
        return isinstance(last, Complete) and last.reason == "shutdown"


def parse_lines(lines: Iterable[str]) -> Recording:
    """Parses a recording; a torn last line (a killed proxy) is ignored."""
    it: Iterator[str] = (line for line in lines if line.strip())
    try:
        first = next(it)
    except StopIteration:
        raise ValueError("empty recording") from None
    header = Header.model_validate_json(first)
    events: list[Any] = []
    pending: str | None = None
    for line in it:
        if pending is not None:
            raise ValueError(f"malformed line in the middle of the recording: {pending[:80]!r}")
        try:
            events.append(EVENT_ADAPTER.validate_json(line))
        except ValueError:
            pending = line
    _fill_relayed(events)
    return Recording(header=header, events=events)


def chunk_bytes(event: UpstreamChunk) -> bytes:
    return event.text.encode() if event.text is not None else base64.b64decode(event.b64 or "")


def _fill_relayed(events: list[Any]) -> None:
    """Frames written as a count are the events of the reads recorded since the previous batch."""
    decoder = SseDecoder()
    pending: list[str] = []
    for event in events:
        if isinstance(event, UpstreamResponse):
            decoder, pending = SseDecoder(), []
        elif isinstance(event, UpstreamChunk):
            pending.extend(e.data.decode("utf-8", "replace") for e in decoder.feed(chunk_bytes(event)))
        elif isinstance(event, ToClient) and not event.synthetic:
            if event.relayed is not None:
                if len(pending) != event.relayed:
                    raise ValueError(f"a relayed batch of {event.relayed} frames follows reads of {len(pending)} events")
                event.frames = pending
            pending = []


def load(path: str) -> Recording:
    with open(path, encoding="utf-8") as f:
        return parse_lines(f)


_LINE_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)  # json.dumps' own, made once


def dumps_line(obj: dict[str, Any]) -> str:
    return _LINE_ENCODER.encode(obj) + "\n"
