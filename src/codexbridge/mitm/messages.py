"""WebSocket messages the glue makes for mitmproxy: one injected event for what the layer must do in its turn,
and server text messages for the flow's list built without the constructor's overhead."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import wsproto.events as wse
from mitmproxy.proxy.layers import websocket as ws_layers
from mitmproxy.websocket import WebSocketMessage
from wsproto.frame_protocol import Opcode


@dataclass
class BridgeInjected(ws_layers.WebSocketMessageInjected):
    """Something for the flow's layer to do in its own turn: a send to the client the layers must encrypt
    (ClientOutbox.send's arguments), a close of the client, or a client Close read by a DirectReader."""

    frames: list[bytes] = field(default_factory=list)
    synthetic: bool = False
    keepalive: bool = False  # the frames are a text keepalive (recorded as such, not as output)
    control: wse.Ping | wse.Pong | None = None  # (a close is asked for with `close`)
    close: tuple[int, str] | None = None  # close the client with this code and reason
    client_closed: wse.CloseConnection | None = None  # read by a DirectReader: the layers must see it


def placeholder_message() -> WebSocketMessage:
    """The message an injected event must carry; ours carry their payload elsewhere."""
    return WebSocketMessage(Opcode.TEXT, False, b"")


def _server_text_plain(payload: bytes, now: float, injected: bool) -> WebSocketMessage:
    return WebSocketMessage(Opcode.TEXT, False, payload, now, injected=injected)


def _server_text_fast(payload: bytes, now: float, injected: bool) -> WebSocketMessage:
    # The constructor's Opcode() call and keyword handling cost more than the rest of a relayed event.
    message = _alloc(WebSocketMessage)
    message.__dict__.update(from_client=False, type=Opcode.TEXT, content=payload, timestamp=now, dropped=False,
                            injected=injected)
    return message


def _pick_server_text() -> Any:
    """The fast builder, if it makes exactly what the constructor makes on this mitmproxy."""
    try:
        fast, plain = _server_text_fast(b"x", 1.0, True), _server_text_plain(b"x", 1.0, True)
        if vars(fast) == vars(plain) and fast.get_state() == plain.get_state():
            return _server_text_fast
    except Exception:  # noqa: BLE001 - any difference means: use the constructor
        pass
    return _server_text_plain


_alloc = object.__new__
server_text = _pick_server_text()
