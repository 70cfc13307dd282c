"""Writes one session's recording: redacted, elided, one line per event, flushed as it happens."""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import re
import time
from array import array
from json.encoder import encode_basestring  # what json.dumps(..., ensure_ascii=False) uses for a str
from pathlib import Path
from typing import Any

from codexbridge import __version__
from codexbridge.recording.schema import (
    REDACTED,
    SECRET_HEADERS,
    Header,
    HttpMessage,
    Redactor,
    dumps_line,
    elide_text,
)
from codexbridge.wire.sse import SseDecoder

log = logging.getLogger("codexbridge.recording.writer")

# Cheap substrings that every built-in token pattern needs; a text without any skips the regex. One substring search
# per trigger over a read (with the previous read's tail) is the cheapest full scan measured in CPython: 7 of them
# cost ~5 ns a byte, a regular expression of the same alternatives 10-25, a Rust Aho-Corasick automaton ~4 plus a
# dependency. "gh" stands for the GitHub prefixes it is in, checked one by one only when it occurs.
_TRIGGERS = ("sk-", "eyJ", "earer", "EARER", "gh", "xox", "AKIA", "github_pat")
_GITHUB = ("ghp", "gho", "ghu", "ghs", "github_pat")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")
_SPAN = 4096  # how far into the next read a token split across two reads is looked for
_TAIL = 128  # how much of a read is kept to find a token that goes on in the next one
_EVENT_END = (b"\n\n", b"\r\n\r\n")  # a read that ends with one ends at an event boundary
_BUFFERED = 256  # lines kept in memory before they are written out, between two flush() calls


def recording_path(directory: str, mode: str, label: str, started: dt.datetime) -> Path:
    name = f"{started.strftime('%Y%m%dT%H%M%S.%fZ')}-{mode}-{_SAFE_NAME.sub('_', label)[:40] or 'session'}.jsonl"
    return Path(directory) / name


class SessionRecorder:
    """One recording file. Never raises into the proxied session: a failure is logged loudly once."""

    def __init__(
        self,
        directory: str,
        mode: str,
        upstream: str,
        request: HttpMessage,
        redactor: Redactor,
        elide_over: int = 0,
        label: str = "",
        path: Path | None = None,
        started: dt.datetime | None = None,
    ) -> None:
        self.redactor = redactor
        self.elide_over = elide_over
        self._fast = not redactor.extra
        self._t0 = time.monotonic()
        # Set by the recording worker: the proxy's monotonic clock at the session's start and at the current event.
        self.clock0 = 0.0
        self.clock: float | None = None
        self._fd: int | None = None
        self._lines: list[str] = []  # written, not in the file yet
        self.failed = False
        self.flush_each = True  # the worker turns this off and calls flush() when its input runs dry
        self.dirty = False
        self._tail = ""
        self._tail_clean = True  # no trigger in the tail (False: maybe)
        self._chunks_clean = False  # the upstream reads of the current response held nothing to redact
        # The current response's reads are in the file such that decoding them gives the frames relayed from them
        # (as they came, or redacted or elided the way the frames would be): relayed batches are written as
        # their count. Until one is not, the reads are not decoded here at all (the proxy sends the count).
        self._by_reference = False
        self._at_boundary = True  # the reads so far end at an event boundary
        self._sse: SseDecoder | None = None  # decoding the current response's reads; None: not needed so far
        self._undecoded: list[bytes] = []  # reads not decoded, since the last event boundary at a relayed batch
        self._skip = 0  # events of those reads already relayed
        self._restart = False  # reads before those were dropped at an event boundary
        self._relayed: list[bytes] = []  # events decoded and not relayed yet
        started = started or dt.datetime.now(dt.UTC)
        self.path = path or recording_path(directory, mode, label, started)
        header = Header(
            tool_version=__version__,
            mode=mode,
            upstream=self.text(upstream),
            started_at=started.isoformat(),
            request=HttpMessage(
                method=request.method,
                url=self.text(request.url or ""),
                status=request.status,
                headers=self.headers(request.headers),
            ),
            elide_over=elide_over,
            redaction=redactor.extra,
        )
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        except OSError as e:
            self._fail(e)
        else:
            self._write(header.model_dump_json() + "\n")

    # -- payload hygiene ---------------------------------------------------------------------

    def text(self, value: str) -> str:
        if self.elide_over:
            value = elide_text(value, self.elide_over)
        return value if self._clean(value) else self.redactor.text(value)

    def headers(self, headers: Any) -> list[tuple[str, str]]:
        """Redactor.headers(), without its regular expression for a value that holds no trigger."""
        clean, redact = self._clean, self.redactor.text
        return [(n, REDACTED if SECRET_HEADERS.match(n) else v if clean(v) else redact(v))
                for n, v in ((str(n), str(v)) for n, v in headers)]

    def _payload(self, data: bytes | str) -> dict[str, str]:
        if isinstance(data, str):
            return {"text": self.text(data)}
        try:
            return {"text": self.text(data.decode("utf-8"))}
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(data).decode()}

    # -- events ------------------------------------------------------------------------------

    def _t(self) -> float:
        if self.clock is not None:
            return round(self.clock - self.clock0, 6)
        return round(time.monotonic() - self._t0, 6)

    def _t_json(self) -> str:
        """repr(self._t()), as json.dumps writes it, in a quarter of the time."""
        t = self.clock - self.clock0 if self.clock is not None else time.monotonic() - self._t0
        if 0.0001 <= t < 1e9:  # where the shortest repr of t rounded to 6 decimals is this, without trailing zeros
            text = f"{t:.6f}".rstrip("0")
            return text + "0" if text[-1] == "." else text
        return repr(round(t, 6))

    def client_frame(self, data: bytes | str) -> None:
        self._event({"kind": "client_frame", "t": self._t(), **self._payload(data)})

    def to_client(self, frames: list[bytes], synthetic: bool = False) -> None:
        if not synthetic:
            if self._sse is None:
                self._decode_now()
            self._relayed = []  # a relayed batch sent as it is: the decoded events are this batch
        texts = [f.decode("utf-8", "replace") for f in frames]
        # relayed frames are the events of the chunks just recorded: scanned already if those were clean
        scanned = not synthetic and self._chunks_clean
        if self.elide_over or not (scanned or self._clean("\n".join(texts))):
            texts = [self.text(t) for t in texts]
        self._event({"kind": "to_client", "t": self._t(), "frames": texts, "synthetic": synthetic})

    def to_client_relayed(self, count: int | None = None) -> None:
        """The frames the client just got are the events of the upstream reads recorded since the last
        batch, unchanged (the proxy then sends their `count`, and no copy of them)."""
        if count is None and self._sse is None:
            self._decode_now()
        if not self._by_reference:
            frames, self._relayed = self._relayed, []
            self.to_client(frames, False)
            return
        if count is None:
            count = len(self._relayed)
        if self._sse is None:
            self._skip += count
            if self._at_boundary:  # nothing pending: these reads are done with
                self._undecoded, self._skip, self._restart = [], 0, True
        else:
            self._relayed = []
        # those reads are in the file: the frames are stored by reference, not twice
        if self._fd is not None:
            self._write(f'{{"kind":"to_client","t":{self._t_json()},"relayed":{count},"synthetic":false}}\n')

    def _decode_now(self) -> None:
        """From here on the current response's reads are decoded as they come: decodes those not decoded yet."""
        decoder = self._sse = SseDecoder()
        if self._restart:
            decoder.feed(b"\n")  # a decoder that has seen the response start (an empty line dispatches nothing)
        if self._undecoded:
            self._relayed = [event.data for event in decoder.feed(b"".join(self._undecoded))][self._skip:]
        self._undecoded, self._skip = [], 0

    def to_client_packed(self, joined: bytes, lengths: bytes, synthetic: bool = False) -> None:
        """to_client() for frames sent as one bytes object and their lengths (array 'I')."""
        frames, pos = [], 0
        for n in array("I", lengths):
            frames.append(joined[pos:pos + n])
            pos += n
        self.to_client(frames, synthetic)

    def _clean(self, value: str) -> bool:
        """True when no built-in pattern can match (and no extra pattern is configured): no trigger in `value`
        (_TRIGGERS, spelled out: a loop over them costs twice as much)."""
        return self._fast and not (
            "sk-" in value or "eyJ" in value or "earer" in value or "EARER" in value or "xox" in value
            or "AKIA" in value or "github_pat" in value
            or ("gh" in value and ("ghp" in value or "gho" in value or "ghu" in value or "ghs" in value)))

    def server_frame(self, data: bytes | str) -> None:
        self._event({"kind": "server_frame", "t": self._t(), **self._payload(data)})

    def upstream_request(self, method: str, url: str, headers: Any, body: bytes) -> None:
        self._event({"kind": "upstream_request", "t": self._t(), "method": method, "url": self.text(url),
                     "headers": self.headers(headers), "body": self.text(body.decode("utf-8", "replace"))})

    def upstream_response(self, status: int, headers: Any) -> None:
        self._tail = ""
        self._tail_clean = True
        self._chunks_clean = True
        self._by_reference = True
        self._at_boundary = True
        self._sse = None
        self._undecoded, self._skip, self._restart = [], 0, False
        self._relayed = []
        self._event({"kind": "upstream_response", "t": self._t(), "status": status, "headers": self.headers(headers)})

    def upstream_chunk(self, data: bytes) -> None:
        if self._sse is None:
            self._undecoded.append(data)
        else:
            self._relayed.extend(event.data for event in self._sse.feed(data))
        aligned_before = self._at_boundary
        self._at_boundary = data.endswith(_EVENT_END)
        try:
            raw = data.decode("utf-8")
        except UnicodeDecodeError:
            self._tail = ""
            self._tail_clean = True
            self._chunks_clean = False
            self._not_by_reference()
            self._event({"kind": "upstream_chunk", "t": self._t(), "b64": base64.b64encode(data).decode()})
            return
        tail = self._tail
        # This read, and a token going on from the last one; but no trigger has a line break, so none goes on
        # across one, and a tail the last look found clean holds none.
        clean = self._clean(raw if self._tail_clean and tail[-1:] in ("", "\n") else tail + raw)
        self._tail_clean = clean
        if clean and not self.elide_over:
            text = raw
        else:
            self._chunks_clean = self._chunks_clean and clean
            text = self.text(raw)
            split_token = False
            if tail and not clean:
                # a secret that began in the previous read and ends in this one
                for m in self.redactor.pattern.finditer(tail + raw[:_SPAN]):
                    if m.start() < len(tail) < m.end():
                        text = REDACTED + self.text(raw[m.end() - len(tail):])
                        split_token = True
                        break
            if split_token or not (aligned_before and self._at_boundary and self._same_frames(data, text)):
                self._not_by_reference()
        self._tail = raw[-_TAIL:]
        if self._fd is not None:
            self._write(f'{{"kind":"upstream_chunk","t":{self._t_json()},"text":{encode_basestring(text)}}}\n')

    def _same_frames(self, data: bytes, text: str) -> bool:
        """A read that starts and ends at an event boundary, written as `text`: decoding `text` gives the frames
        relayed from the read, redacted and elided as written explicitly (so they can be stored by reference)."""
        relayed = [event.data.decode("utf-8", "replace") for event in SseDecoder().feed(data)]
        stored = [event.data.decode("utf-8", "replace") for event in SseDecoder().feed(text.encode())]
        return len(relayed) == len(stored) and all(self.text(r) == s for r, s in zip(relayed, stored, strict=True))

    def _not_by_reference(self) -> None:
        if self._by_reference:
            self._by_reference = False
            if self._sse is None:
                self._decode_now()

    def upstream_end(self, error: str | None = None) -> None:
        self._chunks_clean = False
        self._by_reference = False
        self._sse = None
        self._undecoded, self._skip = [], 0
        self._relayed = []
        self._event({"kind": "upstream_end", "t": self._t(), "error": self.text(error) if error else None})

    def ping(self, payload: bytes) -> None:
        self._event({"kind": "ping", "t": self._t(), "payload": payload.decode("utf-8", "replace")})

    def pong(self, payload: bytes, rtt: float | None) -> None:
        self._event({"kind": "pong", "t": self._t(), "payload": payload.decode("utf-8", "replace"),
                     "rtt_ms": None if rtt is None else round(rtt * 1000, 3)})

    def text_keepalive(self) -> None:
        self._event({"kind": "text_keepalive", "t": self._t()})

    def close(self, code: int, reason: str, by: str) -> None:
        self._event({"kind": "close", "t": self._t(), "code": code, "reason": self.text(reason or ""), "by": by})

    def error(self, where: str, message: str) -> None:
        self._event({"kind": "error", "t": self._t(), "where": where, "message": self.text(message)})

    def complete(self) -> None:
        self._end({"kind": "complete", "t": self._t()})

    def shutdown(self) -> None:
        """The proxy stopped while the session was open: the last line says so."""
        self._end({"kind": "complete", "t": self._t(), "reason": "shutdown"})

    def _end(self, last: dict[str, Any]) -> None:
        if self._fd is None:
            return
        self._event(last)
        self.flush()
        self._close()

    def close_file(self) -> None:
        """Closes without the completion marker (the proxy went away mid-session)."""
        if self._fd is not None:
            self.flush()
            self._close()

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        self._lines = []
        if fd is not None:
            try:
                os.close(fd)
            except OSError as e:
                self._fail(e)

    def discard(self) -> None:
        """Removes a recording that turned out to be about nothing (an upgrade handed to another mode)."""
        self.close_file()
        try:
            self.path.unlink()
        except OSError:
            pass

    # -- I/O ---------------------------------------------------------------------------------

    def _event(self, obj: dict[str, Any]) -> None:
        if self._fd is not None:
            self._write(dumps_line(obj))

    def _write(self, line: str) -> None:
        lines = self._lines
        lines.append(line)
        if self.flush_each or len(lines) >= _BUFFERED:
            self.flush()
        else:
            self.dirty = True

    def flush(self) -> None:
        """Writes out what is buffered (the worker calls this whenever its input runs dry)."""
        self.dirty = False
        lines = self._lines
        if not lines or self._fd is None:
            return
        self._lines = []
        text = "".join(lines)
        error: Exception | None = None
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate (the text of a malformed frame): the lines before it
            data, error = text[:text.rfind("\n", 0, e.start) + 1].encode("utf-8"), e
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as e:
            error = e
        if error is not None:
            self._fail(error)

    def _fail(self, error: Exception) -> None:
        if not self.failed:
            log.error("RECORDING FAILED for %s: %s. The session goes on, but it is no longer recorded.",
                      self.path, error)
        self.failed = True
        self._lines = []
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
