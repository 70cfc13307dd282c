"""The load-time check that the mitmproxy internals codexbridge relies on are there, with a clear refusal."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

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
    problems += _fast_path_problems()
    problems += _lighter_session_problems()
    problems += _fast_tls_problems()
    if problems:
        raise IncompatibleMitmproxy(
            f"codexbridge cannot run on mitmproxy {mitmproxy.version.VERSION}: " + "; ".join(problems)
            + ". Install a supported version: pip install 'mitmproxy>=12.2,<13'."
        )



def _fast_path_problems() -> list[str]:
    """What the listener's fast path for bridged upgrades (fastpath.py) and the lighter TLS contexts (tls.py) rely on."""
    import asyncio

    from mitmproxy import connection, flow
    from mitmproxy.addons import proxyserver
    from mitmproxy.net.http import http1
    from mitmproxy.proxy import commands, events, mode_servers, mode_specs, server, server_hooks
    from mitmproxy.proxy.layers import http as http_layers

    problems = []
    try:
        if "ProxyConnectionHandler(" not in inspect.getsource(mode_servers.ServerInstance.handle_stream):
            problems.append("ServerInstance.handle_stream no longer makes a ProxyConnectionHandler per connection")
    except (AttributeError, OSError, TypeError):
        problems.append("ServerInstance.handle_stream cannot be inspected")
    handler = getattr(mode_servers, "ProxyConnectionHandler", None)
    for name in ("handle_client", "server_event", "handle_hook", "on_timeout"):
        if not callable(getattr(handler, name, None)):
            problems.append(f"ProxyConnectionHandler.{name} is missing")
    needed = {
        "http1": (http1, ("read_request_head", "expected_http_body_size", "assemble_response_head")),
        "layers.http": (http_layers, ("HttpRequestHeadersHook", "HttpRequestHook", "HttpResponseHeadersHook",
                                      "HttpResponseHook", "HttpErrorHook")),
        "server_hooks": (server_hooks, ("ClientConnectedHook", "ClientDisconnectedHook")),
        "commands": (commands, ("SendData", "CloseConnection", "StartHook", "Log", "ConnectionCommand")),
        "events": (events, ("Start", "DataReceived", "ConnectionClosed", "HookCompleted")),
        "server": (server, ("ConnectionIO", "TimeoutWatchdog")),
        "mode_specs": (mode_specs, ("ReverseMode",)),
        "connection": (connection, ("Client", "ConnectionState")),
    }
    for where, (module, names) in needed.items():
        problems += [f"mitmproxy {where}.{name} is missing" for name in names if not hasattr(module, name)]
    if not callable(getattr(proxyserver.Proxyserver, "register_connection", None)):
        problems.append("Proxyserver.register_connection is missing")
    if getattr(flow.Error, "KILLED_MESSAGE", None) is None:
        problems.append("flow.Error.KILLED_MESSAGE is missing")
    reader = asyncio.StreamReader
    source = inspect.getsource(reader.__init__)
    fields = ("_buffer", "_transport", "_waiter", "_paused", "_eof", "_loop")
    if not callable(getattr(reader, "_wakeup_waiter", None)) or not all(f"self.{name} =" in source for name in fields):
        problems.append("asyncio.StreamReader's _buffer/_transport/_waiter/_paused/_eof/_loop/_wakeup_waiter (read "
                        "in place, and waited on, by the fast path) are missing")
    elif "waiter.set_result(None)" not in inspect.getsource(reader._wakeup_waiter):  # type: ignore[attr-defined]
        problems.append("asyncio.StreamReader._wakeup_waiter no longer completes its waiter with set_result(None)")
    from mitmproxy.addons import tlsconfig
    from mitmproxy.net import tls as net_tls
    from OpenSSL import SSL

    for name in ("create_client_proxy_context", "create_proxy_server_context"):  # tls.py wraps them
        if not callable(getattr(net_tls, name, None)):
            problems.append(f"mitmproxy.net.tls.{name} is missing")
        elif f"net_tls.{name}(" not in inspect.getsource(tlsconfig):
            problems.append(f"mitmproxy's tlsconfig no longer makes its contexts with net_tls.{name}")
    if not callable(getattr(SSL._lib, "SSL_CTX_set_mode", None)) or not hasattr(SSL._lib, "SSL_MODE_RELEASE_BUFFERS"):
        problems.append("pyOpenSSL's binding lacks SSL_CTX_set_mode/SSL_MODE_RELEASE_BUFFERS")
    return problems


def _lighter_session_problems() -> list[str]:
    """What tls.py (one parsed certificate and key per certificate, fresh memory BIOs) and layer.py (the layers'
    event queues) rely on in mitmproxy and pyOpenSSL."""
    import re

    from mitmproxy.addons import tlsconfig
    from mitmproxy.proxy import layer
    from mitmproxy.proxy.layers import http as http_layers
    from OpenSSL import SSL, crypto

    problems = []
    start_client = inspect.getsource(tlsconfig.TlsConfig.tls_start_client)
    for call in ("ssl_conn.use_certificate(", "ssl_conn.use_privatekey("):
        if call not in start_client:
            problems.append(f"mitmproxy's tlsconfig no longer calls {call.rstrip('(')} on its client connections")
    connection_init = inspect.getsource(SSL.Connection.__init__)
    for name in ("use_certificate", "use_privatekey"):
        if not callable(getattr(SSL.Connection, name, None)):
            problems.append(f"pyOpenSSL's Connection.{name} is missing")
    for attribute in ("_ssl", "_into_ssl", "_from_ssl"):
        if f"self.{attribute} =" not in connection_init:
            problems.append(f"pyOpenSSL's Connection.{attribute} is missing")
    if not callable(getattr(crypto.X509, "from_cryptography", None)) or "_x509" not in inspect.getsource(crypto.X509):
        problems.append("pyOpenSSL's X509.from_cryptography/_x509 are missing")
    if not callable(getattr(crypto.PKey, "from_cryptography_key", None)) or "_pkey" not in inspect.getsource(crypto.PKey):
        problems.append("pyOpenSSL's PKey.from_cryptography_key/_pkey are missing")
    if not callable(getattr(SSL, "_raise_current_error", None)) or not callable(
            getattr(SSL.Context, "_raise_passphrase_exception", None)):
        problems.append("pyOpenSSL's _raise_current_error/Context._raise_passphrase_exception are missing")
    for name in ("SSL_use_certificate", "SSL_use_PrivateKey", "SSL_set_bio", "BIO_new", "BIO_s_mem", "BIO_free",
                 "BIO_get_mem_data"):
        if not callable(getattr(SSL._lib, name, None)):
            problems.append(f"pyOpenSSL's binding lacks {name}")
    try:
        layer_init = inspect.getsource(layer.Layer.__init__)
        uses = set(re.findall(r"_paused_event_queue\.(\w+)", inspect.getsource(layer) + inspect.getsource(http_layers)))
    except (OSError, TypeError):
        layer_init, uses = "", set()
    if "self._paused_event_queue = " not in layer_init or not uses <= {"append", "popleft"}:
        problems.append("mitmproxy's Layer._paused_event_queue is no longer a queue used with append and popleft only")
    return problems


def _fast_tls_problems() -> list[str]:
    """What fast_tls.py (the fast path's own TLS handshake, and the layers it gives other requests back with) and
    tls.encrypt rely on in mitmproxy and pyOpenSSL."""
    from mitmproxy import certs, tls
    from mitmproxy.addons import next_layer, tlsconfig
    from mitmproxy.proxy import server, tunnel
    from mitmproxy.proxy.layers import http as http_layers
    from mitmproxy.proxy.layers import modes
    from mitmproxy.proxy.layers import tls as tls_layers
    from OpenSSL import SSL

    problems = [f"mitmproxy.proxy.layers.tls.{name} is missing" for name in (
        "parse_client_hello", "ClientTLSLayer", "ServerTLSLayer", "TlsClienthelloHook", "TlsStartClientHook",
        "TlsEstablishedClientHook", "TlsFailedClientHook") if not hasattr(tls_layers, name)]
    fields = getattr(tls.ClientHelloData, "__dataclass_fields__", {})
    if not {"ignore_connection", "establish_server_tls_first"} <= set(fields) or not hasattr(tls, "TlsData"):
        problems.append("mitmproxy.tls.ClientHelloData/TlsData are not what the fast path fills in")
    if getattr(getattr(tunnel, "TunnelState", None), "OPEN", None) is None:
        problems.append("mitmproxy's TunnelState.OPEN is missing")
    if not callable(getattr(getattr(modes, "DestinationKnown", None), "finish_start", None)):
        problems.append("mitmproxy's DestinationKnown.finish_start is missing")
    if getattr(getattr(http_layers, "HTTPMode", None), "transparent", None) is None:
        problems.append("mitmproxy's HTTPMode.transparent is missing")
    if not callable(getattr(certs.Cert, "from_pyopenssl", None)):
        problems.append("mitmproxy's Cert.from_pyopenssl is missing")
    sources: dict[str, tuple[Callable[[], Any], tuple[str, ...]]] = {
        "next_layer's reverse-mode stack": (lambda: next_layer.NextLayer._setup_reverse_proxy,
                                            ("ClientTLSLayer(context)", "ServerTLSLayer(context)",
                                             "HttpLayer(context, HTTPMode.transparent)")),
        "ClientTLSLayer.__init__": (lambda: tls_layers.ClientTLSLayer.__init__,
                                    ("self.recv_buffer =", "self.server_tls_available =")),
        "tlsconfig's tls_clienthello": (lambda: tlsconfig.TlsConfig.tls_clienthello,
                                        ("establish_server_tls_first", "connection_strategy")),
        "ConnectionHandler.handle_client": (lambda: server.ConnectionHandler.handle_client,
                                            ('self.log("client connect")', "ClientConnectedHook")),
        "ConnectionHandler.server_event": (lambda: server.ConnectionHandler.server_event,
                                           ("commands.RequestWakeup", "self.wakeup(")),
    }
    for what, (get, needles) in sources.items():
        try:
            source = inspect.getsource(get())
        except (AttributeError, OSError, TypeError):
            source = ""
        if not all(needle in source for needle in needles):
            problems.append(f"mitmproxy's {what} is not what the fast path over TLS reproduces")
    for name in ("SSL_write", "BIO_read"):
        if not callable(getattr(SSL._lib, name, None)):
            problems.append(f"pyOpenSSL's binding lacks {name}")
    if not callable(getattr(SSL.Connection, "_raise_ssl_error", None)):
        problems.append("pyOpenSSL's Connection._raise_ssl_error is missing")
    return problems
