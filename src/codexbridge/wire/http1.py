"""HTTP/1.1 for the bridge's upstream client, sans-IO: request bytes out, a streamed response parsed in."""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass

MAX_HEAD_BYTES = 64 * 1024


class ProtocolError(Exception):
    """The upstream's bytes are not a valid HTTP/1.1 response."""


def build_request(method: str, target: str, host: str, headers: Iterable[tuple[str, str]],
                  body: bytes | None) -> bytes:
    """One request, with a Content-Length body unless `body` is None; `headers` must not carry Host or
    framing headers."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    head = "\r\n".join(lines).encode("latin-1", "replace") + b"\r\n\r\n"
    return head + body if body else head


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    _index: dict[str, str] | None = None

    def get(self, name: str, default: str = "") -> str:
        """A header's value by case-insensitive name; repeated headers joined with ', '."""
        index = self._index
        if index is None:
            index = self._index = {}
            for key, value in self.headers:
                key = key.lower()
                index[key] = f"{index[key]}, {value}" if key in index else value
        return index.get(name.lower(), default)


_CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS = range(4)


class ResponseParser:
    """Parses one response; feed() returns the body bytes it completed, de-chunked and decoded.

    After `done`, any further bytes are kept in `surplus` (a connection that sent them is unusable).
    """

    def __init__(self, expect_body: bool = True, keep_pieces: bool = False) -> None:
        self.head: ResponseHead | None = None
        # with keep_pieces: the body of the last feed() as the upstream framed it (one entry per chunk piece)
        self.pieces: list[bytes] | None = [] if keep_pieces else None
        self.done = False
        self.keep_alive = False
        self.surplus = b""
        self._expect_body = expect_body
        self._buf = b""
        self._remaining = -1  # Content-Length left; -1: read to close
        self._chunked = False
        self._chunk_state = _CHUNK_SIZE
        self._decoder: zlib._Decompress | None = None

    def feed(self, data: bytes) -> bytes:
        if self.done:
            self.surplus += data
            return b""
        if self.head is None:
            self._buf += data
            if not self._parse_head():
                return b""
            data, self._buf = self._buf, b""
            if self.done:
                self.surplus = data
                return b""
        if self._chunked:
            body = self._dechunk(data)
        elif self._remaining >= 0:
            if len(data) >= self._remaining:
                body, rest = data[: self._remaining], data[self._remaining:]
                self._remaining = 0
                self._finish(rest)
            else:
                body = data
                self._remaining -= len(data)
        else:
            body = data
        if self._decoder is not None and body:
            body = self._decoder.decompress(body)
            if self.pieces is not None:
                self.pieces = [body]
        elif self.pieces is not None and not self._chunked:
            self.pieces = [body] if body else []
        return body

    def eof(self) -> bytes:
        """The connection ended; returns what a decoder still held. Raises if the body was cut short."""
        if self.done:
            return b""
        if self.head is None:
            raise ProtocolError("connection closed before a complete response head")
        if self._chunked or self._remaining > 0:
            raise ProtocolError("connection closed before the end of the response body")
        self.done = True
        self.keep_alive = False
        return self._decoder.flush() if self._decoder is not None else b""

    # -- head -------------------------------------------------------------------------------

    def _parse_head(self) -> bool:
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD_BYTES:
                    raise ProtocolError("response head too large")
                if self._buf.startswith(b"\n") or self._buf.startswith(b"\r\n"):
                    self._buf = self._buf.lstrip(b"\r\n")  # tolerate stray blank lines before a status line
                return False
            raw, self._buf = self._buf[:end], self._buf[end + 4:]
            lines = raw.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
            status = int(parts[1])
            headers = []
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep or not name or name != name.strip():
                    raise ProtocolError(f"bad header line: {line[:80]!r}")
                headers.append((name, value.strip()))
            if 100 <= status < 200 and status != 101:
                continue  # informational (100 Continue, 103 Early Hints): the real answer follows
            self.head = head = ResponseHead(status, parts[2] if len(parts) > 2 else "", headers)
            self._framing(head, parts[0])
            return True

    def _framing(self, head: ResponseHead, version: str) -> None:
        connection = head.get("connection").lower()
        self.keep_alive = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
        coding = head.get("content-encoding").lower().strip()
        if coding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            self._decoder = zlib.decompressobj()
        elif coding not in ("", "identity"):
            raise ProtocolError(f"unsupported content-encoding {coding!r}")
        if not self._expect_body or head.status in (101, 204, 304):
            self._remaining = 0
            self._finish(b"")
            return
        if "chunked" in head.get("transfer-encoding").lower():
            self._chunked = True
            return
        length = head.get("content-length")
        if length:
            values = {v.strip() for v in length.split(",")}
            if len(values) != 1 or not next(iter(values)).isdigit():
                raise ProtocolError(f"bad content-length {length!r}")
            self._remaining = int(next(iter(values)))
            if self._remaining == 0:
                self._finish(b"")
        else:
            self.keep_alive = False  # the body ends when the connection does

    def _finish(self, rest: bytes) -> None:
        self.done = True
        self.surplus = rest

    # -- chunked ----------------------------------------------------------------------------

    def _dechunk(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        self._buf = b""
        out: list[bytes] = []
        pos, size = 0, len(buf)
        while pos < size:
            state = self._chunk_state
            if state == _CHUNK_DATA:
                take = min(self._remaining, size - pos)
                out.append(buf[pos:pos + take])
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._chunk_state = _CHUNK_CRLF
            elif state == _CHUNK_CRLF:
                if size - pos < 2:
                    break
                if buf[pos:pos + 2] != b"\r\n":
                    raise ProtocolError("chunk not followed by CRLF")
                pos += 2
                self._chunk_state = _CHUNK_SIZE
            else:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    if size - pos > 4096:
                        raise ProtocolError("chunk size line too long")
                    break
                line = buf[pos:end]
                pos = end + 2
                if state == _TRAILERS:
                    if not line:
                        self._finish(buf[pos:])
                        pos = size
                        break
                    continue
                try:
                    chunk = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size line {line[:40]!r}") from None
                if chunk < 0:
                    raise ProtocolError("negative chunk size")
                if chunk == 0:
                    self._chunk_state = _TRAILERS
                else:
                    self._remaining = chunk
                    self._chunk_state = _CHUNK_DATA
        if pos < size and not self.done:
            self._buf = buf[pos:]
        if self.pieces is not None:
            self.pieces = out
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)
