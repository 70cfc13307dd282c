"""A fast reader for the common shapes of client WebSocket frames (sans-IO).

Unfragmented, masked text/binary frames and Ping/Pong are decoded here; anything else (a Close, a
fragment, reserved bits, an unknown opcode, a frame over the size limit, invalid UTF-8) stops the
reader at that frame's first byte, so that a complete RFC 6455 implementation can take over from
there with nothing lost or reordered.
"""

from __future__ import annotations

from dataclasses import dataclass

TEXT, BINARY, PING, PONG = 0x1, 0x2, 0x9, 0xA


@dataclass(slots=True)
class Frame:
    opcode: int
    payload: bytes
    text: str | None = None  # decoded, for text frames


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    if not n:
        return payload
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


def pong_frame(payload: bytes) -> bytes:
    """An unmasked Pong (server to client); control payloads are at most 125 bytes."""
    return bytes((0x80 | PONG, len(payload))) + payload


class FastReader:
    """feed() returns the frames it could decode; once `stopped`, `rest` holds every byte not consumed.

    Reads client frames (masked) by default; with masked=False, server frames, whose wire bytes a
    relay may forward unchanged: `consumed` holds the bytes of the frames the last feed() returned.
    """

    def __init__(self, max_payload: int = 0, masked: bool = True) -> None:
        self.max_payload = max_payload  # 0: no limit of its own
        self.masked = masked
        self.stopped = False
        self.rest = b""
        self.consumed = b""

    def feed(self, data: bytes) -> list[Frame]:
        buf = self.rest + data if self.rest else data
        frames: list[Frame] = []
        pos, size = 0, len(buf)
        while not self.stopped and size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            opcode = b0 & 0x0F
            length = b1 & 0x7F
            if b0 & 0xF0 != 0x80 or bool(b1 & 0x80) != self.masked or opcode not in (TEXT, BINARY, PING, PONG):
                self.stopped = True  # fragments, reserved bits, wrong masking, Close, unknown opcodes
                break
            head = 6 if self.masked else 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 4], "big")
                head = 8 if self.masked else 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                head = 14 if self.masked else 10
            if (opcode >= PING and length > 125) or (self.max_payload and length > self.max_payload):
                self.stopped = True
                break
            end = pos + head + length
            if end > size:
                break
            payload = buf[pos + head:end]
            if self.masked:
                payload = _unmask(payload, buf[pos + head - 4:pos + head])
            text = None
            if opcode == TEXT:
                try:
                    text = payload.decode("utf-8")
                except UnicodeDecodeError:
                    self.stopped = True
                    break
            frames.append(Frame(opcode, payload, text))
            pos = end
        self.consumed = buf[:pos] if frames else b""
        self.rest = buf[pos:] if pos < size else b""
        return frames
