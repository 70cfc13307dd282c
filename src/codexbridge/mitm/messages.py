"""WebSocket messages the glue makes for mitmproxy: one injected event for what the layer must do in its turn,
server text messages for the flow's list, and a bridged upgrade's request and 101, built without the
constructors' overhead."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import wsproto.events as wse
from mitmproxy import http
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


# The request and 101 of a bridged upgrade, built without the constructors' per-field type checks (which cost more
# than the rest of building them: ~170 us for a request head); used when they make exactly what the constructors make.

def _request_plain(method: bytes, target: bytes, headers: http.Headers, now: float) -> http.Request:
    return http.Request(host="", port=0, method=method, scheme=b"", authority=b"", path=target, http_version=b"HTTP/1.1",
                        headers=headers, content=None, trailers=None, timestamp_start=now, timestamp_end=None)


def _request_fast(method: bytes, target: bytes, headers: http.Headers, now: float) -> http.Request:
    data = _alloc(http.RequestData)
    data.__dict__.update(http_version=b"HTTP/1.1", headers=headers, content=None, trailers=None, timestamp_start=now,
                         timestamp_end=None, host="", port=0, method=method, scheme=b"", authority=b"", path=target)
    request = _alloc(http.Request)
    request.data = data
    return request


def _switching_plain(fields: list[tuple[bytes, bytes]], now: float) -> http.Response:
    response = http.Response.make(101, b"", fields)
    response.timestamp_start = response.timestamp_end = now
    return response


def _switching_fast(fields: list[tuple[bytes, bytes]], now: float) -> http.Response:
    data = _alloc(http.ResponseData)
    data.__dict__.update(http_version=b"HTTP/1.1", headers=http.Headers([*fields, (b"content-length", b"0")]), content=b"",
                         trailers=None, timestamp_start=now, timestamp_end=now, status_code=101,
                         reason=b"Switching Protocols")
    response = _alloc(http.Response)
    response.data = data
    return response


def _pick(fast: Any, plain: Any, *sample: Any) -> Any:
    """The fast builder, if it makes exactly what the constructor makes on this mitmproxy."""
    try:
        a, b = fast(*sample), plain(*sample)
        if vars(a).keys() == vars(b).keys() and vars(a.data) == vars(b.data) and a.get_state() == b.get_state():
            return fast
    except Exception:  # noqa: BLE001 - any difference means: use the constructor
        pass
    return plain


upgrade_request = _pick(_request_fast, _request_plain, b"GET", b"/v1/responses?a=1",
                        http.Headers([(b"Host", b"x"), (b"Upgrade", b"websocket")]), 1.0)
_switching = _pick(_switching_fast, _switching_plain, [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")], 1.0)


def switching_protocols(fields: list[tuple[bytes, bytes]]) -> http.Response:
    """What http.Response.make(101, b"", fields) makes."""
    return _switching(fields, time.time())
