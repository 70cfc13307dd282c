"""The load-time check that the mitmproxy internals codexbridge relies on are there, with a clear refusal."""

from __future__ import annotations

import inspect

import mitmproxy
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers import websocket as ws_layers


class IncompatibleMitmproxy(RuntimeError):
    pass


def check_internals() -> None:
    problems = []
    stock = getattr(ws_layers, "WebsocketLayer", None)
    for name in ("WebsocketLayer", "WebsocketConnection", "WebSocketMessageInjected", "WebsocketStartHook",
                 "WebsocketMessageHook", "WebsocketEndHook"):
        if not hasattr(ws_layers, name):
            problems.append(f"mitmproxy.proxy.layers.websocket.{name} is missing")
    if stock is not None and not hasattr(stock, "relay_messages"):
        problems.append("WebsocketLayer.relay_messages is missing")
    try:
        flow_done = inspect.getsource(http_layers.HttpStream.flow_done)
        if "websocket.WebsocketLayer(" not in flow_done:
            problems.append("HttpStream.flow_done no longer builds websocket.WebsocketLayer")
    except (AttributeError, OSError, TypeError):
        problems.append("HttpStream.flow_done cannot be inspected")
    from mitmproxy.proxy import server  # imported here: it pulls in the whole proxy core

    if not hasattr(server.ConnectionHandler, "server_event") or "transports" not in getattr(server.ConnectionHandler, "__annotations__", {}):
        problems.append("ConnectionHandler.server_event/transports are missing")
    if problems:
        raise IncompatibleMitmproxy(
            f"codexbridge cannot run on mitmproxy {mitmproxy.version.VERSION}: " + "; ".join(problems)
            + ". Install a supported version: pip install 'mitmproxy>=12.2,<13'."
        )

