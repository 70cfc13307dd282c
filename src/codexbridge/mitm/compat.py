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
    from mitmproxy import addonmanager, hooks
    from mitmproxy.proxy import server  # imported here: it pulls in the whole proxy core
    from mitmproxy.proxy.layers import tls as tls_layers

    for name in ("trigger_event", "trigger", "register", "remove", "clear", "add"):  # dispatch.py wraps them
        if not callable(getattr(addonmanager.AddonManager, name, None)):
            problems.append(f"AddonManager.{name} is missing")
    if not callable(getattr(addonmanager, "safecall", None)) or not callable(getattr(addonmanager, "traverse", None)):
        problems.append("mitmproxy.addonmanager.safecall/traverse are missing")
    if not callable(getattr(hooks.Hook, "args", None)):
        problems.append("Hook.args is missing")
    from mitmproxy.proxy import mode_servers

    if not callable(getattr(mode_servers.AsyncioServerInstance, "listen", None)):
        problems.append("AsyncioServerInstance.listen is missing")
    if not hasattr(tls_layers, "ClientTLSLayer"):
        problems.append("mitmproxy.proxy.layers.tls.ClientTLSLayer is missing")

    if not hasattr(server.ConnectionHandler, "server_event") or "transports" not in getattr(server.ConnectionHandler, "__annotations__", {}):
        problems.append("ConnectionHandler.server_event/transports are missing")
    if problems:
        raise IncompatibleMitmproxy(
            f"codexbridge cannot run on mitmproxy {mitmproxy.version.VERSION}: " + "; ".join(problems)
            + ". Install a supported version: pip install 'mitmproxy>=12.2,<13'."
        )

