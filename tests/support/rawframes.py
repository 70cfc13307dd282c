"""A blocking WebSocket client that writes frames byte by byte as a test wants them (fragments, reserved bits,
no mask, invalid UTF-8) and reads the server's frames with wsproto: messages, pings (answered) and the close."""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import wsproto
import wsproto.events as wse

TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def frame(payload: bytes, opcode: int = TEXT, *, fin: bool = True, rsv: int = 0, masked: bool = True) -> bytes:
    """One client frame as it goes on the wire; `rsv` sets the reserved bits (0b100 is RSV1)."""
    n = len(payload)
    head = bytes(((0x80 if fin else 0) | (rsv & 0x7) << 4 | opcode,))
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head += bytes((mask_bit | n,))
    elif n < 65536:
        head += bytes((mask_bit | 126,)) + n.to_bytes(2, "big")
    else:
        head += bytes((mask_bit | 127,)) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    key = os.urandom(4)
    if not n:
        return head + key
    mask = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return head + key + (int.from_bytes(payload, "big") ^ mask).to_bytes(n, "big")


def fragments(payload: bytes, opcode: int, cuts: list[int], ping_between: bool = False) -> bytes:
    """A message split at `cuts` (offsets) into a first frame and continuations; optionally a Ping between each."""
    points = sorted({c for c in cuts if 0 < c < len(payload)})
    pieces = [payload[a:b] for a, b in zip([0, *points], [*points, len(payload)], strict=True)]
    out = b""
    for i, piece in enumerate(pieces):
        out += frame(piece, opcode if i == 0 else CONTINUATION, fin=i == len(pieces) - 1)
        if ping_between and i < len(pieces) - 1:
            out += frame(b"between", PING)
    return out


@dataclass
class Closed:
    code: int
    reason: str


@dataclass
class RawClient:
    sock: socket.socket
    ws: wsproto.WSConnection
    pongs: list[bytes] = field(default_factory=list)
    closed: Closed | None = None
    _ready: list[str | bytes | Closed] = field(default_factory=list)
    _partial: list[Any] = field(default_factory=list)

    @classmethod
    def connect(cls, port: int, path: str = "/v1/responses", timeout: float = 10.0) -> RawClient:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        sock.sendall(ws.send(wse.Request(host=f"127.0.0.1:{port}", target=path,
                                         extra_headers=[(b"authorization", b"Bearer sk-fuzz-secret")])))
        client = cls(sock, ws)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed during the handshake")
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, wse.AcceptConnection):
                    return client
                if isinstance(event, wse.RejectConnection):
                    raise ConnectionError(f"upgrade rejected with {event.status_code}")
        raise TimeoutError("no 101")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_text(self, text: str | bytes) -> None:
        self.send(frame(text.encode() if isinstance(text, str) else text))

    def send_json(self, obj: Any) -> None:
        self.send_text(json.dumps(obj))

    def next(self, timeout: float = 10.0) -> str | bytes | Closed:
        """The next complete message, or the close (then always the close)."""
        deadline = time.monotonic() + timeout
        while not self._ready:
            if self.closed is not None:
                return self.closed
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from the proxy")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 18)
            except TimeoutError:
                raise TimeoutError("no message from the proxy") from None
            except ConnectionError:
                data = b""
            self._take(data)
        return self._ready.pop(0)

    def next_json(self, timeout: float = 10.0) -> dict[str, Any]:
        message = self.next(timeout)
        if isinstance(message, Closed):
            raise ConnectionError(f"closed with {message.code} {message.reason!r}")
        assert isinstance(message, str), f"the proxy sent a binary frame: {message[:100]!r}"
        return json.loads(message)

    def _take(self, data: bytes) -> None:
        try:
            self.ws.receive_data(data or None)
            events = list(self.ws.events())
        except wsproto.utilities.LocalProtocolError:
            events = []
        for event in events:
            if isinstance(event, wse.Ping):
                self.send(frame(bytes(event.payload), PONG))
            elif isinstance(event, wse.Pong):
                self.pongs.append(bytes(event.payload))
            elif isinstance(event, wse.Message):
                self._partial.append(event.data)
                if event.message_finished:
                    parts, self._partial = self._partial, []
                    self._ready.append("".join(parts) if isinstance(parts[0], str) else b"".join(parts))
            elif isinstance(event, wse.CloseConnection):
                self.closed = Closed(event.code, event.reason or "")
        if not data and self.closed is None:
            self.closed = Closed(1006, "")

    def close(self) -> None:
        try:
            if self.closed is None:
                self.send(frame(b"\x03\xe8", CLOSE))
        except OSError:
            pass
        self.sock.close()
