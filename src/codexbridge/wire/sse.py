"""Incremental Server-Sent Events decoder (sans-IO, bytes in, events out)."""

from __future__ import annotations

import re
from typing import NamedTuple


class SseEvent(NamedTuple):
    """One dispatched SSE event: the `event:` name (or "") and the joined `data:` lines."""

    event: str
    data: bytes


_new = tuple.__new__  # builds an SseEvent without the namedtuple's Python-level constructor


# The shape nearly every gateway sends: optional `event:` line, one `data:` line, blank line.
_SIMPLE_EVENTS = re.compile(rb"(?:(?:event: ?[^\n]*\n)?data: ?[^\n]*\n\n)*")
_SIMPLE_EVENT = re.compile(rb"(?:event: ?([^\n]*)\n)?data: ?([^\n]*)\n\n")


class SseDecoder:
    """Decodes an SSE byte stream split at arbitrary points.

    Follows the WHATWG rules: LF, CRLF and lone CR end lines; lines starting with ':' are
    comments; several `data:` lines join with LF; an empty line dispatches; an event without
    data is not dispatched; a single space after the colon is stripped.
    """

    __slots__ = ("_buf", "_event", "_data", "_has_data", "_pending_cr", "_bom_checked")

    def __init__(self) -> None:
        self._buf = b""
        self._event = ""
        self._data: list[bytes] = []
        self._has_data = False
        self._pending_cr = False
        self._bom_checked = False

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Consumes a chunk and returns every event it completes, in order."""
        if not chunk:
            return []
        if not self._bom_checked:
            chunk = self._strip_bom(chunk)
            if not chunk:
                return []
        if self._pending_cr:
            self._pending_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\r" in chunk:
            if chunk[-1:] == b"\r":
                # a CR at the end may be the first half of a CRLF split across chunks
                self._pending_cr = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf + chunk if self._buf else chunk
        # Only complete events are parsed: the bytes after the last blank line wait, unparsed, for the
        # rest of their event, so every network read starts at an event boundary (and the fast path applies).
        end = buf.rfind(b"\n\n") + 2
        if end < 2:
            self._buf = buf
            return []
        self._buf = buf[end:]
        if _SIMPLE_EVENTS.fullmatch(buf, 0, end):
            # fast path: a run of simple events, parsed in C
            return [_new(SseEvent, (name.decode("utf-8", "replace") if name else "", data))
                    for name, data in _SIMPLE_EVENT.findall(buf, 0, end)]
        events: list[SseEvent] = []
        lines = buf[:end].split(b"\n")
        lines.pop()  # the empty remainder after the final newline
        for line in lines:
            self._line(line, events)
        return events

    def close(self) -> list[SseEvent]:
        """Ends the stream; an unterminated final event is discarded, as the spec says."""
        self._buf = b""
        self._data = []
        self._has_data = False
        self._event = ""
        return []

    @property
    def pending(self) -> bool:
        """True when part of an event has been read but not yet dispatched."""
        return bool(self._buf) or self._has_data

    def _strip_bom(self, chunk: bytes) -> bytes:
        bom = b"\xef\xbb\xbf"
        probe = self._buf + chunk
        if len(probe) < 3 and bom.startswith(probe):
            self._buf = probe
            return b""
        self._bom_checked = True
        self._buf = b""
        return probe[3:] if probe.startswith(bom) else probe

    def _line(self, line: bytes, events: list[SseEvent]) -> None:
        if not line:
            if self._has_data:
                events.append(SseEvent(self._event, b"\n".join(self._data)))
            self._data = []
            self._has_data = False
            self._event = ""
            return
        if line[:5] == b"data:":
            value = line[5:]
            if value[:1] == b" ":
                value = value[1:]
            self._data.append(value)
            self._has_data = True
            return
        if line[:1] == b":":
            return
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"data":  # "data" without a colon: an empty data line
            self._data.append(b"")
            self._has_data = True
        # id, retry and unknown fields carry nothing the bridge needs
