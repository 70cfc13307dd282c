"""WebSocket framing the proxy writes itself: server text frames and the handshake's accept token (RFC 6455)."""

from __future__ import annotations

import struct

from wsproto.utilities import generate_accept_token


def encode_text_frame(payload: bytes) -> bytes:
    """One unmasked, final WebSocket text frame (server to client), per RFC 6455 5.2."""
    n = len(payload)
    if n < 126:
        return b"\x81" + bytes((n,)) + payload
    if n < 65536:
        return b"\x81\x7e" + struct.pack("!H", n) + payload
    return b"\x81\x7f" + struct.pack("!Q", n) + payload


def accept_token(key: str | bytes) -> str:
    """Sec-WebSocket-Accept for a client's Sec-WebSocket-Key."""
    return generate_accept_token(key.encode() if isinstance(key, str) else key).decode()
